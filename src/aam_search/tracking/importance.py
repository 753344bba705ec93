"""Which parameters drive which objective: Optuna's parameter importances, per objective.

For a loss-weights space this is the ablation of the loss terms (how much of the variance
of utility, and of leakage, each weight explains). Optuna's ``get_param_importances`` with a
``target`` per objective, evaluated by fANOVA (random forests, scikit-learn) with a fixed
seed, so the same trials always give the same numbers. A forest of 64 trees on a few
hundred trials takes well under a second per objective; the tracker refreshes it only when
enough trials are complete (:data:`MIN_COMPLETE`, with :data:`MIN_VARYING` parameters that
took more than one value), every :data:`REFRESH_EVERY` completions after that, and when the
study finishes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from aam_search.search.objectives import direction
from aam_search.tracking.params import metric_key
from aam_search.tracking.plots import figure_canvas, write_csv

logger = logging.getLogger(__name__)

MIN_COMPLETE = 4
MIN_VARYING = 2
REFRESH_EVERY = 5
SEED = 0
N_TREES = 64
CSV_NAME = "param_importances.csv"
PNG_NAME = "param_importances.png"
METRIC_PREFIX = "importance"


def usable(trials: Sequence[FrozenTrial], n_objectives: int) -> list[FrozenTrial]:
    """Complete trials with a finite value for every objective."""
    return [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
            and len(t.values) == n_objectives and all(math.isfinite(v) for v in t.values)]


def varying_params(trials: Sequence[FrozenTrial]) -> list[str]:
    """Parameters every trial has and that took more than one value (importances are defined
    over the parameters all trials share; a constant one explains nothing)."""
    if not trials:
        return []
    shared = set(trials[0].params)
    for trial in trials[1:]:
        shared &= set(trial.params)
    return sorted(name for name in shared if len({repr(t.params[name]) for t in trials}) > 1)


def due(completed: int, last: int, *, final: bool = False) -> bool:
    """Whether to (re)compute importances now, with ``completed`` trials done and ``last``
    done at the previous computation (0: never computed)."""
    if completed < MIN_COMPLETE or completed == last:
        return False
    return final or last == 0 or completed - last >= REFRESH_EVERY


def param_importances(trials: Sequence[FrozenTrial], objectives: Sequence[str], *,
                      seed: int = SEED) -> dict[str, dict[str, float]]:
    """``{objective: {param: importance}}`` (each objective's importances sum to 1, highest
    first), or ``{}`` while there are too few complete trials or varying parameters. An
    objective that took a single value explains nothing: its importances are all 0."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = usable(trials, len(objectives))
    params = varying_params(complete)
    if len(complete) < MIN_COMPLETE or len(params) < MIN_VARYING:
        return {}
    study = optuna.create_study(directions=[direction(name) for name in objectives])  # in memory
    study.add_trials(complete)
    result: dict[str, dict[str, float]] = {}
    for index, name in enumerate(objectives):
        if len({t.values[index] for t in complete}) < 2:
            result[name] = {param: 0.0 for param in params}
            continue
        importances = get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(n_trees=N_TREES, seed=seed), params=params,
            target=lambda trial, index=index: trial.values[index],
        )
        result[name] = {param: float(value) for param, value in importances.items()}
    return result


def importance_rows(importances: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per parameter, one column per objective; most important (for any objective) first."""
    objectives = list(importances)
    params = {param for values in importances.values() for param in values}
    order = sorted(params, key=lambda p: (-max(importances[o].get(p, 0.0) for o in objectives), p))
    return [{"param": param, **{name: importances[name].get(param, 0.0) for name in objectives}} for param in order]


def importance_metrics(importances: dict[str, dict[str, float]]) -> dict[str, float]:
    """``importance.<objective>.<param>`` metrics (step: completed trials), to follow them in the UI."""
    return {f"{METRIC_PREFIX}.{metric_key(name)}.{param}": value
            for name, values in importances.items() for param, value in values.items()}


def write_importances(trials: Sequence[FrozenTrial], objectives: Sequence[str], folder: Path,
                      title: str) -> dict[str, float]:
    """Write :data:`CSV_NAME` and :data:`PNG_NAME` into ``folder`` and return the metrics to
    log, or nothing while the study has too few trials. Never raises: a failure here costs
    only the importances, not the rest of the tracker's refresh."""
    done = len(usable(trials, len(objectives)))
    try:
        importances = param_importances(trials, objectives)
        if not importances:
            return {}
        write_csv(importance_rows(importances), folder / CSV_NAME)
        importance_png(importances, folder / PNG_NAME, f"parameter importances, {title} ({done} completed trials)")
    except Exception as error:  # a degenerate set of trials the forest cannot fit, ...
        logger.info("no parameter importances after %d completed trials: %s", done, error)
        return {}
    return importance_metrics(importances)


def importance_png(importances: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    """One horizontal bar chart per objective: each parameter's share of its variance."""
    objectives = list(importances)
    params = max((len(values) for values in importances.values()), default=1)
    figure = figure_canvas(4.2 * max(1, len(objectives)), 1.4 + 0.35 * params)
    for index, name in enumerate(objectives):
        axes = figure.add_subplot(1, max(1, len(objectives)), index + 1)
        ranked = sorted(importances[name].items(), key=lambda item: item[1])
        axes.barh([param for param, _ in ranked], [value for _, value in ranked], color="#1a73e8")
        axes.set_xlim(0, 1)
        axes.set_xlabel("importance (fANOVA)")
        axes.set_title(name, fontsize=10)
        axes.grid(axis="x", alpha=0.3)
        axes.tick_params(axis="y", labelsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    return path
