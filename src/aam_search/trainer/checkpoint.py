"""Adapter checkpoints: safetensors weights plus a JSON description in its metadata.

Loading rebuilds the modules from that description and copies tensors in; nothing is
unpickled, so a checkpoint handed over by anyone is safe to open.

A checkpoint may also hold a linear eraser (``eraser.*`` tensors, described under
``"eraser"``); then :attr:`LoadedCheckpoint.adapter` is the adapter followed by the eraser,
so everything that applies a loaded checkpoint (``load_adapter``, ``anonymize``, the
MLflow pyfunc, promotion's test evaluation) applies what the trial measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aam_search.errors import AamSearchError
from aam_search.trainer.eraser import ErasedAdapter, LinearEraser, eraser_from_tensors, eraser_tensors
from aam_search.trainer.model import AdapterConfig, AnonymizingAdapter, TaskHeads, build_adapter

CHECKPOINT_FORMAT = "aam-search/adapter/1"


class CheckpointError(AamSearchError, ValueError):
    """A checkpoint that is missing, not ours, or inconsistent; the message names the file."""


@dataclass
class LoadedCheckpoint:
    adapter: AnonymizingAdapter | ErasedAdapter  # what users apply: the AAM, then the eraser if stored
    heads: TaskHeads | None
    info: dict[str, Any]
    aam: AnonymizingAdapter | None = None  # the trained network alone
    eraser: LinearEraser | None = None


def save_checkpoint(
    path: str | Path,
    adapter: AnonymizingAdapter,
    heads: TaskHeads | None,
    info: dict[str, Any] | None = None,
    eraser: LinearEraser | None = None,
) -> Path:
    path = Path(path)
    tensors = {f"adapter.{k}": v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    if eraser is not None:
        if eraser.dim != adapter.dim:
            raise ValueError(f"eraser width {eraser.dim} does not match the adapter's {adapter.dim}")
        tensors.update(eraser_tensors(eraser))
    head_classes: dict[str, int] = {}
    if heads is not None:
        tensors.update({f"heads.{k}": v.detach().cpu().contiguous() for k, v in heads.state_dict().items()})
        head_classes = dict(heads.num_classes)
    description = {
        "format": CHECKPOINT_FORMAT,
        "dim": adapter.dim,
        "adapter": adapter.config.model_dump(mode="json"),
        "heads": head_classes,
        **(info or {}),
    }
    if eraser is not None:
        description["eraser"] = eraser.info
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"aam_search": json.dumps(description)})
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> LoadedCheckpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt", device=map_location) as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        description = json.loads(metadata["aam_search"])
        if description.get("format") != CHECKPOINT_FORMAT:
            raise KeyError("format")
        adapter = build_adapter(int(description["dim"]), AdapterConfig(**description["adapter"]))
        heads = None
        if description.get("heads"):
            heads = TaskHeads(int(description["dim"]), {k: int(v) for k, v in description["heads"].items()})
        eraser = None
        if description.get("eraser") is not None:
            eraser = eraser_from_tensors(tensors, dict(description["eraser"]))
            if eraser.dim != adapter.dim:
                raise ValueError(f"eraser width {eraser.dim} does not match the adapter's {adapter.dim}")
    except (AttributeError, KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        # AttributeError: valid JSON of the wrong shape (a list where an object belongs).
        raise CheckpointError(f"{path}: not an aam-search adapter checkpoint ({error})") from None
    _load_prefixed(adapter, tensors, "adapter.", path)
    if heads is not None:
        _load_prefixed(heads, tensors, "heads.", path)
    adapter.eval()
    applied = adapter if eraser is None else ErasedAdapter(adapter, eraser).eval()
    return LoadedCheckpoint(adapter=applied, heads=heads, info=description, aam=adapter, eraser=eraser)


def _load_prefixed(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match the described {prefix[:-1]} ({error})") from None
