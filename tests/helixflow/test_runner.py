"""helixflow.runner against a real local Ray cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helixflow.runner import reap_orphaned_ray_agents
from tests.conftest import descendants

_DRIVER = ("import ray, time; ray.init(address='local', num_cpus=1, include_dashboard=False); "
           "print('up', flush=True); time.sleep(600)")


def _titles(pids: set[int]) -> dict[int, str]:
    out = {}
    for pid in pids:
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
    return out


@pytest.mark.integration
def test_agents_of_a_killed_driver_are_reaped_and_live_ones_kept() -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
        deadline = time.monotonic() + 60
        while not any(t.startswith("ray::") and t.endswith("Agent")
                      for t in _titles(descendants(proc.pid)).values()):
            assert time.monotonic() < deadline, "the cluster's agents never started"
            time.sleep(0.2)
        tree = descendants(proc.pid)
        agents = {p for p, t in _titles(tree).items() if t.startswith("ray::")
                  and t.endswith("Agent")}
        assert not set(reap_orphaned_ray_agents()) & tree  # a live node's agents stay
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60  # the raylet dies with its driver; agents don't
        while any("raylet" in t for t in _titles(tree).values()):
            assert time.monotonic() < deadline, "the raylet outlived its driver"
            time.sleep(0.2)
        # Ray 2.60 leaves (mostly all of) them running: without the reap they outlive the
        # deadline below. One may exit by itself meanwhile, so no exact set is asserted.
        reap_orphaned_ray_agents()
        deadline = time.monotonic() + 30
        while _titles(agents):
            assert time.monotonic() < deadline, _titles(agents)
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for pid in descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
def test_a_new_local_cluster_inherits_no_database_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The driver may hold the server's database password (it can start the server);
    the Ray cluster it starts (raylet, workers) must not see it."""
    import ray

    from helixflow.app.launch import _ray_session
    from helixflow.runner import build_task_runner

    secret = f"hfFakePgPassword{os.getpid()}"
    monkeypatch.setenv("HELIXFLOW_DATABASE_PASSWORD", secret)
    monkeypatch.setenv("HELIXFLOW_DATABASE_URL", f"postgresql+asyncpg://hf:{secret}@db/p")
    monkeypatch.setenv("PGPASSWORD", secret)

    @ray.remote
    def worker_env() -> dict[str, str]:
        return dict(os.environ)

    with _ray_session(build_task_runner("http://127.0.0.1:9/api")):
        seen = ray.get(worker_env.remote())
        environs = {}
        for pid in descendants(os.getpid()):  # raylet, GCS, agents, workers
            with contextlib.suppress(OSError):
                environs[pid] = Path(f"/proc/{pid}/environ").read_bytes()
    assert "PATH" in seen and not any(secret in v for v in seen.values())
    assert environs and not [pid for pid, env in environs.items() if secret.encode() in env]
    assert os.environ["PGPASSWORD"] == secret  # the driver's own environment is restored
