"""Adapter checkpoints: exact round trips, and refusal of anything that is not ours, unpickled never."""

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from aam_search.trainer.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from aam_search.trainer.model import AdapterConfig, TaskHeads, build_adapter

DIM = 16


def _trained_like(kind: str = "attention", seed: int = 0):
    """An adapter and heads whose weights are all non-trivial (a fresh adapter is the identity)."""
    torch.manual_seed(seed)
    adapter = build_adapter(DIM, AdapterConfig(kind=kind, layers=2, heads=4, ffn_mult=2.0))
    heads = TaskHeads(DIM, {"action": 5, "task:scene": 3})
    with torch.no_grad():
        for module in (adapter, heads):
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return adapter.eval(), heads.eval()


@pytest.mark.parametrize("kind", ["attention", "mlp"])
def test_round_trip_gives_identical_outputs(tmp_path, kind):
    adapter, heads = _trained_like(kind)
    tokens = torch.randn(3, 4, DIM)
    with torch.no_grad():
        expected = adapter(tokens)
        expected_heads = heads(expected)
    assert not torch.allclose(expected, tokens)  # not the identity, so the test means something
    info = {"cache_key": "abc123", "action_classes": ["a", "b", "c", "d", "e"], "encoder": {"name": "tiny3d"}}
    path = save_checkpoint(tmp_path / "adapter.safetensors", adapter, heads, info)
    assert path.is_file()
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was moved into place

    loaded = load_checkpoint(path)
    assert not loaded.adapter.training
    assert loaded.adapter.dim == DIM and loaded.adapter.config == adapter.config
    with torch.no_grad():
        assert torch.equal(loaded.adapter(tokens), expected)
        got_heads = loaded.heads(expected)
    assert loaded.heads.num_classes == {"action": 5, "task:scene": 3}
    assert set(got_heads) == set(expected_heads)
    for task in expected_heads:
        assert torch.equal(got_heads[task], expected_heads[task])
    for name, value in adapter.state_dict().items():
        assert torch.equal(loaded.adapter.state_dict()[name], value), name
    assert loaded.info["format"] == CHECKPOINT_FORMAT
    assert loaded.info["cache_key"] == "abc123"
    assert loaded.info["action_classes"] == info["action_classes"]
    assert loaded.info["encoder"] == {"name": "tiny3d"}


def test_round_trip_without_heads(tmp_path):
    adapter, _ = _trained_like()
    path = save_checkpoint(tmp_path / "a.safetensors", adapter, None)
    loaded = load_checkpoint(path)
    assert loaded.heads is None
    tokens = torch.randn(2, 3, DIM)
    with torch.no_grad():
        assert torch.equal(loaded.adapter(tokens), adapter(tokens))


def test_overwriting_a_checkpoint_replaces_it(tmp_path):
    first, heads = _trained_like(seed=1)
    second, _ = _trained_like(seed=2)
    path = tmp_path / "adapter.safetensors"
    save_checkpoint(path, first, heads)
    save_checkpoint(path, second, heads)
    tokens = torch.randn(2, 3, DIM)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path).adapter(tokens), second(tokens))


def _assert_refused(path, match: str | None = None) -> CheckpointError:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)
    if match:
        assert match in str(caught.value)
    return caught.value


def test_missing_file(tmp_path):
    _assert_refused(tmp_path / "absent.safetensors", "no such checkpoint")
    _assert_refused(tmp_path)  # a folder is not a checkpoint either


def test_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path))  # valid safetensors, not ours
    _assert_refused(path, "not an aam-search adapter checkpoint")
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    _assert_refused(path, "not an aam-search adapter checkpoint")


ADAPTER = {"kind": "attention", "layers": 2, "heads": 4, "ffn_mult": 2.0, "dropout": 0.0}  # _trained_like's


@pytest.mark.parametrize(
    "description",
    [
        "not json",
        json.dumps({"format": "someone-else/1", "dim": DIM, "adapter": ADAPTER}),
        json.dumps({"format": CHECKPOINT_FORMAT, "adapter": ADAPTER}),  # no dim
        json.dumps({"format": CHECKPOINT_FORMAT, "dim": "wide", "adapter": ADAPTER}),
        json.dumps({"format": CHECKPOINT_FORMAT, "dim": DIM, "adapter": {**ADAPTER, "kind": "conv"}}),
        # 5 heads do not divide 16 channels
        json.dumps({"format": CHECKPOINT_FORMAT, "dim": DIM, "adapter": {**ADAPTER, "heads": 5}}),
        json.dumps({"format": CHECKPOINT_FORMAT, "dim": DIM, "adapter": [ADAPTER]}),
        json.dumps([CHECKPOINT_FORMAT]),  # JSON, but not an object
        json.dumps({"format": CHECKPOINT_FORMAT, "dim": DIM, "adapter": ADAPTER, "heads": ["action"]}),
        json.dumps({"format": CHECKPOINT_FORMAT, "dim": DIM, "adapter": ADAPTER, "heads": {"action": 0}}),
        json.dumps({"format": CHECKPOINT_FORMAT, "dim": DIM, "adapter": ADAPTER, "heads": {"action": "five"}}),
    ],
)
def test_bad_description_is_refused(tmp_path, description):
    adapter, heads = _trained_like()
    path = tmp_path / "adapter.safetensors"
    tensors = {f"adapter.{k}": v.contiguous() for k, v in adapter.state_dict().items()}
    tensors.update({f"heads.{k}": v.contiguous() for k, v in heads.state_dict().items()})
    save_file(tensors, str(path), metadata={"aam_search": description})
    _assert_refused(path)


def test_description_check_is_not_vacuous(tmp_path):
    """The same tensors with a correct description load: the refusals above are about the description."""
    adapter, heads = _trained_like()
    path = tmp_path / "adapter.safetensors"
    tensors = {f"adapter.{k}": v.contiguous() for k, v in adapter.state_dict().items()}
    tensors.update({f"heads.{k}": v.contiguous() for k, v in heads.state_dict().items()})
    description = {"format": CHECKPOINT_FORMAT, "dim": DIM, "adapter": ADAPTER,
                   "heads": {"action": 5, "task:scene": 3}}
    save_file(tensors, str(path), metadata={"aam_search": json.dumps(description)})
    loaded = load_checkpoint(path)
    assert loaded.heads is not None and loaded.heads.num_classes == {"action": 5, "task:scene": 3}


def test_weights_that_do_not_match_the_description_are_refused(tmp_path):
    adapter, heads = _trained_like()
    path = save_checkpoint(tmp_path / "adapter.safetensors", adapter, heads)
    # Rewrite it with one adapter tensor missing and one head of the wrong shape.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    dropped = dict(tensors)
    dropped.pop(next(k for k in tensors if k.startswith("adapter.")))
    save_file(dropped, str(path), metadata=metadata)
    _assert_refused(path, "adapter")

    wrong = dict(tensors)
    head_key = next(k for k in tensors if k.startswith("heads.") and k.endswith("weight"))
    wrong[head_key] = torch.zeros(7, DIM)
    save_file(wrong, str(path), metadata=metadata)
    _assert_refused(path, "heads")


@pytest.mark.parametrize("cut", [0, 7, 100, -10])
def test_damaged_file_is_refused(tmp_path, cut):
    adapter, heads = _trained_like()
    good = save_checkpoint(tmp_path / "good.safetensors", adapter, heads)
    data = good.read_bytes()
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(data[:cut])
    _assert_refused(damaged)


def test_garbage_bytes_are_refused(tmp_path):
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(os.urandom(4096))
    _assert_refused(path)
    path.write_bytes(b"\xff" * 8 + b"{}")  # a header length far past the end of the file
    _assert_refused(path)


class _Booby:
    """Unpickling this creates a marker folder: proof that someone ran pickle on our input."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_renamed_safetensors_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(pickle.dumps({"adapter": _Booby(str(marker))}))
    # Sanity: the booby trap works when pickle does run.
    pickle.loads(pickle.dumps(_Booby(str(tmp_path / "trap-check"))))
    assert (tmp_path / "trap-check").is_dir()

    _assert_refused(path)
    assert not marker.exists()


def test_torch_save_file_renamed_safetensors_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "adapter.safetensors"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "trap": _Booby(str(marker))}, path)
    _assert_refused(path)
    assert not marker.exists()
