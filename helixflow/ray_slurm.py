"""A Ray cluster inside one Slurm allocation, for the length of a run.

HPC sites have Slurm, not a standing Ray cluster. `ray_on_slurm` submits one batch job of
N nodes: its first node starts a Ray head (on a free port, a per-job temporary folder),
the other nodes join it with `srun`, and the job writes the head's address to a file in
its job folder; the run connects there. When the run ends, fails or is stopped, the job
is cancelled and awaited until `squeue` no longer lists it: no allocation is left behind.
The job's shell stops its own Ray processes (found by their per-job temporary folder, so
no other Ray on the node is touched) and removes the folders on the way out.

The Python and `ray` executables are this process's own (a shared file system, as on
any cluster where the same venv runs jobs); everything that reaches the job script is
shell-quoted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helixflow.errors import HelixflowError
from helixflow.files import atomic_path, atomic_write
from helixflow.settings import without_server_secrets

log = logging.getLogger(__name__)
#: Every allocation's Ray requires a token of its own: nothing else on the network (nor
#: another user's job on the node) can submit work to it.
TOKEN_FILE = "auth-token"


@dataclass(frozen=True)
class RaySlurmSpec:
    """What to ask Slurm for: nodes, and per node CPUs, memory and time."""

    nodes: int = 1
    cpus_per_node: int = 1
    mem_mb: int = 4096
    time_limit_min: int = 240
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    setup_lines: tuple[str, ...] = ()
    """Shell lines run first (e.g. `module load …`); taken as written (trusted config)."""
    scratch_dir: Path = field(default_factory=lambda: Path(
        os.environ.get("HELIXFLOW_SLURM_SCRATCH", "/tmp/helixflow-slurm")))
    start_timeout_s: float = 600.0


@dataclass(frozen=True)
class RaySlurmCluster:
    """A running allocation: its Slurm job id, Ray address and job folder."""

    job_id: str
    address: str
    job_dir: Path

    @property
    def token_path(self) -> Path:
        """The cluster's own authentication token (mode 0600 in the job folder)."""
        return self.job_dir / TOKEN_FILE

    @contextlib.contextmanager
    def client_env(self) -> Iterator[None]:
        """This process's Ray connection authenticates with the cluster's token. Enter it
        before Ray is imported: Ray reads its authentication settings once."""
        saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        os.environ.update({"RAY_AUTH_MODE": "token",
                           "RAY_AUTH_TOKEN_PATH": str(self.token_path)})
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    @property
    def head_node_id(self) -> str:
        """The Ray node id of the head (written by the job once the head is up)."""
        return (self.job_dir / "head-node-id").read_text().strip()


def _ray_exe() -> str:
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.is_file() else (shutil.which("ray") or "ray")


def job_script(spec: RaySlurmSpec, job_dir: Path) -> str:
    """The batch script: head on the first node, workers on the others, address file,
    then wait until cancelled; `ray stop` and cleanup on exit."""
    q = shlex.quote
    lines = ["#!/bin/bash", "set -uo pipefail", *spec.setup_lines,
             f"PY={q(sys.executable)}", f"RAY={q(_ray_exe())}", f"DIR={q(str(job_dir))}",
             f'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DIR/{TOKEN_FILE}"',
             "export RAY_USAGE_STATS_ENABLED=0",
             # short, per-job temporary folder: Ray's socket paths must stay under 107 bytes
             'TMPD=$(mktemp -d "/tmp/hfray-${SLURM_JOB_ID}.XXXX")',
             # only this job's Ray (its processes name its folder): `ray stop` would end
             # every Ray on the node, other users' and other jobs' too
             'cleanup() { pkill -TERM -f -- "$TMPD"; sleep 3; pkill -KILL -f -- "$TMPD";'
             ' rm -rf "$TMPD"; }',
             "trap cleanup EXIT",
             "trap 'exit 143' TERM",
             "trap 'exit 130' INT",
             'HEAD_IP=$(hostname -I | awk \'{print $1}\')',
             'PORT=$("$PY" -c \'import socket; s = socket.socket(); s.bind(("", 0));'
             ' print(s.getsockname()[1])\')',
             'CPUS=${SLURM_CPUS_PER_TASK:-1}',
             '"$RAY" start --head --node-ip-address="$HEAD_IP" --port="$PORT"'
             ' --num-cpus="$CPUS" --temp-dir="$TMPD" --include-dashboard=false'
             ' --disable-usage-stats || exit 1',
             '"$PY" - "$HEAD_IP:$PORT" > "$DIR/head-node-id.tmp" <<\'PYEOF\' || exit 1',
             "import sys, ray",
             'ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)',
             'print(ray.get_runtime_context().get_node_id())',
             "PYEOF",
             'mv "$DIR/head-node-id.tmp" "$DIR/head-node-id"']
    if spec.nodes > 1:
        lines += [
            'srun --nodes=$((SLURM_JOB_NUM_NODES - 1)) --ntasks=$((SLURM_JOB_NUM_NODES - 1))'
            ' --exclude="$(hostname)" bash -c \'T=$(mktemp -d "/tmp/hfray-${SLURM_JOB_ID}-w.XXXX");'
            ' trap "pkill -TERM -f -- \\"$T\\"; sleep 3; pkill -KILL -f -- \\"$T\\";'
            ' rm -rf \\"$T\\"" EXIT;'
            ' "$0" start --address="$1" --num-cpus="$2" --temp-dir="$T"'
            ' --disable-usage-stats --block\' "$RAY" "$HEAD_IP:$PORT" "$CPUS" &',
        ]
    lines += ['echo "$HEAD_IP:$PORT" > "$DIR/address.tmp" && mv "$DIR/address.tmp" '
              '"$DIR/address"',
              "sleep infinity &", "wait $!", ""]
    return "\n".join(lines)


def sbatch_args(spec: RaySlurmSpec, job_dir: Path, script: Path) -> list[str]:
    """`sbatch` argv for the allocation (no shell involved)."""
    args = ["sbatch", "--parsable", f"--nodes={spec.nodes}", "--ntasks-per-node=1",
            f"--cpus-per-task={spec.cpus_per_node}", f"--mem={spec.mem_mb}",
            f"--time={spec.time_limit_min}", "--job-name=helixflow-ray",
            f"--chdir={job_dir}", f"--output={job_dir / 'slurm-%j.out'}"]
    for flag, value in (("partition", spec.partition), ("account", spec.account),
                        ("qos", spec.qos)):
        if value:
            args.append(f"--{flag}={value}")
    return [*args, str(script)]


def _run(args: list[str], what: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise HelixflowError(f"{what} failed (exit {proc.returncode}): "
                             f"{proc.stderr.strip()[-500:]}")
    return proc.stdout


def job_state(job_id: str) -> str | None:
    """The job's state as `squeue` shows it, None once it has left the queue."""
    proc = subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--format=%T"],
                          capture_output=True, text=True, timeout=60, check=False)
    state = proc.stdout.strip()
    return state or None


def _tail(path: Path, n: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def cancel(job_id: str, timeout_s: float = 120.0) -> None:
    """`scancel` the job and wait until `squeue` no longer lists it."""
    subprocess.run(["scancel", job_id], capture_output=True, timeout=60, check=False)
    deadline = time.monotonic() + timeout_s
    while job_state(job_id) is not None:
        if time.monotonic() > deadline:
            log.warning("Slurm job %s still listed %.0f s after scancel", job_id, timeout_s)
            return
        time.sleep(0.5)


@contextlib.contextmanager
def ray_on_slurm(spec: RaySlurmSpec) -> Iterator[RaySlurmCluster]:
    """A Ray cluster on a fresh Slurm allocation for the block's duration; the allocation
    is cancelled (and awaited) when the block ends, however it ends."""
    if shutil.which("sbatch") is None:
        raise HelixflowError("--ray-on-slurm needs Slurm's sbatch on PATH",
                             hint="run on a Slurm login node, or use --ray-address")
    job_dir = spec.scratch_dir / f"ray-{uuid.uuid4().hex[:12]}"
    job_dir.mkdir(parents=True, mode=0o700)
    script = job_dir / "ray-cluster.sh"
    atomic_write(script, job_script(spec, job_dir).encode())
    with atomic_path(job_dir / TOKEN_FILE, mode=0o600) as tmp:
        tmp.write_text(secrets.token_hex(32))
    with without_server_secrets():  # sbatch exports its environment to the job's Ray
        job_id = _run(sbatch_args(spec, job_dir, script), "sbatch").strip().split(";")[0]
    log.info("Ray on Slurm: job %s for %d node(s), folder %s", job_id, spec.nodes, job_dir)
    try:
        address_file = job_dir / "address"
        deadline = time.monotonic() + spec.start_timeout_s
        while not address_file.is_file():
            state = job_state(job_id)
            if state is None:
                raise HelixflowError(
                    f"the Ray job {job_id} ended before its Ray head was up",
                    hint=f"its output:\n{_tail(job_dir / f'slurm-{job_id}.out')}")
            if time.monotonic() > deadline:
                raise HelixflowError(
                    f"the Ray job {job_id} did not start within {spec.start_timeout_s:.0f} s "
                    f"(state {state})", hint="is the partition busy? see `squeue`")
            time.sleep(0.5)
        yield RaySlurmCluster(job_id=job_id, address=address_file.read_text().strip(),
                              job_dir=job_dir)
    finally:
        cancel(job_id)
