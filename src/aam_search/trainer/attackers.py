"""The attacker suite: fresh models, trained from scratch, that try to read private attributes.

Kinds (``ATTACKER_KINDS``):

- ``linear``: L2-regularised logistic regression per attribute, full-batch L-BFGS (convex:
  trained to its optimum);
- ``mlp``: the paper's attacker, ``Linear(d,d)-ReLU-Linear(d,A)``;
- ``mlp_deep``: deeper and wider, two hidden layers of ``min(2d, 1024)`` units;
- ``knn``: cosine similarity on standardised features, a similarity-weighted vote of the ``k``
  nearest training rows; ``k`` fixed, or chosen per fit by an inner leave-one-video-out
  cross-validation on that fit's own training rows (``KNN_CANDIDATES``).

One evaluation fits several *members* at once: each has its own training rows and its own
standardisation (the train-then-score attacker, and one per cross-fitted fold). The trained
MLPs' members share one loop: each layer is one batched matmul over all members, each
member draws its own batches, and nothing reads a value back to the host inside the loop
(AdamW, cosine decay to zero over at least ``MIN_STEPS`` steps, ready to run on a GPU
unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from aam_search.trainer.resampling import weighted_average_precision

ATTACKER_KINDS = ("linear", "mlp", "mlp_deep", "knn")
TRAINED_KINDS = ("linear", "mlp", "mlp_deep")
DEEP_HIDDEN_LAYERS = 2
DEEP_MAX_WIDTH = 1024
KNN_CANDIDATES = (1, 3, 5, 9, 15, 25)
KNN_CV_ROWS = 4096  # inner CV on at most this many training rows (it is quadratic)
# Small sets: a few batches per epoch would leave a model untrained. On the demo data the
# paper MLP's cMAP stops moving after 300 steps (static, lr 1e-3: 0.862, 0.890, 0.895 at 150,
# 300, 600 steps); lr 3e-3 reaches at least as much in 300 steps on both protocols (static
# 0.898 / 0.891 for mlp / mlp_deep, clip 0.840 / 0.848) and learns small problems 1e-3 does not.
MIN_STEPS = 300
ATTACK_BATCH = 64
ATTACK_LR = 3e-3
ATTACK_WEIGHT_DECAY = 1e-4
LINEAR_L2 = 1e-2  # on standardised features, as the utility probe
LINEAR_MAX_ITER = 500


def hidden_sizes(kind: str, dim: int) -> list[int]:
    if kind == "linear":
        return []
    if kind == "mlp":
        return [dim]
    if kind == "mlp_deep":
        return [min(2 * dim, DEEP_MAX_WIDTH)] * DEEP_HIDDEN_LAYERS
    raise ValueError(f"unknown attacker kind {kind!r} ({', '.join(TRAINED_KINDS)} are trained; knn is not)")


def make_attacker(kind: str, dim: int, outputs: int) -> nn.Module:
    """One attacker of a trained kind as a plain module (the shape the suite trains)."""
    sizes = [dim, *hidden_sizes(kind, dim), outputs]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1]) if len(layers) > 2 else layers[0]


class StackedMLP(nn.Module):
    """``members`` independent MLPs of one shape, evaluated in one pass: ``[M, B, D] -> [M, B, A]``."""

    def __init__(self, members: int, sizes: list[int], generator: torch.Generator) -> None:
        super().__init__()
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = fan_in**-0.5  # nn.Linear's default initialisation
            self.weights.append(nn.Parameter((torch.rand(members, fan_in, fan_out, generator=generator) * 2 - 1) * bound))
            self.biases.append(nn.Parameter((torch.rand(members, 1, fan_out, generator=generator) * 2 - 1) * bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias, x, weight)
            if index < last:
                x = torch.relu(x)
        return x


def standardization(x: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per member mean and std ``[M, 1, D]`` of the rows ``train [M, N]`` selects."""
    means, stds = [], []
    for mask in train:
        rows = x[mask]
        means.append(rows.mean(0))
        stds.append(rows.std(0).nan_to_num(0.0).clamp_min(1e-6) if len(rows) > 1 else torch.ones(x.shape[1]))
    return torch.stack(means)[:, None], torch.stack(stds)[:, None]


def _index_stream(pools: list[torch.Tensor], batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``[M, batch]`` row indices per step: each member walks through shuffles of its own rows."""
    orders = [pool[torch.randperm(len(pool), generator=generator)] for pool in pools]
    offsets = [0] * len(pools)
    while True:
        rows = []
        for member, pool in enumerate(pools):
            parts, need = [], batch
            while need:
                if offsets[member] == len(orders[member]):
                    orders[member] = pool[torch.randperm(len(pool), generator=generator)]
                    offsets[member] = 0
                part = orders[member][offsets[member] : offsets[member] + need]
                offsets[member] += len(part)
                need -= len(part)
                parts.append(part)
            rows.append(torch.cat(parts))
        yield torch.stack(rows)


def train_members(
    x: torch.Tensor,
    targets: torch.Tensor,
    train: torch.Tensor,
    kinds: tuple[str, ...],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> dict[str, tuple[StackedMLP, torch.Tensor, torch.Tensor]]:
    """Fit every trained kind for every member; returns ``kind -> (model, mean, std)``.

    ``x [N, D]``, ``targets [N, A]`` (-1 = unknown: no loss), ``train [M, N]`` bool (member
    m's training rows, none empty). Binary cross-entropy per attribute, averaged over a
    member's labelled entries of the batch.
    """
    generator = torch.Generator().manual_seed(seed)
    members, dim, outputs = len(train), x.shape[1], targets.shape[1]
    mean, std = standardization(x, train)
    out = {}
    if "linear" in kinds:
        out["linear"] = (_fit_linear(x, targets, train, mean, std, generator), mean, std)
    kinds = tuple(k for k in kinds if k in TRAINED_KINDS and k != "linear")
    if not kinds:
        return out
    models = {kind: StackedMLP(members, [dim, *hidden_sizes(kind, dim), outputs], generator) for kind in kinds}
    parameters = [p for model in models.values() for p in model.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=ATTACK_WEIGHT_DECAY, foreach=True)
    pools = [mask.nonzero().squeeze(1) for mask in train]
    batch = min(batch_size, min(len(pool) for pool in pools))
    total_steps = max(epochs * -(-max(len(pool) for pool in pools) // batch), MIN_STEPS)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    known = (targets >= 0).float()
    labels = targets.clamp_min(0).float()
    stream = _index_stream(pools, batch, generator)
    for _ in range(total_steps):
        index = next(stream)  # [M, B]
        inputs = (x[index] - mean) / std
        weight = known[index]
        per_member = weight.sum((1, 2)).clamp_min(1)
        loss = x.new_zeros(())
        for model in models.values():
            losses = nn.functional.binary_cross_entropy_with_logits(model(inputs), labels[index], reduction="none")
            loss = loss + ((losses * weight).sum((1, 2)) / per_member).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return out | {kind: (model.eval(), mean, std) for kind, model in models.items()}


def _fit_linear(x: torch.Tensor, targets: torch.Tensor, train: torch.Tensor, mean: torch.Tensor,
                std: torch.Tensor, generator: torch.Generator) -> StackedMLP:
    """Every member's logistic regression at once: the members' losses are separate, so one
    full-batch L-BFGS (strong Wolfe) on their sum reaches each one's optimum."""
    model = StackedMLP(len(train), [x.shape[1], targets.shape[1]], generator)
    inputs = (x[None] - mean) / std  # [M, N, D]
    weight = (targets >= 0)[None].float() * train[..., None].float()
    per_member = weight.sum((1, 2)).clamp_min(1)
    labels = targets.clamp_min(0).float()[None].expand(len(train), -1, -1)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=LINEAR_MAX_ITER, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        losses = nn.functional.binary_cross_entropy_with_logits(model(inputs), labels, reduction="none")
        loss = ((losses * weight).sum((1, 2)) / per_member).sum() + 0.5 * LINEAR_L2 * model.weights[0].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model.eval()


@torch.no_grad()
def member_scores(fitted: tuple[StackedMLP, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Scores ``[M, N, A]`` of every member of one fitted kind on rows ``x [N, D]``."""
    model, mean, std = fitted
    return model((x[None] - mean) / std)


# ---------------------------------------------------------------- kNN


def _unit(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(x, dim=-1)


@torch.no_grad()
def _votes(query: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor, ks: list[int],
           exclude: torch.Tensor | None = None, chunk: int = 2048) -> list[torch.Tensor]:
    """Similarity-weighted vote ``[Q, A]`` of the k nearest labelled ``ref`` rows, for each k."""
    out = [torch.zeros(len(query), labels.shape[1]) for _ in ks]
    for start in range(0, len(query), chunk):
        sims = query[start : start + chunk] @ ref.T
        if exclude is not None:
            sims = sims.masked_fill(exclude[start : start + chunk], float("-inf"))
        for attribute in range(labels.shape[1]):
            known = labels[:, attribute] >= 0
            top = min(max(ks), int(known.sum()))
            if top == 0:
                continue
            values, index = sims.masked_fill(~known[None], float("-inf")).topk(top, dim=1)
            weight = torch.where(torch.isfinite(values), (1 + values).clamp_min(1e-6), torch.zeros(()))
            votes = weight * labels[index, attribute].clamp_min(0).float()
            for slot, k in enumerate(ks):
                k = min(k, top)
                out[slot][start : start + chunk, attribute] = votes[:, :k].sum(1) / weight[:, :k].sum(1).clamp_min(1e-12)
    return out


def _cv_cmap(scores: torch.Tensor, labels: torch.Tensor) -> float:
    values = []
    for attribute in range(labels.shape[1]):
        keep = labels[:, attribute] >= 0
        y = labels[keep, attribute].numpy()
        if keep.any() and y.min() != y.max():
            s = scores[keep, attribute].numpy()
            values.append(float(weighted_average_precision(s, y, np.ones((1, len(y))))[0]))
    return float(np.mean(values)) if values else float("nan")


def choose_k(ref: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, generator: torch.Generator) -> int:
    """The candidate k with the best leave-one-video-out cMAP on the training rows themselves."""
    if len(ref) > KNN_CV_ROWS:
        keep = torch.randperm(len(ref), generator=generator)[:KNN_CV_ROWS]
        ref, labels, owner = ref[keep], labels[keep], owner[keep]
    same_video = owner[:, None] == owner[None, :]
    ks = [k for k in KNN_CANDIDATES if k < len(ref)] or [1]
    scores = _votes(ref, ref, labels, ks, exclude=same_video)
    cmaps = [_cv_cmap(s, labels) for s in scores]
    finite = [c if math.isfinite(c) else -1.0 for c in cmaps]
    return ks[int(np.argmax(finite))]  # first best: the smallest k among ties


@torch.no_grad()
def knn_members(x: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor, train: torch.Tensor,
                query: torch.Tensor, *, k: int | None, seed: int) -> tuple[torch.Tensor, list[int]]:
    """kNN scores ``[M, Q, A]`` of each member (reference = its training rows) and its k."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = standardization(x, train)
    scores, chosen = [], []
    for member, mask in enumerate(train):
        ref = _unit((x[mask] - mean[member]) / std[member])
        labels = targets[mask]
        member_k = k if k is not None else choose_k(ref, labels, owner[mask], generator)
        chosen.append(member_k)
        scores.append(_votes(_unit((query - mean[member]) / std[member]), ref, labels, [member_k])[0])
    return torch.stack(scores), chosen
