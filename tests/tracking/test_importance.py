"""Parameter importances per objective on the parent run: the right parameter comes out on top."""

from __future__ import annotations

import csv

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from aam_search.tracking import importance
from aam_search.search.callbacks import StudyFinished, TrialCompleted
from aam_search.tracking.runs import StudyTracker
from tests.tracking.conftest import tiny_config

DISTRIBUTIONS = {"loss.w_lc": FloatDistribution(0.0, 1.0), "loss.w_privacy": FloatDistribution(0.0, 1.0),
                 "loss.w_task": FloatDistribution(0.0, 1.0)}


def known_trials(count: int, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    """Utility is driven by ``loss.w_lc``, leakage by ``loss.w_privacy``; ``loss.w_task``
    barely moves either."""
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(count):
        params = {name: float(rng.uniform()) for name in DISTRIBUTIONS}
        utility = 0.3 + 0.6 * params["loss.w_lc"] + 0.01 * params["loss.w_task"]
        leakage = 0.9 - 0.7 * params["loss.w_privacy"] + 0.01 * params["loss.w_task"]
        trials.append(create_trial(params=params, distributions=DISTRIBUTIONS, values=[utility, leakage]))
    return trials


def test_the_driving_parameter_is_the_most_important_for_its_objective():
    values = importance.param_importances(known_trials(20), ["utility", "leakage"])
    assert set(values) == {"utility", "leakage"}
    assert max(values["utility"], key=values["utility"].get) == "loss.w_lc"
    assert max(values["leakage"], key=values["leakage"].get) == "loss.w_privacy"
    for per_objective in values.values():
        assert set(per_objective) == set(DISTRIBUTIONS)
        assert sum(per_objective.values()) == pytest.approx(1.0)
    # a fixed seed: the same trials give the same numbers
    assert importance.param_importances(known_trials(20), ["utility", "leakage"]) == values
    rows = importance.importance_rows(values)
    assert [row["param"] for row in rows][:2] == sorted(["loss.w_lc", "loss.w_privacy"],
                                                        key=lambda p: -max(values["utility"][p], values["leakage"][p]))
    metrics = importance.importance_metrics(values)
    assert metrics["importance.leakage.loss.w_privacy"] == values["leakage"]["loss.w_privacy"]


def test_too_few_trials_or_varying_parameters_give_nothing():
    assert importance.param_importances(known_trials(3), ["utility", "leakage"]) == {}
    # only one parameter varies (the others are constant): nothing to rank it against
    one = [create_trial(params={"loss.w_lc": x, "adapter.kind": "mlp"},
                        distributions={"loss.w_lc": DISTRIBUTIONS["loss.w_lc"],
                                       "adapter.kind": CategoricalDistribution(["mlp", "attention"])},
                        values=[x, 1 - x]) for x in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert importance.varying_params(one) == ["loss.w_lc"]
    assert importance.param_importances(one, ["utility", "leakage"]) == {}
    failed = [create_trial(state=TrialState.FAIL) for _ in range(5)]
    assert importance.param_importances(failed, ["utility", "leakage"]) == {}


def test_an_objective_with_one_value_explains_nothing():
    trials = [create_trial(params=t.params, distributions=t.distributions, values=[t.values[0], 0.5])
              for t in known_trials(8)]
    values = importance.param_importances(trials, ["utility", "leakage"])
    assert set(values["leakage"].values()) == {0.0}
    assert max(values["utility"], key=values["utility"].get) == "loss.w_lc"


@pytest.mark.parametrize(("completed", "last", "final", "expected"), [
    (3, 0, True, False),              # too few
    (4, 0, False, True),              # enough for the first time
    (5, 4, False, False),             # at most every REFRESH_EVERY completions
    (4 + importance.REFRESH_EVERY, 4, False, True),
    (6, 4, True, True),               # the study finished: refresh
    (6, 6, True, False),              # nothing new since the last one
])
def test_refresh_schedule(completed, last, final, expected):
    assert importance.due(completed, last, final=final) is expected


def test_the_parent_run_gets_the_table_the_plot_and_metrics(tmp_path):
    from aam_search.spaces import resolve_space

    config = tiny_config(tmp_path / "cache", tmp_path / "work")
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="tiny")
    tracker = StudyTracker.connect(config, system_metrics=False)
    tracker.open(study, space=resolve_space(config.space), base_trial={"seed": 0}, baseline={"utility": 0.9})
    for count, trial in enumerate(known_trials(12), start=1):
        study.add_trial(trial)
        tracker.on_trial_completed(TrialCompleted(number=study.trials[-1].number, values=tuple(trial.values),
                                                  result={}, hypervolume=0.1))
        if count == importance.MIN_COMPLETE - 1:  # not yet (the rest of the refresh is there)
            logged = {a.path for a in tracker.client.list_artifacts(tracker.parent_run_id)}
            assert importance.CSV_NAME not in logged and {"trials.csv", "pareto_front.png"} <= logged
    tracker.on_study_finished(StudyFinished(status="finished", reason=None))

    client = tracker.client
    artifacts = {a.path: a for a in client.list_artifacts(tracker.parent_run_id)}
    assert {importance.CSV_NAME, importance.PNG_NAME} <= set(artifacts)
    assert artifacts[importance.PNG_NAME].file_size > 5000
    table = client.download_artifacts(tracker.parent_run_id, importance.CSV_NAME, str(tmp_path))
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["param"] for row in rows} == set(DISTRIBUTIONS)
    assert max(rows, key=lambda row: float(row["utility"]))["param"] == "loss.w_lc"
    assert max(rows, key=lambda row: float(row["leakage"]))["param"] == "loss.w_privacy"
    # computed at 4 completed, again 5 later, and at the end of the study
    history = client.get_metric_history(tracker.parent_run_id, "importance.utility.loss.w_lc")
    assert sorted(m.step for m in history) == [4, 4 + importance.REFRESH_EVERY, 12]
