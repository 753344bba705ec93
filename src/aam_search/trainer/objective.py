"""One module that computes the AAM objective, so DDP and DeepSpeed wrap a single model.

``phase="adapter"``: w_LC * L_LC + w_T * L_T - w_B * L_B (+ w_H * L_HSIC on the clip and
the static-clip features, when weighted), stepping the adapter and heads.
``phase="projector"`` (adversarial objective only): the privacy projector minimises the
same NT-Xent on detached adapter outputs. The training loop alternates the two phases.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from aam_search.trainer.losses import (
    LossWeights,
    latent_consistency,
    masked_nt_xent,
    normalized_hsic,
    task_loss,
    total_loss,
)
from aam_search.trainer.model import AnonymizingAdapter, PrivacyProjector, TaskHeads, mean_pool


class AAMObjective(nn.Module):
    def __init__(
        self,
        adapter: AnonymizingAdapter,
        heads: TaskHeads,
        projector: PrivacyProjector | None,
        weights: LossWeights,
        temperature: float,
        task_weights: dict[str, float] | None = None,
        hsic_condition: str = "none",
    ):
        super().__init__()
        self.adapter, self.heads, self.projector = adapter, heads, projector
        self.weights, self.temperature = weights, temperature
        self.task_weights = task_weights or {}
        if hsic_condition not in ("none", "action"):
            raise ValueError(f"hsic_condition must be 'none' or 'action', got {hsic_condition!r}")
        if hsic_condition == "action" and "action" not in heads.num_classes:
            raise ValueError("hsic_condition 'action' needs action labels, and this cache has none")
        self.hsic_condition = hsic_condition

    def forward(
        self,
        clips: Tensor,
        static_a: Tensor,
        static_b: Tensor,
        pair_mask: Tensor,
        targets: dict[str, Tensor],
        phase: str = "adapter",
        attrs: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if phase == "projector":
            return self._projector_phase(static_a, static_b, pair_mask)
        batch = len(clips)
        # One adapter pass over the clip and both static views.
        adapted = self.adapter(torch.cat([clips, static_a, static_b]))
        adapted_clips = adapted[:batch]
        l_lc = latent_consistency(adapted_clips, clips)
        l_task, per_task = task_loss(self.heads(adapted_clips), targets, self.task_weights)
        # Every row goes through; the mask keeps unpaired videos out of L_B (exactly 0 with
        # fewer than two pairs: no negatives, no privacy signal this step). No host sync.
        view_a = mean_pool(adapted[batch : 2 * batch])
        view_b = mean_pool(adapted[2 * batch :])
        if self.projector is not None:
            # The adapter must not train the projector: it sees it with frozen weights.
            frozen = {name: p.detach() for name, p in self.projector.named_parameters()}
            view_a = functional_call(self.projector, frozen, (view_a,))
            view_b = functional_call(self.projector, frozen, (view_b,))
        l_privacy = masked_nt_xent(view_a, view_b, pair_mask, self.temperature)
        hsic = self._hsic(adapted, batch, attrs, targets) if self.weights.hsic > 0 else {}
        loss = total_loss(l_lc, l_task, l_privacy, self.weights, hsic.get("l_hsic"))
        out = {"loss": loss, "l_lc": l_lc, "l_task": l_task, "l_privacy": l_privacy, **hsic}
        out.update({f"l_task/{name}": value for name, value in per_task.items()})
        return out

    def _hsic(self, adapted: Tensor, batch: int, attrs: Tensor | None, targets: dict[str, Tensor]
              ) -> dict[str, Tensor]:
        """Mean of the normalised HSIC on pooled clip features and on both static views."""
        if attrs is None:
            raise ValueError("the HSIC penalty needs the batch's attr: labels")
        groups = num_groups = None
        if self.hsic_condition == "action":
            groups, num_groups = targets["action"], self.heads.num_classes["action"]
        pooled = mean_pool(adapted)
        clip = normalized_hsic(pooled[:batch], attrs, groups, num_groups)
        both = lambda t: None if t is None else torch.cat([t, t])  # noqa: E731
        static = normalized_hsic(pooled[batch:], both(attrs), both(groups), num_groups)
        return {"l_hsic": (clip + static) / 2, "l_hsic/clip": clip, "l_hsic/static": static}

    def _projector_phase(self, static_a: Tensor, static_b: Tensor, pair_mask: Tensor) -> dict[str, Tensor]:
        if self.projector is None:
            raise RuntimeError("projector phase needs the adversarial privacy objective")
        with torch.no_grad():
            adapted = self.adapter(torch.cat([static_a, static_b]))
        projected = self.projector(mean_pool(adapted))
        half = len(static_a)
        loss = masked_nt_xent(projected[:half], projected[half:], pair_mask, self.temperature)
        return {"loss": loss, "l_projector": loss.detach()}
