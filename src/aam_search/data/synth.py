"""A synthetic stand-in for Kinetics + VISPR: H.264 videos whose action is pure motion and
whose private attributes are pure static appearance, plus optional labelled privacy images.

A second motion-only utility task, ``task:speed`` (slow/fast, independent of the action and
the appearance; empty for "still" videos and images), is meant to be probed but never
co-trained (``eval.unseen_tasks``): whether an adapter keeps motion it was not told to keep.

`sample_labels` decides splits, actions, attributes and the bias-protocol group without
rendering anything; `synthesize` renders and encodes them and writes the manifest.
"""

from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable, Literal

import numpy as np

from aam_search.data.synth_render import (
    ACTION_CLASSES, ATTR_NAMES, MOVING_ACTIONS, SPEED_CLASSES, Scene, render_frames, sample_scene, trajectory)

__all__ = [
    "ACTION_CLASSES", "ATTR_NAMES", "MANIFEST_COLUMNS", "SPEED_CLASSES", "SPLITS", "SampleLabels", "SynthReport",
    "UNSEEN_TASKS",
    "Scene", "biased_half", "encode_mp4", "rgb_to_yuv420p", "render_row", "sample_labels", "scene_for", "synthesize",
    "trajectory",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPEED_TASK = "task:speed"
# The generator's tasks that are for probing only: list them in a trial's eval.unseen_tasks.
UNSEEN_TASKS: tuple[str, ...] = (SPEED_TASK,)
MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "split", "action", *(f"attr:{name}" for name in ATTR_NAMES), SPEED_TASK, "group:gender")
_KIND_CODE = {"video": 0, "image": 1}  # keeps the render streams of videos and images apart


@dataclass(frozen=True)
class SampleLabels:
    """Labels of one synthetic row; `action` is None for privacy images."""

    kind: Literal["video", "image"]
    index: int
    split: str
    action: str | None
    attrs: dict[str, int]
    speed: str | None = None  # "slow"/"fast" for moving videos; None: still videos, images

    @property
    def group(self) -> str:
        return "female" if self.attrs["female"] else "male"

    @property
    def path(self) -> str:
        return f"videos/{self.index:06d}.mp4" if self.kind == "video" else f"images/{self.index:06d}.png"


@dataclass
class SynthReport:
    manifest: Path
    videos_per_split: dict[str, int]
    images_per_split: dict[str, int]
    action_classes: list[str]
    attr_names: list[str]
    # Average precision of a random scorer = positive rate of each attribute in the test split
    # (all rows when the test split is empty): the floor of the cMAP privacy metric.
    attr_chance: dict[str, float]
    action_chance: float  # a uniform guess over the balanced test classes
    speed_classes: list[str] = field(default_factory=lambda: list(SPEED_CLASSES))


def biased_half(group: str) -> tuple[str, ...]:
    """The action classes a train actor of `group` is drawn from with probability `bias`."""
    half = len(ACTION_CLASSES) // 2
    return ACTION_CLASSES[:half] if group == "female" else ACTION_CLASSES[half:]


def _assign_splits(rng: np.random.Generator, count: int,
                   split_fractions: tuple[float, float, float]) -> list[str]:
    fractions = np.asarray(split_fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers, got {split_fractions}")
    fractions = fractions / fractions.sum()
    n_train = min(count, max(1, int(round(fractions[0] * count))))
    n_val = min(count - n_train, int(round(fractions[1] * count)))
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * (count - n_train - n_val)
    order = rng.permutation(count)  # shuffle: row i gets the split at its random rank
    return [splits[rank] for rank in np.argsort(order)]


def sample_labels(videos: int, images: int = 0, *, seed: int = 0, bias: float | None = None,
                  split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> list[SampleLabels]:
    """Draw every row's split, action and attributes (cheap: nothing is rendered).

    Attributes are independent Bernoulli(0.5). Without `bias` actions are uniform and
    independent of appearance. Moving videos get a speed, uniform over `SPEED_CLASSES` and
    drawn from a stream of its own (the other labels do not change with it). With `bias=P`, a train actor's action comes from its group's
    half of the classes (`biased_half`) with probability P, else from the other half;
    val/test stay balanced.
    """
    if videos < 0 or images < 0 or videos + images == 0:
        raise ValueError("need at least one video or image")
    if bias is not None and not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias must be in [0, 1], got {bias}")
    rows: list[SampleLabels] = []
    for kind, count in (("video", videos), ("image", images)):
        if count == 0:
            continue
        rng = np.random.default_rng([seed, 1000 + _KIND_CODE[kind]])
        splits = _assign_splits(rng, count, split_fractions)
        attr_bits = rng.integers(0, 2, size=(count, len(ATTR_NAMES)))
        uniform_action = rng.integers(0, len(ACTION_CLASSES), size=count)
        own_half = rng.random(count)
        half_pick = rng.integers(0, len(ACTION_CLASSES) // 2, size=count)
        speeds = np.random.default_rng([seed, 2000 + _KIND_CODE[kind]]).integers(0, len(SPEED_CLASSES), size=count)
        for i in range(count):
            attrs = {name: int(bit) for name, bit in zip(ATTR_NAMES, attr_bits[i])}
            action: str | None = None
            if kind == "video":
                action = ACTION_CLASSES[uniform_action[i]]
                if bias is not None and splits[i] == "train":
                    group = "female" if attrs["female"] else "male"
                    other = "male" if group == "female" else "female"
                    half = biased_half(group if own_half[i] < bias else other)
                    action = half[half_pick[i]]
            speed = SPEED_CLASSES[speeds[i]] if action in MOVING_ACTIONS else None
            rows.append(SampleLabels(kind, i, splits[i], action, attrs, speed))
    return rows


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [T, H, W, 3] (H, W even) -> planar yuv420p [T, H * 3 // 2, W], BT.601 limited
    range (what decoders assume for untagged SD video)."""
    frames, height, width = rgb.shape[:3]
    r, g, b = (rgb[..., k].astype(np.float32) / 255.0 for k in range(3))
    luma = 16.0 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128.0 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128.0 + 112.0 * r - 93.786 * g - 18.214 * b
    # Chroma at half resolution: the mean of each 2x2 block.
    cb, cr = (c.reshape(frames, height // 2, 2, width // 2, 2).mean((2, 4)) for c in (cb, cr))
    planes = np.concatenate([p.reshape(frames, -1) for p in (luma, cb, cr)], axis=1)
    return np.clip(planes + 0.5, 0, 255).astype(np.uint8).reshape(frames, height * 3 // 2, width)


def encode_mp4(path: Path, frames: np.ndarray, fps: int, crf: int = 18) -> None:
    """Write uint8 RGB frames [T, H, W, 3] as H.264 (yuv420p) mp4, bit-for-bit reproducibly."""
    import av  # heavy import, only needed when writing

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # mbtree off: with it, x264 gave now and then different bytes for the same input
        # (seen with x264 core 165 at 32-128 px), breaking reproducibility.
        stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
        stream.codec_context.thread_count = 1  # x264 output depends on the thread count
        # Our own colour conversion, so the pixels do not depend on swscale's CPU-specific code.
        for index, planes in enumerate(rgb_to_yuv420p(frames)):
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, fps)  # explicit, not guessed
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def scene_for(row: SampleLabels, *, seed: int, size: int) -> Scene:
    """The scene `synthesize` renders for `row`: its own random stream, so rows are independent."""
    rng = np.random.default_rng([seed, _KIND_CODE[row.kind], row.index])
    return sample_scene(rng, row.attrs, row.action, size, row.speed)


def render_row(row: SampleLabels, *, seed: int, frames: int, size: int) -> np.ndarray:
    """Pixels of one row: [frames, S, S, 3] for a video, [S, S, 3] for an image."""
    pixels = render_frames(scene_for(row, seed=seed, size=size), frames if row.kind == "video" else 1)
    assert isinstance(pixels, np.ndarray)
    return pixels if row.kind == "video" else pixels[0]


def _per_split(rows: list[SampleLabels], kind: str) -> dict[str, int]:
    return {split: sum(r.kind == kind and r.split == split for r in rows) for split in SPLITS}


def write_samples(out_dir: Path, rows: Sequence[Any], render: Callable[[Any], np.ndarray], fps: int,
                  progress: Callable[[int, int], None] | None = None) -> None:
    """Render and write every row (``.kind`` video or image, ``.path`` under ``out_dir``)."""
    from PIL import Image  # imported here: only writing needs it

    def write_row(row: Any) -> None:
        pixels = render(row)
        if row.kind == "video":
            encode_mp4(out_dir / row.path, pixels, fps)
        else:
            Image.fromarray(pixels).save(out_dir / row.path, format="PNG")

    # Rows are independent and numpy/x264 release the GIL, so a few threads give a real
    # speed-up; each row has its own random stream, so the output does not depend on them.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for done, _ in enumerate(pool.map(write_row, rows), start=1):
            if progress is not None:
                progress(done, len(rows))


def synthesize(out_dir: Path, videos: int = 240, *, seed: int = 0, bias: float | None = None,
               images: int = 0, frames: int = 48, size: int = 64, fps: int = 16,
               split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
               progress: Callable[[int, int], None] | None = None) -> SynthReport:
    """Render and encode a synthetic dataset into `out_dir`; deterministic for a seed.

    Writes `videos/NNNNNN.mp4`, `images/NNNNNN.png`, `manifest.csv` (paths relative to
    `out_dir`, empty cells for missing labels) and `synth.json` (parameters and classes).
    """
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16 (yuv420p), got {size}")
    if frames < 1 or fps < 1:
        raise ValueError("frames and fps must be positive")
    out_dir = Path(out_dir)
    rows = sample_labels(videos, images, seed=seed, bias=bias, split_fractions=split_fractions)
    if videos:
        (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    if images:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)

    write_samples(out_dir, rows, lambda row: render_row(row, seed=seed, frames=frames, size=size), fps, progress)

    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for row in rows:
            writer.writerow([row.path, row.split, row.action or "",
                             *(row.attrs[name] for name in ATTR_NAMES), row.speed or "", row.group])

    test_rows = [r for r in rows if r.split == "test"] or rows
    report = SynthReport(
        manifest=manifest,
        videos_per_split=_per_split(rows, "video"),
        images_per_split=_per_split(rows, "image"),
        action_classes=list(ACTION_CLASSES),
        attr_names=list(ATTR_NAMES),
        attr_chance={name: float(np.mean([r.attrs[name] for r in test_rows])) for name in ATTR_NAMES},
        action_chance=1.0 / len(ACTION_CLASSES),
    )
    params = {"videos": videos, "images": images, "seed": seed, "bias": bias, "frames": frames,
              "size": size, "fps": fps, "split_fractions": list(split_fractions),
              "codec": "libx264", "pix_fmt": "yuv420p", "crf": 18, "preset": "veryfast",
              "x264_params": "mbtree=0"}
    summary = {**asdict(report), "manifest": manifest.name, "parameters": params,
               "bias_halves": {g: list(biased_half(g)) for g in ("female", "male")},
               "unseen_tasks": list(UNSEEN_TASKS)}
    (out_dir / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    return report
