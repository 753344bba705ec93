"""The AAM's losses and how they combine.

``L = w_LC * L_LC + w_T * L_T - w_B * L_B + w_H * L_HSIC``: latent consistency keeps f_A
near the encoder's manifold, task co-training keeps utility, and the SimCLR NT-Xent between
two static clips of the same video (L_B) is MAXIMISED so appearance no longer identifies a
video. The adversarial variant (SPAct / TeD-SPAD style) instead lets a projector minimise
L_B while the adapter maximises it (both phases: ``trainer.objective``).
L_HSIC (beyond the paper) is a non-adversarial dependence penalty between adapted features
and the ``attr:`` labels: nothing to fool, so nothing a fresh attacker can see through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

UNLABELLED = -1  # target value of a row that has no label for a task


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """SimCLR NT-Xent over two views ``[B, P]``; row i of z1 and row i of z2 are positives.

    All other 2B - 2 rows are negatives; the loss is averaged over all 2B anchors.
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"nt_xent needs two [batch, dim] views of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    batch = z1.shape[0]
    if batch < 2:
        raise ValueError(f"nt_xent needs batch >= 2 (other videos are the negatives), got {batch}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    # -inf rather than a large negative: exp(-inf) is exactly 0 in any dtype.
    logits = logits.masked_fill(self_mask, float("-inf"))
    index = torch.arange(batch, device=z.device)
    positives = torch.cat([index + batch, index])
    return F.cross_entropy(logits, positives)


def masked_nt_xent(z1: Tensor, z2: Tensor, mask: Tensor, temperature: float | Tensor = 0.1) -> Tensor:
    """:func:`nt_xent` over the rows where ``mask`` is true, with no host sync: the same value
    as ``nt_xent(z1[mask], z2[mask])`` when two or more rows are kept, else an exact 0.

    Masked-out rows are neither anchors nor negatives (their columns are -inf); each kept
    anchor's cross-entropy is multiplied by the mask and the sum divided by the clamped
    count, so no boolean indexing or ``int(mask.sum())`` stops the device.
    """
    if z1.dim() != 2 or z1.shape != z2.shape or mask.shape != z1.shape[:1]:
        raise ValueError(f"masked_nt_xent needs two [batch, dim] views and a [batch] mask, got "
                         f"{tuple(z1.shape)}, {tuple(z2.shape)} and {tuple(mask.shape)}")
    if not isinstance(temperature, Tensor) and temperature <= 0:  # a stacked (vmapped) one: its config checks it
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = z1.shape[0]
    keep = torch.cat([mask, mask]).bool()
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask | ~keep[None, :], float("-inf"))
    # A dropped anchor's row would be all -inf (NaN cross-entropy): any finite row does, weighted 0.
    logits = torch.where(keep[:, None], logits, torch.zeros((), dtype=logits.dtype, device=z.device))
    index = torch.arange(batch, device=z.device)
    positives = torch.cat([index + batch, index])
    per_anchor = F.cross_entropy(logits, positives, reduction="none")
    weight = keep.to(per_anchor.dtype)
    # One kept pair has only its positive left: its cross-entropy is exactly 0, as it should.
    return (per_anchor * weight).sum() / weight.sum().clamp(min=1)


def latent_consistency(adapted: Tensor, raw: Tensor) -> Tensor:
    """``||f_E(x) - f_A(f_E(x))||^2`` averaged over all elements; ``raw`` is a fixed target."""
    if adapted.shape != raw.shape:
        raise ValueError(f"adapted {tuple(adapted.shape)} and raw {tuple(raw.shape)} features differ in shape")
    # Detached: the encoder is frozen, so the target must never receive a gradient.
    return F.mse_loss(adapted, raw.detach())


def task_loss(
    logits: dict[str, Tensor],
    targets: dict[str, Tensor],
    weights: dict[str, float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum over tasks of cross-entropy on the labelled rows (target != -1).

    A task with no labelled row in the batch contributes an exact 0 (not NaN), still
    attached to the graph so ``backward`` works. Returns ``(total, per_task)``.
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(logits))
    if unknown:
        raise ValueError(f"task weights name unknown tasks {unknown}; tasks are {sorted(logits)}")
    per_task: dict[str, Tensor] = {}
    total: Tensor | None = None
    for task, task_logits in logits.items():
        if task not in targets:
            raise KeyError(f"no targets for task {task!r}; targets have {sorted(targets)}")
        target = targets[task].long()
        labelled = (target != UNLABELLED).sum()
        summed = F.cross_entropy(task_logits, target, ignore_index=UNLABELLED, reduction="sum")
        # Divide on device (clamped) rather than branching on a host-side count: no sync.
        loss = summed / labelled.clamp(min=1)
        per_task[task] = loss
        weighted = weights.get(task, 1.0) * loss
        total = weighted if total is None else total + weighted
    if total is None:
        total = torch.zeros(())
    return total, per_task


def _residualise(labels: Tensor, groups: Tensor, num_groups: int | None) -> Tensor:
    """Subtract each group's mean (rows with group -1 keep theirs); a group of one row
    becomes 0, since within it the labels do not vary."""
    known = groups >= 0
    if num_groups is None:
        num_groups = int(groups.max().clamp_min(0)) + 1
    onehot = F.one_hot(groups.clamp_min(0).long(), num_groups).to(labels.dtype)
    onehot = onehot * known.unsqueeze(1).to(labels.dtype)
    means = (onehot.T @ labels) / onehot.sum(0).clamp_min(1).unsqueeze(1)
    return labels - onehot @ means


def normalized_hsic(
    features: Tensor, labels: Tensor, groups: Tensor | None = None, num_groups: int | None = None
) -> Tensor:
    """Normalised HSIC (kernel alignment, in [0, 1]) between features ``[N, P]`` and labels.

    RBF kernel on the features, bandwidth by the median heuristic (the median pairwise
    squared distance, held constant for the gradient); linear kernel on the labels
    ``[N, A]`` (0/1, -1 = unknown). Rows with no known label contribute nothing; an unknown
    entry of a labelled row is set to its attribute's mean, so it adds nothing to that
    attribute's kernel. With ``groups`` (e.g. the action, -1 = unknown) the labels are first
    centred within each group: the penalty then targets what the attributes carry beyond
    the group (``num_groups`` saves a device sync). Computed in float32 whatever the
    autocast. Fewer than 4 labelled rows: 0.
    """
    if features.dim() != 2 or labels.dim() != 2 or len(features) != len(labels):
        raise ValueError(f"normalized_hsic needs features [N, P] and labels [N, A], got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        # Rows without a known label are weighted 0 instead of indexed away: no host sync.
        known = labels >= 0
        row = known.any(dim=1).float()
        count = row.sum()
        pair = row[:, None] * row[None, :]
        x = features.float()
        mask = known.float()
        y = labels.float() * mask
        mean = y.sum(0) / mask.sum(0).clamp_min(1)
        y = y + (1 - mask) * mean
        if groups is not None:
            y = _residualise(y, torch.where(row > 0, groups, -1), num_groups)
        y = (y - (row @ y / count.clamp_min(1))) * row[:, None]
        gram_y = y @ y.T
        squared = x.pow(2).sum(1)
        dist = (squared[:, None] + squared[None, :] - 2 * x @ x.T).clamp_min(0)
        off = pair * (1 - torch.eye(len(x), device=x.device))
        masked = torch.where(off > 0, dist.detach(), torch.full_like(dist, float("nan")))
        bandwidth = torch.nan_to_num(masked.nanmedian(), nan=1.0).clamp_min(1e-12)
        kernel = torch.exp(-dist / (2 * bandwidth)) * pair
        n = count.clamp_min(1)
        kernel = kernel - (row @ kernel / n)[None, :]  # H K H over the labelled rows
        kernel = (kernel - (kernel @ row / n)[:, None]) * pair
        cross = (kernel * gram_y).sum()
        # Clamped inside the root: labels that do not vary within the batch (all one value, or
        # all centred away by the groups) give a zero product, whose sqrt has an infinite gradient.
        scale = torch.sqrt(((kernel * kernel).sum() * (gram_y * gram_y).sum()).clamp_min(1e-24))
        value = cross / scale
        return torch.where(count >= 4, value, features.sum() * 0.0)


@dataclass(frozen=True)
class LossWeights:
    """Paper defaults: w_LC = 100, w_T = 1, w_B = 1; the HSIC penalty is off by default."""

    lc: float = 100.0
    task: float = 1.0
    privacy: float = 1.0
    hsic: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lc", "task", "privacy", "hsic"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")


def total_loss(
    l_lc: Tensor, l_task: Tensor, l_privacy: Tensor, weights: LossWeights, l_hsic: Tensor | None = None
) -> Tensor:
    """``w_LC * L_LC + w_T * L_T - w_B * L_B + w_H * L_HSIC``: minus because the adapter
    MAXIMISES L_B; plus because it MINIMISES the dependence on the attributes."""
    total = weights.lc * l_lc + weights.task * l_task - weights.privacy * l_privacy
    return total if l_hsic is None else total + weights.hsic * l_hsic


__all__ = [
    "UNLABELLED",
    "LossWeights",
    "latent_consistency",
    "masked_nt_xent",
    "normalized_hsic",
    "nt_xent",
    "task_loss",
    "total_loss",
]
