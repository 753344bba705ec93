"""The study's database: created once under a lock, never by a reader; one-line errors for
a wrong URL or a file that is not an Optuna database; objective names for Optuna's tools."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

import optuna
import pytest

from aam_search.search.config import parse_study_config
from aam_search.search.storage import OPTUNA, Database, StorageError, creation_lock
from aam_search.search.study import StudyNotFound, close_study, load_existing_study, open_study


def config_for(storage: str, tmp_path: Path, **changes):
    data = {"name": "s", "workdir": str(tmp_path / "work"), "storage": storage,
            "data": {"cache": str(tmp_path / "cache")}, "track": False, **changes}
    return parse_study_config(data)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_many_openers_of_a_fresh_storage_create_it_once(tmp_path):
    """``start`` creating the study while ``status``/``front``/a poller read it: before, each
    opener ran Optuna's check-then-create and some died with 'table ... already exists'."""
    problems: list[str] = []
    for round_ in range(3):
        (tmp_path / f"round{round_}").mkdir()
        url = sqlite_url(tmp_path / f"round{round_}" / "optuna.db")
        config = config_for(url, tmp_path)
        barrier = threading.Barrier(8)
        found: list[optuna.Study] = []

        def create() -> None:
            barrier.wait()
            try:
                found.append(open_study(config))
            except Exception as error:
                problems.append(f"creator: {type(error).__name__}: {error}")

        def read() -> None:
            barrier.wait()
            for _ in range(3000):
                try:
                    study = load_existing_study("s", url)
                except StudyNotFound:  # not created yet: fine, ask again
                    time.sleep(0.01)
                    continue
                except Exception as error:
                    problems.append(f"reader: {type(error).__name__}: {error}")
                    return
                found.append(study)
                return
            problems.append("reader: the study never appeared")

        threads = [threading.Thread(target=create if i % 2 else read) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not problems, problems
        assert len(found) == 8 and {s._study_id for s in found} == {found[0]._study_id}
        for study in found:
            close_study(study)


def test_a_reader_waits_for_a_creation_in_progress(tmp_path):
    """A reader that comes while ``start`` is creating the database waits for it, rather than
    creating the schema itself (before: it did, racing the creator)."""
    path = tmp_path / "optuna.db"
    url = sqlite_url(path)
    result: list[object] = []
    db = Database(url, OPTUNA, url)
    with creation_lock(db, exclusive=True):  # we are `start`, half way through creating it
        path.touch()
        reader = threading.Thread(target=lambda: result.append(_load_or_error("s", url)))
        reader.start()
        reader.join(1.0)
        assert reader.is_alive(), f"the reader did not wait: {result}"
        assert path.stat().st_size == 0  # and wrote nothing
        storage = optuna.storages.RDBStorage(url)
        optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"])
        storage.engine.dispose()
    reader.join(60)
    assert isinstance(result[0], optuna.Study), result
    close_study(result[0])


def _load_or_error(name: str, url: str):
    try:
        return load_existing_study(name, url)
    except Exception as error:
        return error


def test_readers_and_workers_never_create_the_schema(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StudyNotFound, match=f"no study named 's' in {empty} \\(it holds none yet"):
        load_existing_study("s", sqlite_url(empty))
    with pytest.raises(StudyNotFound, match="it holds none yet"):
        open_study(config_for(sqlite_url(empty), tmp_path), create=False)  # a worker
    assert empty.stat().st_size == 0
    # Half created (a creation that was killed): still nothing written by a reader.
    half = tmp_path / "half.db"
    with sqlite3.connect(half) as connection:
        connection.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name TEXT)")
        connection.execute("CREATE TABLE version_info (version_info_id INTEGER PRIMARY KEY)")
    before = half.read_bytes()
    with pytest.raises(StudyNotFound, match="it holds none yet"):
        load_existing_study("s", sqlite_url(half))
    assert half.read_bytes() == before and tables(half) == {"studies", "version_info"}
    missing = tmp_path / "missing.db"
    with pytest.raises(StudyNotFound, match=f"no study database at {missing}"):
        load_existing_study("s", sqlite_url(missing))
    assert not missing.exists()


def test_the_study_names_its_objectives(tmp_path):
    config = config_for(sqlite_url(tmp_path / "optuna.db"), tmp_path)
    study = open_study(config)
    assert study.metric_names == ["utility", "leakage"]
    trial = study.ask()
    study.tell(trial, [0.5, 0.25])
    frame = study.trials_dataframe()
    assert {"values_utility", "values_leakage"} <= set(frame.columns)
    again = load_existing_study("s", config.storage_url)
    assert again.metric_names == ["utility", "leakage"]
    # Other objectives with the same directions are another study, not this one.
    with pytest.raises(StorageError, match=r"with other objectives \(utility, leakage\)"):
        open_study(config_for(config.storage_url, tmp_path, objectives=["utility", "leakage:clip"]))
    assert load_existing_study("s", config.storage_url).metric_names == ["utility", "leakage"]


@pytest.mark.parametrize("url, shown", [
    (f"postgresql+psycopg2://me:s3cret@127.0.0.1:{closed_port()}/aam", "postgresql+psycopg2://me:***@127.0.0.1:"),
    ("nosuchdb://me:s3cret@host/aam", "nosuchdb://me:***@host/aam"),
    (f"postgresql+psycopg2://me@127.0.0.1:{closed_port()}/aam?password=s3cret", "aam?password=***"),
    ("not a url at all", "not a url at all"),
])
def test_a_wrong_or_unreachable_storage_url_is_one_line(url, shown, tmp_path, capsys):
    from aam_search.cli import main

    for open_it in (lambda: open_study(config_for(url, tmp_path)), lambda: load_existing_study("s", url)):
        with pytest.raises(StorageError) as error:
            open_it()
        message = str(error.value)
        assert message.startswith("cannot open the study storage ") and shown in message
        assert "\n" not in message and "s3cret" not in message
    assert main(["status", "s", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and shown in err and "s3cret" not in err


def test_a_file_that_is_not_an_optuna_database_is_refused_unchanged(tmp_path, capsys):
    from aam_search.cli import main

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, " * 200)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    folder = tmp_path / "folder.db"
    folder.mkdir()
    under_a_file = tmp_path / "junk.db" / "optuna.db"
    not_sqlite, not_optuna = "is not an SQLite database", "is not an Optuna study database (it holds the tables photos)"
    cases = [(junk, not_sqlite, not_sqlite), (other, not_optuna, not_optuna),
             (folder, "is not a database file", "is not a database file"),
             (under_a_file, "cannot create", "no study database at")]
    for path, as_start, as_reader in cases:
        before = junk.read_bytes(), other.read_bytes()
        for open_it, expected in ((lambda: open_study(config_for(sqlite_url(path), tmp_path)), as_start),
                                  (lambda: load_existing_study("s", sqlite_url(path)), as_reader)):
            with pytest.raises((StorageError, StudyNotFound)) as error:
                open_it()
            message = str(error.value)
            assert expected in message and str(path) in message and "\n" not in message
        assert (junk.read_bytes(), other.read_bytes()) == before
        assert main(["front", "s", "--storage", sqlite_url(path)]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert tables(other) == {"photos"}


def test_concurrent_openers_of_a_fresh_postgresql_storage(postgres_url, tmp_path):
    """The same race on a server (there under an advisory lock); then the study's database
    given as an MLflow store is refused, its tables as they were."""
    import sqlalchemy

    from aam_search.tracking.store import connect

    config = config_for(postgres_url, tmp_path)
    barrier = threading.Barrier(6)
    problems: list[str] = []
    found: list[optuna.Study] = []

    def create() -> None:
        barrier.wait()
        try:
            found.append(open_study(config))
        except Exception as error:
            problems.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not problems, problems
    assert {s._study_id for s in found} == {found[0]._study_id} and len(found) == 6
    for study in found:
        close_study(study)
    engine = sqlalchemy.create_engine(postgres_url)
    before = set(sqlalchemy.inspect(engine).get_table_names())
    with pytest.raises(StorageError, match="is an Optuna study database, not an MLflow tracking store"):
        connect(postgres_url)
    assert set(sqlalchemy.inspect(engine).get_table_names()) == before
    engine.dispose()
