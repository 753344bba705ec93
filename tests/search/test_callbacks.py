"""The tuner loop's typed callbacks: every event reaches every callback, a callback that
raises never stops the study, and the live view's side of each event."""

from __future__ import annotations

import dataclasses
import io
import logging
import typing
from pathlib import Path

import pytest
from rich.console import Console

from aam_search.search import callbacks
from aam_search.search.callbacks import (
    HANDLERS,
    Dispatcher,
    StudyHalted,
    TrialCompleted,
    TrialFailed,
    TrialPruned,
    TrialStarted,
    TunerCallback,
)
from aam_search.search.live import StudyView
from aam_search.search.orchestrator import Orchestrator
from tests.search.conftest import Recorder, run_study
from tests.search.test_failures import fake_trials

GOOD = '{"status": "completed", "reason": null, "utility": 0.5, "leakage": 0.4}'


def test_every_event_is_a_frozen_dataclass_with_a_no_op_handler() -> None:
    assert set(HANDLERS) == set(typing.get_args(callbacks.Event))
    for kind, handler in HANDLERS.items():
        assert dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen
        assert handler.__name__.startswith("on_") and getattr(TunerCallback, handler.__name__) is handler
    with pytest.raises(dataclasses.FrozenInstanceError):
        StudyHalted(reason="x").reason = "y"  # type: ignore[misc]
    TunerCallback().on_trial_pruned(TrialPruned(number=0, rung=0, epoch=1, values=(0.5,), reason="x"))


def test_a_raising_callback_is_warned_about_once_per_event_kind_and_the_others_still_hear(caplog) -> None:
    class Broken(TunerCallback):
        def on_trial_failed(self, event: TrialFailed) -> None:
            raise RuntimeError("secret-token in a message")

        def on_study_halted(self, event: StudyHalted) -> None:
            raise ValueError("halted went wrong")

    seen = Recorder()
    dispatcher = Dispatcher([Broken(), seen], clean=lambda text: text.replace("secret-token", "***"))
    events = [TrialFailed(number=n, reason="r", retried=False) for n in range(3)] + [StudyHalted(reason="x")] * 2
    with caplog.at_level(logging.WARNING, logger="aam_search.search.callbacks"):
        for event in events:
            dispatcher.emit(event)
    assert seen.events == events
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "on_trial_failed" in warnings[0] and "***" in warnings[0] and "secret-token" not in warnings[0]
    assert "on_study_halted" in warnings[1] and "the study goes on" in warnings[1]


def test_a_callback_that_raises_does_not_stop_the_study(make_study, monkeypatch) -> None:
    fake_trials(monkeypatch, f"import sys, pathlib; pathlib.Path(sys.argv[1], 'result.json').write_text({GOOD!r})")

    class Explodes(TunerCallback):
        def on_trial_started(self, event: TrialStarted) -> None:
            raise RuntimeError("tracking server went away")

        def on_trial_completed(self, event: TrialCompleted) -> None:
            raise RuntimeError("and again")

    seen = Recorder()
    config = make_study(name="explodes", n_trials=2, max_parallel=1)
    _, outcome = run_study(config, Orchestrator(config, callbacks=[Explodes(), seen]))
    assert (outcome.completed, outcome.failed) == (2, 0)
    assert [e.number for e in seen.of(TrialCompleted)] == [0, 1]
    assert [type(e).__name__ for e in seen.events][0] == "StudyPrepared"
    assert type(seen.events[-1]).__name__ == "StudyFinished" and seen.events[-1].status == "finished"


def test_the_view_counts_and_marks_pruned_trials() -> None:
    console = Console(width=200, record=True, file=io.StringIO())
    view = StudyView(console)
    view.objectives = ["utility", "leakage"]
    view.on_trial_started(TrialStarted(number=4, params={"loss.w_lc": 1.0}, out_dir=Path("t"),
                                       devices=()))
    assert 4 in view.running
    view.on_trial_pruned(TrialPruned(number=4, rung=1, epoch=6, values=(0.61, 0.72), reason="rank 3 of 4"))
    assert 4 not in view.running and view.counts["pruned"] == 1 and view.pruned == {4: 1}
    assert view.counts["failed"] == view.counts["completed"] == 0
    text = console.export_text()
    assert "trial 4 started on cpu" in text
    assert "trial 4 pruned at rung 1 (epoch 6): utility 0.610, leakage 0.720: rank 3 of 4" in text
