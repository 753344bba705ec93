"""The kNN attacker: cosine similarity on standardised features, a similarity-weighted vote of
the ``k`` nearest training rows; ``k`` fixed, or chosen per member by an inner
leave-one-video-out cross-validation on that member's own training rows (``KNN_CANDIDATES``).

Runs on the features' device; only the inner CV's few APs are read back to the host.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from aam_search.trainer.attackers import member_generator, standardization
from aam_search.trainer.resampling import weighted_average_precision

KNN_CANDIDATES = (1, 3, 5, 9, 15, 25)
KNN_CV_ROWS = 4096  # inner CV on at most this many training rows (it is quadratic)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(x, dim=-1)


@torch.no_grad()
def _votes(query: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor, ks: list[int],
           exclude: torch.Tensor | None = None, chunk: int = 2048) -> list[torch.Tensor]:
    """Similarity-weighted vote ``[Q, A]`` of the k nearest labelled ``ref`` rows, for each k."""
    out = [torch.zeros(len(query), labels.shape[1], device=query.device) for _ in ks]
    known_counts = (labels >= 0).sum(0).cpu()  # one read: how many neighbours each attribute has
    for start in range(0, len(query), chunk):
        sims = query[start : start + chunk] @ ref.T
        if exclude is not None:
            sims = sims.masked_fill(exclude[start : start + chunk], float("-inf"))
        for attribute in range(labels.shape[1]):
            known = labels[:, attribute] >= 0
            top = min(max(ks), int(known_counts[attribute]))
            if top == 0:
                continue
            values, index = sims.masked_fill(~known[None], float("-inf")).topk(top, dim=1)
            weight = torch.where(torch.isfinite(values), (1 + values).clamp_min(1e-6), torch.zeros((), device=values.device))
            votes = weight * labels[index, attribute].clamp_min(0).float()
            for slot, k in enumerate(ks):
                k = min(k, top)
                out[slot][start : start + chunk, attribute] = votes[:, :k].sum(1) / weight[:, :k].sum(1).clamp_min(1e-12)
    return out


def _cv_cmap(scores: np.ndarray, labels: np.ndarray) -> float:
    values = []
    for attribute in range(labels.shape[1]):
        keep = labels[:, attribute] >= 0
        y = labels[keep, attribute]
        if keep.any() and y.min() != y.max():
            values.append(float(weighted_average_precision(scores[keep, attribute], y, np.ones((1, len(y))))[0]))
    return float(np.mean(values)) if values else float("nan")


def choose_k(ref: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, generator: torch.Generator) -> int:
    """The candidate k with the best leave-one-video-out cMAP on the training rows themselves."""
    if len(ref) > KNN_CV_ROWS:
        keep = torch.randperm(len(ref), generator=generator)[:KNN_CV_ROWS].to(ref.device)
        ref, labels, owner = ref[keep], labels[keep], owner[keep]
    same_video = owner[:, None] == owner[None, :]
    ks = [k for k in KNN_CANDIDATES if k < len(ref)] or [1]
    scores = _votes(ref, ref, labels, ks, exclude=same_video)
    label_np = labels.cpu().numpy()
    cmaps = [_cv_cmap(s.cpu().double().numpy(), label_np) for s in scores]
    finite = [c if math.isfinite(c) else -1.0 for c in cmaps]
    return ks[int(np.argmax(finite))]  # first best: the smallest k among ties


@torch.no_grad()
def knn_members(x: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor, train: torch.Tensor,
                query: torch.Tensor | list[torch.Tensor], *, k: int | None, seed: int,
                keys: list[tuple[int, ...]] | None = None) -> tuple[torch.Tensor | list[torch.Tensor], list[int]]:
    """kNN scores of each member (reference = its training rows ``train [M, N]``) and its k.

    ``query``: rows ``[Q, D]`` every member scores (scores ``[M, Q, A]``), or a list of each
    member's own query rows (a list of ``[Q_m, A]``). ``keys`` name the members' generators."""
    device = x.device
    keys = keys if keys is not None else [(m,) for m in range(len(train))]
    train, targets, owner = train.to(device), targets.to(device), owner.to(device)
    mean, std = standardization(x, train)
    scores, chosen = [], []
    for member, mask in enumerate(train):
        ref = _unit((x[mask] - mean[member]) / std[member])
        labels = targets[mask]
        member_k = k if k is not None else choose_k(ref, labels, owner[mask], member_generator(seed, keys[member], "knn"))
        chosen.append(member_k)
        rows = query[member] if isinstance(query, list) else query
        scores.append(_votes(_unit((rows - mean[member]) / std[member]), ref, labels, [member_k])[0])
    return (scores if isinstance(query, list) else torch.stack(scores)), chosen
