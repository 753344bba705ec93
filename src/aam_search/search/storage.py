"""The databases under a study: created once under a lock, looked at before anything is
created, opened without creating by everyone else.

Optuna (``RDBStorage``) and MLflow (``SqlAlchemyStore``) both create their schema the first
time they open a database, in check-then-create steps that break when two processes open a
fresh one at once (``table trial_values already exists``, ``duplicate column name: step``).
So the processes that may create one (``start``, ``promote``) hold :func:`creation_lock`
while they open it: an exclusive lock on a file beside a SQLite database (``<file>.lock``,
kept), a session advisory lock in PostgreSQL. Readers (``status``, ``front``, ``worker``)
take the SQLite lock shared, so they wait for a creation in progress, and open the database
with table creation off. Other servers rely on a retry that tolerates "already exists".

Before anything is created, the tables already there are looked at (:func:`inspect_database`,
read-only), so an MLflow store given as a study's storage, an Optuna database given as the
tracking store, or a file of something else is refused and left exactly as it was.

Neither Optuna nor MLflow is imported here; SQLAlchemy only when a server is involved.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aam_search.errors import AamSearchError
from aam_search.redact import scrub

T = TypeVar("T")
LOCK_TIMEOUT_S = 120.0
# Errors of a schema creation that raced with another one (Optuna, MLflow, foreign openers).
CREATION_RACE = ("already exists", "duplicate column", "duplicate key value", "unique constraint failed")


class StorageError(AamSearchError, RuntimeError):
    """A study's database cannot be used as given; the message is one line naming the file
    (or the URL, password hidden) and nothing in the database was changed."""


@dataclass(frozen=True)
class Kind:
    what: str  # "an Optuna study database"
    role: str  # "study storage", for "cannot open the <role> ..."
    markers: frozenset[str]  # tables only this tool creates
    ready: tuple[str, ...]  # tables that hold a row once its creation has finished

    @property
    def lock_key(self) -> int:  # PostgreSQL advisory lock id, one per tool
        return zlib.crc32(f"aam-search:{self.role}".encode())


OPTUNA = Kind("an Optuna study database", "study storage",
              frozenset({"studies", "trials", "trial_values", "version_info"}), ("version_info", "alembic_version"))
MLFLOW = Kind("an MLflow tracking store", "MLflow tracking store",
              frozenset({"experiments", "runs", "metrics", "registered_models"}), ("alembic_version",))
KINDS = (OPTUNA, MLFLOW)


@dataclass(frozen=True)
class Database:
    """A database as one tool sees it: its URL, whose it should be, and how to name it."""

    url: str
    kind: Kind
    shown: str  # the URL with its password hidden (the caller's redact(url))

    @property
    def file(self) -> Path | None:
        """The file of a ``sqlite://`` URL (None for servers and in-memory databases)."""
        if not self.url.startswith("sqlite"):
            return None
        from sqlalchemy.engine import make_url

        try:
            database = make_url(self.url).database
        except Exception:
            raise StorageError(f"{self.shown} is not a database URL (e.g. sqlite:////abs/path/optuna.db)") from None
        return Path(database) if database and database != ":memory:" and not database.startswith("file:") else None

    @property
    def name(self) -> str:
        """How messages name it: its file, or its URL with the password hidden."""
        path = self.file
        return str(path) if path is not None else self.shown

    def failure(self, error: BaseException) -> StorageError:
        """One line for an error of a driver, SQLAlchemy, Optuna or MLflow (no password in it)."""
        text = str(error).strip()
        reason = scrub(text.splitlines()[0] if text else type(error).__name__, self.url)
        return StorageError(f"cannot open the {self.kind.role} {self.name}: {reason[:400]}")


@dataclass(frozen=True)
class Inventory:
    tables: frozenset[str]
    filled: frozenset[str]  # those of Kind.ready that hold a row


def connect_args(url: str) -> dict[str, Any]:
    """Driver arguments for a storage URL: a busy timeout for SQLite, a connect timeout for
    PostgreSQL (unless the URL sets one), so a wrong host fails in seconds."""
    if url.startswith("sqlite"):
        return {"timeout": 60}
    if url.startswith("postgresql") and "connect_timeout" not in url:
        return {"connect_timeout": 10}
    return {}


def _server_engine(url: str) -> Any:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=connect_args(url))


def inspect_database(db: Database) -> Inventory:
    """The tables present, read-only (an absent or empty file has none)."""
    path = db.file
    if path is not None:
        return _inspect_sqlite(path, db.kind)
    if db.url.startswith("sqlite"):  # in memory
        return Inventory(frozenset(), frozenset())
    try:
        import sqlalchemy

        engine = _server_engine(db.url)
        try:
            with engine.connect() as connection:
                tables = frozenset(sqlalchemy.inspect(connection).get_table_names())
                filled = frozenset(name for name in db.kind.ready if name in tables and connection.execute(
                    sqlalchemy.text(f"SELECT 1 FROM {name} LIMIT 1")).first() is not None)
        finally:
            engine.dispose()
    except Exception as error:  # bad URL, missing driver, server down, wrong password, ...
        raise db.failure(error) from None
    return Inventory(tables, filled)


def _inspect_sqlite(path: Path, kind: Kind) -> Inventory:
    if not path.exists():
        return Inventory(frozenset(), frozenset())
    if not path.is_file():
        raise StorageError(f"{path} is not a database file")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        try:
            tables = frozenset(row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'"))
            filled = frozenset(name for name in kind.ready if name in tables
                               and connection.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone() is not None)
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise StorageError(f"{path} is not an SQLite database ({error}), so not {kind.what}") from None
    return Inventory(tables, filled)


def refuse_foreign(db: Database, found: Inventory) -> None:
    """Refuse a database that belongs to another tool, before anything is created in it."""
    kind = db.kind
    for other in KINDS:
        if other is not kind and found.tables & other.markers and not found.tables & kind.markers:
            raise StorageError(
                f"{db.name} is {other.what}, not {kind.what} (it has the tables "
                f"{', '.join(sorted(found.tables & other.markers))}); are storage and tracking_uri swapped? "
                "Nothing was changed"
            )
    if found.tables and not found.tables & kind.markers:
        # A file of something else; in a server database, another alembic-managed application
        # (Optuna and MLflow would both take over its alembic_version table).
        if db.file is not None or "alembic_version" in found.tables:
            shown = ", ".join(sorted(found.tables)[:6]) + (", ..." if len(found.tables) > 6 else "")
            raise StorageError(f"{db.name} is not {kind.what} (it holds the tables {shown}); nothing was changed")


def is_ready(db: Database, found: Inventory) -> bool:
    """Created completely, so that opening it creates and writes nothing."""
    return db.kind.markers <= found.tables and set(db.kind.ready) <= found.filled


@contextlib.contextmanager
def creation_lock(db: Database, *, exclusive: bool) -> Iterator[None]:
    """Hold the database's creation lock: exclusive to create, shared to read (SQLite)."""
    path = db.file
    if path is not None:
        with _file_lock(Path(f"{path}.lock"), exclusive=exclusive, shown=str(path)):
            yield
    elif exclusive and db.url.startswith("postgresql"):
        with _advisory_lock(db):
            yield
    else:
        yield


@contextlib.contextmanager
def _file_lock(lock: Path, *, exclusive: bool, shown: str) -> Iterator[None]:
    try:
        if exclusive:
            lock.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        elif lock.exists():  # a reader may not be allowed to write here; read-only is enough to flock
            descriptor = os.open(lock, os.O_RDONLY)
        else:  # never created under a lock: nothing to wait for
            descriptor = None
    except OSError as error:
        raise StorageError(f"cannot create {shown}: {error.strerror or error} ({lock})") from None
    if descriptor is None:
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(descriptor, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageError(f"{shown} stayed locked by another process creating it for "
                                       f"{LOCK_TIMEOUT_S:.0f}s (lock file {lock})") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(descriptor)  # and the lock with it


@contextlib.contextmanager
def _advisory_lock(db: Database) -> Iterator[None]:
    import sqlalchemy

    try:
        engine = _server_engine(db.url)
        connection = engine.connect()
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": db.kind.lock_key})
        connection.commit()
    except Exception as error:
        raise db.failure(error) from None
    try:
        yield
    finally:
        connection.close()  # the session ends, and its advisory lock with it
        engine.dispose()


def retry_creation_race(create: Callable[[], T], attempts: int = 3) -> T:
    """Run ``create``, and again after a pause when it lost a schema-creation race to a
    process that did not take our lock (optuna-dashboard, MySQL, ...)."""
    for attempt in range(attempts):
        try:
            return create()
        except Exception as error:
            if attempt == attempts - 1 or not any(text in str(error).lower() for text in CREATION_RACE):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")
