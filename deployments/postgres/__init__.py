"""The local PostgreSQL of `local-postgres.sh`, for tests and benchmarks: one throwaway
database per Prefect server.

Connection settings come from the same variables as the script, with the same defaults
(`HELIXFLOW_PG_PORT`, `HELIXFLOW_PG_USER`, `HELIXFLOW_PG_PASSWORD`, `HELIXFLOW_PG_DB`); the
password is held as a `SecretStr`, so it shows in no repr or log line.

Example:
    >>> pg = LocalPostgres.from_env()
    >>> pg.url("hf_x")
    'postgresql+asyncpg://helixflow@127.0.0.1:5432/hf_x'
    >>> "hf-local" in repr(pg)
    False
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

SCRIPT = Path(__file__).with_name("local-postgres.sh")
#: The script's default test password (a local server on 127.0.0.1 only).
DEFAULT_PASSWORD = "hf-local-test-7c2e"
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class LocalPostgres:
    """A PostgreSQL role that may create databases, on 127.0.0.1."""

    host: str
    port: int
    user: str
    password: SecretStr
    database: str  # the role's own database, to connect to for CREATE/DROP DATABASE
    created: list[str] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def from_env(cls) -> LocalPostgres:
        return cls(host="127.0.0.1", port=int(os.environ.get("HELIXFLOW_PG_PORT", "5432")),
                   user=os.environ.get("HELIXFLOW_PG_USER", "helixflow"),
                   password=SecretStr(os.environ.get("HELIXFLOW_PG_PASSWORD", DEFAULT_PASSWORD)),
                   database=os.environ.get("HELIXFLOW_PG_DB", "helixflow"))

    def url(self, database: str, *, password: bool = False) -> str:
        """The SQLAlchemy URL of `database`, with the password only when asked for."""
        secret = f":{self.password.get_secret_value()}" if password else ""
        return f"postgresql+asyncpg://{self.user}{secret}@{self.host}:{self.port}/{database}"

    def reachable(self) -> bool:
        """True if the role can log in now."""
        try:
            self.fetch("select 1")
        except Exception:  # refused (OSError), timeout, or asyncpg's PostgresError: not usable
            return False
        return True

    def start(self, timeout: float = 900) -> bool:
        """Run `local-postgres.sh` (installs and starts PostgreSQL; needs root); reachable?"""
        if os.geteuid() == 0:
            subprocess.run(["bash", str(SCRIPT)], check=False, timeout=timeout)
        return self.reachable()

    def create_database(self, name: str) -> str:
        """A new, empty database `name` owned by the role (an old one of that name is
        dropped first; `drop_created` drops it again); its name."""
        self.drop_database(name)
        self.fetch(f'create database "{_checked(name)}"')
        self.created.append(name)
        return name

    def drop_created(self) -> None:
        """Drop the databases `create_database` made."""
        while self.created:
            self.drop_database(self.created.pop())

    def drop_database(self, name: str) -> None:
        """Drop `name` if it exists, closing its connections (a stopped server's pool)."""
        self.fetch(f'drop database if exists "{_checked(name)}" with (force)')

    def fetch(self, sql: str, database: str | None = None) -> list[Any]:
        """Rows of `sql` run in `database` (default: the role's own)."""
        return asyncio.run(self._fetch(sql, database or self.database))

    async def _fetch(self, sql: str, database: str) -> list[Any]:
        import asyncpg

        conn = await asyncpg.connect(host=self.host, port=self.port, user=self.user,
                                     password=self.password.get_secret_value(),
                                     database=database, timeout=10)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()


def _checked(name: str) -> str:
    """`name` if it is a plain lower-case identifier (it is put into SQL)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name
