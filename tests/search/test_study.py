"""A real study end to end (in process): values, files, the paper default, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from optuna.trial import TrialState

from aam_search.protocol import read_metrics
from aam_search.search.record import BASELINE_ATTR, CONFIG_ATTR, HYPERVOLUME_ATTR
from aam_search.search.pareto import hypervolume, pareto_front, pareto_mask
from aam_search.search.record import ATTEMPT, SLOT, slot_of
from aam_search.search.study import PAPER_DEFAULT
from tests.search.conftest import TINY_TRIAL, complete


@pytest.fixture(scope="module")
def final(resumed_study):
    return resumed_study[1][1]  # after resuming to n_trials 3


def result_of(trial) -> dict:
    return json.loads((Path(trial.user_attrs["out_dir"]) / "result.json").read_text())


def test_first_run_completes_its_budget_with_trials_in_parallel(resumed_study):
    config, (first, _, _) = resumed_study
    assert [t.state for t in first.trials] == [TrialState.COMPLETE] * 2
    assert (first.outcome.completed, first.outcome.failed, first.outcome.interrupted) == (2, 0, False)
    a, b = first.trials
    # max_parallel 2: the second trial started before the first one finished.
    assert b.datetime_start < a.datetime_complete and a.datetime_start < b.datetime_complete
    assert first.folders == ["trial-0000", "trial-0001"]


def test_values_are_utility_and_leakage_from_result_json(final):
    assert len(final.trials) == 3
    for trial in final.trials:
        assert trial.state == TrialState.COMPLETE
        result = result_of(trial)
        assert result["status"] == "completed"
        assert trial.values == [pytest.approx(result["utility"]), pytest.approx(result["leakage"])]
        assert trial.user_attrs["utility"] == result["utility"]
        assert trial.user_attrs["leakage_reduction"] == result["leakage_reduction"]
        assert trial.user_attrs[SLOT] == trial.number


def test_the_paper_default_is_the_trial_defaults_but_for_hsic():
    from aam_search.trainer.config import TrialConfig

    trial = TrialConfig(cache=Path("/c")).resolved()
    ran = {name: trial[name.split(".")[0]][name.split(".")[1]] for name in PAPER_DEFAULT}
    ran["optim.lr"] = trial["optim"]["effective_lr"]  # lr is None by default: scaled from base_lr
    assert {k: v for k, v in PAPER_DEFAULT.items() if ran[k] != v} == {"loss.w_hsic": 0.01}
    assert PAPER_DEFAULT["optim.lr"] == 1e-3 and PAPER_DEFAULT["loss.w_lc"] == 100.0


def test_the_first_trial_runs_the_paper_default(final):
    first = final.trials[0]
    searched = {k: v for k, v in PAPER_DEFAULT.items() if k in first.params}
    assert set(searched) == {"loss.w_lc", "loss.w_task", "loss.w_privacy", "loss.temperature", "optim.lr"}
    assert first.params == searched
    assert first.params["loss.w_lc"] == 100
    # Later trials are sampled, not the default again.
    assert all(t.params != first.params for t in final.trials[1:])


def test_trial_folders_hold_the_trial_files(final):
    for trial in final.trials:
        folder = Path(trial.user_attrs["out_dir"])
        assert folder.name == f"trial-{trial.number:04d}"
        for name in ("trial.yaml", "trial.json", "metrics.jsonl", "result.json", "adapter.safetensors", "trial.log"):
            assert (folder / name).is_file(), f"{folder / name} missing"
        # The sampled parameters reached the trial, on top of the study's shared settings.
        ran = json.loads((folder / "trial.json").read_text())
        assert ran["loss"]["w_lc"] == pytest.approx(trial.params["loss.w_lc"])
        assert ran["loss"]["temperature"] == pytest.approx(trial.params["loss.temperature"])
        assert ran["optim"]["epochs"] == TINY_TRIAL["optim"]["epochs"]
        asked = yaml.safe_load((folder / "trial.yaml").read_text())
        assert asked["optim"]["batch_size"] == 4 and "effective_lr" not in asked["optim"]
        assert [m["epoch"] for m in read_metrics(folder / "metrics.jsonl")] == [0]
        assert trial.user_attrs["devices"] == "cpu"


def test_study_records_config_baseline_and_hypervolume_history(final):
    history = final.user_attrs[HYPERVOLUME_ATTR]
    # One entry per completed trial, in order of completion, across the resumed runs.
    assert [done for done, _ in history] == [1, 2, 3]
    assert all(volume >= 0 for _, volume in history)
    assert history[-1][1] == pytest.approx(
        hypervolume(final.trials, ["utility", "leakage"], final.orchestrator.reference))
    assert final.outcome.hypervolume == history[-1][1]
    stored = final.user_attrs[CONFIG_ATTR]
    assert stored["n_trials"] == 3 and stored["objectives"] == ["utility", "leakage"]
    assert set(final.user_attrs[BASELINE_ATTR]) >= {"utility", "leakage", "leakage:static"}


def test_pareto_front_holds_only_non_dominated_trials(final):
    front = pareto_front(final.trials, ["utility", "leakage"])
    assert front and [t.number for t in final.outcome.front] == [t.number for t in front]
    values = np.array([t.values for t in final.trials])
    expected = {t.number for t, keep in zip(final.trials, pareto_mask(values, ["utility", "leakage"])) if keep}
    assert {t.number for t in front} == expected
    for member in front:  # no completed trial is at least as good everywhere and better somewhere
        (u, leak) = member.values
        for other in final.trials:
            ou, ol = other.values
            assert not (ou >= u and ol <= leak and (ou > u or ol < leak))


def test_resume_adds_only_the_missing_trial(resumed_study):
    _, (first, second, _) = resumed_study
    assert len(complete(second.trials)) == 3 and len(second.trials) == 3
    # The completed trials were kept as they were, not run again.
    for before, after in zip(first.trials, second.trials[:2]):
        assert (after.number, after.values, after.params) == (before.number, before.values, before.params)
        assert after.datetime_complete == before.datetime_complete
    assert sorted(slot_of(t) for t in second.trials) == [0, 1, 2]
    assert second.outcome.completed == 3
    assert second.folders == ["trial-0000", "trial-0001", "trial-0002"]
    assert all(ATTEMPT not in t.user_attrs for t in second.trials)


def test_rerunning_a_finished_study_starts_no_trial(resumed_study):
    _, (_, second, third) = resumed_study
    assert [(t.number, t.state, t.values) for t in third.trials] == [
        (t.number, t.state, t.values) for t in second.trials]
    assert third.folders == second.folders
    assert (third.outcome.completed, third.outcome.failed) == (3, 0)
