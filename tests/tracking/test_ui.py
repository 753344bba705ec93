"""``aam-search ui``: the MLflow UI over a work folder's store, bound to this machine."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest

from aam_search.tracking.store import connect, default_tracking_uri
from aam_search.tracking.ui import UIError, ui_command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_needs_a_store(tmp_path):
    with pytest.raises(UIError, match="no MLflow store"):
        ui_command(workdir=tmp_path)
    with pytest.raises(UIError, match="tracking server already"):
        ui_command(tracking_uri="http://somewhere:5000")
    with pytest.raises(UIError, match="exactly one"):
        ui_command()


def test_ui_serves_the_workdir_store_on_localhost(tmp_path):
    connect(default_tracking_uri(tmp_path))  # a study would have created it
    port = free_port()
    command, env, url = ui_command(workdir=tmp_path, port=port)
    assert url == f"http://127.0.0.1:{port}"
    assert command[command.index("--host") + 1] == "127.0.0.1"
    # The store reaches mlflow ui through its environment (this server proves it reads it).
    assert "--backend-store-uri" not in command
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None, "mlflow ui exited"
                assert time.monotonic() < deadline, "mlflow ui did not answer within 90 s"
                time.sleep(0.5)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_ui_keeps_the_store_password_off_the_command_line(tmp_path):
    """``ps`` shows every process's argv to every user: the password goes in the environment."""
    uri = "postgresql://aam:hunter2@db.example:5432/mlflow?sslpassword=k3y"
    command, env, _ = ui_command(tracking_uri=uri)
    assert "hunter2" not in " ".join(command) and "k3y" not in " ".join(command)
    assert env["MLFLOW_BACKEND_STORE_URI"] == uri
    missing = f"sqlite:///{tmp_path / 'none.db'}?password=hunter2"
    with pytest.raises(UIError, match="no MLflow store") as error:
        ui_command(tracking_uri=missing)
    assert "hunter2" not in str(error.value)
