"""Decode one video (decord) or image (Pillow) into resized uint8 clips and static frames.

decord 0.6.0 is unmaintained: ``torch`` must be imported before it, readers are
created inside each call (never shared across a fork), and broken files can
raise, hang or return wrong frames. This module validates what it gets back and
turns every failure into a :class:`VideoDecodeError` with a short reason; the
hang case is handled one level up by :mod:`aam_search.data.decode_pool`.

decord's own exceptions rarely say why (``"Error reading x.mp4..."``; FFmpeg's
explanation goes to stderr), so on failure the file is re-examined with PyAV,
which exposes FFmpeg's error log, to produce reasons such as
``"cannot open: moov atom not found"`` or ``"truncated: frame 48 of 120 unreadable"``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch  # noqa: F401  (must be imported before decord: decord 0.6.0 pitfall)
from PIL import Image

from aam_search.data.clips import (
    ClipSettings,
    clip_frame_indices,
    clip_starts,
    static_frame_indices,
    tile_static,
)
from aam_search.errors import AamSearchError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
_MAX_REASON_CHARS = 200


class VideoDecodeError(AamSearchError):
    """A file that could not be turned into clips; ``reason`` is short and human-readable."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # keep (path, reason) when pickled across processes
        return (type(self), (self.path, self.reason))


@dataclass
class DecodedVideo:
    clips: np.ndarray  # uint8 [n_clips, T, size, size, 3]
    static: np.ndarray  # uint8 [n_static, size, size, 3] single frames (tiled later)
    num_frames: int  # frames in the source (1 for an image)
    is_image: bool


def decode_video(
    path: str | os.PathLike[str],
    split: str,
    settings: ClipSettings,
    *,
    num_threads: int = 1,
    seed: int = 0,
) -> DecodedVideo:
    """Decode the clips and static frames of one video or image, resized and centre-cropped.

    Raises :class:`VideoDecodeError` for anything unreadable; never returns partial garbage.
    """
    path = Path(path)
    if not path.exists():
        raise VideoDecodeError(path, "file not found")
    if path.is_dir():
        raise VideoDecodeError(path, "is a directory")
    # Only regular files can be checked for size: a pipe reports 0 bytes but may still stream data.
    if path.is_file() and path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _decode_image(path, settings)
    return _decode_with_decord(path, split, settings, num_threads=num_threads, seed=seed)


# --------------------------------------------------------------------------- images


def _decode_image(path: Path, settings: ClipSettings) -> DecodedVideo:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            height, width = rgb.height, rgb.width
            new_h, new_w = resized_shape(height, width, settings.size)
            rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
            pixels = np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, DecompressionBombError)
        raise VideoDecodeError(path, f"image unreadable: {_first_line(exc)}") from exc
    frame = center_crop(pixels[None], settings.size)
    return DecodedVideo(
        clips=np.ascontiguousarray(tile_static(frame, settings.num_frames)),
        static=frame,
        num_frames=1,
        is_image=True,
    )


# --------------------------------------------------------------------------- videos


def _import_decord() -> ModuleType:
    import decord  # torch is already imported at module level, as decord requires

    return decord


def _decode_with_decord(
    path: Path, split: str, settings: ClipSettings, *, num_threads: int, seed: int
) -> DecodedVideo:
    decord = _import_decord()
    size = settings.size

    reader = _open_reader(decord, path, num_threads)
    num_frames = len(reader)
    if num_frames <= 0:
        raise VideoDecodeError(path, "no frames")
    native_h, native_w = _native_size(reader, path)
    target_h, target_w = resized_shape(native_h, native_w, size)

    starts = clip_starts(num_frames, split, settings, seed)
    clip_indices = np.array([clip_frame_indices(s, num_frames, settings) for s in starts], dtype=np.int64)
    static_indices = np.array(static_frame_indices(num_frames, settings), dtype=np.int64)
    # One sorted get_batch: decord decodes forward from key frames, so sorted unique reads are cheapest.
    unique = np.unique(np.concatenate([clip_indices.ravel(), static_indices]))
    if (native_h, native_w) != (target_h, target_w):
        # Let FFmpeg scale while decoding (down or up): far cheaper than decoding full-size frames.
        reader = None
    frames = _read_frames(decord, path, num_threads, reader, unique.tolist(), target_h, target_w)
    frames = center_crop(frames, size)

    clips = frames[np.searchsorted(unique, clip_indices)]
    static = frames[np.searchsorted(unique, static_indices)]
    return DecodedVideo(
        clips=np.ascontiguousarray(clips),
        static=np.ascontiguousarray(static),
        num_frames=num_frames,
        is_image=False,
    )


def _native_size(reader, path: Path) -> tuple[int, int]:
    # reader[0], not get_batch: on widths decord mis-strides, get_batch raises while
    # indexing still returns the right height and width (with a bogus channel count).
    try:
        shape = reader[0].shape
    except Exception as exc:
        reason = diagnose_with_pyav(path) or f"cannot decode frames: {_decord_message(exc)}"
        raise VideoDecodeError(path, reason) from exc
    if len(shape) != 3 or min(shape[:2]) < 1:
        raise VideoDecodeError(path, f"unexpected frame shape {tuple(shape)}")
    return int(shape[0]), int(shape[1])


def _read_frames(
    decord: ModuleType, path: Path, num_threads: int, reader, indices: list[int], height: int, width: int
) -> np.ndarray:
    """get_batch at ``height`` x ``width`` (reopening the reader at that size if ``reader`` is None).

    decord 0.6.0 mis-reads RGB rows whose padded stride is exactly 4 x width (widths 8, 12,
    16, 24, 48, 72, ...): get_batch raises "size must exactly match" or returns 4 channels.
    Such a width is widened by a pixel or two; the centre crop absorbs the extra columns.
    """
    for extra_columns in range(3):
        decode_width = width + extra_columns
        if reader is None or extra_columns:
            reader = _open_reader(decord, path, num_threads, width=decode_width, height=height)
        try:
            frames = reader.get_batch(indices).asnumpy()
        except Exception as exc:
            if _is_stride_bug(exc):
                continue
            reason = diagnose_with_pyav(path) or f"cannot decode frames: {_decord_message(exc)}"
            raise VideoDecodeError(path, reason) from exc
        if frames.shape == (len(indices), height, decode_width, 3) and frames.dtype == np.uint8:
            return frames
        if frames.shape[:3] != (len(indices), height, decode_width):
            break
    raise VideoDecodeError(
        path, f"unexpected frame shape from decord (wanted {len(indices)}x{height}x{width}x3 uint8)"
    )


def _is_stride_bug(exc: BaseException) -> bool:
    return "size must exactly match" in str(exc)


def _open_reader(decord: ModuleType, path: Path, num_threads: int, *, width: int = -1, height: int = -1):
    try:
        return decord.VideoReader(
            str(path), ctx=decord.cpu(0), num_threads=num_threads, width=width, height=height
        )
    except Exception as exc:  # decord raises RuntimeError or DECORDError, both uninformative
        reason = diagnose_with_pyav(path) or f"cannot open: {_decord_message(exc)}"
        raise VideoDecodeError(path, reason) from exc


def diagnose_with_pyav(path: str | os.PathLike[str]) -> str | None:
    """Why FFmpeg cannot read ``path``, as a short reason; None if its packets all read fine.

    Only demuxes (no decoding), so it is quick even for long files; used on error paths only.
    """
    import av
    import av.logging

    previous_level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # without a level FFmpeg's error log is not kept
    try:
        with av.logging.Capture() as logs:
            try:
                container = av.open(str(path))
            except av.FFmpegError as exc:
                return f"cannot open: {_ffmpeg_message(exc)}"
            with container:
                if not container.streams.video:
                    return "no video stream"
                stream = container.streams.video[0]
                claimed = stream.frames
                readable = 0
                try:
                    for packet in container.demux(stream):
                        if packet.size:
                            readable += 1
                except av.FFmpegError as exc:
                    why = _ffmpeg_message(exc)
                    return f"truncated: frame {readable} of {claimed or '?'} unreadable ({why})"
        partial = any("partial file" in message for _, _, message in logs)
        if claimed and readable < claimed:
            return f"truncated: frame {readable} of {claimed} unreadable"
        if partial:
            return f"truncated: frame {readable} unreadable"
        if readable == 0:
            return "no frames"
        return None
    except Exception as exc:  # the diagnosis must never hide the original failure
        return f"cannot open: {_first_line(exc)}"
    finally:
        av.logging.set_level(previous_level)


# --------------------------------------------------------------------------- geometry


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the short side at ``size`` and the aspect ratio kept (long side >= size)."""
    if height <= width:
        return size, max(size, round(width * size / height))
    return max(size, round(height * size / width)), size


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Centre ``size`` x ``size`` crop of frames ``[N, H, W, C]`` (a view)."""
    height, width = frames.shape[1:3]
    top, left = (height - size) // 2, (width - size) // 2
    return frames[:, top : top + size, left : left + size]


# --------------------------------------------------------------------------- messages

_DECORD_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")  # "[10:42:38] /src/video_reader.cc:486: "


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else type(exc).__name__
    return text[:_MAX_REASON_CHARS]


def _decord_message(exc: BaseException) -> str:
    return _DECORD_PREFIX.sub("", _first_line(exc))


def _ffmpeg_message(exc: BaseException) -> str:
    log = getattr(exc, "log", None)  # (level, component, message) of FFmpeg's last error
    if log and len(log) == 3 and log[2]:
        return str(log[2]).strip()[:_MAX_REASON_CHARS]
    return str(getattr(exc, "strerror", None) or _first_line(exc))[:_MAX_REASON_CHARS]
