"""Choosing the trial to promote: pure logic on the study's trials (no MLflow, no training).

Rules (exactly one applies):

- ``trial=N``: that trial; it must have completed.
- ``max_utility_drop=X`` (the default, 0.01): among completed trials whose validation
  utility dropped at most X (relative to raw features), the one that leaks least; ties go
  to higher utility, then to the earlier trial. A trial whose drop is undefined (raw
  utility 0) never qualifies.
- ``knee=True``: the Pareto-front trial closest to the front's ideal corner (the best value
  of each objective), each objective divided by its raw-feature value.

Only COMPLETE trials are ever chosen: a failed, pruned or running trial has no final
validation numbers to stand on.
"""

from __future__ import annotations

import math

from optuna.trial import FrozenTrial

from aam_search.errors import AamSearchError
from aam_search.search.objectives import direction
from aam_search.search.pareto import completed, pareto_front
from aam_search.search.record import trial_summary
from aam_search.trainer.reporter import finite_number

DEFAULT_MAX_UTILITY_DROP = 0.01


class SelectionError(AamSearchError, ValueError):
    """No trial meets the rule (or the named trial cannot be chosen); the message says why."""


def choose_trial(
    trials: list[FrozenTrial],
    objectives: list[str],
    *,
    trial: int | None = None,
    max_utility_drop: float | None = DEFAULT_MAX_UTILITY_DROP,
    knee: bool = False,
    baseline: dict[str, float] | None = None,
) -> tuple[FrozenTrial, str]:
    """The trial a rule picks, and the rule in words; :class:`SelectionError` if none."""
    done = completed(trials)
    if trial is not None:
        match = [t for t in trials if t.number == trial]
        if not match:
            last = max((t.number for t in trials), default=-1)
            raise SelectionError(f"trial {trial} does not exist (trials 0-{last})")
        chosen = match[0]
        if chosen not in done:
            reason = trial_summary(chosen).reason
            raise SelectionError(f"trial {trial} is {chosen.state.name}, not completed"
                                 + (f" ({reason})" if reason else "") + "; only completed trials can be promoted")
        return chosen, f"trial {trial}"
    if not done:
        raise SelectionError("the study has no completed trial yet")
    if knee:
        return _knee(trials, objectives, baseline or {}), "knee of the Pareto front"
    limit = DEFAULT_MAX_UTILITY_DROP if max_utility_drop is None else max_utility_drop
    summaries = [(trial_summary(t), t) for t in done]
    eligible = [(s.leakage, -(s.utility or 0.0), t.number, t) for s, t in summaries
                if s.utility_drop is not None and s.leakage is not None and s.utility_drop <= limit]
    if not eligible:
        drops = [(s.utility_drop, t.number) for s, t in summaries if s.utility_drop is not None]
        if drops:
            best = min(drops)
            hint = f"the smallest utility drop is {best[0]:.4f} (trial {best[1]})"
        else:
            hint = "no trial has a defined utility drop (raw utility is 0?)"
        raise SelectionError(f"no completed trial has utility_drop <= {limit}: {hint}; "
                             "raise --max-utility-drop, or use --knee or --trial N")
    chosen = min(eligible, key=lambda e: e[:3])[3]
    return chosen, f"lowest leakage with utility_drop <= {limit}"


def _knee(trials: list[FrozenTrial], objectives: list[str], baseline: dict[str, float]) -> FrozenTrial:
    front = pareto_front(trials, objectives)
    if not front:
        raise SelectionError("the Pareto front is empty (no feasible completed trial)")
    values = [list(t.values) for t in front]
    scores = []
    for t, row in zip(front, values, strict=True):
        total = 0.0
        for i, name in enumerate(objectives):
            column = [r[i] for r in values]
            ideal = max(column) if direction(name) == "maximize" else min(column)
            raw = finite_number(baseline.get(name))
            scale = abs(raw) if raw else (max(column) - min(column)) or 1.0
            total += ((row[i] - ideal) / scale) ** 2
        scores.append((math.sqrt(total), t.number, t))
    return min(scores, key=lambda s: s[:2])[2]
