"""A `helixflow run` stopped politely: SIGINT (Ctrl-C) while Ray tasks run, SIGTERM (a
Slurm/Kubernetes/systemd stop) while an MD job runs on the real Slurm cluster. Both end
the same way: exit 128 + signal, one line, no stack dump, the flow run Cancelled, no Ray
process or Slurm job of the run left, and the same command resumes from the cache."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from helixflow.app.demo import DemoSpec, write_demo
from tests.conftest import descendants
from tests.flows.test_simulate import slurm_md_inputs

pytestmark = pytest.mark.integration

HELIXFLOW = str(Path(sys.executable).with_name("helixflow"))
DUMP_MARKERS = ("Traceback", "*** SIG", "logging.cc", "PC: @", "Aborted", "core dumped")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 600,
              proc: subprocess.Popen[bytes] | None = None) -> Any:
    """Poll `condition` until it is truthy; fail after `timeout` s or if `proc` ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def alive(pids: set[int]) -> set[int]:
    """The pids that are still running (zombies count as gone)."""
    left = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            left.add(pid)
    return left


def running_flow_run(since: float) -> Any:
    """The top-level flow run started after `since` (epoch seconds) and still running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentTaskRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=True),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
    runs = [r for r in runs if r.start_time and r.start_time.timestamp() >= since]
    return runs[0] if len(runs) == 1 else None


def task_states(flow_run_id: UUID) -> dict[str, str]:
    """Task run name → state name, for one flow run and its sub-flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        runs = [flow_run_id] + [r.id for r in client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))]
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=runs)))
    return {t.name: t.state.name if t.state else "?" for t in tasks}


def flow_run_state(flow_run_id: UUID) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def run_jobs(flow_run_id: UUID) -> list[str]:
    """`id state` of the run's jobs that squeue still lists as not finished."""
    proc = subprocess.run(["squeue", "--noheader", "--format=%i|%j|%T"], capture_output=True,
                          text=True, check=True, timeout=60)
    return [f"{i} {s}" for i, name, s in (line.split("|") for line in proc.stdout.splitlines())
            if name.startswith(f"hf-{flow_run_id}")]


def start(args: list[str], api: str, tmp_path: Path, label: str) -> subprocess.Popen[bytes]:
    out = (tmp_path / f"{label}.out").open("wb")
    err = (tmp_path / f"{label}.err").open("wb")
    return subprocess.Popen([HELIXFLOW, "run", *args], stdout=out, stderr=err,
                            env={**os.environ, "PREFECT_API_URL": api, "COLUMNS": "200"},
                            start_new_session=True)


def texts(tmp_path: Path, label: str) -> tuple[str, str]:
    return ((tmp_path / f"{label}.out").read_text(), (tmp_path / f"{label}.err").read_text())


def check_stopped(proc: subprocess.Popen[bytes], sig: signal.Signals, flow_run_id: UUID,
                  ray_pids: set[int], tmp_path: Path) -> None:
    """The common outcome of a polite stop."""
    code = proc.wait(timeout=300)
    out, err = texts(tmp_path, "stopped")
    assert code == 128 + sig, (code, out, err)
    for marker in DUMP_MARKERS:
        assert marker not in out + err, (marker, err)
    lines = [line for line in err.splitlines() if line.startswith("cancelled:")]
    assert len(lines) == 1 and f"stopped by {sig.name}" in lines[0], err
    assert str(flow_run_id) in lines[0] and "resume from the cache" in lines[0]
    state = flow_run_state(flow_run_id)
    assert state.type.value == "CANCELLED" and state.message == f"stopped by {sig.name}"
    unfinished = {t: s for t, s in task_states(flow_run_id).items()
                  if s in ("Running", "Pending", "Scheduled")}
    assert not unfinished, unfinished
    assert ray_pids, "the run had Ray processes"
    wait_for(lambda: not alive(ray_pids), "the run's Ray processes to end", timeout=60)


def finished(flow_run_id: UUID) -> set[str]:
    """Names of the run's finished stage tasks (identify-input is keyed on the run, by
    design: an input file is identified again by every run, so it is never cached)."""
    return {name for name, state in task_states(flow_run_id).items()
            if state == "Completed" and not name.startswith("identify-")}


def check_resumed(args: list[str], api: str, tmp_path: Path, done_before: set[str]) -> str:
    """The same command again completes, and every task finished before the stop comes
    from the cache (Prefect state Cached: not executed again)."""
    proc = start(args, api, tmp_path, "rerun")
    assert proc.wait(timeout=900) == 0, texts(tmp_path, "rerun")
    out, _ = texts(tmp_path, "rerun")
    match = re.search(r"(\d+) task\(s\) executed, (\d+) from cache", out)
    assert match and int(match.group(2)) >= 1, out
    rerun_id = re.findall(r"/runs/flow-run/([0-9a-f-]{36})", out)[-1]
    again = task_states(UUID(rerun_id))
    assert done_before and {name: again.get(name) for name in done_before} == dict.fromkeys(
        done_before, "Cached"), again
    return out


def test_sigint_while_ray_tasks_run(prefect_api: str, tmp_path: Path) -> None:
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=800, n_genomes=2))
    args = [str(demo.r1), str(demo.r2), "--store", str(tmp_path / "store"), "--embed", "kmer",
            "--no-simulate"]
    since = time.time()
    proc = start(args, prefect_api, tmp_path, "stopped")
    flow_run = wait_for(lambda: running_flow_run(since), "the flow run", proc=proc)

    def some_done_some_running() -> bool:
        return bool(finished(flow_run.id)) and "Running" in task_states(flow_run.id).values()

    wait_for(some_done_some_running, "a finished stage task and a running one", proc=proc)
    done = finished(flow_run.id)
    ray_pids = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    check_stopped(proc, signal.SIGINT, flow_run.id, ray_pids, tmp_path)
    check_resumed(args, prefect_api, tmp_path, done)


def test_sigterm_while_a_slurm_job_runs(
    prefect_api: str, slurm_cluster: str, tmp_path: Path
) -> None:
    block, demo = slurm_md_inputs(tmp_path, "test-stop")
    args = [str(demo.r1), str(demo.r2), "--store", str(tmp_path / "store"), "--reference",
            str(demo.genomes), "--embed", "kmer", "--max-representatives", "1",
            "--md-steps", "2000", "--cluster-block", block]
    since = time.time()
    proc = start(args, prefect_api, tmp_path, "stopped")
    flow_run = wait_for(lambda: running_flow_run(since), "the flow run", proc=proc)
    jobs = wait_for(lambda: [j for j in run_jobs(flow_run.id) if j.endswith("RUNNING")],
                    "the MD job to run on Slurm", proc=proc)
    done = finished(flow_run.id)
    ray_pids = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)  # what Slurm, Kubernetes and systemd send
    check_stopped(proc, signal.SIGTERM, flow_run.id, ray_pids, tmp_path)
    wait_for(lambda: not run_jobs(flow_run.id), f"squeue to drop the run's jobs ({jobs})",
             timeout=60)
    out = check_resumed(args, prefect_api, tmp_path, done)
    assert "MD trajectory:" in out
