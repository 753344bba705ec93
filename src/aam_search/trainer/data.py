"""Training batches drawn from the memory-mapped feature cache.

A batch item is one train video: a random one of its clips (for L_LC and L_T) and two of
its static clips taken at different times (the positive pair of L_B).

:class:`DeviceBatches` draws them: indices are drawn vectorised with torch (CSR offsets of
each video's rows plus one uniform draw per pick), on the device. The features either live
on the device for the whole trial (``device``: fp16 on CUDA, float32 on CPU) or, when they
do not fit, are gathered from the memory map per batch into pinned memory, one batch ahead
(``streamed``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from aam_search.features.cache import CacheError, FeatureCache
from aam_search.trainer.config import RESIDENT_FRACTION, Residency


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
        """One epoch on the CPU (see :class:`DeviceBatches` for the draw)."""
        return DeviceBatches(self, batch_size, seed=seed, rank=rank, world_size=world_size).epoch(epoch)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def choose_residency(needed_bytes: int, device: torch.device, requested: Residency = "auto",
                     fraction: float = RESIDENT_FRACTION) -> tuple[str, str]:
    """``(mode, why)``: ``device`` when the features fit in ``fraction`` of the free memory."""
    if requested != "auto":
        return requested, "as configured"
    free = _free_bytes(device)
    mode = "device" if needed_bytes <= fraction * free else "streamed"
    return mode, f"{needed_bytes / 2**20:.1f} MiB of features, {fraction:g} x {free / 2**20:.0f} MiB free on {device}"


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _csr(rows_by_video: list[np.ndarray], videos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(global rows in video order, each video's offset, each video's count) for ``videos``."""
    parts = [rows_by_video[v] for v in videos]
    counts = torch.tensor([len(p) for p in parts], dtype=torch.long)
    offsets = torch.cumsum(counts, 0) - counts
    rows = torch.from_numpy(np.concatenate(parts).astype(np.int64)) if parts else torch.zeros(0, dtype=torch.long)
    return rows, offsets, counts


def _pick(uniform: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """floor(u * n), kept below n (float rounding) and at 0 for n = 0."""
    return (uniform * counts).long().clamp(max=(counts - 1).clamp(min=0))


class DeviceBatches:
    """The batches of one rank of one trial, drawn on ``device`` with no host sync.

    Deterministic per ``(seed, epoch, rank)``: every rank shuffles the videos alike (seeded
    by ``(seed, epoch)``), then takes every ``world_size``-th batch; the clip and the static
    pair of each video are drawn from the rank's own stream. ``draw(epoch, step)`` gives any
    step; ``epoch(epoch)`` iterates one, a batch ahead when streamed.
    """

    def __init__(self, data: TrainingData, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", residency: Residency = "auto",
                 fraction: float = RESIDENT_FRACTION):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size = rank, max(1, world_size)
        self.device = torch.device(device)
        self.steps_per_epoch = data.batches_per_epoch(batch_size, self.world_size)
        cache, videos = data.cache, data.videos
        self.clip_rows, self.clip_offsets, self.clip_counts = _csr(data.clip_rows, videos)
        self.static_rows, self.static_offsets, self.static_counts = _csr(data.static_rows, videos)
        if len(self.static_rows) == 0:  # no static clip at all: any row keeps the shape (masked out)
            self.static_rows = torch.zeros(1, dtype=torch.long)
        half = self.device.type == "cuda"
        self.feature_dtype = cache.clip_features.dtype if half else torch.float32
        row_bytes = cache.tokens * cache.dim * torch.empty((), dtype=self.feature_dtype).element_size()
        needed = (len(self.clip_rows) + len(self.static_rows)) * row_bytes
        self.residency, self.residency_reason = choose_residency(needed, self.device, residency, fraction)
        resident = self.residency == "device"
        # Indices live where the features are gathered: on the device, or next to the memory map.
        self.index_device = self.device if resident else torch.device("cpu")
        on = lambda t: t.to(self.index_device)  # noqa: E731
        self.clip_offsets, self.clip_counts = on(self.clip_offsets), on(self.clip_counts)
        self.static_offsets, self.static_counts = on(self.static_offsets), on(self.static_counts)
        index = torch.from_numpy(videos)
        self.pair_mask = torch.from_numpy(data.has_pair[videos]).to(self.device)
        self.targets = {k: v.to(self.device) for k, v in video_targets(cache, videos).items()}
        self.attrs = cache.labels("attrs")[index].to(self.device)
        self.clip_source = self.static_source = None
        if resident:
            self.clip_source = self._resident(cache.clip_features, self.clip_rows)
            self.static_source = self._resident(cache.static_features, self.static_rows)
        self._epoch: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" and not resident else None

    def _resident(self, features: torch.Tensor, rows: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        out = torch.empty((len(rows), *features.shape[1:]), dtype=self.feature_dtype, device=self.device)
        for start in range(0, len(rows), chunk):
            out[start : start + chunk] = features[rows[start : start + chunk]].to(self.device, self.feature_dtype)
        return out

    def _draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's video order (alike on every rank) and this rank's uniforms [steps, B, 3]."""
        if self._epoch is None or self._epoch[0] != epoch:
            device = self.index_device
            shared = torch.Generator(device=device).manual_seed(_seed_of(self.seed, epoch))
            order = torch.randperm(len(self.data.videos), generator=shared, device=device)
            own = torch.Generator(device=device).manual_seed(_seed_of(self.seed, epoch, self.rank))
            uniform = torch.rand((self.steps_per_epoch, self.batch_size, 3), generator=own, device=device)
            self._epoch = (epoch, order, uniform)
        return self._epoch[1], self._epoch[2]

    def indices(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(video positions, clip rows, static rows a and b) of a step; rows index the CSR tables."""
        order, uniform = self._draws(epoch)
        full = max(1, len(order) // self.batch_size)
        number = (step * self.world_size + self.rank) % full
        videos = order[number * self.batch_size : (number + 1) * self.batch_size]
        u = uniform[step, : len(videos)]
        clip = self.clip_offsets[videos] + _pick(u[:, 0], self.clip_counts[videos])
        count, offset = self.static_counts[videos], self.static_offsets[videos]
        first = _pick(u[:, 1], count)
        second = _pick(u[:, 2], (count - 1).clamp(min=0))
        second = second + (second >= first).long()  # distinct from the first when count >= 2
        paired = count >= 2
        static_a = torch.where(count > 0, offset + first, 0)
        static_b = torch.where(paired, offset + second, static_a)
        return videos, clip, static_a, static_b

    def draw(self, epoch: int, step: int) -> Batch:
        if self.residency == "device":
            videos, clip, static_a, static_b = self.indices(epoch, step)
            features = (self.clip_source[clip], self.static_source[static_a], self.static_source[static_b])
            return self._batch(videos, tuple(f.float() for f in features))
        return self._assemble(*self._host_batch(epoch, step))

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The steps of one epoch; streamed, the next batch's host gather runs meanwhile."""
        if self.residency == "device":
            for step in range(self.steps_per_epoch):
                yield self.draw(epoch, step)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(self._host_batch, epoch, 0)
            for step in range(self.steps_per_epoch):
                host = ahead.result()
                if step + 1 < self.steps_per_epoch:
                    ahead = pool.submit(self._host_batch, epoch, step + 1)
                yield self._assemble(*host)

    def _batch(self, videos: torch.Tensor, features: tuple) -> Batch:
        return Batch(*features, pair_mask=self.pair_mask[videos],
                     targets={k: v[videos] for k, v in self.targets.items()}, attrs=self.attrs[videos])

    def _host_batch(self, epoch: int, step: int) -> tuple[torch.Tensor, tuple]:
        """A streamed step's rows, gathered from the memory map (pinned for a CUDA copy)."""
        videos, clip, static_a, static_b = self.indices(epoch, step)
        cache, pin = self.data.cache, self.device.type == "cuda"
        host = []
        for features, rows, picks in ((cache.clip_features, self.clip_rows, clip),
                                      (cache.static_features, self.static_rows, static_a),
                                      (cache.static_features, self.static_rows, static_b)):
            gathered = features[rows[picks]]
            host.append(gathered.pin_memory() if pin else gathered)
        return videos, tuple(host)

    def _assemble(self, videos: torch.Tensor, host: tuple) -> Batch:
        if self.device.type != "cuda":
            return self._batch(videos, tuple(t.float() for t in host))
        # Copied on a side stream, so the copy overlaps the step still queued on the main one.
        main = torch.cuda.current_stream(self.device)
        self.copy_stream.wait_stream(main)
        with torch.cuda.stream(self.copy_stream):
            moved = [t.to(self.device, non_blocking=True) for t in (*host, videos.pin_memory())]
        main.wait_stream(self.copy_stream)
        for t in moved:
            t.record_stream(main)
        return self._batch(moved[-1], tuple(t.float() for t in moved[:-1]))

    def describe(self) -> str:
        return f"training data: {self.residency} ({self.residency_reason})"

    def log(self) -> None:
        print(self.describe(), file=sys.stderr, flush=True)
