"""Parameter specs and the search space model.

A :class:`SearchSpace` maps dotted :class:`~aam_search.trainer.config.TrialConfig` field
paths (``loss.w_lc``, ``adapter.heads``, ``optim.lr``) to a :class:`ParamSpec`. Every
space is validated when it is built: each path must name a trainer field, each spec must
be one Optuna accepts, conditions must point at a categorical (or fixed) parameter with
no cycles, and the bounds, choices and fixed values must be values the trainer accepts.
Problems are reported one per line, each naming the parameter.
"""

from __future__ import annotations

import difflib
import math
import typing
from functools import lru_cache
from typing import Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if typing.TYPE_CHECKING:
    import optuna

ParamType = Literal["float", "int", "categorical", "fixed"]

_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("low", "high", "log", "step"),
    "int": ("low", "high", "log", "step"),
    "categorical": ("choices",),
    "fixed": ("value",),
}
_ALL_KEYS = ("type", "low", "high", "log", "step", "choices", "value", "condition")
_DEFAULTS: dict[str, Any] = {"low": None, "high": None, "log": False, "step": None, "choices": None,
                             "value": None}


class SpaceError(ValueError):
    """A search space that cannot be used; the message names the file (if any) and parameter."""


class Condition(BaseModel):
    """Sample a parameter only when ``param`` took one of the values in ``in``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    param: str
    in_: list[Any] = Field(alias="in", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _scalar_in(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("in", "in_"):
                if key in data and not isinstance(data[key], (list, tuple)):
                    data = {**data, key: [data[key]]}
        return data

    def met_by(self, values: dict[str, Any]) -> bool:
        return self.param in values and any(_same(values[self.param], v) for v in self.in_)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps ``True`` apart from ``1`` (YAML makes both easy to write)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ParamSpec(BaseModel):
    """One parameter: ``float`` / ``int`` (low, high, log, step), ``categorical`` (choices)
    or ``fixed`` (value); any of them may carry a ``condition``.

    Shorthands: a list is a categorical, any other non-mapping value is a fixed value.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParamType
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None
    value: Any = None
    condition: Condition | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if isinstance(data, (ParamSpec, BaseModel)):
            return data
        if isinstance(data, (list, tuple)):
            return {"type": "categorical", "choices": list(data)}
        if not isinstance(data, dict):
            return {"type": "fixed", "value": data}
        data = dict(data)
        unknown = [key for key in data if key not in _ALL_KEYS]
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (allowed: {', '.join(_ALL_KEYS)})")
        kind = data.get("type")
        if kind is None:
            raise ValueError("missing 'type' (float, int, categorical or fixed)")
        if kind not in _KEYS:
            raise ValueError(f"type {kind!r} is not one of float, int, categorical, fixed")
        # keys at their default (as model_dump writes them) are no mistake
        data = {
            key: value for key, value in data.items()
            if key in _KEYS[kind] + ("type", "condition") or value is not _DEFAULTS.get(key, ...)
        }
        wrong = [key for key in data if key not in _KEYS[kind] + ("type", "condition")]
        if wrong:
            allowed = " and ".join(repr(key) for key in _KEYS[kind])
            raise ValueError(f"a {kind} parameter takes {allowed} (and 'condition'), not {wrong[0]!r}")
        if kind == "fixed" and "value" not in data:
            raise ValueError("a fixed parameter needs a 'value'")
        if kind == "categorical" and "choices" not in data:
            raise ValueError("a categorical parameter needs 'choices'")
        if kind in ("float", "int"):
            for key in ("low", "high"):
                if data.get(key) is None:
                    raise ValueError(f"a {kind} parameter needs 'low' and 'high'")
            for key in ("low", "high", "step"):
                if data.get(key) is not None:
                    data[key] = _number(key, data[key], integer=(kind == "int"))
        return data

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.type in ("float", "int"):
            self._check_range()
        elif self.type == "categorical":
            self._check_choices()
        return self

    def _check_range(self) -> None:
        low, high, step = self.low, self.high, self.step
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"low and high must be finite, got low={low}, high={high}")
        if low >= high:
            raise ValueError(f"low ({low}) must be less than high ({high})")
        if self.log and low <= 0:
            raise ValueError(f"a log range must lie above 0, got low={low}")
        if step is None:
            return
        if self.log:
            raise ValueError("step cannot be combined with log: true")
        if step <= 0:
            raise ValueError(f"step must be positive, got {step}")
        span = high - low
        if self.type == "int":
            divides = span % step == 0
        else:
            count = round(span / step)
            divides = count >= 1 and math.isclose(count * step, span, rel_tol=1e-9, abs_tol=1e-12)
        if not divides:
            raise ValueError(f"step {step} does not divide the range [{low}, {high}]")

    def _check_choices(self) -> None:
        choices = self.choices or []
        if not choices:
            raise ValueError("choices must not be empty")
        for choice in choices:
            if choice is not None and not isinstance(choice, (bool, int, float, str)):
                raise ValueError(
                    f"choice {choice!r} is a {type(choice).__name__}; Optuna takes only "
                    "None, bool, int, float or str (use type: fixed for a list value)"
                )
        for i, choice in enumerate(choices):
            if any(_same(choice, other) for other in choices[:i]):
                raise ValueError(f"duplicate choice {choice!r}")

    def to_dict(self) -> dict[str, Any]:
        """The compact mapping a YAML file would hold (``model_validate`` reads it back)."""
        data: dict[str, Any] = {"type": self.type}
        for key in _KEYS[self.type]:
            value = getattr(self, key)
            if key == "value" or value is not _DEFAULTS[key]:
                data[key] = value
        if self.condition is not None:
            data["condition"] = {"param": self.condition.param, "in": list(self.condition.in_)}
        return data

    @property
    def sampled(self) -> bool:
        """Whether Optuna samples it (everything but ``fixed``)."""
        return self.type != "fixed"

    def distribution(self) -> BaseDistribution | None:
        """The Optuna distribution; ``None`` for a fixed value."""
        if self.type == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        if self.type == "categorical":
            return CategoricalDistribution(self.choices)
        return None

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "float":
            return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step or 1)
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        return self.value

    def values(self) -> list[Any] | None:
        """Every value it can take, or ``None`` for a continuous range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "fixed":
            return [self.value]
        if self.type == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        return None

    def probe_values(self) -> list[tuple[str, Any]]:
        """Values to try against the trainer config: the ends and one inside."""
        if self.type == "categorical":
            return [("choice", choice) for choice in self.choices]
        if self.type == "fixed":
            return [("value", self.value)]
        if self.type == "int":
            inside = self.low + (self.step or 1)
        elif self.step:
            inside = self.low + self.step
        else:  # not the midpoint: that is often a whole number, which an int field takes
            inside = self.low + (self.high - self.low) * 0.382
        return [("low", self.low), ("high", self.high), ("sampled value", inside)]


def _number(key: str, value: Any, integer: bool) -> int | float:
    """Bounds as numbers; numeric strings (``1e-5`` from plain YAML) are accepted."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    if not _is_number(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"an int parameter needs integer bounds and step, got {key}={value}")
            value = int(value)
    return value


class SearchSpace(BaseModel):
    """A named set of parameters over TrialConfig fields; see the package docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    params: dict[str, ParamSpec]

    @model_validator(mode="after")
    def _check_space(self) -> SearchSpace:
        if not self.params:
            raise ValueError("a search space needs at least one parameter in 'params'")
        problems: list[str] = []
        valid_paths = set()
        for name in self.params:
            problem = trainer_field_problem(name)
            if problem:
                problems.append(f"parameter '{name}': {problem}")
            else:
                valid_paths.add(name)
        problems += self._condition_problems()
        if not problems:
            _order(self.params)  # raises on a cycle
        for name in self.params:
            if name in valid_paths:
                problems += [f"parameter '{name}': {p}" for p in _value_problems(name, self.params[name])]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _condition_problems(self) -> list[str]:
        problems = []
        for name, spec in self.params.items():
            condition = spec.condition
            if condition is None:
                continue
            where = f"parameter '{name}': condition"
            target = self.params.get(condition.param)
            if condition.param == name:
                problems.append(f"{where} names the parameter itself (a cycle)")
            elif target is None:
                close = difflib.get_close_matches(condition.param, list(self.params), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(f"{where} names unknown parameter '{condition.param}'{hint}")
            elif target.type not in ("categorical", "fixed"):
                problems.append(
                    f"{where} names '{condition.param}', {_article(target.type)} parameter; "
                    "conditions need a categorical (or fixed) parameter"
                )
            elif target.type == "categorical":
                for value in condition.in_:
                    if not any(_same(value, choice) for choice in target.choices):
                        problems.append(
                            f"{where} value {value!r} is not a choice of '{condition.param}' "
                            f"(choices: {target.choices})"
                        )
        return problems

    # --- sampling -------------------------------------------------------------------

    def order(self) -> list[str]:
        """Parameter names, each after the parameter its condition names."""
        return _order(self.params)

    def distributions(self, include_conditional: bool = False) -> dict[str, BaseDistribution]:
        """Optuna distributions of the sampled parameters (fixed ones are not Optuna's).

        By default only the unconditional ones: those every trial samples.
        """
        return {
            name: spec.distribution()
            for name, spec in self.params.items()
            if spec.sampled and (include_conditional or spec.condition is None)
        }

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample every active parameter in dependency order; fixed values included."""
        values: dict[str, Any] = {}
        for name in self.order():
            spec = self.params[name]
            if spec.condition is None or spec.condition.met_by(values):
                values[name] = spec.suggest(trial, name)
        return values

    def complete(self, params: dict[str, Any]) -> dict[str, Any]:
        """Sampled values (e.g. a finished trial's ``params``) plus the active fixed values.

        Values of parameters whose condition is not met are dropped; names outside the
        space are kept as they are.
        """
        values: dict[str, Any] = {}
        for name in self.order():
            spec = self.params[name]
            if spec.condition is not None and not spec.condition.met_by(values):
                continue
            if not spec.sampled:
                values[name] = spec.value
            elif name in params:
                values[name] = params[name]
            else:
                raise SpaceError(f"parameter '{name}' is active but has no value in {sorted(params)}")
        values.update({k: v for k, v in params.items() if k not in self.params})
        return values

    def grid(self) -> dict[str, list[Any]] | None:
        """The search space for Optuna's ``GridSampler``, or ``None`` if this is no grid.

        A grid holds only categorical, int and fixed parameters (fixed ones are left out:
        ``suggest`` adds them). A sampled conditional parameter also makes it no grid:
        ``GridSampler`` would enumerate it even where it is never sampled, repeating
        points; use :meth:`grid_points` with ``enqueue_trial`` for such spaces.
        """
        grid = {}
        for name, spec in self.params.items():
            if not spec.sampled:
                continue
            if spec.type == "float" or spec.condition is not None:
                return None
            grid[name] = spec.values()
        return grid

    def grid_points(self) -> list[dict[str, Any]] | None:
        """Every distinct configuration (conditions respected, fixed values included), or
        ``None`` if a parameter is continuous."""
        if any(spec.type == "float" for spec in self.params.values()):
            return None
        points: list[dict[str, Any]] = [{}]
        for name in self.order():
            spec = self.params[name]
            grown = []
            for point in points:
                if spec.condition is not None and not spec.condition.met_by(point):
                    grown.append(point)
                else:
                    grown += [{**point, name: value} for value in spec.values()]
            points = grown
        return points

    def size(self) -> int | None:
        points = self.grid_points()
        return None if points is None else len(points)

    def to_dict(self) -> dict[str, Any]:
        """The mapping a space YAML file would hold, e.g. to record the space beside a study."""
        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        data["params"] = {name: spec.to_dict() for name, spec in self.params.items()}
        return data

    def to_overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """``{"loss.w_lc": 10}`` -> ``{"loss": {"w_lc": 10}}``; see :func:`to_overrides`."""
        return to_overrides(params)


def _order(params: dict[str, ParamSpec]) -> list[str]:
    """Declared order, except that a parameter comes after the one its condition names."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = chain[chain.index(name):] + [name]
            raise ValueError(
                f"parameter '{name}': conditions form a cycle: {' -> '.join(cycle)}"
            )
        state[name] = "visiting"
        condition = params[name].condition
        if condition is not None and condition.param in params:
            visit(condition.param, chain + [name])
        state[name] = "done"
        order.append(name)

    for name in params:
        visit(name, [])
    return order


# --- nesting ------------------------------------------------------------------------


def to_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Flat dotted names to a nested dict ready to merge into a TrialConfig dict."""
    nested: dict[str, Any] = {}
    for path, value in params.items():
        parts = path.split(".")
        node = nested
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpaceError(f"parameter '{path}' conflicts with '{'.'.join(parts[:depth + 1])}'")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise SpaceError(f"parameter '{path}' conflicts with the fields under it")
        node[parts[-1]] = value
    return nested


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``overrides`` replaces.
    Neither input is changed."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        elif isinstance(value, dict):
            merged[key] = merge_overrides({}, value)
        elif isinstance(value, list):
            merged[key] = list(value)
        else:
            merged[key] = value
    return merged


# --- checks against the trainer config --------------------------------------------


def _trial_config_model() -> type[BaseModel]:
    # imported lazily: the trainer pulls in torch
    from aam_search.trainer.config import TrialConfig

    return TrialConfig


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _is_mapping(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict or annotation is dict


@lru_cache(maxsize=1)
def trainer_fields() -> tuple[str, ...]:
    """Every dotted leaf field of TrialConfig."""
    leaves = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            sub = _model_of(info.annotation)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")
            else:
                leaves.append(f"{prefix}{name}")

    walk(_trial_config_model(), "")
    return tuple(leaves)


def trainer_field_problem(path: str) -> str | None:
    """Why ``path`` names no TrialConfig field, or ``None`` if it does.

    ``loss.task_weights.<task>`` (a key of a mapping field) counts as a field.
    """
    model: type[BaseModel] | None = _trial_config_model()
    parts = path.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        fields = model.model_fields
        if part not in fields:
            return f"unknown trainer field '{path}'{_suggestion(path)}"
        annotation = fields[part].annotation
        sub = _model_of(annotation)
        if sub is not None:
            if last:
                return (
                    f"'{path}' is a section of the trainer config, not a field "
                    f"(e.g. '{path}.{next(iter(sub.model_fields))}')"
                )
            model = sub
        elif _is_mapping(annotation) and depth == len(parts) - 2:
            return None  # one key of a mapping field, e.g. loss.task_weights.action
        elif not last:
            return f"unknown trainer field '{path}': '{'.'.join(parts[:depth + 1])}' has no fields"
    return None


def _suggestion(path: str) -> str:
    leaves = trainer_fields()
    close = difflib.get_close_matches(path, leaves, n=3, cutoff=0.6)
    tail = path.rsplit(".", 1)[-1]
    close += [leaf for leaf in leaves if leaf.rsplit(".", 1)[-1] == tail and leaf not in close]
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{c}'" for c in close[:3]) + "?)"


def _value_problems(path: str, spec: ParamSpec) -> list[str]:
    """Values of ``spec`` that TrialConfig rejects for ``path``."""
    model = _trial_config_model()
    parts = tuple(path.split("."))
    problems = []
    for what, value in spec.probe_values():
        data = merge_overrides({"cache": "/nonexistent"}, to_overrides({path: value}))
        try:
            model.model_validate(data)
        except ValidationError as error:
            for problem in error.errors():
                loc = tuple(str(part) for part in problem["loc"])
                if loc[: len(parts)] == parts:
                    problems.append(f"{what} {value!r} is not a valid trainer value: {problem['msg']}")
                    break
    return problems


# --- error messages -------------------------------------------------------------------


def format_space_error(error: ValidationError, source: str | None) -> str:
    """One line per problem: ``<file>: parameter '<name>': <what is wrong>``."""
    prefix = f"{source}: " if source else ""
    lines: list[str] = []
    for problem in error.errors():
        loc = tuple(str(part) for part in problem["loc"])
        message = problem["msg"]
        if problem["type"] == "value_error" and "error" in problem.get("ctx", {}):
            message = str(problem["ctx"]["error"])
        if len(loc) >= 2 and loc[0] == "params":
            head = f"parameter '{loc[1]}': "
            if len(loc) > 2:
                head += f"'{'.'.join(loc[2:])}': "
            lines += [prefix + head + line for line in message.splitlines()]
        elif not loc:
            lines += [prefix + line for line in message.splitlines()]
        else:
            lines.append(f"{prefix}'{'.'.join(loc)}': {message}")
    return "\n".join(dict.fromkeys(lines))


def build_space(data: dict[str, Any], source: str | None = None) -> SearchSpace:
    """Validate a plain mapping (``name``, ``description``, ``params``) into a space."""
    try:
        return SearchSpace.model_validate(data)
    except ValidationError as error:
        raise SpaceError(format_space_error(error, source)) from None


__all__ = [
    "Condition",
    "ParamSpec",
    "SearchSpace",
    "SpaceError",
    "build_space",
    "format_space_error",
    "merge_overrides",
    "to_overrides",
    "trainer_field_problem",
    "trainer_fields",
]
