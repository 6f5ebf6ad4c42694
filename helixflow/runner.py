"""The Ray task runner: a local cluster by default, or an existing one by address.

Every Ray worker gets the one Prefect server's URL through the runtime env, so task
runs executed on workers report to the same server as the flow run (without it, each
worker would start a temporary server of its own). When connecting to an existing
cluster, helixflow's own packages are shipped with the job (`py_modules`), so workers
that never had helixflow installed can still run its tasks.

A new local cluster listens on 127.0.0.1 only (`loopback_node`): no dashboard, and GCS,
raylet, object manager, workers and agents on the loopback interface, so nothing on the
network can reach them. A cluster joined by address keeps its own configuration.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect_ray.task_runners import RayTaskRunner

from helixflow.settings import without_server_secrets

# Environment that workers need and may safely see (no secrets: those come from blocks
# or the worker's own environment).
_PASS_THROUGH = (
    "HELIXFLOW_HOME",
    "HELIXFLOW_STORE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "OPENLINEAGE_URL",  # a failed task's FAIL event is sent from its worker
    "OPENLINEAGE_CONFIG",
    "OPENLINEAGE_NAMESPACE",
    "OPENLINEAGE_DISABLED",
)


def project_modules() -> list[str]:
    """The `helixflow` package as one folder, for a remote worker's `py_modules`.

    Installed from a wheel it already is one folder. From a checkout, `helixflow.tasks`,
    `.flows` and `.blocks` live in the repository's top-level folders (setuptools
    `package-dir`), so they are copied into a staged `helixflow/` next to the core.
    Located with `find_spec`, not imported: the core imports no stage."""
    import helixflow

    root = Path(helixflow.__file__).parent
    parts = {}
    for name in ("tasks", "flows", "blocks"):
        spec = importlib.util.find_spec(f"helixflow.{name}")
        assert spec is not None and spec.submodule_search_locations, name
        parts[name] = Path(next(iter(spec.submodule_search_locations)))
    if all(path == root / name for name, path in parts.items()):
        return [str(root)]
    global _STAGED
    if _STAGED is None:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        staged = Path(tempfile.mkdtemp(prefix="helixflow-ship-")) / "helixflow"
        shutil.copytree(root, staged, ignore=ignore)
        for name, path in parts.items():
            shutil.copytree(path, staged / name, ignore=ignore)
        atexit.register(shutil.rmtree, staged.parent, ignore_errors=True)
        _STAGED = staged
    return [str(_STAGED)]


_STAGED: Path | None = None


def runtime_env(api_url: str, *, ship_code: bool) -> dict[str, Any]:
    env_vars = {
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
    }
    env_vars.update({k: os.environ[k] for k in _PASS_THROUGH if os.environ.get(k)})
    env: dict[str, Any] = {"env_vars": env_vars}
    if ship_code:
        env["py_modules"] = project_modules()
    return env


def build_task_runner(
    api_url: str, address: str | None = None, *, debug: bool = False
) -> RayTaskRunner:
    """A RayTaskRunner bound to `api_url`; a new local cluster on all cores when no address.

    Worker logs reach the Prefect UI through the API; they are echoed to this console
    only with `debug` (otherwise tracebacks of user mistakes would flood it).
    """
    init_kwargs: dict[str, Any] = {
        "runtime_env": runtime_env(api_url, ship_code=address is not None),
        "log_to_driver": debug,
    }
    if address is None:
        init_kwargs["include_dashboard"] = False
        init_kwargs["num_cpus"] = os.cpu_count() or 1
        # "local": a new cluster even when `ray start` left one on this machine (which a
        # bare ray.init() would join, with these num_cpus refused).
        address = "local"
    return LocalRayTaskRunner(address=address, init_kwargs=init_kwargs)


@contextlib.contextmanager
def loopback_node(address: str | None) -> Iterator[None]:
    """While a new local cluster starts (`address == "local"`), make Ray take 127.0.0.1 as
    this node's IP, so its servers bind the loopback interface, not every interface.

    `ray.init(_node_ip_address="127.0.0.1")` does not do it: Ray swaps a loopback address
    for the external one. Ray's own switch for a single-machine cluster is
    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (its default on macOS and Windows), read once at
    import into `ray_constants.ENABLE_RAY_CLUSTER`; it is set here for the start only.
    """
    import ray  # prefect_ray imports it lazily: load it whole before its submodules

    if address != "local" or ray.is_initialized():  # joining, or reusing this process's
        yield
        return
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


# Ray's per-node agents: a SIGKILLed driver takes its raylet and GCS with it, but these
# two stay (reparented, measured with Ray 2.60) until something stops them.
_RAY_AGENTS = (b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")


def reap_orphaned_ray_agents(proc: Path = Path("/proc")) -> list[int]:
    """SIGKILL this user's Ray agents whose raylet is gone (their parent is no raylet):
    the leftovers of a local cluster whose driver was killed. Agents of a live node are
    the raylet's children and are left alone. Returns the pids killed (Linux only)."""
    killed: list[int] = []
    uid = os.getuid()
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            if not (entry / "cmdline").read_bytes().startswith(_RAY_AGENTS):
                continue
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent = (proc / str(ppid) / "comm").read_text().strip() if ppid > 1 else ""
        except (OSError, ValueError, IndexError):  # exited meanwhile
            continue
        if parent != "raylet":
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    if killed:
        logging.getLogger(__name__).info(
            "stopped %d Ray agent(s) left by a killed run: %s", len(killed), killed)
    return killed


class LocalRayTaskRunner(RayTaskRunner):
    """A RayTaskRunner whose new local cluster listens on 127.0.0.1 only."""

    def __enter__(self) -> LocalRayTaskRunner:
        with loopback_node(self.address), without_server_secrets():
            return super().__enter__()  # type: ignore[return-value]


class DeferredRayTaskRunner(RayTaskRunner):
    """A RayTaskRunner configured when a flow run starts, not when its module is imported.

    The flows' default: a deployment's worker process imports the flow with its own
    environment (`PREFECT_API_URL`, `HELIXFLOW_RAY_ADDRESS`), and only then is it known
    which server the Ray workers must report to and which cluster to join.
    """

    def __enter__(self) -> DeferredRayTaskRunner:
        from prefect.settings import PREFECT_API_URL

        from helixflow.settings import ray_address

        api_url = PREFECT_API_URL.value()
        if api_url:
            wanted = self.address if self.address not in (None, "local") else ray_address()
            configured = build_task_runner(api_url, wanted)
            self.address, self.init_kwargs = configured.address, configured.init_kwargs
        with loopback_node(self.address), without_server_secrets():
            return super().__enter__()  # type: ignore[return-value]
