"""One local Prefect server per `HELIXFLOW_HOME`, shared by every `helixflow run`.

Without `PREFECT_API_URL`, Prefect starts a temporary server in each process that
needs one, and with Ray that means one per worker (slow, and the task runs end up in
separate databases). So `helixflow run` starts, or reuses, one real server:

- Prefect home under `HELIXFLOW_HOME` (default `~/.helixflow`), and its database: SQLite
  there (the embedded default), or PostgreSQL, as Prefect recommends beyond one user
  (`database=` / `helixflow server start --database postgresql+asyncpg://USER@HOST/DB`,
  or `HELIXFLOW_DATABASE_URL`; the password in the URL, in `HELIXFLOW_DATABASE_PASSWORD`
  or a `SecretStr`, and only ever shown masked);
- listening on 127.0.0.1 on a free port, with the UI;
- detached (own session and process group, output to `HELIXFLOW_HOME/server.log`) so
  it outlives the run that started it and the next run reuses it;
- described by `HELIXFLOW_HOME/server.json` (pid, port, started_at, the masked database
  URL), written atomically;
- started under an exclusive `flock` on `HELIXFLOW_HOME/server.lock`, so two runs
  starting at once end up with one server.

Example:
    >>> info = ensure_server()          # doctest: +SKIP
    >>> use_server(info)                # doctest: +SKIP
    >>> info.ui_url                     # doctest: +SKIP
    'http://127.0.0.1:40123'
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from uuid import UUID

import httpx
from pydantic import SecretStr

from helixflow.errors import HelixflowError
from helixflow.files import atomic_write
from helixflow.settings import helixflow_home

HOST = "127.0.0.1"
STATE_FILE = "server.json"
#: The port of the last server started, tried first by the next start: a restarted
#: server keeps its URL, so running flows and Ray workers reconnect to it.
PORT_FILE = "server.port"
LOCK_FILE = "server.lock"
LOG_FILE = "server.log"
PREFECT_HOME_DIR = "prefect"
DATABASE_FILE = "prefect.db"
UI_STATIC_DIR = "ui"
#: The server's database when none is given (else SQLite under HELIXFLOW_HOME).
DATABASE_ENV = "HELIXFLOW_DATABASE_URL"
#: The database password when the URL has none (never put on a command line).
PASSWORD_ENV = "HELIXFLOW_DATABASE_PASSWORD"
_DRIVERS = {"postgresql+asyncpg": "postgresql", "sqlite+aiosqlite": "sqlite"}
_POSTGRES_ALIASES = ("postgresql", "postgres", "postgresql+asyncpg")

#: Start attempts when the chosen port is taken between probing and binding.
_PORT_ATTEMPTS = 5
#: The log is rotated to `server.log.1` at start-up once it grows past this.
_MAX_LOG_BYTES = 20 * 1024 * 1024
_LOG_TAIL_LINES = 30
_POLL_SECONDS = 0.2
_HEALTH_REQUEST_TIMEOUT = 2.0

# Servers this process started, kept so that `stop_server` can reap them (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ServerInfo:
    """A running, healthy helixflow Prefect server."""

    api_url: str
    ui_url: str
    pid: int
    port: int
    home: Path
    log_path: Path
    database: str = ""  # its database URL, password masked


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


@dataclass(frozen=True)
class _State:
    """What `server.json` records about the server process (never a password)."""

    pid: int
    port: int
    started_at: str
    database: str = ""


# --------------------------------------------------------------------------- public API


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
        text = _sqlite_url(_resolve_home(home) / PREFECT_HOME_DIR / DATABASE_FILE)
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


def server_env(
    home: Path, *, port: int | None = None, database: Database | None = None
) -> dict[str, str]:
    """Environment for the server process: everything Prefect under `home`, no network.

    Every inherited `PREFECT_*` variable is dropped (an inherited `PREFECT_API_URL`,
    profile or database URL must not leak into the server), then the server is
    configured from `home` alone, with `database` (default: SQLite under `home`). With
    `port`, the UI is told where its API is (Prefect otherwise assumes the default port
    4200 and the UI cannot reach the API).
    """
    home = Path(home).expanduser().absolute()
    prefect_home = home / PREFECT_HOME_DIR
    database = database or database_from(_sqlite_url(prefect_home / DATABASE_FILE))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k not in (DATABASE_ENV, PASSWORD_ENV)}
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_API_DATABASE_CONNECTION_URL": database.url.get_secret_value(),
            # No network here: telemetry would only log failures.
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            # Unpack the UI under home, not into the (possibly read-only, shared) venv.
            "PREFECT_UI_STATIC_DIRECTORY": str(home / UI_STATIC_DIR),
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_SERVER_API_HOST": HOST,
            # A 503 ("try again": the database is busy) is logged, so load shows in the log.
            "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
        }
    )
    if port is not None:
        env["PREFECT_SERVER_API_PORT"] = str(port)
        env["PREFECT_UI_API_URL"] = _api_url(port)
    return env


def server_status(home: Path | None = None) -> ServerInfo | None:
    """The server of `home` if it is alive and answers its health check, else None.

    A state file whose pid is dead, or belongs to some other program, is removed
    (unless another process holds the lock, i.e. is starting or stopping a server).
    """
    home = _resolve_home(home)
    state = _read_state(home)
    if state is None:
        return None
    if not _is_server_process(state.pid, state.port):
        with _try_lock(home) as locked:
            if locked and _read_state(home) == state:
                _remove_state(home)
        return None
    info = _info(home, state)
    return info if _is_healthy(info.api_url) else None


def ensure_server(
    home: Path | None = None,
    *,
    timeout: float = 180.0,
    database: str | SecretStr | None = None,
) -> ServerInfo:
    """Reuse the server of `home`, or start one and wait until it is healthy.

    `database` (or `HELIXFLOW_DATABASE_URL`) is the database a new server uses (default:
    SQLite under `home`, see `database_from`); a running server is reused whatever its
    database unless one is asked for and differs.

    Safe to call from several processes or threads at once: they serialise on an
    exclusive lock in `home`, so exactly one server results.

    Raises:
        HelixflowError: the server died while starting (with the end of its log), did
            not become healthy within `timeout` seconds, runs on another database than
            the one asked for, or the lock was not obtained.
    """
    home = _resolve_home(home)
    asked = database is not None or bool(os.environ.get(DATABASE_ENV))
    db = database_from(database, home)
    home.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with _lock(home, deadline):
        state = _read_state(home)
        if state is not None and _is_server_process(state.pid, state.port):
            info = _info(home, state)
            if asked and info.database != db.masked:
                raise HelixflowError(
                    f"the helixflow Prefect server of {home} (pid {state.pid}) runs on "
                    f"{info.database}, not on {db.masked}",
                    hint="stop it first (`helixflow server stop`), or leave --database out "
                    "to use it",
                )
            if _wait_healthy(info.api_url, deadline):
                return info
            raise HelixflowError(
                f"the helixflow Prefect server (pid {state.pid}, {info.api_url}) is running "
                f"but not healthy after {timeout:.0f} s",
                hint=f"run `helixflow server stop` and retry; its log is {info.log_path}",
            )
        if state is not None:
            _remove_state(home)
        return _start(home, deadline, timeout, db)


def stop_server(home: Path | None = None, *, timeout: float = 20.0) -> bool:
    """Stop the server of `home`: SIGTERM its process group, SIGKILL after `timeout`.

    Returns:
        True if a server was running (and is now stopped), False if there was none.
    """
    home = _resolve_home(home)
    if not home.is_dir():
        return False
    with _lock(home, time.monotonic() + timeout):
        state = _read_state(home)
        if state is None:
            return False
        if not _is_server_process(state.pid, state.port):
            _remove_state(home)
            _reap(state.pid)
            return False
        _kill(state.pid, time.monotonic() + timeout)
        _remove_state(home)
        return True


def use_server(info: ServerInfo) -> None:
    """Point this process's Prefect client (and child processes, via env) at `info`.

    Prefect 3 reads its settings from the environment once, at import, into a global
    settings context; changing `os.environ` afterwards is not seen until that context
    is rebuilt, so this sets the variables and then refreshes it. Ray workers started
    afterwards inherit the environment (and `PREFECT_API_URL` can be passed in a
    `runtime_env` to an existing cluster).

    A `with temporary_settings(...)` block already open in the caller overrides the
    global context and therefore this call, for its duration. Switching from another
    server first flushes this process's Prefect log and event workers, which stay bound
    to the server they started with (see `flush_prefect_workers`).
    """
    if os.environ.get("PREFECT_API_URL") not in (None, info.api_url):
        flush_prefect_workers()
    os.environ["PREFECT_API_URL"] = info.api_url
    os.environ["PREFECT_UI_URL"] = info.ui_url
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # A proxy set for the outside world must not intercept calls to the local server.
    for name in ("NO_PROXY", "no_proxy"):
        hosts = [h for h in os.environ.get(name, "").split(",") if h]
        for host in (HOST, "localhost"):
            if host not in hosts:
                hosts.append(host)
        os.environ[name] = ",".join(hosts)

    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()


def flush_prefect_workers(timeout: float = 10.0) -> None:
    """Send this process's pending Prefect logs and events, then stop their workers.

    Both are per-process singletons bound to the server they first talked to; after this,
    the next log or event starts a new one against the current settings (`use_server`).
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


def flow_run_url(info_or_api_url: ServerInfo | str, flow_run_id: UUID | str) -> str:
    """The UI page of a flow run.

    Example:
        >>> flow_run_url("http://127.0.0.1:4200/api", "0b6f")
        'http://127.0.0.1:4200/runs/flow-run/0b6f'
    """
    if isinstance(info_or_api_url, ServerInfo):
        ui_url = info_or_api_url.ui_url
    else:
        ui_url = info_or_api_url.rstrip("/").removesuffix("/api")
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


# --------------------------------------------------------------------------- starting


def _start(home: Path, deadline: float, timeout: float, database: Database) -> ServerInfo:
    """Start a server (retrying on another port if its port was taken); called locked.

    Its log tail, quoted in errors, is scrubbed of the database password."""
    log_path = home / LOG_FILE
    _rotate_log(log_path)
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = _free_port(_last_port(home) if attempt == 1 else None)
        with log_path.open("ab") as log:
            log.write(
                f"\n--- helixflow: starting Prefect server on {HOST}:{port} at "
                f"{_now()} (attempt {attempt}), database {database.masked} ---\n".encode()
            )
            log.flush()
            offset = log.tell()
            proc = subprocess.Popen(
                _command(port),
                env=server_env(home, port=port, database=database),
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session and process group: outlives us
                close_fds=True,
            )
        _CHILDREN[proc.pid] = proc
        (home / PORT_FILE).write_text(f"{port}\n")
        # Recorded at once, so that a server left starting by a killed caller is found.
        state = _State(pid=proc.pid, port=port, started_at=_now(), database=database.masked)
        _write_state(home, state)
        info = _info(home, state)

        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _is_healthy(info.api_url):
                return info
            time.sleep(_POLL_SECONDS)
        else:
            _kill(proc.pid, time.monotonic() + 10.0)
            _remove_state(home)
            raise HelixflowError(
                f"the Prefect server did not become healthy within {timeout:.0f} s "
                f"(a first start migrates a new database).\n"
                f"{database.scrub(_log_tail(log_path, offset))}",
                hint=f"retry with a longer timeout, or read {log_path}",
            )

        _CHILDREN.pop(proc.pid, None)
        _remove_state(home)
        tail = database.scrub(_log_tail(log_path, offset))
        if "already in use" in tail or "address in use" in tail.lower():
            continue  # someone took the port between our probe and the server's bind
        raise HelixflowError(
            f"the Prefect server exited with code {proc.returncode} while starting:\n{tail}",
            hint=f"the full log is {log_path}; fix the cause, then `helixflow server start`",
        )
    raise HelixflowError(
        f"could not start the Prefect server: {_PORT_ATTEMPTS} ports were taken before "
        "it could bind them",
        hint=f"read {log_path}",
    )


def _command(port: int) -> list[str]:
    """The server command line; `_is_server_process` recognises it by these arguments."""
    return [
        sys.executable, "-m", "prefect", "server", "start",
        "--host", HOST, "--port", str(port),
        "--analytics-off",
    ]  # fmt: skip


def _free_port(preferred: int | None = None) -> int:
    """`preferred` if it is free on 127.0.0.1 now, else any free port (the server may
    still lose it: `_start` retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: connections of a stopped server in TIME_WAIT do not block it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, preferred or 0))
        except OSError:
            sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _last_port(home: Path) -> int | None:
    """The port the last server of `home` listened on, if recorded."""
    try:
        return int((home / PORT_FILE).read_text())
    except (OSError, ValueError):
        return None


def _rotate_log(log_path: Path) -> None:
    """Keep one previous log once the current one is large (uvicorn logs every request)."""
    with contextlib.suppress(FileNotFoundError):
        if log_path.stat().st_size > _MAX_LOG_BYTES:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))


def _log_tail(log_path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """The last `lines` lines written to the log after `offset`."""
    try:
        with log_path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {log_path}: {exc})"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(the log is empty)"


# --------------------------------------------------------------------------- health


def _is_healthy(api_url: str) -> bool:
    """True if `GET {api_url}/health` answers 200 (no proxy: the server is local)."""
    try:
        response = httpx.get(f"{api_url}/health", timeout=_HEALTH_REQUEST_TIMEOUT, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _wait_healthy(api_url: str, deadline: float) -> bool:
    """Poll the health check until it answers or `deadline` (monotonic) passes."""
    while True:
        if _is_healthy(api_url):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


# --------------------------------------------------------------------------- processes


def _process_info(pid: int) -> tuple[str, list[str]] | None:
    """(state letter, argv) of a process, or None if there is none."""
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (FileNotFoundError, ProcessLookupError):
            return None
        except PermissionError:
            return ("?", [])
        # The state letter follows the command name, which is in parentheses.
        return stat.rsplit(")", 1)[1].split()[0], [a for a in argv if a]
    result = subprocess.run(  # macOS and other systems without /proc
        ["ps", "-p", str(pid), "-o", "stat=", "-o", "command="],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        return None
    stat, _, command = result.stdout.strip().partition(" ")
    return stat[:1], command.split()


def _pid_alive(pid: int) -> bool:
    """True if `pid` is a live process (a zombie counts as dead)."""
    info = _process_info(pid)
    return info is not None and info[0] != "Z"


def _is_server_process(pid: int, port: int) -> bool:
    """True if `pid` is alive and is a `prefect server start ... --port <port>`.

    Guards against a recycled pid: a stale state file must not make us trust, or kill,
    some other process.
    """
    info = _process_info(pid)
    if info is None or info[0] == "Z":
        return False
    argv = info[1]
    if not any("prefect" in arg for arg in argv) or "server" not in argv:
        return False
    return any(a == "--port" and b == str(port) for a, b in itertools.pairwise(argv))


def _kill(pid: int, deadline: float) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it outlives `deadline`."""
    group = _leads_group(pid)
    _signal(pid, signal.SIGTERM, group)
    if not _wait_dead(pid, deadline):
        _signal(pid, signal.SIGKILL, group)
        if not _wait_dead(pid, time.monotonic() + 10.0):
            raise HelixflowError(
                f"the Prefect server (pid {pid}) survived SIGKILL",
                hint=f"kill it by hand: kill -9 {pid}",
            )
    if group:  # anything the server left behind in its group goes too
        _signal(pid, signal.SIGKILL, group)
    _reap(pid)  # it may have turned zombie after the last check: collect it now


def _wait_dead(pid: int, deadline: float) -> bool:
    """Wait until `pid` has exited (reaping it if it is our child); False on timeout."""
    while True:
        _reap(pid)
        if not _pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _leads_group(pid: int) -> bool:
    """True if `pid` leads its own process group (as the servers we start do)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    """Send `sig` to the process group led by `pid`, or to `pid` alone."""
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect the exit status of a server this process started, so it is not a zombie."""
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        _CHILDREN.pop(pid, None)


# --------------------------------------------------------------------------- state, lock


def _resolve_home(home: Path | None) -> Path:
    """`home`, or `HELIXFLOW_HOME`, as an absolute path."""
    return Path(home if home is not None else helixflow_home()).expanduser().absolute()


def _api_url(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def _sqlite_url(path: Path) -> str:
    """An SQLAlchemy URL for `path`; SQLAlchemy unquotes it, so `%` and `?` are quoted.

    Example:
        >>> _sqlite_url(Path("/data/helix home/50%?/prefect.db"))
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


def _info(home: Path, state: _State) -> ServerInfo:
    return ServerInfo(
        api_url=_api_url(state.port),
        ui_url=f"http://{HOST}:{state.port}",
        pid=state.pid,
        port=state.port,
        home=home,
        log_path=home / LOG_FILE,
        database=state.database
        or _sqlite_url(home / PREFECT_HOME_DIR / DATABASE_FILE),  # older server.json
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _read_state(home: Path) -> _State | None:
    """The state file, or None if it is missing or unreadable (treated as no server)."""
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return _State(pid=int(data["pid"]), port=int(data["port"]), started_at=data["started_at"],
                      database=str(data.get("database", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(home: Path, state: _State) -> None:
    """Write the state file atomically (helixflow.files: temporary file, fsync, rename)."""
    payload = {"pid": state.pid, "port": state.port, "started_at": state.started_at,
               "database": state.database}
    atomic_write(home / STATE_FILE, json.dumps(payload).encode())


def _remove_state(home: Path) -> None:
    (home / STATE_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def _lock(home: Path, deadline: float) -> Iterator[None]:
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
            time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _try_lock(home: Path) -> Iterator[bool]:
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
