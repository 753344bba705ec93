import pytest

from aam_search.protocol import STOP_REQUEST_FILE
from aam_search.trainer.rung_eval import request_stop, stop_requested


def test_stop_request_round_trip(tmp_path):
    assert stop_requested(tmp_path) is None
    request_stop(tmp_path, rung=3, reason="dominated at rung 3")
    assert stop_requested(tmp_path) == {"rung": 3, "reason": "dominated at rung 3"}
    (tmp_path / STOP_REQUEST_FILE).write_text("{half")
    assert "unreadable" in stop_requested(tmp_path)["reason"]


def test_rungs_field_is_validated():
    from aam_search.trainer.config import EvalConfig

    assert EvalConfig(rungs=[1, 3, 9]).rungs == (1, 3, 9)
    for bad in ([3, 1], [0, 2], [2, 2]):
        with pytest.raises(Exception, match="rungs"):
            EvalConfig(rungs=bad)


# ---------------------------------------------------------------- a trial at its rungs
import json  # noqa: E402
import threading  # noqa: E402

from aam_search.protocol import ADAPTER_FILE, METRICS_FILE, RESULT_FILE, RUNG_KEY, Status, read_metrics  # noqa: E402
from aam_search.trainer.config import parse_trial_config  # noqa: E402
from aam_search.trainer.rung_eval import await_verdict, let_continue  # noqa: E402
from aam_search.trainer.train import run_trial  # noqa: E402


def _trial(cache, epochs: int, rungs: list[int], wait_s: float):
    heads = 4 if cache.dim % 4 == 0 else 1
    return parse_trial_config({
        "cache": str(cache.path), "seed": 0,
        "adapter": {"kind": "attention", "layers": 1, "heads": heads, "ffn_mult": 2.0},
        "optim": {"epochs": epochs, "min_steps": 0, "batch_size": 4, "head_pretrain_epochs": 1},
        "eval": {"protocols": ["static", "clip"], "attacker_epochs": 3, "probe_epochs": 3,
                 "rungs": rungs, "rung_wait_s": wait_s},
    })


def _rung_lines(out):
    return [line[RUNG_KEY] for line in read_metrics(out / METRICS_FILE) if RUNG_KEY in line]


def test_verdict_wait_ends_on_pass_stop_or_timeout(tmp_path):
    assert await_verdict(tmp_path, 2, timeout_s=0.0) is None  # nobody answers: go on
    assert await_verdict(tmp_path, 2, timeout_s=60, interrupted=lambda: True) is None  # a signal: the loop stops
    let_continue(tmp_path, rung=1)
    assert await_verdict(tmp_path, 1, timeout_s=60) is None
    request_stop(tmp_path, rung=2, reason="dominated")
    assert await_verdict(tmp_path, 2, timeout_s=60) == {"rung": 2, "reason": "dominated"}


def test_a_trial_reports_both_protocols_at_each_rung_and_goes_on_without_a_verdict(small_cache, tmp_path):
    result = run_trial(_trial(small_cache, epochs=3, rungs=[1, 2], wait_s=0.0), tmp_path)
    assert result["status"] == Status.COMPLETED and result["epochs_done"] == 3
    lines = _rung_lines(tmp_path)
    assert [line["epoch"] for line in lines] == [0, 1]  # after epochs 1 and 2 (0-based epoch index)
    for line in lines:
        values = line["values"]
        assert set(values["measured"]["privacy"]) == {"static", "clip"}
        assert values["leakage"] == max(p["cmap"] for p in values["measured"]["privacy"].values())
        assert 0 <= values["utility"] <= 1
    assert result["timings"]["rung_eval_s"] > 0


def test_a_stop_request_at_a_rung_prunes_the_trial_and_keeps_its_checkpoint(small_cache, tmp_path):
    """The trial waits at its rung for the verdict; the stand-in orchestrator says stop."""

    def orchestrator():
        for _ in range(1200):
            if _rung_lines(tmp_path):
                request_stop(tmp_path, rung=1, reason="dominated at rung 1")
                return
            threading.Event().wait(0.05)

    watcher = threading.Thread(target=orchestrator)
    watcher.start()
    try:
        result = run_trial(_trial(small_cache, epochs=5, rungs=[1, 2], wait_s=60.0), tmp_path)
    finally:
        watcher.join()
    written = json.loads((tmp_path / RESULT_FILE).read_text())
    assert written["status"] == result["status"] == Status.PRUNED
    assert written["retryable"] is False and written["epochs_done"] == 1
    assert written["rung"] == 1 and written["pruned_reason"] == "dominated at rung 1"
    assert "dominated at rung 1" in written["reason"]
    assert written["rung_values"]["utility"] == _rung_lines(tmp_path)[0]["values"]["utility"]
    assert {"failure_kind", "timings", "epochs_done"} <= set(written)
    assert (tmp_path / ADAPTER_FILE).is_file()
