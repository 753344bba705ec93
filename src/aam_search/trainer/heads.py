"""Utility heads: trained on raw features before anonymization (as the paper does), and the
co-trained heads' own accuracy on adapted features afterwards."""

from __future__ import annotations

import numpy as np
import torch

from aam_search.features.cache import FeatureCache
from aam_search.trainer.data import video_targets
from aam_search.trainer.feature_eval import Transform
from aam_search.trainer.losses import task_loss
from aam_search.trainer.model import TaskHeads


def _train_clip_rows(cache: FeatureCache) -> torch.Tensor:
    videos = cache.video_indices("train")
    return torch.from_numpy(np.isin(cache.clip_video.numpy(), videos)).nonzero().squeeze(1)


def pretrain_heads(
    heads: TaskHeads, cache: FeatureCache, *, epochs: int, lr: float, seed: int, batch_size: int = 256
) -> None:
    """Fit every task head on raw train clip features (tokens mean-pooled by the heads)."""
    if epochs == 0 or not heads.num_classes:
        return
    rows = _train_clip_rows(cache)
    features = cache.clip_features[rows].float()
    owners = cache.clip_video[rows].numpy()
    targets = video_targets(cache, owners)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-4)
    heads.train()
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            loss, _ = task_loss(heads(features[index]), {k: v[index] for k, v in targets.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


@torch.no_grad()
def cotrained_accuracy(heads: TaskHeads, cache: FeatureCache, transform: Transform, split: str) -> dict[str, float]:
    """Top-1 of the co-trained heads on adapted features, logits averaged per video."""
    videos = cache.video_indices(split)
    rows = torch.from_numpy(np.isin(cache.clip_video.numpy(), videos)).nonzero().squeeze(1)
    if len(rows) == 0:
        return {}
    owner = cache.clip_video[rows]
    logits: dict[str, list[torch.Tensor]] = {}
    device = next(heads.parameters()).device
    for start in range(0, len(rows), 512):
        adapted = transform(cache.clip_features[rows[start : start + 512]].float()).to(device)
        for task, value in heads(adapted).items():
            logits.setdefault(task, []).append(value.float().cpu())
    unique, inverse = torch.unique(owner, return_inverse=True)
    targets = video_targets(cache, unique.numpy())
    accuracy = {}
    for task, parts in logits.items():
        summed = torch.zeros(len(unique), parts[0].shape[1]).index_add_(0, inverse, torch.cat(parts))
        labelled = targets[task] >= 0
        if labelled.any():
            correct = summed.argmax(1)[labelled] == targets[task][labelled]
            accuracy[task] = float(correct.float().mean())
    return accuracy


__all__ = ["cotrained_accuracy", "pretrain_heads"]
