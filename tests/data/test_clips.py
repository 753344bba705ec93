from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from aam_search.data.clips import (
    ClipSettings,
    clip_frame_indices,
    clip_span,
    clip_starts,
    static_frame_indices,
    tile_static,
    to_model_input,
)


def test_settings_validation_names_the_field_and_forbids_extras() -> None:
    with pytest.raises(pydantic.ValidationError, match="num_frames"):
        ClipSettings(num_frames=0)
    with pytest.raises(pydantic.ValidationError, match="stride"):
        ClipSettings(stride=0)
    with pytest.raises(pydantic.ValidationError, match="static_clips"):
        ClipSettings(static_clips=0)
    with pytest.raises(pydantic.ValidationError, match="std"):
        ClipSettings(std=(0.2, 0.0, 0.2))
    with pytest.raises(pydantic.ValidationError, match="frames_per_clip"):
        ClipSettings(frames_per_clip=8)
    settings = ClipSettings()
    with pytest.raises(pydantic.ValidationError):
        settings.num_frames = 8  # frozen: settings are part of the feature-cache key


def test_clip_span() -> None:
    assert clip_span(ClipSettings(num_frames=16, stride=2)) == 31
    assert clip_span(ClipSettings(num_frames=1, stride=5)) == 1
    assert clip_span(ClipSettings(num_frames=4, stride=3)) == 10


def test_train_all_clips_are_non_overlapping_and_fit() -> None:
    settings = ClipSettings(num_frames=16, stride=2)  # span 31
    assert clip_starts(100, "train", settings, seed=0) == [0, 31, 62]
    assert clip_starts(93, "train", settings, seed=0) == [0, 31, 62]  # last clip ends exactly at frame 92
    assert clip_starts(92, "train", settings, seed=0) == [0, 31]
    assert clip_starts(10, "train", settings, seed=0) == [0]  # short video: still one clip


def test_train_random_clips_are_seeded_per_video() -> None:
    settings = ClipSettings(num_frames=4, stride=2, train_clips=3)  # span 7
    num_frames = 200
    first = clip_starts(num_frames, "train", settings, seed=11)
    assert first == clip_starts(num_frames, "train", settings, seed=11)
    assert len(first) == 3
    assert all(0 <= s <= num_frames - 7 for s in first)
    others = {tuple(clip_starts(num_frames, "train", settings, seed=s)) for s in range(12, 20)}
    assert len(others | {tuple(first)}) > 1, "different seeds must give different clips"
    assert clip_starts(5, "train", settings, seed=3) == [0, 0, 0]  # too short: every clip at 0


def test_eval_clips_are_evenly_spaced_and_cover_the_video() -> None:
    settings = ClipSettings(num_frames=16, stride=2, eval_clips=5)  # span 31
    for split in ("val", "test"):
        starts = clip_starts(100, split, settings, seed=123)
        assert len(starts) == 5
        assert starts[0] == 0 and starts[-1] == 100 - 31
        gaps = np.diff(starts)
        assert np.all(np.abs(gaps - 69 / 4) <= 1)
        assert starts == clip_starts(100, split, settings, seed=7)  # evaluation ignores the seed
    assert clip_starts(20, "test", settings, seed=0) == [0] * 5


def test_clip_starts_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="split"):
        clip_starts(100, "validation", ClipSettings(), seed=0)
    with pytest.raises(ValueError):
        clip_starts(0, "train", ClipSettings(), seed=0)


def test_clip_frame_indices_step_and_clamp() -> None:
    settings = ClipSettings(num_frames=4, stride=3)
    assert clip_frame_indices(5, 100, settings) == [5, 8, 11, 14]
    assert clip_frame_indices(0, 7, settings) == [0, 3, 6, 6]  # short video repeats its last frame
    assert clip_frame_indices(0, 1, settings) == [0, 0, 0, 0]


def test_static_frames_are_spread_and_distinct() -> None:
    assert static_frame_indices(100, ClipSettings(static_clips=2)) == [33, 66]
    assert static_frame_indices(100, ClipSettings(static_clips=4)) == [20, 40, 60, 80]
    for num_frames in range(2, 30):
        for n in range(1, 6):
            indices = static_frame_indices(num_frames, ClipSettings(static_clips=n))
            assert len(indices) == n
            assert all(0 <= i < num_frames for i in indices)
            if num_frames >= n:
                assert len(set(indices)) == n
            else:
                assert len(set(indices)) >= 2
    assert static_frame_indices(1, ClipSettings(static_clips=2)) == [0, 0]


def test_to_model_input_layout_and_normalisation() -> None:
    settings = ClipSettings(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    frames = np.zeros((2, 3, 4, 5, 3), dtype=np.uint8)  # [N, T, H, W, C]
    frames[..., 0] = 255
    frames[..., 1] = 51  # 0.2
    frames[1, 2, 3, 4, 2] = 102  # one marked pixel: clip 1, time 2, row 3, col 4, blue = 0.4
    out = to_model_input(frames, settings)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 3, 4, 5)  # [N, C, T, H, W]
    torch.testing.assert_close(out[:, 0], torch.full((2, 3, 4, 5), 1.0))  # (1 - 0.5) / 0.5
    torch.testing.assert_close(out[:, 1], torch.full((2, 3, 4, 5), -0.2))  # (0.2 - 0.25) / 0.25
    assert out[1, 2, 2, 3, 4].item() == pytest.approx(0.2)  # 0.4 / 2
    assert out[1, 2].sum().item() == pytest.approx(0.2)  # nothing else moved into blue
    torch.testing.assert_close(to_model_input(torch.from_numpy(frames), settings), out)


def test_to_model_input_rejects_wrong_input() -> None:
    with pytest.raises(TypeError):
        to_model_input(np.zeros((1, 2, 4, 4, 3), dtype=np.float32), ClipSettings())
    with pytest.raises(ValueError):
        to_model_input(np.zeros((2, 4, 4, 3), dtype=np.uint8), ClipSettings())


def test_tile_static_is_a_view_of_the_frame() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(3, 8, 6, 3), dtype=np.uint8)
    clips = tile_static(frames, 5)
    assert clips.shape == (3, 5, 8, 6, 3)
    assert np.shares_memory(clips, frames)
    for t in range(5):
        np.testing.assert_array_equal(clips[:, t], frames)
    tensor_clips = tile_static(torch.from_numpy(frames), 5)
    assert tensor_clips.shape == (3, 5, 8, 6, 3)
    assert tensor_clips.data_ptr() == torch.from_numpy(frames).data_ptr()
    assert torch.equal(tensor_clips[:, 4], torch.from_numpy(frames))
