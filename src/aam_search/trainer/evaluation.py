"""Honest evaluation of (anonymized) features: fresh attackers and linear probes.

Privacy leakage is measured the way the paper does: a NEW attacker, trained from scratch
on the features under test, predicts the binary private attributes; the score is cMAP
(mean over attributes of average precision), lower is better. Its chance level is each
attribute's positive rate (the AP of a random scorer), so a reader can see how much of
the leakage is above chance. Utility is a linear probe's top-1, logits averaged over the
clips of each evaluation video (the paper's 5-clip protocol).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from aam_search.trainer.attackers import (
    ATTACK_BATCH,
    ATTACK_LR,
    ATTACKER_KINDS,
    make_attacker,
    member_scores,
    train_members,
)
from aam_search.trainer.knn import knn_members

__all__ = ["AttackResult", "ProbeResult", "attack", "attribute_cmap", "average_precision", "linear_probe",
           "make_attacker"]


@dataclass(frozen=True)
class ProbeResult:
    top1: float
    chance: float
    train_clips: int
    eval_videos: int
    per_group: dict[str, float] = field(default_factory=dict)
    # Per evaluation video (for the bootstrap): its cache index and 1.0 where it was right.
    videos: np.ndarray | None = field(default=None, repr=False, compare=False)
    correct: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("videos", "correct")}


@dataclass(frozen=True)
class AttackResult:
    cmap: float
    chance: float
    per_attribute: dict[str, float]
    chance_per_attribute: dict[str, float]
    attacker: str
    train_samples: int
    eval_samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP as the mean precision at each positive, ties broken pessimistically."""
    labels = labels.astype(bool)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    # Sort by score descending; among equal scores put negatives first (no credit for ties).
    order = np.lexsort((labels.astype(int), -scores))
    hits = labels[order]
    ranks = np.arange(1, len(hits) + 1)
    precision_at_hits = np.cumsum(hits)[hits] / ranks[hits]
    return float(precision_at_hits.mean())


def _standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


def _fit_lbfgs(model: nn.Module, inputs: torch.Tensor, loss_fn, *, l2: float, max_iter: int) -> None:
    """Full-batch L-BFGS (strong Wolfe) on a convex loss plus ``l2/2 * ||weight||^2``."""
    optimizer = torch.optim.LBFGS(
        model.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe",
    )
    everything = torch.arange(len(inputs), device=inputs.device)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), everything) + 0.5 * l2 * sum(w.pow(2).sum() for w in weights)
        loss.backward()
        return loss

    if len(inputs):
        optimizer.step(closure)


PROBE_L2 = 1e-2  # L2 on the probe weights (features are standardised)


def attribute_cmap(scores: np.ndarray, labels: np.ndarray, attr_names: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """AP and chance (positive rate) per attribute of ``scores``/``labels`` ``[N, A]`` (-1 = unknown).

    An attribute without both classes among the labelled rows is left out (AP is undefined).
    """
    per_attr, chance = {}, {}
    for j, name in enumerate(attr_names):
        keep = labels[:, j] >= 0
        if keep.sum() == 0 or labels[keep, j].min() == labels[keep, j].max():
            continue
        per_attr[name] = average_precision(scores[keep, j], labels[keep, j])
        chance[name] = float(labels[keep, j].mean())
    return per_attr, chance


def attack(
    train_x: torch.Tensor,
    train_attrs: torch.Tensor,
    eval_x: torch.Tensor,
    eval_attrs: torch.Tensor,
    attr_names: list[str],
    *,
    kind: str = "mlp",
    epochs: int = 60,
    lr: float = ATTACK_LR,
    batch_size: int = ATTACK_BATCH,
    seed: int = 0,
    knn_k: int | None = None,
    train_video: torch.Tensor | None = None,
) -> AttackResult:
    """Train one fresh attacker of ``kind`` (see ``attackers.ATTACKER_KINDS``) on pooled
    features ``[N, D]`` and score it on ``eval_x``; attrs ``[N, A]`` with -1 = unknown.

    ``train_video`` (the video of each training row) keeps a kNN's inner CV from matching a
    row with its own video; without it every row counts as its own video.
    """
    if kind not in ATTACKER_KINDS:
        raise ValueError(f"unknown attacker kind {kind!r} ({', '.join(ATTACKER_KINDS)})")
    x = torch.cat([train_x.float(), eval_x.float().to(train_x.device)])
    targets = torch.cat([train_attrs.cpu(), eval_attrs.cpu()])
    train = torch.zeros(1, len(x), dtype=torch.bool)
    train[0, : len(train_x)] = True
    query = x[len(train_x) :]
    if kind == "knn":
        owner = torch.arange(len(x)) if train_video is None else torch.cat(
            [train_video.long().cpu(), torch.full((len(eval_x),), -1, dtype=torch.long)])
        scores, _ = knn_members(x, targets, owner, train, query, k=knn_k, seed=seed)
    else:
        fitted = train_members(x, targets, train, (kind,), epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
        scores = member_scores(fitted[kind], query)
    per_attr, chance = attribute_cmap(scores[0].cpu().numpy(), eval_attrs.cpu().numpy(), attr_names)
    if not per_attr:
        raise ValueError("no attribute has both positive and negative evaluation labels")
    return AttackResult(
        cmap=float(np.mean(list(per_attr.values()))),
        chance=float(np.mean(list(chance.values()))),
        per_attribute=per_attr,
        chance_per_attribute=chance,
        attacker=kind,
        train_samples=len(train_x),
        eval_samples=len(eval_x),
    )


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    eval_video: torch.Tensor,
    num_classes: int,
    *,
    eval_groups: torch.Tensor | None = None,
    group_names: list[str] | None = None,
    epochs: int = 60,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> ProbeResult:
    """Linear probe on clip features ``[N, D]``; eval logits are averaged per video.

    ``eval_video`` maps each eval clip to its video; ``eval_y`` is per clip (all clips of a
    video share the label). ``eval_groups`` (per clip) gives per-group top-1 for the bias
    protocol.
    """
    device = train_x.device
    train_x, eval_x = _standardize(train_x.float(), eval_x.float().to(device))
    train_y = train_y.to(device)
    torch.manual_seed(seed)
    model = nn.Linear(train_x.shape[1], num_classes).to(device)  # initialised on the CPU: same on every device

    def loss_fn(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, train_y[index])

    # A convex problem: full-batch L-BFGS converges in well under a second and, unlike a few
    # AdamW epochs on a small set, does not leave the probe undertrained. ``lr`` and
    # ``batch_size`` are kept for callers but unused; ``epochs`` scales the iteration cap.
    _fit_lbfgs(model, train_x, loss_fn, l2=PROBE_L2, max_iter=max(10 * epochs, 500))
    with torch.no_grad():
        logits = model(eval_x).cpu()  # [clips, classes]: small; the rest is bookkeeping on the host
    eval_y, eval_video = eval_y.cpu(), eval_video.cpu()
    videos, inverse = torch.unique(eval_video, return_inverse=True)
    summed = torch.zeros(len(videos), num_classes).index_add_(0, inverse, logits)
    video_label = torch.zeros(len(videos), dtype=torch.long).scatter_(0, inverse, eval_y)
    correct = (summed.argmax(1) == video_label).float()
    per_group: dict[str, float] = {}
    if eval_groups is not None and group_names is not None:
        video_group = torch.zeros(len(videos), dtype=torch.long).scatter_(0, inverse, eval_groups.cpu())
        for code, name in enumerate(group_names):
            members = video_group == code
            if members.any():
                per_group[name] = float(correct[members].mean())
    # Chance: what always answering the most frequent evaluation class would score.
    counts = torch.bincount(video_label, minlength=num_classes).float()
    return ProbeResult(
        top1=float(correct.mean()),
        chance=float(counts.max() / counts.sum()),
        train_clips=len(train_x),
        eval_videos=len(videos),
        per_group=per_group,
        videos=videos.numpy(),
        correct=correct.numpy(),
    )
