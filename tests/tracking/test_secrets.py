"""No password of a storage URL or tracking URI reaches the study, MLflow or the terminal.

A tracked study runs from the command line with passwords in both URLs (in the query
string, which libpq and SQLAlchemy accept, and which SQLite ignores, so the run is real).
Everything a reader of the study, of MLflow or of the terminal can see is then searched.
"""

from __future__ import annotations

import json

import optuna
import yaml

from aam_search.cli import main
from aam_search.search.config import TRACKING_URI_ENV
from aam_search.tracking.promote import Promotion
from aam_search.tracking.store import make_client
from tests.tracking.conftest import TINY_TRIAL

SECRET = "hunter2"


def everything_mlflow_shows(uri: str) -> str:
    client = make_client(uri)
    texts = []
    for experiment in client.search_experiments():
        texts.append(json.dumps(experiment.tags))
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            texts.append(json.dumps([run.data.params, run.data.tags, run.info.run_name]))
    return "\n".join(texts)


def everything_the_study_shows(storage: str, name: str) -> str:
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    system = study._storage.get_study_system_attrs(study._study_id)
    return json.dumps([study.user_attrs, system, [[t.user_attrs, t.system_attrs] for t in trials]], default=str)


def test_no_password_in_the_study_mlflow_or_the_output(small_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    workdir = tmp_path / "work"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}?password={SECRET}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}?sslpassword={SECRET}"
    study_yaml = tmp_path / "study.yaml"
    study_yaml.write_text(yaml.safe_dump({
        "name": "secret", "workdir": str(workdir), "storage": storage, "tracking_uri": tracking,
        "data": {"cache": str(small_cache.path)}, "trial": TINY_TRIAL, "n_trials": 1, "max_parallel": 1,
    }))
    assert main(["start", "--config", str(study_yaml)]) == 0
    assert main(["status", "secret", "--storage", storage]) == 0
    assert main(["front", "secret", "--storage", storage, "--format", "json", "--all"]) == 0
    output = capsys.readouterr()
    assert SECRET not in output.out + output.err

    study_text = everything_the_study_shows(storage, "secret")
    assert "aam:config" in study_text and SECRET not in study_text
    mlflow_text = everything_mlflow_shows(tracking)
    assert "aam.storage" in mlflow_text and SECRET not in mlflow_text

    # A worker cannot use the redacted tracking URI: it says how to give the real one ...
    assert main(["worker", "--study", "secret", "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert TRACKING_URI_ENV in err and SECRET not in err
    # ... and with it from its own environment it joins (the budget is spent: it only
    # checks in), logging into the same parent run.
    monkeypatch.setenv(TRACKING_URI_ENV, tracking)
    assert main(["worker", "--study", "secret", "--storage", storage, "--workdir", str(tmp_path / "w2")]) == 0
    output = capsys.readouterr()
    assert SECRET not in output.out + output.err
    assert SECRET not in everything_the_study_shows(storage, "secret") + everything_mlflow_shows(tracking)


def test_promote_prints_the_tracking_uri_without_its_password(monkeypatch, capsys):
    uri = f"postgresql://aam:{SECRET}@db/mlflow?sslpassword={SECRET}"

    def fake_promote(study, **kwargs):
        kwargs["say"](f"registered in {uri.replace(SECRET, '***')}")
        return Promotion(study=study, trial=0, rule="trial 0", model_name="aam-x", version="1", alias="champion",
                         run_id="r", tracking_uri=uri, test_metrics={"test_utility": 0.5})

    monkeypatch.setattr("aam_search.tracking.promote.promote", fake_promote)
    assert main(["promote", "x", "--trial", "0"]) == 0
    out = capsys.readouterr().out
    assert "load_adapter('models:/aam-x@champion'" in out and "aam:***@db" in out
    assert SECRET not in out


def test_a_store_error_that_quotes_the_uri_shows_no_password(monkeypatch):
    import pytest

    from aam_search.tracking import store
    from aam_search.tracking.errors import TrackingUnavailable

    uri = f"http://u:{SECRET}@127.0.0.1:9"

    def failing(given):
        raise RuntimeError(f"API request to {given}/api/2.0/mlflow/experiments/search failed")

    monkeypatch.setattr(store, "make_client", failing)
    with pytest.raises(TrackingUnavailable) as error:
        store.connect(uri)
    assert SECRET not in str(error.value) and "u:***@127.0.0.1:9" in str(error.value)


def test_promote_takes_a_hidden_tracking_password_from_its_own_machine(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import pytest

    from aam_search.features.config import ConfigError
    from aam_search.tracking.promote import study_tracking_uri

    monkeypatch.delenv(TRACKING_URI_ENV, raising=False)
    full = f"postgresql://u:{SECRET}@db/mlflow"
    study = SimpleNamespace(study_name="s", user_attrs={
        "aam:config": {"workdir": str(tmp_path), "tracking_uri": "postgresql://u:***@db/mlflow"},
        "aam:mlflow_tracking_uri": "postgresql://u:***@db/mlflow"})
    with pytest.raises(ConfigError, match=TRACKING_URI_ENV) as error:
        study_tracking_uri(study, None)
    assert SECRET not in str(error.value)
    assert study_tracking_uri(study, full) == full
    monkeypatch.setenv(TRACKING_URI_ENV, full)
    assert study_tracking_uri(study, None) == full
    monkeypatch.delenv(TRACKING_URI_ENV)
    open_study = SimpleNamespace(study_name="s", user_attrs={"aam:config": {"workdir": str(tmp_path)},
                                                             "aam:mlflow_tracking_uri": "http://mlflow:5000"})
    assert study_tracking_uri(open_study, None) == "http://mlflow:5000"
    default = SimpleNamespace(study_name="s", user_attrs={"aam:config": {"workdir": str(tmp_path)}})
    assert study_tracking_uri(default, None) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
