"""The tuner loop: ask Optuna, launch trial processes, watch them, tell Optuna.

The orchestrator is the only writer to the Optuna storage (and, through the callbacks it is
handed, :mod:`~aam_search.search.callbacks`, to MLflow). Trials report only through files
in their folder, so a trial that is killed loses nothing already recorded. ``aam-search
start`` runs it with a study config; ``aam-search worker`` runs the same loop against an
existing study from another machine.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from aam_search.features.cache import FeatureCache
from aam_search.features.config import ConfigError, ExtractConfig
from aam_search.features.extract import extract_features
from aam_search.protocol import FAILURE_KIND, INPUT_FAILURE, RUNG_KEY, Status, is_retryable
from aam_search.redact import redact, scrub
from aam_search.search import optuna_access as private
from aam_search.search.backend import DevicePool, RunningTrial, detect_gpus, start_trial
from aam_search.search.callbacks import (
    Dispatcher,
    EpochReported,
    Event,
    StudyFinished,
    StudyHalted,
    StudyPrepared,
    StudyStatus,
    TrialCompleted,
    TrialFailed,
    TrialStale,
    TrialStarted,
    TunerCallback,
)
from aam_search.search.config import StudyConfig
from aam_search.search.heartbeat import HeartbeatThread, fail_stale_trials, rerun_queued
from aam_search.search.inputs import input_problem
from aam_search.search.objectives import baseline_values
from aam_search.search.pareto import hypervolume, pareto_front, reference_point
from aam_search.search.record import (STALE_REASON, append_hypervolume, attempt_of, hypervolume_history, rerun_attrs,
                                      write_launch, write_reason, write_study)
from aam_search.search.recovery import check_result, keep_result
from aam_search.search.rungs import on_rung, tell_pruned, with_rungs
from aam_search.search.stacking import Stacker
from aam_search.search.storage import StorageError
from aam_search.search.study import (
    admit,
    counted,
    enqueue_start_points,
    open_study,
    opened_slots,
    study_finished,
    waiting_trials,
)
from aam_search.spaces import SearchSpace, merge_overrides, resolve_space
from aam_search.trainer.baseline import raw_baseline
from aam_search.trainer.config import TrialConfig, parse_trial_config
from aam_search.trainer.label_needs import activates, check_attr_labels, objectives_needing_labels

# Reasons the orchestrator stops its own trials with: not the trials' fault, so each is
# queued again without using up a retry ("interrupted": a signal; "stopped": a broken input).
INTERRUPTED = "study interrupted"
STOPPED = "study stopped"


@dataclass
class StudyOutcome:
    completed: int
    failed: int
    interrupted: bool
    front: list[optuna.trial.FrozenTrial]
    hypervolume: float
    stopped: str | None = None  # why the study stopped itself (a missing or broken shared input)
    pruned: int = 0  # stopped early by MO-ASHA; each used its slot of n_trials


class Orchestrator:
    def __init__(self, config: StudyConfig, *, callbacks: Iterable[TunerCallback] = (), worker: bool = False,
                 progress: bool = False):
        """``callbacks`` get every event (the live view, the MLflow tracker: the caller builds
        them); ``progress`` shows the feature extraction's progress bar."""
        self.config = config
        self.worker = worker
        self.progress = progress
        self.running: dict[int, tuple[RunningTrial, optuna.Trial]] = {}
        self.stopping: str | None = None  # a signal's name: stop the trials, queue them again
        self.halted: str | None = None  # a shared input is gone: stop the study with this reason
        self.dispatcher = Dispatcher(callbacks, clean=lambda text: scrub(text, config.storage_url))
        self.callbacks = self.dispatcher.callbacks  # add more before run()
        self.stacker = Stacker()  # one trial per process unless prepare() plans a stack

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> None:
        config = self.config
        config.workdir.mkdir(parents=True, exist_ok=True)
        self.cache = self._feature_cache()
        self.cache.verify()  # once per study, before the first trial: content hashes of the cache
        self.space: SearchSpace = resolve_space(config.space)
        self.base_trial = self._trial_config({}).model_dump(mode="json")  # validates config.trial
        self._check_label_needs()
        baseline = raw_baseline(self.cache, TrialConfig.model_validate(self.base_trial).eval, seed=self.base_trial["seed"])
        self.baseline, self.chance = self._baseline_values(baseline)
        self.reference = reference_point(config.objectives, self.baseline)
        self.study = open_study(config, grid=self.space.grid(), create=not self.worker)
        self.beats = HeartbeatThread(private.storage_of(self.study), config.heartbeat_interval_s)
        if not self.worker:
            write_study(self.study, config.record(), self.baseline)  # no secrets: see StudyConfig.record
            enqueue_start_points(self.study, config, set(self.space.distributions()))
        gpus = detect_gpus()
        self.devices = DevicePool(gpus=gpus, gpus_per_trial=config.gpus_per_trial,
                                  max_parallel=config.max_parallel, base_port=config.base_port)
        self.stacker = Stacker.plan(self, trial_out_dir)
        self._emit(StudyPrepared(study=self.study, objectives=tuple(config.objectives), space=self.space,
                                 base_trial=self.base_trial, baseline=self.baseline, cache=str(self.cache.path),
                                 gpus=tuple(gpus), worker=self.worker))

    def _check_label_needs(self) -> None:
        """Before the first trial: objectives the trial config or the space can turn on that
        need attr: labels must find them in the cache's train split."""
        needed = objectives_needing_labels(TrialConfig.model_validate(self.base_trial))
        for path, spec in self.space.params.items():
            values = {"float": [spec.high], "int": [spec.high], "categorical": spec.choices,
                      "fixed": [spec.value]}.get(spec.type) or []
            if any(activates(path, value) for value in values):
                needed.append(path)
        check_attr_labels(needed, self.cache, f"study {self.config.name!r} (space {self.space.name!r})")

    def _feature_cache(self) -> FeatureCache:
        data = self.config.data
        if data.cache is not None:
            return FeatureCache.open(data.cache)
        extract = ExtractConfig(
            manifest=data.manifest, encoder=data.encoder, clips=data.clips,
            cache_root=data.cache_root or self.config.workdir / "cache",
            decode_workers=data.decode_workers, strict=data.strict,
        )
        return extract_features(extract, show_progress=self.progress).cache

    def _baseline_values(self, baseline: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
        """Raw-feature values of every objective, and their chance levels."""
        return baseline_values(baseline)

    def _trial_config(self, params: dict[str, Any]) -> TrialConfig:
        base = {**self.config.trial, "cache": str(self.cache.path)}
        merged = merge_overrides(base, self.space.to_overrides(params)) if params else base
        merged = with_rungs(self.config, merged)  # MO-ASHA's rungs of this trial's epochs
        try:
            return parse_trial_config(merged, "trial config built from the study")
        except ConfigError as error:
            raise ConfigError(f"{error}\n(parameters: {params})") from None

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = signal.Signals(signum).name

    def run(self) -> StudyOutcome:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        last_stale_check = 0.0
        status: StudyStatus = "failed"
        self.beats.start()  # beats never wait on this loop (nor on the callbacks it calls)
        try:
            while True:
                now = time.time()
                if now - last_stale_check > self.config.heartbeat_interval_s:
                    self._fail_stale_trials()
                    last_stale_check = now
                if not self.stopping and not self.halted:
                    self._fill_devices()
                self._poll()
                if self.stopping or self.halted:
                    self._stop_all(f"{INTERRUPTED} ({self.stopping})" if self.stopping else f"{STOPPED}: {self.halted}")
                    break
                if not self.running and study_finished(self.study.get_trials(deepcopy=False), self.config.n_trials):
                    break
                time.sleep(0.5)
            status = "interrupted" if self.stopping else "stopped" if self.halted else "finished"
        except SQLAlchemyError as error:  # the study storage broke mid-study
            self._stop_unwatched("study storage failed")
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise StorageError(
                f"the study storage {redact(self.config.storage_url)} failed mid-study "
                f"({scrub(reason, self.config.storage_url)[:300]}); the running trials were stopped and their "
                "folders kept; start again once it is back: unfinished trials are re-run in their slots"
            ) from None
        except BaseException:
            self._stop_unwatched("orchestrator failed")
            raise
        finally:
            self.beats.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._emit(StudyFinished(status=status, reason=self.halted))
        return self.outcome()

    def _stop_unwatched(self, reason: str) -> None:
        for running, _ in self.running.values():  # never leave trials training unwatched
            running.stop(reason, grace_s=5.0)

    def _fail_stale_trials(self) -> None:
        """Fail other workers' trials whose beats stopped (never one this process runs)."""
        own = {private.trial_id(trial) for _, trial in self.running.values()} | self.beats.owned()
        for trial in fail_stale_trials(self.study, own):
            self._emit(TrialStale(number=trial.number, reason=STALE_REASON, retried=rerun_queued(self.study, trial)))

    def _halt(self, reason: str) -> None:
        """Stop the study: a shared input every trial needs is missing or broken. Running
        trials are stopped and queued again; no trial's budget is spent on it."""
        if self.halted is None:
            self.halted = reason
            self._emit(StudyHalted(reason=reason))

    def _fill_devices(self) -> None:
        while self.devices.free and not self.halted:
            trials = self.study.get_trials(deepcopy=False)
            if not waiting_trials(self.study) and len(opened_slots(trials)) >= self.config.n_trials:
                return
            problem = input_problem(self.cache.path)  # before a trial is asked for, not after it failed
            if problem is not None:
                self._halt(problem)
                return
            trial = self.study.ask()
            # Beat at once: a RUNNING trial without any heartbeat is never found stale, so
            # a worker killed before its first beat would hold the study open for good.
            private.storage_of(self.study).record_heartbeat(private.trial_id(trial))
            if not admit(self.study, trial, self.config.n_trials):
                return
            self.stacker.fill(self, trial)  # this trial alone, or with more asked beside it

    def _launch(self, trial: optuna.Trial) -> None:
        try:
            params = self.space.suggest(trial)
            trial_config = self._trial_config(params).model_dump(mode="json")
        except Exception as error:  # a space that builds an invalid trial: fail it, say why
            self._fail(trial, f"invalid trial config: {error}", retry=False)
            return
        slot = self.devices.take()
        out_dir = trial_out_dir(self.config, trial.number)
        try:
            running = start_trial(trial.number, trial_config, out_dir, slot, self.config.trial_timeout_s)
        except OSError as error:
            # An unwritable trials folder (or a launcher that cannot start) hits every trial
            # alike: stop the study with the reason rather than fail the whole budget.
            self.devices.give_back(slot)
            reason = f"cannot start a trial in {out_dir}: {error.strerror or error}"
            self._halt(reason)
            self._fail(trial, reason, retry=True, counts_as_attempt=False)
            return
        self.running[trial.number] = (running, trial)
        self.beats.add(private.trial_id(trial))
        write_launch(trial, out_dir, slot.gpus)
        self._emit(TrialStarted(number=trial.number, params=params, out_dir=out_dir, devices=tuple(slot.gpus)))

    def _poll(self) -> None:
        for number, (running, trial) in list(self.running.items()):
            for line in running.poll_metrics():
                if RUNG_KEY in line:  # a rung: record it, decide on first arrival, answer the trial
                    on_rung(self.study, trial, running.out_dir, line[RUNG_KEY], self.config, self.reference)
                else:
                    self._emit(EpochReported(number=number, metrics=line))
            if not running.finished() and running.elapsed > running.timeout_s:
                running.stop(f"timeout after {running.timeout_s:.0f}s")
            if running.finished() or (self._stack_peers(number, running) and running.pruned_meanwhile()):
                del self.running[number]
                if not self._stack_peers(number, running):  # a stack's slot comes back with its last member
                    self.devices.give_back(running.slot)
                try:
                    self._finish(running, trial)
                except optuna.exceptions.UpdateFinishedTrialError:
                    # Another worker heard no heartbeat from us for longer than the grace
                    # period, failed this trial and queued its re-run; this run failed too.
                    frozen = private.frozen(self.study, trial)
                    self._emit(TrialFailed(number=number, retried=rerun_queued(self.study, frozen),
                                           reason=f"failed meanwhile by another worker ({STALE_REASON})"))
                finally:
                    self.beats.discard(private.trial_id(trial))

    def _stack_peers(self, number: int, running: RunningTrial) -> bool:
        """Whether other running trials share this one's process (the rest of its stack)."""
        return any(other.process is running.process for n, (other, _) in self.running.items() if n != number)

    def _finish(self, running: RunningTrial, trial: optuna.Trial) -> None:
        status, reason, result = running.outcome()
        if status == "stopped" and reason and reason.startswith((INTERRUPTED, STOPPED)):
            self._fail(trial, reason, retry=True, counts_as_attempt=False)
            return
        if result is not None and result.get("status") == Status.PRUNED:  # stopped by on_rung's verdict
            self._emit(tell_pruned(self.study, trial, result, self.config))
            return
        if status != "completed" or result is None:
            if result is not None and result.get(FAILURE_KIND) == INPUT_FAILURE:
                # The trial found the cache gone or broken: so would every other trial.
                self._halt(f"trial {trial.number} found a shared input missing or broken: {reason}")
                self._fail(trial, reason or status, retry=True, counts_as_attempt=False)
                return
            # The trial says whether the same parameters could end otherwise (protocol.RETRYABLE).
            self._fail(trial, reason or status, retry=is_retryable(result))
            return
        verdict = check_result(result, self.config.objectives, self.config.max_utility_drop)
        if isinstance(verdict, str):
            self._fail(trial, verdict, retry=False)
            return
        try:
            verdict.tell(self.study, trial)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Failed meanwhile as stale by another worker: keep what this run measured.
            original = private.frozen(self.study, trial)
            told, where = keep_result(self.study, original, verdict)
            retried = told is None and rerun_queued(self.study, original)
            self._emit(TrialFailed(number=trial.number, retried=retried,
                                   reason=f"failed meanwhile by another worker ({STALE_REASON}); "
                                          f"its completed result was {where}"))
            if told is not None:
                self._completed(told, verdict.values, result)
            return
        self._completed(trial.number, verdict.values, result)

    def _completed(self, number: int, values: list[float], result: dict[str, Any]) -> None:
        trials = self.study.get_trials(deepcopy=False)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        volume = hypervolume(trials, self.config.objectives, self.reference)
        append_hypervolume(self.study, done, volume)
        self._emit(TrialCompleted(number=number, values=tuple(values), result=result, hypervolume=volume))

    def _fail(self, trial: optuna.Trial, reason: str, *, retry: bool, counts_as_attempt: bool = True) -> bool:
        """Tell Optuna the trial failed; queue a re-run when ``retry`` and retries are left.
        Returns whether a re-run was queued (what :class:`TrialFailed`'s ``retried`` says)."""
        frozen = private.frozen(self.study, trial)
        write_reason(trial, reason)
        rerun = retry and (not counts_as_attempt or attempt_of(frozen) < self.config.max_retries)
        if rerun:
            self.study.enqueue_trial(frozen.params, user_attrs=rerun_attrs(frozen, counts_as_attempt=counts_as_attempt))
        self.study.tell(trial, state=TrialState.FAIL)
        self._emit(TrialFailed(number=trial.number, reason=reason, retried=rerun))
        return rerun

    def _stop_all(self, reason: str) -> None:
        for running, _ in self.running.values():
            running.stop(reason)
        self._poll()

    def _emit(self, event: Event) -> None:
        self.dispatcher.emit(event)

    # ------------------------------------------------------------------ results
    def outcome(self) -> StudyOutcome:
        trials = self.study.get_trials(deepcopy=False)
        history = hypervolume_history(self.study)
        return StudyOutcome(
            completed=sum(t.state == TrialState.COMPLETE for t in trials),
            failed=sum(t.state == TrialState.FAIL for t in counted(trials)),
            pruned=sum(t.state == TrialState.PRUNED for t in trials),
            interrupted=self.stopping is not None,
            front=pareto_front(trials, self.config.objectives),
            hypervolume=history[-1][1] if history else 0.0,
            stopped=self.halted,
        )


def trial_out_dir(config: StudyConfig, number: int) -> Path:
    """A trial's folder: ``<workdir>/trials/<study>/trial-NNNN``, so that studies sharing a
    workdir never share a folder. (Trials recorded before keep their ``out_dir`` attr.)"""
    return config.trials_dir / f"trial-{number:04d}"
