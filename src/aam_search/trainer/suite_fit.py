"""Fitting the attacker suite for every protocol and fit of one evaluation in one batch.

A *member* is one attacker fit: its training rows and the rows it scores. Each protocol has
a train-then-score member (trained on the train split, scoring the evaluation split) and, for
the cross-fit, one member per fold (trained on the other folds, scoring its own fold). Every
member of every protocol is trained at once, per kind (``attackers.train_members``: stacked
models, one loop, per-member schedules), on the rows of all protocols concatenated; a member's
mask never leaves its protocol. ``batched=False`` fits each member and kind alone instead:
the reference that the batched fit must reproduce (tests, ``bench/eval_cost.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aam_search.trainer.attackers import ATTACK_BATCH, ATTACK_LR, TRAINED_KINDS, member_scores, train_members
from aam_search.trainer.knn import knn_members
from aam_search.trainer.resampling import video_folds

PROTOCOL_CODES = {"static": 0, "clip": 1}  # part of each member's key: its generators


@dataclass(frozen=True)
class ProtocolRows:
    """One protocol's pooled rows: the first ``n_train`` from the train split, then evaluation."""

    x: torch.Tensor  # [N, D] on the evaluation device
    labels: torch.Tensor  # [N, A], -1 = unknown
    owner: torch.Tensor  # [N] video of each row
    n_train: int
    code: int = 0

    @property
    def eval_owner(self) -> np.ndarray:
        return self.owner[self.n_train :].cpu().numpy()


@dataclass(frozen=True)
class Member:
    protocol: int  # position in the list of protocols fitted together
    fit: str  # "train" or "crossfit"
    fold: int  # the scored fold (crossfit), -1 for train
    train: torch.Tensor  # [N_p] bool over the protocol's rows
    query: torch.Tensor  # [Q] row indices into the protocol's rows
    key: tuple[int, ...]


def crossfit_masks(eval_videos: np.ndarray, strata: np.ndarray, owner: np.ndarray, folds: int,
                   seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """Fold of each evaluation row, and ``[K, N]`` training masks (all rows not in fold k).

    ``eval_videos`` sorted, ``strata`` one label row per video, ``owner`` the video of each row.
    """
    fold_of_video = video_folds(eval_videos, strata, folds, seed)
    fold = fold_of_video[np.searchsorted(eval_videos, owner)]
    masks = torch.from_numpy(fold[None, :] != np.arange(folds)[:, None])
    return fold, masks


def first_row(owner: np.ndarray, videos: np.ndarray) -> np.ndarray:
    """Index of one row of each video in ``videos`` (sorted, all present in ``owner``)."""
    order = np.argsort(owner, kind="stable")
    return order[np.searchsorted(owner[order], videos)]


def plan_members(rows: ProtocolRows, position: int, folds: int, seed: int) -> tuple[list[Member], np.ndarray | None]:
    """The members of one protocol and, with a cross-fit, the fold of each evaluation row."""
    total, n_train = len(rows.x), rows.n_train
    train = torch.zeros(total, dtype=torch.bool)
    train[:n_train] = True
    members = [Member(position, "train", -1, train, torch.arange(n_train, total), (rows.code, 0))]
    eval_owner = rows.eval_owner
    eval_videos = np.unique(eval_owner)
    if folds < 2:
        return members, None
    strata = rows.labels[n_train:].cpu().numpy()[first_row(eval_owner, eval_videos)]
    fold, masks = crossfit_masks(eval_videos, strata, eval_owner, folds, seed)
    for k, mask in enumerate(masks):
        member_train = torch.zeros(total, dtype=torch.bool)
        member_train[n_train:] = mask
        query = torch.from_numpy(np.flatnonzero(fold == k)) + n_train
        members.append(Member(position, "crossfit", k, member_train, query, (rows.code, 1 + k)))
    return members, fold


def fit_suite(protocols: list[ProtocolRows], members: list[Member], kinds: tuple[str, ...], *, epochs: int,
              seed: int, knn_k: int | None, batched: bool = True) -> tuple[dict[str, list[np.ndarray]], list[int | None]]:
    """Every member's scores on its query rows, per kind (``kind -> [Q_m, A]`` per member, on
    the host), and each member's kNN k (``None`` without a kNN)."""
    if not batched:
        return _one_at_a_time(protocols, members, kinds, epochs=epochs, seed=seed, knn_k=knn_k)
    offsets = np.cumsum([0, *[len(p.x) for p in protocols]])
    device = protocols[0].x.device
    x = torch.cat([p.x for p in protocols])
    labels = torch.cat([p.labels for p in protocols]).to(device)
    owner = torch.cat([p.owner for p in protocols]).to(device)
    train = torch.zeros(len(members), len(x), dtype=torch.bool)
    for m, member in enumerate(members):
        start = offsets[member.protocol]
        train[m, start : start + len(member.train)] = member.train
    queries = [(member.query + int(offsets[member.protocol])).to(device) for member in members]
    keys = [member.key for member in members]
    scores: dict[str, list[torch.Tensor]] = {}
    trained = tuple(kind for kind in kinds if kind in TRAINED_KINDS)
    if trained:
        fitted = train_members(x, labels, train, trained, epochs=epochs, lr=ATTACK_LR, batch_size=ATTACK_BATCH,
                               seed=seed, keys=keys)
        for kind in trained:
            every = member_scores(fitted[kind], x)  # [M, N, A]: one pass, then each member's rows
            scores[kind] = [every[m, query] for m, query in enumerate(queries)]
    chosen: list[int | None] = [None] * len(members)
    if "knn" in kinds:
        scores["knn"], chosen = knn_members(x, labels, owner, train, [x[q] for q in queries], k=knn_k, seed=seed,
                                            keys=keys)
    return {kind: [s.cpu().double().numpy() for s in scores[kind]] for kind in kinds}, chosen


def _one_at_a_time(protocols: list[ProtocolRows], members: list[Member], kinds: tuple[str, ...], *, epochs: int,
                   seed: int, knn_k: int | None) -> tuple[dict[str, list[np.ndarray]], list[int | None]]:
    """The reference: each member and kind fitted alone, on its own protocol's rows."""
    scores: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    chosen: list[int | None] = []
    for member in members:
        rows = protocols[member.protocol]
        x, device = rows.x, rows.x.device
        labels, owner = rows.labels.to(device), rows.owner.to(device)
        train, query = member.train[None].to(device), member.query.to(device)
        member_k = None
        for kind in kinds:
            if kind == "knn":
                knn, (member_k,) = knn_members(x, labels, owner, train, x[query], k=knn_k, seed=seed, keys=[member.key])
                scores[kind].append(knn[0].cpu().double().numpy())
                continue
            fitted = train_members(x, labels, train, (kind,), epochs=epochs, lr=ATTACK_LR, batch_size=ATTACK_BATCH,
                                   seed=seed, keys=[member.key])
            scores[kind].append(member_scores(fitted[kind], x[query])[0].cpu().double().numpy())
        chosen.append(member_k)
    return scores, chosen
