"""The on-disk feature cache: its key, its layout, and a memory-mapped reader.

A cache folder ``<cache_root>/<key>/`` holds

- ``features.safetensors``: ``clip_features`` fp16 ``[clips, L, D]`` with ``clip_video``
  (the video each clip came from), ``static_features`` / ``static_video`` likewise;
- ``labels.safetensors``: per video ``split`` (0 train, 1 val, 2 test), ``action``,
  ``attrs``, ``tasks``, ``groups`` (-1 where not labelled), ``valid`` and ``is_image``;
- ``meta.json``: names behind those integers, what was skipped and why, timings, the
  identity of every input the key hashes, and the size and sha256 of each data file;
- ``shards/`` while extraction runs (removed once consolidated).

Integrity: opening a cache checks each data file's size and safetensors header against what
extraction wrote (cheap: a trial does it); :meth:`FeatureCache.verify` also re-hashes the
contents (a study does it once before its first trial; ``features info --verify`` on demand).
Caches extracted before hashes were recorded pass the size and header checks only.

Clips are stored flat rather than ``[video, clip, ...]`` because train videos have as many
clips as fit in them; ``clip_video`` recovers the grouping.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aam_search.errors import AamSearchError
from aam_search.features.safetensors_io import SafetensorsFormatError, mmap_tensors, read_header

CACHE_FORMAT_VERSION = 1
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
META_FILE = "meta.json"
FEATURES_FILE = "features.safetensors"
LABELS_FILE = "labels.safetensors"
# The data files of a finished cache and the tensors each must hold.
DATA_FILES = {
    FEATURES_FILE: ("clip_features", "clip_video", "static_features", "static_video"),
    LABELS_FILE: ("split", "action", "attrs", "tasks", "groups", "valid", "is_image"),
}
REEXTRACT = "delete the cache folder and run `aam-search features extract` again"


class CacheError(AamSearchError, RuntimeError):
    """A cache folder that is missing, incomplete or damaged; the message names it."""


def cache_key(
    manifest_hash: str,
    video_sizes: dict[str, int | None],
    encoder_identity: dict[str, Any],
    clip_settings: dict[str, Any],
) -> str:
    """Hash every input that changes the features: manifest bytes, the videos' sizes,
    the encoder (name, options, weights) and the clip settings."""
    payload = {
        "version": CACHE_FORMAT_VERSION,
        "manifest": manifest_hash,
        "videos": video_sizes,
        "encoder": encoder_identity,
        "clips": clip_settings,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """sha256 hex of a file, read in chunks (a cache file may be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """What meta.json records of each data file: its size and content hash."""
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
            for name in DATA_FILES}


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


@dataclass
class FeatureCache:
    """A finished cache, opened read-only; tensors are memory-mapped, not loaded."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> FeatureCache:
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise CacheError(f"{path}: not a feature cache (no {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as error:
            raise CacheError(f"{meta_path}: damaged ({error})") from None
        if meta.get("status") != "complete":
            raise CacheError(
                f"{path}: extraction has not finished (status {meta.get('status')!r}); "
                "rerun `aam-search features extract` to resume it"
            )
        if meta.get("version") != CACHE_FORMAT_VERSION:
            raise CacheError(f"{path}: cache format {meta.get('version')} is not supported")
        cache = cls(path=path, meta=meta)
        cache.check_files()
        return cache

    @property
    def file_records(self) -> dict[str, dict[str, Any]]:
        """Size and sha256 of each data file as extraction wrote them; empty for old caches."""
        return self.meta.get("files") or {}

    def check_files(self) -> None:
        """The cheap check: each data file is there, has the size extraction recorded, and a
        safetensors header that holds the expected tensors and accounts for every byte."""
        for name, tensors in DATA_FILES.items():
            file = self.path / name
            try:
                size = file.stat().st_size
            except OSError as error:
                raise CacheError(f"{file}: missing ({error.strerror or error}); {REEXTRACT}") from None
            recorded = self.file_records.get(name, {}).get("bytes")
            if recorded is not None and size != recorded:
                raise CacheError(f"{file}: {size} bytes, but extraction wrote {recorded} (truncated or "
                                 f"replaced); {REEXTRACT}")
            try:
                header, _, data_start = read_header(file)
            except (OSError, SafetensorsFormatError) as error:
                raise CacheError(f"{file}: damaged ({error}); {REEXTRACT}") from None
            missing = [tensor for tensor in tensors if tensor not in header]
            if missing:
                raise CacheError(f"{file}: lacks tensor(s) {', '.join(missing)}; {REEXTRACT}")
            expected = data_start + max((entry["data_offsets"][1] for entry in header.values()), default=0)
            if size != expected:
                raise CacheError(f"{file}: {size} bytes, but its header describes {expected}; {REEXTRACT}")

    def verify(self) -> dict[str, str]:
        """Re-hash every data file against meta.json; raise a :class:`CacheError` naming the
        first file whose contents changed. Returns each file's outcome ("ok", or "no hash
        recorded" for caches extracted before hashes were: those pass the cheap checks only)."""
        self.check_files()
        outcome = {}
        for name in DATA_FILES:
            expected = self.file_records.get(name, {}).get("sha256")
            if expected is None:
                outcome[name] = "no hash recorded"
                continue
            actual = file_sha256(self.path / name)
            if actual != expected:
                raise CacheError(
                    f"{self.path / name}: contents changed since extraction (sha256 {actual[:16]}..., "
                    f"recorded {expected[:16]}...); {REEXTRACT}"
                )
            outcome[name] = "ok"
        return outcome

    @cached_property
    def _features(self) -> dict[str, torch.Tensor]:
        return self._load(FEATURES_FILE)

    @cached_property
    def _labels(self) -> dict[str, torch.Tensor]:
        return self._load(LABELS_FILE)

    def _load(self, name: str) -> dict[str, torch.Tensor]:
        try:
            return mmap_tensors(self.path / name)
        except (OSError, SafetensorsFormatError) as error:
            raise CacheError(f"{self.path / name}: cannot read ({error})") from None

    @property
    def clip_features(self) -> torch.Tensor:
        return self._features["clip_features"]

    @property
    def clip_video(self) -> torch.Tensor:
        return self._features["clip_video"]

    @property
    def static_features(self) -> torch.Tensor:
        return self._features["static_features"]

    @property
    def static_video(self) -> torch.Tensor:
        return self._features["static_video"]

    def labels(self, name: str) -> torch.Tensor:
        """Per-video label tensor: split, action, attrs, tasks, groups, valid, is_image."""
        return self._labels[name]

    @property
    def num_videos(self) -> int:
        return len(self.meta["videos"])

    @property
    def tokens(self) -> int:
        return int(self.meta["feature_shape"][0])

    @property
    def dim(self) -> int:
        return int(self.meta["feature_shape"][1])

    def video_indices(
        self, split: str, *, with_action: bool = False, with_attrs: bool = False
    ) -> np.ndarray:
        """Decoded videos of a split, optionally only those labelled for a task."""
        keep = (self.labels("split").numpy() == SPLIT_CODES[split]) & self.labels("valid").numpy()
        if with_action:
            keep &= self.labels("action").numpy() >= 0
        if with_attrs:
            keep &= (self.labels("attrs").numpy() >= 0).any(axis=1)
        return np.flatnonzero(keep)

    def split_problem(self, split: str) -> str | None:
        """Why ``split`` has no decoded video to use, or ``None`` if it has one."""
        in_split = self.labels("split").numpy() == SPLIT_CODES[split]
        decoded = int((in_split & self.labels("valid").numpy()).sum())
        if decoded:
            return None
        listed = int(in_split.sum())
        if not listed:
            return f"{self.path}: the cache holds no {split} videos (the manifest lists none)"
        return (f"{self.path}: all {listed} {split} video(s) failed to decode and were skipped; the reasons "
                f"are under 'skipped' in {self.path / META_FILE} (`aam-search features info {self.path}`)")

    def summary(self) -> dict[str, Any]:
        meta = self.meta
        return {
            "path": str(self.path),
            "key": meta["key"],
            "manifest": meta["manifest"]["file"],
            "encoder": meta["encoder"]["name"],
            "videos": meta["counts"]["videos"],
            "decoded": meta["counts"]["decoded"],
            "skipped": meta["counts"]["skipped"],
            "clips": meta["counts"]["clips"],
            "static_clips": meta["counts"]["static_clips"],
            "feature_shape": meta["feature_shape"],
            "clips_per_s": meta["timings"].get("clips_per_s"),
            "hashes": "sha256 recorded" if self.file_records else "no hashes recorded",
            "size_mb": round(sum(f.stat().st_size for f in self.path.iterdir()) / 2**20, 2),
        }
