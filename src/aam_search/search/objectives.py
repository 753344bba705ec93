"""The objectives table: every objective a study can optimise, defined once.

For each kind of objective: the names it accepts, its direction, how its value is read from a
trial's ``result.json`` and from the raw-feature baseline, its hypervolume reference value and
its axis label. The study config's check, the study's directions, the Pareto front, the stored
baseline, promotion and the plots all read this table, so a new objective is one entry here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from aam_search.errors import AamSearchError
from aam_search.trainer.config import EvalConfig

Direction = Literal["maximize", "minimize"]
# The privacy protocols a trial can measure: the trainer's own list, not a copy of it.
PROTOCOLS: tuple[str, ...] = get_args(EvalConfig.model_fields["primary_protocol"].annotation)
MAIN_TASK = "action"  # the seen utility task; ``utility`` is its top-1


class ObjectiveError(AamSearchError, KeyError):
    """A result.json that lacks a value an objective needs."""


class UnknownObjective(AamSearchError, ValueError):
    """An objective name no entry of the table accepts."""


@dataclass(frozen=True)
class ObjectiveKind:
    """One row of the table: a family of objective names and how each is read.

    ``read(name, result)`` raises KeyError when the result lacks the value;
    ``baseline(raw)`` gives ``{name: (value, chance)}`` for every name of this kind that the
    raw baseline (``trainer.baseline.raw_baseline``) measured; ``reference(name, values)``
    is the hypervolume reference coordinate from the stored baseline values.
    """

    spelling: str  # how the error message and docs write it: "task:<name>"
    pattern: str
    direction: Direction
    read: Callable[[str, dict[str, Any]], Any]
    reference: Callable[[str, dict[str, float]], float]
    baseline: Callable[[dict[str, Any]], dict[str, tuple[float, float]]] = lambda raw: {}


def _main_task(raw: dict[str, Any]) -> dict[str, Any]:
    return raw["tasks"].get(MAIN_TASK) or next(iter(raw["tasks"].values()))


def _worst(raw: dict[str, Any]) -> dict[str, tuple[float, float]]:
    from aam_search.trainer.baseline import worst_case  # as in each trial's result (summarize)

    _, value, chance = worst_case(raw["privacy"])
    return {"leakage": (value, chance)}


def _half_raw_utility(name: str, values: dict[str, float]) -> float:
    """A trial must keep half the raw utility to add hypervolume."""
    return 0.5 * values.get(name, values.get("utility", 1.0))


def _raw_leakage(name: str, values: dict[str, float]) -> float:
    """A trial must leak less than raw features to add hypervolume."""
    return values.get(name, values.get("leakage", 1.0))


KINDS: tuple[ObjectiveKind, ...] = (
    ObjectiveKind(
        "utility", "utility", "maximize",
        read=lambda name, result: result["utility"],
        reference=_half_raw_utility,
        baseline=lambda raw: {"utility": (_main_task(raw)["top1"], _main_task(raw)["chance"])}),
    ObjectiveKind(
        "leakage", "leakage", "minimize",
        read=lambda name, result: result["leakage"],
        reference=_raw_leakage,
        baseline=_worst),
    ObjectiveKind(
        "leakage:<protocol>", f"leakage:({'|'.join(map(re.escape, PROTOCOLS))})", "minimize",
        read=lambda name, result: result["measured"]["privacy"][name.split(":", 1)[1]]["cmap"],
        reference=_raw_leakage,
        baseline=lambda raw: {f"leakage:{protocol}": (leak["cmap"], leak["chance"])
                              for protocol, leak in raw["privacy"].items()}),
    ObjectiveKind(
        "task:<name>", r"task:[\w.-]+", "maximize",
        read=lambda name, result: result["measured"]["tasks"][name]["top1"],
        reference=_half_raw_utility,
        baseline=lambda raw: {name: (task["top1"], task["chance"]) for name, task in raw["tasks"].items()
                              if name != MAIN_TASK}),
    ObjectiveKind(
        "params", "params", "minimize",
        read=lambda name, result: result["adapter_parameters"],
        reference=lambda name, values: values.get("params", 1e9)),  # a generous bound
    ObjectiveKind(
        "combined", "combined", "maximize",
        read=lambda name, result: result["combined_score"],
        reference=lambda name, values: 0.0),
)


def _spellings() -> str:
    names = [k.spelling if k.spelling != "leakage:<protocol>" else ", ".join(f"leakage:{p}" for p in PROTOCOLS)
             for k in KINDS]
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def kind_of(name: str) -> ObjectiveKind:
    """The table's row for objective ``name``; :class:`UnknownObjective` naming it if none."""
    for kind in KINDS:
        if re.fullmatch(kind.pattern, name):
            return kind
    raise UnknownObjective(f"unknown objective {name!r}; use {_spellings()}")


def direction(name: str) -> Direction:
    return kind_of(name).direction


def label(name: str) -> str:
    """An axis label: the name and which way is better."""
    return f"{name} ({'lower' if direction(name) == 'minimize' else 'higher'} is better)"


def objective_value(name: str, result: dict[str, Any]) -> float:
    """Read one objective from a trial's result.json (finite, or :class:`ObjectiveError`)."""
    try:
        value = kind_of(name).read(name, result)
    except KeyError as missing:
        raise ObjectiveError(f"result has no value for objective {name!r} (missing {missing})") from None
    value = float(value)
    if not math.isfinite(value):
        raise ObjectiveError(f"objective {name!r} is {value}")
    return value


def reference_value(name: str, baseline: dict[str, float]) -> float:
    return float(kind_of(name).reference(name, baseline))


def baseline_values(raw: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Raw-feature values of every objective the raw baseline measured, and their chance
    levels (what the study stores as its baseline)."""
    values: dict[str, float] = {}
    chance: dict[str, float] = {}
    for kind in KINDS:
        for name, (value, level) in kind.baseline(raw).items():
            values[name], chance[name] = value, level
    return values, chance
