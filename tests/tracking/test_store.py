"""Tracking URIs, and failing fast on a store that cannot be reached."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from aam_search.search.orchestrator import Orchestrator
from aam_search.search.study import redact
from aam_search.tracking.errors import TrackingUnavailable
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
        Orchestrator(config).prepare()
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
    orchestrator = Orchestrator(config)
    orchestrator.prepare()
    assert orchestrator.tracker is None and not orchestrator.hooks
    assert not (tmp_path / "work" / "mlflow.db").exists()
