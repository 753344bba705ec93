"""Space parameters as trainer-config fields: nesting dotted names, and checking them.

A parameter's name is a dotted TrialConfig path; these helpers turn sampled values into a
nested override and tell, with a suggestion, when a path or a value is not one the
trainer accepts.
"""

from __future__ import annotations

import difflib
import typing
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import SpaceError
from .param import ParamSpec


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


# Fields a search must never vary: the study sets the cache from its data.*, and trials are
# scored on val so that the test split stays unseen until promotion.
NOT_SEARCHABLE = {
    "cache": "the study sets the feature cache from data.*",
    "eval.split": "trials are scored on the val split; the test split is kept for `aam-search promote`",
}


def trainer_field_problem(path: str) -> str | None:
    """Why ``path`` names no TrialConfig field a space may search, or ``None`` if it does.

    ``loss.task_weights.<task>`` (a key of a mapping field) counts as a field.
    """
    if path in NOT_SEARCHABLE:
        return f"'{path}' cannot be part of a search space: {NOT_SEARCHABLE[path]}"
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


def value_problems(path: str, spec: ParamSpec) -> list[str]:
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
