"""Run the frozen encoder once over every clip and static clip, into the feature cache.

Extraction goes through Accelerate so that several GPUs split the work: shard ``i`` of the
videos belongs to process ``i % world_size``. Each shard is written when done, so a rerun
after an interruption skips finished shards; the main process then consolidates the shards
into one memory-mappable file and marks the cache complete. Videos that fail to decode are
skipped with their reason (``strict`` makes the first failure fatal).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from aam_search.data.clips import ClipSettings, tile_static, to_model_input
from aam_search.data.decode_pool import DecodeJob, DecodeOutcome, DecodePool
from aam_search.data.manifest import Manifest, read_manifest
from aam_search.encoders import FrozenEncoder, build_encoder
from aam_search.errors import AamSearchError
from aam_search.features.cache import (
    CACHE_FORMAT_VERSION,
    DATA_FILES,
    FEATURES_FILE,
    LABELS_FILE,
    META_FILE,
    SPLIT_CODES,
    CacheError,
    FeatureCache,
    cache_key,
    file_records,
    write_json_atomic,
)
from aam_search.features.config import ClipConfig, ConfigError, ExtractConfig
from aam_search.features.labels import label_tensors, label_vocabulary
from aam_search.features.progress import ExtractionProgress
from aam_search.features.safetensors_io import TensorLayout, read_header, write_streaming

FEATURE_NAMES = DATA_FILES[FEATURES_FILE]


class ExtractionError(AamSearchError, RuntimeError):
    """A fatal extraction problem (in strict mode: the first video that failed)."""


@dataclass
class ExtractionResult:
    cache: FeatureCache
    reused: bool
    shards_encoded: int = 0
    shards_resumed: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def resolve_clip_settings(clips: ClipConfig, encoder: FrozenEncoder) -> ClipSettings:
    """Clip sampling from the config; frame size, T and normalisation from the encoder."""
    num_frames = clips.num_frames or encoder.num_frames or 16
    if encoder.num_frames is not None and num_frames != encoder.num_frames:
        raise ConfigError(
            f"clips.num_frames={num_frames} but encoder {encoder.name!r} expects "
            f"{encoder.num_frames} frames per clip"
        )
    return ClipSettings(
        num_frames=num_frames,
        stride=clips.stride,
        size=encoder.input_size,
        train_clips=clips.train_clips,
        eval_clips=clips.eval_clips,
        static_clips=clips.static_clips,
        mean=tuple(encoder.mean),
        std=tuple(encoder.std),
    )


def _video_sizes(manifest: Manifest) -> dict[str, int | None]:
    sizes: dict[str, int | None] = {}
    for row in manifest.rows:
        try:
            sizes[row.rel_path] = row.path.stat().st_size
        except OSError:
            sizes[row.rel_path] = None
    return sizes


def extract_features(
    config: ExtractConfig,
    *,
    show_progress: bool = True,
    stop_after_shards: int | None = None,
) -> ExtractionResult:
    """Extract (or reuse) the feature cache that ``config`` describes.

    ``stop_after_shards`` ends the run early after that many newly encoded shards, as an
    interruption would; tests use it to check that a rerun resumes.
    """
    from accelerate import Accelerator

    manifest = read_manifest(config.manifest)
    encoder = build_encoder(config.encoder.name, dict(config.encoder.options))
    settings = resolve_clip_settings(config.clips, encoder)
    key = cache_key(
        manifest.content_hash(),
        _video_sizes(manifest),
        encoder.identity(),
        settings.model_dump(mode="json"),
    )
    cache_dir = config.cache_root / key
    if (cache_dir / META_FILE).is_file():
        try:
            cache = FeatureCache.open(cache_dir)
        except CacheError:
            pass  # unfinished or damaged: resume (or redo) below
        else:
            return ExtractionResult(cache=_trainable(cache), reused=True)

    use_cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not use_cuda, mixed_precision="bf16" if use_cuda else "no")
    num_shards = max(1, math.ceil(len(manifest.rows) / config.shard_videos))
    shard_dir = cache_dir / "shards"
    if accelerator.is_main_process:
        shard_dir.mkdir(parents=True, exist_ok=True)
        _write_running_meta(cache_dir, key, manifest, encoder, settings, config, num_shards)
    accelerator.wait_for_everyone()

    mine = [i for i in range(num_shards) if i % accelerator.num_processes == accelerator.process_index]
    todo = [i for i in mine if not (shard_dir / f"shard-{i:05d}.json").is_file()]
    resumed = len(mine) - len(todo)
    module = encoder.module.to(accelerator.device)
    encoded = 0
    started = time.perf_counter()
    progress = ExtractionProgress(
        enabled=show_progress and accelerator.is_main_process,
        total_videos=sum(_shard_size(i, len(manifest.rows), config.shard_videos) for i in todo),
    )
    with progress, DecodePool(
        settings,
        workers=config.decode_workers,
        timeout_s=config.decode_timeout_s,
        num_threads=config.decode_threads,
    ) as pool:
        for shard in todo:
            if stop_after_shards is not None and encoded >= stop_after_shards:
                break
            _encode_shard(shard, manifest, config, settings, encoder, pool, accelerator, progress, shard_dir)
            encoded += 1
    del module
    interrupted = stop_after_shards is not None and encoded < len(todo)
    accelerator.wait_for_everyone()
    if interrupted:
        raise ExtractionInterrupted(
            f"stopped after {encoded} shard(s); rerun to resume from {shard_dir}"
        )
    if accelerator.is_main_process:
        _consolidate(cache_dir, num_shards, time.perf_counter() - started)
    accelerator.wait_for_everyone()
    cache = _trainable(FeatureCache.open(cache_dir))
    return ExtractionResult(
        cache=cache,
        reused=False,
        shards_encoded=encoded,
        shards_resumed=resumed,
        skipped=cache.meta["skipped"],
    )


def _trainable(cache: FeatureCache) -> FeatureCache:
    """A cache whose train split decoded nothing can train no trial: say so now, with why."""
    if problem := cache.split_problem("train"):
        raise ExtractionError(problem)
    return cache


class ExtractionInterrupted(ExtractionError):
    """Extraction stopped before every shard was written; a rerun resumes it."""


def _shard_size(shard: int, num_videos: int, per_shard: int) -> int:
    return max(0, min(per_shard, num_videos - shard * per_shard))


def _write_running_meta(
    cache_dir: Path,
    key: str,
    manifest: Manifest,
    encoder: FrozenEncoder,
    settings: ClipSettings,
    config: ExtractConfig,
    num_shards: int,
) -> None:
    meta_path = cache_dir / META_FILE
    meta = {
        "version": CACHE_FORMAT_VERSION,
        "key": key,
        "status": "running",
        "manifest": {"file": str(manifest.file), "sha256": manifest.content_hash()},
        "encoder": encoder.identity(),
        "clips": settings.model_dump(mode="json"),
        "num_shards": num_shards,
        "shard_videos": config.shard_videos,
        "videos": [row.rel_path for row in manifest.rows],
        "rows": [row.row for row in manifest.rows],
        **label_vocabulary(manifest),
    }
    write_json_atomic(meta_path, meta)
    save_file(label_tensors(manifest), str(cache_dir / LABELS_FILE))


def _jobs(shard: int, manifest: Manifest, config: ExtractConfig) -> Iterator[DecodeJob]:
    start = shard * config.shard_videos
    for index in range(start, min(start + config.shard_videos, len(manifest.rows))):
        row = manifest.rows[index]
        yield DecodeJob(index=index, path=str(row.path), split=row.split, seed=config.seed * 1_000_003 + index)


class _Batcher:
    """Collects clips of several videos so the encoder sees full batches."""

    def __init__(self, encoder: FrozenEncoder, settings: ClipSettings, accelerator: Any, batch_size: int):
        self.encoder, self.settings, self.accelerator = encoder, settings, accelerator
        self.batch_size = batch_size
        self.pending: list[tuple[str, int, np.ndarray]] = []
        self.out: dict[str, list[torch.Tensor]] = {"clip": [], "static": []}
        self.owners: dict[str, list[torch.Tensor]] = {"clip": [], "static": []}
        self.encode_seconds = 0.0
        self.clips_encoded = 0

    def add(self, kind: str, video: int, clips_uint8: np.ndarray) -> None:
        self.pending.append((kind, video, clips_uint8))
        if sum(len(c) for _, _, c in self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        started = time.perf_counter()
        batch = torch.from_numpy(np.concatenate([c for _, _, c in self.pending]))
        inputs = to_model_input(batch, self.settings).to(self.accelerator.device)
        with self.accelerator.autocast():
            tokens = self.encoder.encode(inputs)
        tokens = tokens.float().to("cpu", torch.float16)
        if not torch.isfinite(tokens).all():
            raise ExtractionError("encoder produced non-finite features (fp16 overflow?)")
        offset = 0
        for kind, video, clips in self.pending:
            self.out[kind].append(tokens[offset : offset + len(clips)])
            self.owners[kind].append(torch.full((len(clips),), video, dtype=torch.int64))
            offset += len(clips)
        self.clips_encoded += offset
        self.pending.clear()
        self.encode_seconds += time.perf_counter() - started

    def tensors(self, tokens: int, dim: int) -> dict[str, torch.Tensor]:
        self.flush()

        def cat(parts: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
            return torch.cat(parts) if parts else empty

        no_tokens = torch.zeros((0, tokens, dim), dtype=torch.float16)
        no_owner = torch.zeros((0,), dtype=torch.int64)
        return {
            "clip_features": cat(self.out["clip"], no_tokens),
            "clip_video": cat(self.owners["clip"], no_owner),
            "static_features": cat(self.out["static"], no_tokens),
            "static_video": cat(self.owners["static"], no_owner),
        }


def _encode_shard(
    shard: int,
    manifest: Manifest,
    config: ExtractConfig,
    settings: ClipSettings,
    encoder: FrozenEncoder,
    pool: DecodePool,
    accelerator: Any,
    progress: ExtractionProgress,
    shard_dir: Path,
) -> None:
    started = time.perf_counter()
    batcher = _Batcher(encoder, settings, accelerator, config.batch_size)
    skipped: list[dict[str, Any]] = []
    decode_seconds = 0.0
    outcome: DecodeOutcome
    for outcome in pool.imap(_jobs(shard, manifest, config)):
        decode_seconds += outcome.seconds
        row = manifest.rows[outcome.job.index]
        if outcome.video is None:
            problem = {"row": row.row, "path": row.rel_path, "reason": outcome.reason}
            if config.strict:
                raise ExtractionError(
                    f"{manifest.file}: row {row.row}: {row.rel_path}: {outcome.reason} "
                    "(strict mode; drop --strict to skip such videos)"
                )
            skipped.append(problem)
            progress.skip(problem)
            continue
        video = outcome.video
        batcher.add("clip", outcome.job.index, video.clips)
        batcher.add("static", outcome.job.index, tile_static(video.static, settings.num_frames))
        progress.advance(clips=len(video.clips) + len(video.static))
    tokens, dim = _token_shape(encoder, settings)
    tensors = batcher.tensors(tokens, dim)
    save_file(tensors, str(shard_dir / f"shard-{shard:05d}.safetensors"))
    write_json_atomic(
        shard_dir / f"shard-{shard:05d}.json",
        {
            "shard": shard,
            "skipped": skipped,
            "clips": int(len(tensors["clip_features"]) + len(tensors["static_features"])),
            "decode_seconds": decode_seconds,
            "encode_seconds": batcher.encode_seconds,
            "seconds": time.perf_counter() - started,
        },
    )


def _token_shape(encoder: FrozenEncoder, settings: ClipSettings) -> tuple[int, int]:
    """(L, D) of the encoder's output, found with one dummy clip (cached per encoder)."""
    cached = getattr(encoder, "_aam_token_shape", None)
    if cached is None:
        probe = torch.zeros(1, 3, settings.num_frames, settings.size, settings.size)
        device = next(iter(encoder.module.parameters()), torch.empty(0)).device
        cached = tuple(encoder.encode(probe.to(device)).shape[1:])
        encoder._aam_token_shape = cached  # type: ignore[attr-defined]
    return cached  # type: ignore[return-value]


def _consolidate(cache_dir: Path, num_shards: int, wall_seconds: float) -> None:
    """Stream every shard into one features file and mark the cache complete."""
    import json

    shard_dir = cache_dir / "shards"
    shard_files = [shard_dir / f"shard-{i:05d}.safetensors" for i in range(num_shards)]
    shard_infos = [json.loads((shard_dir / f"shard-{i:05d}.json").read_text()) for i in range(num_shards)]
    headers = [read_header(path)[0] for path in shard_files]
    layouts = []
    for name in FEATURE_NAMES:
        first = headers[0][name]
        rows = sum(header[name]["shape"][0] for header in headers)
        dtype = torch.float16 if first["dtype"] == "F16" else torch.int64
        layouts.append(TensorLayout(name, dtype, (rows, *first["shape"][1:])))

    def pieces() -> Iterator[tuple[str, torch.Tensor]]:
        for name in FEATURE_NAMES:
            for path in shard_files:
                yield name, load_file(str(path))[name]

    write_streaming(cache_dir / FEATURES_FILE, layouts, pieces())
    meta = json.loads((cache_dir / META_FILE).read_text())
    skipped = [problem for info in shard_infos for problem in info["skipped"]]
    clips = int(layouts[0].shape[0])
    static = int(layouts[2].shape[0])
    encode_seconds = sum(info["encode_seconds"] for info in shard_infos)
    shard_seconds = sum(info["seconds"] for info in shard_infos)
    meta.update(
        status="complete",
        skipped=skipped,
        feature_shape=list(layouts[0].shape[1:]),
        counts={
            "videos": len(meta["videos"]),
            "decoded": len(meta["videos"]) - len(skipped),
            "skipped": len(skipped),
            "clips": clips,
            "static_clips": static,
        },
        timings={
            "wall_seconds_last_run": wall_seconds,
            "shard_seconds": shard_seconds,
            "decode_seconds": sum(info["decode_seconds"] for info in shard_infos),
            "encode_seconds": encode_seconds,
            "clips_per_s": (clips + static) / shard_seconds if shard_seconds else None,
        },
    )
    skipped_rows = {problem["row"] for problem in skipped}
    valid = torch.tensor([row not in skipped_rows for row in meta["rows"]], dtype=torch.bool)
    labels = load_file(str(cache_dir / LABELS_FILE))
    labels["valid"] = valid
    save_file(labels, str(cache_dir / LABELS_FILE))
    meta["files"] = file_records(cache_dir)  # checked when a cache is opened and verified
    write_json_atomic(cache_dir / META_FILE, meta)
    shutil.rmtree(shard_dir, ignore_errors=True)


__all__ = [
    "ExtractionError",
    "ExtractionInterrupted",
    "ExtractionResult",
    "SPLIT_CODES",
    "extract_features",
    "resolve_clip_settings",
]
