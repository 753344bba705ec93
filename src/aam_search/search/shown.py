"""What a trial shows beside its objective values, as text and as table rows: above-chance
removal and the bootstrap intervals, for the live view, ``aam-search front`` and the
parent run's ``trials.csv``. The values come from :class:`~aam_search.search.record.TrialSummary`.

Above-chance removal is (raw cMAP - adapted cMAP) / (raw cMAP - chance): cMAP cannot fall below
chance, so the relative reduction alone understates what was removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aam_search.search.record import ABOVE_CHANCE, TrialSummary


def with_interval(value: Any, bounds: tuple[float, float] | None) -> str:
    """``0.875 [0.81, 0.93]``; the value alone without an interval."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{text} [{bounds[0]:.3g}, {bounds[1]:.3g}]" if bounds else text


def percent(value: float | None) -> str:
    """``+12.5%``; ``-`` for no value."""
    return "-" if value is None else f"{100 * value:+.1f}%"


def row_fields(summary: TrialSummary, objectives: Sequence[str]) -> dict[str, Any]:
    """Fields for a front row: above-chance removal (worst and per protocol), each objective's
    interval as ``<objective>_ci_low`` / ``_ci_high`` (None without one) and ``ci_note``."""
    row: dict[str, Any] = {ABOVE_CHANCE: summary.above_chance}
    for protocol, value in summary.above_chance_removed.items():
        if protocol != "worst":
            row[f"above_chance_removed:{protocol}"] = value
    for name in dict.fromkeys(("utility", "leakage", *objectives)):
        bounds = summary.interval(name)
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = bounds if bounds else (None, None)
    row["ci_note"] = summary.ci_note
    return row


def trial_rows(summaries: Sequence[TrialSummary], objectives: Sequence[str],
               run_ids: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    """One row per trial (``aam-search front --format json|csv``, the parent run's trials.csv);
    ``run_ids``: the trials' MLflow runs, as the column ``mlflow_run_id``."""
    rows = []
    for summary in summaries:
        row: dict[str, Any] = {"trial": summary.number, "state": summary.state, "pareto": summary.on_front,
                               "feasible": summary.feasible}
        row.update(dict(zip(objectives, summary.values or [None] * len(objectives), strict=True)))
        row.update(utility_drop=summary.utility_drop, leakage_reduction=summary.leakage_reduction,
                   combined_score=summary.combined_score, slot=summary.slot, reason=summary.reason)
        row.update(row_fields(summary, objectives))
        if run_ids is not None:
            row["mlflow_run_id"] = run_ids.get(summary.number)
        row.update({f"param:{name}": value for name, value in sorted(summary.params.items())})
        rows.append(row)
    return rows
