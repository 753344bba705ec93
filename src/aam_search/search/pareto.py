"""Objective values from a trial's result, the Pareto front and its hypervolume."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from aam_search.errors import AamSearchError
from aam_search.search import optuna_access as private
from aam_search.search.study import DISCARDED, objective_direction


class ObjectiveError(AamSearchError, KeyError):
    """A result.json that lacks a value an objective needs."""


def objective_value(name: str, result: dict[str, Any]) -> float:
    """Read one objective from a trial's result.json."""
    try:
        if name == "utility":
            value = result["utility"]
        elif name == "leakage":
            value = result["leakage"]
        elif name.startswith("leakage:"):
            value = result["measured"]["privacy"][name.split(":", 1)[1]]["cmap"]
        elif name.startswith("task:"):
            value = result["measured"]["tasks"][name]["top1"]
        elif name == "params":
            value = result["adapter_parameters"]
        elif name == "combined":
            value = result["combined_score"]
        else:
            raise KeyError(name)
    except KeyError as missing:
        raise ObjectiveError(f"result has no value for objective {name!r} (missing {missing})") from None
    value = float(value)
    if not math.isfinite(value):
        raise ObjectiveError(f"objective {name!r} is {value}")
    return value


def completed(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and DISCARDED not in t.user_attrs]


def _as_minimization(values: np.ndarray, objectives: list[str]) -> np.ndarray:
    signs = np.array([1.0 if objective_direction(n) == "minimize" else -1.0 for n in objectives])
    return values * signs


def pareto_mask(values: np.ndarray, objectives: list[str]) -> np.ndarray:
    """Non-dominated rows of ``values`` (one column per objective, in their directions)."""
    points = _as_minimization(values, objectives)
    mask = np.ones(len(points), dtype=bool)
    for i, point in enumerate(points):
        dominated = np.all(points <= point, axis=1) & np.any(points < point, axis=1)
        mask[i] = not dominated.any()
    return mask


def feasible(trial: FrozenTrial) -> bool:
    """Optuna 5 constraints (set with ``trial.set_constraint``): feasible when all <= 0."""
    return all(value <= 0 for value in trial.constraints.values())


def pareto_front(trials: list[FrozenTrial], objectives: list[str]) -> list[FrozenTrial]:
    """Completed, feasible, non-dominated trials, best first by the first objective."""
    candidates = [t for t in completed(trials) if feasible(t)]
    if not candidates:
        return []
    values = np.array([t.values for t in candidates], dtype=float)
    front = [t for t, keep in zip(candidates, pareto_mask(values, objectives), strict=True) if keep]
    first = objective_direction(objectives[0]) == "maximize"
    return sorted(front, key=lambda t: t.values[0], reverse=first)


def reference_point(objectives: list[str], baseline: dict[str, float]) -> np.ndarray:
    """Derived from the raw baseline: a trial must keep half the raw utility and leak less
    than raw features to add hypervolume. Other objectives use generous bounds."""
    point = []
    for name in objectives:
        if name == "utility" or name.startswith("task:"):
            point.append(0.5 * baseline.get(name, baseline.get("utility", 1.0)))
        elif name.startswith("leakage"):
            point.append(baseline.get(name, baseline.get("leakage", 1.0)))
        elif name == "params":
            point.append(baseline.get("params", 1e9))
        else:  # combined score
            point.append(0.0)
    return np.array(point, dtype=float)


def hypervolume(trials: list[FrozenTrial], objectives: list[str], reference: np.ndarray) -> float:
    front = pareto_front(trials, objectives)
    if not front:
        return 0.0
    points = _as_minimization(np.array([t.values for t in front], dtype=float), objectives)
    ref = _as_minimization(reference[None, :], objectives)[0]
    inside = points[np.all(points < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    return private.compute_hypervolume(inside, ref)
