"""Stacked trials in the tuner loop: up to ``stack`` trials asked at once, run as one
``aam-search train-stack`` process in one device slot, each told from its own result.json.

The orchestrator calls :meth:`Stacker.plan` once (``prepare``) and :meth:`Stacker.fill` where
it would launch one trial. A space that varies a field that changes the model's shape
(``trainer.stack.is_shape_field``), a trial config that cannot stack, or several GPUs per trial
fall back to one trial per process, said once. The members share one process, log and slot
(``DevicePool.give_back`` takes the slot back once, with the last member); everything else
(heartbeats, timeouts, stops, retries, MO-ASHA rungs and verdicts, the Optuna and MLflow
records) stays per trial: a member pruned at a rung is told PRUNED while the others train on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from aam_search.protocol import LOG_FILE
from aam_search.search import optuna_access as private
from aam_search.search.backend import RunningTrial, Slot, spawn_trial, trial_command, write_trial_config
from aam_search.search.callbacks import TrialStarted
from aam_search.search.record import STACK_ATTR, write_launch
from aam_search.search.study import admit, opened_slots, waiting_trials
from aam_search.trainer.config import TrialConfig
from aam_search.trainer.data import task_num_classes
from aam_search.trainer.model import TaskHeads, build_adapter, count_parameters
from aam_search.trainer.stack import available_bytes, is_shape_field, member_bytes, memory_cap, stack_key, stack_problem

logger = logging.getLogger(__name__)

def stack_fallback(config: Any, space: Any, base: TrialConfig) -> str | None:
    """Why trials of this study cannot stack, or None when they can."""
    varying = [name for name, spec in space.params.items() if spec.sampled and is_shape_field(name)]
    if varying:
        return f"the space varies {', '.join(sorted(varying))}, which change the model's shape"
    if config.gpus_per_trial > 1:
        return "a trial on several GPUs runs under DDP"
    return stack_problem(base)


def cpu_cap(config: TrialConfig, cache: Any, slots: int) -> int:
    """Members that fit a CPU slot's share of the available RAM."""
    adapter = build_adapter(cache.dim, config.adapter)
    parameters = count_parameters(adapter) + count_parameters(TaskHeads(cache.dim, task_num_classes(cache)))
    per_member = member_bytes(config, cache.dim, cache.clip_features.shape[1], parameters)
    import torch

    return memory_cap(per_member, available_bytes(torch.device("cpu")) // max(1, slots))


class Stacker:
    def __init__(self, size: int = 1, out_dir: Callable[[Any, int], Path] | None = None) -> None:
        self.size, self.out_dir = size, out_dir

    @classmethod
    def plan(cls, orchestrator: Any, out_dir: Callable[[Any, int], Path]) -> Stacker:
        """The stack size this study runs with, said once when it is not the one asked for;
        ``out_dir(config, number)``: a trial's folder (the orchestrator's ``trial_out_dir``)."""
        config = orchestrator.config
        if config.stack <= 1:
            return cls(1)
        fixed = {name: spec.value for name, spec in orchestrator.space.params.items()
                 if not spec.sampled and spec.condition is None}
        base = orchestrator._trial_config(fixed)
        reason = stack_fallback(config, orchestrator.space, base)
        if reason:
            logger.warning("stack: %d asked, but each trial runs alone in its own process: %s", config.stack, reason)
            return cls(1, out_dir)
        size = config.stack
        if not orchestrator.devices.free or not orchestrator.devices.free[0].gpus:
            cap = cpu_cap(base, orchestrator.cache, orchestrator.devices.capacity)
            if cap < size:
                logger.warning("stack: %d cut to %d: that many members fit the available memory", size, cap)
                size = cap
        # On a GPU the trial process measures its free memory and cuts the stack itself.
        return cls(size, out_dir)

    def fill(self, orchestrator: Any, first: optuna.Trial) -> None:
        """Ask up to ``size - 1`` more trials beside ``first`` and launch them as one process."""
        if self.size <= 1:
            orchestrator._launch(first)
            return
        trials = [first]
        study, budget = orchestrator.study, orchestrator.config.n_trials
        while len(trials) < self.size:
            if not waiting_trials(study) and len(opened_slots(study.get_trials(deepcopy=False))) >= budget:
                break
            trial = study.ask()
            private.storage_of(study).record_heartbeat(private.trial_id(trial))  # at once, as _fill_devices does
            if not admit(study, trial, budget):
                break
            trials.append(trial)
        if len(trials) == 1:
            orchestrator._launch(first)
            return
        self._launch(orchestrator, trials)

    def _launch(self, orchestrator: Any, trials: list[optuna.Trial]) -> None:
        members: list[tuple[optuna.Trial, dict[str, Any], TrialConfig]] = []
        for trial in trials:
            try:
                params = orchestrator.space.suggest(trial)
                members.append((trial, params, orchestrator._trial_config(params)))
            except Exception as error:  # a space that builds an invalid trial: fail it, say why
                orchestrator._fail(trial, f"invalid trial config: {error}", retry=False)
        if members:
            key = stack_key(members[0][2])
            for trial, _, built in [m for m in members if stack_key(m[2]) != key or stack_problem(m[2])]:
                orchestrator._fail(trial, "could not share a stack with its peers; queued to run again",
                                   retry=True, counts_as_attempt=False)
            members = [m for m in members if stack_key(m[2]) == key and not stack_problem(m[2])]
        if not members:
            return
        slot = orchestrator.devices.take()
        out_dirs = [self.out_dir(orchestrator.config, trial.number) for trial, _, _ in members]
        try:
            runs = start_stack([t.number for t, _, _ in members], [c.model_dump(mode="json") for _, _, c in members],
                               out_dirs, slot, orchestrator.config.trial_timeout_s * len(members))
        except OSError as error:
            orchestrator.devices.give_back(slot)
            reason = f"cannot start a trial in {out_dirs[0]}: {error.strerror or error}"
            orchestrator._halt(reason)
            for trial, _, _ in members:
                orchestrator._fail(trial, reason, retry=True, counts_as_attempt=False)
            return
        numbers = [t.number for t, _, _ in members]
        for (trial, params, _), running, out_dir in zip(members, runs, out_dirs):
            orchestrator.running[trial.number] = (running, trial)
            orchestrator.beats.add(private.trial_id(trial))
            write_launch(trial, out_dir, slot.gpus)
            trial.set_user_attr(STACK_ATTR, numbers)
            orchestrator._emit(TrialStarted(number=trial.number, params=params, out_dir=out_dir,
                                            devices=tuple(slot.gpus)))


def start_stack(numbers: list[int], configs: list[dict[str, Any]], out_dirs: list[Path], slot: Slot,
                timeout_s: float) -> list[RunningTrial]:
    """One ``train-stack`` process for the members; each member's folder gets its trial.yaml
    and a ``trial.log`` that is the one process log (hard links: one file, every folder)."""
    args = ["train-stack"]
    for config, out_dir in zip(configs, out_dirs):
        args += ["--config", str(write_trial_config(config, out_dir)), "--out", str(out_dir)]
    first_log = out_dirs[0] / LOG_FILE
    log = open(first_log, "ab")
    for out_dir in out_dirs[1:]:
        (out_dir / LOG_FILE).unlink(missing_ok=True)
        os.link(first_log, out_dir / LOG_FILE)
    command = trial_command(out_dirs[0], out_dirs[0], slot, deepspeed=False, train_args=args)
    process = spawn_trial(command, log, slot)
    started = time.time()
    return [RunningTrial(number, out_dir, process, slot, started, timeout_s, log)
            for number, out_dir in zip(numbers, out_dirs)]


__all__ = ["Stacker", "start_stack", "stack_fallback"]
