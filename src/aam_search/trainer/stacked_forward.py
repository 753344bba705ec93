"""K stacked adapters and task heads run forward as batched matmuls, with plain autograd.

``torch.func.vmap`` over ``functional_call`` computes the same thing, but attention then runs
on the math kernel (the fused kernels have no batching rule): thousands of tiny matmuls, twice
the fused kernel's time on a CPU, and every op goes through functorch's transforms. Written
out, a member's linear is one slice of a ``baddbmm``, attention folds the members into the
batch of one fused ``scaled_dot_product_attention`` call, and each member's gradient comes from
``autograd.grad`` of the members' summed losses (a member's loss depends on its slice only).

The math is that of ``model.AnonymizingAdapter`` and ``model.TaskHeads`` (nn.MultiheadAttention
with its packed q, k, v projection, pre-norm LayerNorm, exact GELU); parameters are the
``[K, ...]`` tensors ``torch.func.stack_module_state`` makes, under the modules' own names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aam_search.trainer.model import AnonymizingAdapter, TaskHeads, mean_pool


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``[K, R, I] -> [K, R, O]``: member k's rows through ``nn.Linear`` with weight ``[O, I]``."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def stacked_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """``nn.LayerNorm`` over the last dim of ``[K, R, D]``, with member k's affine ``[D]``."""
    return torch.addcmul(bias.unsqueeze(1), F.layer_norm(x, x.shape[-1:], eps=eps), weight.unsqueeze(1))


def _norm(x: Tensor, params: dict[str, Tensor], prefix: str, eps: float) -> Tensor:
    return stacked_layer_norm(x, params[prefix + "weight"], params[prefix + "bias"], eps)


def _attention(x: Tensor, p: dict[str, Tensor], prefix: str, heads: int, tokens: int, dropout: float) -> Tensor:
    members, rows, dim = x.shape
    qkv = stacked_linear(x, p[prefix + "in_proj_weight"], p[prefix + "in_proj_bias"])
    # [K, N * L, 3D] -> three [K * N, heads, L, D / heads]: members and clips are one batch
    qkv = qkv.view(members * (rows // tokens), tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=dropout)
    attended = attended.transpose(1, 2).reshape(members, rows, dim)
    return stacked_linear(attended, p[prefix + "out_proj.weight"], p[prefix + "out_proj.bias"])


def _ffn(x: Tensor, p: dict[str, Tensor], prefix: str, dropout: float) -> Tensor:
    hidden = F.gelu(stacked_linear(x, p[prefix + "0.weight"], p[prefix + "0.bias"]))
    hidden = F.dropout(hidden, dropout, training=dropout > 0)
    return stacked_linear(hidden, p[prefix + "3.weight"], p[prefix + "3.bias"])


def adapter_forward(base: AnonymizingAdapter, params: dict[str, Tensor], tokens: Tensor, training: bool) -> Tensor:
    """``[K, N, L, D] -> [K, N, L, D]``: member k's clips through member k's adapter.

    ``base`` gives the architecture only (it may live on the meta device); ``params`` holds the
    adapter's stacked parameters under its own names (``blocks.0.attn.in_proj_weight``, ...).
    """
    members, clips, length, dim = tokens.shape
    dropout = base.config.dropout if training else 0.0
    x = tokens.reshape(members, clips * length, dim)
    for i, block in enumerate(base.blocks):
        prefix = f"blocks.{i}."
        if base.config.kind == "attention":
            normed = _norm(x, params, prefix + "attn_norm.", block.attn_norm.eps)
            x = x + _attention(normed, params, prefix + "attn.", base.config.heads, length, dropout)
            normed = _norm(x, params, prefix + "ffn_norm.", block.ffn_norm.eps)
        else:
            normed = _norm(x, params, prefix + "norm.", block.norm.eps)
        x = x + _ffn(normed, params, prefix + "ffn.", dropout)
    return x.view(members, clips, length, dim)


def heads_forward(base: TaskHeads, params: dict[str, Tensor], tokens: Tensor) -> dict[str, Tensor]:
    """``[K, N, L, D] ->`` each task's ``[K, N, classes]`` logits on mean-pooled tokens."""
    pooled = mean_pool(tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2])
    return {task: stacked_linear(pooled, params[f"heads.{key}.weight"], params[f"heads.{key}.bias"])
            for task, key in base.keys_by_task.items()}


__all__ = ["adapter_forward", "heads_forward", "stacked_layer_norm", "stacked_linear"]
