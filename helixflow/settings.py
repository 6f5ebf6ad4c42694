"""Where helixflow keeps its state, read from the environment at call time (never at import)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def helixflow_home() -> Path:
    """`HELIXFLOW_HOME`, default `~/.helixflow`: the local server's database, the default store."""
    return Path(os.environ.get("HELIXFLOW_HOME") or Path.home() / ".helixflow").expanduser()


def default_store_url() -> str:
    """`HELIXFLOW_STORE`, default `file://$HELIXFLOW_HOME/store`."""
    url = os.environ.get("HELIXFLOW_STORE")
    return url or (helixflow_home() / "store").as_uri()


def ray_address() -> str | None:
    """`HELIXFLOW_RAY_ADDRESS`: an existing Ray cluster to use instead of a local one."""
    return os.environ.get("HELIXFLOW_RAY_ADDRESS") or None


# The server's database secrets: a run's driver may hold them (it can start the server),
# Ray's processes and Slurm jobs never need them. Prefect's own names and helixflow's.
SERVER_SECRETS_ENV = (
    "HELIXFLOW_DATABASE_URL",
    "HELIXFLOW_DATABASE_PASSWORD",
    "PGPASSWORD",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_PASSWORD",
)


@contextlib.contextmanager
def without_server_secrets() -> Iterator[None]:
    """While a process that inherits this environment starts (a new local Ray cluster, a
    Slurm job), keep the database URL and password out of it; restored afterwards."""
    saved = {k: os.environ.pop(k) for k in SERVER_SECRETS_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
