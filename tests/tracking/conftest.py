"""A tiny tracked study, run once per session and shared by the tracking tests.

Trials are real ``aam-search train`` subprocesses (a few seconds each); MLflow is real, on a
SQLite store in the study's work folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aam_search.search.config import StudyConfig, parse_study_config
from aam_search.search.orchestrator import Orchestrator, StudyOutcome

TINY_TRIAL = {
    "optim": {"epochs": 2, "min_steps": 0, "batch_size": 4, "head_pretrain_epochs": 1},
    "eval": {"attacker_epochs": 3, "probe_epochs": 3},
}


def tiny_config(cache: Path, workdir: Path, **changes: Any) -> StudyConfig:
    data: dict[str, Any] = {
        "name": "tiny", "workdir": str(workdir), "data": {"cache": str(cache)}, "trial": TINY_TRIAL,
        "n_trials": 3, "max_parallel": 2, "seed": 0,
    }
    data.update(changes)
    return parse_study_config(data)


def run_study(config: StudyConfig) -> tuple[Orchestrator, StudyOutcome]:
    """Run the study as the CLI does: the tracker connected first and handed in."""
    from aam_search.tracking.runs import study_tracker

    tracker = study_tracker(config)
    orchestrator = Orchestrator(config, callbacks=[tracker] if tracker is not None else [])
    orchestrator.prepare()
    return orchestrator, orchestrator.run()


def tracker_of(orchestrator: Orchestrator):
    """The StudyTracker among the orchestrator's callbacks."""
    from aam_search.tracking.runs import StudyTracker

    (tracker,) = (c for c in orchestrator.callbacks if isinstance(c, StudyTracker))
    return tracker


@dataclass
class Tracked:
    config: StudyConfig
    outcome: StudyOutcome
    uri: str
    storage: str
    experiment_id: str
    parent_run_id: str
    # MLflow as it was right after the 3-trial run (later tests resume and promote).
    child_names: list[str]
    hypervolume_steps: list[int]
    parent_artifacts: set[str]

    def client(self):
        from aam_search.tracking.store import make_client

        return make_client(self.uri)


@pytest.fixture(scope="session")
def tracked(small_cache, tmp_path_factory) -> Tracked:
    from aam_search.tracking.store import make_client

    workdir = tmp_path_factory.mktemp("tracked") / "work"
    config = tiny_config(small_cache.path, workdir)
    orchestrator, outcome = run_study(config)
    assert outcome.completed == 3, outcome
    tracker = tracker_of(orchestrator)
    client = make_client(tracker.uri)
    children = tracker.child_runs()
    history = client.get_metric_history(tracker.parent_run_id, "hypervolume")
    return Tracked(
        config=config, outcome=outcome, uri=tracker.uri, storage=config.storage_url,
        experiment_id=tracker.experiment_id, parent_run_id=tracker.parent_run_id,
        child_names=sorted(run.info.run_name for run in children),
        hypervolume_steps=sorted(m.step for m in history),
        parent_artifacts={a.path for a in client.list_artifacts(tracker.parent_run_id)},
    )
