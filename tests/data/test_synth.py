"""The synthetic dataset: real H.264 files, a valid manifest, determinism, and the premise
that attributes are static appearance while actions are motion only (not in one frame)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch  # noqa: F401  (decord must be imported after torch)
import decord  # noqa: E402
import av  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from aam_search.data.manifest import read_manifest  # noqa: E402
from aam_search.data.synth import (  # noqa: E402
    ACTION_CLASSES, ATTR_NAMES, MANIFEST_COLUMNS, SPEED_CLASSES, UNSEEN_TASKS, SampleLabels, biased_half,
    encode_mp4, render_row, sample_labels, scene_for, synthesize, trajectory)
from aam_search.data.synth_render import render_frames  # noqa: E402

SMALL = dict(videos=24, images=4, frames=24, size=32, seed=5)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[tuple[int, int]]]:
    out = tmp_path_factory.mktemp("synth")
    calls: list[tuple[int, int]] = []
    report = synthesize(out, progress=lambda done, total: calls.append((done, total)), **SMALL)
    return out, report, calls


def _read_rows(manifest: Path) -> tuple[list[str], list[dict[str, str]]]:
    with manifest.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _decode(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_writes_real_h264_videos_and_png_images(small_set) -> None:
    out, report, calls = small_set
    _, rows = _read_rows(report.manifest)
    videos = [r for r in rows if r["path"].startswith("videos/")]
    images = [r for r in rows if r["path"].startswith("images/")]
    assert len(videos) == 24 and len(images) == 4
    for row in videos[:6]:
        path = out / row["path"]
        assert path.suffix == ".mp4"
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
        frames = _decode(path)
        assert frames.shape == (24, 32, 32, 3)
        assert frames.std() > 5  # real content, not a blank frame
    for row in images:
        with Image.open(out / row["path"]) as image:
            assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
    assert calls[-1] == (28, 28) and [done for done, _ in calls] == list(range(1, 29))


def test_manifest_columns_labels_and_summary(small_set) -> None:
    out, report, _ = small_set
    columns, rows = _read_rows(report.manifest)
    assert report.manifest == out / "manifest.csv"
    assert tuple(columns) == MANIFEST_COLUMNS == (
        "path", "split", "action", "attr:skin_dark", "attr:female", "attr:striped", "attr:outdoor",
        "task:speed", "group:gender")
    for row in rows:
        assert (out / row["path"]).is_file()
        assert row["split"] in ("train", "val", "test")
        assert all(row[f"attr:{name}"] in ("0", "1") for name in ATTR_NAMES)
        assert row["group:gender"] == ("female" if row["attr:female"] == "1" else "male")
        if row["path"].startswith("videos/"):
            assert row["action"] in ACTION_CLASSES
            assert row["task:speed"] in (("",) if row["action"] == "still" else SPEED_CLASSES)
        else:
            assert row["action"] == "" and row["task:speed"] == ""  # privacy images carry no action
    video_splits = [r["split"] for r in rows if r["path"].startswith("videos/")]
    assert report.videos_per_split == {s: video_splits.count(s) for s in ("train", "val", "test")}
    assert report.videos_per_split == {"train": 14, "val": 5, "test": 5}
    assert sum(report.images_per_split.values()) == 4 and report.images_per_split["train"] >= 1
    assert report.action_classes == list(ACTION_CLASSES) and len(set(ACTION_CLASSES)) == 6
    assert report.attr_names == list(ATTR_NAMES)
    assert all(0.0 <= report.attr_chance[name] <= 1.0 for name in ATTR_NAMES)

    summary = json.loads((out / "synth.json").read_text())
    assert summary["parameters"]["seed"] == 5 and summary["parameters"]["size"] == 32
    assert summary["action_classes"] == list(ACTION_CLASSES)
    # The project's own manifest reader accepts the file.
    manifest = read_manifest(report.manifest)
    assert set(manifest.action_classes) <= set(ACTION_CLASSES)
    assert manifest.attr_names == ATTR_NAMES and manifest.group_names == ("gender",)
    assert manifest.task_names == ("speed",) and set(manifest.task_classes("speed")) <= set(SPEED_CLASSES)
    assert summary["unseen_tasks"] == list(UNSEEN_TASKS) == ["task:speed"]
    assert sum(row.is_image for row in manifest.rows) == 4


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    params = dict(videos=4, images=1, frames=12, size=32)
    a = synthesize(tmp_path / "a", seed=1, **params)
    b = synthesize(tmp_path / "b", seed=1, **params)
    c = synthesize(tmp_path / "c", seed=2, **params)
    assert a.manifest.read_bytes() == b.manifest.read_bytes()
    for name in ("videos/000000.mp4", "videos/000003.mp4", "images/000000.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_splits_follow_fractions_and_keep_a_train_row() -> None:
    rows = sample_labels(100, 10, seed=0, split_fractions=(0.5, 0.3, 0.2))
    videos = [r.split for r in rows if r.kind == "video"]
    assert (videos.count("train"), videos.count("val"), videos.count("test")) == (50, 30, 20)
    assert videos[:50] != ["train"] * 50  # shuffled, not in blocks
    assert [r.split for r in sample_labels(1, seed=0, split_fractions=(0.1, 0.45, 0.45))] == ["train"]
    with pytest.raises(ValueError):
        sample_labels(10, split_fractions=(0.5, -0.1, 0.6))


def test_appearance_independent_of_action_without_bias() -> None:
    rows = sample_labels(3000, seed=3)
    for name in ATTR_NAMES:
        values = np.array([r.attrs[name] for r in rows])
        assert abs(values.mean() - 0.5) < 0.04
        for action in ACTION_CLASSES:
            in_class = values[[r.action == action for r in rows]]
            assert abs(in_class.mean() - 0.5) < 0.08, (name, action)


def _co_occurrence(rows: list[SampleLabels], split: str) -> float:
    chosen = [r for r in rows if r.split == split and r.kind == "video"]
    return float(np.mean([r.action in biased_half(r.group) for r in chosen]))


def test_bias_couples_group_and_action_in_train_only() -> None:
    biased = sample_labels(4000, seed=2, bias=0.9)
    assert abs(_co_occurrence(biased, "train") - 0.9) < 0.03
    assert abs(_co_occurrence(biased, "test") - 0.5) < 0.06
    assert abs(_co_occurrence(biased, "val") - 0.5) < 0.06
    unbiased = sample_labels(4000, seed=2)
    assert abs(_co_occurrence(unbiased, "train") - 0.5) < 0.04
    # Every class still occurs for both groups in the biased train split.
    train = [r for r in biased if r.split == "train"]
    assert {(r.group, r.action) for r in train} == {(g, a) for g in ("female", "male") for a in ACTION_CLASSES}


def test_position_in_one_frame_does_not_reveal_the_action() -> None:
    size, frames = 64, 30
    rows = sample_labels(900, seed=11)
    starts: dict[str, list[tuple[float, float]]] = {a: [] for a in ACTION_CLASSES}
    for row in rows:
        x, y = trajectory(scene_for(row, seed=11, size=size), frames)
        starts[row.action].append((x[0], y[0]))
        starts[row.action].append((x[frames - 1], y[frames - 1]))
    for action, points in starts.items():
        xy = np.array(points)
        # Uniform x over the (wrapping) frame: mean S/2, std S/sqrt(12) ~ 18.5 px, for every class.
        assert abs(xy[:, 0].mean() - size / 2) < 4.0, action
        assert abs(xy[:, 0].std() - size / np.sqrt(12)) < 2.0, action
    y_means = [np.array(points)[:, 1].mean() for points in starts.values()]
    assert max(y_means) - min(y_means) < 1.2  # jumpers are not higher on average in one frame


def _decoded_scene(tmp_path: Path, action: str, index: int, attrs: dict[str, int],
                   size: int = 64, frames: int = 32) -> tuple[np.ndarray, object]:
    row = SampleLabels("video", index, "train", action, attrs)
    scene = scene_for(row, seed=7, size=size)
    path = tmp_path / f"{action}_{index}.mp4"
    encode_mp4(path, render_row(row, seed=7, frames=frames, size=size), fps=16)
    return _decode(path).astype(np.float32), scene


def _actor_mask(decoded: np.ndarray, scene) -> np.ndarray:
    """Pixels that differ clearly from the lit, noise-free background (works after H.264)."""
    background = np.clip(scene.background * scene.light, 0, 255)
    return np.abs(decoded - background).sum(-1) > 60


def _track(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Circular-mean horizontal centroid (unwrapped, px) and vertical centroid per frame."""
    size = mask.shape[-1]
    angle = np.exp(2j * np.pi * (np.arange(size) + 0.5) / size)
    x = np.unwrap(np.angle((mask * angle).sum((1, 2)))) * size / (2 * np.pi)
    rows = np.arange(mask.shape[1])[None, :, None]
    y = (mask * rows).sum((1, 2)) / np.maximum(mask.sum((1, 2)), 1)
    return x, y


def test_actions_are_motion_visible_after_h264(tmp_path: Path) -> None:
    velocity: dict[str, list[float]] = {a: [] for a in ACTION_CLASSES}
    x_spread: dict[str, list[float]] = {a: [] for a in ACTION_CLASSES}
    y_spread: dict[str, list[float]] = {a: [] for a in ACTION_CLASSES}
    for action in ACTION_CLASSES:
        for index in range(3):
            attrs = {name: (index + k) % 2 for k, name in enumerate(ATTR_NAMES)}
            decoded, scene = _decoded_scene(tmp_path, action, index, attrs)
            x, y = _track(_actor_mask(decoded, scene))
            true_x, true_y = trajectory(scene, len(decoded))
            # The decoded actor follows the rendered trajectory (up to the shape's own offset).
            assert np.abs(np.diff(x) - np.diff(np.unwrap(true_x, period=scene.size))).mean() < 0.5
            velocity[action].append(np.polyfit(np.arange(len(x)), x, 1)[0])
            x_spread[action].append(np.std(x - np.polyval(np.polyfit(np.arange(len(x)), x, 1), np.arange(len(x)))))
            y_spread[action].append(np.std(y))
    v = {a: np.mean(vs) for a, vs in velocity.items()}
    assert v["walk_left"] < -0.6 and v["walk_right"] > 0.6
    assert v["run_right"] > 2.0 * v["walk_right"]
    for still_in_place in ("jump", "sway", "still"):
        assert abs(v[still_in_place]) < 0.3, still_in_place
    assert min(x_spread["sway"]) > 1.5 and max(x_spread["still"]) < 0.5 and max(x_spread["jump"]) < 0.5
    assert min(y_spread["jump"]) > 0.8 and max(y_spread["sway"]) < 0.4 and max(y_spread["walk_right"]) < 0.4


def test_attributes_are_visible_in_decoded_frames(tmp_path: Path) -> None:
    skin = {0: [], 1: []}
    sky_blue = {0: [], 1: []}
    shape = {0: [], 1: []}
    exact_shape = {0: [], 1: []}
    stripe = {0: [], 1: []}
    for index in range(16):
        attrs = {name: (index >> k) & 1 for k, name in enumerate(ATTR_NAMES)}
        decoded, scene = _decoded_scene(tmp_path, "still", index, attrs, frames=4)
        frame, h = decoded[0], scene.height
        x, feet = trajectory(scene, 1)
        top, cols = feet[0] - h, np.round(x[0] + np.arange(-1, 2)).astype(int) % scene.size
        head_rows = np.round(top + 0.13 * h + np.arange(-1, 2)).astype(int)
        skin[attrs["skin_dark"]].append(frame[np.ix_(head_rows, cols)].mean() / scene.light)
        band = frame[: scene.size // 6]
        sky_blue[attrs["outdoor"]].append(np.median(band[..., 2] - band[..., 0]))
        # Body width near the hem minus near the shoulders, on the decoded frame and exactly.
        mask = _actor_mask(decoded[:1], scene)[0]
        exact = render_frames(scene, 1, with_mask=True)[1][0] > 0.5
        row_at = lambda v: int(top + v * h)  # noqa: E731
        shape[attrs["female"]].append(mask[row_at(0.72)].sum() - mask[row_at(0.32)].sum())
        exact_shape[attrs["female"]].append(exact[row_at(0.72)].sum() - exact[row_at(0.32)].sum())
        torso_rows = np.arange(int(top + 0.3 * h), int(top + 0.55 * h))
        column = frame[np.ix_(torso_rows, cols)].mean((1, 2))
        stripe[attrs["striped"]].append(np.abs(np.diff(column)).mean())
    assert np.mean(skin[0]) - np.mean(skin[1]) > 60  # light skin is much brighter
    assert min(sky_blue[1]) > max(sky_blue[0])  # the outdoor sky is bluer than any indoor wall
    # A dress widens downwards, a male torso narrows; low-contrast clothes blur it after H.264.
    assert min(exact_shape[1]) > 0 > max(exact_shape[0])
    assert np.mean(shape[1]) > np.mean(shape[0]) + 6
    assert np.mean(stripe[1]) > 3 * np.mean(stripe[0]) and min(stripe[1]) > np.median(stripe[0])


def test_renderer_mask_and_image_rows() -> None:
    row = SampleLabels("image", 3, "test", None, {name: 1 for name in ATTR_NAMES})
    image = render_row(row, seed=0, frames=99, size=40)
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    pixels, mask = render_frames(scene_for(row, seed=0, size=40), 2, with_mask=True)
    assert pixels.shape == (2, 40, 40, 3) and mask.shape == (2, 40, 40)
    assert 0.05 < (mask > 0.5).mean() < 0.4  # an actor, not the whole frame
    with pytest.raises(ValueError):
        synthesize(Path("unused"), 1, size=33)


def test_speed_is_motion_only_and_independent_of_action_and_appearance() -> None:
    rows = sample_labels(3000, 30, seed=4)
    videos = [r for r in rows if r.kind == "video"]
    assert all((r.speed is None) == (r.action == "still") for r in videos)
    assert all(r.speed is None for r in rows if r.kind == "image")
    moving = [r for r in videos if r.speed is not None]
    fast = np.array([r.speed == "fast" for r in moving])
    assert abs(fast.mean() - 0.5) < 0.04
    for name in ATTR_NAMES:  # not readable from appearance
        bits = np.array([r.attrs[name] for r in moving])
        assert abs(bits[fast].mean() - bits[~fast].mean()) < 0.06, name
    for action in ACTION_CLASSES[:-1]:  # nor from the action
        in_class = fast[[r.action == action for r in moving]]
        assert abs(in_class.mean() - 0.5) < 0.08, action
    # The other labels are drawn as before the speed task existed.
    assert [(r.split, r.action, r.attrs) for r in rows] == [
        (r.split, r.action, r.attrs) for r in sample_labels(3000, 30, seed=4)]
    # Motion: fast walkers move faster, fast swayers/jumpers oscillate quicker, in every case;
    # a slow run stays faster than a fast walk, so speed does not blur the actions.
    scenes = {(r.action, r.speed): [] for r in moving}
    for row in moving[:600]:
        scenes[(row.action, row.speed)].append(scene_for(row, seed=4, size=64))
    walk = {s: [abs(c.velocity) for a in ("walk_left", "walk_right") for c in scenes[(a, s)]] for s in SPEED_CLASSES}
    assert max(walk["slow"]) < min(walk["fast"])
    run_slow = [c.velocity for c in scenes[("run_right", "slow")]]
    assert min(run_slow) > max(walk["fast"])
    for action, period in (("sway", "sway_period"), ("jump", "jump_period")):
        slow = [getattr(c, period) for c in scenes[(action, "slow")]]
        quick = [getattr(c, period) for c in scenes[(action, "fast")]]
        assert min(slow) > max(quick), action
    # One frame does not tell the speed: appearance draws do not depend on it.
    row = moving[0]
    other = SampleLabels(row.kind, row.index, row.split, row.action, row.attrs,
                         "slow" if row.speed == "fast" else "fast")
    a, b = scene_for(row, seed=4, size=64), scene_for(other, seed=4, size=64)
    assert np.array_equal(a.background, b.background) and np.array_equal(a.cloth_rgb, b.cloth_rgb)
    assert a.start_x == b.start_x and a.light == b.light
