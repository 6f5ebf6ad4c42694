"""How batch jobs are submitted, watched and cancelled, and where their files live.

A `Backend` submits job scripts, polls their states in one call, cancels them: `SlurmCli`
runs `sbatch`/`squeue`/`scontrol`/`scancel` through a `Runner` (here, or on a login node
over SSH); `LocalBackend` runs the very same scripts here with bash when there is no
Slurm, with the same states and files. `Files` bridges the job folders written here and
the ones the jobs see (the same folder, or a remote one kept in step with rsync).
`helixflow.slurm_jobs` drives them; `helixflow.slurm` holds the job specs and scripts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from helixflow.errors import HelixflowError
from helixflow.slurm import (
    JOB_SCRIPT,
    SQUEUE_FORMAT,
    STDERR_FILE,
    STDOUT_FILE,
    QueueEntry,
    SshTarget,
    parse_sbatch_id,
    parse_scontrol,
    parse_squeue,
    posix_join,
)

_COMMAND_TIMEOUT = 120.0


class Backend(Protocol):
    """Submit, poll, cancel: Slurm through its CLI (here or over SSH), or bash here."""

    def submit(self, script: str, task_count: int, array: bool,
               sbatch_args: Sequence[str] = ()) -> list[str]: ...
    def poll(self, job_ids: Sequence[str]) -> dict[str, QueueEntry] | None: ...
    def cancel(self, job_ids: Sequence[str]) -> None: ...
    def details(self, job_id: str) -> dict[str, str]: ...
    def wait(self, seconds: float) -> None: ...


Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


def run_local(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run argv here (never through a shell)."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT,
                          check=False)


class SlurmCli:
    """Slurm through `sbatch`/`squeue`/`scontrol`/`scancel`, run by `runner` (here or SSH)."""

    def __init__(self, runner: Runner = run_local) -> None:
        self.run = runner

    def submit(self, script: str, task_count: int, array: bool,
               sbatch_args: Sequence[str] = ()) -> list[str]:
        """`sbatch` the script; `sbatch_args` override its #SBATCH lines (e.g. `--mem`)."""
        proc = self.run(["sbatch", "--parsable", *sbatch_args, script])
        if proc.returncode != 0:
            raise HelixflowError(
                f"sbatch {script} failed: {proc.stderr.strip() or proc.stdout.strip()}",
                hint="check the partition, account, QOS and resources of the cluster block",
            )
        job_id = parse_sbatch_id(proc.stdout)
        return [f"{job_id}_{i}" for i in range(task_count)] if array else [job_id]

    def poll(self, job_ids: Sequence[str]) -> dict[str, QueueEntry] | None:
        """One `squeue` for every job (array tasks expanded); None if Slurm did not answer."""
        if not job_ids:
            return {}
        bases = sorted({j.split("_", 1)[0] for j in job_ids}, key=int)
        argv = ["squeue", "--noheader", "--array", "--states=all",
                f"--format={SQUEUE_FORMAT}", f"--jobs={','.join(bases)}"]
        proc = self.run(argv)
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:
                return {}  # every job left the queue (squeue errs only when all are unknown)
            return None
        return parse_squeue(proc.stdout)

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            self.run(["scancel", *job_ids])

    def details(self, job_id: str) -> dict[str, str]:
        proc = self.run(["scontrol", "show", "job", "-o", job_id])
        return parse_scontrol(proc.stdout) if proc.returncode == 0 else {}

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass
class _LocalJob:
    script: str
    job_dir: Path
    time_limit: float | None
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    state: str = "PENDING"
    killed_as: str | None = None


class LocalBackend:
    """No Slurm: each job script runs here with bash, at most `max_concurrent` at once.

    Same contract as Slurm: states PENDING → RUNNING → COMPLETED/FAILED/TIMEOUT/CANCELLED,
    stdout/stderr in the job directory, the time limit enforced with SIGTERM.
    """

    def __init__(self, max_concurrent: int | None = None) -> None:
        self.max_concurrent = max_concurrent or os.cpu_count() or 1
        self.jobs: dict[str, _LocalJob] = {}
        self._lock = threading.Lock()
        self._next = 1

    def submit(self, script: str, task_count: int, array: bool,
               sbatch_args: Sequence[str] = (),
               time_limits: Sequence[float | None] = ()) -> list[str]:
        """Queue the job scripts; `sbatch_args` are ignored (no memory enforcement here)."""
        ids = []
        base = Path(script).parent
        with self._lock:
            for i in range(task_count):
                job_dir = base / str(i) if array else base
                limit = time_limits[i] if i < len(time_limits) else None
                job_id = f"local-{os.getpid()}-{self._next}"
                self._next += 1
                self.jobs[job_id] = _LocalJob(str(job_dir / JOB_SCRIPT), job_dir, limit)
                ids.append(job_id)
        self._advance()
        return ids

    def _advance(self) -> None:
        with self._lock:
            now = time.monotonic()
            running = 0
            for job in self.jobs.values():
                if job.state != "RUNNING" or job.proc is None:
                    continue
                rc = job.proc.poll()
                if rc is None:
                    running += 1
                    if job.time_limit and now - job.started > job.time_limit and not job.killed_as:
                        self._kill(job, "TIMEOUT")
                    continue
                job.state = job.killed_as or ("COMPLETED" if rc == 0 else "FAILED")
            for job in self.jobs.values():
                if job.state == "PENDING" and running < self.max_concurrent:
                    with open(job.job_dir / STDOUT_FILE, "wb") as out, \
                            open(job.job_dir / STDERR_FILE, "wb") as err:
                        job.proc = subprocess.Popen(
                            ["/bin/bash", job.script], cwd=job.job_dir, stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                        )
                    job.started = time.monotonic()
                    job.state = "RUNNING"
                    running += 1

    @staticmethod
    def _kill(job: _LocalJob, as_state: str) -> None:
        job.killed_as = as_state
        if job.proc is not None and job.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.proc.pid, signal.SIGTERM)

    def poll(self, job_ids: Sequence[str]) -> dict[str, QueueEntry] | None:
        self._advance()
        return {j: QueueEntry(j, self.jobs[j].state, "None") for j in job_ids if j in self.jobs}

    def cancel(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                job = self.jobs.get(job_id)
                if job is None:
                    continue
                if job.state == "PENDING":
                    job.state = "CANCELLED"
                elif job.state == "RUNNING":
                    self._kill(job, "CANCELLED")

    def details(self, job_id: str) -> dict[str, str]:
        job = self.jobs.get(job_id)
        if job is None or job.proc is None or job.proc.returncode is None:
            return {}
        return {"ExitCode": f"{job.proc.returncode}:0", "JobState": job.state}

    def wait(self, seconds: float) -> None:
        """Sleep, but wake as soon as a local job ends (no queue latency to hide)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            procs = [j.proc for j in self.jobs.values() if j.state == "RUNNING" and j.proc]
            if any(p.poll() is not None for p in procs) or not procs:
                return
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def make_backend(mode: str, max_concurrent: int | None = None,
                 ssh: SshTarget | None = None) -> tuple[Backend, Runner]:
    """The backend and command runner for a cluster's mode.

    Args:
        mode: "none" (bash here), "ssh" (Slurm on the login node `ssh`), or "local-cli".
        max_concurrent: most jobs at once without Slurm.
        ssh: the login node, for mode "ssh".
    """
    if mode == "none":
        return LocalBackend(max_concurrent), run_local
    if mode == "ssh":
        if ssh is None:
            raise HelixflowError("mode 'ssh' needs an SSH target",
                                 hint="set ssh_host (and ssh_user) on the cluster block")
        target = ssh

        def over_ssh(argv: list[str]) -> subprocess.CompletedProcess[str]:
            if argv and argv[0] == "rsync":
                return run_local(argv)
            return run_local(target.remote(argv))

        return SlurmCli(over_ssh), over_ssh
    if shutil.which("sbatch") is None:
        raise HelixflowError(
            "the cluster block says mode 'local-cli' but sbatch is not on PATH",
            hint="install Slurm (deployments/slurm/local-cluster.sh) or use mode 'none'",
        )
    return SlurmCli(run_local), run_local


# -- files: job directories here, or on the cluster over SSH -------------------------------


class Files:
    """Where job directories live: `local_root` is written here, `remote_root` is what
    jobs see. Equal unless the cluster is reached over SSH (then rsync bridges them, and
    `runner` runs plain argv on the login node)."""

    def __init__(self, local_root: Path, remote_root: str, runner: Runner | None = None,
                 ssh: SshTarget | None = None) -> None:
        self.local_root = local_root
        self.remote_root = remote_root
        self.runner = runner
        self.ssh = ssh

    @property
    def remote(self) -> bool:
        return self.ssh is not None

    def to_remote(self, path: Path) -> str:
        rel = path.relative_to(self.local_root)
        return posix_join(self.remote_root, *rel.parts) if rel.parts else self.remote_root

    def push(self) -> None:
        if self.remote and self.runner:
            self._check(self.runner(self.ssh.rsync_push(str(self.local_root), self.remote_root)))

    def pull(self, local_dir: Path, names: Sequence[str]) -> None:
        if self.remote and self.runner:
            for name in names:
                self.runner(self.ssh.rsync_pull(posix_join(self.to_remote(local_dir), name),
                                                str(local_dir / name)))

    def read_text(self, local_dir: Path, name: str) -> str | None:
        if self.remote and self.runner:
            remote = posix_join(self.to_remote(local_dir), name)
            proc = self.runner(["cat", remote])
            return proc.stdout if proc.returncode == 0 else None
        try:
            return (local_dir / name).read_text(errors="replace")
        except FileNotFoundError:
            return None

    def remove(self, local_dir: Path, name: str) -> None:
        (local_dir / name).unlink(missing_ok=True)
        if self.remote and self.runner:
            self.runner(["rm", "-f", posix_join(self.to_remote(local_dir), name)])

    def cleanup(self) -> None:
        shutil.rmtree(self.local_root, ignore_errors=True)
        if self.remote and self.runner:
            self.runner(["rm", "-rf", "--", self.remote_root])

    @staticmethod
    def _check(proc: subprocess.CompletedProcess[str]) -> None:
        if proc.returncode != 0:
            raise HelixflowError(f"copying job files failed: {proc.stderr.strip()}",
                                 hint="check SSH access and the scratch_dir on the cluster")

