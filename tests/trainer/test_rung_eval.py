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
