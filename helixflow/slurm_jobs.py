"""One set of batch jobs run to the end: stage, submit, poll, resubmit, collect, publish.

`run_jobs` is the body of the Slurm sub-flow (`helixflow.flows.slurm`), callable alone:
`SlurmRun` writes the job folders (inputs, scripts; similar jobs as one array), submits
them through a backend (`helixflow.slurm_backends`), polls with one batched call per cycle
(the interval backing off while nothing changes), resubmits NODE_FAIL/PREEMPTED (and
OUT_OF_MEMORY with twice the memory), mirrors each job's state on a Prefect task run,
surfaces failures with the job's stderr, and publishes the outputs to the store. If the
Prefect flow run (or a parent) is cancelled, or anything interrupts the run, the jobs are
cancelled. The cluster's settings come as a `ClusterSettings` (what the `SlurmCluster`
block holds), so this core module needs no block.
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from pydantic import SecretStr

from helixflow.artifacts import Artifact, FileRef
from helixflow.errors import HelixflowError
from helixflow.retries import transient_reason
from helixflow.slurm import (
    ARRAY_SCRIPT,
    EXITCODE_FILE,
    JOB_SCRIPT,
    STDERR_FILE,
    STDOUT_FILE,
    JobResult,
    JobSpec,
    SbatchOptions,
    SlurmJobFailed,
    SshTarget,
    array_spec,
    backoff,
    exit_status,
    grown_memory,
    job_name,
    literal_filename,
    normalise_state,
    posix_join,
    prefect_state,
    refine_state,
    render_array_script,
    render_job_script,
    state_rule,
    tail,
)
from helixflow.slurm_backends import Backend, Files, LocalBackend, Runner, make_backend
from helixflow.store import Store, is_local, local_path

_MAX_POLL_FAILURES = 20


class RunCancelled(HelixflowError):
    """The Prefect flow run was cancelled; its batch jobs were cancelled too."""


class ClusterSettings(Protocol):
    """What a run needs to know of its cluster (the fields of the `SlurmCluster` block)."""

    mode: str
    partition: str | None
    account: str | None
    qos: str | None
    default_cpus: int
    default_mem_mb: int
    default_time_limit: int
    scratch_dir: str
    setup_lines: list[str]
    signal: str | None
    extra_sbatch_args: list[str]
    max_concurrent: int | None
    max_resubmits: int
    poll_interval: float
    poll_backoff: float
    poll_max_interval: float
    sentinel_timeout: float
    keep_scratch: bool
    ssh_private_key: SecretStr | None
    local_staging_dir: str | None

    def ssh_target(self, key_path: str | None = None) -> SshTarget: ...


@dataclass
class _Task:
    spec: JobSpec
    index: int
    local_dir: Path
    script: str  # path (as jobs see it) of this task's own job.sh
    job_id: str = ""
    state: str = "PENDING"
    reason: str = ""
    attempts: int = 1
    mem_mb: int = 0  # what the current attempt asked for (grows after OUT_OF_MEMORY)
    exit_code: int | None = None
    missing_since: float | None = None
    submitted: float = 0.0
    finished: float = 0.0
    task_run_id: UUID | None = None

    @property
    def final(self) -> bool:
        return state_rule(self.state).final and self.finished > 0


@dataclass
class _Batch:
    tasks: list[_Task]
    script: str  # the script submitted (array.sh or the single job's job.sh)
    array: bool
    local_dir: Path


@dataclass
class _Registry:
    """Job ids per Prefect flow run, so a cancellation hook can `scancel` them."""

    jobs: dict[str, tuple[Backend, set[str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, flow_run_id: str, backend: Backend, ids: Sequence[str]) -> None:
        with self.lock:
            self.jobs.setdefault(flow_run_id, (backend, set()))[1].update(ids)

    def cancel(self, flow_run_id: str) -> list[str]:
        with self.lock:
            backend, ids = self.jobs.pop(flow_run_id, (None, set()))
        if backend is not None and ids:
            backend.cancel(sorted(ids))
        return sorted(ids)

    def drop(self, flow_run_id: str) -> None:
        with self.lock:
            self.jobs.pop(flow_run_id, None)


REGISTRY = _Registry()


class SlurmRun:
    """One sub-flow's jobs on one cluster: staging, submission, polling, collection."""

    def __init__(
        self,
        jobs: Sequence[JobSpec],
        cluster: ClusterSettings,
        store: Store,
        run_id: str,
        stage: str,
        *,
        backend: Backend,
        runner: Runner,
        as_array: bool = True,
        logger: Any = None,
        flow_run_ids: Sequence[UUID] = (),
        key_path: str | None = None,
    ) -> None:
        self.jobs = list(jobs)
        self.cluster = cluster
        self.store = store
        self.run_id = run_id
        self.stage = stage
        self.backend = backend
        self.as_array = as_array
        self.log = logger
        self.flow_run_ids = list(flow_run_ids)
        token = uuid.uuid4().hex[:8]
        if cluster.mode == "ssh":
            base = Path(cluster.local_staging_dir or tempfile.gettempdir()) / "helixflow-slurm"
            local_root = base / run_id / f"{stage}-{token}"
            remote_root = posix_join(cluster.scratch_dir, run_id, f"{stage}-{token}")
            # rsync must use the same key as ssh (the file written from ssh_private_key)
            self.files = Files(local_root, remote_root, runner, cluster.ssh_target(key_path))
        else:
            local_root = Path(cluster.scratch_dir) / run_id / f"{stage}-{token}"
            self.files = Files(local_root, str(local_root))
        self.tasks: list[_Task] = []
        self.batches: list[_Batch] = []

    # -- staging -------------------------------------------------------------------------

    def _resources(self, spec: JobSpec) -> tuple[int, int, int]:
        c = self.cluster
        return (spec.cpus or c.default_cpus, spec.mem_mb or c.default_mem_mb,
                spec.time_limit or c.default_time_limit)

    def _header(self, name: str, out_dir: str, resources: tuple[int, int, int],
                array: str | None = None, per_task: bool = False) -> SbatchOptions:
        cpus, mem, minutes = resources
        pattern = "%a/" if per_task else ""
        return SbatchOptions(
            job_name=job_name(self.run_id, name),
            output=posix_join(literal_filename(out_dir), pattern + STDOUT_FILE),
            error=posix_join(literal_filename(out_dir), pattern + STDERR_FILE),
            time_limit=minutes, cpus=cpus, mem_mb=mem,
            partition=self.cluster.partition, account=self.cluster.account,
            qos=self.cluster.qos, signal=_signal_for(self.cluster.signal, minutes), array=array,
            extra=tuple(self.cluster.extra_sbatch_args),
        )

    def _stage_inputs(self, spec: JobSpec, job_dir: Path) -> None:
        for name, source in spec.inputs.items():
            dest = job_dir / name
            if isinstance(source, FileRef):
                if is_local(source.uri):
                    _copy(local_path(source.uri), dest, source.uri)
                else:
                    with self.store.open(source.uri, "rb") as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, 8 << 20)
            else:
                _copy(Path(source), dest, str(source))

    def prepare(self) -> None:
        """Job directories with inputs and scripts; similar jobs grouped into arrays."""
        groups: dict[tuple[int, int, int], list[JobSpec]] = {}
        for spec in self.jobs:
            key = self._resources(spec)
            if self.as_array:
                groups.setdefault(key, []).append(spec)
            else:
                groups[(len(groups), *key)] = [spec]  # type: ignore[index]
        for b, specs in enumerate(groups.values()):
            resources = self._resources(specs[0])
            array = len(specs) > 1
            first = specs[0].name
            batch_local = self.files.local_root / f"{b:03d}-{first}"
            batch_local.mkdir(parents=True, exist_ok=True)
            batch_remote = self.files.to_remote(batch_local)
            tasks = []
            for i, spec in enumerate(specs):
                job_dir = batch_local / str(i)
                job_dir.mkdir(parents=True, exist_ok=True)
                self._stage_inputs(spec, job_dir)
                remote_dir = self.files.to_remote(job_dir)
                header = self._header(spec.name, remote_dir, self._resources(spec))
                (job_dir / JOB_SCRIPT).write_text(render_job_script(
                    spec, remote_dir, header, setup_lines=self.cluster.setup_lines))
                task = _Task(spec, i, job_dir, posix_join(remote_dir, JOB_SCRIPT),
                             mem_mb=self._resources(spec)[1])
                tasks.append(task)
                self.tasks.append(task)
            if array:
                header = self._header(
                    f"{first}-array{len(specs)}", batch_remote, resources,
                    array=array_spec(len(specs), self.cluster.max_concurrent), per_task=True)
                (batch_local / ARRAY_SCRIPT).write_text(render_array_script(header, batch_remote))
                script = posix_join(batch_remote, ARRAY_SCRIPT)
            else:
                script = tasks[0].script
            self.batches.append(_Batch(tasks, script, array, batch_local))
        self.files.push()

    # -- submission and polling -----------------------------------------------------------

    def _submit(self, script: str, tasks: Sequence[_Task], array: bool,
                sbatch_args: Sequence[str] = ()) -> None:
        if isinstance(self.backend, LocalBackend):
            limits = [60.0 * self._resources(t.spec)[2] for t in tasks]
            ids = self.backend.submit(script, len(tasks), array, sbatch_args,
                                      time_limits=limits)
        else:
            ids = self.backend.submit(script, len(tasks), array, sbatch_args)
        now = time.monotonic()
        for task, job_id in zip(tasks, ids, strict=True):
            task.job_id, task.state, task.submitted = job_id, "PENDING", now
            task.finished, task.missing_since, task.reason = 0.0, None, ""
        for fr in self.flow_run_ids[:1]:
            REGISTRY.add(str(fr), self.backend, ids)
        (self.files.local_root / "jobs.json").write_text(json.dumps(
            {t.spec.name: t.job_id for t in self.tasks if t.job_id}, indent=1))

    def submit(self) -> None:
        for batch in self.batches:
            self._submit(batch.script, batch.tasks, batch.array)
            ids = ",".join(t.job_id for t in batch.tasks)
            self._info(f"submitted {len(batch.tasks)} job(s): {ids}")
        self._report_all()

    def outstanding(self) -> list[_Task]:
        return [t for t in self.tasks if not t.final]

    def cancel_outstanding(self) -> list[str]:
        ids = [t.job_id for t in self.outstanding() if t.job_id]
        if ids:
            self.backend.cancel(ids)
        return ids

    def poll_once(self) -> bool | None:
        """One batched poll; updates every task. True if anything changed, None if the
        batch system did not answer."""
        pending = self.outstanding()
        entries = self.backend.poll([t.job_id for t in pending])
        if entries is None:
            return None
        changed = False
        now = time.monotonic()
        for task in pending:
            entry = entries.get(task.job_id)
            if entry is None:
                changed |= self._missing(task, now)
                continue
            task.missing_since = None
            state = entry.state
            if state_rule(state).error:  # e.g. FAILED that was a memory kill
                state = refine_state(state, self.files.read_text(task.local_dir, STDERR_FILE)
                                     or "")
            if state != task.state or entry.reason != task.reason:
                task.state, task.reason = state, entry.reason
                changed = True
                if not self._resubmittable(task):  # else _resubmit reports it
                    self._report(task)
            if state_rule(task.state).final:
                self._finish(task, now)
        return changed

    def _missing(self, task: _Task, now: float) -> bool:
        """Not in the queue: decide by the exit-code sentinel, or call it vanished."""
        text = self.files.read_text(task.local_dir, EXITCODE_FILE)
        if text is not None and text.strip().lstrip("-").isdigit():
            task.exit_code = int(text.strip())
            task.state = "COMPLETED" if task.exit_code == 0 else "FAILED"
            task.finished = now
            self._report(task)
            return True
        if task.missing_since is None:
            task.missing_since = now
            return False
        if now - task.missing_since >= self.cluster.sentinel_timeout:
            self.backend.cancel([task.job_id])  # in case the queue only lost sight of it
            task.state = "VANISHED"
            task.reason = (f"left the queue and wrote no {EXITCODE_FILE} within "
                           f"{self.cluster.sentinel_timeout:g} s")
            task.finished = now
            self._report(task)
            return True
        return False

    def _resubmittable(self, task: _Task) -> bool:
        return state_rule(task.state).resubmit and task.attempts <= self.cluster.max_resubmits

    def _finish(self, task: _Task, now: float) -> None:
        if self._resubmittable(task):
            self._resubmit(task, state_rule(task.state).grow_memory)
            if task.state == "PENDING":
                return
        task.finished = now
        text = self.files.read_text(task.local_dir, EXITCODE_FILE)
        if text is not None and text.strip().lstrip("-").isdigit():
            task.exit_code = int(text.strip())
        elif task.state != "COMPLETED":
            task.exit_code = exit_status(self.backend.details(task.job_id).get("ExitCode", ""))

    def _resubmit(self, task: _Task, grow_memory: bool) -> None:
        """Submit a task's own job.sh again (after NODE_FAIL, PREEMPTED, OUT_OF_MEMORY),
        with twice the memory after OUT_OF_MEMORY. If sbatch refuses the larger request
        (more than any node has), the task keeps its OUT_OF_MEMORY end."""
        mem = grown_memory(task.mem_mb) if grow_memory else task.mem_mb
        more = f", --mem {task.mem_mb} → {mem} MB" if grow_memory else ""
        what = f"ended {task.state}: resubmitting (attempt {task.attempts + 1}{more})"
        self._warn(f"job {task.spec.name} ({task.job_id}) {what}")
        self._report(task, resubmitting=f"Slurm job {task.job_id} {what}")
        self.files.remove(task.local_dir, EXITCODE_FILE)
        try:
            self._submit(task.script, [task], array=False,
                         sbatch_args=[f"--mem={mem}M"] if grow_memory else ())
        except HelixflowError as exc:
            if not grow_memory:
                raise
            self._warn(f"job {task.spec.name}: {mem} MB refused ({exc}); not resubmitted")
            task.reason = f"{task.mem_mb} MB was not enough; sbatch refused {mem} MB"
            self._report(task)
            return
        task.attempts += 1
        task.mem_mb = mem
        self._report(task)

    def poll_until_done(self, check_cancel: Callable[[], bool]) -> None:
        """Poll until every task is final: one backend call per cycle, interval backing
        off while nothing changes; cancels the jobs if the flow run is cancelled."""
        c = self.cluster
        delays = backoff(c.poll_interval, c.poll_backoff, c.poll_max_interval)
        failures = 0
        while self.outstanding():
            if check_cancel():
                ids = self.cancel_outstanding()
                raise RunCancelled(f"flow run cancelled: scancel {' '.join(ids) or '(none)'}")
            try:
                changed = self.poll_once()
            except subprocess.TimeoutExpired:
                changed = None
            failures = failures + 1 if changed is None else 0
            if failures > _MAX_POLL_FAILURES:
                raise HelixflowError("Slurm stopped answering squeue",
                                     hint="check slurmctld on the cluster")
            if not self.outstanding():
                break
            if changed:
                delays = backoff(c.poll_interval, c.poll_backoff, c.poll_max_interval)
            self.backend.wait(next(delays))

    # -- results -------------------------------------------------------------------------

    def stderr_tail(self, task: _Task) -> str:
        return tail(self.files.read_text(task.local_dir, STDERR_FILE) or "")

    def failures(self) -> list[SlurmJobFailed]:
        out = []
        for task in self.tasks:
            if state_rule(task.state).error:
                why = [task.reason]
                if task.attempts > 1:
                    why.append(f"attempt {task.attempts}")
                if state_rule(task.state).grow_memory:
                    why.append(f"--mem {task.mem_mb} MB")
                out.append(SlurmJobFailed(
                    task.spec.name, task.job_id, task.state, exit_code=task.exit_code,
                    stderr_tail=self.stderr_tail(task),
                    reason=", ".join(w for w in why if w and w != "None"),
                ))
        return out

    def collect(self) -> list[JobResult]:
        """Copy outputs back and publish them; a missing output fails its job."""
        results = []
        for task in self.tasks:
            spec = task.spec
            self.files.pull(task.local_dir, [*spec.outputs, STDOUT_FILE, STDERR_FILE])
            missing = [n for n in spec.outputs if not (task.local_dir / n).is_file()]
            if missing:
                raise SlurmJobFailed(
                    spec.name, task.job_id, task.state, exit_code=task.exit_code,
                    stderr_tail=self.stderr_tail(task),
                    reason=f"completed without writing {', '.join(missing)}",
                    hint="check the job's commands write these files in its directory",
                )
            outputs: dict[str, Artifact] = {}
            for name in spec.outputs:
                media = mimetypes.guess_type(name)[0] or "application/octet-stream"
                outputs[name] = self.store.publish(
                    task.local_dir / name, run_id=self.run_id, stage=f"{self.stage}/{spec.name}",
                    name=name, media_type=media, move=not self.cluster.keep_scratch,
                    # the producer keeps the sub-flow's name: lineage queries filter on it
                    producer="flows.slurm", params={"job_id": task.job_id},
                    upstream=[FileRef(uri=ref.uri, size=ref.size, sha256=ref.sha256,
                                      etag=ref.etag)
                              for ref in spec.inputs.values() if isinstance(ref, FileRef)],
                    metadata={"slurm_state": task.state, "attempts": task.attempts,
                              "mem_mb": task.mem_mb},
                )
            results.append(JobResult(
                name=spec.name, job_id=task.job_id, state=task.state, exit_code=task.exit_code,
                outputs=outputs, attempts=task.attempts, mem_mb=task.mem_mb,
                job_dir=self.files.to_remote(task.local_dir),
                stdout_tail=tail(self.files.read_text(task.local_dir, STDOUT_FILE) or ""),
                seconds=round(task.finished - task.submitted, 3),
            ))
        return results

    # -- reporting: one Prefect task run per job, its state following Slurm's --------------

    def _report_all(self) -> None:
        for task in self.tasks:
            self._report(task)

    def _report(self, task: _Task, resubmitting: str = "") -> None:
        """Log the job's state and mirror it on its Prefect task run; `resubmitting` (the
        message) marks a state helixflow resubmits after: `AwaitingRetry`, not a failure."""
        self._info(f"job {task.spec.name} ({task.job_id}): {task.state}"
                   + (f" [{task.reason}]" if task.reason not in ("", "None") else ""))
        if not self.flow_run_ids:
            return
        try:
            from prefect import Task
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                if task.task_run_id is None:
                    stub = Task(fn=_slurm_job_stub, name="slurm-job")
                    run = client.create_task_run(
                        stub, self.flow_run_ids[0], dynamic_key=f"{task.spec.name}",
                        name=f"slurm-job-{task.spec.name}", extra_tags=["slurm"],
                    )
                    task.task_run_id = run.id
                message = resubmitting or f"Slurm job {task.job_id}: {normalise_state(task.state)}"
                if task.state == "VANISHED":
                    message = f"Slurm job {task.job_id}: {task.reason}"
                client.set_task_run_state(
                    task.task_run_id,
                    prefect_state(task.state, message, resubmitting=bool(resubmitting)),
                    force=True)
        except Exception as exc:  # reporting must never break the run
            self._warn(f"could not report job state to Prefect: {exc}")

    def _info(self, msg: str) -> None:
        if self.log is not None:
            self.log.info(msg)

    def _warn(self, msg: str) -> None:
        if self.log is not None:
            self.log.warning(msg)


def _signal_for(spec: str | None, minutes: int) -> str | None:
    """The block's `--signal`, dropped when its lead time is half the job's limit or more
    (a 1-minute job would otherwise be signalled at once)."""
    if not spec:
        return None
    _, _, lead = spec.rpartition("@")
    if lead.isdigit() and int(lead) * 2 >= minutes * 60:
        return None
    return spec


def _slurm_job_stub() -> None:
    """Stands for a batch job in the Prefect UI (never called)."""


def _copy(src: Path, dest: Path, label: str) -> None:
    if not src.is_file():
        raise HelixflowError(f"job input {label} does not exist", hint="check the job's inputs")
    try:
        os.link(src, dest)  # same filesystem: no copy (jobs must not modify inputs in place)
    except OSError:
        shutil.copyfile(src, dest)



def _cancel_checker(flow_run_ids: Sequence[UUID], logger: Any = None) -> Callable[[], bool]:
    """One API call per poll cycle: is this flow run (or a parent) cancelling? An API
    hiccup (a transient error) is logged and asked again next cycle; anything else raises."""
    if not flow_run_ids:
        return lambda: False
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def check() -> bool:
        try:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids))))
        except Exception as exc:
            if transient_reason(exc) is None:
                raise
            if logger is not None:
                logger.warning("could not ask the Prefect API whether the run is cancelled "
                               "(%s); asking again at the next poll", exc)
            return False
        return any(r.state is not None and (r.state.is_cancelling() or r.state.is_cancelled())
                   for r in runs)

    return check


def run_jobs(
    jobs: Sequence[JobSpec],
    cluster: ClusterSettings,
    store: Store,
    run_id: str,
    *,
    stage: str = "slurm",
    as_array: bool = True,
    logger: Any = None,
    flow_run_ids: Sequence[UUID] = (),
    backend: Backend | None = None,
) -> list[JobResult]:
    """Stage, submit, poll and collect `jobs` on `cluster`; the flow's body, callable alone.

    Raises `SlurmJobFailed` (stderr tail included) if any job fails, after all have ended,
    and `RunCancelled` after cancelling the jobs when a flow run in `flow_run_ids` is
    cancelled. Job directories are kept on failure (for a look), removed on success.
    """
    if not jobs:
        return []
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise HelixflowError("job names must be unique within a run",
                             hint=f"duplicates: {sorted({n for n in names if names.count(n) > 1})}")
    key_file: str | None = None
    if cluster.mode == "ssh" and cluster.ssh_private_key is not None and backend is None:
        fd, key_file = tempfile.mkstemp(prefix="helixflow-ssh-")
        with os.fdopen(fd, "w") as handle:
            handle.write(cluster.ssh_private_key.get_secret_value().rstrip("\n") + "\n")
        os.chmod(key_file, 0o600)
    try:
        ssh = cluster.ssh_target(key_file) if cluster.mode == "ssh" else None
        made, runner = make_backend(cluster.mode, cluster.max_concurrent, ssh)
        run = SlurmRun(jobs, cluster, store, run_id, stage, backend=backend or made,
                       runner=runner, as_array=as_array, logger=logger,
                       flow_run_ids=flow_run_ids, key_path=key_file)
        run.prepare()
        try:
            run.submit()
            run.poll_until_done(_cancel_checker(flow_run_ids, logger))
        except BaseException:
            # Cancellation (API or SIGTERM from a runner), a crash, Ctrl-C: no orphan jobs.
            run.cancel_outstanding()
            raise
        finally:
            for fr in flow_run_ids[:1]:
                REGISTRY.drop(str(fr))
        errors = run.failures()
        if errors:
            first = errors[0]
            if len(errors) > 1:
                others = ", ".join(f"{e.name}: {e.state}" for e in errors[1:])
                first.message += f"\n({len(errors) - 1} more failed: {others})"
                first.args = (first.message,)
            raise first
        results = run.collect()
        if not cluster.keep_scratch:
            run.files.cleanup()
        return results
    finally:
        if key_file:
            Path(key_file).unlink(missing_ok=True)

