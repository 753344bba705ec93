"""Search spaces from presets, YAML files and study-config mappings, with ``include``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from aam_search.yamlio import load_yaml

from .presets import PRESETS
from .spec import SearchSpace, SpaceError, build_space

_TOP_KEYS = ("name", "description", "include", "exclude", "params")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise SpaceError(f"{path}: cannot read search space ({error.strerror or error})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        raise SpaceError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: expected a mapping with 'params', got {type(data).__name__}")
    return data


def preset(name: str) -> SearchSpace:
    """A built-in space: ``loss-weights``, ``adapter-size``, ``paper`` or ``full``."""
    if name not in PRESETS:
        raise SpaceError(f"unknown search space preset '{name}' (known: {', '.join(PRESETS)})")
    return _build({"name": name, **PRESETS[name]}, f"preset '{name}'", None, (f"preset:{name}",))


def load_space(path: str | Path) -> SearchSpace:
    """A space from a YAML file; its name defaults to the file's stem, and relative
    ``include`` paths are relative to the file."""
    path = Path(path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    return _build(data, str(path), path.parent, (str(path.resolve()),))


def resolve_space(spec: str | Path | dict | SearchSpace, base_dir: str | Path | None = None) -> SearchSpace:
    """A preset name, a YAML path, or a mapping (e.g. the ``space`` of a study config).

    Relative paths (the YAML file's and a mapping's includes) are resolved against
    ``base_dir``, by default the current directory.
    """
    if isinstance(spec, SearchSpace):
        return spec
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if isinstance(spec, dict):
        data = dict(spec)
        data.setdefault("name", "custom")
        return _build(data, "search space", base, ())
    if isinstance(spec, str) and spec in PRESETS:
        return preset(spec)
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_absolute():
            path = base / path
        if path.is_file():
            return load_space(path)
        raise SpaceError(
            f"search space '{spec}' is neither a preset ({', '.join(PRESETS)}) nor an existing file"
        )
    raise SpaceError(f"a search space is a preset name, a YAML path or a mapping, not {type(spec).__name__}")


def _build(data: dict[str, Any], source: str, base_dir: Path | None, stack: tuple[str, ...]) -> SearchSpace:
    params = _expand(data, source, base_dir, stack)
    body = {key: data[key] for key in ("name", "description") if key in data}
    return build_space({**body, "params": params}, source)


def _expand(data: dict[str, Any], source: str, base_dir: Path | None, stack: tuple[str, ...]) -> dict[str, Any]:
    """The raw parameter mapping after ``include`` (in order, later wins), the file's own
    ``params`` (win over includes, one whole parameter at a time) and ``exclude``."""
    unknown = [key for key in data if key not in _TOP_KEYS]
    if unknown:
        raise SpaceError(f"{source}: unknown key '{unknown[0]}' (allowed: {', '.join(_TOP_KEYS)})")
    params: dict[str, Any] = {}
    for item in _as_list(data.get("include"), "include", source):
        key, sub, sub_source, sub_dir = _included(item, source, base_dir)
        if key in stack:
            chain = " -> ".join([*stack, key])
            raise SpaceError(f"{source}: include cycle: {chain}")
        params.update(_expand(sub, sub_source, sub_dir, (*stack, key)))
    own = data.get("params", {})
    if own is None:
        own = {}
    if not isinstance(own, dict):
        raise SpaceError(f"{source}: 'params' must be a mapping of field paths, got {type(own).__name__}")
    params.update(copy.deepcopy(own))
    for name in _as_list(data.get("exclude"), "exclude", source):
        if name not in params:
            raise SpaceError(f"{source}: exclude names parameter '{name}', which is not in the space")
        del params[name]
    return params


def _included(item: Any, source: str, base_dir: Path | None) -> tuple[str, dict, str, Path | None]:
    if not isinstance(item, str):
        raise SpaceError(f"{source}: include takes preset names or file paths, got {item!r}")
    if item in PRESETS:
        return f"preset:{item}", PRESETS[item], f"preset '{item}'", None
    path = Path(item)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise SpaceError(
            f"{source}: include '{item}' is neither a preset ({', '.join(PRESETS)}) nor an existing file"
        )
    data = _read_yaml(path)
    data.pop("name", None)
    data.pop("description", None)
    return str(path.resolve()), data, str(path), path.parent


def _as_list(value: Any, key: str, source: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    raise SpaceError(f"{source}: '{key}' must be a name or a list of names, got {type(value).__name__}")
