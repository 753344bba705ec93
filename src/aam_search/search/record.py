"""The study record: every key the project writes into the Optuna study, defined once.

Study attributes hold the config, the raw baseline and the hypervolume history; each trial's
user attributes hold its budget slot and attempt, where it ran, why it failed, and the result
fields copied from its ``result.json``. The orchestrator writes them with the writers here;
the CLI, tracking, promotion and the live view read a trial through :class:`TrialSummary`
instead of spelling the strings, and never import the orchestrator for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from aam_search.trainer.reporter import finite_number

# ---------------------------------------------------------------- study attributes
CONFIG_ATTR = "aam:config"  # StudyConfig.record(): the study's config, without secrets
BASELINE_ATTR = "aam:baseline"  # raw-feature value of every objective
HYPERVOLUME_ATTR = "aam:hypervolume"  # [[completed trials, hypervolume], ...]
RECOVERED_PREFIX = "aam:recovered:"  # per trial whose result could go nowhere else (recovery.py)
PARENT_ATTR = "aam:mlflow_parent_run"  # the study's MLflow parent run (tracking/runs.py)
URI_ATTR = "aam:mlflow_tracking_uri"  # where that run is, redacted

DEFAULT_OBJECTIVES = ["utility", "leakage"]

# ---------------------------------------------------------------- trial attributes
SLOT = "aam:slot"  # the budget slot a trial fills (a retry re-uses its original's); see study.py
ATTEMPT = "aam:attempt"  # retries of the slot before this one
DISCARDED = "aam:discarded"  # asked after the budget was spent: not a trial of the study
REASON = "aam:reason"  # why it failed
RECOVERED_FROM = "aam:recovered_from"  # the trial whose run measured these values (recovery.py)
OUT_DIR = "out_dir"  # the trial's folder
DEVICES = "devices"  # "0,1" or "cpu"
SECONDS = "seconds"  # the trial's wall time (result.json timings.total_s)
# result.json keys copied onto a completed trial (the first six were there before the others).
RESULT_ATTRS = ("utility", "leakage", "leakage_chance", "leakage_reduction", "utility_drop", "combined_score")
ABOVE_CHANCE = "leakage_reduction_above_chance"  # the worst protocol's above-chance removal
REMOVED = "leakage_above_chance_removed"  # protocol (and "worst") -> above-chance removal
CI = "ci"  # objective -> [low, high] bootstrap interval (or None)
CI_NOTE = "ci_note"  # why an interval is missing
NEW_RESULT_ATTRS = (ABOVE_CHANCE, REMOVED, CI, CI_NOTE)
CHANCE_BY_PROTOCOL = "leakage_chance_by_protocol"  # protocol -> chance cMAP, from measured.privacy

MAX_REASON = 2000
# What a trial failed by the stale-heartbeat check is told (Optuna sets no reason of its own).
STALE_REASON = "worker stopped beating (stale heartbeat)"


# ---------------------------------------------------------------- study readers
def stored_config(study: Any) -> dict[str, Any]:
    """The study's recorded config (empty for a study this project did not create)."""
    return dict(study.user_attrs.get(CONFIG_ATTR) or {})


def stored_objectives(study: Any) -> list[str]:
    return stored_config(study).get("objectives") or list(DEFAULT_OBJECTIVES)


def stored_baseline(study: Any) -> dict[str, float]:
    return dict(study.user_attrs.get(BASELINE_ATTR) or {})


def hypervolume_history(study: Any) -> list[list[float]]:
    return list(study.user_attrs.get(HYPERVOLUME_ATTR) or [])


def tracked_run(study: Any) -> tuple[str | None, str | None]:
    """The study's MLflow parent run id and its (redacted) tracking URI, if it was tracked."""
    return study.user_attrs.get(PARENT_ATTR), study.user_attrs.get(URI_ATTR)


# ---------------------------------------------------------------- writers
def write_study(study: Any, config_record: dict[str, Any], baseline: dict[str, float]) -> None:
    study.set_user_attr(CONFIG_ATTR, config_record)
    study.set_user_attr(BASELINE_ATTR, baseline)


def append_hypervolume(study: Any, completed: int, volume: float) -> None:
    study.set_user_attr(HYPERVOLUME_ATTR, [*hypervolume_history(study), [completed, volume]])


def write_tracked_run(study: Any, run_id: str, shown_uri: str) -> None:
    study.set_user_attr(PARENT_ATTR, run_id)
    study.set_user_attr(URI_ATTR, shown_uri)


def write_recovered(study: Any, number: int, kept: dict[str, Any]) -> str:
    """Keep the result of trial ``number`` as a study attribute; returns its key."""
    key = f"{RECOVERED_PREFIX}{number}"
    study.set_user_attr(key, kept)
    return key


def write_launch(trial: Any, out_dir: Any, gpus: Sequence[int]) -> None:
    """Where a trial runs: its folder and devices."""
    trial.set_user_attr(OUT_DIR, str(out_dir))
    trial.set_user_attr(DEVICES, ",".join(map(str, gpus)) or "cpu")


def write_reason(trial: Any, reason: str) -> None:
    trial.set_user_attr(REASON, reason[:MAX_REASON])


def write_slot(trial: Any, slot: int) -> None:
    trial.set_user_attr(SLOT, slot)


def write_discarded(trial: Any, why: str = "budget reached") -> None:
    trial.set_user_attr(DISCARDED, why)


def rerun_attrs(trial: FrozenTrial, *, counts_as_attempt: bool = True) -> dict[str, Any]:
    """The user attributes a queued re-run of ``trial`` starts with: its slot and attempt."""
    return {SLOT: slot_of(trial), ATTEMPT: attempt_of(trial) + (1 if counts_as_attempt else 0)}


def where_it_ran(trial: FrozenTrial) -> dict[str, Any]:
    """The launch attributes of ``trial`` (to carry over onto a trial told its result)."""
    return {key: trial.user_attrs[key] for key in (OUT_DIR, DEVICES) if key in trial.user_attrs}


def result_attrs(result: dict[str, Any]) -> dict[str, Any]:
    """The user attributes of a completed trial, read from its result.json."""
    attrs = {key: result.get(key) for key in RESULT_ATTRS}
    attrs.update({key: result[key] for key in NEW_RESULT_ATTRS if result.get(key) is not None})
    privacy = (result.get("measured") or {}).get("privacy") or {}
    chance = {name: leak.get("chance") for name, leak in privacy.items() if isinstance(leak, dict)}
    if chance:
        attrs[CHANCE_BY_PROTOCOL] = chance
    return attrs


def completed_attrs(result: dict[str, Any]) -> dict[str, Any]:
    """:func:`result_attrs` and the trial's wall time."""
    return {**result_attrs(result), SECONDS: (result.get("timings") or {}).get("total_s")}


# ---------------------------------------------------------------- trial readers
def slot_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(SLOT, trial.number))


def has_slot(trial: FrozenTrial) -> bool:
    """Whether the trial holds a slot already (a queued re-run carries its original's)."""
    return SLOT in trial.user_attrs


def attempt_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(ATTEMPT, 0))


def is_discarded(trial: FrozenTrial) -> bool:
    return DISCARDED in trial.user_attrs


def reason_of(trial: FrozenTrial) -> str | None:
    """The reason the orchestrator recorded (None if it recorded none)."""
    reason = trial.user_attrs.get(REASON)
    return str(reason) if reason else None


def failure_reason(trial: FrozenTrial) -> str:
    """Why a FAIL trial failed: the reason we recorded, or the stale-heartbeat check's.

    Every failure the orchestrator tells carries :data:`REASON`; a trial failed without one
    was failed by a stale-heartbeat check, which records none.
    """
    return reason_of(trial) or STALE_REASON


def recovered_from(trial: FrozenTrial) -> int | None:
    return trial.user_attrs.get(RECOVERED_FROM)


def out_dir_of(trial: FrozenTrial) -> str | None:
    return trial.user_attrs.get(OUT_DIR)


def feasible(trial: FrozenTrial) -> bool:
    """Optuna 5 constraints (set with ``trial.set_constraint``): feasible when all <= 0."""
    return all(value <= 0 for value in trial.constraints.values())


def _interval(bounds: Any) -> tuple[float, float] | None:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        return None
    low, high = finite_number(bounds[0]), finite_number(bounds[1])
    return (low, high) if low is not None and high is not None else None


def _numbers(mapping: Any) -> dict[str, float]:
    items = mapping.items() if isinstance(mapping, dict) else ()
    return {str(k): n for k, v in items if (n := finite_number(v)) is not None}


@dataclass(frozen=True)
class TrialSummary:
    """What the project shows and decides about one trial, read once from its record.

    Numbers are finite floats or None (a drop is undefined when raw utility is 0); ``values``
    are the objective values in the study's order (None unless COMPLETE).
    """

    number: int
    state: str  # the TrialState's name
    values: tuple[float, ...] | None = None
    objectives: tuple[str, ...] = ()
    feasible: bool = True
    on_front: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    slot: int | None = None
    attempt: int = 0
    reason: str | None = None  # a FAIL trial's failure_reason; otherwise any recorded reason
    out_dir: str | None = None
    devices: str | None = None
    seconds: float | None = None
    utility: float | None = None
    leakage: float | None = None
    leakage_chance: float | None = None
    leakage_reduction: float | None = None
    utility_drop: float | None = None
    combined_score: float | None = None
    above_chance: float | None = None
    above_chance_removed: dict[str, float] = field(default_factory=dict)  # protocol (and "worst") ->
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    ci_note: str | None = None
    chance_by_protocol: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.state == TrialState.COMPLETE.name

    def interval(self, objective: str) -> tuple[float, float] | None:
        """The bootstrap interval of ``objective`` (``utility``, ``leakage:static``...), or None."""
        return self.intervals.get(objective)

    def chance(self, objective: str) -> float | None:
        """The chance level of a leakage objective (``leakage`` is the raw worst protocol's)."""
        if objective == "leakage":
            return self.leakage_chance
        if objective.startswith("leakage:"):
            return self.chance_by_protocol.get(objective.split(":", 1)[1])
        return None


def trial_summary(trial: FrozenTrial, objectives: Sequence[str] = (), *, on_front: bool = False) -> TrialSummary:
    """Read the record of one trial (``on_front``: the caller knows the study's front)."""
    attrs = trial.user_attrs
    complete = trial.state == TrialState.COMPLETE
    number = {key: finite_number(attrs.get(key)) for key in (*RESULT_ATTRS, ABOVE_CHANCE, SECONDS)}
    ci = attrs.get(CI) if isinstance(attrs.get(CI), dict) else {}
    return TrialSummary(
        number=trial.number, state=trial.state.name,
        values=tuple(trial.values) if complete and trial.values else None, objectives=tuple(objectives),
        feasible=feasible(trial) if complete else True, on_front=on_front, params=dict(trial.params),
        slot=slot_of(trial), attempt=attempt_of(trial),
        reason=failure_reason(trial) if trial.state == TrialState.FAIL else reason_of(trial),
        out_dir=out_dir_of(trial), devices=attrs.get(DEVICES), seconds=number[SECONDS],
        utility=number["utility"], leakage=number["leakage"], leakage_chance=number["leakage_chance"],
        leakage_reduction=number["leakage_reduction"], utility_drop=number["utility_drop"],
        combined_score=number["combined_score"], above_chance=number[ABOVE_CHANCE],
        above_chance_removed=_numbers(attrs.get(REMOVED)),
        intervals={name: bounds for name, raw in ci.items() if (bounds := _interval(raw)) is not None},
        ci_note=attrs.get(CI_NOTE), chance_by_protocol=_numbers(attrs.get(CHANCE_BY_PROTOCOL)),
    )


STACK_ATTR = "aam:stack"  # trial attr: the trial numbers that ran in one process with this one


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
