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
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import httpx
from pydantic import SecretStr

from helixflow.app.server_database import (
    DATABASE_ENV,
    DATABASE_FILE,
    PASSWORD_ENV,
    PREFECT_HOME_DIR,
    Database,
    database_from,
    sqlite_url,
)
from helixflow.app.server_process import (
    HOST,
    forget,
    free_port,
    is_server_process,
    kill,
    reap,
    spawn,
)
from helixflow.app.server_state import (
    POLL_SECONDS,
    PORT_FILE,
    State,
    last_port,
    lock,
    read_state,
    remove_state,
    resolve_home,
    try_lock,
    write_state,
)
from helixflow.errors import HelixflowError

LOG_FILE = "server.log"
UI_STATIC_DIR = "ui"

#: Start attempts when the chosen port is taken between probing and binding.
_PORT_ATTEMPTS = 5
#: The log is rotated to `server.log.1` at start-up once it grows past this.
_MAX_LOG_BYTES = 20 * 1024 * 1024
_LOG_TAIL_LINES = 30
_HEALTH_REQUEST_TIMEOUT = 2.0


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



# --------------------------------------------------------------------------- public API


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
    database = database or database_from(sqlite_url(prefect_home / DATABASE_FILE))
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
            # Task runs recorded 100 at a time, not one (Prefect's default): the API keeps
            # up with a run's tasks 3.5× better (bench/server_load.py, README "Task runs a
            # Prefect server absorbs"), and fewer events wait in the broker's bounded queue.
            **{f"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_{name}": value for name, value in (
                ("READ_BATCH_SIZE", "100"), ("BATCH_SIZE", "100"), ("FLUSH_INTERVAL", "1"))},
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
    home = resolve_home(home)
    state = read_state(home)
    if state is None:
        return None
    if not is_server_process(state.pid, state.port):
        with try_lock(home) as locked:
            if locked and read_state(home) == state:
                remove_state(home)
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
    home = resolve_home(home)
    asked = database is not None or bool(os.environ.get(DATABASE_ENV))
    db = database_from(database, home)
    home.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with lock(home, deadline):
        state = read_state(home)
        if state is not None and is_server_process(state.pid, state.port):
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
            remove_state(home)
        return _start(home, deadline, timeout, db)


def stop_server(home: Path | None = None, *, timeout: float = 20.0) -> bool:
    """Stop the server of `home`: SIGTERM its process group, SIGKILL after `timeout`.

    Returns:
        True if a server was running (and is now stopped), False if there was none.
    """
    home = resolve_home(home)
    if not home.is_dir():
        return False
    with lock(home, time.monotonic() + timeout):
        state = read_state(home)
        if state is None:
            return False
        if not is_server_process(state.pid, state.port):
            remove_state(home)
            reap(state.pid)
            return False
        kill(state.pid, time.monotonic() + timeout)
        remove_state(home)
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
        port = free_port(last_port(home) if attempt == 1 else None)
        with log_path.open("ab") as log:
            log.write(
                f"\n--- helixflow: starting Prefect server on {HOST}:{port} at "
                f"{_now()} (attempt {attempt}), database {database.masked} ---\n".encode()
            )
            log.flush()
            offset = log.tell()
            proc = spawn(port, server_env(home, port=port, database=database), home, log)
        (home / PORT_FILE).write_text(f"{port}\n")
        # Recorded at once, so that a server left starting by a killed caller is found.
        state = State(pid=proc.pid, port=port, started_at=_now(), database=database.masked)
        write_state(home, state)
        info = _info(home, state)

        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _is_healthy(info.api_url):
                return info
            time.sleep(POLL_SECONDS)
        else:
            kill(proc.pid, time.monotonic() + 10.0)
            remove_state(home)
            raise HelixflowError(
                f"the Prefect server did not become healthy within {timeout:.0f} s "
                f"(a first start migrates a new database).\n"
                f"{database.scrub(_log_tail(log_path, offset))}",
                hint=f"retry with a longer timeout, or read {log_path}",
            )

        forget(proc.pid)
        remove_state(home)
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
        time.sleep(POLL_SECONDS)


# --------------------------------------------------------------------------- server info


def _api_url(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def _info(home: Path, state: State) -> ServerInfo:
    return ServerInfo(
        api_url=_api_url(state.port),
        ui_url=f"http://{HOST}:{state.port}",
        pid=state.pid,
        port=state.port,
        home=home,
        log_path=home / LOG_FILE,
        database=state.database
        or sqlite_url(home / PREFECT_HOME_DIR / DATABASE_FILE),  # older server.json
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
