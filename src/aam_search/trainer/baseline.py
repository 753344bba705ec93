"""The raw-feature baseline (identity adapter), computed once per cache and stored with it.

Every trial reports leakage reduction and utility drop relative to this baseline, measured
with the same attacker suite, protocols, fits and bootstrap draw. It is
keyed by the evaluation settings, so trials evaluated alike share one computation; the file
is written atomically, so two trials racing to create it both leave a valid file.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import torch

from aam_search.features.cache import FeatureCache, write_json_atomic
from aam_search.trainer.attackers import full_precision
from aam_search.trainer.config import EvalConfig
from aam_search.trainer.data import task_names, task_num_classes
from aam_search.trainer.feature_eval import Transform, evaluate_privacy_many, evaluate_utility
from aam_search.trainer.resampling import Resampler, percentile_ci

# Bump when the evaluation itself changes (probe or attacker training), so that caches keep
# no baseline measured by older code. 3: the attacker suite (linear, mlp, mlp_deep, knn),
# cross-fitting, bootstrap intervals and the worst case over protocols. 4: every attacker fit
# (member) is defined alone: its own generators (initial weights, batches), batch size, step
# budget and cosine schedule, so batched training reproduces one-at-a-time training; the
# random draws differ from 3's, so numbers move within seed noise.
EVALUATION_VERSION = 4
# EvalConfig fields that do not change a measured number, so not part of the baseline's key.
_NOT_IN_KEY = {"primary_protocol", "unseen_tasks", "rungs", "rung_wait_s"}


def cotrained_tasks(cache: FeatureCache, unseen_tasks: tuple[str, ...]) -> dict[str, int]:
    """The tasks (and class counts) the trainer co-trains: every task but the unseen ones,
    which are only probed. An unseen task the cache lacks is an error naming both."""
    classes = task_num_classes(cache)
    missing = [task for task in unseen_tasks if task not in classes]
    if missing:
        raise ValueError(f"eval.unseen_tasks names {', '.join(missing)}, which the cache at {cache.path} does not "
                         f"have (its tasks: {', '.join(classes) or 'none'})")
    return {task: count for task, count in classes.items() if task not in unseen_tasks}


def ci_warnings(measured: dict[str, Any]) -> list[str]:
    """Lines for the trial log where an interval could not be given."""
    note = measured.get("ci_note")
    return [f"bootstrap intervals left out: {note}"] if note else []


def _intervals(tasks: dict[str, Any], privacy: dict[str, Any], samples: dict[str, np.ndarray]) -> dict[str, Any]:
    """``ci`` (name -> [lo, hi] or None) for every task, protocol and the worst case; ``ci_note``."""
    ci: dict[str, Any] = {}
    notes = []
    for name, summary in tasks.items():
        ci[name] = summary.get("ci")
        if summary.get("ci_note"):
            notes.append(f"{name}: {summary['ci_note']}")
    if tasks:
        ci["utility"] = ci[next(iter(tasks))]
    for protocol, leak in privacy.items():
        ci[f"leakage:{protocol}"] = leak.get("ci")
        if leak.get("ci_note"):
            notes.append(f"leakage:{protocol}: {leak['ci_note']}")
    draws = [samples.get(f"leakage:{protocol}") for protocol in privacy]
    # The worst case's interval: the worst protocol of each resample (one shared draw of videos).
    ci["leakage"] = percentile_ci(np.max(np.stack(draws), axis=0)) if draws and all(
        d is not None for d in draws) else None
    out: dict[str, Any] = {"ci": ci}
    if notes:
        out["ci_note"] = "; ".join(notes)
    return out


def evaluate_features(
    cache: FeatureCache, transform: Transform | None, config: EvalConfig, *, seed: int,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Utility of every task and leakage of every protocol, for one feature transform, with
    per-video bootstrap intervals (``ci``) unless ``config.bootstrap_resamples`` is 0.

    Runs where ``transform`` puts the features, or on ``device`` (the raw baseline has no
    transform: give it the trial's device); the numbers do not depend on it beyond float
    rounding (generators, initial weights and batches are drawn on the CPU; matmuls at full
    float32 precision, no TF32)."""
    return evaluate_features_many(cache, [transform], config, seed=seed, device=device)[0]


def evaluate_features_many(
    cache: FeatureCache, transforms: list[Transform | None], config: EvalConfig, *, seed: int,
    device: torch.device | str | None = None,
) -> list[dict[str, Any]]:
    """:func:`evaluate_features` of several transforms that share ``config`` and ``seed`` (a
    stack's members): the utility probes one transform at a time, the attacker suites of all
    of them in one fit (``feature_eval.evaluate_privacy_many``); each gets its numbers alone."""
    resampler = None
    if config.bootstrap_resamples:
        resampler = Resampler.draw(cache.video_indices(config.split), config.bootstrap_resamples,
                                   seed=config.bootstrap_seed)
    samples: list[dict[str, np.ndarray]] = [{} for _ in transforms]
    with full_precision():
        tasks = [{
            task: evaluate_utility(cache, transform, config.split, task=task, seed=seed, epochs=config.probe_epochs,
                                   resampler=resampler, samples=drawn, device=device)
            for task in task_names(cache)
        } for transform, drawn in zip(transforms, samples)]
        for member_tasks in tasks:
            for task in config.unseen_tasks:
                if task in member_tasks:
                    member_tasks[task]["unseen"] = True
        privacy = evaluate_privacy_many(
            cache, transforms, config.split, protocols=config.protocols, seed=seed, epochs=config.attacker_epochs,
            attackers=config.attackers, crossfit_folds=config.crossfit_folds, knn_k=config.knn_k,
            resampler=resampler, samples=samples, device=device,
        )
    results = []
    for member_tasks, member_privacy, drawn in zip(tasks, privacy, samples):
        result = {"tasks": member_tasks, "privacy": member_privacy}
        if resampler is not None:
            result.update(_intervals(member_tasks, member_privacy, drawn))
        results.append(result)
    return results


def raw_baseline(cache: FeatureCache, config: EvalConfig, *, seed: int,
                 device: torch.device | str | None = None) -> dict[str, Any]:
    """The identity adapter's evaluation, read from the cache or measured (on ``device``) and stored."""
    settings = {**config.model_dump(mode="json", exclude=_NOT_IN_KEY), "seed": seed,
                "evaluation_version": EVALUATION_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache.path / "baselines" / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass  # a damaged file is recomputed and replaced
    baseline = {"settings": settings, **evaluate_features(cache, None, config, seed=seed, device=device)}
    path.parent.mkdir(exist_ok=True)
    write_json_atomic(path, baseline)
    return baseline


def worst_case(privacy: dict[str, Any]) -> tuple[str | None, float, float]:
    """``(protocol, cmap, chance)`` of the protocol that leaks most: what ``leakage`` means
    (a point is private only if it is private on every protocol measured)."""
    measured = {p: leak for p, leak in privacy.items() if leak and _finite(leak.get("cmap"))}
    if not measured:
        return None, float("nan"), float("nan")
    protocol = max(measured, key=lambda p: float(measured[p]["cmap"]))
    return protocol, float(measured[protocol]["cmap"]), float(measured[protocol]["chance"])


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def above_chance_removed(raw: float, new: float, chance: float) -> float:
    """(raw - new) / (raw - chance): the share of the above-chance leakage an adapter removed."""
    above = raw - chance
    return (raw - new) / above if above > 0 else float("nan")


def summarize(measured: dict[str, Any], baseline: dict[str, Any], primary_protocol: str | None = None) -> dict[str, Any]:
    """Headline numbers: utility, leakage, and their change against the raw baseline.

    ``leakage`` and ``raw_leakage`` are each the worst case over the measured protocols;
    ``primary_protocol`` is accepted for old callers and not used.
    """
    main_task = next(iter(measured["tasks"]), None)
    utility = measured["tasks"][main_task]["top1"] if main_task else float("nan")
    raw_utility = baseline["tasks"][main_task]["top1"] if main_task else float("nan")
    protocol, leakage, _ = worst_case(measured["privacy"])
    raw_protocol, raw_leakage, chance = worst_case(baseline["privacy"])
    removed: dict[str, float] = {}
    reduction: dict[str, float] = {}
    for name, leak in measured["privacy"].items():
        raw = baseline["privacy"].get(name)
        if raw:
            removed[name] = above_chance_removed(float(raw["cmap"]), float(leak["cmap"]), float(raw["chance"]))
            reduction[name] = (raw["cmap"] - leak["cmap"]) / raw["cmap"] if raw["cmap"] else float("nan")
    finite_removed = [v for v in removed.values() if math.isfinite(v)]
    # The worst case of removal: the protocol where least of the above-chance leakage went.
    removed["worst"] = min(finite_removed) if finite_removed else float("nan")
    summary = {
        "utility": utility,
        "leakage": leakage,
        "leakage_protocol": protocol,
        "leakage_chance": chance,
        "raw_utility": raw_utility,
        "raw_leakage": raw_leakage,
        "raw_leakage_protocol": raw_protocol,
        "leakage_reduction": (raw_leakage - leakage) / raw_leakage if raw_leakage else float("nan"),
        "leakage_reduction_by_protocol": reduction,
        "leakage_reduction_above_chance": removed["worst"],
        "leakage_above_chance_removed": removed,
        "utility_drop": (raw_utility - utility) / raw_utility if raw_utility else float("nan"),
        # The paper's combined score, y = (acc + (1 - priv)) / 2.
        "combined_score": (utility + (1 - leakage)) / 2,
        "unseen_utility": {task: summary["top1"] for task, summary in measured["tasks"].items() if summary.get("unseen")},
    }
    if "ci" in measured:
        summary["ci"] = measured["ci"]
        if measured.get("ci_note"):
            summary["ci_note"] = measured["ci_note"]
    return summary
