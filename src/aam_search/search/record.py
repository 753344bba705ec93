"""The study record: the keys the project writes into the Optuna study, defined once.

Readers elsewhere (the CLI, tracking, promotion) import the keys and readers from here
instead of spelling the strings, and never import the orchestrator for them.
"""

from __future__ import annotations

from typing import Any

CONFIG_ATTR = "aam:config"  # StudyConfig.record(): the study's config, without secrets
BASELINE_ATTR = "aam:baseline"  # raw-feature value of every objective
HYPERVOLUME_ATTR = "aam:hypervolume"  # [[completed trials, hypervolume], ...]

DEFAULT_OBJECTIVES = ["utility", "leakage"]


def stored_config(study: Any) -> dict[str, Any]:
    """The study's recorded config (empty for a study this project did not create)."""
    return dict(study.user_attrs.get(CONFIG_ATTR) or {})


def stored_objectives(study: Any) -> list[str]:
    return stored_config(study).get("objectives") or list(DEFAULT_OBJECTIVES)


def stored_baseline(study: Any) -> dict[str, float]:
    return dict(study.user_attrs.get(BASELINE_ATTR) or {})


def hypervolume_history(study: Any) -> list[list[float]]:
    return list(study.user_attrs.get(HYPERVOLUME_ATTR) or [])
