"""A closed-form linear eraser of the ``attr:`` labels, fitted after the adapter (LEACE).

LEACE (Belrose et al., 2023, "LEACE: Perfect linear concept erasure in closed form"): with
W the whitening map of the features' covariance and P the orthogonal projection onto the
column space of W Sigma_xz (Sigma_xz: the cross-covariance of features and labels), the
map ``x -> x - W^+ P W (x - mean)`` leaves no linear correlation between the features and
any label, so no linear classifier on the erased features beats a constant one; among the
maps that do, it moves the features least (in the whitened norm).

Several feature distributions at once (the static-clip and the moving-clip features, which
an attacker may see either of): the cross-covariance columns of every distribution go into
one P. ``(I - W^+ P W) Sigma_xz = W^+ (I - P) W Sigma_xz = 0`` holds for each of them,
whatever the shared whitening, so the eraser is exact on each.

Tokens: the eraser is fitted on mean-pooled features (what every attacker and probe here
reads) and applied as the same affine map to every token, so it keeps the ``[N, L, D]``
shape; since the map is affine, pooling the erased tokens gives exactly the erased pooled
feature. Single tokens are not guaranteed free of the attributes.

Rows with no known label are left out of the fit; an unknown label of a labelled row is
left out of its attribute's cross-covariance only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

ERASER_PREFIX = "eraser."
SHRINKAGE = 1e-3  # added to every covariance eigenvalue, relative to their mean


class LinearEraser(nn.Module):
    """``x -> x - ((x - mean) @ down) @ up.T`` on the last dimension (per token)."""

    def __init__(self, mean: Tensor, down: Tensor, up: Tensor, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        if mean.dim() != 1 or down.dim() != 2 or down.shape != up.shape or down.shape[0] != mean.shape[0]:
            raise ValueError(f"eraser tensors do not fit together: mean {tuple(mean.shape)}, "
                             f"down {tuple(down.shape)}, up {tuple(up.shape)}")
        self.register_buffer("mean", mean.float().contiguous())
        self.register_buffer("down", down.float().contiguous())
        self.register_buffer("up", up.float().contiguous())
        self.info = dict(info or {})

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def rank(self) -> int:
        return int(self.down.shape[1])

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[-1] != self.dim:
            raise ValueError(f"eraser expects features [..., {self.dim}], got {tuple(features.shape)}")
        x = features.float()
        erased = x - ((x - self.mean) @ self.down) @ self.up.T
        return erased.to(features.dtype)


class ErasedAdapter(nn.Module):
    """The adapter followed by its eraser: what a user of a checkpoint with an eraser applies."""

    def __init__(self, adapter: nn.Module, eraser: LinearEraser) -> None:
        super().__init__()
        if getattr(adapter, "dim", eraser.dim) != eraser.dim:
            raise ValueError(f"eraser width {eraser.dim} does not match the adapter's {adapter.dim}")
        self.adapter, self.eraser = adapter, eraser

    @property
    def dim(self) -> int:
        return self.eraser.dim

    @property
    def config(self) -> Any:
        return getattr(self.adapter, "config", None)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.eraser(self.adapter(tokens))


def _cross_covariance(x: Tensor, labels: Tensor) -> Tensor:
    """``[D, A]``: per attribute, over the rows where it is known (0 where it is constant)."""
    columns = []
    for j in range(labels.shape[1]):
        known = labels[:, j] >= 0
        if int(known.sum()) < 2:
            columns.append(torch.zeros(x.shape[1], dtype=x.dtype, device=x.device))
            continue
        xs, z = x[known], labels[known, j].to(x.dtype)
        columns.append((xs - xs.mean(0)).T @ (z - z.mean()) / (len(z) - 1))
    return torch.stack(columns, dim=1)


def fit_eraser(views: Mapping[str, tuple[Tensor, Tensor]], attr_names: Sequence[str]) -> LinearEraser:
    """Fit one eraser on ``{name: (features [N, D], labels [N, A])}``, one entry per
    distribution it must hold on (labels 0/1, -1 = unknown)."""
    rows: dict[str, tuple[Tensor, Tensor]] = {}
    for name, (x, y) in views.items():
        if x.dim() != 2 or y.dim() != 2 or len(x) != len(y) or y.shape[1] != len(attr_names):
            raise ValueError(f"eraser view {name!r} needs features [N, D] and labels [N, {len(attr_names)}], "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        labelled = (y >= 0).any(dim=1)
        if int(labelled.sum()) >= 2:
            labelled = labelled.to(x.device)
            rows[name] = (x[labelled].double(), y.to(x.device)[labelled])
    if not rows:
        raise ValueError("the eraser needs at least 2 train rows with attr: labels, and there are none")
    everything = torch.cat([x for x, _ in rows.values()])
    mean = everything.mean(0)
    centred = everything - mean
    covariance = centred.T @ centred / max(1, len(everything) - 1)
    values, vectors = torch.linalg.eigh(covariance)
    # Shrinkage towards the mean eigenvalue keeps W invertible when rows < width; exactness
    # holds for any invertible W, and a milder W generalises better to unseen rows.
    values = values.clamp_min(0) + SHRINKAGE * float(values.clamp_min(0).mean().clamp_min(1e-12))
    whiten = vectors @ torch.diag(values.rsqrt()) @ vectors.T
    unwhiten = vectors @ torch.diag(values.sqrt()) @ vectors.T
    cross = torch.cat([_cross_covariance(x, y) for x, y in rows.values()], dim=1)
    left, singular, _ = torch.linalg.svd(whiten @ cross, full_matrices=False)
    basis = left[:, singular > singular.max().clamp_min(1e-30) * 1e-8]
    info = {
        "method": "leace",
        "attrs": list(attr_names),
        "rank": int(basis.shape[1]),
        "fitted_rows": {name: len(x) for name, (x, _) in rows.items()},
        "applies_to": "every token (fitted on mean-pooled features)",
    }
    return LinearEraser(mean, whiten @ basis, unwhiten @ basis, info)


def eraser_tensors(eraser: LinearEraser) -> dict[str, Tensor]:
    """The tensors a checkpoint stores beside the adapter's, under ``eraser.``."""
    return {f"{ERASER_PREFIX}{name}": getattr(eraser, name).detach().cpu().contiguous() for name in ("mean", "down", "up")}


def eraser_from_tensors(tensors: dict[str, Tensor], info: dict[str, Any]) -> LinearEraser:
    try:
        parts = [tensors[f"{ERASER_PREFIX}{name}"] for name in ("mean", "down", "up")]
    except KeyError as missing:
        raise ValueError(f"the described eraser has no tensor {missing}") from None
    return LinearEraser(*parts, info=info)


__all__ = ["ErasedAdapter", "LinearEraser", "eraser_from_tensors", "eraser_tensors", "fit_eraser"]
