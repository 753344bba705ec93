"""The linear (LEACE) eraser: its guarantee, its per-token action, and that every consumer of a
checkpoint applies it (load_checkpoint, load_adapter, anonymize, the MLflow pyfunc)."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aam_search.trainer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from aam_search.trainer.eraser import ErasedAdapter, LinearEraser, fit_eraser
from aam_search.trainer.model import AdapterConfig, build_adapter

DIM = 16
NAMES = ["a", "b", "c"]


def _views(n: int = 400, seed: int = 0):
    """Two distributions (think static and moving clips) that both encode three binary labels."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, 3, generator=g) > 0.5).long()
    static = torch.randn(n, DIM, generator=g) + labels.float() @ torch.randn(3, DIM, generator=g) * 2
    clip = 0.5 * torch.randn(n, DIM, generator=g) + labels.float() @ torch.randn(3, DIM, generator=g)
    return {"static": (static, labels), "clip": (clip, labels.clone())}


def _max_covariance(features: torch.Tensor, labels: torch.Tensor) -> float:
    worst = 0.0
    for j in range(labels.shape[1]):
        known = labels[:, j] >= 0
        x, z = features[known].double(), labels[known, j].double()
        worst = max(worst, float(((x - x.mean(0)).T @ (z - z.mean())).abs().max() / len(z)))
    return worst


def _linear_probe_accuracy(train_x, train_z, eval_x, eval_z) -> float:
    """Least-squares linear classifier: the simplest fresh linear attacker."""
    ones = lambda x: torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.double)], 1)  # noqa: E731
    weights = torch.linalg.lstsq(ones(train_x), train_z.double() * 2 - 1).solution
    return float(((ones(eval_x) @ weights > 0).long() == eval_z).float().mean())


def test_erased_features_have_no_covariance_with_any_label_in_any_view():
    views = _views()
    eraser = fit_eraser(views, NAMES)
    for features, labels in views.values():
        assert _max_covariance(features, labels) > 0.1
        assert _max_covariance(eraser(features), labels) < 1e-5
    assert eraser.rank == 6  # 3 attributes x 2 views
    assert eraser.info["fitted_rows"] == {"static": 400, "clip": 400}


def test_a_fresh_linear_attacker_drops_to_chance_on_unseen_rows():
    everything = _views(n=1200)
    eraser = fit_eraser({name: (x[:400], z[:400]) for name, (x, z) in everything.items()}, NAMES)
    x, z = everything["static"]  # rows 400-799 train the attacker, 800-1199 score it
    z_train, z_eval = z[400:800, 0], z[800:, 0]
    assert _linear_probe_accuracy(x[400:800], z_train, x[800:], z_eval) > 0.8
    erased = eraser(x)
    assert _linear_probe_accuracy(erased[400:800], z_train, erased[800:], z_eval) < 0.6


def test_unlabelled_rows_are_left_out_of_the_fit():
    views = _views()
    noisy = {name: (torch.cat([x, torch.randn(50, DIM) * 10]), torch.cat([z, torch.full((50, 3), -1)]))
             for name, (x, z) in views.items()}
    a, b = fit_eraser(views, NAMES), fit_eraser(noisy, NAMES)
    probe = torch.randn(7, DIM)
    assert torch.allclose(a(probe), b(probe), atol=1e-4)
    assert b.info["fitted_rows"] == {"static": 400, "clip": 400}


def test_a_partly_unknown_label_is_erased_on_its_known_rows():
    views = _views()
    x, z = views["static"]
    z = z.clone()
    z[:150, 1] = -1
    eraser = fit_eraser({"static": (x, z)}, NAMES)
    known = z[:, 1] >= 0
    assert _max_covariance(eraser(x)[known], z[known][:, 1:2]) < 1e-5


def test_no_labelled_rows_is_a_clear_error():
    x = torch.randn(10, DIM)
    with pytest.raises(ValueError, match="attr: labels"):
        fit_eraser({"static": (x, torch.full((10, 3), -1))}, NAMES)


def test_per_token_map_keeps_the_shape_and_commutes_with_mean_pooling():
    eraser = fit_eraser(_views(), NAMES)
    tokens = torch.randn(5, 4, DIM)
    erased = eraser(tokens)
    assert erased.shape == tokens.shape
    assert torch.allclose(erased.mean(1), eraser(tokens.mean(1)), atol=1e-5)
    assert eraser(tokens.half()).dtype == torch.half  # computed in float32, returned as given


def _adapter():
    torch.manual_seed(0)
    adapter = build_adapter(DIM, AdapterConfig(layers=1, heads=4, ffn_mult=2.0))
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return adapter.eval()


@pytest.fixture
def erased_checkpoint(tmp_path):
    adapter = _adapter()
    eraser = fit_eraser(_views(), NAMES)
    path = save_checkpoint(tmp_path / "adapter.safetensors", adapter, None, {"cache_key": "k"}, eraser=eraser)
    return path, adapter, eraser


def _expected(adapter, eraser, tokens):
    with torch.no_grad():
        return eraser(adapter(tokens))


def test_checkpoint_stores_the_eraser_beside_the_adapter(erased_checkpoint):
    path, adapter, eraser = erased_checkpoint
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        description = json.loads(handle.metadata()["aam_search"])
    assert {"eraser.mean", "eraser.down", "eraser.up"} <= keys
    assert any(key.startswith("adapter.") for key in keys)
    assert description["eraser"]["method"] == "leace" and description["eraser"]["attrs"] == NAMES
    assert description["eraser"]["rank"] == eraser.rank

    loaded = load_checkpoint(path)
    tokens = torch.randn(3, 4, DIM)
    assert isinstance(loaded.adapter, ErasedAdapter) and not loaded.adapter.training
    assert loaded.adapter.dim == DIM and loaded.adapter.config == adapter.config
    with torch.no_grad():
        assert torch.allclose(loaded.adapter(tokens), _expected(adapter, eraser, tokens), atol=1e-6)
        assert torch.allclose(loaded.aam(tokens), adapter(tokens), atol=1e-6)


def test_checkpoint_without_eraser_loads_the_bare_adapter(tmp_path):
    adapter = _adapter()
    loaded = load_checkpoint(save_checkpoint(tmp_path / "a.safetensors", adapter, None))
    assert loaded.eraser is None and loaded.adapter is loaded.aam
    assert "eraser" not in loaded.info


def test_a_described_eraser_without_its_tensors_is_refused(erased_checkpoint, tmp_path):
    path, _, _ = erased_checkpoint
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = {k: v for k, v in load_file(str(path)).items() if k != "eraser.up"}
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=metadata)
    with pytest.raises(CheckpointError, match="eraser"):
        load_checkpoint(broken)


def test_an_eraser_of_the_wrong_width_is_refused(tmp_path):
    narrow = LinearEraser(torch.zeros(8), torch.zeros(8, 1), torch.zeros(8, 1), {"method": "leace"})
    with pytest.raises(ValueError, match="width"):
        save_checkpoint(tmp_path / "a.safetensors", _adapter(), None, eraser=narrow)


def test_load_adapter_and_anonymize_apply_the_eraser(erased_checkpoint, tmp_path):
    from aam_search.tracking.adapter import anonymize_file, load_adapter

    path, adapter, eraser = erased_checkpoint
    tokens = torch.randn(6, 4, DIM)
    with torch.no_grad():
        assert torch.allclose(load_adapter(path)(tokens), _expected(adapter, eraser, tokens), atol=1e-6)
    source = tmp_path / "feats.safetensors"
    save_file({"features": tokens}, str(source))
    anonymize_file(str(path), source, tmp_path / "anon.safetensors")
    written = load_file(str(tmp_path / "anon.safetensors"))["features"]
    assert torch.allclose(written, _expected(adapter, eraser, tokens), atol=1e-6)


def test_the_pyfunc_applies_the_eraser(erased_checkpoint):
    pytest.importorskip("mlflow")
    from aam_search.tracking.pyfunc import AdapterModel

    path, adapter, eraser = erased_checkpoint
    model = AdapterModel()
    model.load_context(SimpleNamespace(artifacts={"adapter": str(path)}, model_config={}))
    tokens = torch.randn(4, 3, DIM)
    out = model.predict(None, tokens.numpy())
    assert torch.allclose(torch.from_numpy(out), _expected(adapter, eraser, tokens), atol=1e-6)
