"""What a completed trial tells Optuna, and where it goes when its trial was failed meanwhile.

A worker whose heartbeats stopped reaching the database (a stalled database, a network
partition) may find, when its trial has finished, that another worker has failed the
trial as stale and queued a re-run. The result on disk is still a real measurement of
those parameters, so it is kept, never discarded:

1. a re-run of the same slot still waits in the queue: it is claimed and told the result,
   so it never runs (one COMPLETE for the slot, no training repeated);
2. nothing else holds the slot (no re-run was queued, retries being used up): the result
   is added to the study as a completed trial of that slot;
3. a re-run already runs (or has completed) elsewhere: the result is kept as the study
   attribute ``aam:recovered:<trial>``, so the slot is not completed twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from aam_search.search import optuna_access as private
from aam_search.search.heartbeat import RETRY_HISTORY
from aam_search.search.objectives import objective_value
from aam_search.search.record import (RECOVERED_FROM, recovered_from, rerun_attrs, completed_attrs, slot_of, where_it_ran,
                                      write_recovered)
from aam_search.trainer.reporter import finite_number


@dataclass
class Verdict:
    """A completed result, checked: the objective values, the user attributes and the
    constraints that go with them."""

    values: list[float]
    attrs: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)

    def tell(self, study: optuna.Study, trial: optuna.Trial) -> None:
        """Record it on a RUNNING trial; raises ``UpdateFinishedTrialError`` if the trial
        was finished meanwhile (before anything is written)."""
        for key, value in self.constraints.items():
            trial.set_constraint(key, value)
        for key, value in self.attrs.items():
            trial.set_user_attr(key, value)
        study.tell(trial, self.values)


def check_result(result: dict[str, Any], objectives: list[str], max_utility_drop: float | None) -> Verdict | str:
    """The checked values, attributes and constraint of a completed result, or why it
    cannot be told to Optuna."""
    try:
        values = [objective_value(name, result) for name in objectives]
    except KeyError as error:
        return str(error)
    constraints = {}
    if max_utility_drop is not None:
        drop = finite_number(result.get("utility_drop"))
        if drop is None:  # Optuna refuses a NaN constraint; raw utility 0 gives one
            return (f"cannot check max_utility_drop: utility_drop is {result.get('utility_drop')!r} "
                    f"(raw utility {result.get('raw_utility')!r})")
        constraints["max_utility_drop"] = drop - max_utility_drop
    return Verdict(values, completed_attrs(result), constraints)


def _is_rerun(candidate: FrozenTrial, original: FrozenTrial) -> bool:
    return candidate.number != original.number and (
        slot_of(candidate) == slot_of(original) or original.number in candidate.system_attrs.get(RETRY_HISTORY, ())
    )


def keep_result(study: optuna.Study, original: FrozenTrial, verdict: Verdict) -> tuple[int | None, str]:
    """Keep the result of ``original`` (a trial failed meanwhile): returns the number of the
    trial now COMPLETE with it (None when it went to a study attribute) and where it went."""
    storage = private.storage_of(study)
    attrs = {**verdict.attrs, RECOVERED_FROM: original.number, **where_it_ran(original)}
    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if not _is_rerun(waiting, original) or (original.params and not waiting.params):
            continue
        if storage.set_trial_state_values(private.trial_id(waiting), state=TrialState.RUNNING):  # atomic claim
            Verdict(verdict.values, attrs, verdict.constraints).tell(study, private.trial_of(study, waiting))
            return waiting.number, f"told as trial {waiting.number}, its queued re-run, which will not run"
    others = [t for t in study.get_trials(deepcopy=False) if _is_rerun(t, original)
              and t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE)]
    if not others:
        frozen = optuna.trial.create_trial(
            state=TrialState.COMPLETE, params=original.params, distributions=original.distributions,
            values=verdict.values,
            user_attrs={**rerun_attrs(original, counts_as_attempt=False), **attrs},
        )
        for key, value in verdict.constraints.items():
            frozen.set_constraint(key, value)
        study.add_trial(frozen)
        number = next(t.number for t in reversed(study.get_trials(deepcopy=False))
                      if recovered_from(t) == original.number)
        return number, f"added to the study as trial {number}"
    kept = {"values": verdict.values, "constraints": verdict.constraints, **attrs}
    key = write_recovered(study, original.number, kept)
    return None, f"kept in the study attribute {key!r} (its re-run, trial {others[0].number}, holds the slot)"
