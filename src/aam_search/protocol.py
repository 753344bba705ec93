"""The trial protocol: what a trial's folder holds, and how its files are read back.

A trial reports only through files in its own folder (``trainer.reporter`` writes them);
the orchestrator, tracking and the CLI read them. This module is the one home of the file
names, the statuses a trial ends with, the ``result.json`` fields that steer the tuner
(``failure_kind``, ``retryable``) and the one reader of ``metrics.jsonl``. It is the lowest
layer, like ``redact``: it imports nothing from the project.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CONFIG_FILE = "trial.yaml"  # the config the orchestrator asks the trial to run
TRIAL_FILE = "trial.json"  # the config as the trial resolved it (lr, step budget)
METRICS_FILE = "metrics.jsonl"  # one line per epoch, flushed as written
RESULT_FILE = "result.json"  # final metrics, status, reason, timings
ADAPTER_FILE = "adapter.safetensors"
LOG_FILE = "trial.log"  # the trial process's stdout and stderr
STOP_REQUEST_FILE = "stop_request.json"  # the orchestrator asks the trial to stop at its next epoch end
RUNG_PASSED_FILE = "rung_passed.json"  # the orchestrator lets the trial go on past a rung
# A metrics.jsonl line holding this key carries a rung's cheap evaluation (trainer/rung_eval.py).
RUNG_KEY = "rung"
# Every file of a trial folder, in the order tracking logs them as artifacts.
TRIAL_FILES = (CONFIG_FILE, TRIAL_FILE, RESULT_FILE, METRICS_FILE, ADAPTER_FILE, LOG_FILE)


class Status(StrEnum):
    """``result.json``'s ``status``; the values are what the file has always held."""

    COMPLETED = "completed"
    FAILED = "failed"
    DIVERGED = "diverged"  # the guard stopped a loss that ran away
    TERMINATED = "terminated"  # a signal (timeout, Ctrl-C, a stopping study) ended it
    PRUNED = "pruned"  # the study's early stopping (MO-ASHA) stopped it at a rung


# result.json's ``failure_kind``: None, or INPUT_FAILURE when a shared input every trial
# reads (the feature cache) is missing or broken; the orchestrator then stops the study
# instead of spending the budget on trials that cannot succeed.
FAILURE_KIND = "failure_kind"
INPUT_FAILURE = "input"
# result.json's ``retryable``: whether running the same parameters again could end
# otherwise. The trial decides, so that rewording a reason never changes the retry policy.
RETRYABLE = "retryable"


def is_retryable(result: dict[str, Any] | None) -> bool:
    """Whether a failed trial is worth a re-run with the same parameters.

    What the trial wrote in ``retryable``; a trial that wrote no result (it died first) is
    worth one; a ``result.json`` from before the field existed falls back on its status
    (divergence repeats itself).
    """
    if result is None:
        return True
    written = result.get(RETRYABLE)
    if isinstance(written, bool):
        return written
    return result.get("status") != Status.DIVERGED


def read_new_metrics(path: str | Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The whole lines of ``metrics.jsonl`` from byte ``offset`` on, and the offset after them.

    A line still being written (no newline yet, or torn by a killed writer) is left for the
    next call; a whole line that is not a JSON object is skipped with a warning, and the
    lines after it are kept. A missing file has no lines yet.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return [], offset
    whole = chunk[: chunk.rfind(b"\n") + 1]
    lines: list[dict[str, Any]] = []
    position = offset
    for raw in whole.splitlines(keepends=True):
        if raw.strip():
            try:
                line = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                line = None
            if isinstance(line, dict):
                lines.append(line)
            else:
                logger.warning("%s: skipped a line that is not a JSON object at byte %d: %r", path, position,
                               raw[:80])
        position += len(raw)
    return lines, offset + len(whole)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every whole line of ``metrics.jsonl`` (see :func:`read_new_metrics`)."""
    return read_new_metrics(path)[0]
