"""Training many independent members at once: their batch streams and their optimizer.

``BatchStream`` gives one member's batches (consecutive shuffles of its rows, drawn from its
own generator), the same sequence however many steps are taken at a time. ``MemberAdamW`` is
``torch.optim.AdamW``'s update on stacked ``[M, ...]`` parameters with a cosine schedule per
member (fused multi-tensor kernel where torch has one).
"""

from __future__ import annotations

import math

import torch

from aam_search.trainer.schedule import lr_at

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class BatchStream:
    """One member's batches: consecutive shuffles of its rows ``pool``, cut into ``batch`` rows;
    taken in chunks of steps, the same sequence however it is chunked."""

    def __init__(self, pool: torch.Tensor, batch: int, generator: torch.Generator) -> None:
        self.pool, self.batch, self.generator = pool, batch, generator
        self.order = pool[:0]

    def take(self, steps: int) -> torch.Tensor:
        """The next ``[steps, batch]`` row indices."""
        need = steps * self.batch
        parts = [self.order]
        have = len(self.order)
        while have < need:
            shuffle = self.pool[torch.randperm(len(self.pool), generator=self.generator)]
            parts.append(shuffle)
            have += len(shuffle)
        rows = torch.cat(parts)
        self.order = rows[need:]
        return rows[:need].view(steps, self.batch)


def member_batches(pool: torch.Tensor, batch: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """``[steps, batch]`` row indices of a member (``BatchStream`` taken at once)."""
    return BatchStream(pool, batch, generator).take(steps)


class MemberAdamW:
    """AdamW (``torch.optim.AdamW``'s update, fused where torch has the kernel) on stacked
    ``[M, ...]`` parameters, each member on its own schedule.

    Members with the same step budget share their learning rate at every step, so each such
    group is one fused multi-tensor update over its members' rows; a member past its budget is
    left out of every update (weights and moments stay as they were when it finished).
    """

    def __init__(self, parameters: list[torch.Tensor], budgets: list[int], *, lr: float, weight_decay: float) -> None:
        self.lr, self.weight_decay = lr, weight_decay
        self.groups: list[tuple[int, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]] = []
        first = [torch.zeros_like(p) for p in parameters]
        second = [torch.zeros_like(p) for p in parameters]
        device = parameters[0].device
        self.fused = device.type in ("cpu", "cuda") and hasattr(torch, "_fused_adamw_")
        for steps in sorted(set(budgets)):
            members = [m for m, budget in enumerate(budgets) if budget == steps]
            pick = lambda tensors: [t[m] for t in tensors for m in members]  # noqa: E731
            counters = [torch.zeros((), device=device) for _ in range(len(members) * len(parameters))]
            self.groups.append((steps, members, pick([p.detach() for p in parameters]), pick(first), pick(second),
                                counters))

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], step: int) -> None:
        """Update every member still within its budget at ``step`` (0-based)."""
        beta1, beta2 = ADAM_BETAS
        for steps, members, params, first, second, counters in self.groups:
            if step >= steps:
                continue
            rate = lr_at(step, steps, 0, self.lr)
            member_grads = [g[m] for g in grads for m in members]
            torch._foreach_add_(counters, 1.0)
            if self.fused:
                torch._fused_adamw_(params, member_grads, first, second, [], counters, lr=rate, beta1=beta1,
                                    beta2=beta2, weight_decay=self.weight_decay, eps=ADAM_EPS, amsgrad=False,
                                    maximize=False)
                continue
            correction1, correction2 = 1 - beta1 ** (step + 1), math.sqrt(1 - beta2 ** (step + 1))
            for p, g, m, v in zip(params, member_grads, first, second):
                p.mul_(1 - rate * self.weight_decay)
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                p.addcdiv_(m, v.sqrt().div_(correction2).add_(ADAM_EPS), value=-rate / correction1)
