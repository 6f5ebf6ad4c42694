"""Where helixflow keeps its state, read from the environment at call time (never at import)."""

from __future__ import annotations

import os
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
