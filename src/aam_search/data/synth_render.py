"""Pixel rendering for the synthetic dataset: scenes, actors and their motion (numpy only).

Appearance (skin tone, body shape, clothing, background) is fixed for a whole video and
carries the private attributes; the action is only the actor's trajectory, and so is the
speed (``slow``/``fast``: how fast walkers move and how quickly swayers and jumpers
oscillate), a second motion-only task drawn independently of the action and the appearance. Every class
shares the same per-frame position distribution, so one frame says nothing about the action:
walkers wrap around horizontally from a uniform start, and the sway/jump offsets that only
sway/jump actors animate are frozen at a random phase for everybody else.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Mapping

import numpy as np

ACTION_CLASSES: tuple[str, ...] = ("walk_left", "walk_right", "run_right", "jump", "sway", "still")
ATTR_NAMES: tuple[str, ...] = ("skin_dark", "female", "striped", "outdoor")
SPEED_CLASSES: tuple[str, ...] = ("slow", "fast")
# Every action but "still" moves, so only those carry a speed label.
MOVING_ACTIONS: tuple[str, ...] = tuple(a for a in ACTION_CLASSES if a != "still")

# Motion in pixels per frame at size 64 (scaled with the frame size): 1.2-1.8 px/frame walks
# stay visible after H.264 and over a 16x2 clip; running is 2.5x the walk so speed matters.
_WALK_SPEED_64 = (1.2, 1.8)
_RUN_FACTOR = 2.5
_PERIOD_FRAMES = (10.0, 14.0)  # sway period / time between jump bounces
# Disjoint sub-ranges per speed class (a slow run, 2.5x a slow walk, stays faster than a
# fast walk); no speed label: the whole range above, as before the speed task existed.
_SPEED_WALK_64 = {"slow": (1.0, 1.3), "fast": (1.7, 2.0)}
_SPEED_PERIOD = {"slow": (13.0, 16.0), "fast": (8.0, 10.0)}
_OFFSET_AMPLITUDE = (0.08, 0.14)  # sway and jump amplitudes, fraction of the frame size


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one video (or image) deterministically."""

    size: int
    action: str | None  # None: a still image, all motion frozen
    female: bool
    striped: bool
    skin_rgb: np.ndarray  # float [3] in 0..255
    cloth_rgb: np.ndarray
    stripe_rgb: np.ndarray
    legs_rgb: np.ndarray
    hair_rgb: np.ndarray
    background: np.ndarray  # float32 [S, S, 3] in 0..255
    height: float  # actor height in pixels
    feet_y: float  # feet baseline before the jump offset
    start_x: float  # actor centre at frame 0 before the sway offset, in [0, S)
    velocity: float  # pixels per frame (walkers only)
    sway_amplitude: float
    sway_period: float
    sway_phase: float
    jump_amplitude: float
    jump_period: float
    jump_phase: float
    light: float  # global lighting multiplier
    noise_sigma: float  # Gaussian pixel noise, 0..255 scale
    stripe_period: float
    noise_seed: int


def _hsv(rng: np.random.Generator, hue_deg: tuple[float, float], sat: tuple[float, float],
         val: tuple[float, float]) -> np.ndarray:
    hue = (rng.uniform(*hue_deg) % 360.0) / 360.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(*sat), rng.uniform(*val))
    return np.array(rgb, dtype=np.float32) * 255.0


def _smooth_texture(rng: np.random.Generator, size: int, sigma: float, cell: int) -> np.ndarray:
    """Blocky-then-blurred random texture [S, S] with std about `sigma` (static per video)."""
    coarse = rng.normal(0.0, sigma, (size // cell + 2, size // cell + 2)).astype(np.float32)
    tex = np.kron(coarse, np.ones((cell, cell), np.float32))[:size, :size]
    # A 3x3 box blur softens the block edges so the texture does not look like the stripes.
    padded = np.pad(tex, 1, mode="edge")
    return sum(padded[i:i + size, j:j + size] for i in range(3) for j in range(3)) / 9.0


def _background(rng: np.random.Generator, size: int, outdoor: bool) -> np.ndarray:
    rows = np.arange(size, dtype=np.float32)[:, None, None]
    bg = np.empty((size, size, 3), np.float32)
    if outdoor:
        # Sky above a textured grass field, random colours within those families.
        horizon = int(rng.uniform(0.40, 0.60) * size)
        sky = _hsv(rng, (190, 230), (0.25, 0.7), (0.7, 1.0))
        grass = _hsv(rng, (75, 140), (0.4, 0.85), (0.3, 0.7))
        gradient = 1.0 + 0.25 * (rows[:horizon] / max(horizon, 1))  # lighter towards the horizon
        bg[:horizon] = np.clip(sky * gradient, 0, 255)
        bg[horizon:] = grass
        bg[horizon:] += _smooth_texture(rng, size, 18.0, 2)[horizon:, :, None]
        bg[:horizon] += 0.4 * np.abs(_smooth_texture(rng, size, 25.0, 4))[:horizon, :, None]
    else:
        # Indoor: a plain wall, a floor line and a darker floor; a picture frame on the wall.
        floor = int(rng.uniform(0.60, 0.78) * size)
        wall = _hsv(rng, (0, 60), (0.03, 0.35), (0.55, 0.92))
        floor_rgb = _hsv(rng, (10, 45), (0.25, 0.65), (0.2, 0.5))
        bg[:floor] = wall
        bg[floor:] = floor_rgb
        bg[max(floor - 1, 0):floor + 1] = floor_rgb * 0.4
        pw, ph = int(rng.uniform(0.12, 0.25) * size), int(rng.uniform(0.1, 0.2) * size)
        px, py = int(rng.uniform(0, size - pw)), int(rng.uniform(0.05, 0.3) * size)
        bg[py:py + ph, px:px + pw] = _hsv(rng, (0, 360), (0.2, 0.8), (0.2, 0.8))
        bg += _smooth_texture(rng, size, 5.0, 4)[:, :, None]
    return np.clip(bg, 0, 255)


def sample_scene(rng: np.random.Generator, attrs: Mapping[str, int], action: str | None,
                 size: int, speed: str | None = None) -> Scene:
    """Draw appearance from the attribute labels and nuisance/motion parameters from `rng`.

    `speed` ("slow"/"fast") picks the walk speed and the sway/jump period from disjoint
    sub-ranges; it draws the same random numbers either way, so appearance does not depend on it.
    """
    if action is not None and action not in ACTION_CLASSES:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTION_CLASSES}")
    if speed is not None and speed not in SPEED_CLASSES:
        raise ValueError(f"unknown speed {speed!r}; expected one of {SPEED_CLASSES}")
    walk_range = _WALK_SPEED_64 if speed is None else _SPEED_WALK_64[speed]
    period_range = _PERIOD_FRAMES if speed is None else _SPEED_PERIOD[speed]
    if attrs["skin_dark"]:
        skin = _hsv(rng, (12, 30), (0.4, 0.65), (0.28, 0.5))
    else:
        skin = _hsv(rng, (15, 35), (0.15, 0.38), (0.78, 0.96))
    cloth_hsv_val = rng.uniform(0.3, 0.9)
    cloth = _hsv(rng, (0, 360), (0.3, 0.9), (cloth_hsv_val, cloth_hsv_val))
    # Stripes contrast in brightness with the shirt so they survive chroma subsampling.
    stripe = (_hsv(rng, (0, 360), (0.0, 0.15), (0.9, 1.0)) if cloth_hsv_val < 0.6
              else _hsv(rng, (0, 360), (0.0, 0.3), (0.05, 0.2)))
    legs = _hsv(rng, (0, 360), (0.1, 0.5), (0.12, 0.4))
    hair = _hsv(rng, (15, 40), (0.3, 0.8), (0.08, 0.45))
    background = _background(rng, size, bool(attrs["outdoor"]))

    height = 0.6 * size * rng.uniform(0.8, 1.2)
    walk = rng.uniform(*walk_range) * size / 64.0
    velocity = {"walk_left": -walk, "walk_right": walk, "run_right": _RUN_FACTOR * walk}.get(
        action or "", 0.0)
    return Scene(
        size=size, action=action, female=bool(attrs["female"]), striped=bool(attrs["striped"]),
        skin_rgb=skin, cloth_rgb=cloth, stripe_rgb=stripe, legs_rgb=legs, hair_rgb=hair,
        background=background,
        height=height,
        feet_y=size * rng.uniform(0.88, 0.95),
        start_x=rng.uniform(0.0, size),
        velocity=velocity,
        sway_amplitude=size * rng.uniform(*_OFFSET_AMPLITUDE),
        sway_period=rng.uniform(*period_range),
        sway_phase=rng.uniform(0.0, 2 * np.pi),
        jump_amplitude=size * rng.uniform(*_OFFSET_AMPLITUDE),
        jump_period=rng.uniform(*period_range),
        jump_phase=rng.uniform(0.0, np.pi),
        light=rng.uniform(0.7, 1.3),
        noise_sigma=rng.uniform(4.0, 10.0),
        stripe_period=max(3.0, 0.12 * height),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def trajectory(scene: Scene, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Actor centre x (wrapped into [0, S)) and feet y for each frame, float64 [T] each."""
    t = np.arange(frames, dtype=np.float64)
    sway_t = t if scene.action == "sway" else 0.0 * t  # frozen phase for the other classes
    jump_t = t if scene.action == "jump" else 0.0 * t
    x = (scene.start_x + scene.velocity * t
         + scene.sway_amplitude * np.sin(scene.sway_phase + 2 * np.pi * sway_t / scene.sway_period))
    bounce = scene.jump_amplitude * np.abs(np.sin(scene.jump_phase + np.pi * jump_t / scene.jump_period))
    return np.mod(x, scene.size), scene.feet_y - bounce


def _trapezoid(dx: np.ndarray, y: np.ndarray, top: np.ndarray, bottom: np.ndarray,
               half_top: float, half_bottom: float, centre_top: float = 0.0,
               centre_bottom: float = 0.0) -> np.ndarray:
    """Soft (about 1 px) coverage of a trapezoid whose centre may slant from top to bottom."""
    frac = np.clip((y - top) / np.maximum(bottom - top, 1e-6), 0.0, 1.0)
    half_width = half_top + (half_bottom - half_top) * frac
    centre = centre_top + (centre_bottom - centre_top) * frac
    inside = np.minimum(np.minimum(half_width - np.abs(dx - centre), y - top), bottom - y)
    return np.clip(inside + 0.5, 0.0, 1.0)


def _pair(dx: np.ndarray, y: np.ndarray, top: np.ndarray, bottom: np.ndarray, half: float,
          centre_top: float, centre_bottom: float) -> np.ndarray:
    """Two mirrored limbs (arms or legs)."""
    return np.maximum(_trapezoid(dx, y, top, bottom, half, half, centre_top, centre_bottom),
                      _trapezoid(dx, y, top, bottom, half, half, -centre_top, -centre_bottom))


def _body_parts(scene: Scene, dx: np.ndarray, y: np.ndarray, top: np.ndarray,
                feet: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(coverage [T, S, S], colour) of each body part, back to front; sizes in actor heights."""
    h = scene.height
    if scene.striped:
        # Stripes are attached to the body (measured from the head top) so they move with it.
        phase = np.sin(2 * np.pi * (y - top) / scene.stripe_period)
        stripe_w = np.clip(0.5 + 1.5 * phase, 0.0, 1.0)[..., None]
        cloth = scene.cloth_rgb * (1 - stripe_w) + scene.stripe_rgb * stripe_w
    else:
        cloth = scene.cloth_rgb
    head_dist = np.sqrt(dx**2 + (y - (top + 0.13 * h)) ** 2)
    head = np.clip(0.12 * h - head_dist + 0.5, 0.0, 1.0)
    if scene.female:
        # Long hair, narrow shoulders, a dress widening to the hem, arms and bare legs.
        hair = _trapezoid(dx, y, top + 0.02 * h, top + 0.40 * h, 0.14 * h, 0.16 * h)
        arms = _pair(dx, y, top + 0.28 * h, top + 0.60 * h, 0.035 * h, 0.13 * h, 0.26 * h)
        legs = _pair(dx, y, top + 0.80 * h, feet, 0.035 * h, 0.065 * h, 0.065 * h)
        torso = _trapezoid(dx, y, top + 0.26 * h, top + 0.80 * h, 0.11 * h, 0.27 * h)
        return [(hair, scene.hair_rgb), (arms, scene.skin_rgb), (legs, scene.skin_rgb),
                (torso, cloth), (head, scene.skin_rgb)]
    # Short hair, broad shoulders narrowing to the waist, arms and trousers.
    cap = np.minimum(np.clip(0.125 * h - head_dist + 0.5, 0.0, 1.0),
                     np.clip(top + 0.09 * h - y + 0.5, 0.0, 1.0))
    arms = _pair(dx, y, top + 0.27 * h, top + 0.60 * h, 0.045 * h, 0.27 * h, 0.24 * h)
    legs = _pair(dx, y, top + 0.62 * h, feet, 0.07 * h, 0.09 * h, 0.09 * h)
    torso = _trapezoid(dx, y, top + 0.26 * h, top + 0.62 * h, 0.23 * h, 0.16 * h)
    return [(arms, scene.skin_rgb), (legs, scene.legs_rgb), (torso, cloth),
            (head, scene.skin_rgb), (cap, scene.hair_rgb)]


def render_frames(scene: Scene, frames: int, *, with_mask: bool = False
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Render uint8 RGB frames [T, S, S, 3]; with_mask also returns actor coverage [T, S, S]."""
    size = scene.size
    cx, feet = trajectory(scene, frames)
    # Horizontal distance to the actor centre on a circle: the actor wraps around the edges.
    cols = np.arange(size, dtype=np.float32)[None, None, :] + 0.5
    dx = np.mod(cols - cx[:, None, None].astype(np.float32) + size / 2, size) - size / 2
    y = np.arange(size, dtype=np.float32)[None, :, None] + 0.5
    feet3 = feet[:, None, None].astype(np.float32)
    parts = _body_parts(scene, dx, y, feet3 - np.float32(scene.height), feet3)

    image = np.repeat(scene.background[None], frames, axis=0)
    for coverage, colour in parts:
        # Alpha blend in place, only over the rows the part touches in some frame (speed).
        touched = np.flatnonzero(coverage.any(axis=(0, 2)))
        if touched.size == 0:
            continue
        rows = slice(touched[0], touched[-1] + 1)
        colour = colour[:, rows] if colour.ndim == 4 else colour
        image[:, rows] += coverage[:, rows, :, None] * (colour - image[:, rows])

    noise = np.random.default_rng(scene.noise_seed).standard_normal(image.shape, dtype=np.float32)
    image *= scene.light
    image += noise * np.float32(scene.noise_sigma) + np.float32(0.5)
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    if with_mask:
        return pixels, np.max(np.stack([coverage for coverage, _ in parts]), axis=0)
    return pixels
