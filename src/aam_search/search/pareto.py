"""The Pareto front of a study, its hypervolume, and the trials summarized against it."""

from __future__ import annotations

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from aam_search.search import optuna_access as private
from aam_search.search.objectives import direction, reference_value
from aam_search.search.record import TrialSummary, feasible, is_discarded, trial_summary


def completed(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and not is_discarded(t)]


def _as_minimization(values: np.ndarray, objectives: list[str]) -> np.ndarray:
    signs = np.array([1.0 if direction(n) == "minimize" else -1.0 for n in objectives])
    return values * signs


def pareto_mask(values: np.ndarray, objectives: list[str]) -> np.ndarray:
    """Non-dominated rows of ``values`` (one column per objective, in their directions)."""
    points = _as_minimization(values, objectives)
    mask = np.ones(len(points), dtype=bool)
    for i, point in enumerate(points):
        dominated = np.all(points <= point, axis=1) & np.any(points < point, axis=1)
        mask[i] = not dominated.any()
    return mask


def pareto_front(trials: list[FrozenTrial], objectives: list[str]) -> list[FrozenTrial]:
    """Completed, feasible, non-dominated trials, best first by the first objective."""
    candidates = [t for t in completed(trials) if feasible(t)]
    if not candidates:
        return []
    values = np.array([t.values for t in candidates], dtype=float)
    front = [t for t, keep in zip(candidates, pareto_mask(values, objectives), strict=True) if keep]
    first = direction(objectives[0]) == "maximize"
    return sorted(front, key=lambda t: t.values[0], reverse=first)


def reference_point(objectives: list[str], baseline: dict[str, float]) -> np.ndarray:
    """The hypervolume's reference point, from the raw baseline (see the objectives table)."""
    return np.array([reference_value(name, baseline) for name in objectives], dtype=float)


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



def summarize_trials(trials: list[FrozenTrial], objectives: list[str]) -> list[TrialSummary]:
    """The study's trials (less the discarded ones) as summaries, marked on the front."""
    front = {t.number for t in pareto_front(trials, objectives)}
    return [trial_summary(t, objectives, on_front=t.number in front) for t in trials if not is_discarded(t)]


def front_summaries(trials: list[FrozenTrial], objectives: list[str]) -> list[TrialSummary]:
    """The Pareto front as summaries, best first by the first objective."""
    return [trial_summary(t, objectives, on_front=True) for t in pareto_front(trials, objectives)]
