"""One study in PostgreSQL, two workers, one of them killed: the other settles the budget.

The acceptance test of the multi-machine set-up: ``aam-search start`` creates the study and
works on it while ``aam-search worker`` joins from "another machine" (its own folder and,
where the host has two CPUs, its own CPU). The worker is killed with SIGKILL while a trial
of its own is running; the heartbeat check of the remaining process fails that trial and
Optuna's RetryHeartbeatStaleTrialCallback queues it again, so exactly n_trials
configurations complete, each once.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from aam_search.cli import main
from aam_search.search.record import CONFIG_ATTR
from aam_search.search.record import REASON, SLOT, slot_of
from aam_search.search.study import StudyNotFound, load_existing_study, opened_slots
from tests.search.conftest import TINY_TRIAL, cli, complete, load_trials, processes_under, spawn, wait_for

TRIAL = {**TINY_TRIAL, "optim": {**TINY_TRIAL["optim"], "epochs": 2}}


def pin(process: subprocess.Popen, index: int) -> None:
    """Give each worker its own CPU when there are two: like two machines, and no
    oversubscription (a worker splits the CPUs it may use among its trials)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(process.pid, {cpus[index % len(cpus)]})


def worker_trial(url: str, name: str, worker_dir: Path):
    """The worker's RUNNING trial, once its training process exists."""
    try:
        trials = load_trials(url, name)
    except Exception:
        return None
    for trial in trials:
        out_dir = trial.user_attrs.get("out_dir", "")
        if trial.state == TrialState.RUNNING and out_dir.startswith(str(worker_dir)):
            if processes_under(Path(out_dir)):
                return trial
    return None


def test_two_workers_on_postgres_survive_a_killed_worker(postgres_url, write_study, tmp_path, reaper):
    # Trust authentication ignores the password; it must still never be stored or shown.
    url = postgres_url.replace("postgres@", "postgres:hunter2@")
    study_yaml = write_study(name="shared", storage=url, trial=TRIAL, n_trials=4, max_parallel=1, max_retries=1,
                             heartbeat_interval_s=1, heartbeat_grace_s=3)
    start_log, worker_log = tmp_path / "start.log", tmp_path / "worker.log"
    start = spawn(cli("start", "--config", str(study_yaml)), start_log, cwd=tmp_path)
    reaper.append(start)
    pin(start, 0)

    def created() -> bool:
        try:  # read as status does, never creating the schema (that would race start)
            return CONFIG_ATTR in load_existing_study("shared", url).user_attrs
        except StudyNotFound:
            return False

    wait_for(created, timeout=60, what="the study in PostgreSQL", process=start, log=start_log)
    worker_dir = tmp_path / "worker"
    worker = spawn(cli("worker", "--study", "shared", "--storage", url, "--workdir", str(worker_dir)),
                   worker_log, cwd=tmp_path)
    reaper.append(worker)
    pin(worker, 1)

    victim = wait_for(lambda: worker_trial(url, "shared", worker_dir), timeout=60,
                      what="a running trial of the worker", process=worker, log=worker_log)
    orphans = processes_under(Path(victim.user_attrs["out_dir"]))
    assert orphans
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and everything in its process group
    worker.wait(10)
    # The trial runs in its own session, outside that group, and still dies with its worker.
    _, alive = psutil.wait_procs(orphans, timeout=15)
    assert not alive, "the killed worker's trial is still training"

    try:
        code = start.wait(150)
    except subprocess.TimeoutExpired:
        pytest.fail("the remaining process did not finish the study:\n" + start_log.read_text()[-3000:])
    assert code == 0, start_log.read_text()[-3000:]

    trials = load_trials(url, "shared")
    done = complete(trials)
    per_slot = Counter(slot_of(t) for t in done)
    # Four slots (a slot is named by the number of its first trial), each completed once,
    # and no slot opened beyond the budget.
    assert len(per_slot) == 4 and set(per_slot.values()) == {1}, per_slot
    assert set(opened_slots(trials)) == set(per_slot)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The killed worker's trial was failed by the heartbeat check (nobody told it a reason)
    # and its re-run, in the same slot with the same parameters, completed.
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL and REASON not in killed.user_attrs
    (rerun,) = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert rerun.state == TrialState.COMPLETE
    assert (rerun.user_attrs[SLOT], rerun.params) == (killed.user_attrs[SLOT], killed.params)
    assert rerun.user_attrs["out_dir"].startswith(str(tmp_path / "work"))
    # No trial failed for a reason of its own (only heartbeat checks failed trials).
    assert not [t.user_attrs[REASON] for t in trials if t.state == TrialState.FAIL and REASON in t.user_attrs]

    study = optuna.load_study(study_name="shared", storage=url)
    assert "hunter2" not in str(study.user_attrs[CONFIG_ATTR])
    assert "hunter2" not in start_log.read_text() + worker_log.read_text()


def test_unknown_study_in_postgres_names_the_storage_without_its_password(postgres_url, capsys):
    url = postgres_url.replace("postgres@", "postgres:hunter2@")
    assert main(["status", "nope", "--storage", url]) == 2
    message = capsys.readouterr().err
    assert "no study named 'nope'" in message
    assert "postgres:***@127.0.0.1" in message and "hunter2" not in message
