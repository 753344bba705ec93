"""Evaluate a feature transform (an adapter, or the identity for the raw baseline) on a cache.

Utility: linear probe on pooled clip features of train videos with an action, top-1 on the
evaluation split (logits averaged over each video's clips). Privacy: fresh attackers on the
``static`` protocol (static clips, image rows included; the paper's) and the ``clip``
protocol (the moving clips a user actually shares; videos with attribute labels only).
Only rows labelled for a task take part in it. Leakage is the strongest attacker's cMAP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from aam_search.features.cache import CacheError, FeatureCache
from aam_search.trainer.data import task_num_classes, video_targets
from aam_search.trainer.evaluation import AttackResult, attack, linear_probe

Transform = Callable[[torch.Tensor], torch.Tensor]
ATTACKERS = ("mlp", "linear")


@torch.no_grad()
def pooled(features: torch.Tensor, transform: Transform | None, batch_size: int = 1024) -> torch.Tensor:
    """Apply ``transform`` to ``[N, L, D]`` token features in batches, then mean over L."""
    out = []
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size].float()
        if transform is not None:
            chunk = transform(chunk).float()
        out.append(chunk.mean(dim=1).cpu())
    if not out:
        return torch.zeros(0, features.shape[-1])
    return torch.cat(out)


def _rows_of(owner: torch.Tensor, videos: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.isin(owner.numpy(), videos)).nonzero().squeeze(1)


def _labelled(cache: FeatureCache, split: str, labels: torch.Tensor) -> np.ndarray:
    videos = cache.video_indices(split)
    return videos[labels.numpy()[videos] >= 0]


def evaluate_utility(
    cache: FeatureCache,
    transform: Transform | None,
    split: str = "val",
    *,
    task: str = "action",
    seed: int = 0,
    epochs: int = 60,
) -> dict[str, Any]:
    """Linear-probe top-1 for ``task`` ("action" or "task:<name>") on ``split``."""
    action = video_targets(cache, np.arange(cache.num_videos))[task]
    train_videos = _labelled(cache, "train", action)
    eval_videos = _labelled(cache, split, action)
    if len(train_videos) == 0 or len(eval_videos) == 0:
        problem = cache.split_problem("train") or cache.split_problem(split)
        if problem:  # nothing decoded there, which says more than "no labels"
            raise CacheError(problem)
        raise ValueError(f"{cache.path}: no videos labelled for {task} in train and {split}")
    train_rows = _rows_of(cache.clip_video, train_videos)
    eval_rows = _rows_of(cache.clip_video, eval_videos)
    train_x = pooled(cache.clip_features[train_rows], transform)
    eval_x = pooled(cache.clip_features[eval_rows], transform)
    eval_owner = cache.clip_video[eval_rows]
    groups = None
    group_names = None
    if cache.meta["group_names"]:
        first = cache.meta["group_names"][0]
        groups = cache.labels("groups")[:, 0][eval_owner].clamp_min(0)
        group_names = cache.meta["group_values"][first]
    result = linear_probe(
        train_x,
        action[cache.clip_video[train_rows]],
        eval_x,
        action[eval_owner],
        eval_owner,
        task_num_classes(cache)[task],
        eval_groups=groups,
        group_names=group_names,
        epochs=epochs,
        seed=seed,
    )
    summary = result.to_dict()
    if result.per_group:
        summary["group_gap"] = max(result.per_group.values()) - min(result.per_group.values())
    return summary


def evaluate_privacy(
    cache: FeatureCache,
    transform: Transform | None,
    split: str = "val",
    *,
    protocols: tuple[str, ...] = ("static", "clip"),
    seed: int = 0,
    epochs: int = 60,
) -> dict[str, Any]:
    """Leakage per protocol: each attacker's cMAP, the strongest one, and chance."""
    attrs = cache.labels("attrs")
    names = list(cache.meta["attr_names"])
    is_image = cache.labels("is_image").numpy()
    out: dict[str, Any] = {}
    for protocol in protocols:
        train_videos = cache.video_indices("train", with_attrs=True)
        eval_videos = cache.video_indices(split, with_attrs=True)
        if protocol == "static":
            features, owner = cache.static_features, cache.static_video
        elif protocol == "clip":
            features, owner = cache.clip_features, cache.clip_video
            train_videos = train_videos[~is_image[train_videos]]
            eval_videos = eval_videos[~is_image[eval_videos]]
        else:
            raise ValueError(f"unknown privacy protocol {protocol!r} (static or clip)")
        if len(train_videos) == 0 or len(eval_videos) == 0:
            continue  # e.g. the clip protocol when only images carry attributes
        train_rows = _rows_of(owner, train_videos)
        eval_rows = _rows_of(owner, eval_videos)
        train_x = pooled(features[train_rows], transform)
        eval_x = pooled(features[eval_rows], transform)
        results: list[AttackResult] = [
            attack(train_x, attrs[owner[train_rows]], eval_x, attrs[owner[eval_rows]], names,
                   kind=kind, seed=seed, epochs=epochs)
            for kind in ATTACKERS
        ]
        strongest = max(results, key=lambda r: r.cmap)
        out[protocol] = {
            "cmap": strongest.cmap,
            "chance": strongest.chance,
            "strongest": strongest.attacker,
            "per_attribute": strongest.per_attribute,
            "attackers": {r.attacker: r.cmap for r in results},
        }
    return out
