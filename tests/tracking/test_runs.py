"""The study and its trials in MLflow: parent and child runs, metrics, tags, artifacts."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

import optuna
import pytest

from aam_search.search.callbacks import (
    EpochReported,
    StudyPrepared,
    TrialCompleted,
    TrialFailed,
    TrialPruned,
    TrialStarted,
)
from aam_search.search.pareto import pareto_front
from aam_search.tracking.params import final_metrics, final_tags, flatten, study_params
from aam_search.search.record import PARENT_ATTR
from aam_search.tracking.runs import StudyTracker
from aam_search.tracking.store import experiment_name
from tests.tracking.conftest import run_study, tiny_config, tracker_of

FINAL = ("utility", "leakage", "leakage_static", "leakage_clip", "leakage_reduction", "utility_drop",
         "combined_score", "seconds")


def load_trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    rdb = optuna.storages.RDBStorage(storage)
    try:
        return optuna.load_study(study_name=name, storage=rdb).get_trials(deepcopy=False)
    finally:
        rdb.engine.dispose()


def runs_of(tracked, role: str) -> list:
    client = tracked.client()
    return client.search_runs([tracked.experiment_id], filter_string=f"tags.`aam.role` = '{role}'", max_results=100)


def test_one_experiment_with_one_parent_run(tracked):
    client = tracked.client()
    experiment = client.get_experiment_by_name(experiment_name("tiny"))
    assert experiment is not None and experiment.experiment_id == tracked.experiment_id
    # Absolute locations in the work folder, never MLflow's cwd-relative defaults.
    workdir = Path(tracked.config.workdir).resolve()
    assert tracked.uri == f"sqlite:///{workdir / 'mlflow.db'}"
    assert experiment.artifact_location == (workdir / "mlartifacts").as_uri()
    parents = runs_of(tracked, "study")
    assert [run.info.run_id for run in parents] == [tracked.parent_run_id]
    parent = parents[0]
    assert parent.info.run_name == "study-tiny" and parent.info.status == "FINISHED"
    params = parent.data.params
    assert params["space"] == "loss-weights" and params["sampler"] == "tpe"
    assert params["objectives"] == "utility,leakage" and params["seed"] == "0"
    assert "loss.w_lc" in params["space.params"] and "space.loss.w_lc" in params
    assert params["trial.optim.batch_size"] == "4"
    assert parent.data.tags["aam.study"] == "tiny"
    assert parent.data.tags["aam.storage"] == tracked.storage
    assert "raw_utility" in parent.data.metrics and "raw_leakage" in parent.data.metrics


def test_one_child_run_per_trial(tracked):
    assert tracked.child_names == ["trial-0", "trial-1", "trial-2"]
    client = tracked.client()
    trials = {t.number: t for t in load_trials(tracked.storage, "tiny")}
    for run in runs_of(tracked, "trial"):
        number = int(run.data.tags["optuna.trial_number"])
        if number > 2:
            continue  # added by the resume test
        trial = trials[number]
        assert run.info.run_name == f"trial-{number}"
        assert run.data.tags["mlflow.parentRunId"] == tracked.parent_run_id
        assert run.data.tags["optuna.state"] == "COMPLETE" and run.info.status == "FINISHED"
        assert run.data.tags["aam.slot"] == str(number)
        # the sampled params as Optuna has them, and the resolved trial config
        for name, value in trial.params.items():
            assert float(run.data.params[name]) == pytest.approx(value)
        assert run.data.params["config.optim.epochs"] == "2"
        assert run.data.params["config.eval.split"] == "val"
        for key in FINAL:
            assert key in run.data.metrics, key
        assert run.data.metrics["utility"] == pytest.approx(trial.user_attrs["utility"])
        assert run.data.metrics["leakage"] == pytest.approx(trial.values[1])
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == [0, 1]
        assert all(math.isfinite(m.value) for m in history)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"adapter.safetensors", "trial.yaml", "result.json", "trial.log", "metrics.jsonl"} <= artifacts


def test_pareto_tags_match_the_front(tracked):
    trials = load_trials(tracked.storage, "tiny")
    front = {t.number for t in pareto_front(trials, ["utility", "leakage"])}
    assert front
    for run in runs_of(tracked, "trial"):
        number = int(run.data.tags["optuna.trial_number"])
        assert run.data.tags["pareto"] == ("true" if number in front else "false"), number


def test_parent_artifacts_and_hypervolume(tracked, tmp_path):
    assert {"pareto_front.html", "pareto_front.png", "hypervolume.png", "hypervolume.csv",
            "trials.csv"} <= tracked.parent_artifacts
    assert tracked.hypervolume_steps == [1, 2, 3]
    client = tracked.client()
    folder = Path(client.download_artifacts(tracked.parent_run_id, "", str(tmp_path)))
    page = (folder / "pareto_front.html").read_text()
    assert "<svg" in page or "plotly" in page.lower()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") or "plotly" in page.lower()
    assert (folder / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(io.StringIO((folder / "trials.csv").read_text())))
    assert {row["trial"] for row in rows} >= {"0", "1", "2"}
    runs = {r.info.run_id for r in runs_of(tracked, "trial")}
    assert all(row["mlflow_run_id"] in runs for row in rows)


def test_resume_continues_the_parent_run(tracked):
    config = tiny_config(tracked.config.data.cache, tracked.config.workdir, n_trials=4)
    orchestrator, outcome = run_study(config)
    assert outcome.completed == 4
    assert tracker_of(orchestrator).parent_run_id == tracked.parent_run_id
    assert orchestrator.study.user_attrs[PARENT_ATTR] == tracked.parent_run_id
    assert [r.info.run_id for r in runs_of(tracked, "study")] == [tracked.parent_run_id]
    client = tracked.client()
    names = sorted(r.info.run_name for r in runs_of(tracked, "trial"))
    assert names == ["trial-0", "trial-1", "trial-2", "trial-3"]
    steps = sorted(m.step for m in client.get_metric_history(tracked.parent_run_id, "hypervolume"))
    assert steps == [1, 2, 3, 4]
    parent = client.get_run(tracked.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["n_trials"] == "3"  # params are immutable: the change is a tag
    assert parent.data.tags["aam.param.n_trials"] == "4"


# ---------------------------------------------------------------- without trials
@pytest.fixture
def tracker(tmp_path, small_cache):
    """A tracker on a fresh SQLite store, opened on an in-memory Optuna study."""
    from aam_search.spaces import resolve_space

    config = tiny_config(small_cache.path, tmp_path / "work",
                         storage="postgresql://aam:s3cret-pass@db.example:5432/aam")
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="tiny")
    tracker = StudyTracker.connect(config, system_metrics=False)
    tracker.open(study, space=resolve_space(config.space), base_trial={"seed": 0, "optim": {"lr": 0.001}},
                 baseline={"utility": 0.5, "leakage": 0.8})
    return tracker


def test_no_password_in_params_or_tags(tracker):
    run = tracker.client.get_run(tracker.parent_run_id)
    texts = [*run.data.params.items(), *run.data.tags.items()]
    assert texts and not [kv for kv in texts if "s3cret" in kv[0] or "s3cret" in kv[1]]
    assert run.data.tags["aam.storage"] == "postgresql://aam:***@db.example:5432/aam"


def test_study_params_are_flat_strings(tracked):
    from aam_search.spaces import resolve_space

    params = study_params(tracked.config, resolve_space("loss-weights"), {"optim": {"lr": 1e-3, "x": [1, 2]}, "e": {}})
    assert params["trial.optim.lr"] == "0.001" and params["trial.optim.x"] == "[1, 2]" and params["trial.e"] == "{}"
    assert all(isinstance(v, str) and len(v) <= 6000 for v in params.values())
    assert flatten({"a": {"b": {"c": 1}}}) == {"a.b.c": "1"}


def test_final_metrics_read_result_json_values():
    result = {"utility": 0.5, "leakage": "nan", "utility_drop": 0.1, "timings": {"total_s": 3.0, "eval_s": 1.0},
              "measured": {"privacy": {"static": {"cmap": 0.7, "attackers": {"mlp": 0.7}}},
                           "tasks": {"action": {"top1": 0.5}, "task:scene": {"top1": 0.25}}}}
    metrics = final_metrics(result)
    assert metrics["utility"] == 0.5 and math.isnan(metrics["leakage"])
    assert metrics["leakage_static"] == 0.7 and metrics["leakage_static_mlp"] == 0.7
    assert metrics["task_scene"] == 0.25 and metrics["seconds"] == 3.0 and metrics["time/eval_s"] == 1.0


def test_final_metrics_carry_above_chance_removal_and_intervals():
    result = {"leakage_above_chance_removed": {"static": 0.6, "clip": 0.25, "worst": 0.25},
              "leakage_reduction_by_protocol": {"static": 0.3, "clip": 0.05},
              "leakage_reduction_above_chance": 0.25,
              "ci": {"utility": [0.81, 0.93], "leakage": [0.7, 0.8], "leakage:static": [0.55, 0.65],
                     "leakage:clip": None, "task:scene": [float("nan"), 0.4]}}
    metrics = final_metrics(result)
    assert metrics["leakage_above_chance_removed_static"] == 0.6
    assert metrics["leakage_above_chance_removed_clip"] == metrics["leakage_above_chance_removed_worst"] == 0.25
    assert metrics["leakage_reduction_above_chance"] == 0.25 and metrics["leakage_reduction_static"] == 0.3
    assert (metrics["utility_ci_low"], metrics["utility_ci_high"]) == (0.81, 0.93)
    assert (metrics["leakage_ci_low"], metrics["leakage_ci_high"]) == (0.7, 0.8)
    assert (metrics["leakage_static_ci_low"], metrics["leakage_static_ci_high"]) == (0.55, 0.65)
    assert not any(key.startswith(("leakage_clip_ci", "task_scene_ci")) for key in metrics)  # none, or not finite
    assert final_tags({"ci_note": "utility: 4 videos < 10"}) == {"aam.ci_note": "utility: 4 videos < 10"}
    assert final_tags(result) == {}


def test_a_tracked_trial_run_carries_above_chance_removal_and_the_ci_note(tracked):
    trials = {t.number: t for t in load_trials(tracked.storage, "tiny")}
    for run in runs_of(tracked, "trial"):
        trial = trials[int(run.data.tags["optuna.trial_number"])]
        metrics = run.data.metrics
        for key in ("leakage_above_chance_removed_static", "leakage_above_chance_removed_clip",
                    "leakage_above_chance_removed_worst", "leakage_reduction_above_chance"):
            assert key in metrics, key
        removed = trial.user_attrs["leakage_above_chance_removed"]
        assert metrics["leakage_above_chance_removed_static"] == pytest.approx(removed["static"])
        assert trial.user_attrs["leakage_reduction_above_chance"] == pytest.approx(removed["worst"])
        # The tiny cache has too few validation videos for intervals: the run says why instead.
        assert "< 10" in run.data.tags["aam.ci_note"]
        assert not any(key.endswith("_ci_low") for key in metrics)


def started(number: int, params: dict | None = None) -> TrialStarted:
    return TrialStarted(number=number, params=params or {}, out_dir=Path("no-such-trial-folder"), devices=())


def test_a_pruned_trial_ends_pruned_with_its_rung(tracker):
    """Nothing prunes yet (issue 13 adds it); the tracker's side of the event: the run ends
    FINISHED with optuna.state PRUNED, its rung, and its values at the rung."""
    trial = tracker.study.ask()
    trial.set_user_attr("aam:slot", trial.number)
    tracker.on_trial_started(started(trial.number))
    tracker.on_trial_pruned(TrialPruned(number=trial.number, rung=1, epoch=4, values=(0.62, 0.71),
                                        reason="rank 3 of 4 at rung 1"))
    run = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.`aam.role` = 'trial'")[0]
    assert run.info.status == "FINISHED" and trial.number not in tracker.runs
    assert run.data.tags["optuna.state"] == "PRUNED" and run.data.tags["aam.rung"] == "1"
    assert run.data.tags["aam.prune_reason"] == "rank 3 of 4 at rung 1"
    assert run.data.metrics["rung"] == 1 and run.data.metrics["rung/utility"] == 0.62
    assert [m.step for m in tracker.client.get_metric_history(run.info.run_id, "rung/leakage")] == [4]


def test_a_run_of_a_trial_pruned_elsewhere_is_closed_pruned(tracker):
    trial = tracker.study.ask()
    tracker.on_trial_started(started(trial.number))
    del tracker.runs[trial.number]  # as if another process had started it
    tracker.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    tracker._refresh()
    run = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.`aam.role` = 'trial'")[0]
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "PRUNED"


def test_the_tracker_is_opened_by_the_prepared_event(tmp_path, small_cache):
    from aam_search.spaces import resolve_space

    config = tiny_config(small_cache.path, tmp_path / "work")
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="tiny")
    tracker = StudyTracker.connect(config, system_metrics=False)
    tracker.on_study_prepared(StudyPrepared(
        study=study, objectives=("utility", "leakage"), space=resolve_space(config.space),
        base_trial={"seed": 0}, baseline={"utility": 0.5, "leakage": 0.8}, cache="/the/cache", gpus=(0, 1),
        worker=False))
    parent = tracker.client.get_run(tracker.parent_run_id)
    assert study.user_attrs[PARENT_ATTR] == tracker.parent_run_id
    assert parent.data.tags["aam.cache"] == "/the/cache" and parent.data.tags["aam.gpus"] == "0,1"
    assert parent.data.metrics["raw_utility"] == 0.5


def test_a_failing_mlflow_does_not_stop_the_study(tracker, caplog, monkeypatch):
    def broken(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    tracker.study.ask()  # trial 0
    monkeypatch.setattr(tracker.client, "log_batch", broken)
    monkeypatch.setattr(tracker.client, "create_run", broken)
    with caplog.at_level(logging.WARNING, logger="aam_search.tracking.runs"):
        tracker.on_trial_started(started(0))
        tracker.on_epoch_reported(EpochReported(number=0, metrics={"epoch": 0, "loss": 1.0}))
        tracker._paused_until = 0.0  # as if the pause were over: it fails again, silently
        tracker.on_trial_completed(TrialCompleted(number=0, values=(0.5, 0.5), result={}, hypervolume=0.0))
        tracker.on_trial_failed(TrialFailed(number=0, reason="x", retried=False))
        tracker.on_trial_pruned(TrialPruned(number=0, rung=0, epoch=2, values=(0.5, 0.5), reason="x"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "the study goes on" in warnings[0].getMessage() and "tracking server went away" in warnings[0].getMessage()


def test_a_failed_attempt_ends_failed_with_its_reason(tracker):
    trial = tracker.study.ask()
    trial.set_user_attr("aam:slot", trial.number)
    tracker.on_trial_started(started(trial.number, {"loss.w_lc": 3.0}))
    tracker.on_trial_failed(TrialFailed(number=trial.number, reason="exit code 1 without result.json", retried=True))
    run = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.`aam.role` = 'trial'")[0]
    assert run.info.status == "FAILED" and run.info.run_name == f"trial-{trial.number}"
    assert run.data.tags["aam.failure_reason"] == "exit code 1 without result.json"
    assert run.data.tags["optuna.state"] == "FAIL" and run.data.tags["aam.retried"] == "true"
    assert run.data.params["loss.w_lc"] == "3.0"


def test_runs_of_trials_ended_elsewhere_are_closed(tracker):
    """A trial failed by another worker (stale heartbeat) leaves no run RUNNING."""
    trial = tracker.study.ask()
    tracker.on_trial_started(started(trial.number))
    del tracker.runs[trial.number]  # as if another process had started it
    trial.set_user_attr("aam:reason", "stale heartbeat")
    tracker.study.tell(trial, state=optuna.trial.TrialState.FAIL)
    tracker._refresh()
    run = tracker.client.search_runs([tracker.experiment_id], filter_string="tags.`aam.role` = 'trial'")[0]
    assert run.info.status == "FAILED" and run.data.tags["aam.failure_reason"] == "stale heartbeat"
    assert run.data.tags["pareto"] == "false"
    artifacts = {a.path for a in tracker.client.list_artifacts(tracker.parent_run_id)}
    assert {"pareto_front.html", "trials.csv"} <= artifacts
