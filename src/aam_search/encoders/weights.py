"""Checking a state dict against a model before loading it, with the mismatched keys named."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .registry import EncoderError


def describe_keys(missing: list[str], unexpected: list[str], mismatched: list[str], shown: int = 5) -> str:
    """'missing keys [...] (+N more); unexpected keys [...]; shape mismatch [...]'."""
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)):
        if keys:
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{label} {sorted(keys)[:shown]}{more}")
    return "; ".join(parts)


def load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], name: str, source: str) -> None:
    """``module.load_state_dict(state)`` once every key and shape matches, else an EncoderError naming them."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        raise EncoderError(
            f"encoder {name!r}: weights {source} do not fit this architecture: "
            f"{describe_keys(missing, unexpected, mismatched)}"
        )
    module.load_state_dict(state)
