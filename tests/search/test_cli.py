"""``aam-search init | front | status`` and what they say about missing studies."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from aam_search.cli import main
from aam_search.search.config import load_study_config
from aam_search.search.pareto import pareto_front
from aam_search.search.study import redact
from aam_search.trainer.config import parse_trial_config


def test_init_writes_a_starter_that_loads(tmp_path, small_cache, capsys):
    path = tmp_path / "conf" / "study.yaml"
    path.parent.mkdir()
    assert main(["init", "--out", str(path), "--name", "hmdb-aam"]) == 0
    assert str(path) in capsys.readouterr().out
    # As written: the manifest is resolved against the file's folder.
    starter = load_study_config(path)
    assert starter.name == "hmdb-aam"
    assert starter.data.manifest == tmp_path / "conf" / "data" / "manifest.csv"
    assert (starter.n_trials, starter.sampler, starter.objectives) == (24, "tpe", ["utility", "leakage"])
    assert starter.enqueue_paper_default and starter.space == "privacy"
    # Pointed at a ready cache instead, it is a study config the orchestrator can run.
    data = yaml.safe_load(path.read_text())
    del data["data"]["manifest"]
    data["data"]["cache"] = str(small_cache.path)
    path.write_text(yaml.safe_dump(data))
    config = load_study_config(path)
    assert config.data.cache == small_cache.path and config.data.manifest is None
    trial = parse_trial_config({**config.trial, "cache": str(config.data.cache)})
    assert trial.optim.epochs == 20 and trial.optim.batch_size == 64


def test_init_shows_how_to_mark_a_task_unseen(tmp_path, small_cache):
    # The commented example, uncommented, is a trial config that probes the task without co-training it.
    path = tmp_path / "study.yaml"
    assert main(["init", "--out", str(path)]) == 0
    example = next(line for line in path.read_text().splitlines() if "unseen_tasks" in line)
    data = yaml.safe_load(path.read_text())
    data["trial"]["eval"] = yaml.safe_load(example.split("#")[1].strip().removeprefix("eval:"))
    trial = parse_trial_config({**data["trial"], "cache": str(small_cache.path)})
    assert trial.eval.unseen_tasks == ("task:speed",)


def test_init_does_not_overwrite_without_force(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("mine")
    with pytest.raises(SystemExit, match="--force"):
        main(["init", "--out", str(path)])
    assert path.read_text() == "mine"
    assert main(["init", "--out", str(path), "--force"]) == 0
    assert path.read_text().startswith("# aam-search study")


@pytest.fixture(scope="module")
def finished(resumed_study):
    config, runs = resumed_study
    return config, runs[-1].trials


def test_front_json_lists_the_pareto_front(finished, capsys):
    config, trials = finished
    assert main(["front", config.name, "--storage", config.storage_url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    front = pareto_front(trials, ["utility", "leakage"])
    assert [row["trial"] for row in rows] == [t.number for t in front]
    for row, trial in zip(rows, front):
        assert row["state"] == "COMPLETE" and row["pareto"] is True
        assert [row["utility"], row["leakage"]] == pytest.approx(trial.values)
        assert row["param:loss.w_lc"] == pytest.approx(trial.params["loss.w_lc"])
        # Above-chance removal beside the relative reduction; no interval on a handful of videos, and why.
        removed = trial.user_attrs["leakage_reduction_above_chance"]
        assert row["leakage_reduction_above_chance"] == pytest.approx(removed)
        assert row["utility_ci_low"] is None and "< 10" in row["ci_note"]


def test_front_csv_with_all_lists_every_trial(finished, capsys):
    config, trials = finished
    assert main(["front", config.name, "--storage", config.storage_url, "--format", "csv", "--all"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["trial"]) for r in rows] == [t.number for t in trials]
    header = list(rows[0])
    assert {"trial", "state", "pareto", "utility", "leakage", "reason", "param:loss.w_lc"} <= set(header)
    # Parameters come last, after the metrics.
    assert all(h.startswith("param:") for h in header[header.index("param:loss.temperature"):])
    front = {t.number for t in pareto_front(trials, ["utility", "leakage"])}
    assert {int(r["trial"]) for r in rows if r["pareto"] == "True"} == front
    for row, trial in zip(rows, trials):
        assert float(row["utility"]) == pytest.approx(trial.values[0])


def test_status_counts_trials(finished, capsys):
    config, _ = finished
    assert main(["status", config.name, "--storage", config.storage_url]) == 0
    out = capsys.readouterr().out
    assert "COMPLETE" in out and "│ 3" in out.replace("┃", "│")
    assert "budget 3 trials" in out and "after 3 completed" in out
    assert "failed" not in out


def test_front_table_prints(finished, capsys):
    config, trials = finished
    assert main(["front", config.name, "--storage", config.storage_url]) == 0
    out = capsys.readouterr().out
    assert f"Pareto front of {config.name}" in out


def test_an_unknown_study_exits_2_naming_the_storage(finished, capsys, tmp_path, monkeypatch):
    config, _ = finished
    assert main(["status", "nope", "--storage", config.storage_url]) == 2
    err = capsys.readouterr().err
    assert "no study named 'nope'" in err and config.storage_url in err
    missing = tmp_path / "none" / "optuna.db"
    assert main(["front", "nope", "--storage", f"sqlite:///{missing}", "--format", "json"]) == 2
    err = capsys.readouterr().err
    assert f"no study database at {missing}" in err
    assert not missing.exists()  # looking must not create an empty database
    # Without --storage: the default SQLite file of work/<name> under the current folder.
    monkeypatch.chdir(tmp_path)
    assert main(["status", "elsewhere"]) == 2
    assert str(tmp_path / "work" / "elsewhere" / "optuna.db") in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        ("postgresql+psycopg2://aam:s3cr%40t@db.example:5432/aam", "postgresql+psycopg2://aam:***@db.example:5432/aam"),
        ("sqlite:////tmp/work/optuna.db", "sqlite:////tmp/work/optuna.db"),
        ("mysql://root@h/db", "mysql://root@h/db"),
    ],
)
def test_redact_hides_passwords(url, shown):
    assert redact(url) == shown
    assert "secret" not in redact(url) and "s3cr" not in redact(url)


def test_redact_hides_everything_of_a_url_it_cannot_parse():
    assert "secret" not in redact("not a url://user:secret@host")


@pytest.mark.parametrize("name", ["bad name: {x}", "_leading", "a/b", "", "x\ny", "trailing\n"])
def test_init_refuses_a_name_the_study_config_would_refuse(tmp_path, name):
    path = tmp_path / "study.yaml"
    with pytest.raises(SystemExit) as caught:
        main(["init", "--out", str(path), "--name", name])
    assert "a study name starts with a letter or digit and holds only letters, digits" in str(caught.value)
    assert not path.exists()


@pytest.mark.parametrize("manifest", ["data/my manifest.csv", "data: #1/m.csv", "{x}.csv", "'q'.csv", "yes"])
def test_init_writes_valid_yaml_for_any_manifest_path(tmp_path, manifest):
    path = tmp_path / "study.yaml"
    assert main(["init", "--out", str(path), "--name", "ok.name_1", "--manifest", manifest]) == 0
    config = load_study_config(path)
    assert config.name == "ok.name_1" and config.data.manifest == tmp_path / manifest
