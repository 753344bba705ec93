"""User plug-in encoders for the dotted-path tests (imported as ``plugin_encoder:...``)."""

from __future__ import annotations

import torch
from torch import nn


class PooledColourEncoder(nn.Module):
    """Returns one pooled vector per clip ([N, D]), like many clip-level encoders."""

    def __init__(self, dim: int, input_size: int) -> None:
        super().__init__()
        self.dim = dim
        self.input_size = input_size
        self.num_frames = None
        self.mean = (0.5, 0.5, 0.5)
        self.std = (0.5, 0.5, 0.5)
        self.project = nn.Linear(3, dim)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.project(clips.mean(dim=(2, 3, 4)))


def pooled(dim: int = 8, input_size: int = 16) -> nn.Module:
    return PooledColourEncoder(dim, input_size)


class _NoDim(nn.Module):
    input_size = 16

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.mean(dim=(2, 3, 4))


def missing_dim() -> nn.Module:
    return _NoDim()


def not_a_module() -> int:
    return 42


def broken() -> nn.Module:
    raise RuntimeError("weights file is corrupt")
