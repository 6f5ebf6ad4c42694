"""Tests of `helixflow.app.server` against real Prefect servers.

Each test gets its own `HELIXFLOW_HOME` (with a space in its path, on purpose) and
stops whatever server it started in a finalizer. A first start migrates a new SQLite
database, so each integration test takes several seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from helixflow.app import server, server_database, server_state
from helixflow.errors import HelixflowError

if TYPE_CHECKING:
    from deployments.postgres import LocalPostgres

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A fresh HELIXFLOW_HOME whose server, if any, is stopped afterwards.

    Its name has a space; parametrize `home` indirectly for another name.
    """
    home = tmp_path / getattr(request, "param", "helix home")
    monkeypatch.setenv("HELIXFLOW_HOME", str(home))
    yield home
    server.stop_server(home)




def _health(info: server.ServerInfo) -> object:
    response = httpx.get(f"{info.api_url}/health", timeout=5, trust_env=False)
    response.raise_for_status()
    return response.json()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((server.HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie (in a container whose PID 1 does not reap, a stopped
    server that is not our child stays a zombie: it has exited all the same)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _starts(home: Path) -> int:
    """How many server starts the log records."""
    return (home / server.LOG_FILE).read_text().count("--- helixflow: starting")


# --------------------------------------------------------------------------- no server


def test_server_env_keeps_everything_under_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:4200/api")
    monkeypatch.setenv("PREFECT_PROFILE", "cloud")
    home = Path("/data/helix home")

    env = server.server_env(home, port=4321)

    assert "PREFECT_API_URL" not in env
    assert "PREFECT_PROFILE" not in env
    assert env["PREFECT_HOME"] == "/data/helix home/prefect"
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == (
        "sqlite+aiosqlite:////data/helix home/prefect/prefect.db"
    )
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4321/api"
    assert env["PREFECT_UI_STATIC_DIRECTORY"] == "/data/helix home/ui"
    assert env["PATH"] == os.environ["PATH"]


def test_flow_run_url_from_info_or_api_url(tmp_path: Path) -> None:
    info = server.ServerInfo(
        api_url="http://127.0.0.1:4321/api",
        ui_url="http://127.0.0.1:4321",
        pid=1,
        port=4321,
        home=tmp_path,
        log_path=tmp_path / "server.log",
    )
    expected = "http://127.0.0.1:4321/runs/flow-run/abc"
    assert server.flow_run_url(info, "abc") == expected
    assert server.flow_run_url("http://127.0.0.1:4321/api/", "abc") == expected


def test_status_and_stop_without_server(home: Path) -> None:
    assert server.server_status() is None
    assert server.stop_server() is False


# --------------------------------------------------------------------------- real servers


@pytest.mark.integration
def test_ensure_server_starts_a_detached_healthy_server_and_reuses_it(home: Path) -> None:
    info = server.ensure_server()  # home from HELIXFLOW_HOME

    assert info.home == home
    assert info.api_url == f"http://127.0.0.1:{info.port}/api"
    assert _health(info) is True
    state = json.loads((home / server_state.STATE_FILE).read_text())
    assert (state["pid"], state["port"]) == (info.pid, info.port)
    assert state["started_at"]
    assert (home / "prefect" / "prefect.db").is_file()
    # Detached: its own session and process group, so it outlives `helixflow run`.
    assert os.getsid(info.pid) == info.pid
    assert os.getpgid(info.pid) == info.pid
    # The UI is served, and knows where its API is.
    ui = httpx.get(server.flow_run_url(info, "x"), timeout=5, trust_env=False)
    assert ui.status_code == 200
    assert "html" in ui.headers["content-type"]
    ui_settings = httpx.get(f"{info.ui_url}/ui-settings", timeout=5, trust_env=False).json()
    assert ui_settings["api_url"] == info.api_url

    assert server.ensure_server() == info
    assert server.server_status() == info
    assert _starts(home) == 1


@pytest.mark.integration
def test_concurrent_threads_get_one_server(home: Path) -> None:
    barrier = threading.Barrier(4)

    def start(_: int) -> server.ServerInfo:
        barrier.wait()
        return server.ensure_server(home)

    with ThreadPoolExecutor(4) as pool:
        infos = list(pool.map(start, range(4)))

    assert len({(i.pid, i.port) for i in infos}) == 1
    assert _health(infos[0]) is True
    assert _starts(home) == 1


@pytest.mark.integration
def test_concurrent_processes_get_one_server_that_outlives_them(home: Path) -> None:
    code = (
        "import json; from helixflow.app.server import ensure_server; "
        "i = ensure_server(); print(json.dumps({'pid': i.pid, 'port': i.port}))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]

    assert [p.returncode for p in procs] == [0, 0]
    started = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert started[0] == started[1]
    # Both starters have exited; the server is still there, and is reused.
    info = server.server_status(home)
    assert info is not None
    assert (info.pid, info.port) == (started[0]["pid"], started[0]["port"])
    assert server.ensure_server(home).pid == info.pid
    assert _starts(home) == 1


@pytest.mark.integration
@pytest.mark.parametrize("home", ["50% done? #1"], indirect=True)  # quoted in the DB URL
def test_stop_server_stops_it(home: Path) -> None:
    info = server.ensure_server(home)

    assert (home / "prefect" / "prefect.db").is_file()
    assert server.stop_server(home) is True

    assert not _pid_alive(info.pid)
    assert not _port_open(info.port)
    assert server.server_status(home) is None
    assert not (home / server_state.STATE_FILE).exists()
    assert server.stop_server(home) is False


@pytest.mark.integration
def test_stale_state_with_dead_pid_is_replaced(home: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    home.mkdir(parents=True)
    stale = {"pid": dead.pid, "port": 9, "started_at": "2020-01-01T00:00:00+00:00"}
    (home / server_state.STATE_FILE).write_text(json.dumps(stale))

    assert server.server_status(home) is None
    assert not (home / server_state.STATE_FILE).exists()

    (home / server_state.STATE_FILE).write_text(json.dumps(stale))
    info = server.ensure_server(home)
    assert info.pid != dead.pid
    assert _health(info) is True


@pytest.mark.integration
def test_stale_state_naming_another_process_leaves_it_alone(home: Path) -> None:
    other = subprocess.Popen(["sleep", "300"])
    try:
        home.mkdir(parents=True)
        state = {"pid": other.pid, "port": 9, "started_at": "2020-01-01T00:00:00+00:00"}
        (home / server_state.STATE_FILE).write_text(json.dumps(state))

        assert server.server_status(home) is None
        (home / server_state.STATE_FILE).write_text(json.dumps(state))
        assert server.stop_server(home) is False
        (home / server_state.STATE_FILE).write_text(json.dumps(state))
        info = server.ensure_server(home)

        assert info.pid != other.pid
        assert other.poll() is None  # never signalled
    finally:
        other.kill()
        other.wait()


@pytest.mark.integration
def test_alive_but_unhealthy_server_raises_then_stops(home: Path) -> None:
    port = server.free_port()  # nothing listens there
    # Looks like our server on its command line, but never answers.
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "prefect", "server", "start",
         "--port", str(port)],
        start_new_session=True,
    )  # fmt: skip
    try:
        home.mkdir(parents=True)
        state = {"pid": fake.pid, "port": port, "started_at": "2020-01-01T00:00:00+00:00"}
        (home / server_state.STATE_FILE).write_text(json.dumps(state))

        assert server.server_status(home) is None
        with pytest.raises(HelixflowError, match="not healthy") as err:
            server.ensure_server(home, timeout=2)
        assert err.value.hint is not None
        assert "helixflow server stop" in err.value.hint

        assert server.stop_server(home, timeout=5) is True
        assert fake.wait(timeout=5) is not None
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()


@pytest.mark.integration
def test_server_dying_at_start_raises_with_its_log(home: Path) -> None:
    (home / "prefect" / "prefect.db").mkdir(parents=True)  # SQLite cannot open a directory

    with pytest.raises(HelixflowError, match="exited with code") as err:
        server.ensure_server(home)

    assert "unable to open database file" in str(err.value)
    assert err.value.hint is not None
    assert str(home / server.LOG_FILE) in err.value.hint
    assert not (home / server_state.STATE_FILE).exists()


@pytest.mark.integration
def test_port_taken_before_bind_is_retried(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind((server.HOST, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = server.free_port
        monkeypatch.setattr(
            server, "free_port", lambda preferred=None: next(ports, None) or real_free_port()
        )

        info = server.ensure_server(home)

    assert info.port != taken
    assert _health(info) is True
    assert _starts(home) == 2
    assert "already in use" in (home / server.LOG_FILE).read_text()


@pytest.mark.integration
def test_use_server_sends_in_process_flow_runs_to_it(home: Path) -> None:
    """In a fresh process (Prefect's event and log workers are per-process singletons bound
    to the first server they talk to), `use_server` sends flow and task runs to our server
    and no temporary server is started."""
    info = server.ensure_server(home)
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from prefect import flow, task
        from prefect.server.api.server import SubprocessASGIServer
        from helixflow.app import server, server_database, server_state

        temporary = []
        real_start = SubprocessASGIServer.start
        def spy(self, *args, **kwargs):
            temporary.append(1)
            real_start(self, *args, **kwargs)
        SubprocessASGIServer.start = spy

        @task
        def add_one(x: int) -> int:
            return x + 1

        @flow
        def tiny(x: int) -> int:
            return add_one(x)

        info = server.ensure_server(Path({str(home)!r}))
        server.use_server(info)
        state = tiny(41, return_state=True)
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
        run_id = str(state.state_details.flow_run_id)
        print(json.dumps({{"result": state.result(), "flow_run_id": run_id,
                          "temporary": len(temporary)}}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["result"] == 42 and out["temporary"] == 0
    flow_run_id = out["flow_run_id"]
    runs = httpx.post(
        f"{info.api_url}/flow_runs/filter",
        json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
        timeout=10,
        trust_env=False,
    ).json()
    assert [(r["id"], r["state_type"]) for r in runs] == [(flow_run_id, "COMPLETED")]
    deadline = time.monotonic() + 20
    while True:  # task run states arrive as events, processed asynchronously by the server
        task_runs = httpx.post(
            f"{info.api_url}/task_runs/filter",
            json={"flow_runs": {"id": {"any_": [flow_run_id]}}},
            timeout=10,
            trust_env=False,
        ).json()
        if [t["state_type"] for t in task_runs] == ["COMPLETED"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [t["state_type"] for t in task_runs] == ["COMPLETED"]
    page = httpx.get(server.flow_run_url(info, flow_run_id), timeout=5, trust_env=False)
    assert page.status_code == 200


# --------------------------------------------------------------------------- database


def test_worker_env_keeps_the_database_secrets_out_of_flow_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from helixflow.app.deploy import worker_env

    monkeypatch.setenv("HELIXFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("HELIXFLOW_STORE", str(tmp_path / "store"))
    monkeypatch.setenv(server_database.DATABASE_ENV, "postgresql://hf:topsecret@127.0.0.1/prefect")
    monkeypatch.setenv(server_database.PASSWORD_ENV, "topsecret")
    env = worker_env("http://127.0.0.1:1/api")
    assert not [k for k, v in env.items() if "topsecret" in v]


@pytest.mark.integration
def test_server_start_on_postgresql_records_flow_runs_there_and_hides_the_password(
    home: Path, postgres: LocalPostgres
) -> None:
    """`helixflow server start --database postgresql+asyncpg://…` (password in the URL): the
    server runs on that database, a flow run lands in its `flow_run` table, and the password
    is in neither the CLI's output nor the server's log or state file."""
    database = postgres.create_database("hf_test_server_start")
    url = postgres.url(database, password=True)
    password = postgres.password.get_secret_value()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PYTHONPATH": str(REPO), "HELIXFLOW_HOME": str(home), "COLUMNS": "200"})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "helixflow", *args], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300, check=False)

    started = cli("server", "start", "--database", url)
    assert started.returncode == 0, started.stderr[-3000:]
    masked = postgres.url(database).replace(f"{postgres.user}@", f"{postgres.user}:***@")
    assert f"database {masked}" in started.stdout
    status = cli("server", "status")
    assert status.returncode == 0 and masked in status.stdout
    info = server.server_status(home)
    assert info is not None and info.database == masked

    script = textwrap.dedent("""
        from prefect import flow

        @flow(name="pg-probe")
        def probe() -> int:
            return 7

        assert probe() == 7
    """)
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env={**env, "PREFECT_API_URL": info.api_url}, check=False)
    assert ran.returncode == 0, ran.stderr[-3000:]
    rows = postgres.fetch("select f.name, r.state_type from flow_run r join flow f "
                          "on f.id = r.flow_id", database)
    assert [(r["name"], r["state_type"]) for r in rows] == [("pg-probe", "COMPLETED")]
    assert not (home / "prefect" / "prefect.db").exists()  # no SQLite on the side

    # Asking for another database while it runs is one clear error, still masked.
    other = cli("server", "start", "--database", postgres.url("hf_other", password=True))
    assert other.returncode == 1 and "runs on" in other.stderr and masked in other.stderr

    stopped = cli("server", "stop")
    assert stopped.returncode == 0
    for text in (started.stdout, started.stderr, status.stdout, status.stderr, other.stdout,
                 other.stderr, (home / server.LOG_FILE).read_text(), info.database):
        assert password not in text


@pytest.mark.integration
def test_server_start_with_a_wrong_password_fails_without_showing_it(
    home: Path, postgres: LocalPostgres
) -> None:
    database = postgres.create_database("hf_test_wrong_password")
    wrong = "wrong-pw-5d1f"
    with pytest.raises(HelixflowError, match="exited with code") as err:
        server.ensure_server(home, database=postgres.url(database).replace(
            f"{postgres.user}@", f"{postgres.user}:{wrong}@"))
    assert "password authentication failed" in str(err.value)
    assert wrong not in str(err.value) and wrong not in (home / server.LOG_FILE).read_text()
    assert not (home / server_state.STATE_FILE).exists()


def test_server_records_task_runs_in_batches(tmp_path: Path) -> None:
    """The recorder settings reach Prefect under the names it reads (a misspelt variable
    would be ignored silently)."""
    env = server.server_env(tmp_path, port=4321)
    probe = ("from prefect.settings import get_current_settings as s; "
             "r = s().server.services.task_run_recorder; "
             "print(r.read_batch_size, r.batch_size, r.flush_interval)")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["100", "100", "1.0"]
