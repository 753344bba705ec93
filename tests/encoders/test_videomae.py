from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from aam_search.encoders import EncoderError, FrozenEncoder, build_encoder

pytest.importorskip("transformers")

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "num_frames": 8,
    "tubelet_size": 2,
}


@pytest.fixture(scope="module")
def temporal() -> FrozenEncoder:
    return build_encoder("videomae", {"config": TINY})


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    return torch.randn(3, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))


def test_temporal_pooling_gives_one_token_per_tubelet_step(temporal: FrozenEncoder, clips: torch.Tensor) -> None:
    assert (temporal.dim, temporal.input_size, temporal.num_frames) == (32, 32, 8)
    tokens = temporal.encode(clips)
    assert tokens.shape == (3, 4, 32)
    assert tokens.dtype == torch.float32
    assert not temporal.module.training
    assert not any(p.requires_grad for p in temporal.module.parameters())


def test_mean_and_none_pooling(temporal: FrozenEncoder, clips: torch.Tensor) -> None:
    mean = build_encoder("videomae", {"config": TINY, "pool": "mean"}).encode(clips)
    patches = build_encoder("videomae", {"config": TINY, "pool": "none"}).encode(clips)
    assert mean.shape == (3, 1, 32)
    assert patches.shape == (3, 4 * 16, 32)
    # all three pool the same seeded model, in (time, row, column) patch order
    assert torch.allclose(mean[:, 0], temporal.encode(clips).mean(dim=1), atol=1e-5)
    assert torch.allclose(patches.reshape(3, 4, 16, 32).mean(dim=2), temporal.encode(clips), atol=1e-5)


def test_fingerprint_is_stable_for_a_seed(temporal: FrozenEncoder) -> None:
    again = build_encoder("videomae", {"config": TINY})
    assert again.fingerprint() == temporal.fingerprint()
    assert build_encoder("videomae", {"config": TINY, "seed": 1}).fingerprint() != temporal.fingerprint()


def test_saved_model_loads_with_identical_outputs(
    temporal: FrozenEncoder, clips: torch.Tensor, tmp_path: Path
) -> None:
    temporal.module.model.save_pretrained(tmp_path)
    loaded = build_encoder("videomae", {"model": str(tmp_path)})
    assert (loaded.dim, loaded.input_size, loaded.num_frames) == (32, 32, 8)
    assert loaded.mean == (0.485, 0.456, 0.406)  # no preprocessor config saved: ImageNet
    assert torch.equal(loaded.encode(clips), temporal.encode(clips))


def test_missing_model_raises_encoder_error_with_the_cause(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match="cannot load model"):
        build_encoder("videomae", {"model": str(tmp_path / "no-such-model")})


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "exactly one"),
        ({"config": TINY, "model": "x"}, "exactly one"),
        ({"config": TINY, "pool": "max"}, "pool"),
        ({"config": {**TINY, "hidden_size": 30}}, "config"),  # not divisible by the heads
    ],
)
def test_bad_options_raise_encoder_error(options: dict, fragment: str) -> None:
    with pytest.raises(EncoderError, match=fragment):
        build_encoder("videomae", options)


def test_missing_transformers_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(EncoderError, match=r"pip install 'aam-search\[transformers\]'"):
        build_encoder("videomae", {"config": TINY})
