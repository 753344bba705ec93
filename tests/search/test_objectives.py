"""The objectives table: every name the study config accepts has a direction, a reader, a
reference value and a label; a name it refuses is refused naming the field."""

from __future__ import annotations

import math

import pytest

from aam_search.features.config import ConfigError
from aam_search.search.config import StudyConfig
from aam_search.search.objectives import (
    PROTOCOLS,
    ObjectiveError,
    UnknownObjective,
    baseline_values,
    direction,
    kind_of,
    label,
    objective_value,
)
from aam_search.search.pareto import reference_point
from aam_search.trainer.config import EvalConfig

RESULT = {
    "utility": 0.8, "leakage": 0.4, "combined_score": 0.7, "adapter_parameters": 1234,
    "measured": {"privacy": {"static": {"cmap": 0.4}, "clip": {"cmap": 0.35}},
                 "tasks": {"task:scene": {"top1": 0.55}}},
}
RAW = {"tasks": {"action": {"top1": 0.9, "chance": 0.1}, "task:scene": {"top1": 0.6, "chance": 0.25}},
       "privacy": {"static": {"cmap": 0.7, "chance": 0.5}, "clip": {"cmap": 0.85, "chance": 0.6}}}
# One name of every kind the config accepts.
ACCEPTED = ["utility", "leakage", *(f"leakage:{p}" for p in PROTOCOLS), "task:scene", "params", "combined"]


def _config(objectives: list[str]) -> StudyConfig:
    return StudyConfig(name="s", data={"cache": "c"}, objectives=objectives)


@pytest.mark.parametrize("name", ACCEPTED)
def test_every_accepted_name_has_a_direction_reader_reference_and_label(name):
    other = "leakage" if name == "utility" else "utility"
    assert _config([other, name]).objectives == [other, name]
    assert direction(name) in ("maximize", "minimize")
    assert math.isfinite(objective_value(name, RESULT))
    values, _ = baseline_values(RAW)
    assert math.isfinite(reference_point([name], values)[0])
    assert label(name).startswith(name) and label(name).endswith("is better)")


def test_the_protocols_are_the_trainers():
    # The config used to spell (static|clip) itself; the table reads the trainer's list.
    assert set(PROTOCOLS) == set(EvalConfig().protocols)


@pytest.mark.parametrize("name", ["leakage:video", "task:", "utilities", "leakage_static", "attr:skin"])
def test_a_refused_name_is_refused_naming_the_field(name):
    with pytest.raises((ConfigError, ValueError)) as caught:
        _config(["utility", name])
    text = str(caught.value)
    assert "objectives" in text and repr(name) in text and "leakage:static" in text
    with pytest.raises(UnknownObjective, match="unknown objective"):
        kind_of(name)


def test_directions():
    assert [direction(n) for n in ("utility", "leakage", "leakage:clip", "task:x", "params", "combined")] == [
        "maximize", "minimize", "minimize", "maximize", "minimize", "maximize"]


def test_objective_values_come_from_the_result():
    assert objective_value("utility", RESULT) == 0.8
    assert objective_value("leakage:clip", RESULT) == 0.35
    assert objective_value("task:scene", RESULT) == 0.55
    assert objective_value("params", RESULT) == 1234.0
    assert objective_value("combined", RESULT) == 0.7
    with pytest.raises(ObjectiveError, match="task:other"):
        objective_value("task:other", RESULT)
    # result.json writes NaN as a string: it must not become an objective value.
    with pytest.raises(ObjectiveError, match="nan"):
        objective_value("utility", {"utility": "nan"})


def test_reference_point_from_the_raw_baseline():
    baseline = {"utility": 0.8, "leakage": 0.6, "leakage:clip": 0.5}
    point = reference_point(["utility", "leakage:clip", "params", "combined"], baseline)
    assert point.tolist() == [0.4, 0.5, 1e9, 0.0]
    assert not math.isnan(reference_point(["task:scene"], baseline)[0])


def test_baseline_values_of_every_measured_objective():
    values, chance = baseline_values(RAW)
    assert values == {"utility": 0.9, "leakage": 0.85, "leakage:static": 0.7, "leakage:clip": 0.85,
                      "task:scene": 0.6}
    assert chance == {"utility": 0.1, "leakage": 0.6, "leakage:static": 0.5, "leakage:clip": 0.6,
                      "task:scene": 0.25}
