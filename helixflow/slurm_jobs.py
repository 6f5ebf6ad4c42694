"""One set of batch jobs run to the end: stage, submit, poll, resubmit, collect, publish.

`run_jobs` is the body of the Slurm sub-flow (`helixflow.flows.slurm`), callable alone:
`SlurmRun` has the job folders written (`helixflow.slurm_staging`: inputs, scripts;
similar jobs as one array), submits them through a backend (`helixflow.slurm_backends`),
polls with one batched call per cycle (the interval backing off while nothing changes),
resubmits NODE_FAIL/PREEMPTED (and OUT_OF_MEMORY with twice the memory), mirrors each
job's state on a Prefect task run, surfaces failures with the job's stderr, and publishes
the outputs to the store. If the Prefect flow run (or a parent) is cancelled, or anything
interrupts the run, the jobs are cancelled. The cluster's settings come as a
`ClusterSettings` (what the `SlurmCluster` block holds), so this core module needs no block.
"""

from __future__ import annotations

import json
import mimetypes
import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from helixflow.artifacts import Artifact, FileRef
from helixflow.errors import HelixflowError
from helixflow.retries import transient_reason
from helixflow.slurm import JobResult, JobSpec, SlurmJobFailed, tail
from helixflow.slurm_backends import Backend, LocalBackend, Runner, make_backend
from helixflow.slurm_scripts import EXITCODE_FILE, STDERR_FILE, STDOUT_FILE
from helixflow.slurm_staging import (
    ClusterSettings,
    JobBatch,
    JobTask,
    job_files,
    resources,
    stage_jobs,
)
from helixflow.slurm_states import (
    exit_status,
    grown_memory,
    normalise_state,
    prefect_state,
    refine_state,
    state_rule,
)
from helixflow.store import Store

_MAX_POLL_FAILURES = 20


class RunCancelled(HelixflowError):
    """The Prefect flow run was cancelled; its batch jobs were cancelled too."""


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


def backoff(initial: float, factor: float = 1.5, maximum: float = 60.0) -> Iterator[float]:
    """Poll intervals: `initial`, then multiplied by `factor` each cycle, capped at `maximum`."""
    if initial <= 0 or factor < 1 or maximum < initial:
        raise ValueError("backoff needs initial > 0, factor >= 1, maximum >= initial")
    delay = initial
    while True:
        yield delay
        delay = min(delay * factor, maximum)


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
        self.files = job_files(cluster, run_id, f"{stage}-{token}", runner, key_path)
        self.tasks: list[JobTask] = []
        self.batches: list[JobBatch] = []

    # -- staging -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Job directories with inputs and scripts (similar jobs grouped into arrays),
        copied to the cluster."""
        self.batches = stage_jobs(self.jobs, self.cluster, self.store, self.files, self.run_id,
                                  as_array=self.as_array)
        self.tasks = [task for batch in self.batches for task in batch.tasks]
        self.files.push()

    # -- submission and polling -----------------------------------------------------------

    def _submit(self, script: str, tasks: Sequence[JobTask], array: bool,
                sbatch_args: Sequence[str] = ()) -> None:
        if isinstance(self.backend, LocalBackend):
            limits = [60.0 * resources(t.spec, self.cluster)[2] for t in tasks]
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

    def outstanding(self) -> list[JobTask]:
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

    def _missing(self, task: JobTask, now: float) -> bool:
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

    def _resubmittable(self, task: JobTask) -> bool:
        return state_rule(task.state).resubmit and task.attempts <= self.cluster.max_resubmits

    def _finish(self, task: JobTask, now: float) -> None:
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

    def _resubmit(self, task: JobTask, grow_memory: bool) -> None:
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

    def stderr_tail(self, task: JobTask) -> str:
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

    def _report(self, task: JobTask, resubmitting: str = "") -> None:
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


def _slurm_job_stub() -> None:
    """Stands for a batch job in the Prefect UI (never called)."""


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

