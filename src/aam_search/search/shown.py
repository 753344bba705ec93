"""What a completed trial shows beside its objective values: above-chance removal and the
bootstrap intervals, as Optuna user attributes and as text or row fields for the live view,
``aam-search front`` and the plots.

Above-chance removal is (raw cMAP - adapted cMAP) / (raw cMAP - chance): cMAP cannot fall below
chance, so the relative reduction alone understates what was removed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# result.json keys copied onto the trial as user attributes (the first six were there before).
RESULT_ATTRS = ("utility", "leakage", "leakage_chance", "leakage_reduction", "utility_drop", "combined_score")
NEW_RESULT_ATTRS = ("leakage_reduction_above_chance", "leakage_above_chance_removed", "ci", "ci_note")
CHANCE_BY_PROTOCOL = "leakage_chance_by_protocol"
ABOVE_CHANCE = "leakage_reduction_above_chance"
REMOVED = "leakage_above_chance_removed"


def result_attrs(result: dict[str, Any]) -> dict[str, Any]:
    """The user attributes of a completed trial, read from its result.json."""
    attrs = {key: result.get(key) for key in RESULT_ATTRS}
    attrs.update({key: result[key] for key in NEW_RESULT_ATTRS if result.get(key) is not None})
    privacy = (result.get("measured") or {}).get("privacy") or {}
    chance = {name: leak.get("chance") for name, leak in privacy.items() if isinstance(leak, dict)}
    if chance:
        attrs[CHANCE_BY_PROTOCOL] = chance
    return attrs


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def interval(attrs: dict[str, Any], name: str) -> tuple[float, float] | None:
    """The bootstrap interval of objective ``name`` (``utility``, ``leakage:static``...), or None."""
    bounds = (attrs.get("ci") or {}).get(name) if isinstance(attrs.get("ci"), dict) else None
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        return None
    low, high = _number(bounds[0]), _number(bounds[1])
    return (low, high) if low is not None and high is not None else None


def chance_of(attrs: dict[str, Any], objective: str) -> float | None:
    """The chance level of a leakage objective (``leakage`` is the raw worst protocol's)."""
    if objective == "leakage":
        return _number(attrs.get("leakage_chance"))
    if objective.startswith("leakage:"):
        return _number((attrs.get(CHANCE_BY_PROTOCOL) or {}).get(objective.split(":", 1)[1]))
    return None


def with_interval(value: Any, bounds: tuple[float, float] | None) -> str:
    """``0.875 [0.81, 0.93]``; the value alone without an interval."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{text} [{bounds[0]:.3g}, {bounds[1]:.3g}]" if bounds else text


def row_fields(attrs: dict[str, Any], objectives: Sequence[str]) -> dict[str, Any]:
    """Fields for a front row: above-chance removal (worst and per protocol), each objective's
    interval as ``<objective>_ci_low`` / ``_ci_high`` (None without one) and ``ci_note``."""
    row: dict[str, Any] = {ABOVE_CHANCE: attrs.get(ABOVE_CHANCE)}
    for protocol, value in (attrs.get(REMOVED) or {}).items():
        if protocol != "worst":
            row[f"above_chance_removed:{protocol}"] = value
    for name in dict.fromkeys(("utility", "leakage", *objectives)):
        bounds = interval(attrs, name)
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = bounds if bounds else (None, None)
    row["ci_note"] = attrs.get("ci_note")
    return row
