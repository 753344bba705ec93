"""The parent run's plots and tables, on hand-made trials."""

from __future__ import annotations

import csv
from html.parser import HTMLParser

from aam_search.search.record import TrialSummary
from aam_search.search.shown import trial_rows
from aam_search.tracking.plots import hypervolume_csv, hypervolume_png, pareto_png, svg_page, write_csv

OBJECTIVES = ["utility", "leakage"]
POINTS = [
    TrialSummary(0, "COMPLETE", (0.80, 0.60), on_front=True, params={"loss.w_lc": 100.0}, utility_drop=0.0),
    TrialSummary(1, "COMPLETE", (0.70, 0.30), on_front=True, params={"loss.w_lc": 1.0}),
    TrialSummary(2, "COMPLETE", (0.60, 0.50), params={"loss.w_lc": 10.0}),
    TrialSummary(3, "COMPLETE", (0.75, 0.20), feasible=False),
    TrialSummary(4, "FAIL", None, reason="diverged: <loss> & more"),
]
RUN_IDS = {0: "abc"}
BASELINE = {"utility": 0.82, "leakage": 0.65}


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.titles: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_title = tag == "title"

    def handle_data(self, data):
        if self._in_title:
            self.titles.append(data)

    def handle_endtag(self, tag):
        self._in_title = False


def test_svg_page_is_self_contained_with_hover_details():
    page = svg_page(POINTS, OBJECTIVES, BASELINE, "study x <y>", RUN_IDS)
    parser = Collector()
    parser.feed(page)
    assert "svg" in parser.tags and "script" in parser.tags
    assert "<script src" not in page and "<link" not in page  # nothing fetched
    hovers = "\n".join(parser.titles)
    assert "trial 0 (Pareto front)" in hovers and "loss.w_lc = 100.0" in hovers and "MLflow run abc" in hovers
    assert "trial 3 (infeasible)" in hovers and "raw features" in hovers
    assert "study x <y>" in parser.titles[0]


def test_svg_page_without_trials():
    assert "<svg" in svg_page([], OBJECTIVES, {}, "empty")


def test_pngs_and_tables(tmp_path):
    assert pareto_png(POINTS, OBJECTIVES, BASELINE, tmp_path / "f.png", "t").read_bytes()[:4] == b"\x89PNG"
    history = [[1, 0.0], [2, 0.1], [3, 0.15]]
    assert hypervolume_png(history, tmp_path / "h.png", "t").stat().st_size > 0
    rows = list(csv.DictReader(open(hypervolume_csv(history, tmp_path / "h.csv"))))
    assert rows == [{"completed": "1", "hypervolume": "0.0"}, {"completed": "2", "hypervolume": "0.1"},
                    {"completed": "3", "hypervolume": "0.15"}]
    table = trial_rows(POINTS, OBJECTIVES, RUN_IDS)
    assert table[4]["state"] == "FAIL" and table[4]["reason"].startswith("diverged") and table[4]["utility"] is None
    assert [row["mlflow_run_id"] for row in table] == ["abc", None, None, None, None]
    written = list(csv.DictReader(open(write_csv(table, tmp_path / "t.csv"))))
    assert [r["pareto"] for r in written] == ["True", "True", "False", "False", "False"]


WITH_CI = [
    TrialSummary(0, "COMPLETE", (0.80, 0.60), on_front=True, leakage_chance=0.5, above_chance=0.375,
                 intervals={"utility": (0.74, 0.86), "leakage": (0.55, 0.66)}),
    TrialSummary(1, "COMPLETE", (0.70, 0.30), on_front=True, leakage_chance=0.5),
]


def test_svg_page_draws_the_chance_level_error_bars_and_above_chance_removal():
    page = svg_page(WITH_CI, OBJECTIVES, BASELINE, "t")
    parser = Collector()
    parser.feed(page)
    hovers = "\n".join(parser.titles)
    assert 'class="chance" data-chance="0.5"' in page and "chance level 0.5" in hovers
    assert page.count('class="ci"') == 2  # trial 0's two intervals; trial 1 has none
    assert "utility: 0.8 [0.74, 0.86]" in hovers and "leakage: 0.6 [0.55, 0.66]" in hovers
    assert "above-chance leakage removed: +37.5%" in hovers
    assert "<th>above-chance removed</th>" in page and "<td>+37.5%</td>" in page
    assert "raw features" in hovers  # the raw point is still drawn
    assert 'class="chance"' not in svg_page(POINTS, OBJECTIVES, BASELINE, "t")  # no chance known, no line


def test_png_figure_draws_the_chance_level_and_error_bars():
    from aam_search.tracking.plots import pareto_figure

    axes = pareto_figure(WITH_CI, OBJECTIVES, BASELINE, "t").axes[0]
    chance = [line for line in axes.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and list(chance[0].get_xdata()) == [0.5, 0.5]  # leakage across: a vertical line
    assert axes.containers, "error bars from the intervals"
    assert trial_rows(WITH_CI, OBJECTIVES)[0]["leakage_reduction_above_chance"] == 0.375
