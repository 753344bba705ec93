import csv
from pathlib import Path

import pytest

from aam_search.data.synth import synthesize
from aam_search.features.config import ClipConfig, EncoderConfig, ExtractConfig

ENCODER = EncoderConfig(name="tiny3d", options={"input_size": 32, "dim": 32, "width": 8})


def _append_rows(manifest: Path, rows: list[dict]) -> None:
    with open(manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        existing = list(reader)
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(existing + rows)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """12 real H.264 videos, 3 images and one truncated video, as one manifest."""
    root = tmp_path_factory.mktemp("synth")
    report = synthesize(root, 12, seed=3, images=3, frames=24, size=32)
    good = root / "videos" / sorted(p.name for p in (root / "videos").iterdir())[0]
    (root / "videos" / "broken.mp4").write_bytes(good.read_bytes()[:300])
    _append_rows(report.manifest, [{"path": "videos/broken.mp4", "split": "train", "action": "jump",
                                    "attr:skin_dark": "1", "attr:female": "0", "attr:striped": "0",
                                    "attr:outdoor": "1", "group:gender": "male"}])
    return report.manifest


def make_config(manifest: Path, cache_root: Path, **changes) -> ExtractConfig:
    values = dict(manifest=manifest, cache_root=cache_root, encoder=ENCODER,
                  clips=ClipConfig(stride=1), batch_size=8, shard_videos=4, decode_workers=1)
    values.update(changes)
    return ExtractConfig(**values)


@pytest.fixture(scope="session")
def small_cache(small_dataset, tmp_path_factory):
    """The extracted feature cache of ``small_dataset`` (tiny3d at 32 px, dim 32)."""
    from aam_search.features.extract import extract_features

    root = tmp_path_factory.mktemp("small-cache")
    return extract_features(make_config(small_dataset, root), show_progress=False).cache


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The suite runs many small fits on a 2-core machine; more intra-op threads than
    cores only thrash (one attacker fit: 22 s with 2 threads under load, 1.3 s with 1)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
