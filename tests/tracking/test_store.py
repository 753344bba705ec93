"""Tracking URIs, and failing fast on a store that cannot be reached."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aam_search.search.orchestrator import Orchestrator
from aam_search.search.storage import StorageError
from aam_search.search.study import open_study, redact
from aam_search.tracking.errors import TrackingUnavailable
from aam_search.tracking.runs import study_tracker
from aam_search.tracking.store import (
    artifact_location,
    connect,
    default_tracking_uri,
    resolve_tracking_uri,
)
from tests.tracking.conftest import tiny_config


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_default_uri_is_absolute_and_in_the_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri("work/s") == f"sqlite:///{tmp_path / 'work/s/mlflow.db'}"
    assert resolve_tracking_uri(None, "work/s") == default_tracking_uri(tmp_path / "work/s")
    assert resolve_tracking_uri("sqlite:///rel.db", "x") == f"sqlite:///{tmp_path / 'rel.db'}"
    assert resolve_tracking_uri("http://host:5000", "x") == "http://host:5000"
    assert artifact_location("http://host:5000", "x") is None
    assert artifact_location("sqlite:////a/b.db", tmp_path) == (tmp_path / "mlartifacts").as_uri()
    assert redact("https://me:secret@host:5000/x") == "https://me:***@host:5000/x"


def test_connect_creates_the_store_once(tmp_path):
    uri = default_tracking_uri(tmp_path / "new")
    connect(uri).search_experiments()
    assert Path(uri.removeprefix("sqlite:///")).is_file()


def test_unreachable_server_fails_the_start_fast(small_cache, tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    config = tiny_config(small_cache.path, tmp_path / "work", tracking_uri=uri)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as error:
        study_tracker(config)  # what start does first, before preparing the study
    assert time.monotonic() - started < 10
    assert uri in str(error.value)


def test_unreachable_server_on_the_command_line(write_config, capsys):
    from aam_search.cli import main

    uri = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    code = main(["start", "--config", str(write_config(tracking_uri=uri))])
    assert code == 2 and time.monotonic() - started < 15
    assert uri in capsys.readouterr().err.replace("\n", "")


@pytest.fixture
def write_config(small_cache, tmp_path):
    import yaml

    def write(**changes) -> Path:
        config = tiny_config(small_cache.path, tmp_path / "work", **changes)
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
        return path

    return write


def test_tracking_can_be_turned_off(small_cache, tmp_path):
    config = tiny_config(small_cache.path, tmp_path / "work", tracking_uri=f"http://127.0.0.1:{closed_port()}",
                         track=False)
    assert study_tracker(config) is None
    Orchestrator(config).prepare()
    assert not (tmp_path / "work" / "mlflow.db").exists()


# Several `start`s on one fresh work folder: each process connects to the same new mlflow.db
# at once (forked after the imports, released together by a barrier).
CONCURRENT_CONNECTS = """
import json, multiprocessing, sys
from aam_search.tracking.store import connect

def work(uri, barrier, results):
    barrier.wait()
    try:
        connect(uri)
        results.put("ok")
    except Exception as error:
        results.put(f"{type(error).__name__}: {error}")

if __name__ == "__main__":
    uri, count = sys.argv[1], int(sys.argv[2])
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(count), context.Queue()
    workers = [context.Process(target=work, args=(uri, barrier, results)) for _ in range(count)]
    for worker in workers:
        worker.start()
    print(json.dumps([results.get(timeout=300) for _ in workers]))
    for worker in workers:
        worker.join()
"""


def test_concurrent_starts_create_a_fresh_mlflow_store_once(tmp_path):
    """Before: the second one said 'cannot reach the MLflow tracking store ... Start the
    server' (duplicate column name: step, table experiments already exists)."""
    uri = default_tracking_uri(tmp_path / "work")
    done = subprocess.run([sys.executable, "-c", CONCURRENT_CONNECTS, uri, "3"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["ok"] * 3
    connect(uri).search_experiments()


@pytest.fixture
def both_stores(tmp_path):
    """A study's optuna.db and an mlflow.db, both created for real."""
    optuna_db, mlflow_db = tmp_path / "optuna.db", tmp_path / "mlflow.db"
    config = tiny_config(tmp_path / "cache", tmp_path / "work", storage=f"sqlite:///{optuna_db}")
    open_study(config)._storage._backend.engine.dispose()
    connect(f"sqlite:///{mlflow_db}")
    return optuna_db, mlflow_db


def test_swapped_optuna_and_mlflow_stores_are_refused_and_left_unchanged(both_stores, tmp_path):
    optuna_db, mlflow_db = both_stores
    before = optuna_db.read_bytes(), mlflow_db.read_bytes()
    with pytest.raises(StorageError) as error:  # the Optuna database given as tracking_uri
        connect(f"sqlite:///{optuna_db}")
    assert str(error.value).startswith(f"{optuna_db} is an Optuna study database, not an MLflow tracking store")
    config = tiny_config(tmp_path / "cache", tmp_path / "work", storage=f"sqlite:///{mlflow_db}")
    with pytest.raises(StorageError) as error:  # the MLflow store given as the study's storage
        open_study(config)
    assert str(error.value).startswith(f"{mlflow_db} is an MLflow tracking store, not an Optuna study database")
    assert "swapped" in str(error.value) and "\n" not in str(error.value)
    assert (optuna_db.read_bytes(), mlflow_db.read_bytes()) == before


def test_swapped_stores_on_the_command_line(both_stores, write_config, capsys):
    from aam_search.cli import main

    optuna_db, mlflow_db = both_stores
    before = optuna_db.read_bytes(), mlflow_db.read_bytes()
    study_yaml = write_config(storage=f"sqlite:///{mlflow_db}", tracking_uri=f"sqlite:///{optuna_db}")
    assert main(["start", "--config", str(study_yaml)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{optuna_db} is an Optuna study database" in err
    assert main(["status", "tiny", "--storage", f"sqlite:///{mlflow_db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{mlflow_db} is an MLflow tracking store" in err
    assert (optuna_db.read_bytes(), mlflow_db.read_bytes()) == before


def test_a_file_that_is_not_a_tracking_store_is_refused_unchanged(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 300)
    with pytest.raises(StorageError, match=f"{junk} is not an SQLite database"):
        connect(f"sqlite:///{junk}")
    assert junk.read_bytes() == b"\x00garbage" * 300
