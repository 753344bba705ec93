"""The tuner loop's events, typed: what the orchestrator tells its callbacks.

A :class:`TunerCallback` has one method per event, each a no-op until a subclass overrides
it (as Syne Tune's ``TunerCallback``), and each takes one frozen payload. The orchestrator
is handed its callbacks (the live view, the MLflow tracker) by whoever runs it (the CLI,
the demo, a test) and never builds them, so ``search/`` knows nothing of ``tracking/``.
A callback that raises is logged once per callback and event and the study goes on: a
view or a tracker must never decide whether a study runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import optuna

    from aam_search.spaces import SearchSpace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyPrepared:
    """The study is open and its inputs checked; no trial has started yet."""

    study: optuna.Study  # a tracker keeps its own record in it; the view reads the front
    objectives: tuple[str, ...]
    space: SearchSpace
    base_trial: Mapping[str, Any]  # the trial config every trial starts from (resolved, JSON)
    baseline: Mapping[str, float]  # raw-feature value of every objective
    cache: str  # the feature cache's folder
    gpus: tuple[int, ...]  # the GPUs found (none: trials run on the CPU)
    worker: bool  # joined an existing study (``aam-search worker``)


@dataclass(frozen=True)
class TrialStarted:
    number: int
    params: Mapping[str, Any]  # the sampled parameters
    out_dir: Path
    devices: tuple[int, ...]  # its GPUs (none: the CPU)


@dataclass(frozen=True)
class EpochReported:
    number: int
    metrics: Mapping[str, Any]  # one line of the trial's metrics.jsonl


@dataclass(frozen=True)
class TrialCompleted:
    number: int  # the trial now COMPLETE (a queued re-run when the result was recovered)
    values: tuple[float, ...]  # in the order of the study's objectives
    result: Mapping[str, Any]  # the trial's result.json
    hypervolume: float  # of the front after it


@dataclass(frozen=True)
class TrialFailed:
    number: int
    reason: str
    retried: bool  # a re-run of its slot waits in the queue


@dataclass(frozen=True)
class TrialPruned:
    """Stopped at a rung by early stopping: told to Optuna as PRUNED."""

    number: int
    rung: int
    epoch: int
    values: tuple[float, ...]  # its objective values at the rung
    reason: str


@dataclass(frozen=True)
class TrialStale:
    """Another (or an earlier, dead) worker's trial that nobody beat for was failed here."""

    number: int
    reason: str
    retried: bool


@dataclass(frozen=True)
class StudyHalted:
    """A shared input every trial needs is missing or broken: the study stops itself."""

    reason: str


StudyStatus = Literal["finished", "interrupted", "stopped", "failed"]


@dataclass(frozen=True)
class StudyFinished:
    """This process's loop ended (always sent, also when it ended with an error)."""

    status: StudyStatus
    reason: str | None  # why it stopped itself (StudyHalted's reason)


Event = (StudyPrepared | TrialStarted | EpochReported | TrialCompleted | TrialFailed | TrialPruned | TrialStale
         | StudyHalted | StudyFinished)


class TunerCallback:
    """Override the events a callback cares about; the others do nothing."""

    def on_study_prepared(self, event: StudyPrepared) -> None:
        pass

    def on_trial_started(self, event: TrialStarted) -> None:
        pass

    def on_epoch_reported(self, event: EpochReported) -> None:
        pass

    def on_trial_completed(self, event: TrialCompleted) -> None:
        pass

    def on_trial_failed(self, event: TrialFailed) -> None:
        pass

    def on_trial_pruned(self, event: TrialPruned) -> None:
        pass

    def on_trial_stale(self, event: TrialStale) -> None:
        pass

    def on_study_halted(self, event: StudyHalted) -> None:
        pass

    def on_study_finished(self, event: StudyFinished) -> None:
        pass


# The method each event calls: the one place an event meets its handler's name.
HANDLERS: dict[type, Callable[[TunerCallback, Any], None]] = {
    StudyPrepared: TunerCallback.on_study_prepared,
    TrialStarted: TunerCallback.on_trial_started,
    EpochReported: TunerCallback.on_epoch_reported,
    TrialCompleted: TunerCallback.on_trial_completed,
    TrialFailed: TunerCallback.on_trial_failed,
    TrialPruned: TunerCallback.on_trial_pruned,
    TrialStale: TunerCallback.on_trial_stale,
    StudyHalted: TunerCallback.on_study_halted,
    StudyFinished: TunerCallback.on_study_finished,
}


class Dispatcher:
    """Sends each event to every callback; one that raises is warned about once per event
    kind, and the others still get the event."""

    def __init__(self, callbacks: Iterable[TunerCallback] = (), clean: Callable[[str], str] = str):
        self.callbacks = list(callbacks)
        self.clean = clean  # removes secrets from an error's message before it is logged
        self._warned: set[tuple[int, type]] = set()

    def emit(self, event: Event) -> None:
        name = HANDLERS[type(event)].__name__
        for callback in self.callbacks:
            try:
                getattr(callback, name)(event)
            except Exception as error:
                key = (id(callback), type(event))
                if key not in self._warned:
                    self._warned.add(key)
                    logger.warning("callback %s failed on %s (%s: %s); the study goes on. Further errors of "
                                   "this callback on this event are not shown.", type(callback).__name__, name,
                                   type(error).__name__, self.clean(str(error))[:300])
