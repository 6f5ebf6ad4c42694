"""The Slurm sub-flow against a real one-node cluster (deployments/slurm/local-cluster.sh),
and the same scripts through the local fallback."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from helixflow.blocks.slurm import SlurmCluster
from helixflow.flows.slurm import run_slurm_jobs
from helixflow.slurm import JobSpec, QueueEntry, SlurmJobFailed
from helixflow.slurm_backends import LocalBackend, SlurmCli
from helixflow.slurm_jobs import run_jobs
from helixflow.store import Store, local_path
from tests.conftest import REPO, missing, require_tool

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


def make_cluster(tmp_path: Path, mode: str = "local-cli", **kw: object) -> SlurmCluster:
    settings: dict[str, object] = dict(
        mode=mode, scratch_dir=str(tmp_path / "scratch"), poll_interval=0.2, poll_backoff=1.5,
        poll_max_interval=1.0, sentinel_timeout=2.0, default_mem_mb=100, default_time_limit=5,
    )
    settings.update(kw)
    return SlurmCluster(**settings)  # type: ignore[arg-type]


def squeue_state(job_id: str) -> str:
    proc = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%T", "-j", job_id],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "GONE"


def cancel_and_wait(flow_run_name: str, job_id: str) -> float:
    """Cancel the named flow run as the UI does; seconds until its job left the queue."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=[flow_run_name])))
        assert len(runs) == 1
        t0 = time.monotonic()
        client.set_flow_run_state(runs[0].id, Cancelling(), force=True)
    while time.monotonic() - t0 < 30 and squeue_state(job_id) in ("RUNNING", "PENDING",
                                                                   "COMPLETING"):
        time.sleep(0.1)
    latency = time.monotonic() - t0
    assert squeue_state(job_id) in ("CANCELLED", "GONE")  # within the 30 s deadline above
    return latency


def start_sleeper(name: str, cluster: SlurmCluster, store: Store
                  ) -> tuple[threading.Thread, dict[str, object], str]:
    """Run the Slurm sub-flow `name` with one `sleep 300` job in a thread; -> the thread,
    its outcome ("state" once it returns) and the job id once the job is RUNNING."""
    jobs = [JobSpec(name="sleeper", commands=[["sleep", "300"]])]
    outcome: dict[str, object] = {}

    def target() -> None:
        outcome["state"] = run_slurm_jobs.with_options(flow_run_name=name)(
            jobs, cluster=cluster, store=store.url, run_id=name, return_state=True)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    job_id = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not job_id:
        proc = subprocess.run(
            ["squeue", "--noheader", "--format=%i|%T", f"--name=hf-{name}-sleeper"],
            capture_output=True, text=True, check=False, timeout=30)
        if "RUNNING" in proc.stdout:
            job_id = proc.stdout.split("|")[0].strip()
        time.sleep(0.2)
    assert job_id, "the job did not start"
    return thread, outcome, job_id


def copy_jobs(src: Path, n: int) -> list[JobSpec]:
    return [JobSpec(name=f"copy-{i}",
                    commands=[["bash", "-c", f"cat in.txt > out.txt; echo task {i} >> out.txt"]],
                    inputs={"in.txt": src}, outputs=["out.txt"]) for i in range(n)]


def test_array_of_three_completes_and_outputs_reach_the_store(
    prefect_api: str, slurm_cluster: str, tmp_path: Path, store: Store
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("from the store\n")
    ref = store.publish(src, run_id="r-array", stage="inputs", move=False).ref()
    jobs = [JobSpec(name=f"copy-{i}",
                    commands=[["bash", "-c", f"cat in.txt > out.txt; echo task {i} >> out.txt"]],
                    inputs={"in.txt": ref}, outputs=["out.txt"]) for i in range(3)]
    cluster = make_cluster(tmp_path, max_concurrent=2)
    start = time.monotonic()
    results = run_slurm_jobs(jobs, cluster=cluster, store=store.url, run_id="r-array",
                             stage="sim")
    elapsed = time.monotonic() - start
    assert [r.state for r in results] == ["COMPLETED"] * 3
    assert [r.exit_code for r in results] == [0, 0, 0]
    bases = {r.job_id.split("_")[0] for r in results}
    assert len(bases) == 1, "three similar jobs go as one array"
    for i, result in enumerate(results):
        art = result.outputs["out.txt"]
        assert art.uri == store.run_uri("r-array", "sim", f"copy-{i}", "out.txt")
        assert store.read_bytes(art.uri) == f"from the store\ntask {i}\n".encode()
    assert not (tmp_path / "scratch" / "r-array").exists() or not any(
        (tmp_path / "scratch" / "r-array").iterdir()), "scratch removed after success"
    print(f"3-task array: submit to all COMPLETED + published in {elapsed:.1f} s")


def test_failure_surfaces_stderr_and_fails_the_flow(
    prefect_api: str, slurm_cluster: str, tmp_path: Path, store: Store
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

    jobs = [JobSpec(name="boom", commands=[
        ["bash", "-c", "echo working; echo 'disk on fire: /dev/sdz' >&2; exit 3"]])]
    state = run_slurm_jobs(jobs, cluster=make_cluster(tmp_path), store=store.url,
                           run_id="r-fail", return_state=True)
    assert state.is_failed()
    with pytest.raises(SlurmJobFailed) as info:
        state.result()
    err = info.value
    assert err.state == "FAILED" and err.exit_code == 3
    assert "disk on fire: /dev/sdz" in str(err)
    assert "working" not in err.stderr_tail  # stdout is not stderr
    with get_client(sync_client=True) as client:
        flow_run_id = state.state_details.flow_run_id
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter())
    job_runs = [r for r in runs if r.name == "slurm-job-boom"]
    assert job_runs and job_runs[0].state is not None and job_runs[0].state.is_failed()
    assert job_runs[0].state.name == "Failed"


def test_cancelling_the_flow_run_scancels_its_jobs(
    prefect_api: str, slurm_cluster: str, tmp_path: Path, store: Store
) -> None:

    name = f"cancel-{uuid.uuid4().hex[:8]}"
    thread, outcome, job_id = start_sleeper(name, make_cluster(tmp_path), store)
    latency = cancel_and_wait(name, job_id)
    thread.join(timeout=60)
    state = outcome["state"]
    assert state.is_cancelled(), state  # type: ignore[attr-defined]
    print(f"cancel → job left the running states in {latency:.2f} s")


class HidingSlurm(SlurmCli):
    """Real Slurm, but the queue never shows the jobs: as if slurmctld had purged their
    records (MinJobAge) while nobody polled. The one double left: the one-node cluster
    cannot lose a job record short of wiping slurmctld's state."""

    def poll(self, job_ids: Sequence[str]) -> dict[str, QueueEntry] | None:
        super().poll(job_ids)
        return {}


def test_a_job_that_vanished_without_its_sentinel_is_an_error(
    slurm_cluster: str, tmp_path: Path, store: Store
) -> None:
    cluster = make_cluster(tmp_path, sentinel_timeout=1.5)
    jobs = [JobSpec(name="ghost", commands=[["sleep", "300"]])]
    start = time.monotonic()
    with pytest.raises(SlurmJobFailed, match="VANISHED") as info:
        run_jobs(jobs, cluster, store, "r-ghost", backend=HidingSlurm())
    assert time.monotonic() - start < 30
    assert "wrote no .exitcode" in str(info.value)
    time.sleep(1)
    assert squeue_state(info.value.job_id) in ("CANCELLED", "GONE", "COMPLETING")


def test_gromacs_runs_inside_a_slurm_job(
    slurm_cluster: str, tmp_path: Path, store: Store
) -> None:
    require_tool("gmx")
    jobs = [JobSpec(name="gmx-version", commands=[["gmx", "--version"]])]
    [result] = run_jobs(jobs, make_cluster(tmp_path), store, "r-gmx")
    assert result.state == "COMPLETED"
    assert "GROMACS version" in result.stdout_tail


def test_missing_output_is_an_error(slurm_cluster: str, tmp_path: Path, store: Store) -> None:
    jobs = [JobSpec(name="lazy", commands=[["true"]], outputs=["result.dat"])]
    with pytest.raises(SlurmJobFailed, match=r"without writing result\.dat"):
        run_jobs(jobs, make_cluster(tmp_path), store, "r-lazy")


@pytest.mark.slow
def test_time_limit_gives_timeout_with_slurm_message(
    slurm_cluster: str, tmp_path: Path, store: Store
) -> None:
    jobs = [JobSpec(name="slowpoke", commands=[["sleep", "600"]], time_limit=1)]
    with pytest.raises(SlurmJobFailed) as info:
        run_jobs(jobs, make_cluster(tmp_path, poll_max_interval=3.0), store, "r-timeout")
    assert info.value.state == "TIMEOUT"
    assert "TIME LIMIT" in str(info.value)
    assert "time_limit" in (info.value.hint or "")


# -- the local fallback: the same scripts, no Slurm ----------------------------------------


def test_local_fallback_runs_the_same_jobs_without_slurm(tmp_path: Path, store: Store) -> None:
    src = tmp_path / "in.txt"
    src.write_text("local\n")
    cluster = make_cluster(tmp_path, mode="none", max_concurrent=2)
    results = run_jobs(copy_jobs(src, 3), cluster, store, "r-local", stage="sim")
    assert [r.state for r in results] == ["COMPLETED"] * 3
    assert all(r.job_id.startswith("local-") for r in results)
    for i, r in enumerate(results):
        assert local_path(r.outputs["out.txt"].uri).read_text() == f"local\ntask {i}\n"
    bad = [JobSpec(name="bad", commands=[["bash", "-c", "echo nope >&2; exit 3"]])]
    with pytest.raises(SlurmJobFailed, match="nope") as info:
        run_jobs(bad, cluster, store, "r-local-bad")
    assert info.value.exit_code == 3 and info.value.state == "FAILED"


def test_local_fallback_through_the_flow_with_no_block(
    prefect_api: str, tmp_path: Path, store: Store
) -> None:
    jobs = [JobSpec(name="hello", commands=[["bash", "-c", "echo hi > hello.txt"]],
                    outputs=["hello.txt"])]
    [result] = run_slurm_jobs(jobs, store=store.url, run_id="r-noblock")
    assert result.state == "COMPLETED"
    assert store.read_bytes(result.outputs["hello.txt"].uri) == b"hi\n"


def test_local_backend_time_limit_and_cancel(tmp_path: Path) -> None:
    backend = LocalBackend(max_concurrent=1)
    for name in ("a", "b"):
        job_dir = tmp_path / name
        job_dir.mkdir()
        (job_dir / "job.sh").write_text("sleep 30\n")
    [slow] = backend.submit(str(tmp_path / "a" / "job.sh"), 1, False, time_limits=[0.5])
    [queued] = backend.submit(str(tmp_path / "b" / "job.sh"), 1, False, time_limits=[None])
    assert backend.poll([slow, queued]) is not None
    assert backend.jobs[queued].state == "PENDING"  # max_concurrent=1
    deadline = time.monotonic() + 10
    while backend.jobs[slow].state != "TIMEOUT" and time.monotonic() < deadline:
        backend.wait(0.2)
        backend.poll([slow, queued])
    assert backend.jobs[slow].state == "TIMEOUT"
    assert backend.jobs[queued].state == "RUNNING"
    backend.cancel([queued])
    while backend.jobs[queued].state == "RUNNING" and time.monotonic() < deadline:
        backend.wait(0.2)
        backend.poll([queued])
    assert backend.jobs[queued].state == "CANCELLED"


def test_ssh_mode_argv_without_a_server(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSH mode end to end against a recording runner: rsync up, sbatch/squeue over ssh."""
    import helixflow.slurm_backends as slurm_backends

    calls: list[list[str]] = []
    scripts: list[str] = []

    def fake(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        if argv[0] == "rsync" and not scripts:  # the push: what would be copied up
            scripts.extend(p.read_text() for p in tmp_path.rglob("job.sh"))
        remote = argv[-1] if argv[0] == "ssh" else ""
        out = ""
        if remote.startswith("sbatch"):
            out = "77\n"
        elif remote.startswith("squeue"):
            out = "77|COMPLETED|None\n"
        elif remote.startswith("cat") and remote.endswith(".exitcode"):
            out = "0\n"
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(slurm_backends, "run_local", fake)
    cluster = SlurmCluster(mode="ssh", ssh_host="login.hpc", ssh_user="ana",
                           scratch_dir="/remote/scratch", local_staging_dir=str(tmp_path),
                           poll_interval=0.05, poll_max_interval=0.05)
    jobs = [JobSpec(name="j1", commands=[["echo", "$(whoami)"]])]
    [result] = run_jobs(jobs, cluster, store, "r-ssh")
    assert result.state == "COMPLETED" and result.job_id == "77"
    kinds = [c[0] for c in calls]
    assert kinds[0] == "rsync" and calls[0][-1].startswith("ana@login.hpc:/remote/scratch/r-ssh/")
    remote_cmds = [c[-1] for c in calls if c[0] == "ssh"]
    assert all(c[c.index("ana@login.hpc") + 1] == "--" for c in calls if c[0] == "ssh")
    assert remote_cmds[0].startswith("sbatch --parsable /remote/scratch/r-ssh/")
    assert any(c.startswith("squeue --noheader") and "--jobs=77" in c for c in remote_cmds)
    assert remote_cmds[-1].startswith("rm -rf -- /remote/scratch/r-ssh/")
    [script] = scripts
    assert "__hf_dir=/remote/scratch/r-ssh/" in script
    assert "__hf_run echo '$(whoami)'" in script


# -- faults produced by the real cluster ----------------------------------------------------
# deployments/slurm/local-cluster.sh configures them: jobacct_gather/linux + OverMemoryKill
# (memory), preempt/partition_prio (a low-tier partition created for the test is preempted
# by `debug`); a node set DOWN is Slurm's own NODE_FAIL. Each test waits on squeue states
# with deadlines, never a sleep.

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 90.0) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def slurm(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)


def jobs_named(run_id: str, name: str) -> list[tuple[str, str]]:
    """(job id, state) of every Slurm job of this run's job `name`, oldest first."""
    out = slurm("squeue", "--noheader", "--states=all", "--format=%i|%T",
                f"--name=hf-{run_id}-{name}").stdout
    rows = [tuple(line.split("|", 1)) for line in out.split() if "|" in line]
    return sorted(((j, st) for j, st in rows), key=lambda row: int(row[0]))  # type: ignore[misc]


def attempt(run_id: str, name: str, n: int, state: str | None = None) -> Callable[[], str]:
    """A condition: the id of attempt `n` (1-based) of the job, once it is in `state`."""
    def check() -> str:
        rows = jobs_named(run_id, name)
        if len(rows) >= n and (state is None or rows[n - 1][1] == state):
            return rows[n - 1][0]
        return ""
    return check


def node_state(node: str) -> str:
    return slurm("sinfo", "--noheader", "-N", "-n", node, "-o", "%T").stdout.strip()


def resume_node(node: str) -> None:
    """Bring the node back if it is still down or drained (ReturnToService=2 may already
    have: slurmd re-registers at once), and wait until it takes jobs again."""
    if any(word in node_state(node) for word in ("down", "drain", "fail")):
        slurm("scontrol", "update", f"nodename={node}", "state=resume")
    wait_for(lambda: node_state(node).rstrip("*~#") in ("idle", "mixed", "allocated"),
             f"node {node} to take jobs again", timeout=60)


class Background:
    """`fn(*args)` in a thread (the sub-flow keeps polling while the test injects a fault)."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = fn(*args, **kw)
            except BaseException as exc:  # handed to the test by outcome()
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def outcome(self, timeout: float = 120.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the sub-flow did not return within {timeout:g} s"
        if self.error is not None:
            raise self.error
        return self.result


def waiting_job(name: str, go: Path) -> JobSpec:
    """A job that runs until the test creates `go`, then writes out.txt: no attempt can
    finish before the fault is injected."""
    return JobSpec(name=name, outputs=["out.txt"], commands=[[
        "bash", "-c", 'while [ ! -e "$1" ]; do sleep 0.2; done; echo ok > out.txt', "wait",
        str(go)]])


@pytest.fixture(scope="module")
def slurm_faults(slurm_cluster: str) -> str:
    """The local cluster with its fault enforcement configured; -> the node's name."""
    if os.geteuid() == 0:  # idempotent: upgrades a slurm.conf written by an older version
        subprocess.run(["bash", str(REPO / "deployments" / "slurm" / "local-cluster.sh")],
                       check=False, timeout=900)
    config = slurm("scontrol", "show", "config").stdout
    if "OverMemoryKill" not in config or "preempt/partition_prio" not in config:
        missing("Slurm memory enforcement and preemption "
                "(run deployments/slurm/local-cluster.sh as root)")
    return slurm("sinfo", "--noheader", "-N", "-o", "%N").stdout.split()[0]


def test_node_set_down_gives_node_fail_and_the_job_is_resubmitted(
    slurm_faults: str, tmp_path: Path, store: Store
) -> None:
    node, run_id, go = slurm_faults, f"r-node-{uuid.uuid4().hex[:6]}", tmp_path / "go"
    run = Background(run_jobs, [waiting_job("survivor", go)], make_cluster(tmp_path), store,
                     run_id)
    try:
        first = wait_for(attempt(run_id, "survivor", 1, "RUNNING"), "attempt 1 to run")
        # helixflow jobs are --no-requeue (helixflow owns retries): Slurm refuses a requeue.
        refused = slurm("scontrol", "requeue", first)
        assert refused.returncode != 0 and "disabled" in refused.stderr
        t0 = time.monotonic()
        down = slurm("scontrol", "update", f"nodename={node}", "state=down",
                     "reason=helixflow-node-fail-test")
        assert down.returncode == 0, down.stderr
        wait_for(attempt(run_id, "survivor", 1, "NODE_FAIL"), "Slurm to call it NODE_FAIL")
        second = wait_for(attempt(run_id, "survivor", 2), "the resubmission")
        resubmitted_after = time.monotonic() - t0
    finally:
        resume_node(node)
        go.touch()
    [result] = run.outcome()
    assert result.state == "COMPLETED" and result.attempts == 2
    assert result.job_id == second != first
    assert store.read_bytes(result.outputs["out.txt"].uri) == b"ok\n"
    assert [st for _, st in jobs_named(run_id, "survivor")] == ["NODE_FAIL", "COMPLETED"]
    print(f"node DOWN → NODE_FAIL → resubmitted in {resubmitted_after:.1f} s")


def hog(name: str, megabytes: int, mem_mb: int) -> JobSpec:
    """A job that says on stderr what it allocates, then holds `megabytes` of touched memory
    for 3 s (the memory sampler looks every second) and writes out.txt."""
    code = ("import sys, time; n = int(sys.argv[1]); print(f'allocating {n} MB', "
            "file=sys.stderr, flush=True); b = b'x' * (n << 20); time.sleep(3); "
            "open('out.txt', 'w').write(str(len(b)))")
    return JobSpec(name=name, commands=[["python3", "-c", code, str(megabytes)]],
                   mem_mb=mem_mb, outputs=["out.txt"])


def test_out_of_memory_is_retried_with_twice_the_memory(
    slurm_faults: str, tmp_path: Path, store: Store
) -> None:
    run_id = f"r-oom-{uuid.uuid4().hex[:6]}"
    [result] = run_jobs([hog("hog", 300, mem_mb=200)], make_cluster(tmp_path), store, run_id)
    assert result.state == "COMPLETED"
    assert (result.attempts, result.mem_mb) == (2, 400)
    assert store.read_bytes(result.outputs["out.txt"].uri) == str(300 << 20).encode()
    [(first, slurm_said), (second, _)] = jobs_named(run_id, "hog")
    assert second == result.job_id
    # Slurm 22.05's OverMemoryKill ends the job FAILED; slurmstepd's message makes it OOM.
    assert slurm_said in ("FAILED", "OUT_OF_MEMORY")
    # What each attempt asked Slurm for: 200 MB, then twice that.
    assert "MinMemoryNode=200M" in slurm("scontrol", "show", "job", first).stdout
    assert "MinMemoryNode=400M" in slurm("scontrol", "show", "job", second).stdout


def test_out_of_memory_surfaces_with_the_jobs_stderr(
    slurm_faults: str, tmp_path: Path, store: Store
) -> None:
    run_id = f"r-oom-{uuid.uuid4().hex[:6]}"
    with pytest.raises(SlurmJobFailed) as info:
        run_jobs([hog("glutton", 1000, mem_mb=100)], make_cluster(tmp_path, max_resubmits=1),
                 store, run_id)
    err = info.value
    assert err.state == "OUT_OF_MEMORY" and err.exit_code == 137  # SIGKILL
    assert "allocating 1000 MB" in err.stderr_tail  # the job's own stderr
    assert "exceeded memory limit" in err.stderr_tail  # and slurmstepd's verdict
    assert "attempt 2" in str(err) and "--mem 200 MB" in str(err)  # 100 MB, then 200 MB
    assert "mem_mb" in (err.hint or "")
    assert len(jobs_named(run_id, "glutton")) == 2  # max_resubmits=1: two attempts, no more
    assert not store.exists(store.run_uri(run_id, "slurm", "glutton", "out.txt"))


def test_preempted_job_is_resubmitted_once_and_reported_once(
    prefect_api: str, slurm_faults: str, tmp_path: Path, store: Store
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    node, run_id, go = slurm_faults, f"r-preempt-{uuid.uuid4().hex[:6]}", tmp_path / "go"
    scavenger = f"hf-scavenger-{uuid.uuid4().hex[:6]}"
    made = slurm("scontrol", "create", f"PartitionName={scavenger}", f"Nodes={node}",
                 "PriorityTier=1", "PreemptMode=CANCEL", "Hidden=YES", "State=UP")
    assert made.returncode == 0, made.stderr
    preemptor = ""
    try:
        cluster = make_cluster(tmp_path, partition=scavenger)
        run = Background(run_slurm_jobs, [waiting_job("keeper", go)], cluster=cluster,
                         store=store.url, run_id=run_id, return_state=True)
        first = wait_for(attempt(run_id, "keeper", 1, "RUNNING"), "attempt 1 to run")
        # A job of the higher-tier partition that needs the whole node preempts it.
        proc = slurm("sbatch", "--parsable", "--partition=debug", "--exclusive",
                     f"--job-name=hf-{run_id}-preemptor", "--output=/dev/null", "--wrap=true")
        assert proc.returncode == 0, proc.stderr
        preemptor = proc.stdout.strip()
        wait_for(attempt(run_id, "keeper", 1, "PREEMPTED"), "Slurm to preempt attempt 1")
        second = wait_for(attempt(run_id, "keeper", 2), "the resubmission")
        go.touch()
        state = run.outcome()
    finally:
        go.touch()
        slurm("scancel", f"--partition={scavenger}")
        if preemptor:
            slurm("scancel", preemptor)
        wait_for(lambda: not jobs_named(run_id, "keeper") or all(
            st not in ("PENDING", "RUNNING", "COMPLETING") for _, st in jobs_named(
                run_id, "keeper")), "the test's jobs to end")
        slurm("scontrol", "delete", f"PartitionName={scavenger}")
    [result] = state.result()
    assert result.state == "COMPLETED" and result.attempts == 2
    assert result.job_id == second != first
    assert store.read_bytes(result.outputs["out.txt"].uri) == b"ok\n"
    # Published once, by the attempt that completed: one file in the run's folder.
    art = result.outputs["out.txt"]
    assert store.glob(store.run_uri(run_id, "**", "*.txt")) == [art.uri]
    assert art.metadata["attempts"] == 2 and art.params["job_id"] == second
    # One Prefect task run for the job, whatever Slurm did to it; it ends Completed, and the
    # preemption shows as AwaitingRetry, never as a failure.
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        job_runs = [r for r in runs if r.name == "slurm-job-keeper"]
        assert len(job_runs) == 1
        history = client.read_task_run_states(job_runs[0].id)
    assert job_runs[0].state is not None and job_runs[0].state.is_completed()
    assert not [s for s in history if s.is_failed() or s.is_crashed()]
    [retry] = [s for s in history if s.name == "AwaitingRetry"]
    assert f"Slurm job {first} ended PREEMPTED" in (retry.message or "")
