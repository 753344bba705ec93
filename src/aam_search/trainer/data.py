"""Training batches drawn from the memory-mapped feature cache.

A batch item is one train video: a random one of its clips (for L_LC and L_T) and two of
its static clips taken at different times (the positive pair of L_B). Rows gather from the
mapped tensors per batch, so only the touched features are read from disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from aam_search.features.cache import CacheError, FeatureCache


@dataclass
class Batch:
    clips: torch.Tensor  # [B, L, D] raw clip features
    static_a: torch.Tensor  # [B, L, D] static clip at one time
    static_b: torch.Tensor  # [B, L, D] static clip at another time of the same video
    pair_mask: torch.Tensor  # [B] bool: the video has two distinct static clips
    targets: dict[str, torch.Tensor]  # task name -> [B] class index, -1 = unlabelled
    attrs: torch.Tensor | None = None  # [B, A] 0/1 attr: labels, -1 = unlabelled (train split only)

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.clips.to(device),
            self.static_a.to(device),
            self.static_b.to(device),
            self.pair_mask.to(device),
            {name: target.to(device) for name, target in self.targets.items()},
            None if self.attrs is None else self.attrs.to(device),
        )

    def __len__(self) -> int:
        return len(self.clips)


def _rows_by_video(owner: torch.Tensor, count: int) -> list[np.ndarray]:
    owner_np = owner.numpy()
    order = np.argsort(owner_np, kind="stable")
    bounds = np.searchsorted(owner_np[order], np.arange(count + 1))
    return [order[bounds[v] : bounds[v + 1]] for v in range(count)]


def task_names(cache: FeatureCache) -> list[str]:
    """The utility tasks a cache can train: the seen action, then each ``task:`` column."""
    names = ["action"] if cache.meta["action_classes"] else []
    return names + [f"task:{name}" for name in cache.meta["task_names"]]


def task_num_classes(cache: FeatureCache) -> dict[str, int]:
    sizes = {"action": len(cache.meta["action_classes"])}
    sizes.update({f"task:{n}": len(cache.meta["task_classes"][n]) for n in cache.meta["task_names"]})
    return {name: sizes[name] for name in task_names(cache)}


def video_targets(cache: FeatureCache, videos: np.ndarray) -> dict[str, torch.Tensor]:
    index = torch.from_numpy(videos)
    targets = {}
    for name in task_names(cache):
        if name == "action":
            targets[name] = cache.labels("action")[index]
        else:
            column = cache.meta["task_names"].index(name.removeprefix("task:"))
            targets[name] = cache.labels("tasks")[index, column]
    return targets


class TrainingData:
    def __init__(self, cache: FeatureCache):
        self.cache = cache
        count = cache.num_videos
        self.clip_rows = _rows_by_video(cache.clip_video, count)
        self.static_rows = _rows_by_video(cache.static_video, count)
        has_pair = np.array([len(rows) >= 2 for rows in self.static_rows])
        candidates = cache.video_indices("train")
        labelled = np.zeros(count, dtype=bool)
        for target in video_targets(cache, np.arange(count)).values():
            labelled |= target.numpy() >= 0
        usable = has_pair[candidates] | labelled[candidates]
        has_clips = np.array([len(self.clip_rows[v]) > 0 for v in candidates], dtype=bool)
        self.videos = candidates[usable & has_clips]
        if len(self.videos) < 2:
            raise CacheError(cache.split_problem("train") or f"{cache.path}: {len(self.videos)} usable train "
                             "video(s); training needs at least 2 (with clips and a label or two static clips)")
        self.has_pair = has_pair

    def __len__(self) -> int:
        return len(self.videos)

    def batches_per_epoch(self, batch_size: int, world_size: int = 1) -> int:
        """Steps per rank; equal on every rank, as DDP needs."""
        return max(1, (len(self.videos) // batch_size) // max(1, world_size))

    def batches(
        self, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]:
        """One epoch: every rank shuffles alike, then takes every ``world_size``-th batch."""
        rng = np.random.default_rng([seed, epoch, rank])
        order = np.random.default_rng([seed, epoch]).permutation(self.videos)
        full = max(1, len(order) // batch_size)
        for step in range(self.batches_per_epoch(batch_size, world_size)):
            number = (step * world_size + rank) % full
            yield self._gather(order[number * batch_size : (number + 1) * batch_size], rng)

    def _gather(self, videos: np.ndarray, rng: np.random.Generator) -> Batch:
        cache = self.cache
        clip_rows = np.array([rng.choice(self.clip_rows[v]) for v in videos])
        static_a, static_b = [], []
        for video in videos:
            rows = self.static_rows[video]
            if len(rows) >= 2:
                first, second = rng.choice(len(rows), size=2, replace=False)
                static_a.append(rows[first])
                static_b.append(rows[second])
            else:  # no pair: masked out of L_B; any row keeps the tensor shape
                row = rows[0] if len(rows) else 0
                static_a.append(row)
                static_b.append(row)
        return Batch(
            clips=cache.clip_features[torch.from_numpy(clip_rows)].float(),
            static_a=cache.static_features[torch.tensor(static_a)].float(),
            static_b=cache.static_features[torch.tensor(static_b)].float(),
            pair_mask=torch.from_numpy(self.has_pair[videos]),
            targets=video_targets(cache, videos),
            attrs=cache.labels("attrs")[torch.from_numpy(videos)],
        )
