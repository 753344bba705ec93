"""The one small channel through which a trial reports: files in its own folder.

``trial.json`` (resolved config), ``metrics.jsonl`` (one line per epoch, flushed as it is
written so a killed trial leaves its lines behind) and ``result.json`` (final metrics,
status, reason, timings). The orchestrator reads these; a trial never talks to Optuna or
MLflow. Only the main process writes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

TRIAL_FILE = "trial.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
ADAPTER_FILE = "adapter.safetensors"

STATUSES = ("completed", "failed", "diverged", "terminated")
# result.json's ``failure_kind``: None, or INPUT_FAILURE when a shared input every trial
# reads (the feature cache) is missing or broken; the orchestrator then stops the study
# instead of spending the budget on trials that cannot succeed.
FAILURE_KIND = "failure_kind"
INPUT_FAILURE = "input"


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as strings so files stay strictly parseable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def finite_number(value: Any) -> float | None:
    """A number read back from a result file (NaN/Inf were written as strings), or None
    when it is missing, not a number or not finite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class TrialReporter:
    def __init__(self, out_dir: str | Path, *, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        if not self.enabled:
            return
        path = self.out_dir / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=True))
        os.replace(tmp, path)

    def trial(self, resolved_config: dict[str, Any]) -> None:
        """Start the trial's record afresh: files an earlier run left in this folder (appended
        metrics, a result, an adapter) would otherwise pass for this run's."""
        if self.enabled:
            for name in (METRICS_FILE, RESULT_FILE, ADAPTER_FILE):
                (self.out_dir / name).unlink(missing_ok=True)
        self._write_json(TRIAL_FILE, resolved_config)

    def epoch(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.out_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(_clean(metrics), sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def result(self, status: str, reason: str | None, **fields: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown trial status {status!r}")
        self._write_json(RESULT_FILE, {"status": status, "reason": reason, **fields})


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Parse metrics.jsonl; a torn last line (the process was killed mid-write) is ignored."""
    lines = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return lines
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return lines
