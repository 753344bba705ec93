"""Trials that fail, crash, hang or report nonsense: told FAIL with a reason, retried when a
re-run could help, and the study goes on to settle its budget."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from aam_search.cli import main
from aam_search.search import backend
from aam_search.search.callbacks import TrialStale, TrialStarted, TunerCallback
from aam_search.search.orchestrator import Orchestrator
from aam_search.search.record import ATTEMPT, REASON, SLOT, STALE_REASON, slot_of
from tests.search.conftest import LONG_TRIAL, Recorder, complete, processes_under, run_study


def fake_trials(monkeypatch, code: str) -> None:
    """Trials run ``python -c code`` with argv[1] = the trial folder (no training)."""
    def command(config_path, out_dir, slot, deepspeed):
        return [sys.executable, "-c", textwrap.dedent(code), str(out_dir)]

    monkeypatch.setattr(backend, "trial_command", command)


class another_worker_fails_trial_0(TunerCallback):  # noqa: N801  (reads as what it does)
    """A callback that, once trial 0 started, does what another worker's stale check does to
    it: fail it and queue its re-run (up to ``max_retry``)."""

    def __init__(self, orchestrator: Orchestrator, *, max_retry: int):
        self.orchestrator, self.max_retry = orchestrator, max_retry

    def on_trial_started(self, event: TrialStarted) -> None:
        if event.number == 0:
            study = self.orchestrator.study
            trial_id = self.orchestrator.running[0][1]._trial_id
            study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)(
                study, study._storage.get_trial(trial_id))


def failed(trials):
    return [t for t in trials if t.state == TrialState.FAIL]


def test_a_diverged_trial_fails_for_good_and_the_study_goes_on(make_study):
    config = make_study(
        name="diverge",
        # The first trial's guard calls any loss diverged; the second's never does.
        space={"params": {"guard.max_loss": {"type": "categorical", "choices": [1e-9, 1e6]}}},
        enqueue_paper_default=False,
        enqueue=[{"guard.max_loss": 1e-9}, {"guard.max_loss": 1e6}],
        n_trials=2, max_parallel=2, max_retries=2,
    )
    orchestrator, outcome = run_study(config)
    trials = orchestrator.study.get_trials()
    # Deterministic failures are not retried: exactly the two budgeted trials ran.
    assert [(t.number, t.state, t.params["guard.max_loss"]) for t in trials] == [
        (0, TrialState.FAIL, 1e-9), (1, TrialState.COMPLETE, 1e6)]
    assert trials[0].user_attrs[REASON].startswith("diverged: loss diverged in epoch 0")
    result = json.loads((config.trials_dir / "trial-0000" / "result.json").read_text())
    assert result["status"] == "diverged"
    assert (outcome.completed, outcome.failed) == (1, 1)
    assert [t.number for t in outcome.front] == [1]


def test_a_crash_is_retried_up_to_max_retries_then_the_slot_is_settled(make_study, monkeypatch, capsys):
    fake_trials(monkeypatch, "import sys; print('boom'); sys.exit(3)")
    config = make_study(name="crash", n_trials=2, max_parallel=2, max_retries=1)
    started = time.time()
    orchestrator, outcome = run_study(config)
    assert time.time() - started < 60
    trials = orchestrator.study.get_trials()
    # Two slots, each tried once and retried once: four failures, then the study ends.
    assert [t.state for t in trials] == [TrialState.FAIL] * 4
    assert sorted((slot_of(t), t.user_attrs.get(ATTEMPT, 0)) for t in trials) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for trial in trials:
        assert trial.user_attrs[REASON].startswith("exit code 3 without result.json")
        assert "boom" in trial.user_attrs[REASON]  # the log tail says what went wrong
        original = next(t for t in trials if slot_of(t) == slot_of(trial) and t.user_attrs.get(ATTEMPT, 0) == 0)
        assert trial.params == original.params  # a retry repeats its configuration
    assert (outcome.completed, outcome.failed, outcome.interrupted) == (0, 4, False)

    capsys.readouterr()
    assert main(["status", "crash", "--storage", config.storage_url]) == 0
    shown = capsys.readouterr().out
    assert "FAIL" in shown and shown.count("failed: exit code 3") == 4


def test_a_trial_past_its_timeout_is_stopped_and_failed(make_study):
    config = make_study(name="slow", trial=LONG_TRIAL, n_trials=1, max_parallel=1, max_retries=1,
                        trial_timeout_s=1)
    started = time.time()
    orchestrator, outcome = run_study(config)
    assert time.time() - started < 60
    trials = orchestrator.study.get_trials()
    # A timeout may be bad luck (a busy machine): it is retried, once here.
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert [t.user_attrs[REASON] for t in trials] == ["timeout after 1s"] * 2
    assert [slot_of(t) for t in trials] == [0, 0]
    assert not processes_under(config.workdir), "a timed-out trial is still running"


def test_a_trial_without_result_json_fails(make_study, monkeypatch):
    fake_trials(monkeypatch, "pass")  # exits 0 and writes nothing
    config = make_study(name="silent", n_trials=1, max_parallel=1, max_retries=0)
    orchestrator, outcome = run_study(config)
    (trial,) = orchestrator.study.get_trials()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs[REASON].startswith("exit code 0 without result.json")
    assert outcome.failed == 1


RESULTS = {
    # trial number -> what its result.json says (7 and later: a good result)
    0: {"status": "completed", "utility": 0.5, "leakage": 0.5, "utility_drop": "nan"},
    1: {"status": "completed", "utility": 0.9, "leakage": 0.1, "utility_drop": 0.5},
    2: {"status": "completed", "utility": 0.6, "leakage": 0.3, "utility_drop": 0.05},
    3: {"status": "completed", "utility": 0.7, "utility_drop": 0.0},
    4: {"status": "failed", "reason": "non-finite loss in epoch 0, step 3 (loss=nan)", "retryable": False},
    5: {"status": "failed", "reason": "RuntimeError: CUDA error: an illegal memory access"},
    6: {"status": "completed", "utility": 0.55, "leakage": 0.25, "utility_drop": 0.02},
}


def test_results_are_checked_before_optuna_is_told(make_study, monkeypatch):
    fake_trials(monkeypatch, f"""
        import json, sys
        from pathlib import Path
        out = Path(sys.argv[1])
        results = {{int(k): v for k, v in json.loads({json.dumps(json.dumps(RESULTS))}).items()}}
        number = int(out.name.split("-")[1])
        result = results.get(number, {{"status": "completed", "utility": 0.5, "leakage": 0.4, "utility_drop": 0.0}})
        result.setdefault("reason", None)
        (out / "result.json").write_text(json.dumps(result))
        sys.exit(0 if result["status"] == "completed" else 1)
    """)
    config = make_study(name="checked", n_trials=6, max_parallel=1, max_retries=1, max_utility_drop=0.1)
    orchestrator, outcome = run_study(config)
    trials = {t.number: t for t in orchestrator.study.get_trials()}
    assert sorted(trials) == list(range(7))
    reason = {n: t.user_attrs.get(REASON, "") for n, t in trials.items()}
    # Raw utility 0 gives a NaN utility drop: the constraint cannot be checked (and Optuna
    # refuses NaN constraints); the study must not crash on it.
    assert trials[0].state == TrialState.FAIL and reason[0].startswith("cannot check max_utility_drop")
    assert trials[1].state == TrialState.COMPLETE and trials[1].constraints == {"max_utility_drop": pytest.approx(0.4)}
    assert trials[2].state == TrialState.COMPLETE and trials[2].constraints == {"max_utility_drop": pytest.approx(-0.05)}
    assert trials[3].state == TrialState.FAIL and "objective 'leakage'" in reason[3]
    assert trials[4].state == TrialState.FAIL and reason[4].startswith("failed: non-finite loss")
    assert trials[5].state == TrialState.FAIL and reason[5].startswith("failed: RuntimeError: CUDA error")
    # Only the crash is worth a re-run: trial 6 repeats slot 5 and succeeds.
    assert trials[6].state == TrialState.COMPLETE
    assert (slot_of(trials[6]), trials[6].user_attrs[ATTEMPT], trials[6].params) == (5, 1, trials[5].params)
    # Trial 1 dominates the others but breaks the constraint: it is not on the front.
    assert [t.number for t in outcome.front] == [2, 6]
    assert (outcome.completed, outcome.failed) == (3, 4)


RETRY_BY_FIELD = {
    # trial number -> its result.json: the words look like the other case, the field decides
    0: {"status": "diverged", "reason": "loss diverged in epoch 0 (a flaky reduction)", "retryable": True},
    1: {"status": "completed", "reason": None, "utility": 0.5, "leakage": 0.4},
    2: {"status": "failed", "reason": "RuntimeError: CUDA error: an illegal memory access", "retryable": False},
}


def test_the_trial_decides_whether_it_is_retried_not_its_reason(make_study, monkeypatch):
    fake_trials(monkeypatch, f"""
        import json, sys
        from pathlib import Path
        out = Path(sys.argv[1])
        results = {{int(k): v for k, v in json.loads({json.dumps(json.dumps(RETRY_BY_FIELD))}).items()}}
        result = results[int(out.name.split("-")[1])]
        (out / "result.json").write_text(json.dumps(result))
        sys.exit(0 if result["status"] == "completed" else 1)
    """)
    config = make_study(name="by-field", n_trials=2, max_parallel=1, max_retries=1)
    orchestrator, outcome = run_study(config)
    trials = orchestrator.study.get_trials()
    assert [(t.number, t.state, slot_of(t), t.user_attrs.get(ATTEMPT, 0)) for t in trials] == [
        (0, TrialState.FAIL, 0, 0),  # "diverged", but retryable: re-run in its slot
        (1, TrialState.COMPLETE, 0, 1),
        (2, TrialState.FAIL, 2, 0),  # a crash, but the trial says a re-run would repeat it
    ]
    assert trials[0].user_attrs[REASON].startswith("diverged: loss diverged")
    assert (outcome.completed, outcome.failed) == (1, 2)


def test_a_trial_failed_meanwhile_by_another_worker_is_not_told_again(make_study, monkeypatch):
    """Another worker that heard no heartbeat for our trial failed it and queued a re-run."""
    fake_trials(monkeypatch, """
        import json, sys, time
        from pathlib import Path
        time.sleep(1.5)
        result = {"status": "completed", "reason": None, "utility": 0.5, "leakage": 0.4}
        Path(sys.argv[1], "result.json").write_text(json.dumps(result))
    """)
    config = make_study(name="stolen", n_trials=1, max_parallel=1)
    orchestrator = Orchestrator(config)
    orchestrator.callbacks.append(another_worker_fails_trial_0(orchestrator, max_retry=1))
    _, outcome = run_study(config, orchestrator)
    trials = orchestrator.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert REASON not in trials[0].user_attrs  # nobody told it twice
    assert trials[1].user_attrs[SLOT] == 0 and trials[1].system_attrs["failed_trial"] == 0
    assert outcome.completed == 1 and len(complete(trials)) == 1


def test_an_orchestrator_error_stops_its_trials(make_study, monkeypatch):
    fake_trials(monkeypatch, "import time; time.sleep(60)")
    config = make_study(name="broken", n_trials=2, max_parallel=2)
    orchestrator = Orchestrator(config)
    launched = []
    launch = orchestrator._launch

    def explode(trial):  # the loop itself fails once both trials run
        launch(trial)
        launched.append(trial.number)
        if len(launched) == 2:
            raise RuntimeError("the loop broke")

    monkeypatch.setattr(orchestrator, "_launch", explode)
    started = time.time()
    with pytest.raises(RuntimeError, match="the loop broke"):
        run_study(config, orchestrator)
    assert time.time() - started < 30
    assert launched == [0, 1]
    assert not processes_under(config.workdir), "trials outlived their orchestrator's error"


def test_a_trial_left_by_a_dead_worker_is_failed_and_run_again(make_study, monkeypatch, tmp_path):
    """A worker that dies right after launching a trial (before its loop ever beat for it):
    the trial must still go stale, or the study would wait for it forever."""
    fake_trials(monkeypatch, """
        import json, sys, time
        from pathlib import Path
        out = Path(sys.argv[1])
        if out.parts[-3] == "dead":
            time.sleep(60)
        result = {"status": "completed", "reason": None, "utility": 0.5, "leakage": 0.4}
        (out / "result.json").write_text(json.dumps(result))
    """)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    common = dict(name="orphaned", storage=storage, n_trials=1, max_parallel=1, heartbeat_interval_s=1,
                  heartbeat_grace_s=2)
    dead = Orchestrator(make_study(workdir=tmp_path / "dead", **common))
    dead.prepare()
    dead._fill_devices()  # launch, then "die": its trial stops, nobody tells Optuna
    ((running, trial),) = dead.running.values()
    running.stop("worker died", grace_s=1)
    running.log.close()

    seen = Recorder()
    alive = Orchestrator(make_study(workdir=tmp_path / "alive", **common), callbacks=[seen])
    guard = threading.Timer(45, lambda: setattr(alive, "stopping", "test timeout"))
    guard.start()
    try:
        _, outcome = run_study(alive.config, alive)
    finally:
        guard.cancel()
    assert not outcome.interrupted, "the study waited for the dead worker's trial"
    trials = alive.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].user_attrs[SLOT] == 0
    assert trials[1].user_attrs["out_dir"].startswith(str(tmp_path / "alive"))
    # The user is told which trial went stale and why (Optuna records no reason of its own).
    assert seen.of(TrialStale) == [TrialStale(number=0, reason=STALE_REASON, retried=True)]
