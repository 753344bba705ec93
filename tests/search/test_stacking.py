"""Stacked trials in the tuner loop: K trials asked at once run as one process and are told one
by one; a space that changes the model's shape falls back to one trial per process, saying so."""

import json
import logging
from pathlib import Path

from optuna.trial import TrialState

from aam_search.protocol import LOG_FILE, RESULT_FILE
from aam_search.search.orchestrator import Orchestrator
from aam_search.search.record import STACK_ATTR
from aam_search.search.study import make_sampler
from tests.search.conftest import complete, run_study


def test_a_stacked_study_runs_its_trials_in_one_process_and_tells_each(make_study):
    config = make_study(stack=3, n_trials=3, max_parallel=1, space="loss-weights")
    orchestrator, outcome = run_study(config)
    assert orchestrator.stacker.size == 3
    trials = orchestrator.study.get_trials(deepcopy=False)
    assert outcome.completed == 3 and len(complete(trials)) == 3
    numbers = sorted(t.number for t in trials)
    for trial in trials:
        assert trial.user_attrs[STACK_ATTR] == numbers  # one process ran them all
        folder = Path(trial.user_attrs["out_dir"])
        result = json.loads((folder / RESULT_FILE).read_text())
        assert result["status"] == "completed" and result["stack"]["size"] == 3
        assert trial.values == [result["utility"], result["leakage"]]  # told from its own result
        assert (folder / LOG_FILE).is_file()
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3  # three different points
    assert len(orchestrator.devices.free) == orchestrator.devices.capacity  # the one slot came back once


def test_a_space_that_changes_the_shape_falls_back_to_one_trial_per_process(make_study, caplog):
    config = make_study(stack=4, space="adapter-size")
    orchestrator = Orchestrator(config)
    with caplog.at_level(logging.WARNING, logger="aam_search.search.stacking"):
        orchestrator.prepare()
    assert orchestrator.stacker.size == 1
    assert "each trial runs alone" in caplog.text and "adapter.layers" in caplog.text
    assert orchestrator.study.get_trials(states=(TrialState.RUNNING,)) == []


def test_stacking_asks_tpe_with_a_constant_liar(make_study):
    assert make_sampler(make_study(stack=4), None)._constant_liar is True
    assert make_sampler(make_study(), None)._constant_liar is False


class _SharedProcess:
    """A stand-in for one train-stack process: running until ``returncode`` is set."""

    def __init__(self):
        self.returncode = None

    def poll(self):
        return self.returncode


def test_a_member_pruned_mid_stack_is_told_at_once_and_the_slot_waits_for_the_rest(make_study, tmp_path):
    import time

    from aam_search.search.backend import RunningTrial
    from aam_search.search.callbacks import TrialPruned
    from tests.search.conftest import TINY_TRIAL, Recorder

    trial = {**TINY_TRIAL, "optim": {**TINY_TRIAL["optim"], "epochs": 4}}
    config = make_study(trial=trial, stack=2, n_trials=2, max_parallel=1, early_stopping={"min_epochs": 1})
    recorder = Recorder()
    orchestrator = Orchestrator(config, callbacks=[recorder])
    orchestrator.prepare()
    process, slot = _SharedProcess(), orchestrator.devices.take()
    members = []
    for name in ("a", "b"):
        trial, folder = orchestrator.study.ask(), tmp_path / name
        folder.mkdir()
        running = RunningTrial(trial.number, folder, process, slot, time.time() - 1, 1e9, open(folder / LOG_FILE, "ab"))
        orchestrator.running[trial.number] = (running, trial)
        members.append((trial, folder))

    def result(folder, status):
        (folder / RESULT_FILE).write_text(json.dumps({"status": status, "reason": f"{status} here", "rung": 1,
                                                      "retryable": False}))

    result(members[0][1], "pruned")  # member a left the stack at its first rung; b trains on
    orchestrator._poll()
    state = {t.number: t.state for t in orchestrator.study.get_trials(deepcopy=False)}
    assert state == {members[0][0].number: TrialState.PRUNED, members[1][0].number: TrialState.RUNNING}
    assert [e.number for e in recorder.of(TrialPruned)] == [members[0][0].number]
    assert list(orchestrator.running) == [members[1][0].number] and slot not in orchestrator.devices.free
    orchestrator._poll()  # b has not ended: nothing changes
    assert list(orchestrator.running) == [members[1][0].number]

    result(members[1][1], "pruned")
    process.returncode = 0
    orchestrator._poll()
    assert orchestrator.running == {} and slot in orchestrator.devices.free
    assert all(t.state == TrialState.PRUNED for t in orchestrator.study.get_trials(deepcopy=False))
