"""torchvision's video models, random weights at small inputs; weights from safetensors or torchvision's cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aam_search.encoders import EncoderError, FrozenEncoder, build_encoder, known_encoders
from aam_search.encoders import torchvision_video
from aam_search.encoders.torchvision_compat import import_torchvision

if import_torchvision() is None:
    pytest.skip("torchvision is not installed (pip install 'aam-search[torchvision]')", allow_module_level=True)

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
# name, options for a small input, frames, expected (time tokens, dim)
SMALL = [
    ("r3d_18", {"input_size": 32}, 16, (2, 512)),
    ("r2plus1d_18", {"input_size": 32}, 16, (2, 512)),
    ("mc3_18", {"input_size": 32}, 16, (16, 512)),
    ("s3d", {"input_size": 64}, 16, (2, 1024)),
    ("swin3d_t", {"input_size": 64, "num_frames": 4}, 4, (2, 768)),
]


def clips(frames: int, size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, frames, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def r3d() -> FrozenEncoder:
    return build_encoder("r3d_18", {"input_size": 32})


def test_all_six_are_registered() -> None:
    assert {"r3d_18", "r2plus1d_18", "mc3_18", "s3d", "mvit_v2_s", "swin3d_t"} <= set(known_encoders())


@pytest.mark.parametrize(("name", "options", "frames", "expected"), SMALL, ids=[row[0] for row in SMALL])
def test_temporal_tokens_on_small_inputs(name: str, options: dict, frames: int, expected: tuple) -> None:
    encoder = build_encoder(name, options)
    tokens = encoder.encode(clips(frames, options["input_size"]))
    assert tokens.shape == (2, *expected) and tokens.dtype == torch.float32
    assert torch.isfinite(tokens).all()
    assert encoder.dim == expected[1] and encoder.num_frames == frames
    assert not any(p.requires_grad for p in encoder.module.parameters())
    assert encoder.mean == (KINETICS_MEAN if name != "swin3d_t" else (0.485, 0.456, 0.406))


def test_default_input_sizes_follow_the_weights_transforms() -> None:
    assert build_encoder("r3d_18").input_size == 112
    assert build_encoder("s3d").input_size == 224


def test_mvit_keeps_eight_time_steps_and_fixed_input() -> None:
    encoder = build_encoder("mvit_v2_s")
    assert (encoder.input_size, encoder.num_frames, encoder.mean) == (224, 16, (0.45, 0.45, 0.45))
    assert encoder.encode(clips(16, 224, n=1)).shape == (1, 8, 768)
    with pytest.raises(EncoderError, match="exactly 16 frames of 224 px"):
        build_encoder("mvit_v2_s", {"input_size": 112})


def test_mean_and_none_pooling_agree_with_temporal(r3d: FrozenEncoder) -> None:
    x = clips(16, 32)
    temporal = r3d.encode(x)
    mean = build_encoder("r3d_18", {"input_size": 32, "pool": "mean"}).encode(x)
    every = build_encoder("r3d_18", {"input_size": 32, "pool": "none"}).encode(x)
    assert every.shape == (2, 2 * 2 * 2, 512)  # T/8 x H/16 x W/16
    assert torch.allclose(mean[:, 0], temporal.mean(dim=1), atol=1e-5)
    assert torch.allclose(every.reshape(2, 2, 4, 512).mean(dim=2), temporal, atol=1e-5)


def test_safetensors_weights_load_and_seed_matters(r3d: FrozenEncoder, tmp_path: Path) -> None:
    file = tmp_path / "r3d.safetensors"
    save_file(r3d.module.model.state_dict(), str(file))
    other = build_encoder("r3d_18", {"input_size": 32, "seed": 1})
    assert other.fingerprint() != r3d.fingerprint()
    loaded = build_encoder("r3d_18", {"input_size": 32, "seed": 1, "weights": str(file)})
    assert torch.equal(loaded.encode(clips(16, 32)), r3d.encode(clips(16, 32)))


def test_wrong_architecture_names_the_mismatched_keys(r3d: FrozenEncoder, tmp_path: Path) -> None:
    file = tmp_path / "r3d.safetensors"
    save_file(r3d.module.model.state_dict(), str(file))
    # mc3_18 has r3d_18's key names, but 1x3x3 kernels after its first block
    with pytest.raises(EncoderError, match=r"do not fit.*shape mismatch \['layer2\.0\.conv1\.0\.weight: file \(128, 64, 3, 3, 3\)"):
        build_encoder("mc3_18", {"input_size": 32, "weights": str(file)})
    with pytest.raises(EncoderError, match=r"missing keys \['classifier\.1\.bias', .*'features\..*unexpected keys \['fc\.bias'"):
        build_encoder("s3d", {"input_size": 64, "weights": str(file)})


def test_enum_weights_come_only_from_torchvision_cache(
    r3d: FrozenEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(EncoderError, match=r"not in torchvision's cache .*r3d_18-b3b3357e\.pth.*nothing is downloaded"):
        build_encoder("r3d_18", {"weights": "KINETICS400_V1"})
    # a cached file whose hash matches its name: read with torch.load(weights_only=True)
    staged = tmp_path / "staged.pth"
    torch.save(r3d.module.model.state_dict(), staged)
    prefix = hashlib.sha256(staged.read_bytes()).hexdigest()[:8]
    cached = tmp_path / "torch" / "hub" / "checkpoints" / f"r3d_18-{prefix}.pth"
    cached.parent.mkdir(parents=True)
    staged.rename(cached)
    monkeypatch.setattr(torchvision_video, "cached_weights_file", lambda url: cached)
    loaded = build_encoder("r3d_18", {"input_size": 32, "seed": 5, "weights": "DEFAULT"})
    assert torch.equal(loaded.encode(clips(16, 32)), r3d.encode(clips(16, 32)))
    damaged = cached.with_name("r3d_18-00000000.pth")
    cached.rename(damaged)
    monkeypatch.setattr(torchvision_video, "cached_weights_file", lambda url: damaged)
    with pytest.raises(EncoderError, match="is damaged"):
        build_encoder("r3d_18", {"input_size": 32, "weights": "DEFAULT"})


class NotATensor:
    pass


def test_cached_pickle_with_objects_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staged = tmp_path / "staged.pth"
    torch.save({"payload": NotATensor()}, staged)
    cached = tmp_path / f"r3d_18-{hashlib.sha256(staged.read_bytes()).hexdigest()[:8]}.pth"
    staged.rename(cached)
    monkeypatch.setattr(torchvision_video, "cached_weights_file", lambda url: cached)
    with pytest.raises(EncoderError, match="cannot read .*Weights only load failed|cannot read"):
        build_encoder("r3d_18", {"input_size": 32, "weights": "DEFAULT"})


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"weights": "model.pth"}, r"one of \['KINETICS400_V1', 'DEFAULT'\].*or a \.safetensors file"),
        ({"weights": "missing.safetensors"}, "not found"),
        ({"pool": "max"}, "pool"),
        ({"input_size": 0}, "input_size"),
    ],
)
def test_bad_options(options: dict, fragment: str) -> None:
    with pytest.raises(EncoderError, match=fragment):
        build_encoder("r3d_18", options)
