"""MO-ASHA: asynchronous successive halving on the objective front (pure decisions).

A trial reaching a rung for the first time is ranked against the vectors already recorded
there: successive non-dominated fronts first, then, inside the front that the cut falls in,
by the hypervolume each point alone adds to its front (two objectives; at the study's own
hypervolume reference point, pushed out where a rung vector is worse than it to the rung's worst
value plus a tenth of the span; without one, that rung point alone), then by crowding distance
(larger first; boundary points infinite; the only key for three or more objectives). It continues iff its rank is
within the top ``max(1, floor(n / eta))`` of the ``n`` vectors at the rung, itself included
(ASHA's rule); while fewer than ``eta`` vectors are recorded there, it always continues.
Syne Tune's MOASHA ranks by the sorted permutation instead, which stops a newcomer that
dominates everyone (issue 13); ranking by fronts cannot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Direction = Literal["minimize", "maximize"]


def rung_epochs(min_epochs: int, reduction_factor: int, epochs: int) -> list[int]:
    """Rungs at ``min_epochs * eta**k`` strictly below ``epochs`` (the last epoch is the full
    evaluation, not a rung)."""
    if reduction_factor < 2:
        raise ValueError(f"reduction_factor must be >= 2, got {reduction_factor}")
    if min_epochs < 1:
        raise ValueError(f"min_epochs must be >= 1, got {min_epochs}")
    rungs, rung = [], min_epochs
    while rung < epochs:
        rungs.append(rung)
        rung *= reduction_factor
    return rungs


def _as_minimization(values: np.ndarray, directions: Sequence[Direction]) -> np.ndarray:
    if values.ndim != 2 or values.shape[1] != len(directions):
        raise ValueError(f"values of shape {values.shape} do not match {len(directions)} directions")
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    return values * signs


def non_dominated_fronts(points: np.ndarray) -> list[list[int]]:
    """Row indices of ``points`` (minimised) by successive non-dominated fronts."""
    remaining = list(range(len(points)))
    fronts: list[list[int]] = []
    while remaining:
        sub = points[remaining]
        front = [remaining[i] for i, p in enumerate(sub)
                 if not (np.all(sub <= p, axis=1) & np.any(sub < p, axis=1)).any()]
        fronts.append(front)
        remaining = [i for i in remaining if i not in front]
    return fronts


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row (minimised), within one front."""
    n, m = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        column = points[order, j]
        distance[order[0]] = distance[order[-1]] = math.inf
        span = column[-1] - column[0]
        if span > 0:
            distance[order[1:-1]] += (column[2:] - column[:-2]) / span
    return distance


def reference_point(points: np.ndarray) -> np.ndarray:
    """A point every row dominates (minimised): the worst value of each objective plus a tenth
    of its span (1 where the span is 0), so boundary points add a finite, comparable volume."""
    worst, best = points.max(axis=0), points.min(axis=0)
    span = worst - best
    return worst + np.where(span > 0, 0.1 * span, 1.0)


def hypervolume_contributions(front: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """What each row of a two-objective non-dominated ``front`` (minimised) alone adds to its
    hypervolume; a duplicated point adds nothing (its twin covers it)."""
    n = len(front)
    order = np.lexsort((front[:, 1], front[:, 0]))  # by the first objective, then the second
    x, y = front[order, 0], front[order, 1]
    next_x = np.append(x[1:], reference[0])
    previous_y = np.insert(y[:-1], 0, reference[1])
    contribution = np.zeros(n)
    contribution[order] = (next_x - x) * (previous_y - y)
    return contribution


def ranking(values: np.ndarray, directions: Sequence[Direction],
            reference: Sequence[float] | None = None) -> list[int]:
    """Row indices best first: by front, then (two objectives) by hypervolume contribution,
    then by crowding distance; pure ties: earlier row first, so a newcomer placed last never
    wins one.

    Crowding distance alone could not tell a front's two ends apart (both infinite), so a
    newcomer at one end lost to any earlier point at the other, and two identical early points
    (common: a probe's top-1 on a small val set is coarse) both counted as ends; in the
    benchmark that stopped the trial that later held the front's best leakage.

    ``reference`` is the study's hypervolume reference point (in the objectives' own
    directions): the contributions are then those to the volume the study maximises, so a
    newcomer's gain is weighed as the study will weigh it; the rung's own point bounds any
    coordinate a rung vector is worse in."""
    points = _as_minimization(np.asarray(values, dtype=float), directions)
    bound = reference_point(points)
    if reference is not None and np.all(np.isfinite(np.asarray(reference, dtype=float))):
        bound = np.maximum(bound, _as_minimization(np.asarray([reference], dtype=float), directions)[0])
    order: list[int] = []
    for front in non_dominated_fronts(points):
        crowd = crowding_distance(points[front])
        if points.shape[1] == 2:
            volume = hypervolume_contributions(points[front], bound)
        else:
            volume = np.zeros(len(front))
        order.extend(front[i] for i in sorted(range(len(front)), key=lambda i: (-volume[i], -crowd[i], i)))
    return order


def keep_count(n_recorded: int, reduction_factor: int) -> int:
    """How many of the ``n_recorded`` vectors at a rung go on: the top 1/eta, at least one."""
    return max(1, n_recorded // reduction_factor)


def should_continue(recorded: Sequence[Sequence[float]], newcomer: Sequence[float],
                    directions: Sequence[Direction], reduction_factor: int,
                    reference: Sequence[float] | None = None) -> bool:
    """On ``newcomer``'s first arrival at a rung holding ``recorded``: go on or stop
    (``reference``: the study's hypervolume reference point, see :func:`ranking`)."""
    n = len(recorded) + 1
    if n < reduction_factor:
        return True  # too few to judge: ASHA lets a trial through
    values = np.array([*recorded, newcomer], dtype=float)
    if not np.all(np.isfinite(values)):
        raise ValueError("rung values must be finite")
    return ranking(values, directions, reference).index(n - 1) < keep_count(n, reduction_factor)
