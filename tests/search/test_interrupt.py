"""Ctrl-C and SIGTERM on ``aam-search start``: trials are stopped, failed and queued again;
a new ``start`` completes the budget without running any configuration twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from optuna.trial import TrialState

from aam_search.protocol import read_metrics
from aam_search.search.record import REASON, slot_of
from aam_search.search.study import StudyNotFound
from tests.search.conftest import LONG_TRIAL, TINY_TRIAL, cli, complete, load_trials, spawn, wait_for


def training_trials(url: str, name: str) -> list:
    """RUNNING trials whose process has already written an epoch."""
    try:
        trials = load_trials(url, name)
    except StudyNotFound:  # not created yet (reading never creates it: that raced start)
        return []
    running = [t for t in trials if t.state == TrialState.RUNNING and "out_dir" in t.user_attrs]
    return [t for t in running if read_metrics(Path(t.user_attrs["out_dir"]) / "metrics.jsonl")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_trials_and_a_new_start_completes_the_budget(sig, write_study, tmp_path, reaper):
    study_yaml = write_study(name="stopme", trial=LONG_TRIAL, n_trials=2, max_parallel=2, max_retries=0)
    url = f"sqlite:///{tmp_path / 'work' / 'optuna.db'}"
    log = tmp_path / "start.log"
    start = spawn(cli("start", "--config", str(study_yaml)), log, cwd=tmp_path)
    reaper.append(start)

    running = wait_for(lambda: len(training_trials(url, "stopme")) == 2 and training_trials(url, "stopme"),
                       timeout=90, what="two trials training", process=start, log=log)
    trial_processes = psutil.Process(start.pid).children(recursive=True)
    assert len(trial_processes) >= 2

    os.kill(start.pid, sig)
    try:
        code = start.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("aam-search start did not stop within 60 s of " + sig.name)
    output = log.read_text(errors="replace")
    assert code == 130, output[-3000:]
    assert "run the same command again to resume" in output
    # Every trial process is gone (none left orphaned, none a zombie of ours).
    _, alive = psutil.wait_procs(trial_processes, timeout=5)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"

    trials = load_trials(url, "stopme")
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert sorted(t.number for t in stopped) == sorted(t.number for t in running) == [0, 1]
    assert [t.user_attrs[REASON] for t in stopped] == [f"study interrupted ({sig.name})"] * 2
    for trial in stopped:  # the trial saw SIGTERM and said so in its result
        result = json.loads((Path(trial.user_attrs["out_dir"]) / "result.json").read_text())
        assert result["status"] == "terminated"
    # Each interrupted configuration waits to be run again, in its own slot; an interrupt
    # is not the trial's fault, so it does not use up a retry (max_retries is 0 here).
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted(slot_of(t) for t in waiting) == [0, 1]
    assert not complete(trials)

    if sig != signal.SIGINT:
        return
    # Resume with short trials: the two queued re-runs settle the budget, nothing else runs.
    write_study(name="stopme", trial=TINY_TRIAL, n_trials=2, max_parallel=2, max_retries=0)
    resumed = subprocess.run(cli("start", "--config", str(study_yaml)), cwd=tmp_path, capture_output=True,
                             text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = load_trials(url, "stopme")
    done = complete(trials)
    assert len(trials) == 4 and len(done) == 2
    assert sorted(slot_of(t) for t in done) == [0, 1]  # each slot completed exactly once
    by_slot = {slot_of(t): t for t in stopped}
    for trial in done:
        assert trial.params == by_slot[slot_of(trial)].params
    folders = (tmp_path / "work" / "trials" / "stopme").glob("*/result.json")
    results = [json.loads(p.read_text())["status"] for p in folders]
    assert sorted(results) == ["completed", "completed", "terminated", "terminated"]
