"""The one small channel through which a trial reports: files in its own folder.

``trial.json`` (resolved config), ``metrics.jsonl`` (one line per epoch, flushed as it is
written so a killed trial leaves its lines behind) and ``result.json`` (final metrics,
status, reason, timings). The orchestrator reads these; a trial never talks to Optuna or
MLflow. Only the main process writes. File names, statuses and the reader of these files
are the trial protocol's (:mod:`aam_search.protocol`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from aam_search.protocol import (
    ADAPTER_FILE,
    METRICS_FILE,
    RESULT_FILE,
    RUNG_PASSED_FILE,
    STOP_REQUEST_FILE,
    TRIAL_FILE,
    Status,
)


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
        metrics, a result, an adapter, a rung verdict) would otherwise pass for this run's."""
        if self.enabled:
            for name in (METRICS_FILE, RESULT_FILE, ADAPTER_FILE, STOP_REQUEST_FILE, RUNG_PASSED_FILE):
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
        try:
            status = Status(status)
        except ValueError:
            raise ValueError(f"unknown trial status {status!r}") from None
        self._write_json(RESULT_FILE, {"status": status.value, "reason": reason, **fields})
