"""The demo on embedded defaults: synthetic dataset, feature cache, raw-feature leakage.

Everything lands under one work folder; rerunning reuses the dataset and the cache.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from aam_search.data.synth import synthesize
from aam_search.features.config import ExtractConfig
from aam_search.features.extract import extract_features
from aam_search.trainer.feature_eval import evaluate_privacy, evaluate_utility


def run_demo(workdir: Path, *, videos: int = 240, console: Console | None = None) -> dict:
    console = console or Console()
    workdir = workdir.resolve()
    data_dir = workdir / "data"
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        console.rule("1. synthetic dataset")
        started = time.perf_counter()
        report = synthesize(data_dir, videos, seed=0, images=videos // 6)
        console.print(f"wrote {report.manifest} in {time.perf_counter() - started:.1f}s: {report.videos_per_split} videos, "
                      f"{report.images_per_split} images")
    console.rule("2. frozen-encoder features (tiny3d)")
    result = extract_features(ExtractConfig(manifest=manifest, cache_root=workdir / "cache"))
    cache = result.cache
    summary = cache.summary()
    console.print(
        f"{'reused' if result.reused else 'wrote'} {cache.path}: {summary['clips']} clips + "
        f"{summary['static_clips']} static clips of {summary['feature_shape']}, "
        f"{summary['skipped']} skipped, {summary['clips_per_s'] or 0:.1f} clips/s"
    )
    console.rule("3. what raw features leak (fresh attackers, val split)")
    utility = evaluate_utility(cache, None)
    privacy = evaluate_privacy(cache, None)
    table = Table("measure", "raw features", "chance")
    table.add_row("action top-1 (linear probe)", f"{utility['top1']:.3f}", f"{utility['chance']:.3f}")
    for protocol, leak in privacy.items():
        table.add_row(
            f"privacy cMAP, {protocol} protocol ({leak['strongest']} attacker)",
            f"{leak['cmap']:.3f}",
            f"{leak['chance']:.3f}",
        )
    console.print(table)
    baseline = {"utility": utility, "privacy": privacy, "cache": str(cache.path)}
    (workdir / "raw_baseline.json").write_text(json.dumps(baseline, indent=2))
    console.print(f"baseline written to {workdir / 'raw_baseline.json'}")
    return baseline
