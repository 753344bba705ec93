"""What a worker takes from the study's database: data, never code, never a password.

Anyone who can write the Optuna database (a shared PostgreSQL, optuna-dashboard with write
access) can change the study's stored config (``aam:config``). A worker rebuilds its config
from it, so that config must not be able to make the worker import and call code.
"""

from __future__ import annotations

import optuna
import pytest

from aam_search.cli import main
from aam_search.encoders import EncoderError
from aam_search.features.config import ConfigError
from aam_search.search.config import TRACKING_URI_ENV, parse_study_config, worker_config
from aam_search.search.record import CONFIG_ATTR

PLUGIN = "tests.encoders.plugin_encoder:pooled"


def plant(tmp_path, data: dict, **changes) -> str:
    """A study whose stored config an attacker wrote; returns its storage URL."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="victim", storage=url, directions=["maximize", "minimize"])
    record = {"name": "victim", "workdir": str(tmp_path / "work"), "data": data, "n_trials": 1, "track": False}
    record.update(changes)
    study.set_user_attr(CONFIG_ATTR, record)
    return url


def test_a_planted_plugin_encoder_is_not_run_by_a_worker(small_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    proof = tmp_path / "pwned"
    evil = {"name": "subprocess:run", "options": {"args": ["sh", "-c", f"id > {proof}"]}}
    url = plant(tmp_path, {"manifest": str(small_dataset), "encoder": evil})
    assert main(["worker", "--study", "victim", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert not proof.exists(), "the worker ran a command named by the database"
    assert "'subprocess:run'" in " ".join(err.split()) and "--allow-plugin" in err
    assert not (tmp_path / "work" / "cache").exists()  # refused before any work


def test_a_worker_runs_a_plugin_only_when_it_allows_it_itself(tmp_path):
    stored = {"name": "s", "workdir": str(tmp_path), "data": {"manifest": "m.csv", "encoder": {"name": PLUGIN}}}
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.raises(EncoderError, match="plug-in") as error:
        worker_config(stored, study="s", storage=url)
    assert PLUGIN in str(error.value)
    with pytest.raises(EncoderError, match="plug-in"):  # allowing another plug-in does not allow this one
        worker_config(stored, study="s", storage=url, allow_plugins=["tests.encoders.plugin_encoder:other"])
    config = worker_config(stored, study="s", storage=url, allow_plugins=[PLUGIN])
    assert config.data.encoder.name == PLUGIN and config.storage == url
    # built-ins are resolved by name and need nothing
    builtin = {**stored, "data": {"manifest": "m.csv", "encoder": {"name": "tiny3d"}}}
    assert worker_config(builtin, study="s", storage=url).data.encoder.name == "tiny3d"
    unknown = {**stored, "data": {"manifest": "m.csv", "encoder": {"name": "resnet9000"}}}
    with pytest.raises(EncoderError, match="unknown encoder 'resnet9000'"):
        worker_config(unknown, study="s", storage=url)


def test_the_stored_config_holds_no_password(tmp_path):
    config = parse_study_config({
        "name": "s", "workdir": str(tmp_path), "data": {"cache": str(tmp_path)},
        "storage": "postgresql://aam:hunter2@db/aam?sslpassword=k3y",
        "tracking_uri": "http://u:mlfl0w@mlflow:5000",
    })
    record = config.record()
    assert "hunter2" not in str(record) and "k3y" not in str(record) and "mlfl0w" not in str(record)
    assert record["storage"] == "postgresql://aam:***@db/aam?sslpassword=***"
    assert record["tracking_uri"] == "http://u:***@mlflow:5000"
    query = parse_study_config({"name": "s", "data": {"cache": str(tmp_path)},
                                "storage": "postgresql://aam@db/aam?password=hunter2"}).record()
    assert "hunter2" not in str(query)


def test_a_worker_takes_a_hidden_tracking_password_from_its_own_machine(tmp_path, monkeypatch):
    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    stored = {"name": "s", "workdir": str(tmp_path), "data": {"cache": str(tmp_path)},
              "tracking_uri": "postgresql://u:***@h/mlflow", "storage": "postgresql://u:***@h/optuna"}
    storage = "postgresql://u:hunter2@h/optuna"
    with pytest.raises(ConfigError, match=TRACKING_URI_ENV) as error:
        worker_config(stored, study="s", storage=storage)
    assert "--tracking-uri" in str(error.value) and "hunter2" not in str(error.value)
    full = "postgresql://u:hunter2@h/mlflow"
    assert worker_config(stored, study="s", storage=storage, tracking_uri=full).tracking_uri == full
    monkeypatch.setenv(TRACKING_URI_ENV, full)
    config = worker_config(stored, study="s", storage=storage)
    assert (config.tracking_uri, config.storage) == (full, storage)
    monkeypatch.delenv(TRACKING_URI_ENV)
    # a study that is not tracked needs no tracking URI at all
    assert worker_config({**stored, "track": False}, study="s", storage=storage).track is False
    # an open tracking URI is used as the study stored it
    open_uri = {**stored, "tracking_uri": "http://mlflow:5000"}
    assert worker_config(open_uri, study="s", storage=storage).tracking_uri == "http://mlflow:5000"
