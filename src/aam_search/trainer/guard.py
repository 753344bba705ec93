"""The training loop's loss bookkeeping, kept on the device: epoch sums for metrics.jsonl and
the divergence / non-finite guard, read by the host only every ``guard.check_every`` steps
and at each epoch's end (one host-device sync each, not several per step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from aam_search.protocol import Status
from aam_search.trainer.config import GuardConfig


class DeviceLosses:
    """Each step's loss terms, summed on the device; the first bad step remembered there too.

    A step is bad when a term is non-finite, or the total loss exceeds ``max_loss``, or
    L_LC exceeds ``max_lc``. Its step number, kind and values stay on the device until
    :meth:`check` reads them (after a cross-rank reduce, so every rank stops together).
    """

    def __init__(self, guard: GuardConfig, device: torch.device):
        self.guard, self.device = guard, device
        self.names: list[str] | None = None
        self.sums: Tensor | None = None
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_kind = torch.zeros(2, device=device)  # [non-finite, diverged] of the first bad step
        self.first_values: Tensor | None = None
        self.last_values: Tensor | None = None

    def add(self, losses: dict[str, Tensor], step: int) -> None:
        if self.names is None:
            self.names = list(losses)
        elif list(losses) != self.names:
            raise RuntimeError(f"the loss terms changed between steps: {sorted(losses)} vs {sorted(self.names)}")
        values = torch.stack([v.detach().float().reshape(()) for v in losses.values()])
        self.sums = values if self.sums is None else self.sums + values
        self.last_values = values
        nonfinite = ~torch.isfinite(values).all()
        diverged = torch.zeros((), dtype=torch.bool, device=self.device)
        if "loss" in losses:
            diverged = diverged | (values[self.names.index("loss")].abs() > self.guard.max_loss)
        if "l_lc" in losses:
            diverged = diverged | (values[self.names.index("l_lc")] > self.guard.max_lc)
        new = (nonfinite | diverged) & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.first_kind = torch.where(new, torch.stack([nonfinite, diverged]).float(), self.first_kind)
        previous = values if self.first_values is None else self.first_values
        self.first_values = torch.where(new, values, previous)

    def check(self, epoch: int, step: int, reduce: Callable[[Tensor], Tensor]) -> tuple[str, str] | None:
        """``(status, reason)`` if any rank saw a bad step, else None (``step``: the current
        one, named when the bad step was on another rank)."""
        flags = reduce(self.first_kind.clone()).tolist()  # the one host sync
        if not (flags[0] > 0 or flags[1] > 0):
            return None
        seen = int(self.first_step)
        values = self.first_values if seen >= 0 else self.last_values
        shown = ""
        if values is not None and self.names:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(zip(self.names, values.tolist())))
        at = f"epoch {epoch}, step {seen if seen >= 0 else step}"
        if flags[0] > 0:
            return Status.FAILED, f"non-finite loss in {at} ({shown})"
        return Status.DIVERGED, f"loss diverged in {at} ({shown})"

    def epoch_means(self, steps: int) -> dict[str, float]:
        """The epoch's mean of each term (one host read), then the sums start again."""
        if self.sums is None or self.names is None:
            return {}
        means = dict(zip(self.names, (self.sums / max(1, steps)).tolist()))
        self.sums = None
        return means


__all__ = ["DeviceLosses"]
