"""``hf`` (any transformers video model) and ``vjepa2``: tiny random configs, no downloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aam_search.encoders import EncoderError, FrozenEncoder, build_encoder, known_encoders
from aam_search.encoders import hf

pytest.importorskip("transformers")

COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
TIMESFORMER = {"model_type": "timesformer", **COMMON, "image_size": 32, "patch_size": 8, "num_frames": 4}
VIDEOMAE = {"model_type": "videomae", **COMMON, "image_size": 32, "patch_size": 8, "num_frames": 8, "tubelet_size": 2}
VJEPA2 = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "mlp_ratio": 2.0, "crop_size": 32,
          "patch_size": 8, "frames_per_clip": 8, "tubelet_size": 2, "pred_hidden_size": 16,
          "pred_num_hidden_layers": 1, "pred_num_attention_heads": 2}


def clips(frames: int, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, frames, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def timesformer() -> FrozenEncoder:
    return build_encoder("hf", {"config": TIMESFORMER})


@pytest.fixture(scope="module")
def vjepa2() -> FrozenEncoder:
    return build_encoder("vjepa2", {"config": VJEPA2})


def test_registered() -> None:
    assert {"hf", "vjepa2"} <= set(known_encoders())


def test_timesformer_one_token_per_frame_without_cls(timesformer: FrozenEncoder) -> None:
    assert (timesformer.dim, timesformer.input_size, timesformer.num_frames) == (32, 32, 4)
    temporal = timesformer.encode(clips(4))
    assert temporal.shape == (3, 4, 32)
    every = build_encoder("hf", {"config": TIMESFORMER, "pool": "none"}).encode(clips(4))
    assert every.shape == (3, 1 + 16 * 4, 32)  # [CLS], then patches in (row, column, time) order
    assert torch.allclose(every[:, 1:].reshape(3, 16, 4, 32).mean(dim=1), temporal, atol=1e-5)
    mean = build_encoder("hf", {"config": TIMESFORMER, "pool": "mean"}).encode(clips(4))
    assert torch.allclose(mean[:, 0], every[:, 1:].mean(dim=1), atol=1e-5)


def test_hf_videomae_matches_the_videomae_encoder() -> None:
    config = {k: v for k, v in VIDEOMAE.items() if k != "model_type"}
    ours = build_encoder("hf", {"config": VIDEOMAE}).encode(clips(8))
    reference = build_encoder("videomae", {"config": config}).encode(clips(8))
    assert ours.shape == (3, 4, 32)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_vjepa2_runs_the_encoder_only_with_time_major_tubelets(vjepa2: FrozenEncoder) -> None:
    assert (vjepa2.dim, vjepa2.input_size, vjepa2.num_frames) == (32, 32, 8)
    temporal = vjepa2.encode(clips(8))
    assert temporal.shape == (3, 4, 32)  # 8 frames / tubelet 2
    every = build_encoder("vjepa2", {"config": VJEPA2, "pool": "none"}).encode(clips(8))
    assert every.shape == (3, 4 * 16, 32)
    assert torch.allclose(every.reshape(3, 4, 16, 32).mean(dim=2), temporal, atol=1e-5)
    assert vjepa2.module.extra == {"skip_predictor": True}


@pytest.mark.parametrize("name", ["hf", "vjepa2"])
def test_saved_model_folder_loads_with_identical_outputs(
    name: str, timesformer: FrozenEncoder, vjepa2: FrozenEncoder, tmp_path: Path
) -> None:
    encoder = timesformer if name == "hf" else vjepa2
    encoder.module.model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = build_encoder(name, {"model": str(tmp_path)})
    frames = encoder.num_frames
    assert torch.equal(loaded.encode(clips(frames)), encoder.encode(clips(frames)))
    assert loaded.fingerprint() != encoder.fingerprint()  # options differ: model path vs config


def test_wrong_architecture_names_the_missing_keys(timesformer: FrozenEncoder, tmp_path: Path) -> None:
    timesformer.module.model.save_pretrained(tmp_path)
    with pytest.raises(EncoderError, match=r"do not fit VJEPA2Model: missing keys \['encoder\."):
        build_encoder("vjepa2", {"model": str(tmp_path)})


def test_pickled_weights_are_never_loaded(timesformer: FrozenEncoder, tmp_path: Path) -> None:
    timesformer.module.model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(timesformer.module.model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle
    with pytest.raises(EncoderError, match="cannot load model folder"):
        build_encoder("hf", {"model": str(tmp_path)})


def test_unknown_hub_id_says_nothing_downloads_and_how_to_point_at_a_folder() -> None:
    with pytest.raises(EncoderError, match=r"nothing can be downloaded here.*hf download nobody/no-such-video-model "
                                           r"--local-dir DIR.*pass model=DIR"):
        build_encoder("hf", {"model": "nobody/no-such-video-model"})


def test_temporal_pool_needs_a_known_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(hf.TOKEN_LAYOUTS, "timesformer")
    with pytest.raises(EncoderError, match="pool='temporal' needs the token layout.*use pool='mean' or 'none'"):
        build_encoder("hf", {"config": TIMESFORMER})
    assert build_encoder("hf", {"config": TIMESFORMER, "pool": "mean"}).encode(clips(4)).shape == (3, 1, 32)


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("hf", {}, "exactly one"),
        ("hf", {"config": {"hidden_size": 32}}, "model_type"),
        ("hf", {"config": TIMESFORMER, "pool": "max"}, "pool"),
        ("vjepa2", {"config": {**VJEPA2, "hidden_size": 30}}, "config"),
    ],
)
def test_bad_options(name: str, options: dict, fragment: str) -> None:
    with pytest.raises(EncoderError, match=fragment):
        build_encoder(name, options)
