"""Heartbeats of the trials this worker runs, and the check for trials nobody beats for.

Trials run in child processes, so the orchestrator beats for them. The beats run on a
thread of their own: the loop also calls its callbacks (the MLflow tracker), and a request
that hangs there for longer than the grace period must not make our own healthy trials
look dead to the other workers. The thread uses the study's RDB storage, whose sessions are
per thread, so it holds a database connection of its own and never waits on the loop.
"""

from __future__ import annotations

import copy
import logging
import threading

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from aam_search.search import optuna_access as private
from aam_search.search.record import slot_of

logger = logging.getLogger(__name__)

# System attribute of a trial re-queued by Optuna's RetryHeartbeatStaleTrialCallback.
RETRY_HISTORY = "retry_history"


class HeartbeatThread:
    """Beats every ``interval_s`` for the trial ids it holds, on its own thread."""

    def __init__(self, storage: BaseStorage, interval_s: float):
        self.storage = storage
        self.interval_s = interval_s
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def add(self, trial_id: int) -> None:
        with self._lock:
            self._ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def owned(self) -> set[int]:
        with self._lock:
            return set(self._ids)

    def beat(self) -> None:
        for trial_id in self.owned():
            try:
                self.storage.record_heartbeat(trial_id)
            except Exception as error:  # the database hiccuped: the next beat tries again
                if not self._warned:
                    self._warned = True
                    logger.warning("could not record a heartbeat for trial id %s: %s", trial_id, error)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="aam-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
            self._thread = None


def fail_stale_trials(study: optuna.Study, own: set[int]) -> list[FrozenTrial]:
    """Optuna's ``fail_stale_trials``, except for the trials this process runs itself.

    Optuna fails every stale RUNNING trial of the study; a worker whose beats were late
    (a stalled database or a frozen loop) would then fail its own healthy trial. Returns
    the trials failed here (after the storage's stale-trial callback re-queued them).
    """
    storage = private.storage_of(study)
    if not private.heartbeat_enabled(storage):
        return []
    failed_ids = []
    for trial_id in private.stale_trial_ids(study):
        if trial_id in own:
            continue
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed_ids.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker was first
            pass
    failed = [copy.deepcopy(storage.get_trial(trial_id)) for trial_id in failed_ids]
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        for trial in failed:
            callback(study, trial)
    return failed


def rerun_queued(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Whether a re-run of ``trial`` waits in the queue (or already runs)."""
    pending = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    return any(t.number > trial.number and (slot_of(t) == slot_of(trial)
                                            or trial.number in t.system_attrs.get(RETRY_HISTORY, ()))
               for t in pending)
