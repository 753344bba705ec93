"""A manifest whose train videos all fail to decode: every step says so, none blames labels."""

import csv
import shutil
from pathlib import Path

import pytest

from aam_search.features.cache import CacheError, FeatureCache
from aam_search.features.extract import ExtractionError, extract_features
from tests.conftest import make_config


@pytest.fixture(scope="module")
def undecodable(small_dataset, tmp_path_factory) -> Path:
    """Two train videos that are not videos, and one good val video."""
    root = tmp_path_factory.mktemp("undecodable")
    (root / "videos").mkdir()
    with open(small_dataset, newline="") as handle:
        rows = list(csv.DictReader(handle))
    good = next(row for row in rows if row["split"] == "val" and row["path"].endswith(".mp4"))
    shutil.copy(small_dataset.parent / good["path"], root / good["path"])
    for name in ("x.mp4", "y.mp4"):
        (root / "videos" / name).write_bytes(b"not a video at all")
    train = [{**good, "path": f"videos/{name}", "split": "train"} for name in ("x.mp4", "y.mp4")]
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(good))
        writer.writeheader()
        writer.writerows([*train, good])
    return manifest


def test_extraction_says_every_train_video_was_skipped(undecodable, tmp_path):
    config = make_config(undecodable, tmp_path / "cache")
    for _ in range(2):  # the first run, then the rerun that finds the finished cache
        with pytest.raises(ExtractionError) as caught:
            extract_features(config, show_progress=False)
        message = str(caught.value)
        assert "all 2 train video(s) failed to decode and were skipped" in message
        assert "meta.json" in message and "aam-search features info" in message and "\n" not in message


def _cache_of(undecodable: Path, root: Path) -> FeatureCache:
    with pytest.raises(ExtractionError):
        extract_features(make_config(undecodable, root), show_progress=False)
    (folder,) = [p for p in root.iterdir() if p.is_dir()]
    return FeatureCache.open(folder)


def test_training_and_the_baseline_on_such_a_cache_say_why(undecodable, tmp_path):
    from aam_search.trainer.baseline import raw_baseline
    from aam_search.trainer.config import EvalConfig
    from aam_search.trainer.data import TrainingData

    cache = _cache_of(undecodable, tmp_path / "cache")
    with pytest.raises(CacheError, match=r"all 2 train video\(s\) failed to decode"):  # a TypeError before
        TrainingData(cache)
    with pytest.raises(CacheError, match=r"all 2 train video\(s\) failed to decode"):  # "no videos labelled"
        raw_baseline(cache, EvalConfig(attacker_epochs=1, probe_epochs=1), seed=0)


def test_the_train_command_prints_one_line(undecodable, tmp_path, capsys):
    from aam_search.cli import main

    cache = _cache_of(undecodable, tmp_path / "cache")
    trial = tmp_path / "trial.yaml"
    trial.write_text(f"cache: {cache.path}\noptim: {{epochs: 1, batch_size: 2, head_pretrain_epochs: 1}}\n")
    assert main(["train", "--config", str(trial), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "failed to decode and were skipped" in err and "Traceback" not in err
