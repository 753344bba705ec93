"""Above-chance removal and bootstrap intervals beside the relative reduction: the trial's user
attributes, the live view's table and log line, and ``aam-search front`` (table, JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from aam_search.cli import main
from aam_search.search.callbacks import TrialCompleted
from aam_search.search.live import StudyView, front_table
from aam_search.search.record import completed_attrs, result_attrs, trial_summary
from aam_search.search.shown import row_fields, trial_rows, with_interval

RESULT = {
    "utility": 0.875, "leakage": 0.75, "leakage_chance": 0.5, "leakage_reduction": 0.1667, "utility_drop": 0.01,
    "combined_score": 0.56, "leakage_reduction_above_chance": 0.25,
    "leakage_above_chance_removed": {"static": 0.6, "clip": 0.25, "worst": 0.25},
    "ci": {"utility": [0.81, 0.93], "leakage": [0.7, 0.8], "leakage:static": [0.55, 0.65], "leakage:clip": None},
    "measured": {"privacy": {"static": {"cmap": 0.6, "chance": 0.5}, "clip": {"cmap": 0.75, "chance": 0.6}}},
    "timings": {"total_s": 2.0},
}


def _summary(attrs, state=TrialState.COMPLETE, values=(0.875, 0.75)):
    trial = optuna.trial.create_trial(state=state, values=list(values) if state == TrialState.COMPLETE else None,
                                      user_attrs=attrs)
    return trial_summary(trial, ["utility", "leakage"])


def test_result_attrs_keep_the_old_keys_and_add_removal_intervals_and_chance():
    attrs = result_attrs(RESULT)
    for key in ("utility", "leakage", "leakage_chance", "leakage_reduction", "utility_drop", "combined_score"):
        assert attrs[key] == RESULT[key]
    assert attrs["leakage_reduction_above_chance"] == 0.25
    assert attrs["leakage_above_chance_removed"]["static"] == 0.6
    assert completed_attrs(RESULT)["seconds"] == 2.0
    summary = _summary(attrs)
    assert summary.interval("utility") == (0.81, 0.93) and summary.interval("leakage:clip") is None
    assert summary.chance("leakage") == 0.5 and summary.chance("leakage:clip") == 0.6
    assert summary.chance("utility") is None
    # Without intervals (too few videos) the note is kept, and nothing breaks.
    bare = result_attrs({"utility": 0.8, "ci": None, "ci_note": "utility: 4 videos < 10"})
    assert "ci" not in bare and bare["ci_note"] == "utility: 4 videos < 10"
    assert _summary(bare).interval("utility") is None and with_interval(0.8, None) == "0.8"
    assert with_interval(0.875, (0.81, 0.93)) == "0.875 [0.81, 0.93]"


def test_a_summary_reads_numbers_written_as_text_and_the_failure_reason():
    summary = _summary({"utility_drop": "nan", "leakage": "0.5", "ci": {"utility": ["nan", 0.9]}})
    assert summary.utility_drop is None and summary.leakage == 0.5 and summary.interval("utility") is None
    failed = _summary({"aam:reason": "diverged: loss", "aam:slot": 3, "aam:attempt": 1}, state=TrialState.FAIL)
    assert (failed.reason, failed.slot, failed.attempt, failed.values) == ("diverged: loss", 3, 1, None)
    stale = _summary({}, state=TrialState.FAIL)
    assert stale.reason.endswith("(stale heartbeat)")
    (row,) = trial_rows([failed], ["utility", "leakage"])
    assert row["reason"] == "diverged: loss" and row["utility"] is None and "mlflow_run_id" not in row


def test_row_fields_name_each_objectives_interval():
    row = row_fields(_summary(result_attrs(RESULT)), ["utility", "leakage:static"])
    assert row["leakage_reduction_above_chance"] == 0.25
    assert row["above_chance_removed:static"] == 0.6 and row["above_chance_removed:clip"] == 0.25
    assert (row["utility_ci_low"], row["utility_ci_high"]) == (0.81, 0.93)
    assert (row["leakage_ci_low"], row["leakage_ci_high"]) == (0.7, 0.8)
    assert (row["leakage:static_ci_low"], row["leakage:static_ci_high"]) == (0.55, 0.65)
    assert row["ci_note"] is None


@pytest.fixture
def stored(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shown.db'}"
    study = optuna.create_study(study_name="shown", storage=storage, directions=["maximize", "minimize"])
    distributions = {"loss.w_lc": optuna.distributions.FloatDistribution(0.1, 10.0)}
    study.add_trial(optuna.trial.create_trial(values=[0.875, 0.75], params={"loss.w_lc": 1.0},
                                              distributions=distributions, user_attrs=result_attrs(RESULT)))
    return study, storage


def _table_text(table) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_front_table_shows_intervals_and_above_chance_removal(stored):
    study, _ = stored
    text = _table_text(front_table(study.get_trials(deepcopy=False), ["utility", "leakage"]))
    assert "above chance" in text and "leak red." in text  # beside the relative reduction, which stays
    assert "0.875 [0.81, 0.93]" in text and "0.75 [0.7, 0.8]" in text
    assert "+25.0%" in text and "+16.7%" in text


def test_front_json_and_csv_carry_the_new_fields(stored, capsys):
    _, storage = stored
    assert main(["front", "shown", "--storage", storage, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["leakage_reduction"] == pytest.approx(0.1667)  # the old field stays
    assert row["leakage_reduction_above_chance"] == 0.25 and row["above_chance_removed:static"] == 0.6
    assert [row["utility_ci_low"], row["utility_ci_high"]] == [0.81, 0.93]
    assert [row["leakage_ci_low"], row["leakage_ci_high"]] == [0.7, 0.8]
    assert main(["front", "shown", "--storage", storage, "--format", "csv"]) == 0
    (line,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert float(line["leakage_reduction_above_chance"]) == 0.25 and float(line["utility_ci_high"]) == 0.93
    assert line["leakage_reduction"] and line["param:loss.w_lc"] == "1.0"


def test_the_live_log_line_says_how_much_above_chance_leakage_went():
    console = Console(width=200, record=True, file=io.StringIO())
    view = StudyView(console)
    view.on_trial_completed(TrialCompleted(number=3, values=(0.9, 0.4), result=RESULT, hypervolume=0.1))
    text = console.export_text()
    assert "trial 3 completed" in text and "above-chance leakage removed +25.0%" in text
