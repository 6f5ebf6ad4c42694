"""`helixflow deploy` and `helixflow worker`: the deployments of prefect.yaml on a server,
and a process worker that runs them with the store as Prefect's result storage.

Deploying is Prefect's own `prefect deploy` (run on the project's prefect.yaml), preceded
by what it needs and does not do itself: the block types and default documents the
deployments name, and the process work pool with its concurrency limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helixflow.errors import HelixflowError

REPO = Path(__file__).resolve().parents[2]  # the checkout: prefect.yaml is at its root
POOL = "helixflow-process"
DEPLOYMENTS = ("genomics-pipeline", "embed-refresh", "md-campaign")


def ensure_work_pool(name: str = POOL, concurrency: int | None = None) -> str:
    """Create the process work pool if missing; set its concurrency limit (runs beyond it
    wait in the queue as Scheduled/Late, none is dropped)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            pool = client.create_work_pool(WorkPoolCreate(
                name=name, type="process", base_job_template=template,
                concurrency_limit=concurrency,
                description="helixflow flow runs, one process each"))
            return "created"
        if concurrency is not None and pool.concurrency_limit != concurrency:
            client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency))
            return "updated"
    return "kept"


def prefect_deploy(api_url: str, names: list[str] | None = None) -> str:
    """`prefect deploy` of prefect.yaml's deployments (all, or `names`); its output."""
    unknown = set(names or ()) - set(DEPLOYMENTS)
    if unknown:
        raise HelixflowError(f"no deployment named {', '.join(sorted(unknown))}",
                             hint=f"deployments: {', '.join(DEPLOYMENTS)}")
    selection = ["--all"] if not names else [a for n in names for a in ("--name", n)]
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_CLI_PROMPT": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", *selection],
        cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise HelixflowError(f"prefect deploy failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def worker_env(api_url: str) -> dict[str, str]:
    """The environment of a worker whose flow runs persist Prefect results in the default
    store (as `helixflow run` does), so task caches are shared with CLI runs; without the
    server's database URL and password."""
    from helixflow.app.server import DATABASE_ENV, PASSWORD_ENV
    from helixflow.blocks.store import resolve_store, result_storage
    from helixflow.settings import helixflow_home

    # Flow runs talk to the API, never to its database: its URL and password stay here.
    env = {k: v for k, v in os.environ.items() if k not in (DATABASE_ENV, PASSWORD_ENV)}
    env.update({"PREFECT_API_URL": api_url, "HELIXFLOW_HOME": str(helixflow_home()),
                "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true"})
    storage = result_storage(resolve_store())
    if isinstance(storage, Path):
        env["PREFECT_LOCAL_STORAGE_PATH"] = str(storage)
    else:
        env["PREFECT_DEFAULT_RESULT_STORAGE_BLOCK"] = f"s3-bucket/{storage._block_document_name}"
    return env


def worker_command(pool: str = POOL, *, limit: int | None = None,
                   run_once: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool,
           "--type", "process"]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if run_once:
        cmd.append("--run-once")
    return cmd
