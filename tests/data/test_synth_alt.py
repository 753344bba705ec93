"""The second synthetic generator: a manifest the project reads, videos the project's decoder
decodes, attributes that are balanced and independent of the action, appearance-only
attributes and motion-only actions."""

from __future__ import annotations

from pathlib import Path

import torch  # noqa: F401  (decord must be imported after torch)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from aam_search.cli import main  # noqa: E402
from aam_search.data.clips import ClipSettings  # noqa: E402
from aam_search.data.manifest import read_manifest  # noqa: E402
from aam_search.data.synth_alt import (  # noqa: E402
    ALT_ACTIONS, ALT_ATTRS, ALT_UNSEEN_TASKS, alt_labels, render_alt, synthesize_alt)
from aam_search.data.video import decode_video  # noqa: E402


@pytest.fixture(scope="module")
def alt_set(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("alt")
    return out, synthesize_alt(out, 16, images=4, frames=24, size=32, seed=3)


def test_manifest_is_valid_for_the_project_reader(alt_set) -> None:
    out, report = alt_set
    manifest = read_manifest(report.manifest)
    rows = manifest.rows
    assert len(rows) == 20
    assert {r.split for r in rows} == {"train", "val", "test"}
    videos = [r for r in rows if not r.is_image]
    images = [r for r in rows if r.is_image]
    assert len(videos) == 16 and len(images) == 4
    assert all(r.action in ALT_ACTIONS for r in videos) and all(r.action is None for r in images)
    assert all(set(r.attrs) == set(ALT_ATTRS) and None not in r.attrs.values() for r in rows)
    assert {t.removeprefix("task:") for t in ALT_UNSEEN_TASKS} <= set(rows[0].tasks)
    directed = [r.tasks["direction"] for r in videos if r.action != "shake"]
    assert directed and all(d in ("forward", "reverse") for d in directed)
    assert all(r.tasks["direction"] is None for r in images)


def test_videos_and_images_decode_through_the_project_decoder(alt_set) -> None:
    out, report = alt_set
    settings = ClipSettings(num_frames=8, stride=2, size=32)
    rows = read_manifest(report.manifest).rows
    for row in rows[:3] + rows[-2:]:
        decoded = decode_video(row.path, row.split, settings)
        assert decoded.num_frames == (1 if row.is_image else 24)


def test_attributes_are_balanced_and_independent_of_the_action() -> None:
    rows = alt_labels(2000, seed=0)
    bits = np.array([[r.attrs[a] for a in ALT_ATTRS] for r in rows])
    assert np.all(np.abs(bits.mean(0) - 0.5) < 0.05)
    for action in ALT_ACTIONS:
        of_action = bits[[r.action == action for r in rows]]
        assert np.all(np.abs(of_action.mean(0) - bits.mean(0)) < 0.06), action
    corr = np.corrcoef(bits.T) - np.eye(len(ALT_ATTRS))
    assert np.abs(corr).max() < 0.08


def test_attributes_are_appearance_and_actions_are_motion() -> None:
    """Flipping an attribute changes the first frame; the action alone leaves a frozen image
    unchanged while the video moves."""
    row = alt_labels(1, seed=0)[0]
    base = render_alt(row, seed=0, frames=8, size=32).astype(int)
    for name in ALT_ATTRS:
        flipped = type(row)(row.kind, row.index, row.split, row.action,
                            {**row.attrs, name: 1 - row.attrs[name]}, row.direction)
        assert np.abs(render_alt(flipped, seed=0, frames=8, size=32).astype(int)[0] - base[0]).mean() > 0.2, name
    assert np.abs(base[1:] - base[:-1]).mean() > 1  # the actor moves between frames


def test_deterministic_for_a_seed(tmp_path: Path, alt_set) -> None:
    _, report = alt_set
    again = synthesize_alt(tmp_path, 16, images=4, frames=24, size=32, seed=3)
    assert again.manifest.read_text() == report.manifest.read_text()
    assert (tmp_path / "videos/000001.mp4").read_bytes() == (report.manifest.parent / "videos/000001.mp4").read_bytes()


def test_cli_writes_the_alt_generator_and_refuses_a_bias(tmp_path: Path) -> None:
    main(["data", "synth", "--out", str(tmp_path / "d"), "--videos", "4", "--frames", "8", "--size", "32",
          "--generator", "alt"])
    assert "attr:hat" in (tmp_path / "d" / "manifest.csv").read_text().splitlines()[0]
    main(["data", "synth", "--out", str(tmp_path / "f"), "--videos", "4", "--frames", "8", "--size", "32",
          "--bias", "0.9"])  # the default generator still takes its bias
    assert "attr:skin_dark" in (tmp_path / "f" / "manifest.csv").read_text().splitlines()[0]
    with pytest.raises(SystemExit, match="--bias"):
        main(["data", "synth", "--out", str(tmp_path / "e"), "--videos", "4", "--generator", "alt", "--bias", "0.9"])
