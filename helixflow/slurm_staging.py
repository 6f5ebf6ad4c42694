"""Job folders: where they live (here, or a scratch folder on a login node kept in step
with rsync), what goes in them (inputs linked, copied or fetched from the store; the job
script with its `#SBATCH` header), and which jobs are submitted together (similar
resources as one array). The cluster's settings come as a `ClusterSettings` (what the
`SlurmCluster` block holds), so this core module needs no block.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from uuid import UUID

from pydantic import SecretStr

from helixflow.artifacts import FileRef
from helixflow.errors import HelixflowError
from helixflow.slurm import JobSpec
from helixflow.slurm_backends import Runner, SshTarget, posix_join
from helixflow.slurm_scripts import (
    ARRAY_SCRIPT,
    JOB_SCRIPT,
    STDERR_FILE,
    STDOUT_FILE,
    SbatchOptions,
    array_spec,
    job_name,
    literal_filename,
    render_array_script,
    render_job_script,
)
from helixflow.slurm_states import state_rule
from helixflow.store import Store
from helixflow.uris import is_local, local_path


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
class JobTask:
    """One job of a run: its spec, folder and script, and what became of it so far."""

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
class JobBatch:
    """Jobs submitted together: one job, or similar jobs as one array."""

    tasks: list[JobTask]
    script: str  # the script submitted (array.sh or the single job's job.sh)
    array: bool
    local_dir: Path


def job_files(cluster: ClusterSettings, run_id: str, folder: str, runner: Runner,
              key_path: str | None = None) -> Files:
    """Where a run's job folders go: `<scratch_dir>/<run_id>/<folder>` here, or, over SSH,
    a local staging copy of the folder on the cluster's scratch."""
    if cluster.mode == "ssh":
        base = Path(cluster.local_staging_dir or tempfile.gettempdir()) / "helixflow-slurm"
        local_root = base / run_id / folder
        remote_root = posix_join(cluster.scratch_dir, run_id, folder)
        # rsync must use the same key as ssh (the file written from ssh_private_key)
        return Files(local_root, remote_root, runner, cluster.ssh_target(key_path))
    local_root = Path(cluster.scratch_dir) / run_id / folder
    return Files(local_root, str(local_root))


def resources(spec: JobSpec, cluster: ClusterSettings) -> tuple[int, int, int]:
    """(cpus, mem_mb, minutes) of a job: its own, else the cluster's defaults."""
    return (spec.cpus or cluster.default_cpus, spec.mem_mb or cluster.default_mem_mb,
            spec.time_limit or cluster.default_time_limit)


def stage_jobs(jobs: Sequence[JobSpec], cluster: ClusterSettings, store: Store, files: Files,
               run_id: str, *, as_array: bool = True) -> list[JobBatch]:
    """Job directories with inputs and scripts; similar jobs grouped into arrays (one
    batch each) unless `as_array` is False. Nothing is copied to the cluster yet."""
    groups: dict[tuple[int, int, int], list[JobSpec]] = {}
    for spec in jobs:
        key = resources(spec, cluster)
        if as_array:
            groups.setdefault(key, []).append(spec)
        else:
            groups[(len(groups), *key)] = [spec]  # type: ignore[index]
    batches = []
    for b, specs in enumerate(groups.values()):
        batch_resources = resources(specs[0], cluster)
        array = len(specs) > 1
        first = specs[0].name
        batch_local = files.local_root / f"{b:03d}-{first}"
        batch_local.mkdir(parents=True, exist_ok=True)
        batch_remote = files.to_remote(batch_local)
        tasks = []
        for i, spec in enumerate(specs):
            job_dir = batch_local / str(i)
            job_dir.mkdir(parents=True, exist_ok=True)
            _stage_inputs(store, spec, job_dir)
            remote_dir = files.to_remote(job_dir)
            header = _header(cluster, run_id, spec.name, remote_dir, resources(spec, cluster))
            (job_dir / JOB_SCRIPT).write_text(render_job_script(
                spec, remote_dir, header, setup_lines=cluster.setup_lines))
            tasks.append(JobTask(spec, i, job_dir, posix_join(remote_dir, JOB_SCRIPT),
                                 mem_mb=resources(spec, cluster)[1]))
        if array:
            header = _header(
                cluster, run_id, f"{first}-array{len(specs)}", batch_remote, batch_resources,
                array=array_spec(len(specs), cluster.max_concurrent), per_task=True)
            (batch_local / ARRAY_SCRIPT).write_text(render_array_script(header, batch_remote))
            script = posix_join(batch_remote, ARRAY_SCRIPT)
        else:
            script = tasks[0].script
        batches.append(JobBatch(tasks, script, array, batch_local))
    return batches


def _header(cluster: ClusterSettings, run_id: str, name: str, out_dir: str,
            resources: tuple[int, int, int], array: str | None = None,
            per_task: bool = False) -> SbatchOptions:
    cpus, mem, minutes = resources
    pattern = "%a/" if per_task else ""
    return SbatchOptions(
        job_name=job_name(run_id, name),
        output=posix_join(literal_filename(out_dir), pattern + STDOUT_FILE),
        error=posix_join(literal_filename(out_dir), pattern + STDERR_FILE),
        time_limit=minutes, cpus=cpus, mem_mb=mem,
        partition=cluster.partition, account=cluster.account,
        qos=cluster.qos, signal=_signal_for(cluster.signal, minutes), array=array,
        extra=tuple(cluster.extra_sbatch_args),
    )


def _stage_inputs(store: Store, spec: JobSpec, job_dir: Path) -> None:
    for name, source in spec.inputs.items():
        dest = job_dir / name
        if isinstance(source, FileRef):
            if is_local(source.uri):
                _copy(local_path(source.uri), dest, source.uri)
            else:
                with store.open(source.uri, "rb") as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 8 << 20)
        else:
            _copy(Path(source), dest, str(source))


def _signal_for(spec: str | None, minutes: int) -> str | None:
    """The block's `--signal`, dropped when its lead time is half the job's limit or more
    (a 1-minute job would otherwise be signalled at once)."""
    if not spec:
        return None
    _, _, lead = spec.rpartition("@")
    if lead.isdigit() and int(lead) * 2 >= minutes * 60:
        return None
    return spec


def _copy(src: Path, dest: Path, label: str) -> None:
    if not src.is_file():
        raise HelixflowError(f"job input {label} does not exist", hint="check the job's inputs")
    try:
        os.link(src, dest)  # same filesystem: no copy (jobs must not modify inputs in place)
    except OSError:
        shutil.copyfile(src, dest)


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

