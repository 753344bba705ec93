"""A real tiny study with MO-ASHA on: trials report at their rungs, the orchestrator prunes
from the records in the study storage, and a pruned trial ends cleanly and stays out of the
front while using its slot of n_trials."""

from __future__ import annotations

import json

import yaml
from optuna.trial import TrialState

from aam_search.protocol import ADAPTER_FILE, CONFIG_FILE, METRICS_FILE, RESULT_FILE, RUNG_KEY, read_metrics
from aam_search.search.callbacks import TrialPruned
from aam_search.search.orchestrator import Orchestrator
from aam_search.search.record import REASON, rung_records
from tests.search.conftest import TINY_TRIAL, Recorder, run_study

# Four epochs, rungs after epochs 1 and 2 (eta 2): with eta 2 a newcomer that does not
# dominate the trial recorded before it at a rung stops there.
EARLY_TRIAL = {**TINY_TRIAL, "optim": {**TINY_TRIAL["optim"], "epochs": 4}}


def test_a_study_with_early_stopping_prunes_a_trial_and_keeps_it_out_of_the_front(make_study):
    config = make_study(trial=EARLY_TRIAL, n_trials=3, max_parallel=1,
                        early_stopping={"kind": "mo-asha", "min_epochs": 1, "reduction_factor": 2})
    recorder = Recorder()
    orchestrator = Orchestrator(config, callbacks=[recorder])
    orchestrator, outcome = run_study(config, orchestrator)
    trials = orchestrator.study.get_trials(deepcopy=False)

    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.number, t.state, rung_records(t)) for t in trials]
    # Pruned trials used their slots: the budget counts them, nothing is retried.
    assert len(trials) == 3 and outcome.completed + outcome.pruned == 3 and outcome.pruned == len(pruned)
    assert {t.number for t in outcome.front}.isdisjoint(t.number for t in pruned)
    for trial in trials:  # the study gave every trial its rungs; each recorded the first one
        folder = config.trials_dir / f"trial-{trial.number:04d}"
        assert yaml.safe_load((folder / CONFIG_FILE).read_text())["eval"]["rungs"] == [1, 2]
        assert 1 in rung_records(trial)
        assert [line[RUNG_KEY]["epoch"] for line in read_metrics(folder / METRICS_FILE) if RUNG_KEY in line]
    for trial in pruned:
        folder = config.trials_dir / f"trial-{trial.number:04d}"
        result = json.loads((folder / RESULT_FILE).read_text())
        assert result["status"] == "pruned" and result["retryable"] is False
        assert result["epochs_done"] == result["rung"] < 4
        assert rung_records(trial)[result["rung"]]["continued"] is False
        assert (folder / ADAPTER_FILE).is_file()  # it ended cleanly, checkpoint kept
        assert trial.values is None and "pruned" in trial.user_attrs[REASON]
    told = recorder.of(TrialPruned)
    assert sorted(p.number for p in told) == sorted(t.number for t in pruned)
    assert all(p.rung >= 0 and p.epoch >= 1 and len(p.values) == 2 and p.reason for p in told)
    # A trial that passed every rung completed all its epochs.
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            assert all(record["continued"] for record in rung_records(trial).values())


def test_a_stacked_study_prunes_a_member_at_a_rung_and_the_rest_of_its_stack_goes_on(make_study):
    from aam_search.search.record import STACK_ATTR

    config = make_study(trial=EARLY_TRIAL, n_trials=2, max_parallel=1, stack=2,
                        early_stopping={"kind": "mo-asha", "min_epochs": 1, "reduction_factor": 2})
    recorder = Recorder()
    orchestrator, outcome = run_study(config, Orchestrator(config, callbacks=[recorder]))
    assert orchestrator.stacker.size == 2
    trials = orchestrator.study.get_trials(deepcopy=False)
    numbers = sorted(t.number for t in trials)
    assert len(trials) == 2 and all(t.user_attrs[STACK_ATTR] == numbers for t in trials)  # one process
    for trial in trials:  # the orchestrator read and decided every member's rung
        assert 1 in rung_records(trial), [(t.number, t.state, rung_records(t)) for t in trials]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(pruned) == outcome.pruned == 1 and outcome.completed == 1
    (trial,) = pruned
    folder = config.trials_dir / f"trial-{trial.number:04d}"
    result = json.loads((folder / RESULT_FILE).read_text())
    assert result["status"] == "pruned" and result["retryable"] is False and result["stack"]["size"] == 2
    assert result["epochs_done"] == result["rung"] < 4 and (folder / ADAPTER_FILE).is_file()
    assert rung_records(trial)[result["rung"]]["continued"] is False and trial.values is None
    assert [p.number for p in recorder.of(TrialPruned)] == [trial.number]
    (kept,) = [t for t in trials if t.state == TrialState.COMPLETE]
    kept_result = json.loads((config.trials_dir / f"trial-{kept.number:04d}" / RESULT_FILE).read_text())
    assert kept_result["status"] == "completed" and kept_result["epochs_done"] == 4  # it went on without its peer
    assert {t.number for t in outcome.front} == {kept.number}
    assert len(orchestrator.devices.free) == orchestrator.devices.capacity  # the stack's one slot came back
