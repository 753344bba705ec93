"""``aam-search ui``: the MLflow UI over a work folder's store (or any database store)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from aam_search.errors import AamSearchError
from aam_search.redact import redact
from aam_search.tracking.store import default_artifact_root, is_remote, resolve_tracking_uri

BACKEND_STORE_ENV = "MLFLOW_BACKEND_STORE_URI"  # mlflow ui/server's --backend-store-uri, from the environment


class UIError(AamSearchError, ValueError):
    """Nothing to show: no store in the work folder, or a server URI (already has a UI)."""


def ui_command(*, workdir: str | Path | None = None, tracking_uri: str | None = None, host: str = "127.0.0.1",
               port: int = 5000, workers: int = 1) -> tuple[list[str], dict[str, str], str]:
    """The ``mlflow ui`` command line for a work folder's store, its environment, and the URL
    it serves. The store URI (which may hold a password) goes in the environment
    (``MLFLOW_BACKEND_STORE_URI``, read by ``mlflow ui`` and handed on to its server workers),
    never on the command line, where ``ps`` shows it to every user of the machine."""
    if (workdir is None) == (tracking_uri is None):
        raise UIError("give exactly one of --workdir DIR or --tracking-uri URI")
    if tracking_uri is not None and is_remote(tracking_uri):
        raise UIError(f"{redact(tracking_uri)} is a tracking server already: open it in a browser")
    folder = Path(workdir if workdir is not None else ".").expanduser().resolve()
    uri = resolve_tracking_uri(tracking_uri, folder)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).is_file():
        where = f"in {folder}" if workdir is not None else f"at {redact(uri)}"
        raise UIError(f"no MLflow store {where} (mlflow.db appears when a study starts)")
    command = [sys.executable, "-m", "mlflow", "ui",
               "--default-artifact-root", default_artifact_root(folder),
               "--host", host, "--port", str(port), "--workers", str(workers)]
    env = {**os.environ, BACKEND_STORE_ENV: uri}
    shown_host = socket.gethostname() if host in ("0.0.0.0", "::") else host
    return command, env, f"http://{shown_host}:{port}"
