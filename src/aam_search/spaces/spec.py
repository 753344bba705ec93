"""The search space model: named parameters, their conditions, and Optuna sampling.

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
from typing import Any

from optuna.distributions import BaseDistribution
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import SpaceError
from .fields import (
    merge_overrides,
    to_overrides,
    trainer_field_problem,
    trainer_fields,
    value_problems,
)
from .param import Condition, ParamSpec, article, same_value

if typing.TYPE_CHECKING:
    import optuna

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
                problems += [f"parameter '{name}': {p}" for p in value_problems(name, self.params[name])]
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
                    f"{where} names '{condition.param}', {article(target.type)} parameter; "
                    "conditions need a categorical (or fixed) parameter"
                )
            elif target.type == "categorical":
                for value in condition.in_:
                    if not any(same_value(value, choice) for choice in target.choices):
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

    def grid_problem(self) -> str | None:
        """Why Optuna's ``GridSampler`` cannot enumerate this space (see :meth:`grid`), or ``None``."""
        for name, spec in self.params.items():
            if spec.sampled and spec.type == "float":
                return f"parameter '{name}' is a continuous float range"
            if spec.sampled and spec.condition is not None:
                return f"parameter '{name}' is conditional (on '{spec.condition.param}')"
        return None

    def point_problems(self, point: dict[str, Any]) -> list[str]:
        """What is wrong with a point to try first (``enqueue``), one line per parameter.

        Each name must be an unconditional parameter of the space (a conditional one may
        never be asked for, and Optuna would drop it), and its value must lie in the
        parameter's range or among its choices; a fixed parameter takes only its value.
        """
        problems = []
        for name, value in point.items():
            spec = self.params.get(name)
            if spec is None:
                close = difflib.get_close_matches(name, list(self.params), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(f"parameter '{name}' is not in the space{hint}")
            elif not spec.sampled:
                if not same_value(value, spec.value):
                    problems.append(f"parameter '{name}' is fixed at {spec.value!r} by the space, not {value!r}")
            elif spec.condition is not None:
                problems.append(f"parameter '{name}' is conditional (on '{spec.condition.param}'); "
                                "a point to try first sets only unconditional parameters")
            elif not _in_range(spec, value):
                allowed = f"choices {spec.choices}" if spec.type == "categorical" else (
                    f"[{spec.low}, {spec.high}]" + (f" in steps of {spec.step}" if spec.step else ""))
                problems.append(f"parameter '{name}': {value!r} is not in its {spec.type} {allowed}")
        return problems

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


def _in_range(spec: ParamSpec, value: Any) -> bool:
    """Whether a sampled parameter can take ``value`` (a bool is no number here)."""
    if spec.type == "categorical":
        return any(same_value(value, choice) for choice in spec.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if spec.type == "int" and not float(value).is_integer():
        return False
    if not spec.low <= value <= spec.high:
        return False
    if spec.step:
        steps = (value - spec.low) / spec.step
        return math.isclose(steps, round(steps), rel_tol=0, abs_tol=1e-8)
    return True


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
