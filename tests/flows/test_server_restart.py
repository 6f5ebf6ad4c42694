"""The local Prefect server restarted in the middle of a `helixflow run` (stop, then start
on the same port and SQLite database): the run carries on through the Prefect client's
retries of connection errors and completes, with task runs recorded on the restarted
server."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.app.server import ensure_server, stop_server
from tests.flows.test_stop import HELIXFLOW, wait_for

pytestmark = pytest.mark.integration


def test_run_survives_a_server_restart(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path / "home"  # its own server: the session's is not disturbed
    info = ensure_server(home, timeout=600)
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=800, n_genomes=2))
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"HELIXFLOW_HOME": str(home), "COLUMNS": "200"})
    with (tmp_path / "run.out").open("wb") as out, (tmp_path / "run.err").open("wb") as err:
        proc = subprocess.Popen(
            [HELIXFLOW, "run", str(demo.r1), str(demo.r2), "--store", str(store), "--embed",
             "kmer", "--no-simulate"], stdout=out, stderr=err, env=env)
    try:
        wait_for(lambda: list(store.glob("runs/*/qc/*")), "the first QC shard", proc=proc)
        assert stop_server(home)
        assert proc.poll() is None, "the run was still going when the server went away"
        restarted = ensure_server(home, timeout=600)
        restarted_at = datetime.now(UTC)
        assert restarted.api_url == info.api_url and restarted.pid != info.pid
        code = proc.wait(timeout=900)
        text = (tmp_path / "run.out").read_text()
        errors = (tmp_path / "run.err").read_text()
        assert code == 0, text + errors
        # 12: the 11 recorded tasks of this run before the MultiQC report joined every run
        assert "Traceback" not in errors and "12 task(s) executed, 0 from cache" in text
        flow_run_id = next(store.glob("runs/*")).name
        with temporary_settings({PREFECT_API_URL: info.api_url}), \
                get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
            tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run.id])))
        assert flow_run.state is not None and flow_run.state.is_completed()
        assert tasks and all(t.state is not None and t.state.is_completed() for t in tasks)
        assert any(t.end_time and t.end_time > restarted_at for t in tasks), \
            "no task finished on the restarted server"
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_server(home)
