"""What a `HELIXFLOW_HOME` records of its server: `server.json` (pid, port, start time,
masked database URL; written atomically), the last port, and the `flock` that serialises
starting and stopping. Part of `helixflow.app.server`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from helixflow.errors import HelixflowError
from helixflow.files import atomic_write
from helixflow.settings import helixflow_home

STATE_FILE = "server.json"
#: The port of the last server started, tried first by the next start: a restarted
#: server keeps its URL, so running flows and Ray workers reconnect to it.
PORT_FILE = "server.port"
LOCK_FILE = "server.lock"
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class State:
    """What `server.json` records about the server process (never a password)."""

    pid: int
    port: int
    started_at: str
    database: str = ""


def resolve_home(home: Path | None) -> Path:
    """`home`, or `HELIXFLOW_HOME`, as an absolute path."""
    return Path(home if home is not None else helixflow_home()).expanduser().absolute()


def last_port(home: Path) -> int | None:
    """The port the last server of `home` listened on, if recorded."""
    try:
        return int((home / PORT_FILE).read_text())
    except (OSError, ValueError):
        return None


def read_state(home: Path) -> State | None:
    """The state file, or None if it is missing or unreadable (treated as no server)."""
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return State(pid=int(data["pid"]), port=int(data["port"]), started_at=data["started_at"],
                      database=str(data.get("database", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_state(home: Path, state: State) -> None:
    """Write the state file atomically (helixflow.files: temporary file, fsync, rename)."""
    payload = {"pid": state.pid, "port": state.port, "started_at": state.started_at,
               "database": state.database}
    atomic_write(home / STATE_FILE, json.dumps(payload).encode())


def remove_state(home: Path) -> None:
    (home / STATE_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def lock(home: Path, deadline: float) -> Iterator[None]:
    """Hold the exclusive lock of `home`, waiting for it until `deadline` (monotonic).

    `flock` locks belong to an open file, so threads of one process exclude each other
    too, and the kernel releases the lock if its holder dies.
    """
    with (home / LOCK_FILE).open("a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise HelixflowError(
                    f"timed out waiting for another helixflow process to start or stop the "
                    f"server of {home} (lock {home / LOCK_FILE})",
                    hint="retry; if it persists, see `helixflow server status`",
                ) from None
            time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def try_lock(home: Path) -> Iterator[bool]:
    """Take the lock of `home` if it is free right now; yields whether it was taken."""
    try:
        fh = (home / LOCK_FILE).open("a")
    except OSError:
        yield False
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
