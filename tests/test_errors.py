"""One error root: every project error derives from AamSearchError, keeps its built-in base,
and the CLI shows its message instead of a traceback."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import aam_search
from aam_search.cli import main
from aam_search.errors import AamSearchError
from aam_search.features.config import ConfigError
from aam_search.search.study import StudyNotFound

# Exceptions that are control flow inside one module, never shown to a user.
NOT_ERRORS = {"aam_search.trainer.train.TrialStopped"}


def _project_exceptions() -> dict[str, type[BaseException]]:
    found = {}
    for module in pkgutil.walk_packages(aam_search.__path__, "aam_search."):
        if module.name.endswith("pyfunc_code"):  # MLflow's model code, loaded by MLflow
            continue
        for _, value in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(value, BaseException) and value.__module__.startswith("aam_search."):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_project_error_derives_from_the_root():
    errors = _project_exceptions()
    assert len(errors) >= 18, sorted(errors)  # the walk found them
    assert sorted(name for name, error in errors.items()
                  if not issubclass(error, AamSearchError) and name not in NOT_ERRORS) == []


def test_errors_keep_their_builtin_base():
    assert issubclass(ConfigError, ValueError) and issubclass(StudyNotFound, LookupError)


def test_the_cli_prints_a_project_error_as_one_line(tmp_path, capsys):
    code = main(["status", "nothing-here", "--storage", f"sqlite:///{tmp_path / 'none.db'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no study database at") and "Traceback" not in err
