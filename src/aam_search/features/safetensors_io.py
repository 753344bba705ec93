"""Streaming writes and memory-mapped reads of safetensors files.

The cache's consolidated feature file can be larger than memory at paper scale, so it is
written from shards piece by piece and read back with ``numpy.memmap``: opening it costs
no copy, and a trial touches only the rows it batches. The format is the public
safetensors layout (little-endian u64 header length, JSON header, raw data), and files
written here load with ``safetensors.torch.load_file`` too. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aam_search.errors import AamSearchError

_DTYPE_TO_CODE = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}
_CODE_TO_NUMPY = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "U8": np.uint8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "BOOL": np.bool_,
}


class SafetensorsFormatError(AamSearchError, ValueError):
    """A file that is not a well-formed safetensors file."""


@dataclass(frozen=True)
class TensorLayout:
    """Name, dtype and shape of one tensor to be written in pieces along dim 0."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def write_streaming(
    path: str | Path,
    layouts: list[TensorLayout],
    pieces: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a safetensors file whose tensors arrive as pieces, in layout order.

    ``pieces`` yields ``(name, chunk)`` pairs; the chunks of each tensor are concatenated
    along dim 0 and must arrive tensor by tensor in the order of ``layouts``. The file is
    written to a temporary name and renamed, so a crash never leaves a half file behind.
    """
    path = Path(path)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for layout in layouts:
        if layout.dtype not in _DTYPE_TO_CODE:
            raise SafetensorsFormatError(f"{layout.name}: unsupported dtype {layout.dtype}")
        header[layout.name] = {
            "dtype": _DTYPE_TO_CODE[layout.dtype],
            "shape": list(layout.shape),
            "data_offsets": [offset, offset + layout.nbytes],
        }
        offset += layout.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # data starts 8-byte aligned

    tmp = path.with_name(path.name + ".tmp")
    expected = {layout.name: layout.nbytes for layout in layouts}
    order = [layout.name for layout in layouts]
    written = dict.fromkeys(order, 0)
    position = 0
    with open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for name, chunk in pieces:
            if name not in expected:
                raise SafetensorsFormatError(f"piece for unknown tensor {name!r}")
            while position < len(order) and written[order[position]] == expected[order[position]]:
                position += 1
            if position >= len(order) or order[position] != name:
                raise SafetensorsFormatError(f"piece for {name!r} arrived out of layout order")
            data = chunk.detach().contiguous().cpu()
            if data.dtype != _layout_dtype(layouts, name):
                raise SafetensorsFormatError(f"{name}: piece dtype {data.dtype} != layout dtype")
            raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
            written[name] += len(raw)
            if written[name] > expected[name]:
                raise SafetensorsFormatError(f"{name}: more data than its shape holds")
            handle.write(raw)
        short = [n for n in order if written[n] != expected[n]]
        if short:
            raise SafetensorsFormatError(f"tensors written incompletely: {short}")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def _layout_dtype(layouts: list[TensorLayout], name: str) -> torch.dtype:
    return next(layout.dtype for layout in layouts if layout.name == name)


def read_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """Return (tensor entries, metadata, data start offset) after validating the header."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw_len = handle.read(8)
        if len(raw_len) != 8:
            raise SafetensorsFormatError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > size - 8 or header_len > 100_000_000:
            raise SafetensorsFormatError(f"{path}: header length {header_len} exceeds file")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SafetensorsFormatError(f"{path}: header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    for name, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            code = entry["dtype"]
            shape = [int(s) for s in entry["shape"]]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsFormatError(f"{path}: malformed entry for {name!r}") from None
        if code not in _CODE_TO_NUMPY:
            raise SafetensorsFormatError(f"{path}: {name!r} has unsupported dtype {code}")
        count = int(np.prod(shape)) if shape else 1
        if end - begin != count * np.dtype(_CODE_TO_NUMPY[code]).itemsize:
            raise SafetensorsFormatError(f"{path}: {name!r} size does not match its shape")
        if data_start + end > size:
            raise SafetensorsFormatError(f"{path}: {name!r} lies past the end of the file")
    return header, metadata, data_start


def mmap_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Open every tensor of a safetensors file memory-mapped (no copy; writes stay private)."""
    header, _, data_start = read_header(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = _CODE_TO_NUMPY[entry["dtype"]]
        shape = tuple(int(s) for s in entry["shape"])
        if end == begin:
            tensors[name] = torch.from_numpy(np.zeros(shape, dtype=dtype))
            continue
        # Copy-on-write: pages are shared with the file until written; a write (which
        # on a read-only mapping would crash the process) stays private and never
        # reaches the cache on disk.
        array = np.memmap(path, dtype=dtype, mode="c", offset=data_start + begin, shape=shape)
        tensors[name] = torch.from_numpy(array)
    return tensors
