"""The one redactor of storage URLs and tracking URIs (``aam_search.redact``)."""

from __future__ import annotations

import pytest

from aam_search.redact import MASK, has_hidden_secret, redact, scrub, secrets
from aam_search.search import study as study_module
from aam_search.tracking import runs, store, ui


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        # user:password@
        ("postgresql://u:hunter2@h/db", "postgresql://u:***@h/db", "hunter2"),
        ("postgresql+psycopg2://aam:hunter2@db.example:5432/aam", "postgresql+psycopg2://aam:***@db.example:5432/aam",
         "hunter2"),
        # passwords holding '@' and ':' (the user part ends at the last '@' of the authority)
        ("mysql://u:p@ss@h", "mysql://u:***@h", "p@ss"),
        ("mysql://u:p@ss@h/db?charset=utf8", "mysql://u:***@h/db?charset=utf8", "p@ss"),
        ("postgresql://u:hun:ter@h:5432/db", "postgresql://u:***@h:5432/db", "hun:ter"),
        ("postgresql://u:a:b@c@h/db", "postgresql://u:***@h/db", "a:b@c"),
        # '/' and '?' in a password (SQLAlchemy takes them unescaped)
        ("postgresql://u:hun/ter2@h/db", "postgresql://u:***@h/db", "hun/ter2"),
        ("postgresql://u:hun?ter2@h/db", "postgresql://u:***@h/db", "hun?ter2"),
        # percent-encoded
        ("postgresql://u:hun%40ter2@h/db", "postgresql://u:***@h/db", "hun@ter2"),
        ("postgresql://u:hun%40ter2@h/db", "postgresql://u:***@h/db", "hun%40ter2"),
        # in the query string (libpq and SQLAlchemy both take it there)
        ("postgresql://u@h/db?password=hunter2", "postgresql://u@h/db?password=***", "hunter2"),
        ("postgresql://h/db?sslmode=require&password=hunter2&application_name=x",
         "postgresql://h/db?sslmode=require&password=***&application_name=x", "hunter2"),
        ("postgresql://u@h/db?sslpassword=hunter2", "postgresql://u@h/db?sslpassword=***", "hunter2"),
        ("postgresql://u@h/db?PassWord=hun%26ter2", "postgresql://u@h/db?PassWord=***", "hun&ter2"),
        ("sqlite:////tmp/optuna.db?password=hunter2", "sqlite:////tmp/optuna.db?password=***", "hunter2"),
        ("postgresql://u:one@h/db?password=hunter2", "postgresql://u:***@h/db?password=***", "hunter2"),
        # MLflow server URIs (not SQLAlchemy): basic auth, and a token as the user part
        ("http://u:hunter2@mlflow:5000", "http://u:***@mlflow:5000", "hunter2"),
        ("https://me:hunter2@host:5000/x", "https://me:***@host:5000/x", "hunter2"),
        ("https://hunter2@mlflow.example", "https://***@mlflow.example", "hunter2"),
        ("https://mlflow.example/?token=hunter2", "https://mlflow.example/?token=***", "hunter2"),
        ("not a url://user:hunter2@host", "not a url://user:***@host", "hunter2"),
    ],
)
def test_redact_hides_every_form_of_password(url, shown, secret):
    assert redact(url) == shown
    assert secret not in redact(url)
    assert redact(redact(url)) == redact(url)  # redacting twice changes nothing
    assert has_hidden_secret(redact(url)) and not has_hidden_secret(url)
    assert secret in secrets(url)
    assert secret not in scrub(f"could not connect to {url} (password {secret!r} refused)", url)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////tmp/work/optuna.db",
        "sqlite:////home/me@corp/work/optuna.db",  # '@' in a path is not a user part
        "mysql://root@h/db",  # a user without a password (~/.pgpass, PGPASSWORD)
        "postgresql://u@h/db?sslmode=require&application_name=a@b",
        "http://127.0.0.1:5000",
        "file:///tmp/mlruns",
        "/plain/path/mlflow.db",
    ],
)
def test_redact_leaves_urls_without_secrets_alone(url):
    assert redact(url) == url and not secrets(url) and not has_hidden_secret(url)


def test_one_redactor_for_search_and_tracking():
    """search/ and tracking/ use the same function; neither imports the other for it."""
    assert study_module.redact is redact and runs.redact is redact and store.redact is redact and ui.redact is redact
    assert MASK == "***"
