"""The stacked-trials recipe: K trial configs, K trial folders, one process, one vmapped model.

``aam-search train-stack --config A/trial.yaml --out A --config B/trial.yaml --out B``. Each
member is set up exactly as a single trial (:class:`AAMRecipe.setup`: its own seed, init,
head pre-training, ``trial.json``), trained in the stack (:class:`StackedAAM`), then evaluated,
saved and reported alone by its own recipe, so every folder holds the files and fields a single
trial writes, plus a ``stack`` entry in ``result.json``. A member that fails (in set-up, a
diverging loss, its evaluation) writes its own status and reason; the others go on. At rung
epochs (``eval.rungs``) every member is evaluated as a single trial is (``rung_eval``), and a
member the study stops keeps its checkpoint, ends ``pruned`` and leaves the stack.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from aam_search.features.config import ConfigError
from aam_search.protocol import Status
from aam_search.trainer.baseline import evaluate_features_many
from aam_search.trainer.config import TrialConfig
from aam_search.trainer.guard import DeviceLosses
from aam_search.trainer.model import count_parameters
from aam_search.trainer.rung_eval import pruned_fields, rung_requests
from aam_search.trainer.stack import (
    StackedAAM,
    available_bytes,
    member_bytes,
    memory_cap,
    stack_key,
    stack_problem,
)
from aam_search.trainer.schedule import lr_at
from aam_search.trainer.train import AAMRecipe, TrialStopped, fit_train_eraser

STACK_FIELD = "stack"  # result.json: {"size", "position", "trials"} of the stack a member ran in
# Devices where a stack's members are measured together (one attacker fit for all): on one CPU
# core the joint fit was slower than one member at a time (11.8 s against 8.0 s for 3 demo
# members: compute- and cache-bound, and the joint L-BFGS takes the hardest member's
# iterations), so there members are measured one at a time; on a GPU the attackers' tiny
# steps are launch-bound, which one fit for all members amortises (BENCHMARKS.md, issue 12).
JOINT_EVAL_DEVICES = ("cuda",)


def check_stackable(configs: list[TrialConfig]) -> None:
    """Refuse, naming the member, a set of configs that cannot share one stacked model."""
    if not configs:
        raise ConfigError("a stack needs at least one trial config")
    for position, config in enumerate(configs):
        problem = stack_problem(config)
        if problem:
            raise ConfigError(f"stack member {position} cannot be stacked: {problem}")
        if stack_key(config) != stack_key(configs[0]):
            raise ConfigError(f"stack member {position} differs from member 0 in a field that changes the "
                              "model's shape or step budget (adapter, batch, epochs, ...); run it alone")


class StackRecipe:
    def __init__(self, configs: list[TrialConfig], out_dirs: list[str | Path]):
        if len(configs) != len(out_dirs):
            raise ConfigError(f"{len(configs)} trial config(s) but {len(out_dirs)} output folder(s)")
        check_stackable(configs)
        self.members = [AAMRecipe(config, out) for config, out in zip(configs, out_dirs)]
        self.outcome: dict[int, tuple[str, str | None, bool]] = {}  # member -> (status, reason, retryable)
        self.stop_signal: str | None = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_signal = signal.Signals(signum).name

    def _info(self, position: int) -> dict[str, Any]:
        return {"size": len(self.members), "position": position,
                "trials": [str(m.out_dir) for m in self.members]}

    def run(self) -> list[dict[str, Any]]:
        """Every member's result (as written to its result.json), in order."""
        started = time.perf_counter()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        metrics: dict[int, dict[str, Any]] = {}
        try:
            ready = [i for i in range(len(self.members)) if self._setup(i, started)]
            for chunk in self._chunks(ready):
                try:
                    self._train(chunk)
                except Exception as error:  # the stack itself broke: each member says so in its folder
                    for i in chunk:
                        if i not in self.outcome:
                            self._fail(i, Status.FAILED, f"{type(error).__name__} in the stacked step: {error}",
                                       started, failure_kind=self.members[i]._failure_kind(error))
            trained = [i for i in ready if i not in self.outcome]
            together = self._measure_together(trained)
            for i in trained:
                metrics[i] = self._finish(i, started, *together.get(i, (None, None)))
        finally:
            signal.signal(signal.SIGTERM, previous)
            for member in self.members:
                member.cleanup()
        results = []
        for i, member in enumerate(self.members):
            status, reason, retryable = self.outcome.get(i, (Status.COMPLETED, None, True))
            if status == Status.COMPLETED:
                results.append(member._report(status, reason, {**metrics[i], STACK_FIELD: self._info(i)}, started))
            else:
                results.append(self._result_of(i))
        return results

    def _fail(self, i: int, status: str, reason: str, started: float, retryable: bool = True,
              failure_kind: str | None = None, fields: dict[str, Any] | None = None) -> None:
        self.outcome[i] = (status, reason, retryable)
        self.members[i]._report(status, reason, {**(fields or {}), STACK_FIELD: self._info(i)}, started,
                                failure_kind=failure_kind, retryable=retryable)

    def _result_of(self, i: int) -> dict[str, Any]:
        status, reason, retryable = self.outcome[i]
        return {"status": status, "reason": reason, "retryable": retryable, "epochs_done": self.members[i].epochs_done}

    def _setup(self, i: int, started: float) -> bool:
        member = self.members[i]
        try:
            member.setup()
            return True
        except Exception as error:
            self._fail(i, Status.FAILED, f"{type(error).__name__}: {error}", started,
                       failure_kind=member._failure_kind(error))
            print(f"stack member {i} failed in set-up: {error}", file=sys.stderr, flush=True)
            return False

    def _chunks(self, ready: list[int]) -> list[list[int]]:
        """The ready members in stacks that fit the device's memory (a warning when cut)."""
        if not ready:
            return []
        first = self.members[ready[0]]
        cache = first.cache
        tokens, dim = cache.clip_features.shape[1], cache.dim
        parameters = count_parameters(first.objective)
        per_member = member_bytes(first.config, dim, tokens, parameters)
        cap = memory_cap(per_member, available_bytes(first.accelerator.device))
        if cap < len(ready):
            print(f"warning: stack of {len(ready)} cut to stacks of {cap}: about {per_member / 2**20:.0f} MiB per "
                  f"member and {available_bytes(first.accelerator.device) / 2**20:.0f} MiB free on "
                  f"{first.accelerator.device}", file=sys.stderr, flush=True)
        return [ready[start : start + cap] for start in range(0, len(ready), cap)]

    def _train(self, chunk: list[int]) -> None:
        """Train ``chunk`` as one stacked model; members that diverge or stop are cut out."""
        members = [self.members[i] for i in chunk]
        first = members[0]
        stacked = StackedAAM([m.objective for m in members], [m.config for m in members])
        alive = list(chunk)  # stack position -> member index
        budget, optim = first.budget, first.config.optim
        shared = len({m.config.seed for m in members}) == 1  # one batch stream serves all
        device = first.accelerator.device
        started_at = time.perf_counter()
        step = 0
        for epoch in range(budget.epochs):
            epoch_started = time.perf_counter()
            sums: dict[str, torch.Tensor] = {}
            streams = {i: self.members[i].data.batches(optim.batch_size, seed=self.members[i].config.seed,
                                                       epoch=epoch) for i in (alive[:1] if shared else alive)}
            stacked.train(True)
            for _ in range(budget.steps_per_epoch):
                batch = _batch_inputs([next(streams[i]).to(device) for i in (list(streams)[:1] if shared else alive)],
                                      batched=not shared)
                lrs = [lr_at(step, budget.total_steps, budget.warmup_steps, self.members[i].config.optim.effective_lr)
                       for i in alive]
                with first.accelerator.autocast():
                    losses = stacked.step(batch, lrs, batched=not shared)
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0) + value.double()
                keep = self._guard(alive, losses, epoch, step, started_at)
                if len(keep) < len(alive):
                    stacked.keep(keep)
                    sums = {name: total[keep] for name, total in sums.items()}
                    alive = [alive[p] for p in keep]
                step += 1
                if self.stop_signal:
                    for i in alive:
                        self._fail(i, Status.TERMINATED, f"received {self.stop_signal} in epoch {epoch}",
                                   started_at, retryable=True)
                    return
                if not alive:
                    return
            self._report_epoch(alive, sums, epoch, time.perf_counter() - epoch_started, step - 1)
            ended = self._rungs(stacked, alive, epoch + 1, started_at, len(chunk))
            if ended:
                keep = [p for p, i in enumerate(alive) if i not in ended]
                alive = [alive[p] for p in keep]
                if not alive:
                    return
                stacked.keep(keep)
        for position, i in enumerate(alive):
            stacked.write_back(position, self.members[i].objective)
            self._stamp_training(i, started_at, len(chunk))

    def _stamp_training(self, i: int, started: float, size: int) -> None:
        """A member's training timings, once it leaves the stack (trained, or pruned)."""
        self.members[i].timings["train_s"] = time.perf_counter() - started
        self.members[i].timings["stack_size"] = size

    def _rungs(self, stacked: StackedAAM, alive: list[int], epochs_done: int, started: float,
               size: int) -> set[int]:
        """The study's verdicts at an epoch end, as a single trial's ``rung_epoch_end``: every
        alive member at a rung epoch has its stacked weights written back and is evaluated,
        then all their verdicts are awaited together. A member told to stop keeps its
        checkpoint and ends ``pruned``; the members that ended here (pruned, or whose rung
        evaluation failed) are returned, to be cut out of the stack."""
        positions = [p for p, i in enumerate(alive) if self.members[i].config.eval.rungs]
        if not positions:
            return set()
        for p in positions:
            if epochs_done in self.members[alive[p]].config.eval.rungs:
                stacked.write_back(p, self.members[alive[p]].objective)
        ended: set[int] = set()

        def failed(k: int, error: Exception) -> None:
            i = alive[positions[k]]
            ended.add(i)
            self._fail(i, Status.FAILED, f"{type(error).__name__} in the rung evaluation: {error}", started,
                       failure_kind=self.members[i]._failure_kind(error))

        answers = rung_requests([self.members[alive[p]] for p in positions], epochs_done, fit_train_eraser,
                                lambda: self.stop_signal is not None, failed)
        for p, (request, line) in zip(positions, answers):
            if request is None:
                continue
            i = alive[p]
            member = self.members[i]
            if epochs_done not in member.config.eval.rungs:  # a stop read between rungs
                stacked.write_back(p, member.objective)
            self._stamp_training(i, started, size)
            if member.config.save_adapter:
                member.save()  # a pruned member keeps its checkpoint
            stop = TrialStopped.pruned(epochs_done, pruned_fields(request, line))
            self._fail(i, stop.status, stop.reason, started, retryable=stop.retryable, fields=stop.fields)
            ended.add(i)
            print(f"stack member {i} ({member.out_dir}): {stop.status}: {stop.reason}", file=sys.stderr, flush=True)
        return ended

    def _guard(self, alive: list[int], losses: dict[str, torch.Tensor], epoch: int, step: int,
               started: float) -> list[int]:
        """Each member's divergence guard, in one sync: the stack positions that go on. A tripped
        member fails with the status and reason its own recipe gives (``AAMRecipe._check``)."""
        names = list(losses)
        values = torch.stack([losses[n].float() for n in names])  # [terms, K]
        guards = [self.members[i].config.guard for i in alive]
        max_loss = torch.tensor([g.max_loss for g in guards], device=values.device)
        max_lc = torch.tensor([g.max_lc for g in guards], device=values.device)
        bad = ((~torch.isfinite(values)).any(0) | (values[names.index("loss")].abs() > max_loss)
               | (values[names.index("l_lc")] > max_lc))
        if not bool(bad.any()):
            return list(range(len(alive)))
        keep = []
        for position, i in enumerate(alive):
            member = self.members[i]
            try:
                if bad[position]:
                    tripped = DeviceLosses(member.config.guard, values.device)
                    tripped.add({n: losses[n][position] for n in names}, step)
                    member._check(tripped, epoch, step)
                keep.append(position)
            except TrialStopped as stop:
                member.epochs_done = epoch
                self._fail(i, stop.status, stop.reason, started, retryable=stop.retryable)
                print(f"stack member {i} ({member.out_dir}): {stop.status}: {stop.reason}", file=sys.stderr,
                      flush=True)
        return keep

    def _report_epoch(self, alive: list[int], sums: dict[str, torch.Tensor], epoch: int, seconds: float,
                      last_step: int) -> None:
        """One metrics.jsonl line per member alive, with the keys a single trial writes."""
        for position, i in enumerate(alive):
            member = self.members[i]
            budget, optim = member.budget, member.config.optim
            row: dict[str, Any] = {name: float(total[position]) / budget.steps_per_epoch for name, total in sums.items()}
            lr = lr_at(last_step, budget.total_steps, budget.warmup_steps, optim.effective_lr)
            samples = budget.steps_per_epoch * optim.batch_size
            row.update(epoch=epoch, lr=lr, seconds=seconds, samples_per_s=samples / seconds)
            member.reporter.epoch(row)
            member.epochs_done = epoch + 1

    def _measure_together(self, trained: list[int]) -> dict[int, tuple[Any, dict[str, Any]]]:
        """The attacker suites (and probes) of trained members that share their evaluation
        settings and seed, in one fit (``evaluate_features_many``): member -> (its transform,
        its measures). Each member's eval_s gets its share of the fit. A group whose joint fit
        fails is left out: its members are then evaluated alone, and fail alone."""
        groups: dict[str, list[int]] = {}
        if not trained or self.members[trained[0]].accelerator.device.type not in JOINT_EVAL_DEVICES:
            return {}
        for i in trained:
            config = self.members[i].config
            groups.setdefault(f"{config.seed} {config.eval.model_dump_json()}", []).append(i)
        together: dict[int, tuple[Any, dict[str, Any]]] = {}
        for group in groups.values():
            if len(group) < 2 or self.stop_signal:
                continue
            first = self.members[group[0]]
            started = time.perf_counter()
            try:
                prepared = [self.members[i].eval_transform() for i in group]
                measured = evaluate_features_many(first.cache, [transform for transform, _ in prepared],
                                                  first.config.eval, seed=first.config.seed)
            except Exception as error:
                print(f"warning: the joint evaluation of stack members {group} failed ({type(error).__name__}: "
                      f"{error}); they are evaluated one at a time", file=sys.stderr, flush=True)
                continue
            share = (time.perf_counter() - started) / len(group)
            for i, ready, numbers in zip(group, prepared, measured):
                together[i] = (ready, numbers)
                self.members[i].timings["eval_shared_s"] = share
                self.members[i].timings["eval_together"] = len(group)
        return together

    def _finish(self, i: int, started: float, prepared: Any = None, measured: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """Evaluate and save one trained member, as its own recipe does (with its measures
        from the joint fit when given); {} when it failed."""
        member = self.members[i]
        try:
            metrics = member.evaluate(prepared, measured)
            member.timings["eval_s"] += member.timings.get("eval_shared_s", 0.0)
            if self.stop_signal:
                raise TrialStopped(Status.TERMINATED, f"received {self.stop_signal} during evaluation")
            if member.config.save_adapter:
                member.save()
            return metrics
        except TrialStopped as stop:
            self._fail(i, stop.status, stop.reason, started, retryable=stop.retryable)
        except Exception as error:
            self._fail(i, Status.FAILED, f"{type(error).__name__}: {error}", started,
                       failure_kind=member._failure_kind(error))
        return {}


def _batch_inputs(batches: list, batched: bool) -> dict[str, Any]:
    """The vmapped step's inputs: one shared batch as it is, or (``batched``) the alive
    members' batches stacked on a new dim 0, even when only one member is left."""
    if not batched:
        b = batches[0]
        return {"clips": b.clips, "static_a": b.static_a, "static_b": b.static_b, "pair_mask": b.pair_mask,
                "targets": b.targets}
    return {
        "clips": torch.stack([b.clips for b in batches]),
        "static_a": torch.stack([b.static_a for b in batches]),
        "static_b": torch.stack([b.static_b for b in batches]),
        "pair_mask": torch.stack([b.pair_mask for b in batches]),
        "targets": {name: torch.stack([b.targets[name] for b in batches]) for name in batches[0].targets},
    }


def run_stack(configs: list[TrialConfig], out_dirs: list[str | Path]) -> list[dict[str, Any]]:
    return StackRecipe(configs, out_dirs).run()
