"""A second synthetic dataset, unlike the first on purpose, so defaults are not tuned to one.

Another actor (a soft elliptical blob with a round head, drawn on a tiled or gradient
backdrop), other private attributes (``hat``, ``dotted`` body, ``dark`` body colour,
``tiled`` backdrop: static appearance only, independent Bernoulli(0.5)) and other actions
(``orbit``, ``diagonal``, ``vertical``, ``shake``: motion only). ``task:direction``
(forward/reverse: clockwise or not, which way the actor drifts; empty for ``shake`` and
images) is independent of the action and the appearance and meant to be probed only
(``eval.unseen_tasks``). Writes H.264 videos, PNG images and a manifest in the project's format.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from aam_search.data.synth import SPLITS, _assign_splits, write_samples

__all__ = ["ALT_ACTIONS", "ALT_ATTRS", "ALT_COLUMNS", "ALT_UNSEEN_TASKS", "DIRECTIONS", "AltRow", "AltReport",
           "alt_labels", "render_alt", "synthesize_alt"]

ALT_ACTIONS: tuple[str, ...] = ("orbit", "diagonal", "vertical", "shake")
ALT_ATTRS: tuple[str, ...] = ("hat", "dotted", "dark", "tiled")
DIRECTIONS: tuple[str, ...] = ("forward", "reverse")
DIRECTION_TASK = "task:direction"
ALT_UNSEEN_TASKS: tuple[str, ...] = (DIRECTION_TASK,)
_DIRECTED = ("orbit", "diagonal", "vertical")  # shake is symmetric in time: no direction
ALT_COLUMNS: tuple[str, ...] = ("path", "split", "action", *(f"attr:{a}" for a in ALT_ATTRS), DIRECTION_TASK)
_KIND_CODE = {"video": 0, "image": 1}


@dataclass(frozen=True)
class AltRow:
    kind: str  # "video" | "image"
    index: int
    split: str
    action: str | None
    attrs: dict[str, int]
    direction: str | None

    @property
    def path(self) -> str:
        return f"videos/{self.index:06d}.mp4" if self.kind == "video" else f"images/{self.index:06d}.png"


@dataclass
class AltReport:
    manifest: Path
    videos_per_split: dict[str, int]
    images_per_split: dict[str, int]
    action_classes: list[str]
    attr_names: list[str]
    attr_chance: dict[str, float]  # positive rate in test (all rows if no test): the cMAP floor
    action_chance: float


def alt_labels(videos: int, images: int = 0, *, seed: int = 0,
               split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> list[AltRow]:
    """Splits, actions (uniform), attributes and directions, each from its own stream."""
    if videos < 0 or images < 0 or videos + images == 0:
        raise ValueError("need at least one video or image")
    rows: list[AltRow] = []
    for kind, count in (("video", videos), ("image", images)):
        if count == 0:
            continue
        rng = np.random.default_rng([seed, 7000 + _KIND_CODE[kind]])
        splits = _assign_splits(rng, count, split_fractions)
        bits = rng.integers(0, 2, size=(count, len(ALT_ATTRS)))
        actions = rng.integers(0, len(ALT_ACTIONS), size=count)
        directions = np.random.default_rng([seed, 8000 + _KIND_CODE[kind]]).integers(0, 2, size=count)
        for i in range(count):
            action = ALT_ACTIONS[actions[i]] if kind == "video" else None
            direction = DIRECTIONS[directions[i]] if action in _DIRECTED else None
            rows.append(AltRow(kind, i, splits[i], action,
                               {a: int(b) for a, b in zip(ALT_ATTRS, bits[i])}, direction))
    return rows


def _backdrop(rng: np.random.Generator, size: int, tiled: bool) -> np.ndarray:
    """A checker of two random tints (tiled) or a smooth diagonal gradient between two colours."""
    a, b = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if tiled:
        cell = rng.uniform(0.12, 0.2) * size
        mask = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2)[..., None]
    else:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / size
        mask = ((ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6))[..., None]
    return (a * (1 - mask) + b * mask).astype(np.float32)


def _path(rng: np.random.Generator, action: str | None, direction: str | None, size: int,
          frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Actor centre (x, y) per frame; a still image freezes the motion at a random time."""
    t = np.arange(frames, dtype=np.float64) if action is not None else np.full(frames, rng.uniform(0, 48))
    sign = -1.0 if direction == "reverse" else 1.0
    cx, cy = rng.uniform(0.35, 0.65) * size, rng.uniform(0.4, 0.6) * size
    phase = rng.uniform(0, 2 * np.pi)
    period = rng.uniform(14, 22)
    amp = rng.uniform(0.15, 0.22) * size
    speed = rng.uniform(0.9, 1.4) * size / 64
    if action == "orbit":
        angle = phase + sign * 2 * np.pi * t / period
        return cx + amp * np.cos(angle), cy + amp * np.sin(angle)
    if action == "diagonal":
        return np.mod(cx + sign * speed * t, size), np.mod(cy + sign * speed * t, size)
    if action == "vertical":
        return np.full(frames, cx), np.mod(cy + sign * speed * t, size)
    if action == "shake":
        return cx + 0.6 * amp * np.sin(phase + 2 * np.pi * t / 5.0), np.full(frames, cy)
    return np.full(frames, cx), np.full(frames, cy)


def render_alt(row: AltRow, *, seed: int, frames: int, size: int) -> np.ndarray:
    """uint8 RGB [frames, S, S, 3] for a video, [S, S, 3] for an image; own stream per row."""
    rng = np.random.default_rng([seed, 9000 + _KIND_CODE[row.kind], row.index])
    n = frames if row.kind == "video" else 1
    attrs = row.attrs
    value = rng.uniform(0.15, 0.35) if attrs["dark"] else rng.uniform(0.7, 0.95)
    hue = rng.uniform(0, 1)
    body = np.array([0.5 + 0.5 * np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)], np.float32)
    body = 255 * value * (0.55 + 0.45 * body)
    dot_rgb = np.float32(255) - body  # dots contrast with the body in brightness
    hat_rgb = rng.uniform(0, 255, 3).astype(np.float32)
    head_rgb = rng.uniform(120, 230, 3).astype(np.float32)
    rx, ry = rng.uniform(0.10, 0.14) * size, rng.uniform(0.16, 0.22) * size
    head_r = rng.uniform(0.07, 0.09) * size
    dot_cell = max(3.0, rng.uniform(0.25, 0.35) * rx)
    xs, ys = _path(rng, row.action, row.direction, size, n)
    image = np.repeat(_backdrop(rng, size, bool(attrs["tiled"]))[None], n, axis=0)
    grid = np.arange(size, dtype=np.float32) + 0.5
    # Offsets from the centre on a torus: wrapped actors reappear at the opposite edge.
    dx = np.mod(grid[None, None, :] - xs[:, None, None] + size / 2, size) - size / 2
    dy = np.mod(grid[None, :, None] - ys[:, None, None] + size / 2, size) - size / 2
    dx, dy = dx.astype(np.float32), dy.astype(np.float32)
    body_cov = np.clip((1 - np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)) * rx + 0.5, 0, 1)
    body_col = np.broadcast_to(body, image.shape)
    if attrs["dotted"]:  # dots fixed to the body: they move with it
        near = np.hypot(np.mod(dx, dot_cell) - dot_cell / 2, np.mod(dy, dot_cell) - dot_cell / 2)
        dot = np.clip(0.3 * dot_cell - near + 0.5, 0, 1)[..., None]
        body_col = body_col * (1 - dot) + dot_rgb * dot
    image += body_cov[..., None] * (body_col - image)
    head_dy = dy + ry + 0.8 * head_r
    head_cov = np.clip(head_r - np.hypot(dx, head_dy) + 0.5, 0, 1)
    image += head_cov[..., None] * (head_rgb - image)
    if attrs["hat"]:  # a brim and a crown above the head
        def box(half_w: float, half_h: float, up: float) -> np.ndarray:
            inside = np.minimum(half_w * head_r - np.abs(dx), half_h * head_r - np.abs(head_dy + up * head_r))
            return np.clip(inside + 0.5, 0, 1)

        hat = np.maximum(box(1.4, 0.18, 0.9), box(0.8, 0.5, 1.5))  # brim, crown
        image += hat[..., None] * (hat_rgb - image)
    image *= np.float32(rng.uniform(0.75, 1.25))
    noise = np.random.default_rng(int(rng.integers(0, 2**31 - 1))).standard_normal(image.shape, dtype=np.float32)
    image += noise * np.float32(rng.uniform(3.0, 8.0)) + np.float32(0.5)
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    return pixels if row.kind == "video" else pixels[0]


def synthesize_alt(out_dir: Path, videos: int = 240, *, seed: int = 0, images: int = 0, frames: int = 48,
                   size: int = 64, fps: int = 16, split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
                   progress: Callable[[int, int], None] | None = None) -> AltReport:
    """Render and encode the second synthetic dataset into `out_dir`; deterministic for a seed.

    Writes `videos/NNNNNN.mp4`, `images/NNNNNN.png`, `manifest.csv` and `synth.json`.
    """
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16 (yuv420p), got {size}")
    if frames < 1 or fps < 1:
        raise ValueError("frames and fps must be positive")
    out_dir = Path(out_dir)
    rows = alt_labels(videos, images, seed=seed, split_fractions=split_fractions)
    for kind, count in (("videos", videos), ("images", images)):
        if count:
            (out_dir / kind).mkdir(parents=True, exist_ok=True)

    write_samples(out_dir, rows, lambda row: render_alt(row, seed=seed, frames=frames, size=size), fps, progress)
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ALT_COLUMNS)
        for row in rows:
            writer.writerow([row.path, row.split, row.action or "", *(row.attrs[a] for a in ALT_ATTRS),
                             row.direction or ""])
    test_rows = [r for r in rows if r.split == "test"] or rows
    report = AltReport(
        manifest=manifest,
        videos_per_split={s: sum(r.kind == "video" and r.split == s for r in rows) for s in SPLITS},
        images_per_split={s: sum(r.kind == "image" and r.split == s for r in rows) for s in SPLITS},
        action_classes=list(ALT_ACTIONS), attr_names=list(ALT_ATTRS),
        attr_chance={a: float(np.mean([r.attrs[a] for r in test_rows])) for a in ALT_ATTRS},
        action_chance=1.0 / len(ALT_ACTIONS))
    params = {"generator": "alt", "videos": videos, "images": images, "seed": seed, "frames": frames,
              "size": size, "fps": fps, "split_fractions": list(split_fractions)}
    summary = {**asdict(report), "manifest": manifest.name, "parameters": params,
               "unseen_tasks": list(ALT_UNSEEN_TASKS)}
    (out_dir / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    return report
