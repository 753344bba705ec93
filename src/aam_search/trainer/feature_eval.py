"""Evaluate a feature transform (an adapter, or the identity for the raw baseline) on a cache.

Utility: linear probe on pooled clip features of train videos with an action, top-1 on the
evaluation split (logits averaged over each video's clips). Privacy: fresh attackers on the
``static`` protocol (static clips, image rows included; the paper's) and the ``clip``
protocol (the moving clips a user actually shares; videos with attribute labels only).
Only rows labelled for a task take part in it.

Each protocol is measured two ways, with the whole attacker suite (``attackers``):
``train`` (train-then-score: attackers fit on the train split, scored on the evaluation
split) and ``crossfit`` (attackers fit and scored on K folds of the evaluation split, by
video and stratified by the attribute labels: the adapter never saw those videos, and
attackers learn the adapted features' own distribution). Out-of-fold scores, as ranks within
their fold, are pooled into one AP per attribute. A protocol's ``cmap`` is the strongest
attacker of either fit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from aam_search.features.cache import CacheError, FeatureCache
from aam_search.trainer.data import task_num_classes, video_targets
from aam_search.trainer.attackers import (
    ATTACK_BATCH,
    ATTACK_LR,
    ATTACKER_KINDS,
    knn_members,
    member_scores,
    train_members,
)
from aam_search.trainer.evaluation import attribute_cmap, linear_probe
from aam_search.trainer.resampling import Resampler, enough_videos, percentile_ci, video_folds, weighted_average_precision

Transform = Callable[[torch.Tensor], torch.Tensor]
ATTACKERS = ATTACKER_KINDS
FITS = ("train", "crossfit")
CROSSFIT_FOLDS = 5


@torch.no_grad()
def pooled(features: torch.Tensor, transform: Transform | None, batch_size: int = 1024) -> torch.Tensor:
    """Apply ``transform`` to ``[N, L, D]`` token features in batches, then mean over L."""
    out = []
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size].float()
        if transform is not None:
            chunk = transform(chunk).float()
        out.append(chunk.mean(dim=1).cpu())
    if not out:
        return torch.zeros(0, features.shape[-1])
    return torch.cat(out)


def _rows_of(owner: torch.Tensor, videos: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.isin(owner.numpy(), videos)).nonzero().squeeze(1)


def _labelled(cache: FeatureCache, split: str, labels: torch.Tensor) -> np.ndarray:
    videos = cache.video_indices(split)
    return videos[labels.numpy()[videos] >= 0]


def _utility_ci(result, resampler: Resampler | None, samples: dict[str, np.ndarray] | None, key: str) -> dict:
    """Bootstrap interval of a probe's top-1 over the shared draw of evaluation videos."""
    note = enough_videos(result.eval_videos)
    if resampler is None:
        return {}
    if note is not None:
        return {"ci": None, "ci_note": note}
    weights = resampler.weights(result.videos).astype(np.float64)
    drawn = weights.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(drawn > 0, (weights * result.correct[None]).sum(1) / np.maximum(drawn, 1), np.nan)
    if samples is not None:
        samples[key] = values
    return {"ci": percentile_ci(values)}


def evaluate_utility(
    cache: FeatureCache,
    transform: Transform | None,
    split: str = "val",
    *,
    task: str = "action",
    seed: int = 0,
    epochs: int = 60,
    resampler: Resampler | None = None,
    samples: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Linear-probe top-1 for ``task`` ("action" or "task:<name>") on ``split``.

    With ``resampler``: ``ci`` (percentile 95% interval over resampled evaluation videos),
    or ``ci: None`` and ``ci_note`` with too few videos; ``samples[task]`` gets the draws.
    """
    action = video_targets(cache, np.arange(cache.num_videos))[task]
    train_videos = _labelled(cache, "train", action)
    eval_videos = _labelled(cache, split, action)
    if len(train_videos) == 0 or len(eval_videos) == 0:
        problem = cache.split_problem("train") or cache.split_problem(split)
        if problem:  # nothing decoded there, which says more than "no labels"
            raise CacheError(problem)
        raise ValueError(f"{cache.path}: no videos labelled for {task} in train and {split}")
    train_rows = _rows_of(cache.clip_video, train_videos)
    eval_rows = _rows_of(cache.clip_video, eval_videos)
    train_x = pooled(cache.clip_features[train_rows], transform)
    eval_x = pooled(cache.clip_features[eval_rows], transform)
    eval_owner = cache.clip_video[eval_rows]
    groups = None
    group_names = None
    if cache.meta["group_names"]:
        first = cache.meta["group_names"][0]
        groups = cache.labels("groups")[:, 0][eval_owner].clamp_min(0)
        group_names = cache.meta["group_values"][first]
    result = linear_probe(
        train_x,
        action[cache.clip_video[train_rows]],
        eval_x,
        action[eval_owner],
        eval_owner,
        task_num_classes(cache)[task],
        eval_groups=groups,
        group_names=group_names,
        epochs=epochs,
        seed=seed,
    )
    summary = result.to_dict()
    if result.per_group:
        summary["group_gap"] = max(result.per_group.values()) - min(result.per_group.values())
    summary.update(_utility_ci(result, resampler, samples, task))
    return summary


def _crossfit_masks(eval_videos: np.ndarray, strata: np.ndarray, owner: np.ndarray, folds: int,
                    seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """Fold of each evaluation row, and ``[K, N]`` training masks (all rows not in fold k).

    ``eval_videos`` sorted, ``strata`` one label row per video, ``owner`` the video of each row.
    """
    fold_of_video = video_folds(eval_videos, strata, folds, seed)
    fold = fold_of_video[np.searchsorted(eval_videos, owner)]
    masks = torch.from_numpy(fold[None, :] != np.arange(folds)[:, None])
    return fold, masks


def _fit_scores(x: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, train: torch.Tensor,
                query: torch.Tensor, kinds: tuple[str, ...], *, epochs: int, seed: int,
                knn_k: int | None) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Scores ``[M, Q, A]`` of every kind's members on ``query``, and the members' kNN k."""
    fitted = train_members(x, labels, train, kinds, epochs=epochs, lr=ATTACK_LR, batch_size=ATTACK_BATCH, seed=seed)
    scores = {kind: member_scores(model, query) for kind, model in fitted.items()}
    chosen: list[int] = []
    if "knn" in kinds:
        scores["knn"], chosen = knn_members(x, labels, owner, train, query, k=knn_k, seed=seed)
    return {kind: scores[kind] for kind in kinds}, chosen


def within_fold_ranks(scores: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Out-of-fold scores ``[N, A]`` as mid-ranks in (0, 1) within their fold, per attribute
    (``(rank - 1/2) / fold size``, ties sharing their average rank).

    Each fold has its own model, so raw scores are not comparable across folds: a fold model's
    base rate alone would order whole folds and pose as leakage (constant features would
    "leak"). Within-fold ranks keep only each model's ordering; ties stay ties.
    """
    out = np.empty_like(scores, dtype=np.float64)
    for k in np.unique(fold):
        rows = fold == k
        for j in range(scores.shape[1]):
            _, inverse, counts = np.unique(scores[rows, j], return_inverse=True, return_counts=True)
            mid = np.cumsum(counts) - (counts - 1) / 2  # the average rank of each tied group
            out[rows, j] = (mid[inverse] - 0.5) / rows.sum()  # all tied: 0.5 in every fold
    return out


def _bootstrap_cmap(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, names: list[str],
                    measured: dict[str, float]) -> np.ndarray:
    """cMAP ``[B]`` on each resample, over the attributes the point estimate used."""
    per_attribute = []
    for j, name in enumerate(names):
        if name not in measured:
            continue
        keep = labels[:, j] >= 0
        per_attribute.append(weighted_average_precision(scores[keep, j], labels[keep, j], weights[:, keep]))
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.stack(per_attribute), axis=0) if per_attribute else np.full(len(weights), np.nan)


def measure_protocol(x: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, n_train: int,
                      names: list[str], *, kinds: tuple[str, ...], folds: int, epochs: int, seed: int,
                      knn_k: int | None, resampler: Resampler | None) -> tuple[dict[str, Any], np.ndarray | None]:
    """One protocol: both fits of every attacker, the strongest, intervals; and its draws."""
    eval_x, eval_labels, eval_owner = x[n_train:], labels[n_train:], owner[n_train:].numpy()
    eval_videos = np.unique(eval_owner)
    fit_scores: dict[str, dict[str, np.ndarray]] = {}
    knn_k_used: dict[str, Any] = {}
    train = torch.zeros(1, len(x), dtype=torch.bool)
    train[0, :n_train] = True
    scores, chosen = _fit_scores(x, labels, owner, train, eval_x, kinds, epochs=epochs, seed=seed, knn_k=knn_k)
    fit_scores["train"] = {kind: s[0].numpy() for kind, s in scores.items()}
    if chosen:
        knn_k_used["train"] = chosen[0]
    folds = min(folds, len(eval_videos))
    if folds >= 2:
        strata = eval_labels.numpy()[_first_row(eval_owner, eval_videos)]
        fold, masks = _crossfit_masks(eval_videos, strata, eval_owner, folds, seed)
        scores, chosen = _fit_scores(eval_x, eval_labels, owner[n_train:], masks, eval_x, kinds,
                                     epochs=epochs, seed=seed, knn_k=knn_k)
        rows = torch.arange(len(eval_x))
        fit_scores["crossfit"] = {kind: within_fold_ranks(s[torch.from_numpy(fold), rows].numpy(), fold)
                                  for kind, s in scores.items()}
        if chosen:
            knn_k_used["crossfit"] = chosen
    label_np = eval_labels.numpy()
    measured: dict[str, dict[str, tuple[dict[str, float], dict[str, float]]]] = {
        fit: {kind: attribute_cmap(s, label_np, names) for kind, s in by_kind.items()}
        for fit, by_kind in fit_scores.items()
    }
    if not any(per_attr for by_kind in measured.values() for per_attr, _ in by_kind.values()):
        raise ValueError("no attribute has both positive and negative evaluation labels")
    cmaps = {fit: {kind: float(np.mean(list(pa.values()))) for kind, (pa, _) in by_kind.items()}
             for fit, by_kind in measured.items()}
    best_fit, best_kind = max(((f, k) for f in cmaps for k in cmaps[f]), key=lambda fk: cmaps[fk[0]][fk[1]])
    per_attr, chance = measured[best_fit][best_kind]
    out: dict[str, Any] = {
        "cmap": cmaps[best_fit][best_kind],
        "chance": float(np.mean(list(chance.values()))),
        "strongest": best_kind,
        "strongest_fit": best_fit,
        "per_attribute": per_attr,
        "attackers": cmaps["train"],
        "cmap_train": max(cmaps["train"].values()),
        "cmap_crossfit": max(cmaps["crossfit"].values()) if "crossfit" in cmaps else None,
        "attackers_crossfit": cmaps.get("crossfit", {}),
        "crossfit_folds": folds if "crossfit" in cmaps else 0,
        "per_attribute_by_attacker": {fit: {kind: pa for kind, (pa, _) in by_kind.items()}
                                      for fit, by_kind in measured.items()},
        "train_videos": int(len(np.unique(owner[:n_train].numpy()))),
        "eval_videos": int(len(eval_videos)),
    }
    if knn_k_used:
        out["knn_k"] = knn_k_used
    if "crossfit" not in cmaps:
        out["crossfit_note"] = f"only {len(eval_videos)} evaluation videos: no cross-fit"
    if resampler is None:
        return out, None
    note = enough_videos(len(eval_videos))
    if note is not None:
        out.update(ci=None, ci_note=note)
        return out, None
    weights = resampler.weights(eval_owner)
    draws = {fit: np.max([_bootstrap_cmap(fit_scores[fit][kind], label_np, weights, names, measured[fit][kind][0])
                          for kind in fit_scores[fit]], axis=0) for fit in fit_scores}
    leakage = np.max(np.stack(list(draws.values())), axis=0)
    out["ci"] = percentile_ci(leakage)
    for fit, values in draws.items():
        out[f"ci_{fit}"] = percentile_ci(values)
    return out, leakage


def _first_row(owner: np.ndarray, videos: np.ndarray) -> np.ndarray:
    """Index of one row of each video in ``videos`` (sorted, all present in ``owner``)."""
    order = np.argsort(owner, kind="stable")
    return order[np.searchsorted(owner[order], videos)]


def evaluate_privacy(
    cache: FeatureCache,
    transform: Transform | None,
    split: str = "val",
    *,
    protocols: tuple[str, ...] = ("static", "clip"),
    seed: int = 0,
    epochs: int = 60,
    attackers: tuple[str, ...] = ATTACKERS,
    crossfit_folds: int = CROSSFIT_FOLDS,
    knn_k: int | None = None,
    resampler: Resampler | None = None,
    samples: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Leakage per protocol: every attacker's cMAP on both fits, the strongest one, and chance.

    ``crossfit_folds`` < 2 measures the train-then-score fit only. With ``resampler``, each
    protocol gets ``ci`` (and ``ci_train``/``ci_crossfit``), ``samples["leakage:<protocol>"]``
    the bootstrap draws of its leakage.
    """
    unknown = sorted(set(attackers) - set(ATTACKER_KINDS))
    if unknown or not attackers:
        raise ValueError(f"unknown attacker kinds {unknown} (use {', '.join(ATTACKER_KINDS)})")
    attrs = cache.labels("attrs")
    names = list(cache.meta["attr_names"])
    is_image = cache.labels("is_image").numpy()
    out: dict[str, Any] = {}
    for protocol in protocols:
        train_videos = cache.video_indices("train", with_attrs=True)
        eval_videos = cache.video_indices(split, with_attrs=True)
        if protocol == "static":
            features, owner = cache.static_features, cache.static_video
        elif protocol == "clip":
            features, owner = cache.clip_features, cache.clip_video
            train_videos = train_videos[~is_image[train_videos]]
            eval_videos = eval_videos[~is_image[eval_videos]]
        else:
            raise ValueError(f"unknown privacy protocol {protocol!r} (static or clip)")
        if len(train_videos) == 0 or len(eval_videos) == 0:
            continue  # e.g. the clip protocol when only images carry attributes
        train_rows = _rows_of(owner, train_videos)
        eval_rows = _rows_of(owner, eval_videos)
        rows = torch.cat([train_rows, eval_rows])
        x = pooled(features[rows], transform)
        row_owner = owner[rows].long()
        out[protocol], draws = measure_protocol(
            x, attrs[row_owner], row_owner, len(train_rows), names, kinds=tuple(attackers),
            folds=crossfit_folds, epochs=epochs, seed=seed, knn_k=knn_k, resampler=resampler)
        if draws is not None and samples is not None:
            samples[f"leakage:{protocol}"] = draws
    return out
