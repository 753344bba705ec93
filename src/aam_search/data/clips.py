"""Clip and static-clip sampling: which frames of a video become model input.

A *clip* is ``num_frames`` frames taken ``stride`` apart. A *static clip* is a
single frame tiled to clip length (the paper's privacy view: appearance, no
motion). Everything here is pure index arithmetic plus the final uint8 -> float
conversion, so it is shared by decoding, feature extraction and tests.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pydantic
import torch

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")


class ClipSettings(pydantic.BaseModel, frozen=True, extra="forbid"):
    """How clips are cut from a video and turned into model input."""

    num_frames: int = pydantic.Field(16, ge=1)  # T, frames per clip
    stride: int = pydantic.Field(2, ge=1)  # step between sampled frames inside a clip
    size: int = pydantic.Field(64, ge=1)  # short side resized to `size`, then centre-cropped square
    train_clips: int | None = pydantic.Field(None, ge=1)  # None: all non-overlapping clips
    eval_clips: int = pydantic.Field(5, ge=1)  # val/test: evenly spaced clips (paper: 5)
    static_clips: int = pydantic.Field(2, ge=1)  # static clips per video, at different times
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @pydantic.field_validator("std")
    @classmethod
    def _std_positive(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in std):
            raise ValueError("every std entry must be > 0")
        return std


def clip_span(settings: ClipSettings) -> int:
    """Number of source frames one clip covers, first to last sampled frame inclusive."""
    return (settings.num_frames - 1) * settings.stride + 1


def clip_starts(num_video_frames: int, split: str, settings: ClipSettings, seed: int) -> list[int]:
    """First source frame of every clip to take from a video of ``num_video_frames`` frames.

    train, ``train_clips=None``: all non-overlapping clips (at least one).
    train, ``train_clips=k``: k random starts, reproducible from ``seed``.
    val/test: ``eval_clips`` evenly spaced starts, first and last included.
    A video shorter than one clip span gets start 0 (its frames are clamped later).
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    span = clip_span(settings)
    last_start = max(num_video_frames - span, 0)
    if split == "train":
        if settings.train_clips is None:
            return list(range(0, last_start + 1, span))
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, last_start + 1, size=settings.train_clips)
        return sorted(int(s) for s in starts)
    starts = np.rint(np.linspace(0, last_start, settings.eval_clips))
    return [int(s) for s in starts]


def clip_frame_indices(start: int, num_video_frames: int, settings: ClipSettings) -> list[int]:
    """Source frame indices of the clip beginning at ``start``; a short video repeats its last frame."""
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    last = num_video_frames - 1
    return [min(start + i * settings.stride, last) for i in range(settings.num_frames)]


def static_frame_indices(num_video_frames: int, settings: ClipSettings) -> list[int]:
    """Frames used as static clips: ``static_clips`` times at (i+1)/(n+1) of the video.

    The floor of (i+1)*F/(n+1) is strictly increasing in i whenever F >= n, so the
    frames are distinct whenever the video has enough of them.
    """
    if num_video_frames < 1:
        raise ValueError(f"num_video_frames must be >= 1, got {num_video_frames}")
    n = settings.static_clips
    return [min((i + 1) * num_video_frames // (n + 1), num_video_frames - 1) for i in range(n)]


def to_model_input(frames_uint8: np.ndarray | torch.Tensor, settings: ClipSettings) -> torch.Tensor:
    """uint8 clips ``[N, T, H, W, 3]`` -> normalised float32 ``[N, 3, T, H, W]`` (encoder layout)."""
    frames = torch.as_tensor(frames_uint8)
    if frames.dtype != torch.uint8:
        raise TypeError(f"expected uint8 frames, got {frames.dtype}")
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames shaped [N, T, H, W, 3], got {tuple(frames.shape)}")
    clips = frames.permute(0, 4, 1, 2, 3).to(torch.float32).div_(255.0)
    mean = torch.tensor(settings.mean, dtype=torch.float32).view(1, 3, 1, 1, 1)
    std = torch.tensor(settings.std, dtype=torch.float32).view(1, 3, 1, 1, 1)
    return clips.sub_(mean).div_(std).contiguous()


def tile_static(frames: np.ndarray | torch.Tensor, num_frames: int) -> np.ndarray | torch.Tensor:
    """Single frames ``[N, H, W, 3]`` -> static clips ``[N, T, H, W, 3]``.

    Returns a broadcast view (read-only for numpy), not a copy: every time step
    of a static clip is the same frame.
    """
    if frames.ndim != 4:
        raise ValueError(f"expected frames shaped [N, H, W, C], got {tuple(frames.shape)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    n, h, w, c = frames.shape
    if isinstance(frames, torch.Tensor):
        return frames.unsqueeze(1).expand(n, num_frames, h, w, c)
    return np.broadcast_to(frames[:, None], (n, num_frames, h, w, c))
