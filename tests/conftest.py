"""Shared fixtures: real services started once per session, data located or failed on in CI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from deployments.postgres import LocalPostgres

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """A service or data set is absent: fail in CI (it must be there), skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} is missing (CI=true: a missing service is a failure)")
    pytest.skip(f"{what} is missing")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, not `pid` itself (from /proc/<pid>/stat parent
    links: Ray's raylet, GCS, workers and actors under a `helixflow run`)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"external tool {name!r} (run scripts/install-system-deps.sh as root)")
    return str(path)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $HELIXFLOW_SHARED_DATA): real genomes and reads."""
    path = Path(os.environ.get("HELIXFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (path / "reads").is_dir():
        missing(f"shared data at {path}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def helixflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One HELIXFLOW_HOME for the session's pipeline tests."""
    home = tmp_path_factory.mktemp("helixflow-home")
    old = os.environ.get("HELIXFLOW_HOME")
    os.environ["HELIXFLOW_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("HELIXFLOW_HOME", None)
    else:
        os.environ["HELIXFLOW_HOME"] = old


@pytest.fixture(scope="session")
def prefect_api(helixflow_home: Path) -> Iterator[str]:
    """The one real Prefect server (SQLite) for the session; this process points at it."""
    from helixflow.app.server import ensure_server, flush_prefect_workers, stop_server, use_server

    info = ensure_server(helixflow_home)
    use_server(info)
    yield info.api_url
    flush_prefect_workers()  # send pending logs and events before it goes away
    stop_server(helixflow_home)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server process serving S3 (and SQS) over HTTP on loopback."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        missing("moto_server (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url,
    })
    yield url
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    stop_process(proc)


_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A one-node Slurm cluster: started by deployments/slurm/local-cluster.sh when root."""

    def up() -> bool:
        if shutil.which("sinfo") is None:
            return False
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                              check=False)
        # One line per partition of the node (a test may add a partition for a while).
        states = {line.rstrip("*~#") for line in proc.stdout.split()}
        return proc.returncode == 0 and bool(states) and states <= {
            "idle", "mixed", "allocated", "completing"}

    if not up() and os.geteuid() == 0:
        subprocess.run(["bash", str(REPO / "deployments" / "slurm" / "local-cluster.sh")],
                       check=False, timeout=900)
    if not up():
        missing("slurm (run deployments/slurm/local-cluster.sh as root)")
    return "local-cli"


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """The local PostgreSQL (deployments/postgres/local-postgres.sh, started here when root);
    tests make a throwaway database each with `create_database`, dropped at the end."""
    from deployments.postgres import LocalPostgres

    pg = LocalPostgres.from_env()
    if not pg.reachable() and not pg.start():
        missing("postgresql on 127.0.0.1 (run deployments/postgres/local-postgres.sh as root)")
    yield pg
    pg.drop_created()


class LineageReceiver:
    """A local OpenLineage HTTP endpoint (what Marquez serves): every RunEvent posted."""

    def __init__(self) -> None:
        import http.server
        import threading

        events = self.events = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/") == "/api/v1/lineage":
                    events.append(json.loads(body))
                    self.send_response(201)
                else:
                    self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def openlineage_receiver(monkeypatch: pytest.MonkeyPatch):
    """OpenLineage switched on (OPENLINEAGE_URL) and pointed at a local receiver."""
    receiver = LineageReceiver()
    monkeypatch.setenv("OPENLINEAGE_URL", receiver.url)
    monkeypatch.setenv("OPENLINEAGE_NAMESPACE", "helixflow-test")
    yield receiver
    receiver.close()
