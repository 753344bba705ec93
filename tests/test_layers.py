"""The layer rules, read from the source: no package cycle in aam_search, and a lower layer
never imports a higher one (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "aam_search"


def _package_imports() -> dict[str, set[str]]:
    """For each aam_search subpackage (or top-level module), the others it imports."""
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).parts
        own = rel[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "aam_search" and len(parts) > 1 and parts[1] != own:
                    edges.setdefault(own, set()).add(parts[1])
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_trainer_imports_neither_search_nor_tracking() -> None:
    assert not _package_imports().get("trainer", set()) & {"search", "tracking"}


def test_search_imports_nothing_from_tracking() -> None:
    assert "tracking" not in _package_imports().get("search", set())


def test_no_package_cycle() -> None:
    assert _cycle(_package_imports()) is None


OPTUNA_ACCESS = SRC / "search" / "optuna_access.py"


def _optuna_private_names() -> set[str]:
    """The private (one leading underscore) attributes of Optuna's study, trial and storage
    objects: their classes' and, from live instances, their instances' own."""
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

    storage = RDBStorage("sqlite:///:memory:")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    objects = [study, trial, study.trials[0], storage, study._storage, optuna.create_study()._storage]
    classes = [optuna.Study, optuna.Trial, FrozenTrial, *(type(o) for o in objects)]
    names = {name for owner in classes for name in dir(owner)}
    names |= {name for o in objects for name in vars(o)}
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def _private_optuna_uses(path: Path, private: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "optuna":
            modules = [node.module or ""]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names if a.name.split(".")[0] == "optuna"]
        else:
            modules = []
        found += [f"{path.name}:{node.lineno}: import {m}" for m in modules
                  if any(part.startswith("_") for part in m.split("."))]
        if isinstance(node, ast.Attribute) and node.attr in private and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def test_private_optuna_api_is_used_in_one_module_only() -> None:
    private = _optuna_private_names()
    assert {"_storage", "_study_id", "_trial_id", "_backend"} <= private  # what it looks for
    uses = [use for path in sorted(SRC.rglob("*.py")) if path != OPTUNA_ACCESS
            for use in _private_optuna_uses(path, private)]
    assert uses == [], "private Optuna API outside search/optuna_access.py"
    assert _private_optuna_uses(OPTUNA_ACCESS, private)  # the scan finds them where they are
