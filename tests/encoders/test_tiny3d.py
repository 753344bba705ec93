from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from aam_search.encoders import EncoderError, FrozenEncoder, build_encoder

SMALL = {"dim": 24, "width": 6, "input_size": 32, "num_frames": 8}


@pytest.fixture(scope="module")
def small() -> FrozenEncoder:
    return build_encoder("tiny3d", SMALL)


def square_clip(positions: list[int], size: int = 32, colour=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """A grey clip with an 8x8 square whose left edge is at positions[t] in frame t."""
    clip = torch.full((3, len(positions), size, size), 0.5)
    for t, left in enumerate(positions):
        clip[:, t, 12:20, left : left + 8] = torch.tensor(colour).view(3, 1, 1)
    return clip.unsqueeze(0)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize(
    ("options", "clip_shape", "token_shape"),
    [
        ({}, (2, 3, 16, 64, 64), (2, 4, 128)),
        (SMALL, (3, 3, 8, 32, 32), (3, 2, 24)),
    ],
)
def test_output_is_one_token_per_four_frames(options: dict, clip_shape: tuple, token_shape: tuple) -> None:
    encoder = build_encoder("tiny3d", options)
    tokens = encoder.encode(torch.randn(clip_shape))
    assert tokens.shape == token_shape
    assert tokens.dtype == torch.float32
    assert torch.isfinite(tokens).all()
    # kaiming init + max pooling keep features O(1) per element, not vanishing or exploding
    assert 0.1 < tokens.pow(2).mean().sqrt().item() < 10


def test_same_options_give_identical_weights_regardless_of_global_rng() -> None:
    torch.manual_seed(1)
    first = build_encoder("tiny3d", SMALL)
    state_before = torch.get_rng_state()
    torch.manual_seed(2)
    second = build_encoder("tiny3d", SMALL)
    for (name, a), (_, b) in zip(first.module.state_dict().items(), second.module.state_dict().items()):
        assert torch.equal(a, b), name
    assert first.fingerprint() == second.fingerprint()
    torch.manual_seed(1)
    build_encoder("tiny3d", SMALL)
    assert torch.equal(torch.get_rng_state(), state_before), "building must not consume the caller's RNG"


def test_fingerprint_is_the_same_in_a_fresh_process(small: FrozenEncoder) -> None:
    code = (
        "from aam_search.encoders import build_encoder;"
        f"print(build_encoder('tiny3d', {SMALL!r}).fingerprint())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == small.fingerprint()


def test_seed_and_weight_changes_change_the_fingerprint(small: FrozenEncoder) -> None:
    other_seed = build_encoder("tiny3d", {**SMALL, "seed": 1})
    assert other_seed.fingerprint() != small.fingerprint()

    edited = build_encoder("tiny3d", SMALL)
    before = edited.fingerprint()
    assert edited.fingerprint() == before  # cached, stable
    with torch.no_grad():
        edited.module.features[0].weight[0, 0, 0, 0, 0] += 1e-3
    assert dataclasses.replace(edited).fingerprint() != before


def test_identity_records_what_the_cache_needs(small: FrozenEncoder) -> None:
    identity = small.identity()
    assert identity == {
        "name": "tiny3d",
        "options": SMALL,
        "dim": 24,
        "input_size": 32,
        "num_frames": 8,
        "fingerprint": small.fingerprint(),
    }


def test_encoder_is_frozen(small: FrozenEncoder) -> None:
    assert not small.module.training
    assert all(not p.requires_grad for p in small.module.parameters())
    with torch.enable_grad():
        tokens = small.encode(torch.randn(1, 3, 8, 32, 32, requires_grad=True))
    assert not tokens.requires_grad


@pytest.mark.parametrize("shape", [(2, 3, 8, 32, 31), (2, 3, 4, 32, 32), (2, 1, 8, 32, 32), (3, 8, 32, 32)])
def test_wrong_input_shape_names_the_expected_shape(small: FrozenEncoder, shape: tuple) -> None:
    with pytest.raises(EncoderError) as info:
        small.encode(torch.zeros(shape))
    assert "[N, 3, 8, 32, 32]" in str(info.value)
    assert str(list(shape)) in str(info.value)


@pytest.mark.parametrize(("option", "value"), [("input_size", 30), ("num_frames", 6), ("dim", 0), ("width", "wide")])
def test_bad_option_values_are_named(option: str, value: object) -> None:
    with pytest.raises(EncoderError, match=option):
        build_encoder("tiny3d", {**SMALL, option: value})


def test_dim_must_leave_channels_for_the_last_layer() -> None:
    with pytest.raises(EncoderError, match="dim"):
        build_encoder("tiny3d", {**SMALL, "dim": 18, "width": 6})


def test_features_see_motion_and_its_direction(small: FrozenEncoder) -> None:
    still = small.encode(small.normalize(square_clip([12] * 8)))
    rightward = [4 + 3 * t for t in range(8)]
    moving = small.encode(small.normalize(square_clip(rightward)))
    backward = small.encode(small.normalize(square_clip(rightward[::-1])))
    assert relative_difference(still, moving) > 0.2
    # same frames in reverse order: only the direction of motion differs
    assert relative_difference(moving.flip(1), backward) > 0.2


def test_features_see_appearance(small: FrozenEncoder) -> None:
    red = small.encode(small.normalize(square_clip([12] * 8, colour=(1.0, 0.0, 0.0))))
    blue = small.encode(small.normalize(square_clip([12] * 8, colour=(0.0, 0.0, 1.0))))
    assert relative_difference(red, blue) > 0.2


def test_normalize_uses_the_encoder_mean_and_std(small: FrozenEncoder) -> None:
    clip = torch.ones(1, 3, 8, 32, 32)
    expected = [(1 - m) / s for m, s in zip(small.mean, small.std)]
    assert torch.allclose(small.normalize(clip)[0, :, 0, 0, 0], torch.tensor(expected))
