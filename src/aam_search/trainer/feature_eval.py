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

Evaluation runs on the device of the pooled features (the trial's); only scores come back to
the host, for the APs and the bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from aam_search.features.cache import CacheError, FeatureCache
from aam_search.trainer.data import task_num_classes, video_targets
from aam_search.trainer.attackers import ATTACKER_KINDS
from aam_search.trainer.evaluation import attribute_cmap, linear_probe
from aam_search.trainer.resampling import Resampler, enough_videos, percentile_ci, weighted_average_precision
from aam_search.trainer.suite_fit import PROTOCOL_CODES, Member, ProtocolRows, crossfit_masks, fit_suite, plan_members

_crossfit_masks = crossfit_masks  # the name the tests know

Transform = Callable[[torch.Tensor], torch.Tensor]
ATTACKERS = ATTACKER_KINDS
FITS = ("train", "crossfit")
CROSSFIT_FOLDS = 5


@torch.no_grad()
def pooled(features: torch.Tensor, transform: Transform | None, batch_size: int = 1024,
           device: torch.device | str | None = None) -> torch.Tensor:
    """Apply ``transform`` to ``[N, L, D]`` token features in batches, then mean over L.

    The result stays where the transform put it (the trial's device), or goes to ``device``
    when given: evaluation then runs there. Without either it is on the features' device."""
    out = []
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        chunk = (chunk.to(device, non_blocking=True) if device is not None else chunk).float()
        if transform is not None:
            chunk = transform(chunk).float()
        out.append(chunk.mean(dim=1))
    if not out:
        return torch.zeros(0, features.shape[-1], device=device)
    pooled_rows = torch.cat(out)
    return pooled_rows.to(device) if device is not None else pooled_rows


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
    device: torch.device | str | None = None,
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
    train_x = pooled(cache.clip_features[train_rows], transform, device=device)
    eval_x = pooled(cache.clip_features[eval_rows], transform, device=device)
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


def _fit_scores_of(rows: ProtocolRows, members: list[Member], fold: np.ndarray | None,
                   scores: dict[str, list[np.ndarray]], chosen: list[int | None]) -> tuple[dict, dict]:
    """One protocol's members' scores as ``fit -> kind -> [N_eval, A]`` (the cross-fit's
    out-of-fold scores as within-fold ranks), and the kNN k of each fit."""
    fit_scores: dict[str, dict[str, np.ndarray]] = {}
    knn_k_used: dict[str, Any] = {}
    n_eval = len(rows.x) - rows.n_train
    for kind, per_member in scores.items():
        for member, member_scores in zip(members, per_member):
            if member.fit == "train":
                fit_scores.setdefault("train", {})[kind] = member_scores
            else:
                out = fit_scores.setdefault("crossfit", {}).setdefault(
                    kind, np.zeros((n_eval, rows.labels.shape[1])))
                out[member.query.numpy() - rows.n_train] = member_scores
    if fold is not None:
        fit_scores["crossfit"] = {kind: within_fold_ranks(s, fold) for kind, s in fit_scores["crossfit"].items()}
    if any(k is not None for k in chosen):
        knn_k_used["train"] = chosen[0]
        if len(members) > 1:
            knn_k_used["crossfit"] = chosen[1:]
    return fit_scores, knn_k_used


def measure_protocol(x: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, n_train: int,
                     names: list[str], *, kinds: tuple[str, ...], folds: int, epochs: int, seed: int,
                     knn_k: int | None, resampler: Resampler | None, code: int = 0,
                     batched: bool = True) -> tuple[dict[str, Any], np.ndarray | None]:
    """One protocol: both fits of every attacker, the strongest, intervals; and its draws."""
    (out, draws), = measure_protocols([ProtocolRows(x, labels, owner, n_train, code)], names, kinds=kinds,
                                      folds=folds, epochs=epochs, seed=seed, knn_k=knn_k, resampler=resampler,
                                      batched=batched)
    return out, draws


def measure_protocols(protocols: list[ProtocolRows], names: list[str], *, kinds: tuple[str, ...], folds: int,
                      epochs: int, seed: int, knn_k: int | None, resampler: Resampler | None,
                      batched: bool = True) -> list[tuple[dict[str, Any], np.ndarray | None]]:
    """Every protocol's measures, all attackers of all protocols and fits trained together."""
    plans = []
    for position, rows in enumerate(protocols):
        protocol_folds = min(folds, len(np.unique(rows.eval_owner)))
        plans.append(plan_members(rows, position, protocol_folds, seed))
    members = [member for protocol_members, _ in plans for member in protocol_members]
    scores, chosen = fit_suite(protocols, members, kinds, epochs=epochs, seed=seed, knn_k=knn_k, batched=batched)
    out, start = [], 0
    for rows, (protocol_members, fold) in zip(protocols, plans):
        span = slice(start, start + len(protocol_members))
        start = span.stop
        fit_scores, knn_k_used = _fit_scores_of(rows, protocol_members, fold,
                                                {kind: s[span] for kind, s in scores.items()}, chosen[span])
        out.append(_summarise(rows, names, fit_scores, knn_k_used, len(protocol_members) - 1, resampler))
    return out


def _summarise(rows: ProtocolRows, names: list[str], fit_scores: dict[str, dict[str, np.ndarray]],
               knn_k_used: dict[str, Any], folds: int, resampler: Resampler | None) -> tuple[dict[str, Any], np.ndarray | None]:
    """The protocol's record from its fits' scores: cMAPs, the strongest, intervals; its draws."""
    eval_owner = rows.eval_owner
    eval_videos = np.unique(eval_owner)
    label_np = rows.labels[rows.n_train :].cpu().numpy()
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
        "train_videos": int(len(np.unique(rows.owner[: rows.n_train].cpu().numpy()))),
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


def protocol_rows(cache: FeatureCache, transform: Transform | None, split: str, protocols: tuple[str, ...], *,
                  device: torch.device | str | None = None) -> tuple[list[str], list[ProtocolRows]]:
    """The pooled rows (train split, then ``split``) of each protocol that has rows on both."""
    attrs = cache.labels("attrs")
    is_image = cache.labels("is_image").numpy()
    measured: list[str] = []
    rows_of_protocol: list[ProtocolRows] = []
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
        row_owner = owner[rows].long()
        measured.append(protocol)
        rows_of_protocol.append(ProtocolRows(pooled(features[rows], transform, device=device), attrs[row_owner],
                                             row_owner, len(train_rows), PROTOCOL_CODES[protocol]))
    return measured, rows_of_protocol


def evaluate_privacy(
    cache: FeatureCache,
    transform: Transform | None,
    split: str = "val",
    *,
    samples: dict[str, np.ndarray] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Leakage per protocol: every attacker's cMAP on both fits, the strongest one, and chance.

    ``crossfit_folds`` < 2 measures the train-then-score fit only. With ``resampler``, each
    protocol gets ``ci`` (and ``ci_train``/``ci_crossfit``), ``samples["leakage:<protocol>"]``
    the bootstrap draws of its leakage. Runs where the transform puts the features, or on
    ``device``; every protocol's attackers, both fits, are trained together (``suite_fit``).
    The settings are :func:`evaluate_privacy_many`'s.
    """
    return evaluate_privacy_many(cache, [transform], split, samples=None if samples is None else [samples],
                                 **settings)[0]


def evaluate_privacy_many(
    cache: FeatureCache,
    transforms: list[Transform | None],
    split: str = "val",
    *,
    protocols: tuple[str, ...] = ("static", "clip"),
    seed: int = 0,
    epochs: int = 60,
    attackers: tuple[str, ...] = ATTACKERS,
    crossfit_folds: int = CROSSFIT_FOLDS,
    knn_k: int | None = None,
    resampler: Resampler | None = None,
    samples: list[dict[str, np.ndarray]] | None = None,
    device: torch.device | str | None = None,
) -> list[dict[str, Any]]:
    """:func:`evaluate_privacy` of several transforms (a stack's members) with one attacker fit.

    Each transform's protocols are more protocols of one ``measure_protocols`` call: its
    members train only on their own protocol's rows, with the keys and generators they have
    alone, so every transform gets the numbers it gets alone, within float rounding
    (``tests/trainer/test_batched_eval.py``); ``samples[i]`` takes transform i's draws.
    """
    unknown = sorted(set(attackers) - set(ATTACKER_KINDS))
    if unknown or not attackers:
        raise ValueError(f"unknown attacker kinds {unknown} (use {', '.join(ATTACKER_KINDS)})")
    names = list(cache.meta["attr_names"])
    per_transform = [protocol_rows(cache, transform, split, protocols, device=device) for transform in transforms]
    rows_of_all = [rows for _, rows_of_protocol in per_transform for rows in rows_of_protocol]
    if not rows_of_all:
        return [{} for _ in transforms]
    results = iter(measure_protocols(rows_of_all, names, kinds=tuple(attackers), folds=crossfit_folds,
                                     epochs=epochs, seed=seed, knn_k=knn_k, resampler=resampler))
    outs: list[dict[str, Any]] = []
    for position, (measured, _) in enumerate(per_transform):
        out: dict[str, Any] = {}
        for protocol in measured:
            record, draws = next(results)
            out[protocol] = record
            if draws is not None and samples is not None:
                samples[position][f"leakage:{protocol}"] = draws
        outs.append(out)
    return outs
