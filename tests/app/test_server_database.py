"""The server's database: SQLite under HELIXFLOW_HOME or PostgreSQL, the password never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from helixflow.app.server import server_env
from helixflow.app.server_database import DATABASE_ENV, PASSWORD_ENV, database_from
from helixflow.errors import HelixflowError


def test_database_default_is_sqlite_under_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATABASE_ENV, raising=False)
    db = database_from(None, Path("/data/helix home"))
    assert db.kind == "sqlite"
    assert db.masked == db.url.get_secret_value() == (
        "sqlite+aiosqlite:////data/helix home/prefect/prefect.db")


def test_database_url_is_normalised_and_its_password_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DATABASE_ENV, "postgres://hf:pa%40ss%2Fw0rd@db.example:6543/prefect")
    db = database_from()
    assert db.kind == "postgresql"
    assert db.masked == "postgresql+asyncpg://hf:***@db.example:6543/prefect"
    assert db.url.get_secret_value() == (
        "postgresql+asyncpg://hf:pa%40ss%2Fw0rd@db.example:6543/prefect")
    assert "w0rd" not in repr(db)
    # Scrubbed in any form a log may quote it.
    text = "auth failed for pa@ss/w0rd (pa%40ss%2Fw0rd)"
    assert db.scrub(text) == "auth failed for *** (***)"
    env = server_env(Path("/h"), port=1, database=db)
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == db.url.get_secret_value()
    assert DATABASE_ENV not in env


def test_database_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cr:et@")
    db = database_from("postgresql+asyncpg://hf@127.0.0.1/prefect")
    assert db.masked == "postgresql+asyncpg://hf:***@127.0.0.1/prefect"
    assert db.url.get_secret_value() == "postgresql+asyncpg://hf:s3cr%3Aet%40@127.0.0.1/prefect"
    # A password in the URL wins; a SecretStr URL is accepted as it is.
    explicit = database_from(SecretStr("postgresql://hf:other@127.0.0.1/prefect"))
    assert explicit.url.get_secret_value().endswith("hf:other@127.0.0.1/prefect")


@pytest.mark.parametrize(("url", "message"), [
    ("mysql+aiomysql://hf:topsecret@host/db", "unsupported database"),
    ("postgresql://hf:topsecret@host:notaport/db", "cannot parse"),
    ("postgresql://hf:top@secret@host:x/db", "cannot parse"),
])
def test_bad_database_url_is_one_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(HelixflowError, match=message) as err:
        database_from(url)
    assert "secret" not in str(err.value) and "***" in str(err.value)
    assert err.value.hint is not None
