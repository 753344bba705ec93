import json

import numpy as np
import pytest
import torch

from aam_search.features.cache import CacheError, FeatureCache
from aam_search.features.config import ClipConfig, EncoderConfig
from aam_search.features.extract import ExtractionError, ExtractionInterrupted, extract_features
from tests.conftest import make_config


@pytest.fixture(scope="module")
def extracted(small_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return extract_features(make_config(small_dataset, root), show_progress=False), root


def test_cache_holds_clips_static_clips_and_labels(extracted):
    result, _ = extracted
    cache = result.cache
    meta = cache.meta
    assert not result.reused
    assert meta["counts"]["videos"] == 16 and meta["counts"]["skipped"] == 1
    (problem,) = meta["skipped"]
    assert problem["path"] == "videos/broken.mp4" and problem["row"] == 17 and problem["reason"]
    assert cache.clip_features.dtype == torch.float16
    assert tuple(cache.clip_features.shape[1:]) == (4, 32)  # tiny3d: T/4 tokens of dim 32
    split = cache.labels("split").numpy()
    is_image = cache.labels("is_image").numpy()
    valid = cache.labels("valid").numpy()
    assert valid.sum() == 15 and not valid[15]
    clips_per_video = np.bincount(cache.clip_video.numpy(), minlength=16)
    static_per_video = np.bincount(cache.static_video.numpy(), minlength=16)
    for video in range(16):
        if not valid[video]:
            assert clips_per_video[video] == 0 and static_per_video[video] == 0
        elif is_image[video]:
            assert clips_per_video[video] == 1 and static_per_video[video] == 1
        elif split[video] == 0:  # 24 frames, T=16, stride 1: one non-overlapping clip
            assert clips_per_video[video] == 1 and static_per_video[video] == 2
        else:  # val/test: the paper's 5 evenly spaced clips
            assert clips_per_video[video] == 5 and static_per_video[video] == 2
    actions = cache.labels("action").numpy()
    assert (actions[is_image] == -1).all() and (actions[~is_image] >= 0).all()
    assert (cache.labels("attrs").numpy()[valid] >= 0).all()
    # Static clips of a video come from different times, so their features differ.
    first_video = int(np.flatnonzero(valid & ~is_image)[0])
    rows = (cache.static_video == first_video).nonzero().squeeze(1)
    assert not torch.equal(cache.static_features[rows[0]], cache.static_features[rows[1]])
    assert meta["timings"]["clips_per_s"] > 0
    assert not (cache.path / "shards").exists()


def test_same_inputs_reuse_the_cache(extracted, small_dataset):
    result, root = extracted
    again = extract_features(make_config(small_dataset, root), show_progress=False)
    assert again.reused and again.cache.path == result.cache.path


@pytest.mark.parametrize(
    "change",
    [
        {"encoder": EncoderConfig(name="tiny3d", options={"input_size": 32, "dim": 32, "width": 8, "seed": 1})},
        {"clips": ClipConfig(stride=1, eval_clips=3)},
    ],
    ids=["encoder-weights", "clip-settings"],
)
def test_a_changed_input_makes_a_new_key(extracted, small_dataset, change):
    result, root = extracted
    other = extract_features(make_config(small_dataset, root, **change), show_progress=False)
    assert not other.reused and other.cache.path != result.cache.path


def test_an_edited_manifest_makes_a_new_key(small_dataset, tmp_path):
    edited = small_dataset.parent / "edited.csv"
    lines = small_dataset.read_text().splitlines()
    edited.write_text("\n".join(lines[:-1]) + "\n")  # drop the broken row


    result = extract_features(make_config(edited, tmp_path), show_progress=False)
    assert result.cache.meta["counts"] == {**result.cache.meta["counts"], "videos": 15, "skipped": 0}
    assert result.cache.meta["manifest"]["file"].endswith("edited.csv")



def test_strict_mode_names_the_failing_row(small_dataset, tmp_path):
    with pytest.raises(ExtractionError, match=r"row 17: videos/broken.mp4: .*strict"):
        extract_features(make_config(small_dataset, tmp_path, strict=True), show_progress=False)


def test_interrupted_extraction_resumes_and_matches(small_dataset, extracted, tmp_path):
    with pytest.raises(ExtractionInterrupted):
        extract_features(make_config(small_dataset, tmp_path), show_progress=False, stop_after_shards=2)
    (key_dir,) = tmp_path.iterdir()
    with pytest.raises(CacheError, match="has not finished"):
        FeatureCache.open(key_dir)
    assert len(list((key_dir / "shards").glob("*.json"))) == 2
    resumed = extract_features(make_config(small_dataset, tmp_path), show_progress=False)
    assert resumed.shards_resumed == 2 and resumed.shards_encoded == 2
    reference = extracted[0].cache
    assert torch.equal(resumed.cache.clip_video, reference.clip_video)
    assert torch.allclose(resumed.cache.clip_features.float(), reference.clip_features.float(), atol=1e-3)
    assert resumed.cache.meta["counts"] == reference.meta["counts"]


def test_info_json_and_damaged_meta(extracted, tmp_path, capsys):
    from aam_search.cli import main

    result, _ = extracted
    assert main(["features", "info", str(result.cache.path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["skipped"] == 1 and shown["skipped_videos"][0]["path"] == "videos/broken.mp4"
    broken = tmp_path / "broken-cache"
    broken.mkdir()
    (broken / "meta.json").write_text("{")
    assert main(["features", "info", str(broken)]) == 2
    assert "meta.json: damaged" in capsys.readouterr().err
