from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aam_search.encoders import EncoderError, FrozenEncoder, build_encoder, known_encoders, register_encoder


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def test_builtins_are_registered() -> None:
    assert {"tiny3d", "videomae"} <= set(known_encoders())


def test_unknown_name_lists_known_encoders() -> None:
    with pytest.raises(EncoderError) as info:
        build_encoder("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    assert "tiny3d" in message and "videomae" in message


def test_plugin_returning_pooled_vector_gets_one_token(plugins: None) -> None:
    encoder = build_encoder("plugin_encoder:pooled", {"dim": 6, "input_size": 16})
    assert (encoder.name, encoder.options) == ("plugin_encoder:pooled", {"dim": 6, "input_size": 16})
    assert (encoder.dim, encoder.input_size, encoder.num_frames) == (6, 16, None)
    assert encoder.mean == (0.5, 0.5, 0.5)
    assert not any(p.requires_grad for p in encoder.module.parameters())
    tokens = encoder.encode(torch.rand(3, 3, 5, 16, 16))  # num_frames None: any T
    assert tokens.shape == (3, 1, 6)
    assert tokens.dtype == torch.float32


def test_plugin_options_change_the_fingerprint(plugins: None) -> None:
    small = build_encoder("plugin_encoder:pooled", {"dim": 6})
    large = build_encoder("plugin_encoder:pooled", {"dim": 7})
    assert small.fingerprint() != large.fingerprint()


def test_plugin_missing_dim_is_named(plugins: None) -> None:
    with pytest.raises(EncoderError, match="'dim'"):
        build_encoder("plugin_encoder:missing_dim")


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("nomodule:x", "nomodule"),
        ("plugin_encoder:nothing_here", "nothing_here"),
        ("plugin_encoder:", "package.module:factory"),
        ("plugin_encoder:not_a_module", "int"),
        ("plugin_encoder:broken", "weights file is corrupt"),
    ],
)
def test_bad_plugin_paths_raise_encoder_error(plugins: None, path: str, fragment: str) -> None:
    with pytest.raises(EncoderError, match=fragment):
        build_encoder(path)


def test_unknown_option_is_named() -> None:
    with pytest.raises(EncoderError, match="colour_depth"):
        build_encoder("tiny3d", {"colour_depth": 3})


def test_options_must_be_json() -> None:
    with pytest.raises(EncoderError, match="JSON"):
        build_encoder("tiny3d", {"seed": object()})


def test_wrong_output_shape_is_reported() -> None:
    encoder = FrozenEncoder(
        name="flat", options={}, module=torch.nn.Flatten(), dim=4, input_size=2, num_frames=1
    )
    with pytest.raises(EncoderError, match=r"expected \[2, L, 4\]"):
        encoder.encode(torch.zeros(2, 3, 1, 2, 2))


def test_register_encoder_rejects_a_second_factory_under_a_taken_name() -> None:
    with pytest.raises(EncoderError, match="already registered"):

        @register_encoder("tiny3d")
        def impostor() -> FrozenEncoder:  # pragma: no cover - never called
            raise AssertionError
