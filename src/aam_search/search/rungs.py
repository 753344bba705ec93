"""The study side of MO-ASHA: rung epochs into trial configs, rung records, verdicts, PRUNED.

The orchestrator calls these from its loop. A trial's rung line (``protocol.RUNG_KEY`` in
``metrics.jsonl``) becomes a record in the study storage (``record.rung_attr``); on the
trial's FIRST arrival at a rung it is ranked against every vector recorded at that rung in
the study (read from the storage, so every PostgreSQL worker decides from the same data) by
``early_stopping.should_continue``. The verdict goes back to the waiting trial as a file
(``trainer.rung_eval``); a trial that then ends ``pruned`` is told to Optuna as PRUNED, is
never retried and keeps its slot (it counts toward ``n_trials``: it used its compute).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from aam_search.search.config import DEFAULT_TRIAL_EPOCHS, StudyConfig
from aam_search.search.early_stopping import keep_count, ranking, rung_epochs, should_continue
from aam_search.search import optuna_access as private
from aam_search.search.callbacks import TrialPruned
from aam_search.search.objectives import ObjectiveError, direction, objective_value
from aam_search.search.record import rung_attr, rung_record, write_reason
from aam_search.trainer.rung_eval import let_continue, request_stop

# How long a trial waits at a rung for the verdict: the loop answers within a poll or two;
# this bounds the wait when the orchestrator is gone (the trial then goes on).
RUNG_WAIT_S = 120.0


def with_rungs(config: StudyConfig, trial: dict[str, Any]) -> dict[str, Any]:
    """The trial config with ``eval.rungs`` (and the verdict wait) when the study stops
    early: the rungs of this trial's own epochs, so users set only ``early_stopping``."""
    stopping = config.early_stopping
    if stopping is None:
        return trial
    optim = trial.get("optim") or {}
    epochs = int(optim.get("epochs", DEFAULT_TRIAL_EPOCHS))
    evaluation = dict(trial.get("eval") or {})
    evaluation["rungs"] = rung_epochs(stopping.min_epochs, stopping.reduction_factor, epochs)
    evaluation["rung_wait_s"] = RUNG_WAIT_S
    return {**trial, "eval": evaluation}


def rung_vector(values: dict[str, Any], objectives: list[str]) -> list[float] | None:
    """One value per objective from a rung line's values; None when one is missing or not
    finite (the reporter writes NaN as a string)."""
    try:
        vector = [objective_value(name, values) for name in objectives]
    except (ObjectiveError, TypeError, ValueError):
        return None
    return vector if all(math.isfinite(v) for v in vector) else None


def recorded_at(trials: list[optuna.trial.FrozenTrial], epoch: int, *, besides: int) -> list[list[float]]:
    """The vectors recorded at the rung at ``epoch`` by every trial but ``besides`` (an id)."""
    vectors = []
    for trial in trials:
        record = rung_record(trial, epoch) if private.trial_id(trial) != besides else None
        if record is not None and isinstance(record.get("values"), list):
            vectors.append([float(v) for v in record["values"]])
    return vectors


def decide(recorded: list[list[float]], vector: list[float], objectives: list[str],
           reduction_factor: int, reference: Sequence[float] | None = None) -> str | None:
    """None to go on, else why the trial stops (``reference``: the study's hypervolume
    reference point, which weighs ties in a front)."""
    directions = [direction(name) for name in objectives]
    if should_continue(recorded, vector, directions, reduction_factor, reference):
        return None
    values = [*recorded, vector]
    place = ranking(values, directions, reference).index(len(recorded)) + 1
    keep = keep_count(len(values), reduction_factor)
    return (f"ranked {place} of {len(values)} by non-dominated fronts, hypervolume contribution and crowding; "
            f"the top {keep} go on")


def on_rung(study: optuna.Study, trial: optuna.Trial, out_dir: Path, line: dict[str, Any],
            config: StudyConfig, reference: Sequence[float] | None = None) -> dict[str, Any] | None:
    """Record a trial's rung line and answer the waiting trial. Returns what was decided
    ({"epoch", "values", "reason"}; reason None: it goes on), or None when the line could not
    be judged (the trial goes on)."""
    stopping = config.early_stopping
    epoch = int(line.get("epoch", -1)) + 1
    vector = rung_vector(line.get("values") or {}, config.objectives)
    if stopping is None or epoch < 1 or vector is None:
        let_continue(out_dir, rung=max(epoch, 0))
        return None
    own = private.frozen(study, trial)
    earlier = rung_record(own, epoch)
    if earlier is not None:  # not the first arrival (the line read again): the verdict stands
        reason = earlier.get("reason")
    else:
        recorded = recorded_at(study.get_trials(deepcopy=False), epoch, besides=private.trial_id(trial))
        reason = decide(recorded, vector, config.objectives, stopping.reduction_factor, reference)
        trial.set_user_attr(rung_attr(epoch), {"values": vector, "continued": reason is None, "reason": reason})
    if reason is None:
        let_continue(out_dir, rung=epoch)
    else:
        request_stop(out_dir, rung=epoch, reason=f"at rung epoch {epoch}: {reason}")
    return {"epoch": epoch, "values": vector, "reason": reason}


def tell_pruned(study: optuna.Study, trial: optuna.Trial, result: dict[str, Any],
                config: StudyConfig) -> TrialPruned:
    """Tell Optuna a ``pruned`` result as PRUNED (no values: a multi-objective study takes
    none; never retried). Returns the event for the callbacks."""
    epoch = result.get("rung")
    record = rung_record(private.frozen(study, trial), epoch) if isinstance(epoch, int) else None
    reason = str(result.get("reason") or "pruned")
    write_reason(trial, reason)
    study.tell(trial, state=TrialState.PRUNED)
    stopping = config.early_stopping
    ladder = (rung_epochs(stopping.min_epochs, stopping.reduction_factor, epoch + 1)
              if stopping is not None and isinstance(epoch, int) else [])
    return TrialPruned(number=trial.number, rung=ladder.index(epoch) if epoch in ladder else -1,
                       epoch=epoch if isinstance(epoch, int) else -1,
                       values=tuple(record.get("values") or ()) if record else (), reason=reason)
