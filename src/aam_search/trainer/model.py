"""The Anonymizing Adapter Module (f_A) and the small heads trained beside it.

f_A sits on the frozen encoder's output tokens ``[B, L, D]`` and keeps their shape, so
it can be bolted onto the encoder in any downstream job. Every residual branch ends in a
zero-initialised projection, which makes a freshly built adapter exactly the identity:
the paper pre-trains f_A to the identity with an L1 loss; a zero-initialised residual
gives the same starting point with no extra training phase and no approximation error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from torch import Tensor, nn

from aam_search.features.config import ConfigError


class AdapterConfig(BaseModel, extra="forbid", frozen=True, strict=True):
    """Shape of f_A. The paper's best: 3 self-attention layers, 8 heads."""

    kind: Literal["attention", "mlp"] = "attention"
    layers: int = Field(default=3, ge=1)
    heads: int = Field(default=8, ge=1, description="attention only; must divide the feature dim")
    ffn_mult: float = Field(default=4.0, gt=0, description="FFN / MLP hidden width as a multiple of dim")
    dropout: float = Field(default=0.0, ge=0, lt=1)


def check_heads(dim: int, config: AdapterConfig) -> None:
    """An attention adapter's heads must divide the feature width (each head gets width / heads)."""
    if config.kind == "attention" and dim % config.heads != 0:
        divisors = [n for n in range(1, min(dim, 64) + 1) if dim % n == 0]
        raise ConfigError(
            f"adapter.heads={config.heads} does not divide the feature width {dim} "
            f"(each head gets width / heads channels); choose one of {divisors}"
        )


def mean_pool(tokens: Tensor) -> Tensor:
    """``[B, L, D] -> [B, D]``: the clip-level feature every head and the projector see."""
    if tokens.dim() != 3:
        raise ValueError(f"expected tokens of shape [batch, tokens, dim], got {tuple(tokens.shape)}")
    return tokens.mean(dim=1)


def _hidden_width(dim: int, ffn_mult: float) -> int:
    return max(1, round(dim * ffn_mult))


def _zero_(linear: nn.Linear) -> None:
    nn.init.zeros_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class _AttentionBlock(nn.Module):
    """Pre-norm transformer encoder block; both branches start at exactly zero."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        # Only the LAST projection of each branch is zeroed: its weight gradient is
        # (branch input)^T @ (upstream grad), non-zero, so the branch still learns.
        _zero_(self.attn.out_proj)
        _zero_(self.ffn[-1])

    def forward(self, tokens: Tensor) -> Tensor:
        normed = self.attn_norm(tokens)
        attended, _ = self.attn(normed, normed, normed, need_weights=False)
        tokens = tokens + attended
        return tokens + self.ffn(self.ffn_norm(tokens))


class _MLPBlock(nn.Module):
    """Per-token residual MLP (the paper's MLP ablation); no mixing across tokens."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        _zero_(self.ffn[-1])

    def forward(self, tokens: Tensor) -> Tensor:
        return tokens + self.ffn(self.norm(tokens))


class AnonymizingAdapter(nn.Module):
    """f_A: ``[B, L, D] -> [B, L, D]``, the identity when freshly built.

    No final LayerNorm (it would break the identity start) and no position embedding
    (the encoder's tokens already carry their time order). L may be 1 (pooled encoders).
    """

    def __init__(self, dim: int, config: AdapterConfig) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.config = config
        hidden = _hidden_width(dim, config.ffn_mult)
        if config.kind == "attention":
            check_heads(dim, config)
            blocks = [_AttentionBlock(dim, config.heads, hidden, config.dropout) for _ in range(config.layers)]
        else:
            blocks = [_MLPBlock(dim, hidden, config.dropout) for _ in range(config.layers)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.dim:
            raise ValueError(f"expected tokens [batch, tokens, {self.dim}], got {tuple(tokens.shape)}")
        for block in self.blocks:
            tokens = block(tokens)
        return tokens


def build_adapter(dim: int, config: AdapterConfig) -> AnonymizingAdapter:
    return AnonymizingAdapter(dim, config)


def _head_key(task: str) -> str:
    """Injective escape of a task name into a ModuleDict key ('.' and ':' are not safe there).

    '_' becomes '__', so '_d' / '_c' can only come from an escaped '.' / ':'.
    """
    return "t_" + task.replace("_", "__").replace(".", "_d").replace(":", "_c")


class TaskHeads(nn.Module):
    """One linear head per utility task ("action", "task:<name>") on mean-pooled tokens."""

    def __init__(self, dim: int, num_classes: dict[str, int]) -> None:
        super().__init__()
        for task, classes in num_classes.items():
            if classes < 1:
                raise ValueError(f"task {task!r} needs >= 1 class, got {classes}")
        self.num_classes = dict(num_classes)
        self._keys = {task: _head_key(task) for task in num_classes}
        self.heads = nn.ModuleDict({self._keys[t]: nn.Linear(dim, c) for t, c in num_classes.items()})

    @property
    def keys_by_task(self) -> dict[str, str]:
        """Each task's key in ``heads`` (its parameters are ``heads.<key>.weight`` / ``.bias``)."""
        return dict(self._keys)

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        pooled = mean_pool(tokens)
        return {task: self.heads[key](pooled) for task, key in self._keys.items()}


class PrivacyProjector(nn.Module):
    """SimCLR projection head g: pooled ``[B, D] -> [B, proj_dim]`` (Linear-ReLU-Linear)."""

    def __init__(self, dim: int, proj_dim: int = 128, hidden: int | None = None) -> None:
        super().__init__()
        hidden = dim if hidden is None else hidden
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, proj_dim))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.net(pooled)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "AdapterConfig",
    "AnonymizingAdapter",
    "PrivacyProjector",
    "TaskHeads",
    "build_adapter",
    "check_heads",
    "count_parameters",
    "mean_pool",
]
