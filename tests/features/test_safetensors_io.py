import pytest
import torch
from safetensors.torch import load_file

from aam_search.features.safetensors_io import (
    SafetensorsFormatError,
    TensorLayout,
    mmap_tensors,
    write_streaming,
)


def _pieces(a, b):
    yield "a", a[:3]
    yield "a", a[3:]
    yield "b", b


def test_streamed_file_is_valid_safetensors_and_memory_mapped(tmp_path):
    a = torch.randn(7, 2, 5).half()
    b = torch.arange(7, dtype=torch.int64)
    path = write_streaming(
        tmp_path / "f.safetensors",
        [TensorLayout("a", torch.float16, (7, 2, 5)), TensorLayout("b", torch.int64, (7,))],
        _pieces(a, b),
        metadata={"note": "x"},
    )
    reference = load_file(str(path))  # the official reader accepts our layout
    assert torch.equal(reference["a"], a) and torch.equal(reference["b"], b)
    mapped = mmap_tensors(path)
    assert torch.equal(mapped["a"], a) and torch.equal(mapped["b"], b)
    # Copy-on-write mapping: a write stays in this process and never alters the file.
    mapped["b"].add_(1)
    assert torch.equal(load_file(str(path))["b"], b)
    assert torch.equal(mmap_tensors(path)["b"], b)
    assert not (tmp_path / "f.safetensors.tmp").exists()


def test_pieces_out_of_order_or_short_are_refused(tmp_path):
    layouts = [TensorLayout("a", torch.float32, (2,)), TensorLayout("b", torch.float32, (2,))]
    with pytest.raises(SafetensorsFormatError, match="out of layout order"):
        write_streaming(tmp_path / "x", layouts, iter([("b", torch.zeros(2)), ("a", torch.zeros(2))]))
    with pytest.raises(SafetensorsFormatError, match="incompletely"):
        write_streaming(tmp_path / "y", layouts, iter([("a", torch.zeros(2)), ("b", torch.zeros(1))]))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_damaged_header_is_reported_with_the_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((10).to_bytes(8, "little") + b"{not json}")
    with pytest.raises(SafetensorsFormatError, match="bad.safetensors: header is not JSON"):
        mmap_tensors(path)
    path.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    with pytest.raises(SafetensorsFormatError, match="exceeds file"):
        mmap_tensors(path)
