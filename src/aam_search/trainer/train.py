"""The AAM training recipe: one trial, ``setup -> pretrained_heads -> train -> evaluate -> save``.

Run as ``aam-search train --config trial.yaml --out DIR``, directly or under ``accelerate
launch``. Accelerate handles devices, DDP and bf16; a DeepSpeed config in the trial adds
ZeRO through Accelerate's DeepSpeed plugin (the visible addition in ``runtime.make_accelerator``).
The trial reports only through files in DIR (see ``reporter``); only rank 0 writes.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam_search.features.cache import CacheError, FeatureCache
from aam_search.protocol import ADAPTER_FILE, FAILURE_KIND, INPUT_FAILURE, RETRYABLE, Status
from aam_search.trainer.baseline import ci_warnings, cotrained_tasks, evaluate_features, raw_baseline, summarize
from aam_search.trainer.checkpoint import save_checkpoint
from aam_search.trainer.config import TrialConfig
from aam_search.trainer.data import DeviceBatches, TrainingData
from aam_search.trainer.eraser import LinearEraser, fit_eraser
from aam_search.trainer.feature_eval import Transform, pooled
from aam_search.trainer.guard import DeviceLosses
from aam_search.trainer.head_cache import pretrained_heads
from aam_search.trainer.heads import cotrained_accuracy
from aam_search.trainer.label_needs import check_attr_labels, objectives_needing_labels
from aam_search.trainer.losses import LossWeights
from aam_search.trainer.model import PrivacyProjector, TaskHeads, build_adapter, count_parameters
from aam_search.trainer.objective import AAMObjective
from aam_search.trainer.reporter import TrialReporter
from aam_search.trainer.rung_eval import rung_epoch_end
from aam_search.trainer.runtime import make_accelerator, make_adamw, parameter_digest, unwrap
from aam_search.trainer.schedule import lr_at


class TrialStopped(Exception):
    """The run ended early for a reason that goes into result.json.

    Only a run stopped from outside (``terminated``) could end otherwise with the same
    parameters; the recipe's own stops (divergence, a non-finite loss) would repeat.
    """

    def __init__(self, status: str, reason: str, fields: dict[str, Any] | None = None):
        super().__init__(reason)
        self.status, self.reason = status, reason
        self.retryable = status == Status.TERMINATED
        self.fields = fields or {}  # more result.json fields (a pruned stop's rung)

    @classmethod
    def pruned(cls, epochs_done: int, fields: dict[str, Any]) -> TrialStopped:
        """The study's stop at an epoch end (``rung_eval.pruned_fields``): status pruned."""
        return cls(Status.PRUNED, f"pruned after epoch {epochs_done}: {fields['pruned_reason']}", fields)


def fit_train_eraser(cache: FeatureCache, transform: Transform) -> LinearEraser:
    """LEACE on the train split's adapted, pooled features of both protocols: static clips
    (image rows included) and moving clips; rows without attr: labels are left out."""
    videos = cache.video_indices("train", with_attrs=True)
    is_image = cache.labels("is_image").numpy().astype(bool)
    attrs = cache.labels("attrs")
    views = {}
    for name, features, owner, members in (
        ("static", cache.static_features, cache.static_video, videos),
        ("clip", cache.clip_features, cache.clip_video, videos[~is_image[videos]]),
    ):
        rows = torch.from_numpy(np.isin(owner.numpy(), members)).nonzero().squeeze(1)
        views[name] = (pooled(features[rows], transform), attrs[owner[rows]])
    return fit_eraser(views, list(cache.meta["attr_names"]))


class AAMRecipe:
    def __init__(self, config: TrialConfig, out_dir: str | Path):
        self.config = config
        self.out_dir = Path(out_dir)
        self.stop_signal: str | None = None
        self.timings: dict[str, float] = {}
        self.epochs_done = 0
        self.eraser: LinearEraser | None = None
        self.ended = False  # cleanup() ran

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate.utils import set_seed

        started = time.perf_counter()
        config = self.config
        self.accelerator = make_accelerator(config)
        self.reporter = TrialReporter(self.out_dir, enabled=self.accelerator.is_main_process)
        self.reporter.trial(config.resolved())
        set_seed(config.seed)
        self.cache = FeatureCache.open(config.cache)
        check_attr_labels(objectives_needing_labels(config), self.cache)
        self.data = TrainingData(self.cache)
        self.budget = config.optim.budget(
            self.data.batches_per_epoch(config.optim.batch_size, self.accelerator.num_processes))
        # Again, now with the step budget the train set's size resolves to.
        self.reporter.trial(config.resolved(self.budget.steps_per_epoch))
        dim = self.cache.dim
        self.adapter = build_adapter(dim, config.adapter)
        self.heads = TaskHeads(dim, cotrained_tasks(self.cache, config.eval.unseen_tasks))
        projector = None
        if config.loss.privacy_objective == "adversarial":
            projector = PrivacyProjector(dim, config.loss.projector_dim)
        self.timings["setup_s"] = time.perf_counter() - started

        started = time.perf_counter()
        self.heads_source = pretrained_heads(
            self.heads, self.cache, epochs=config.optim.head_pretrain_epochs, lr=config.optim.head_lr,
            seed=config.seed, store=self.accelerator.is_main_process)
        self.timings["head_pretrain_s"] = time.perf_counter() - started

        loss = config.loss
        self.objective = AAMObjective(
            self.adapter, self.heads, projector,
            LossWeights(lc=loss.w_lc, task=loss.w_task, privacy=loss.w_privacy, hsic=loss.w_hsic),
            loss.temperature, loss.task_weights, hsic_condition=loss.hsic_condition,
        )
        groups = [{"params": [*self.adapter.parameters(), *self.heads.parameters()], "name": "adapter"}]
        if projector is not None:
            groups.append({"params": list(projector.parameters()), "name": "projector"})
        optimizer = make_adamw(groups, config.optim, self.accelerator.device)
        self.optimizer_kind = "fused" if optimizer.defaults.get("fused") else "foreach"
        if config.optim.compile:
            self.adapter.compile()  # in place: parameter names and the checkpoint stay as they are
        self.model, self.optimizer = self.accelerator.prepare(self.objective, optimizer)

        started = time.perf_counter()
        accelerator = self.accelerator
        self.batches = DeviceBatches(self.data, config.optim.batch_size, seed=config.seed,
                                     rank=accelerator.process_index, world_size=accelerator.num_processes,
                                     device=accelerator.device, residency=config.optim.data_residency,
                                     fraction=config.optim.resident_fraction)
        if accelerator.is_main_process:
            self.batches.log()
        self.timings["data_to_device_s"] = time.perf_counter() - started

    # ------------------------------------------------------------------ train
    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.stop_signal = signal.Signals(signum).name

    def train(self) -> None:
        config, accelerator = self.config, self.accelerator
        budget = self.budget
        steps_per_epoch = budget.steps_per_epoch
        adversarial = config.loss.privacy_objective == "adversarial"
        phases = ("projector", "adapter") if adversarial else ("adapter",)
        check_every = config.guard.check_every
        losses = DeviceLosses(config.guard, accelerator.device)
        step = 0
        train_started = time.perf_counter()
        for epoch in range(budget.epochs):
            epoch_started = time.perf_counter()
            samples = 0
            self.model.train()
            for batch in self.batches.epoch(epoch):
                lr = lr_at(step, budget.total_steps, budget.warmup_steps, config.optim.effective_lr)
                timed = config.optim.compile and step == 0
                step_losses: dict[str, torch.Tensor] = {}
                for phase in phases:
                    step_losses.update(self._step(batch, phase, lr))
                losses.add(step_losses, step)  # on the device: no sync
                if timed:  # the first step compiles the adapter
                    self._sync()
                    self.timings["compile_s"] = time.perf_counter() - epoch_started
                samples += len(batch) * accelerator.num_processes
                step += 1
                if step % check_every == 0:
                    self._check(losses, epoch, step - 1)
                if self.stop_signal:
                    raise TrialStopped("terminated", f"received {self.stop_signal} in epoch {epoch}")
            self._check(losses, epoch, step - 1)
            metrics = losses.epoch_means(steps_per_epoch)  # the epoch's one read of the loss terms
            seconds = time.perf_counter() - epoch_started
            metrics.update(epoch=epoch, lr=lr, seconds=seconds, samples_per_s=samples / seconds)
            self.reporter.epoch(metrics)
            self.epochs_done = epoch + 1
            pruned = rung_epoch_end(self, self.epochs_done, fit_train_eraser)  # the study's verdict at a rung
            if pruned is not None:
                raise TrialStopped.pruned(self.epochs_done, pruned)
        self.timings["train_s"] = time.perf_counter() - train_started
        if accelerator.num_processes > 1:  # DDP keeps ranks in step; the log shows they stayed so
            print(f"rank {accelerator.process_index}: trained parameters sha256 "
                  f"{parameter_digest(unwrap(accelerator, self.model))}", file=sys.stderr, flush=True)

    def _sync(self) -> None:
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)

    def _step(self, batch, phase: str, lr: float) -> dict[str, torch.Tensor]:
        """One optimizer step of ``phase``; its loss terms come back detached, on the device."""
        for group in self.optimizer.param_groups:
            # Alternating min-max: only the phase's own parameter group moves.
            active = group.get("name", "adapter") == phase
            group["lr"] = lr if active else 0.0
        out = self.model(batch.clips, batch.static_a, batch.static_b, batch.pair_mask, batch.targets,
                         phase=phase, attrs=batch.attrs)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(out["loss"])
        if self.config.optim.grad_clip and self.accelerator.distributed_type.value != "DEEPSPEED":
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        name = "loss" if phase == "adapter" else "l_projector"
        values = {key: value.detach() for key, value in out.items() if key != "loss"}
        values[name] = out["loss"].detach()
        return values

    def _check(self, losses: DeviceLosses, epoch: int, step: int) -> None:
        """The guard's host read; every rank takes part (a reduce), so all stop together."""
        stop = losses.check(epoch, step, lambda flags: self.accelerator.reduce(flags, reduction="sum"))
        if stop is not None:
            raise TrialStopped(*stop)

    # ------------------------------------------------------------------ evaluate and save
    def eval_transform(self) -> tuple[Transform, dict[str, Any]]:
        """The features as users get them: the trained adapter, then the eraser when on (fitted
        here, on the train split); and the result fields that describe it."""
        config = self.config
        adapter = unwrap(self.accelerator, self.model).adapter.eval()
        device = self.accelerator.device

        def adapted(tokens: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), self.accelerator.autocast():
                return adapter(tokens.to(device)).float()

        transform = adapted
        extra: dict[str, Any] = {}
        if config.loss.eraser:  # measured as users get it: the adapter, then the eraser
            started_fit = time.perf_counter()
            self.eraser = fit_train_eraser(self.cache, adapted).to(device)
            eraser = self.eraser

            def transform(tokens: torch.Tensor) -> torch.Tensor:
                return eraser(adapted(tokens))

            extra["eraser"] = eraser.info
            self.timings["eraser_fit_s"] = time.perf_counter() - started_fit
        return transform, extra

    def evaluate(self, prepared: tuple[Transform, dict[str, Any]] | None = None,
                 measured: dict[str, Any] | None = None) -> dict[str, Any]:
        """The trial's numbers. A stack whose members' attackers were fitted together passes each
        member its ``eval_transform()`` and its ``evaluate_features`` result (``measured``)."""
        started = time.perf_counter()
        config = self.config
        device = self.accelerator.device
        transform, extra = prepared or self.eval_transform()
        if measured is None:
            measured = evaluate_features(self.cache, transform, config.eval, seed=config.seed)
        baseline = raw_baseline(self.cache, config.eval, seed=config.seed, device=device)
        module = unwrap(self.accelerator, self.model)
        heads = module.heads.eval()
        measured["cotrained_top1"] = cotrained_accuracy(heads, self.cache, transform, config.eval.split)
        self.timings["eval_s"] = time.perf_counter() - started
        for line in ci_warnings(measured):
            print(f"warning: {line}", file=sys.stderr, flush=True)  # goes to the trial's log
        return {
            **summarize(measured, baseline, config.eval.primary_protocol),
            "measured": measured,
            "baseline": {"tasks": baseline["tasks"], "privacy": baseline["privacy"], "ci": baseline.get("ci")},
            "adapter_parameters": count_parameters(module.adapter),
            "runtime": self._runtime(),
            **extra,
        }

    def _runtime(self) -> dict[str, Any]:
        accelerator = self.accelerator
        runtime = {
            "distributed_type": accelerator.distributed_type.value,
            "processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision,
            "data_residency": self.batches.residency,
            "optimizer": self.optimizer_kind,
            "compiled": self.config.optim.compile,
        }
        if hasattr(self.model, "zero_optimization_stage"):  # a DeepSpeed engine
            runtime["zero_stage"] = int(self.model.zero_optimization_stage())
        return runtime

    def save(self) -> None:
        unwrapped = unwrap(self.accelerator, self.model)
        save_checkpoint(
            self.out_dir / ADAPTER_FILE,
            unwrapped.adapter,
            unwrapped.heads,
            {"cache_key": self.cache.meta["key"], "action_classes": self.cache.meta["action_classes"],
             "encoder": self.cache.meta["encoder"]},
            eraser=self.eraser,
        )

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """The whole trial, its result.json last; then :meth:`cleanup`, whatever happened."""
        try:
            return self._run()
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        """End the Accelerator, once: its trackers and the process group it set up (DDP,
        DeepSpeed). After result.json, so a teardown that fails cannot lose the result."""
        if getattr(self, "accelerator", None) is not None and not self.ended:
            self.ended = True
            self.accelerator.end_training()

    def _run(self) -> dict[str, Any]:
        started = time.perf_counter()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        status, reason, metrics, retryable = Status.COMPLETED, None, {}, True
        try:
            self.setup()
            self.train()
            if self.accelerator.is_main_process:
                metrics = self.evaluate()
                if self.stop_signal:  # arrived during evaluation: the numbers are not final
                    raise TrialStopped(Status.TERMINATED, f"received {self.stop_signal} during evaluation")
                if self.config.save_adapter:
                    self.save()
            self.accelerator.wait_for_everyone()
        except TrialStopped as stop:
            status, reason, retryable = stop.status, stop.reason, stop.retryable
            metrics = {**metrics, **stop.fields}
        except Exception as error:
            status, reason = Status.FAILED, f"{type(error).__name__}: {error}"
            self._report(status, reason, metrics, started, failure_kind=self._failure_kind(error))
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        return self._report(status, reason, metrics, started, retryable=retryable)

    def _failure_kind(self, error: Exception) -> str | None:
        """INPUT_FAILURE when the feature cache, shared by every trial, is missing or broken."""
        if isinstance(error, CacheError):
            return INPUT_FAILURE
        cache = Path(self.config.cache).absolute()
        names = [getattr(error, "filename", None), getattr(error, "filename2", None)]
        if isinstance(error, OSError) and any(n and Path(n).absolute().is_relative_to(cache) for n in names):
            return INPUT_FAILURE
        return None

    def _report(self, status: str, reason: str | None, metrics: dict, started: float,
                failure_kind: str | None = None, retryable: bool = True) -> dict[str, Any]:
        self.timings["total_s"] = time.perf_counter() - started
        result = {"status": status, "reason": reason, FAILURE_KIND: failure_kind, RETRYABLE: retryable,
                  "epochs_done": self.epochs_done, "timings": self.timings,
                  "heads": getattr(self, "heads_source", None), **metrics}
        reporter = getattr(self, "reporter", None) or TrialReporter(self.out_dir)
        reporter.result(status, reason, **{k: v for k, v in result.items() if k not in ("status", "reason")})
        return result


def run_trial(config: TrialConfig, out_dir: str | Path) -> dict[str, Any]:
    return AAMRecipe(config, out_dir).run()
