"""The tuner loop: ask Optuna, launch trial processes, watch them, tell Optuna.

The orchestrator is the only writer to the Optuna storage (and, through ``tracking``, to
MLflow). Trials report only through files in their folder, so a trial that is killed loses
nothing already recorded. ``aam-search start`` runs it with a study config; ``aam-search
worker`` runs the same loop against an existing study from another machine.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from aam_search.features.cache import FeatureCache
from aam_search.features.config import ConfigError, ExtractConfig
from aam_search.features.extract import extract_features
from aam_search.search.backend import DevicePool, RunningTrial, detect_gpus, start_trial
from aam_search.search.config import StudyConfig
from aam_search.search.pareto import hypervolume, objective_value, pareto_front, reference_point
from aam_search.search.study import (
    ATTEMPT,
    REASON,
    SLOT,
    admit,
    counted,
    enqueue_start_points,
    open_study,
    opened_slots,
    redact,
    study_finished,
    waiting_trials,
)
from aam_search.spaces import SearchSpace, merge_overrides, resolve_space
from aam_search.trainer.baseline import raw_baseline, worst_case
from aam_search.trainer.config import TrialConfig, parse_trial_config
from aam_search.trainer.reporter import finite_number

CONFIG_ATTR = "aam:config"
BASELINE_ATTR = "aam:baseline"
HYPERVOLUME_ATTR = "aam:hypervolume"
# Failures that the same parameters would reproduce: retrying them wastes the budget.
DETERMINISTIC = ("diverged:", "failed: non-finite")


@dataclass
class StudyOutcome:
    completed: int
    failed: int
    interrupted: bool
    front: list[optuna.trial.FrozenTrial]
    hypervolume: float


class Orchestrator:
    def __init__(self, config: StudyConfig, *, view: Any | None = None, worker: bool = False):
        self.config = config
        self.view = view
        self.worker = worker
        self.running: dict[int, tuple[RunningTrial, optuna.Trial]] = {}
        self.stopping: str | None = None
        self.hooks: list[Callable[[str, dict[str, Any]], None]] = []  # e.g. MLflow tracking

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> None:
        config = self.config
        config.workdir.mkdir(parents=True, exist_ok=True)
        self.tracker = None
        if config.track:  # first, so an unreachable MLflow fails the start in seconds
            from aam_search.tracking.runs import StudyTracker

            self.tracker = StudyTracker.connect(config)
        self.cache = self._feature_cache()
        self.space: SearchSpace = resolve_space(config.space)
        self.base_trial = self._trial_config({}).model_dump(mode="json")  # validates config.trial
        baseline = raw_baseline(self.cache, TrialConfig.model_validate(self.base_trial).eval, seed=self.base_trial["seed"])
        self.baseline, self.chance = self._baseline_values(baseline)
        self.reference = reference_point(config.objectives, self.baseline)
        self.study = open_study(config, grid=self.space.grid())
        if not self.worker:
            self.study.set_user_attr(CONFIG_ATTR, json.loads(config.model_dump_json()) | {"storage": redact(config.storage_url)})
            self.study.set_user_attr(BASELINE_ATTR, self.baseline)
            enqueue_start_points(self.study, config, set(self.space.distributions()))
        if self.tracker is not None:
            self.tracker.open(self.study, space=self.space, base_trial=self.base_trial, baseline=self.baseline,
                              worker=self.worker)
            self.hooks.append(self.tracker.handle)
        gpus = detect_gpus()
        self.devices = DevicePool(gpus=gpus, gpus_per_trial=config.gpus_per_trial,
                                  max_parallel=config.max_parallel, base_port=config.base_port)
        self._emit("prepared", {"cache": str(self.cache.path), "baseline": self.baseline, "gpus": gpus})

    def _feature_cache(self) -> FeatureCache:
        data = self.config.data
        if data.cache is not None:
            return FeatureCache.open(data.cache)
        extract = ExtractConfig(
            manifest=data.manifest, encoder=data.encoder, clips=data.clips,
            cache_root=data.cache_root or self.config.workdir / "cache",
            decode_workers=data.decode_workers, strict=data.strict,
        )
        return extract_features(extract, show_progress=self.view is not None and self.view.interactive).cache

    def _baseline_values(self, baseline: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
        """Raw-feature values of every objective, and their chance levels."""
        values = {name: tasks["top1"] for name, tasks in baseline["tasks"].items() if name != "action"}
        chance = {name: tasks["chance"] for name, tasks in baseline["tasks"].items() if name != "action"}
        main = baseline["tasks"].get("action") or next(iter(baseline["tasks"].values()))
        values["utility"], chance["utility"] = main["top1"], main["chance"]
        for protocol, leak in baseline["privacy"].items():
            values[f"leakage:{protocol}"], chance[f"leakage:{protocol}"] = leak["cmap"], leak["chance"]
        # As in each trial's result (trainer.baseline.summarize): the worst case over protocols.
        _, values["leakage"], chance["leakage"] = worst_case(baseline["privacy"])
        return values, chance

    def _trial_config(self, params: dict[str, Any]) -> TrialConfig:
        base = {**self.config.trial, "cache": str(self.cache.path)}
        merged = merge_overrides(base, self.space.to_overrides(params)) if params else base
        try:
            return parse_trial_config(merged, "trial config built from the study")
        except ConfigError as error:
            raise ConfigError(f"{error}\n(parameters: {params})") from None

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = signal.Signals(signum).name

    def run(self) -> StudyOutcome:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        storage = self.study._storage
        last_stale_check = 0.0
        status = "failed"
        try:
            while True:
                now = time.time()
                if now - last_stale_check > self.config.heartbeat_interval_s:
                    optuna.storages.fail_stale_trials(self.study)
                    last_stale_check = now
                for _, trial in self.running.values():
                    storage.record_heartbeat(trial._trial_id)
                if not self.stopping:
                    self._fill_devices()
                self._poll()
                if self.stopping:
                    self._stop_all(f"study interrupted ({self.stopping})")
                    break
                if not self.running and study_finished(self.study.get_trials(deepcopy=False), self.config.n_trials):
                    break
                time.sleep(0.5)
            status = "interrupted" if self.stopping else "finished"
        except BaseException:
            for running, _ in self.running.values():  # never leave trials training unwatched
                running.stop("orchestrator failed", grace_s=5.0)
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._emit("finished", {"status": status})
        return self.outcome()

    def _fill_devices(self) -> None:
        while self.devices.free:
            trials = self.study.get_trials(deepcopy=False)
            if not waiting_trials(self.study) and len(opened_slots(trials)) >= self.config.n_trials:
                return
            trial = self.study.ask()
            # Beat at once: a RUNNING trial without any heartbeat is never found stale, so
            # a worker killed before its first beat would hold the study open for good.
            self.study._storage.record_heartbeat(trial._trial_id)
            if not admit(self.study, trial, self.config.n_trials):
                return
            self._launch(trial)

    def _launch(self, trial: optuna.Trial) -> None:
        try:
            params = self.space.suggest(trial)
            trial_config = self._trial_config(params).resolved()
        except Exception as error:  # a space that builds an invalid trial: fail it, say why
            self._fail(trial, f"invalid trial config: {error}", retry=False)
            return
        slot = self.devices.take()
        out_dir = trial_out_dir(self.config.workdir, trial.number)
        trial_config["optim"].pop("effective_lr", None)  # derived; the trial derives it again
        running = start_trial(trial.number, trial_config, out_dir, slot, self.config.trial_timeout_s)
        trial.set_user_attr("out_dir", str(out_dir))
        trial.set_user_attr("devices", ",".join(map(str, slot.gpus)) or "cpu")
        self.running[trial.number] = (running, trial)
        self._emit("started", {"number": trial.number, "params": params, "out_dir": str(out_dir), "devices": slot.gpus})

    def _poll(self) -> None:
        for number, (running, trial) in list(self.running.items()):
            for line in running.poll_metrics():
                self._emit("epoch", {"number": number, "metrics": line})
            if not running.finished() and running.elapsed > running.timeout_s:
                running.stop(f"timeout after {running.timeout_s:.0f}s")
            if running.finished():
                del self.running[number]
                self.devices.give_back(running.slot)
                try:
                    self._finish(running, trial)
                except optuna.exceptions.UpdateFinishedTrialError:
                    # Another worker heard no heartbeat from us for longer than the grace
                    # period, failed this trial and queued its re-run: drop what it measured.
                    self._emit("failed", {"number": number, "retried": True,
                                          "reason": "failed meanwhile by another worker (stale heartbeat)"})

    def _finish(self, running: RunningTrial, trial: optuna.Trial) -> None:
        status, reason, result = running.outcome()
        if status == "stopped" and reason and reason.startswith("study interrupted"):
            self._fail(trial, reason, retry=True, counts_as_attempt=False)
            return
        if status != "completed" or result is None:
            self._fail(trial, reason or status, retry=not (reason or "").startswith(DETERMINISTIC))
            return
        try:
            values = [objective_value(name, result) for name in self.config.objectives]
        except KeyError as error:
            self._fail(trial, str(error), retry=False)
            return
        if self.config.max_utility_drop is not None:
            drop = finite_number(result.get("utility_drop"))
            if drop is None:  # Optuna refuses a NaN constraint; raw utility 0 gives one
                self._fail(trial, f"cannot check max_utility_drop: utility_drop is {result.get('utility_drop')!r} "
                                  f"(raw utility {result.get('raw_utility')!r})", retry=False)
                return
            trial.set_constraint("max_utility_drop", drop - self.config.max_utility_drop)
        for key in ("utility", "leakage", "leakage_chance", "leakage_reduction", "utility_drop", "combined_score"):
            trial.set_user_attr(key, result.get(key))
        trial.set_user_attr("seconds", result.get("timings", {}).get("total_s"))
        self.study.tell(trial, values)
        trials = self.study.get_trials(deepcopy=False)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        volume = hypervolume(trials, self.config.objectives, self.reference)
        history = self.study.user_attrs.get(HYPERVOLUME_ATTR, [])
        self.study.set_user_attr(HYPERVOLUME_ATTR, [*history, [done, volume]])
        self._emit("completed", {"number": trial.number, "values": values, "result": result, "hypervolume": volume})

    def _fail(self, trial: optuna.Trial, reason: str, *, retry: bool, counts_as_attempt: bool = True) -> None:
        frozen = self.study._storage.get_trial(trial._trial_id)
        attempt = int(frozen.user_attrs.get(ATTEMPT, 0))
        trial.set_user_attr(REASON, reason[:2000])
        if retry and (not counts_as_attempt or attempt < self.config.max_retries):
            self.study.enqueue_trial(
                frozen.params,
                user_attrs={SLOT: frozen.user_attrs.get(SLOT, trial.number),
                            ATTEMPT: attempt + (1 if counts_as_attempt else 0)},
            )
        self.study.tell(trial, state=TrialState.FAIL)
        self._emit("failed", {"number": trial.number, "reason": reason, "retried": retry})

    def _stop_all(self, reason: str) -> None:
        for running, _ in self.running.values():
            running.stop(reason)
        self._poll()

    def _emit(self, event: str, payload: dict[str, Any]) -> None:
        if self.view is not None:
            self.view.handle(event, payload, self)
        for hook in self.hooks:
            hook(event, payload)

    # ------------------------------------------------------------------ results
    def outcome(self) -> StudyOutcome:
        trials = self.study.get_trials(deepcopy=False)
        history = self.study.user_attrs.get(HYPERVOLUME_ATTR, [])
        return StudyOutcome(
            completed=sum(t.state == TrialState.COMPLETE for t in trials),
            failed=sum(t.state == TrialState.FAIL for t in counted(trials)),
            interrupted=self.stopping is not None,
            front=pareto_front(trials, self.config.objectives),
            hypervolume=history[-1][1] if history else 0.0,
        )




def trial_out_dir(workdir: Path, number: int) -> Path:
    return workdir / "trials" / f"trial-{number:04d}"
