"""The study side of MO-ASHA: rung records in the study storage, the first-arrival rule,
the verdict files a waiting trial reads, and PRUNED trials kept out of the front."""

import json

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from aam_search.protocol import RUNG_PASSED_FILE, STOP_REQUEST_FILE
from aam_search.search import optuna_access as private
from aam_search.search.callbacks import TrialPruned
from aam_search.search.config import parse_study_config
from aam_search.search.pareto import completed, hypervolume, pareto_front
from aam_search.search.record import rung_attr, rung_record, rung_records
from aam_search.search.rungs import on_rung, recorded_at, tell_pruned
from aam_search.trainer.rung_eval import stop_requested

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(**stopping):
    return parse_study_config({"name": "s", "data": {"manifest": "m.csv"},
                               "early_stopping": {"min_epochs": 1, "reduction_factor": 2, **stopping}})


def _line(epoch: int, utility: float, leakage: float) -> dict:
    return {"epoch": epoch - 1, "seconds": 0.1, "values": {"utility": utility, "leakage": leakage}}


@pytest.fixture
def storage(tmp_path):
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def _worker(storage):
    """One worker's handle on the shared study (each worker opens its own)."""
    return optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"],
                               load_if_exists=True)


def test_a_rung_record_is_read_back_from_the_trial(storage):
    study = _worker(storage)
    trial = study.ask()
    trial.set_user_attr(rung_attr(3), {"values": [0.5, 0.2], "continued": True, "reason": None})
    trial.set_user_attr("aam:rungs-other", {"values": [1, 1]})  # not a rung record
    frozen = study.trials[0]
    assert rung_attr(3) == "aam:rung:3"
    assert rung_record(frozen, 3)["values"] == [0.5, 0.2] and rung_record(frozen, 1) is None
    assert rung_records(frozen) == {3: {"values": [0.5, 0.2], "continued": True, "reason": None}}


def test_decisions_come_from_the_records_every_worker_shares(storage, tmp_path):
    config = _config()
    first, second = _worker(storage), _worker(storage)  # two workers, one storage
    good, bad = first.ask(), second.ask()
    (tmp_path / "good").mkdir(), (tmp_path / "bad").mkdir()
    assert on_rung(first, good, tmp_path / "good", _line(1, 0.8, 0.1), config)["reason"] is None
    assert json.loads((tmp_path / "good" / RUNG_PASSED_FILE).read_text()) == {"rung": 1}
    # The other worker reads the first one's record from the storage: a dominated newcomer stops.
    decided = on_rung(second, bad, tmp_path / "bad", _line(1, 0.5, 0.4), config)
    assert decided["reason"].startswith("ranked 2 of 2") and decided["values"] == [0.5, 0.4]
    assert stop_requested(tmp_path / "bad")["rung"] == 1
    assert not (tmp_path / "bad" / RUNG_PASSED_FILE).exists()
    records = recorded_at(first.get_trials(deepcopy=False), 1, besides=-1)
    assert sorted(records) == [[0.5, 0.4], [0.8, 0.1]]


def test_only_the_first_arrival_at_a_rung_is_decided(storage, tmp_path):
    config = _config()
    study = _worker(storage)
    leader, late = study.ask(), study.ask()
    on_rung(study, leader, tmp_path, _line(1, 0.8, 0.1), config)
    # The same rung again (a line read twice), now with values a newcomer would stop on:
    # the record and the verdict stand.
    again = on_rung(study, leader, tmp_path, _line(1, 0.1, 0.9), config)
    assert again["reason"] is None
    assert rung_record(private.frozen(study, leader), 1)["values"] == [0.8, 0.1]
    # A newcomer that dominates the recorded vector goes on (front rank, not a sorted permutation).
    (tmp_path / "late").mkdir()
    assert on_rung(study, late, tmp_path / "late", _line(1, 0.9, 0.05), config)["reason"] is None
    # A later rung is a new first arrival.
    assert on_rung(study, leader, tmp_path, _line(2, 0.85, 0.1), config)["epoch"] == 2
    assert set(rung_records(private.frozen(study, leader))) == {1, 2}


def test_a_line_without_finite_objectives_is_not_recorded_and_the_trial_goes_on(storage, tmp_path):
    study = _worker(storage)
    trial = study.ask()
    assert on_rung(study, trial, tmp_path, _line(1, float("nan"), 0.3), _config()) is None
    assert on_rung(study, trial, tmp_path, {"epoch": 0, "values": {"utility": "nan", "leakage": 0.2}},
                   _config()) is None
    assert rung_records(private.frozen(study, trial)) == {}
    assert (tmp_path / RUNG_PASSED_FILE).is_file() and not (tmp_path / STOP_REQUEST_FILE).exists()


def test_a_pruned_trial_is_told_pruned_and_never_enters_the_front_or_the_hypervolume(storage, tmp_path):
    config = _config()
    study = _worker(storage)
    done = study.ask()
    study.tell(done, [0.6, 0.3])
    pruned = study.ask()
    on_rung(study, pruned, tmp_path, _line(2, 0.99, 0.01), config)  # a fine vector at its rung
    event = tell_pruned(study, pruned, {"status": "pruned", "rung": 2, "reason": "pruned after epoch 2: x"}, config)
    assert event == TrialPruned(number=1, rung=1, epoch=2, values=(0.99, 0.01), reason="pruned after epoch 2: x")
    trials = study.get_trials(deepcopy=False)
    assert trials[1].state == TrialState.PRUNED and trials[1].values is None
    assert [t.number for t in completed(trials)] == [0]
    assert [t.number for t in pareto_front(trials, ["utility", "leakage"])] == [0]
    reference = np.array([0.0, 1.0])
    assert hypervolume(trials, ["utility", "leakage"], reference) == pytest.approx(
        hypervolume(trials[:1], ["utility", "leakage"], reference))
