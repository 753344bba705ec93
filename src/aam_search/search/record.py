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


# MO-ASHA rung records (search/rungs.py), one trial user attr per rung: ``aam:rung:<epoch>``
# holds {"values": [one per objective], "continued": bool}. In the study storage, so every
# worker decides from the same records.
RUNG_ATTR_PREFIX = "aam:rung:"


def rung_attr(epoch: int) -> str:
    return f"{RUNG_ATTR_PREFIX}{int(epoch)}"


def rung_record(trial: Any, epoch: int) -> dict[str, Any] | None:
    """The trial's record at the rung at ``epoch``, or None before it arrived there."""
    record = trial.user_attrs.get(rung_attr(epoch))
    return record if isinstance(record, dict) else None


def rung_records(trial: Any) -> dict[int, dict[str, Any]]:
    """Every rung record of a trial, by the rung's epoch."""
    return {int(key[len(RUNG_ATTR_PREFIX):]): value for key, value in trial.user_attrs.items()
            if key.startswith(RUNG_ATTR_PREFIX) and key[len(RUNG_ATTR_PREFIX):].isdigit() and isinstance(value, dict)}
