"""Task heads pre-trained once per study: every trial of a study pre-trains the same heads
on the same raw features (same cache, seed and settings), so the first one stores them next
to the feature cache and the others load them.

``<cache>/heads/<key>.safetensors``; the key hashes the head settings, the seed and the
cache's key. safetensors only (nothing is unpickled); a file that cannot be read or does not
fit the heads is retrained with a warning, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from aam_search.features.cache import FeatureCache
from aam_search.trainer.heads import pretrain_heads
from aam_search.trainer.model import TaskHeads

HEADS_FOLDER = "heads"
HEADS_FORMAT = 1  # bump when pretrain_heads changes what the same settings produce
HeadsSource = Literal["cached", "trained", "untrained"]


def heads_key(cache: FeatureCache, heads: TaskHeads, *, epochs: int, lr: float, seed: int) -> str:
    settings = {"format": HEADS_FORMAT, "cache_key": cache.meta["key"], "dim": cache.dim,
                "tasks": heads.num_classes, "epochs": epochs, "lr": lr, "seed": seed}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def heads_path(cache: FeatureCache, key: str) -> Path:
    return Path(cache.path) / HEADS_FOLDER / f"{key}.safetensors"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _load(heads: TaskHeads, path: Path) -> bool:
    """Load ``path`` into ``heads`` when it holds exactly their tensors; else warn, False."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as error:
        _warn(f"{path}: cached task heads unreadable ({error}); training them again")
        return False
    expected = heads.state_dict()
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if shapes != {k: tuple(v.shape) for k, v in expected.items()}:
        _warn(f"{path}: cached task heads do not fit these heads ({sorted(shapes)}); training them again")
        return False
    heads.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    return True


def _store(heads: TaskHeads, path: Path) -> None:
    """Atomically (tmp + replace), so a reader never sees half a file; a read-only cache
    folder only costs the next trial the pre-training."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        _warn(f"{path}: cannot store the pre-trained task heads ({error.strerror or error})")


def pretrained_heads(heads: TaskHeads, cache: FeatureCache, *, epochs: int, lr: float, seed: int,
                     store: bool = True) -> HeadsSource:
    """Fill ``heads`` with the study's pre-trained heads: loaded when stored, else trained
    (and stored when ``store``: rank 0 only). Which of the two goes in result.json."""
    if epochs == 0 or not heads.num_classes:
        return "untrained"
    path = heads_path(cache, heads_key(cache, heads, epochs=epochs, lr=lr, seed=seed))
    if path.is_file() and _load(heads, path):
        return "cached"
    # Initialised from the seed alone (not from whatever the trial built first), so the
    # stored heads are a function of their key.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in heads.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
        pretrain_heads(heads, cache, epochs=epochs, lr=lr, seed=seed)
    if store:
        _store(heads, path)
    return "trained"


__all__ = ["HEADS_FOLDER", "heads_key", "heads_path", "pretrained_heads"]
