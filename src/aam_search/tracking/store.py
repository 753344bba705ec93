"""Where a study's MLflow data lives, and connecting to it once, up front.

One machine: ``sqlite:///<absolute workdir>/mlflow.db`` with artifacts in
``<workdir>/mlartifacts``. Always absolute: MLflow's own default (``sqlite:///mlflow.db``)
is relative to the current directory. Any other URI (an MLflow server, a database) works
when configured. The store is created (its schema migrated) once by the orchestrator,
before any trial starts, under the database's creation lock (``search.storage``): several
processes migrating one fresh store at once fail with ``duplicate column name``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aam_search.search.storage import (
    MLFLOW,
    Database,
    creation_lock,
    inspect_database,
    refuse_foreign,
    retry_creation_race,
)
from aam_search.redact import redact, scrub
from aam_search.tracking.errors import TrackingUnavailable

EXPERIMENT_PREFIX = "aam-"
# The MLflow UI (3.x) opens an experiment without a kind in its GenAI view (traces, "No
# data"); this kind opens it in "Model training", on its runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Set before the first request to an http(s) server unless the user chose otherwise: MLflow's
# defaults (7 retries with exponential back-off, 120 s timeouts) turn a wrong URL into a
# many-minute hang. The first contact uses no retries at all.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
FIRST_CONTACT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def experiment_name(study: str) -> str:
    return f"{EXPERIMENT_PREFIX}{study}"


def model_name(study: str) -> str:
    """The registered model of a study's promoted adapters (same name as its experiment)."""
    return f"{EXPERIMENT_PREFIX}{study}"


def default_tracking_uri(workdir: str | Path) -> str:
    return f"sqlite:///{Path(workdir).expanduser().resolve() / 'mlflow.db'}"


def default_artifact_root(workdir: str | Path) -> str:
    return (Path(workdir).expanduser().resolve() / "mlartifacts").as_uri()


def is_remote(uri: str) -> bool:
    """A tracking server (which decides where artifacts go) rather than a database."""
    return urlsplit(uri).scheme in ("http", "https", "databricks")


def resolve_tracking_uri(uri: str | None, workdir: str | Path) -> str:
    """An absolute tracking URI: the given one (a relative SQLite path made absolute) or the
    work folder's default."""
    if uri is None:
        return default_tracking_uri(workdir)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).expanduser().resolve()}"
    if "://" not in uri:  # a plain path to a database file
        return f"sqlite:///{Path(uri).expanduser().resolve()}"
    return uri


def artifact_location(uri: str, workdir: str | Path) -> str | None:
    """Artifacts of a database-backed store go beside it in the work folder; a server decides."""
    return None if is_remote(uri) else default_artifact_root(workdir)


def apply_http_defaults() -> None:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """No per-file progress bars from MLflow's artifact downloads (they garble our output)."""
    with _environment({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
        yield


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` whose registry is the same store."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def is_database(uri: str) -> bool:
    """A database that MLflow opens itself (and creates or migrates on first use)."""
    return urlsplit(uri).scheme.split("+")[0] in DATABASE_SCHEMES


def connect(uri: str) -> Any:
    """Open (creating or migrating once) the tracking store at ``uri``; fail fast, naming it.

    A database store is looked at first: one that holds an Optuna study (or anything else
    but MLflow) is refused unchanged. It is created holding its creation lock, so two
    ``start``s on a fresh work folder do not run MLflow's migrations at once. For a server,
    the first request is made without retries and with a short timeout, so a wrong host or
    port is reported in seconds rather than after minutes of back-off.
    """
    shown = redact(uri)
    remote = urlsplit(uri).scheme in ("http", "https")
    if remote:
        apply_http_defaults()
    db = Database(uri, MLFLOW, shown) if is_database(uri) else None
    started = time.monotonic()
    with creation_lock(db, exclusive=True) if db is not None else contextlib.nullcontext():
        if db is not None:
            refuse_foreign(db, inspect_database(db))  # StorageError: one line, nothing changed
        try:
            with _environment(FIRST_CONTACT) if remote else contextlib.nullcontext():
                client = make_client(uri)
                retry_creation_race(lambda: client.search_experiments(max_results=1))
        except Exception as error:  # MlflowException, connection errors, bad database URLs, ...
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            reason = scrub(reason, uri)  # a driver's message may quote the URL
            raise TrackingUnavailable(
                f"cannot reach the MLflow tracking store at {shown} "
                f"(after {time.monotonic() - started:.1f}s): {reason[:500]}. "
                "Start the server, fix tracking_uri, or set track: false in the study config."
            ) from None
    return client


def ensure_experiment(client: Any, name: str, artifact_root: str | None, tags: dict[str, str] | None = None) -> str:
    """The id of experiment ``name``, created (or restored from deletion) if needed.

    It is tagged ``tags`` and the "Model training" kind; an existing experiment gets the
    tags it lacks (a kind someone chose in the UI is kept)."""
    from mlflow.exceptions import MlflowException

    tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, **(tags or {})}
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_root, tags=tags)
        except MlflowException:  # another worker created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    for key, value in tags.items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


@contextlib.contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.pyfunc.log_model`` ...) at ``uri`` for a while,
    then restore what was set before (MLflow also mirrors these into the environment)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        registry_utils._registry_uri = saved[1]
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
