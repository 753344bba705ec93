"""The feature cache's integrity checks: sizes and headers on every open, content hashes on verify."""

import json
import shutil
from pathlib import Path

import pytest

from aam_search.cli import main
from aam_search.features.cache import DATA_FILES, FEATURES_FILE, LABELS_FILE, META_FILE, CacheError, FeatureCache
from aam_search.features.cache import file_sha256


@pytest.fixture
def cache_copy(small_cache, tmp_path) -> Path:
    """A private copy of the session's small cache, free to damage."""
    target = tmp_path / "cache"
    shutil.copytree(small_cache.path, target, ignore=shutil.ignore_patterns("baselines"))
    return target


def _flip_bytes(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - offset_from_end, len(data) - offset_from_end + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_extraction_records_size_and_sha256_of_every_data_file(small_cache):
    records = small_cache.meta["files"]
    assert set(records) == set(DATA_FILES) == {FEATURES_FILE, LABELS_FILE}
    for name, record in records.items():
        assert record["bytes"] == (small_cache.path / name).stat().st_size
        assert record["sha256"] == file_sha256(small_cache.path / name)
    assert small_cache.verify() == {FEATURES_FILE: "ok", LABELS_FILE: "ok"}


@pytest.mark.parametrize("name", [FEATURES_FILE, LABELS_FILE])
def test_flipped_bytes_fail_verify_naming_the_file(cache_copy, name):
    _flip_bytes(cache_copy / name, offset_from_end=16)
    cache = FeatureCache.open(cache_copy)  # same size and header: the cheap check cannot tell
    with pytest.raises(CacheError) as caught:
        cache.verify()
    message = str(caught.value)
    assert message.startswith(f"{cache_copy / name}: contents changed since extraction")
    assert "\n" not in message and "features extract" in message


def test_features_info_verify_names_the_bad_file(cache_copy, capsys):
    assert main(["features", "info", str(cache_copy), "--verify"]) == 0
    assert f"verified {FEATURES_FILE}: ok" in capsys.readouterr().out
    _flip_bytes(cache_copy / FEATURES_FILE)
    assert main(["features", "info", str(cache_copy)]) == 0  # without --verify: only the cheap checks
    capsys.readouterr()
    assert main(["features", "info", str(cache_copy), "--verify"]) == 2
    err = capsys.readouterr().err
    assert str(cache_copy / FEATURES_FILE) in err.replace("\n", "") and "contents changed" in err


@pytest.mark.parametrize("cut", [1, 4096])
def test_a_truncated_file_fails_the_open(cache_copy, cut):
    path = cache_copy / FEATURES_FILE
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(CacheError) as caught:
        FeatureCache.open(cache_copy)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "extraction wrote" in message and "\n" not in message


def test_a_trial_on_a_truncated_cache_fails_at_open_with_the_reason(cache_copy, tmp_path):
    from aam_search.trainer.config import TrialConfig
    from aam_search.trainer.train import run_trial

    path = cache_copy / FEATURES_FILE
    path.write_bytes(path.read_bytes()[:-64])
    config = TrialConfig(cache=cache_copy, optim={"epochs": 1, "batch_size": 4, "head_pretrain_epochs": 1})
    with pytest.raises(CacheError):
        run_trial(config, tmp_path / "trial")
    result = json.loads((tmp_path / "trial" / "result.json").read_text())
    assert result["status"] == "failed" and result["epochs_done"] == 0
    assert result["reason"].startswith(f"CacheError: {path}: ")


def _forget_hashes(folder: Path) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    del meta["files"]
    (folder / META_FILE).write_text(json.dumps(meta))


def test_an_old_cache_without_hashes_still_opens_and_verifies(cache_copy, capsys):
    _forget_hashes(cache_copy)
    cache = FeatureCache.open(cache_copy)
    assert cache.verify() == {FEATURES_FILE: "no hash recorded", LABELS_FILE: "no hash recorded"}
    assert cache.summary()["hashes"] == "no hashes recorded"
    assert main(["features", "info", str(cache_copy), "--verify"]) == 0
    assert "no hash recorded" in capsys.readouterr().out


def test_an_old_cache_still_gets_the_header_and_length_checks(cache_copy):
    _forget_hashes(cache_copy)
    path = cache_copy / FEATURES_FILE
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CacheError, match="lies past the end of the file|header describes"):
        FeatureCache.open(cache_copy)
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(CacheError, match=f"{path}: damaged"):
        FeatureCache.open(cache_copy)


def test_a_missing_data_file_fails_the_open(cache_copy):
    (cache_copy / LABELS_FILE).unlink()
    with pytest.raises(CacheError, match=f"{cache_copy / LABELS_FILE}: missing"):
        FeatureCache.open(cache_copy)


def test_a_study_verifies_its_cache_before_the_first_trial(cache_copy, tmp_path):
    from aam_search.search.config import parse_study_config
    from aam_search.search.orchestrator import Orchestrator

    _flip_bytes(cache_copy / FEATURES_FILE)
    config = parse_study_config({"name": "s", "workdir": str(tmp_path / "work"), "track": False,
                                 "data": {"cache": str(cache_copy)}})
    with pytest.raises(CacheError, match="contents changed since extraction"):
        Orchestrator(config).prepare()
    assert not (tmp_path / "work" / "trials").exists()
