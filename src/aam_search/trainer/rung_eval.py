"""The trial side of MO-ASHA rungs: the stop request a trial obeys at epoch end.

The trial never decides its own fate: the orchestrator writes ``STOP_REQUEST_FILE`` into the
trial's folder and the trainer, at its next epoch end, stops cleanly (checkpoint kept,
status ``pruned``, which joins ``protocol.Status`` when a trial first writes it). The
file name is the trial protocol's.
"""

from __future__ import annotations

import json
from pathlib import Path

from aam_search.protocol import STOP_REQUEST_FILE


def request_stop(trial_dir: Path, *, rung: int, reason: str) -> None:
    """The orchestrator's side: ask the trial in ``trial_dir`` to stop at its next epoch end."""
    path = Path(trial_dir) / STOP_REQUEST_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rung": rung, "reason": reason}))
    tmp.replace(path)  # atomic: the trainer never reads half a request


def stop_requested(trial_dir: Path) -> dict | None:
    """The trainer's side, at epoch end: the request, if one was written."""
    path = Path(trial_dir) / STOP_REQUEST_FILE
    if not path.is_file():
        return None
    try:
        request = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"rung": None, "reason": f"unreadable {STOP_REQUEST_FILE}"}
    return request if isinstance(request, dict) else {"rung": None, "reason": f"malformed {STOP_REQUEST_FILE}"}
