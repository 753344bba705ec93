"""Plain MLflow client calls the tracker makes: batched logging, a run's children, a run
that may be gone, the system-metrics monitor. Each names its run explicitly (no fluent
active-run stack), so any number of runs can be open at once."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BATCH = 100  # MLflow's log_batch takes at most 100 params (and 1000 items in all)


def log_batched(client: Any, run_id: str, *, params: dict[str, str] | None = None,
                metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None, step: int = 0) -> None:
    """Params, tags and metrics (all at ``step``) in as few requests as MLflow allows."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    items: list[Any] = [Param(k, v) for k, v in (params or {}).items()]
    items += [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    items += [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        client.log_batch(
            run_id,
            metrics=[i for i in chunk if isinstance(i, Metric)],
            params=[i for i in chunk if isinstance(i, Param)],
            tags=[i for i in chunk if isinstance(i, RunTag)],
        )


def log_files(client: Any, run_id: str, folder: Path, names: Iterable[str]) -> None:
    """The files of ``folder`` named ``names`` that exist, as artifacts of the run."""
    for name in names:
        path = folder / name
        if path.is_file():
            client.log_artifact(run_id, str(path))


def runs_tagged(client: Any, experiment_id: str, tag: str, value: str | None) -> list[Any]:
    """Every run of the experiment whose ``tag`` is ``value`` (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def existing_run(client: Any, run_id: str, experiment_id: str) -> Any:
    """The run, if it still exists in this experiment (not deleted); else None."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    if run.info.experiment_id != experiment_id or run.info.lifecycle_stage == "deleted":
        return None
    return run


def system_metrics_monitor(run_id: str, uri: str, *, resume: bool, worker: bool) -> Any:
    """A started monitor logging CPU/GPU/memory to the run, or None where it cannot run."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # its start/stop INFO lines would interleave with the study's own output
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(run_id, resume_logging=resume, tracking_uri=uri,
                                       node_id=socket.gethostname() if worker else None)
        monitor.start()
        return monitor
    except Exception as error:  # psutil missing, ...: system metrics are a nicety
        logger.info("no system metrics: %s", error)
        return None
