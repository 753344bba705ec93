"""Flat MLflow params and metrics from a study's config and a trial's result.json.

Pure conversions, no MLflow calls: the tracker logs what these return.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aam_search.search.config import StudyConfig

# Final metrics of a completed trial, read from its result.json.
RESULT_METRICS = ("utility", "leakage", "leakage_chance", "raw_utility", "raw_leakage", "leakage_reduction",
                  "leakage_reduction_above_chance", "utility_drop", "combined_score", "adapter_parameters")
MAX_PARAM = 6000
CI_NOTE_TAG = "aam.ci_note"


def metric_key(name: str) -> str:
    """An objective or task name as a metric key: ``leakage:static`` -> ``leakage_static``."""
    return name.replace(":", "_")


def finite_float(value: Any) -> float | None:
    """A number MLflow can store, or None (bools count, inf and non-numbers do not)."""
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if not math.isinf(number) else None


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}`` (lists as JSON), values cut to MLflow's limit."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        if data or not prefix:
            return out
        return {prefix[:-1]: "{}"}
    text = json.dumps(data, default=str) if isinstance(data, (list, tuple)) else str(data)
    return {prefix[:-1]: text[:MAX_PARAM]}


def final_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The metrics of a completed trial's result.json, flat and numeric."""
    metrics: dict[str, float] = {}
    for key in RESULT_METRICS:
        value = finite_float(result.get(key))
        if value is not None:
            metrics[key] = value
    measured = result.get("measured") or {}
    for protocol, leak in (measured.get("privacy") or {}).items():
        value = finite_float((leak or {}).get("cmap"))
        if value is not None:
            metrics[f"leakage_{protocol}"] = value
        for attacker, cmap in ((leak or {}).get("attackers") or {}).items():
            if (value := finite_float(cmap)) is not None:
                metrics[f"leakage_{protocol}_{attacker}"] = value
    for task, summary in (measured.get("tasks") or {}).items():
        value = finite_float((summary or {}).get("top1"))
        if value is not None and task != "action":
            metrics[metric_key(task)] = value
        gap = finite_float((summary or {}).get("group_gap"))
        if gap is not None:
            metrics[f"{metric_key(task)}_group_gap"] = gap
    metrics.update(privacy_metrics(result))
    if (value := finite_float(measured.get("cotrained_top1"))) is not None:
        metrics["cotrained_top1"] = value
    seconds = finite_float((result.get("timings") or {}).get("total_s"))
    if seconds is not None:
        metrics["seconds"] = seconds
    for key, value in (result.get("timings") or {}).items():
        if key != "total_s" and (number := finite_float(value)) is not None:
            metrics[f"time/{key}"] = number
    return metrics


def privacy_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Above-chance removal per protocol and worst (``leakage_above_chance_removed_static``...),
    the relative reduction per protocol, and every bootstrap interval as ``<name>_ci_low`` /
    ``<name>_ci_high`` (``utility_ci_low``, ``leakage_static_ci_high``...)."""
    metrics: dict[str, float] = {}
    for protocol, value in (result.get("leakage_above_chance_removed") or {}).items():
        if (number := finite_float(value)) is not None:
            metrics[f"leakage_above_chance_removed_{metric_key(protocol)}"] = number
    for protocol, value in (result.get("leakage_reduction_by_protocol") or {}).items():
        if (number := finite_float(value)) is not None:
            metrics[f"leakage_reduction_{metric_key(protocol)}"] = number
    for name, bounds in (result.get("ci") or {}).items():
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
            low, high = finite_float(bounds[0]), finite_float(bounds[1])
            if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
                metrics[f"{metric_key(name)}_ci_low"], metrics[f"{metric_key(name)}_ci_high"] = low, high
    return metrics


def final_tags(result: dict[str, Any]) -> dict[str, str]:
    """Tags of a completed trial: ``aam.ci_note`` where intervals were left out, and why."""
    note = result.get("ci_note")
    return {CI_NOTE_TAG: str(note)[:MAX_PARAM]} if note else {}


def study_params(config: StudyConfig, space: Any, base_trial: dict[str, Any]) -> dict[str, str]:
    """The parent run's params: the search settings, the space and the trial base config.

    Nothing here may carry a secret: the storage URL is not a param (it is the redacted
    ``aam.storage`` tag) and the tracking URI is not logged at all.
    """
    params = {
        "space": space.name,
        "sampler": config.sampler,
        "objectives": ",".join(config.objectives),
        "n_trials": str(config.n_trials),
        "seed": str(config.seed),
        "max_utility_drop": str(config.max_utility_drop),
        "max_parallel": str(config.max_parallel),
        "gpus_per_trial": str(config.gpus_per_trial),
        "max_retries": str(config.max_retries),
        "trial_timeout_s": str(config.trial_timeout_s),
        "enqueue_paper_default": str(config.enqueue_paper_default),
        "space.params": ",".join(space.params)[:MAX_PARAM],
    }
    for name, spec in space.params.items():
        params[f"space.{name}"] = json.dumps(spec.model_dump(mode="json", exclude_none=True), default=str)[:MAX_PARAM]
    data = config.data.model_dump(mode="json", exclude_none=True)
    params.update(flatten(data, "data."))
    params.update(flatten(base_trial, "trial."))
    return params
