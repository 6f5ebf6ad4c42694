"""The local Prefect server's database: SQLite under `HELIXFLOW_HOME` (the embedded
default) or PostgreSQL, its URL kept secret and shown only masked. Part of
`helixflow.app.server`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from helixflow.app.server_state import resolve_home
from helixflow.errors import HelixflowError

PREFECT_HOME_DIR = "prefect"
DATABASE_FILE = "prefect.db"
#: The server's database when none is given (else SQLite under HELIXFLOW_HOME).
DATABASE_ENV = "HELIXFLOW_DATABASE_URL"
#: The database password when the URL has none (never put on a command line).
PASSWORD_ENV = "HELIXFLOW_DATABASE_PASSWORD"
_DRIVERS = {"postgresql+asyncpg": "postgresql", "sqlite+aiosqlite": "sqlite"}
_POSTGRES_ALIASES = ("postgresql", "postgres", "postgresql+asyncpg")


@dataclass(frozen=True)
class Database:
    """The server's database: the full URL kept secret, and what may be shown of it.

    Example:
        >>> db = database_from("postgresql://hf:s3cret@127.0.0.1/prefect")
        >>> db.kind, db.masked
        ('postgresql', 'postgresql+asyncpg://hf:***@127.0.0.1/prefect')
        >>> "s3cret" in repr(db)
        False
    """

    url: SecretStr
    masked: str
    kind: Literal["sqlite", "postgresql"]

    def scrub(self, text: str) -> str:
        """`text` with the password (plain or URL-quoted) replaced by `***`."""
        from urllib.parse import quote, quote_plus

        from sqlalchemy.engine import make_url

        password = make_url(self.url.get_secret_value()).password
        if not password:
            return text
        for form in {password, quote(password, safe=""), quote_plus(password)}:
            text = text.replace(form, "***")
        return text


def database_from(database: str | SecretStr | None = None, home: Path | None = None) -> Database:
    """The database a server should use: `database`, else `HELIXFLOW_DATABASE_URL`, else
    SQLite under `home` (`HELIXFLOW_HOME`).

    PostgreSQL URLs may be written `postgresql://` or `postgres://`; Prefect needs the
    asyncpg driver, so they become `postgresql+asyncpg://`. A URL without a password
    takes `HELIXFLOW_DATABASE_PASSWORD` when set (else asyncpg's own `PGPASSWORD` or
    `~/.pgpass`).

    Raises:
        HelixflowError: the URL cannot be parsed or names another database; the message
            shows the URL with its password masked.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if database is None:
        database = os.environ.get(DATABASE_ENV) or None
    if database is None:
        text = sqlite_url(resolve_home(home) / PREFECT_HOME_DIR / DATABASE_FILE)
    else:
        text = database.get_secret_value() if isinstance(database, SecretStr) else database
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise HelixflowError(
            f"cannot parse the database URL {_mask_unparsed(text)!r}",
            hint="write it as postgresql+asyncpg://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
        ) from None
    if url.drivername in _POSTGRES_ALIASES:
        url = url.set(drivername="postgresql+asyncpg")
        if not url.password and os.environ.get(PASSWORD_ENV):
            url = url.set(password=os.environ[PASSWORD_ENV])
    if url.drivername not in _DRIVERS:
        raise HelixflowError(
            f"unsupported database {url.render_as_string(hide_password=True)!r}: the Prefect "
            "server keeps its state in PostgreSQL or SQLite",
            hint="use postgresql+asyncpg://USER@HOST[:PORT]/DATABASE, or nothing for SQLite",
        )
    return Database(
        url=SecretStr(url.render_as_string(hide_password=False)),
        masked=url.render_as_string(hide_password=True),
        kind="postgresql" if _DRIVERS[url.drivername] == "postgresql" else "sqlite",
    )


def sqlite_url(path: Path) -> str:
    """An SQLAlchemy URL for `path`; SQLAlchemy unquotes it, so `%` and `?` are quoted.

    Example:
        >>> sqlite_url(Path("/data/helix home/50%?/prefect.db"))
        'sqlite+aiosqlite:////data/helix home/50%25%3F/prefect.db'
    """
    quoted = str(path).replace("%", "%25").replace("?", "%3F")
    return f"sqlite+aiosqlite:///{quoted}"


def _mask_unparsed(text: str) -> str:
    """A URL SQLAlchemy could not parse, with whatever stands as its password masked.

    Example:
        >>> _mask_unparsed("postgresql://hf:p@ss@host:x/db")
        'postgresql://hf:***@host:x/db'
    """
    import re

    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", text)
