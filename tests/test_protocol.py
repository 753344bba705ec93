"""The trial protocol: the file names users' scripts rely on, the statuses, the retry flag
and the one tolerant reader of metrics.jsonl."""

from __future__ import annotations

import json
import logging

import pytest

from aam_search import protocol
from aam_search.protocol import (
    METRICS_FILE,
    RETRYABLE,
    Status,
    is_retryable,
    read_metrics,
    read_new_metrics,
)
from aam_search.trainer.reporter import TrialReporter


def _line(data: dict) -> bytes:
    return (json.dumps(data) + "\n").encode()


def test_the_names_users_scripts_read_stay_what_they_were():
    assert (protocol.CONFIG_FILE, protocol.TRIAL_FILE, protocol.METRICS_FILE, protocol.RESULT_FILE,
            protocol.ADAPTER_FILE, protocol.LOG_FILE) == (
        "trial.yaml", "trial.json", "metrics.jsonl", "result.json", "adapter.safetensors", "trial.log")
    assert [s.value for s in Status] == ["completed", "failed", "diverged", "terminated", "pruned"]
    assert (protocol.FAILURE_KIND, protocol.INPUT_FAILURE, RETRYABLE) == ("failure_kind", "input", "retryable")


def test_the_reporter_writes_plain_status_strings(tmp_path):
    TrialReporter(tmp_path).result(Status.DIVERGED, "why", retryable=False)
    assert json.loads((tmp_path / protocol.RESULT_FILE).read_text())["status"] == "diverged"
    TrialReporter(tmp_path).result("pruned", "stopped at a rung", retryable=False)
    assert json.loads((tmp_path / protocol.RESULT_FILE).read_text())["status"] == "pruned"
    with pytest.raises(ValueError, match="unknown trial status 'stopped early'"):
        TrialReporter(tmp_path).result("stopped early", None)


def test_a_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_bytes(_line({"epoch": 0}) + _line({"epoch": 1}) + b'{"epoch": 2, "lo')
    assert read_metrics(path) == [{"epoch": 0}, {"epoch": 1}]
    # Even a torn line that parses (its newline never came) waits: whole lines end in one.
    path.write_bytes(_line({"epoch": 0}) + b'{"epoch": 1}')
    lines, offset = read_new_metrics(path)
    assert lines == [{"epoch": 0}] and offset == len(_line({"epoch": 0}))


def test_a_garbled_line_is_skipped_with_a_warning_and_later_lines_are_kept(tmp_path, caplog):
    path = tmp_path / METRICS_FILE
    path.write_bytes(_line({"epoch": 0}) + b'{"epoch": 1, "lo{"epoch": 1}\n' + b"[1, 2]\n" + b"\n"
                     + b"\xff\xfe\n" + _line({"epoch": 2}))
    with caplog.at_level(logging.WARNING, logger="aam_search.protocol"):
        assert read_metrics(path) == [{"epoch": 0}, {"epoch": 2}]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3  # the garbled line, the JSON that is no object, the undecodable bytes; not the blank
    assert str(path) in warnings[0] and f"byte {len(_line({'epoch': 0}))}" in warnings[0]


def test_reading_from_an_offset_returns_each_line_once_across_a_line_being_written(tmp_path):
    path = tmp_path / METRICS_FILE
    assert read_new_metrics(path, 0) == ([], 0)  # no file yet
    first, second = _line({"epoch": 0, "loss": 1.0}), _line({"epoch": 1, "loss": 0.5})
    with open(path, "wb") as handle:
        handle.write(first + second[:7])
        handle.flush()
        lines, offset = read_new_metrics(path, 0)
        assert lines == [{"epoch": 0, "loss": 1.0}] and offset == len(first)
        assert read_new_metrics(path, offset) == ([], offset)  # still being written
        handle.write(second[7:] + _line({"epoch": 2}))
        handle.flush()
    lines, offset = read_new_metrics(path, offset)
    assert lines == [{"epoch": 1, "loss": 0.5}, {"epoch": 2}] and offset == path.stat().st_size
    assert read_new_metrics(path, offset) == ([], offset)
    assert read_metrics(path) == [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}, {"epoch": 2}]


@pytest.mark.parametrize(("result", "expected"), [
    (None, True),  # the trial died before writing a result
    ({"status": "diverged", "reason": "loss diverged", RETRYABLE: True}, True),  # the field decides, not the words
    ({"status": "failed", "reason": "RuntimeError: CUDA error", RETRYABLE: False}, False),
    ({"status": "completed", RETRYABLE: True}, True),
    # result.json from before the field: by status only
    ({"status": "diverged", "reason": "loss diverged in epoch 0"}, False),
    ({"status": "failed", "reason": "RuntimeError: CUDA error"}, True),
    ({"status": "terminated", "reason": "received SIGTERM in epoch 3"}, True),
])
def test_retryable_is_what_the_trial_wrote(result, expected):
    assert is_retryable(result) is expected
