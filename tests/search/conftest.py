"""Study fixtures: tiny real studies on the session's small feature cache.

Trials are real ``python -m aam_search.cli train`` subprocesses; the trial settings below
keep each one to a few seconds on a 2-core machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
import yaml
from optuna.trial import TrialState

from aam_search.search.callbacks import HANDLERS, TunerCallback
from aam_search.search.config import StudyConfig, parse_study_config
from aam_search.search.orchestrator import Orchestrator
from tests.search.postgres import postgres_url  # noqa: F401  (a fixture)

TINY_TRIAL = {
    "optim": {"epochs": 1, "min_steps": 0, "batch_size": 4, "head_pretrain_epochs": 1},
    "eval": {"attacker_epochs": 3, "probe_epochs": 3},
}
# Trials that train for minutes unless stopped (each epoch is a few milliseconds).
LONG_TRIAL = {
    "optim": {"epochs": 20000, "batch_size": 4, "head_pretrain_epochs": 1},
    "eval": {"attacker_epochs": 3, "probe_epochs": 3},
}


def study_dict(cache_path: Path, workdir: Path, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "tiny",
        "workdir": str(workdir),
        "data": {"cache": str(cache_path)},
        "trial": TINY_TRIAL,
        "n_trials": 3,
        "max_parallel": 2,
        "seed": 0,
    }
    if "track" in StudyConfig.model_fields:  # MLflow has its own tests; these are about the search
        data["track"] = False
    data.update(changes)
    return data


@pytest.fixture(scope="session")
def study_cache(small_cache):
    """small_cache with the raw baseline of these studies' eval settings already computed
    (on one thread, quick), so no test pays for it in a subprocess."""
    import torch

    from aam_search.trainer.baseline import raw_baseline
    from aam_search.trainer.config import EvalConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        raw_baseline(small_cache, EvalConfig(**TINY_TRIAL["eval"]), seed=0)
    finally:
        torch.set_num_threads(threads)
    return small_cache


@pytest.fixture
def make_study(study_cache, tmp_path):
    """``make_study(**changes) -> StudyConfig`` in a fresh workdir under tmp_path."""

    def make(**changes: Any) -> StudyConfig:
        changes.setdefault("workdir", tmp_path / "work")
        return parse_study_config(study_dict(study_cache.path, **changes))

    return make


@pytest.fixture
def write_study(study_cache, tmp_path):
    """``write_study(**changes) -> Path`` of a study.yaml (for the command line)."""

    def write(path: Path | None = None, **changes: Any) -> Path:
        changes.setdefault("workdir", tmp_path / "work")
        path = path or tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(study_dict(study_cache.path, **changes), sort_keys=False))
        return path

    return write


class Recorder(TunerCallback):
    """Every event the orchestrator sends, in order (``of(TrialFailed)``: those of a kind)."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


for _handler in HANDLERS.values():
    setattr(Recorder, _handler.__name__, lambda self, event: self.events.append(event))


def run_study(config: StudyConfig, orchestrator: Orchestrator | None = None) -> tuple[Orchestrator, Any]:
    """Prepare and run a study in this process (the raw baseline on one thread: the tiny
    tensors are far quicker so on a busy 2-core machine)."""
    import torch

    orchestrator = orchestrator or Orchestrator(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        orchestrator.prepare()
    finally:
        torch.set_num_threads(threads)
    return orchestrator, orchestrator.run()


def load_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials, read the way ``status`` reads them: never creating the schema (a poller
    that did raced ``start`` creating it: ``table trial_values already exists``)."""
    from aam_search.search.study import close_study, load_existing_study

    study = load_existing_study(name, url)
    try:
        return study.get_trials(deepcopy=False)
    finally:
        close_study(study)


def complete(trials) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "aam_search.cli", *args]


def spawn(command: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    """A command-line process in its own process group, output to ``log``."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["PYTHONUNBUFFERED"] = "1"
    handle = open(log, "wb")
    try:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=cwd, env=env, start_new_session=True)
    finally:
        handle.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2, process: subprocess.Popen | None = None,
             log: Path | None = None):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            pytest.fail(f"process exited with {process.returncode} while waiting for {what}:\n{tail}")
        time.sleep(interval)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tail}")


def processes_under(path: Path) -> list[psutil.Process]:
    """Live processes whose command line mentions ``path`` (trial processes name their folder)."""
    found = []
    needle = str(path)
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(needle in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture
def reaper(tmp_path):
    """Processes a test starts; at teardown they and any trial under tmp_path are killed."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        kill_group(process)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pass
    for proc in processes_under(tmp_path):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


class Snapshot:
    """A run of a study: its outcome, the trials afterwards and the trial folders then."""

    def __init__(self, orchestrator: Orchestrator, outcome: Any, seconds: float):
        self.orchestrator = orchestrator
        self.outcome = outcome
        self.seconds = seconds
        self.trials = orchestrator.study.get_trials(deepcopy=True)
        self.user_attrs = dict(orchestrator.study.user_attrs)
        self.folders = sorted(p.name for p in orchestrator.config.trials_dir.iterdir())


@pytest.fixture(scope="session")
def resumed_study(study_cache, tmp_path_factory):
    """One study run three times: n_trials 2, then resumed with n_trials 3, then again.

    Returns ``(config, [first, second, third])`` as :class:`Snapshot`s.
    """
    workdir = tmp_path_factory.mktemp("resumed") / "work"
    runs = []
    for n_trials in (2, 3, 3):
        config = parse_study_config(study_dict(study_cache.path, workdir=workdir, n_trials=n_trials))
        started = time.time()
        orchestrator, outcome = run_study(config)
        runs.append(Snapshot(orchestrator, outcome, time.time() - started))
    return config, runs
