"""One parameter of a search space: its spec (float, int, categorical or fixed) and condition.

A :class:`ParamSpec` checks itself (keys that belong to its type, bounds, steps, choices)
and becomes an Optuna distribution; the space checks what involves other parameters and
the trainer's fields.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
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
        return self.param in values and any(same_value(values[self.param], v) for v in self.in_)


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps ``True`` apart from ``1`` (YAML makes both easy to write)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def article(word: str) -> str:
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
            if any(same_value(choice, other) for other in choices[:i]):
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
