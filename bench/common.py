"""What every benchmark starts from: the synthetic dataset (written once) and its feature cache."""

from __future__ import annotations

from pathlib import Path

from aam_search.data.synth import synthesize
from aam_search.features.cache import FeatureCache
from aam_search.features.config import EncoderConfig, ExtractConfig
from aam_search.features.extract import extract_features


def synthetic_cache(workdir: Path, videos: int, *, images: int = 0,
                    encoder: EncoderConfig | None = None) -> tuple[ExtractConfig, FeatureCache]:
    """Synthesize ``workdir/data`` (seed 0) unless it is there, then extract or reuse its cache."""
    manifest = workdir / "data" / "manifest.csv"
    if not manifest.is_file():
        synthesize(workdir / "data", videos, seed=0, images=images)
    config = ExtractConfig(manifest=manifest, cache_root=workdir / "cache", encoder=encoder or EncoderConfig())
    return config, extract_features(config, show_progress=False).cache
