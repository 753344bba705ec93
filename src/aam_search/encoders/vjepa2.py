"""``vjepa2``: V-JEPA 2 (``transformers.VJEPA2Model``) as a frozen encoder.

Only the context encoder runs (``skip_predictor=True``); its ``last_hidden_state`` has no
[CLS] token and patches in (time, row, column) order, one time step per tubelet of 2 frames,
so ``pool='temporal'`` gives ``frames_per_clip / tubelet_size`` tokens. Options as for ``hf``:
``model`` (local folder or cached hub id, e.g. ``facebook/vjepa2-vitl-fpc64-256``) or
``config`` (``VJEPA2Config`` fields, random weights from ``seed``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .hf import build_hf_encoder
from .registry import FrozenEncoder, register_encoder

_NAME = "vjepa2"


def _random_vjepa2(transformers: Any, config: dict[str, Any]) -> nn.Module:
    return transformers.VJEPA2Model(transformers.VJEPA2Config(**config))


@register_encoder(_NAME)
def build_vjepa2(
    model: str | None = None,
    config: dict[str, Any] | None = None,
    pool: str = "temporal",
    seed: int = 0,
) -> FrozenEncoder:
    """A frozen V-JEPA 2 encoder: ``model`` (path or cached hub id) or ``config`` (random weights)."""
    return build_hf_encoder(_NAME, lambda t: t.VJEPA2Model, _random_vjepa2, model, config, pool, seed)
