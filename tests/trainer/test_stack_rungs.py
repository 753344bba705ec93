"""Stacked trials at MO-ASHA rungs: every member is evaluated at a rung as a single trial is,
the verdicts are awaited together, and a member the study stops keeps its checkpoint, ends
pruned and leaves the stack while the others go on."""

import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from aam_search.protocol import ADAPTER_FILE, METRICS_FILE, RESULT_FILE, RUNG_KEY, Status, read_metrics
from aam_search.trainer.rung_eval import await_verdicts, let_continue, request_stop
from aam_search.trainer.stack_recipe import STACK_FIELD, StackRecipe, run_stack
from aam_search.trainer.train import run_trial
from tests.trainer.test_stack import METRIC_TOLERANCE, WEIGHT_TOLERANCE, _config

EPOCHS = 3


def _member(cache, rungs, wait_s, seed=0, loss=None, optim=None):
    return _config(cache, seed=seed, loss=loss or {}, optim={"epochs": EPOCHS, **(optim or {})},
                   eval={"rungs": rungs, "rung_wait_s": wait_s})


def _rung_lines(out):
    if not (out / METRICS_FILE).is_file():
        return []
    return [line[RUNG_KEY] for line in read_metrics(out / METRICS_FILE) if RUNG_KEY in line]


class StandIn(threading.Thread):
    """The orchestrator's part: at each new rung line, stop the folders in ``stop`` at their
    first rung and let every other folder go on."""

    def __init__(self, outs, stop):
        super().__init__()
        self.outs, self.stop, self.done = outs, set(stop), threading.Event()
        self.answered = {out: 0 for out in outs}

    def run(self):
        while not self.done.wait(0.05):
            for out in self.outs:
                lines = _rung_lines(out)
                for line in lines[self.answered[out]:]:
                    rung = line["epoch"] + 1
                    if out in self.stop:
                        request_stop(out, rung=rung, reason=f"dominated at rung {rung}")
                    else:
                        let_continue(out, rung=rung)
                self.answered[out] = len(lines)


def _run_answered(outs, stop, body):
    watcher = StandIn(outs, stop)
    watcher.start()
    try:
        return body()
    finally:
        watcher.done.set()
        watcher.join()


def test_a_member_stopped_at_a_rung_leaves_the_stack_and_the_other_completes(small_cache, tmp_path):
    configs = [_member(small_cache, [1, 2], 60.0, seed=0, loss={"w_lc": 100.0}),
               _member(small_cache, [1, 2], 60.0, seed=1, loss={"w_lc": 3.0}, optim={"lr": 3e-3})]
    pruned_dir, kept_dir = tmp_path / "pruned", tmp_path / "kept"
    results = _run_answered([pruned_dir, kept_dir], [pruned_dir], lambda: run_stack(configs, [pruned_dir, kept_dir]))
    assert [r["status"] for r in results] == [Status.PRUNED, Status.COMPLETED]

    pruned = json.loads((pruned_dir / RESULT_FILE).read_text())
    assert pruned["status"] == Status.PRUNED and pruned["retryable"] is False and pruned["epochs_done"] == 1
    assert pruned["rung"] == 1 and pruned["pruned_reason"] == "dominated at rung 1"
    assert "pruned after epoch 1" in pruned["reason"]
    assert pruned["rung_values"] == _rung_lines(pruned_dir)[0]["values"]
    assert pruned[STACK_FIELD] == {"size": 2, "position": 0, "trials": [str(pruned_dir), str(kept_dir)]}
    assert (pruned_dir / ADAPTER_FILE).is_file()  # it ended cleanly, checkpoint kept
    assert len(_rung_lines(pruned_dir)) == 1 and len(read_metrics(pruned_dir / METRICS_FILE)) == 2

    kept = json.loads((kept_dir / RESULT_FILE).read_text())
    assert kept["status"] == Status.COMPLETED and kept["epochs_done"] == EPOCHS
    assert kept[STACK_FIELD]["position"] == 1 and (kept_dir / ADAPTER_FILE).is_file()
    assert [line["epoch"] for line in _rung_lines(kept_dir)] == [0, 1]  # both rungs, after the cut too
    assert [line["epoch"] for line in read_metrics(kept_dir / METRICS_FILE) if RUNG_KEY not in line] == [0, 1, 2]

    # The pruned member's rung values and checkpoint are its own weights at the rung: the same
    # trial run alone and stopped at the same rung measures and keeps the same.
    alone_dir = tmp_path / "alone"
    alone = _run_answered([alone_dir], [alone_dir], lambda: run_trial(configs[0], alone_dir))
    assert alone["status"] == Status.PRUNED and alone["epochs_done"] == 1
    mine, theirs = pruned["rung_values"], alone["rung_values"]
    for key in ("utility", "leakage"):
        assert mine[key] == pytest.approx(theirs[key], abs=METRIC_TOLERANCE), key
    weights = load_file(pruned_dir / ADAPTER_FILE), load_file(alone_dir / ADAPTER_FILE)
    assert set(weights[0]) == set(weights[1])
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor, weights[1][name], atol=WEIGHT_TOLERANCE), name
    assert set(alone) - {"stack"} <= set(pruned)  # the fields a single pruned trial writes


def test_a_stop_read_between_rungs_is_obeyed_by_that_member_alone(small_cache, tmp_path, monkeypatch):
    """Rung after epoch 2 only, no orchestrator (wait 0: go on); a stop request written for
    member 1 once it is set up (its folder starts afresh) is read at the end of epoch 1, which
    is not a rung."""
    configs = [_member(small_cache, [2], 0.0, seed=0), _member(small_cache, [2], 0.0, seed=0, loss={"w_lc": 3.0})]
    outs = [tmp_path / "a", tmp_path / "b"]
    set_up = StackRecipe._setup

    def set_up_then_told(recipe, i, started):
        ready = set_up(recipe, i, started)
        if i == 1:
            request_stop(outs[1], rung=2, reason="told early")
        return ready

    monkeypatch.setattr(StackRecipe, "_setup", set_up_then_told)
    results = StackRecipe(configs, outs).run()
    assert [r["status"] for r in results] == [Status.COMPLETED, Status.PRUNED]
    stopped = json.loads((outs[1] / RESULT_FILE).read_text())
    assert stopped["epochs_done"] == 1 and stopped["rung_values"] is None and stopped["pruned_reason"] == "told early"
    assert (outs[1] / ADAPTER_FILE).is_file() and _rung_lines(outs[1]) == []
    assert [line["epoch"] for line in _rung_lines(outs[0])] == [1]
    assert json.loads((outs[0] / RESULT_FILE).read_text())["epochs_done"] == EPOCHS


def test_verdicts_are_awaited_together_under_one_deadline(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    let_continue(a, rung=2)
    assert await_verdicts([a, b], 2, timeout_s=0.0) == [None, None]  # b unanswered: the deadline ends it
    request_stop(b, rung=2, reason="dominated")
    assert await_verdicts([a, b], 2, timeout_s=60) == [None, {"rung": 2, "reason": "dominated"}]
    assert await_verdicts([], 2, timeout_s=60) == []
