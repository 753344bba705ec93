"""The study's Pareto front and hypervolume as files for the parent MLflow run.

``pareto_front.html`` is interactive: Plotly when it is installed (MLflow does not depend on
it), otherwise a self-contained page with an inline SVG scatter whose points show their
trial, values and parameters on hover. ``pareto_front.png`` and ``hypervolume.png`` use
matplotlib's object API (never pyplot, so a caller's backend is left alone).
"""

from __future__ import annotations

import csv
import html
import importlib.util
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aam_search.search.objectives import label
from aam_search.search.record import TrialSummary
from aam_search.search.shown import percent
from aam_search.trainer.reporter import finite_number

RunIds = Mapping[int, str]  # trial number -> its MLflow run, shown on hover


def _axes(objectives: Sequence[str]) -> tuple[int, int]:
    """(x, y) objective indices: leakage across, utility up, for the usual pair."""
    return (1, 0) if len(objectives) > 1 else (0, 0)


def _completed(points: Sequence[TrialSummary]) -> list[TrialSummary]:
    return [p for p in points if p.complete and p.values]


def chance_levels(points: Sequence[TrialSummary], objectives: Sequence[str]) -> dict[str, float]:
    """Objective -> its chance level (leakage objectives only), from the trials' records."""
    levels: dict[str, float] = {}
    for point in _completed(points):
        for name in objectives:
            if name not in levels and (level := point.chance(name)) is not None:
                levels[name] = level
    return levels


def _errors(group: Sequence[TrialSummary], name: str, index: int) -> list[list[float]] | None:
    """[below, above] error-bar lengths of objective ``name`` from the intervals, or None without any."""
    below, above, any_interval = [], [], False
    for point in group:
        bounds = point.interval(name)
        value = point.values[index]
        any_interval |= bounds is not None
        below.append(max(0.0, value - bounds[0]) if bounds else 0.0)
        above.append(max(0.0, bounds[1] - value) if bounds else 0.0)
    return [below, above] if any_interval else None


def _front_line(front: list[TrialSummary], xi: int, yi: int) -> list[tuple[float, float]]:
    return sorted(((p.values[xi], p.values[yi]) for p in front), key=lambda xy: xy[0])


# The relative changes a point shows beside its values: hover names, table heads.
SHARES = (("utility_drop", "utility drop"), ("leakage_reduction", "leakage reduction"),
          ("above-chance leakage removed", "above-chance removed"))


def _shares(point: TrialSummary) -> tuple[float | None, ...]:
    return point.utility_drop, point.leakage_reduction, point.above_chance


def _hover(point: TrialSummary, objectives: Sequence[str], run_id: str | None = None) -> str:
    lines = [f"trial {point.number}" + (" (Pareto front)" if point.on_front else "")
             + ("" if point.feasible else " (infeasible)")]
    for name, value in zip(objectives, point.values or [], strict=False):
        bounds = point.interval(name)
        lines.append(f"{name}: {value:.4g}" + (f" [{bounds[0]:.3g}, {bounds[1]:.3g}]" if bounds else ""))
    lines += [f"{what}: {percent(share)}" for (what, _), share in zip(SHARES, _shares(point), strict=True)
              if share is not None]
    lines += [f"{name} = {value}" for name, value in sorted(point.params.items())]
    if run_id:
        lines.append(f"MLflow run {run_id}")
    return "\n".join(lines)


# ---------------------------------------------------------------- tables
def write_csv(rows: list[dict[str, Any]], path: Path, columns: list[str] | None = None) -> Path:
    if columns is None:
        columns = []
        for row in rows:
            columns += [key for key in row if key not in columns]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- matplotlib
def figure_canvas(width: float = 7.0, height: float = 4.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def pareto_png(points: Sequence[TrialSummary], objectives: Sequence[str], baseline: dict[str, float],
               path: Path, title: str) -> Path:
    pareto_figure(points, objectives, baseline, title).savefig(path)
    return path


def pareto_figure(points: Sequence[TrialSummary], objectives: Sequence[str], baseline: dict[str, float], title: str):
    """The front as a matplotlib figure: points with their intervals, the raw point, the chance level."""
    xi, yi = _axes(objectives)
    figure = figure_canvas()
    axes = figure.add_subplot()
    done = _completed(points)
    dominated = [p for p in done if not p.on_front and p.feasible]
    infeasible = [p for p in done if not p.feasible]
    front = [p for p in done if p.on_front]
    if dominated:
        axes.scatter([p.values[xi] for p in dominated], [p.values[yi] for p in dominated],
                     c="#9aa0a6", s=28, label="dominated")
    if infeasible:
        axes.scatter([p.values[xi] for p in infeasible], [p.values[yi] for p in infeasible],
                     marker="x", c="#9aa0a6", s=28, label="infeasible")
    for group in (dominated, front):
        x_err, y_err = _errors(group, objectives[xi], xi), _errors(group, objectives[yi], yi)
        if group and (x_err or y_err):
            axes.errorbar([p.values[xi] for p in group], [p.values[yi] for p in group], xerr=x_err, yerr=y_err,
                          fmt="none", ecolor="#d93025" if group is front else "#9aa0a6", alpha=0.5, lw=1)
    levels = chance_levels(points, objectives)
    if objectives[xi] in levels:
        axes.axvline(levels[objectives[xi]], c="#5f6368", ls="--", lw=1, label=f"chance ({levels[objectives[xi]]:.3g})")
    if yi != xi and objectives[yi] in levels:
        axes.axhline(levels[objectives[yi]], c="#5f6368", ls="--", lw=1, label=f"chance ({levels[objectives[yi]]:.3g})")
    if front:
        line = _front_line(front, xi, yi)
        axes.plot([x for x, _ in line], [y for _, y in line], c="#d93025", lw=1, alpha=0.6, drawstyle="steps-post")
        axes.scatter([x for x, _ in line], [y for _, y in line], c="#d93025", s=40, zorder=3, label="Pareto front")
        for point in front:
            axes.annotate(str(point.number), (point.values[xi], point.values[yi]), textcoords="offset points",
                          xytext=(4, 4), fontsize=7)
    raw = (finite_number(baseline.get(objectives[xi])), finite_number(baseline.get(objectives[yi])))
    if raw[0] is not None and raw[1] is not None:
        axes.scatter([raw[0]], [raw[1]], marker="*", c="black", s=120, zorder=4, label="raw features")
    axes.set_xlabel(label(objectives[xi]))
    axes.set_ylabel(label(objectives[yi]))
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    if done or raw[0] is not None:
        axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def hypervolume_png(history: Sequence[Sequence[float]], path: Path, title: str) -> Path:
    figure = figure_canvas(6.0, 3.6)
    axes = figure.add_subplot()
    if history:
        axes.plot([h[0] for h in history], [h[1] for h in history], marker="o", ms=3, c="#1a73e8")
    axes.set_xlabel("completed trials")
    axes.set_ylabel("hypervolume")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    return path


def hypervolume_csv(history: Sequence[Sequence[float]], path: Path) -> Path:
    return write_csv([{"completed": int(h[0]), "hypervolume": h[1]} for h in history], path,
                     ["completed", "hypervolume"])


# ---------------------------------------------------------------- interactive HTML
def pareto_html(points: Sequence[TrialSummary], objectives: Sequence[str], baseline: dict[str, float],
                path: Path, title: str, run_ids: RunIds | None = None) -> Path:
    if importlib.util.find_spec("plotly") is not None:
        try:
            return _plotly_html(points, objectives, baseline, path, title, run_ids or {})
        except Exception:  # an odd plotly install: the built-in page still works
            pass
    path.write_text(svg_page(points, objectives, baseline, title, run_ids))
    return path


def _plotly_html(points, objectives, baseline, path: Path, title: str, run_ids: RunIds) -> Path:
    import plotly.graph_objects as go

    xi, yi = _axes(objectives)
    figure = go.Figure()
    done = _completed(points)
    groups = (("Pareto front", [p for p in done if p.on_front], "#d93025", "circle"),
              ("dominated", [p for p in done if not p.on_front and p.feasible], "#9aa0a6", "circle"),
              ("infeasible", [p for p in done if not p.feasible], "#9aa0a6", "x"))
    for name, group, colour, symbol in groups:
        if group:
            group = sorted(group, key=lambda p: p.values[xi])
            figure.add_trace(go.Scatter(
                x=[p.values[xi] for p in group], y=[p.values[yi] for p in group], name=name,
                mode="lines+markers" if name == "Pareto front" else "markers",
                line={"shape": "hv", "width": 1}, marker={"color": colour, "symbol": symbol, "size": 9},
                error_x=_plotly_errors(group, objectives[xi], xi), error_y=_plotly_errors(group, objectives[yi], yi),
                text=[_hover(p, objectives, run_ids.get(p.number)).replace("\n", "<br>") for p in group],
                hoverinfo="text"))
    raw = (finite_number(baseline.get(objectives[xi])), finite_number(baseline.get(objectives[yi])))
    if raw[0] is not None and raw[1] is not None:
        figure.add_trace(go.Scatter(x=[raw[0]], y=[raw[1]], name="raw features", mode="markers",
                                    marker={"color": "black", "symbol": "star", "size": 14}))
    levels = chance_levels(points, objectives)
    if objectives[xi] in levels:
        figure.add_vline(x=levels[objectives[xi]], line_dash="dash", annotation_text="chance")
    if yi != xi and objectives[yi] in levels:
        figure.add_hline(y=levels[objectives[yi]], line_dash="dash", annotation_text="chance")
    figure.update_layout(title=title, xaxis_title=label(objectives[xi]), yaxis_title=label(objectives[yi]),
                         template="plotly_white")
    figure.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def _plotly_errors(group: Sequence[TrialSummary], name: str, index: int) -> dict[str, Any] | None:
    errors = _errors(group, name, index)
    return None if errors is None else {"type": "data", "symmetric": False, "arrayminus": errors[0],
                                        "array": errors[1], "thickness": 1}


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def svg_page(points: Sequence[TrialSummary], objectives: Sequence[str], baseline: dict[str, float],
             title: str, run_ids: RunIds | None = None) -> str:
    """A self-contained HTML page: an SVG scatter with hover details, and the front's table."""
    run_ids = run_ids or {}
    xi, yi = _axes(objectives)
    width, height, left, right, top, bottom = 760, 480, 70, 20, 40, 55
    done = _completed(points)
    raw = (finite_number(baseline.get(objectives[xi])), finite_number(baseline.get(objectives[yi])))
    xs = [p.values[xi] for p in done] + ([raw[0]] if raw[0] is not None and raw[1] is not None else [])
    ys = [p.values[yi] for p in done] + ([raw[1]] if raw[0] is not None and raw[1] is not None else [])
    levels = chance_levels(points, objectives)
    chance_x = levels.get(objectives[xi])
    chance_y = levels.get(objectives[yi]) if yi != xi else None
    if not xs:
        xs, ys = [0.0, 1.0], [0.0, 1.0]
    xs, ys = xs + ([chance_x] if chance_x is not None else []), ys + ([chance_y] if chance_y is not None else [])
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    x_pad = (x_high - x_low) * 0.08 or 0.05
    y_pad = (y_high - y_low) * 0.08 or 0.05
    x_low, x_high, y_low, y_high = x_low - x_pad, x_high + x_pad, y_low - y_pad, y_high + y_pad

    def sx(value: float) -> float:
        return left + (value - x_low) / (x_high - x_low) * (width - left - right)

    def sy(value: float) -> float:
        return height - bottom - (value - y_low) / (y_high - y_low) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="Pareto front">',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="white" stroke="#ccc"/>']
    for tick in _ticks(x_low, x_high):
        parts.append(f'<line x1="{sx(tick):.1f}" y1="{top}" x2="{sx(tick):.1f}" y2="{height - bottom}" '
                     'stroke="#eee"/>')
        parts.append(f'<text x="{sx(tick):.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                     f'font-size="11">{tick:.3g}</text>')
    for tick in _ticks(y_low, y_high):
        parts.append(f'<line x1="{left}" y1="{sy(tick):.1f}" x2="{width - right}" y2="{sy(tick):.1f}" '
                     'stroke="#eee"/>')
        parts.append(f'<text x="{left - 6}" y="{sy(tick) + 4:.1f}" text-anchor="end" font-size="11">'
                     f'{tick:.3g}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle" '
                 f'font-size="12">{html.escape(label(objectives[xi]))}</text>')
    parts.append(f'<text transform="translate(16 {(top + height - bottom) / 2}) rotate(-90)" '
                 f'text-anchor="middle" font-size="12">{html.escape(label(objectives[yi]))}</text>')
    front = [p for p in done if p.on_front]
    for level, vertical in ((chance_x, True), (chance_y, False)):
        if level is not None:
            ends = (f'x1="{sx(level):.1f}" y1="{top}" x2="{sx(level):.1f}" y2="{height - bottom}"' if vertical else
                    f'x1="{left}" y1="{sy(level):.1f}" x2="{width - right}" y2="{sy(level):.1f}"')
            parts.append(f'<g class="chance" data-chance="{level:.6g}"><title>chance level {level:.4g}</title>'
                         f'<line {ends} stroke="#5f6368" stroke-dasharray="5,4"/></g>')
    for point in done:  # error bars from the bootstrap intervals
        px, py = sx(point.values[xi]), sy(point.values[yi])
        if (bounds := point.interval(objectives[xi])) is not None:
            parts.append(f'<line class="ci" x1="{sx(bounds[0]):.1f}" y1="{py:.1f}" x2="{sx(bounds[1]):.1f}" '
                         f'y2="{py:.1f}" stroke="#9aa0a6"/>')
        if yi != xi and (bounds := point.interval(objectives[yi])) is not None:
            parts.append(f'<line class="ci" x1="{px:.1f}" y1="{sy(bounds[0]):.1f}" x2="{px:.1f}" '
                         f'y2="{sy(bounds[1]):.1f}" stroke="#9aa0a6"/>')
    if front:
        line = _front_line(front, xi, yi)
        steps = [f"{sx(line[0][0]):.1f},{sy(line[0][1]):.1f}"]
        for (_, y_prev), (x, y) in zip(line, line[1:], strict=False):
            steps += [f"{sx(x):.1f},{sy(y_prev):.1f}", f"{sx(x):.1f},{sy(y):.1f}"]
        parts.append(f'<polyline points="{" ".join(steps)}" fill="none" stroke="#d93025" stroke-opacity="0.6"/>')
    for point in sorted(done, key=lambda p: p.on_front):  # the front drawn last, on top
        x, y = sx(point.values[xi]), sy(point.values[yi])
        tip = html.escape(_hover(point, objectives, run_ids.get(point.number)))
        if not point.feasible:
            shape = (f'<path d="M{x - 4:.1f},{y - 4:.1f} L{x + 4:.1f},{y + 4:.1f} M{x - 4:.1f},{y + 4:.1f} '
                     f'L{x + 4:.1f},{y - 4:.1f}" stroke="#9aa0a6" stroke-width="2"/>')
        else:
            colour, radius = ("#d93025", 6) if point.on_front else ("#9aa0a6", 4.5)
            shape = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{colour}"/>'
        tag = (f'<text x="{x + 7:.1f}" y="{y - 6:.1f}" font-size="10">{point.number}</text>'
               if point.on_front else "")
        parts.append(f'<g class="point" data-trial="{point.number}"><title>{tip}</title>{shape}{tag}</g>')
    if raw[0] is not None and raw[1] is not None:
        x, y = sx(raw[0]), sy(raw[1])
        star = " ".join(
            f"{x + (8 if i % 2 == 0 else 3.5) * math.sin(i * math.pi / 5):.1f},"
            f"{y - (8 if i % 2 == 0 else 3.5) * math.cos(i * math.pi / 5):.1f}" for i in range(10))
        parts.append(f'<g><title>raw features (identity adapter)\n{html.escape(objectives[xi])}: {raw[0]:.4g}\n'
                     f'{html.escape(objectives[yi])}: {raw[1]:.4g}</title><polygon points="{star}" fill="black"/></g>')
    parts.append("</svg>")

    head = ["trial", *objectives, *(name for _, name in SHARES), "parameters"]
    rows = []
    for point in sorted(front, key=lambda p: p.values[xi]):
        cells = [str(point.number), *(f"{v:.4g}" for v in point.values), *map(percent, _shares(point))]
        cells.append(", ".join(f"{k}={v}" for k, v in sorted(point.params.items())))
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    counts = {state: sum(p.state == state for p in points) for state in ("COMPLETE", "FAIL", "RUNNING")}
    summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    data = json.dumps([{"trial": p.number, "values": p.values, "pareto": p.on_front} for p in done])
    data = data.replace("</", "<\\/")  # raw text inside <script>: only "</" could end it
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 16px; color: #202124; }}
.point {{ cursor: pointer; }} .point:hover circle {{ stroke: #202124; stroke-width: 2; }}
table {{ border-collapse: collapse; font-size: 13px; margin-top: 12px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
td:last-child {{ text-align: left; }}
</style></head><body>
<h3>{html.escape(title)}</h3>
<p>Trials: {html.escape(summary or "none yet")}. Red: the Pareto front (hover a point for its trial,
values and parameters); black star: raw features (the identity adapter); dashed line: the chance
level of leakage (cMAP cannot fall below it); grey bars: bootstrap intervals.</p>
{"".join(parts)}
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>{"".join(rows)}</table>
<script type="application/json" id="trials">{data}</script>
</body></html>
"""
