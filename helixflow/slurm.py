"""The Slurm kernel, free of Prefect flows and subprocesses: job specs, script rendering,
`squeue` parsing, the Slurm → Prefect state table, the poll backoff and SSH argv building.

A job is generic (GROMACS or anything else): argv commands (or a bash body the caller
quoted), input files staged into its directory, output file names copied back, resources.
`helixflow.slurm_jobs` runs these through Slurm (local CLI or SSH) or, with no Slurm,
through bash.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from prefect.client.schemas.objects import StateType
from pydantic import BaseModel, Field, field_validator, model_validator

from helixflow.artifacts import Artifact, FileRef
from helixflow.errors import HelixflowError

EXITCODE_FILE = ".exitcode"
SIGNAL_FILE = ".signal"
STDOUT_FILE = "slurm.out"
STDERR_FILE = "slurm.err"
JOB_SCRIPT = "job.sh"
ARRAY_SCRIPT = "array.sh"

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _plain_name(value: str, what: str) -> str:
    """A file name inside a job directory: no path separators, no `..`, not hidden."""
    if not value or "/" in value or value in (".", "..") or value.startswith(".") or "\0" in value:
        raise ValueError(f"{what} {value!r} must be a plain file name (no '/', not hidden)")
    return value


class JobSpec(BaseModel):
    """One unit of work for a batch system: what to run, with which files and resources.

    `commands` are argv lists, each argument shell-quoted when rendered; `script` is a bash
    body the caller rendered (and quoted) itself; both may be given (commands run first).
    `inputs` maps a file name in the job directory to its source (a store `FileRef` or a
    local path); `outputs` are file names the job writes there, published to the store.
    Resources left `None` take the cluster block's defaults.

    Example:
        >>> JobSpec(name="md-1", commands=[["gmx", "mdrun", "-deffnm", "md"]],
        ...         inputs={"md.tpr": Path("/tmp/md.tpr")}, outputs=["md.xtc"], cpus=2).cpus
        2
    """

    name: str
    commands: list[list[str]] = Field(default_factory=list)
    script: str | None = None
    inputs: dict[str, FileRef | Path] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=list)
    cpus: int | None = Field(default=None, ge=1)
    mem_mb: int | None = Field(default=None, ge=1)
    time_limit: int | None = Field(default=None, ge=1, description="minutes")
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_OK.match(value):
            raise ValueError(
                f"job name {value!r}: use letters, digits and _ . + - (at most 100 characters)"
            )
        return value

    @field_validator("inputs")
    @classmethod
    def _check_inputs(cls, value: dict[str, FileRef | Path]) -> dict[str, FileRef | Path]:
        for name in value:
            _plain_name(name, "input name")
        return value

    @field_validator("outputs")
    @classmethod
    def _check_outputs(cls, value: list[str]) -> list[str]:
        for name in value:
            _plain_name(name, "output name")
        return value

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_KEY.match(key):
                raise ValueError(f"environment variable name {key!r} is not valid")
        return value

    @model_validator(mode="after")
    def _has_work(self) -> JobSpec:
        if not self.commands and not (self.script and self.script.strip()):
            raise ValueError(f"job {self.name!r} has neither commands nor a script")
        if any(not argv for argv in self.commands):
            raise ValueError(f"job {self.name!r} has an empty command")
        return self


class JobResult(BaseModel):
    """What became of one job: its final Slurm state, exit code and published outputs.

    `attempts` counts helixflow's submissions (1 + resubmissions after NODE_FAIL,
    PREEMPTED or OUT_OF_MEMORY); `mem_mb` is the memory the last attempt asked for."""

    name: str
    job_id: str
    state: str
    exit_code: int | None = None
    outputs: dict[str, Artifact] = Field(default_factory=dict)
    attempts: int = 1
    mem_mb: int | None = None
    job_dir: str
    stdout_tail: str = ""
    seconds: float = 0.0


class SlurmJobFailed(HelixflowError):
    """A batch job ended in a failure state; the message carries the tail of its stderr."""

    def __init__(
        self,
        name: str,
        job_id: str,
        state: str,
        *,
        exit_code: int | None = None,
        stderr_tail: str = "",
        reason: str = "",
        hint: str | None = None,
    ) -> None:
        code = f", exit code {exit_code}" if exit_code is not None else ""
        why = f" ({reason})" if reason and reason not in ("None", "(null)") else ""
        message = f"job {name} (Slurm job {job_id}) ended {state}{code}{why}"
        if stderr_tail.strip():
            message += "\n--- stderr (tail) ---\n" + stderr_tail.rstrip()
        super().__init__(message, hint=hint or _HINTS.get(state))
        self.name = name
        self.job_id = job_id
        self.state = state
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail


_HINTS = {
    "TIMEOUT": "raise the job's time_limit (minutes) or the block's default_time_limit",
    "OUT_OF_MEMORY": "raise the job's mem_mb or the block's default_mem_mb (each of the "
    "block's max_resubmits already doubled it)",
    "VANISHED": "the job left the queue without writing its exit code: check the node and "
    "that the scratch directory is shared; raise sentinel_timeout on slow file systems",
    "CANCELLED": "the job was cancelled outside this flow (scancel, an administrator, a limit)",
}


# -- states --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateRule:
    """How a Slurm job state maps to Prefect: state type, final?, resubmit?, raise?, and
    whether a resubmission asks for more memory (`grow_memory`, after OUT_OF_MEMORY)."""

    prefect: StateType
    final: bool
    resubmit: bool = False
    error: bool = False
    grow_memory: bool = False


STATE_TABLE: dict[str, StateRule] = {
    "PENDING": StateRule(StateType.PENDING, final=False),
    "CONFIGURING": StateRule(StateType.PENDING, final=False),
    "REQUEUED": StateRule(StateType.PENDING, final=False),
    "RESV_DEL_HOLD": StateRule(StateType.PENDING, final=False),
    "REQUEUE_FED": StateRule(StateType.PENDING, final=False),
    "REQUEUE_HOLD": StateRule(StateType.PENDING, final=False),
    "RUNNING": StateRule(StateType.RUNNING, final=False),
    "COMPLETING": StateRule(StateType.RUNNING, final=False),
    "SUSPENDED": StateRule(StateType.RUNNING, final=False),
    "STOPPED": StateRule(StateType.RUNNING, final=False),
    "RESIZING": StateRule(StateType.RUNNING, final=False),
    "SIGNALING": StateRule(StateType.RUNNING, final=False),
    "STAGE_OUT": StateRule(StateType.RUNNING, final=False),
    "COMPLETED": StateRule(StateType.COMPLETED, final=True),
    "FAILED": StateRule(StateType.FAILED, final=True, error=True),
    "TIMEOUT": StateRule(StateType.FAILED, final=True, error=True),
    "OUT_OF_MEMORY": StateRule(StateType.FAILED, final=True, resubmit=True, error=True,
                                grow_memory=True),
    "DEADLINE": StateRule(StateType.FAILED, final=True, error=True),
    "BOOT_FAIL": StateRule(StateType.FAILED, final=True, error=True),
    "NODE_FAIL": StateRule(StateType.FAILED, final=True, resubmit=True, error=True),
    "PREEMPTED": StateRule(StateType.FAILED, final=True, resubmit=True, error=True),
    "CANCELLED": StateRule(StateType.CANCELLED, final=True, error=True),
    "REVOKED": StateRule(StateType.CANCELLED, final=True, error=True),
    "SPECIAL_EXIT": StateRule(StateType.FAILED, final=True, error=True),
    # Not a Slurm state: the job left the queue without writing its exit-code sentinel.
    "VANISHED": StateRule(StateType.CRASHED, final=True, error=True),
    # Anything unrecognised: final, never success.
    "UNKNOWN": StateRule(StateType.CRASHED, final=True, error=True),
}


def state_rule(slurm_state: str) -> StateRule:
    """The rule for a Slurm state; unknown states count as UNKNOWN (final, not success)."""
    return STATE_TABLE.get(normalise_state(slurm_state), STATE_TABLE["UNKNOWN"])


def normalise_state(slurm_state: str) -> str:
    """`CANCELLED by 0` → `CANCELLED`; `out_of_memory+` → `OUT_OF_MEMORY`; '' → `UNKNOWN`."""
    word = slurm_state.strip().split(" ", 1)[0].rstrip("+").upper()
    return word if word in STATE_TABLE else "UNKNOWN"


# slurmstepd's own words when it kills a job for memory: jobacct_gather's OverMemoryKill
# ("StepId=7.batch exceeded memory limit (303157248 > 104857600), being killed", then
# "Exceeded job memory limit"; Slurm 22.05 then calls the job FAILED, reason
# JobLaunchFailure) and the cgroup plugin ("Detected 1 oom_kill event in StepId=7.batch").
_MEMORY_KILL = re.compile(
    r"^slurmstepd[^:\n]*: error: .*(exceeded (job |step )?memory limit|oom[-_]kill event)",
    re.IGNORECASE | re.MULTILINE,
)


def refine_state(slurm_state: str, stderr: str) -> str:
    """The job's real end: FAILED (or CANCELLED) with slurmstepd's memory-kill message in
    the job's stderr is OUT_OF_MEMORY, whichever enforcement the cluster uses (the cgroup
    plugin says OUT_OF_MEMORY itself; jobacct_gather's OverMemoryKill says FAILED)."""
    state = normalise_state(slurm_state)
    if state in ("FAILED", "CANCELLED") and _MEMORY_KILL.search(stderr):
        return "OUT_OF_MEMORY"
    return state


def exit_status(slurm_exit_code: str) -> int | None:
    """`scontrol`'s `ExitCode=code:signal` as a shell would report it: `3:0` → 3, a death
    by signal `0:9` → 137 (128 + signal), anything else → None."""
    code, _, sig = slurm_exit_code.partition(":")
    if not code.isdigit():
        return None
    if sig.isdigit() and int(sig) > 0 and int(code) == 0:
        return 128 + int(sig)
    return int(code)


OOM_MEMORY_FACTOR = 2.0


def grown_memory(mem_mb: int, factor: float = OOM_MEMORY_FACTOR) -> int:
    """The `--mem` (MB) of the attempt after an OUT_OF_MEMORY: `factor` times the last one."""
    if factor <= 1:
        raise ValueError("the memory factor must be > 1")
    return max(mem_mb + 1, int(mem_mb * factor))


def prefect_state(slurm_state: str, message: str | None = None, *,
                  resubmitting: bool = False) -> Any:
    """A Prefect `State` for a Slurm job state (for display and task-run reporting).

    A state helixflow is resubmitting after (NODE_FAIL, PREEMPTED, OUT_OF_MEMORY within
    `max_resubmits`) is Prefect's own `AwaitingRetry`, never a failure."""
    from prefect.states import AwaitingRetry, State

    state = normalise_state(slurm_state)
    if resubmitting:
        return AwaitingRetry(message=message or f"Slurm: {state}; resubmitting")
    rule = state_rule(state)
    name = state.replace("_", " ").title().replace(" ", "")
    if state == "PENDING":
        name = "Pending"
    return State(type=rule.prefect, name=name, message=message or f"Slurm: {state}")


# -- squeue --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueEntry:
    """One line of `squeue --format=%i|%T|%r`."""

    job_id: str
    state: str
    reason: str


SQUEUE_FORMAT = "%i|%T|%r"
_ARRAY_RANGE = re.compile(r"^(\d+)_\[([0-9,\-]+)(?:%\d+)?\]$")


def parse_squeue(text: str) -> dict[str, QueueEntry]:
    """Job id → entry from `squeue --noheader --format=%i|%T|%r` output.

    Pending array tasks folded as `12_[3-5,7%2]` are expanded to `12_3`, `12_4`, ….
    """
    out: dict[str, QueueEntry] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split("|", 2)
        if len(parts) < 2:
            continue
        job_id, state = parts[0].strip(), normalise_state(parts[1])
        reason = parts[2].strip() if len(parts) > 2 else ""
        reason = "" if reason in ("None", "(null)") else reason
        folded = _ARRAY_RANGE.match(job_id)
        if folded:
            base, ranges = folded.groups()
            for index in expand_ranges(ranges):
                key = f"{base}_{index}"
                out[key] = QueueEntry(key, state, reason)
        else:
            out[job_id] = QueueEntry(job_id, state, reason)
    return out


def expand_ranges(text: str) -> list[int]:
    """`0-2,5` → [0, 1, 2, 5]."""
    values: list[int] = []
    for part in text.split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        values.extend(range(int(lo), int(hi or lo) + 1))
    return values


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o` output as key → value (ExitCode, Reason, JobState, …)."""
    fields: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def parse_sbatch_id(text: str) -> str:
    """The job id from `sbatch --parsable` output (`123` or `123;cluster`)."""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    job_id = line.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise HelixflowError(f"sbatch returned no job id: {text.strip()!r}")
    return job_id


# -- backoff -------------------------------------------------------------------------------


def backoff(initial: float, factor: float = 1.5, maximum: float = 60.0) -> Iterator[float]:
    """Poll intervals: `initial`, then multiplied by `factor` each cycle, capped at `maximum`."""
    if initial <= 0 or factor < 1 or maximum < initial:
        raise ValueError("backoff needs initial > 0, factor >= 1, maximum >= initial")
    delay = initial
    while True:
        yield delay
        delay = min(delay * factor, maximum)


# -- script rendering ----------------------------------------------------------------------


@dataclass(frozen=True)
class SbatchOptions:
    """The `#SBATCH` header of a job (or array) script."""

    job_name: str
    output: str
    error: str
    time_limit: int
    cpus: int
    mem_mb: int
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    signal: str | None = None
    array: str | None = None
    extra: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """`#SBATCH --opt=value` lines, each value quoted for sbatch's own header parser
        (`header_quote`); `output`/`error` are Slurm filename patterns (`literal_filename`)."""
        opts: list[tuple[str, str | None]] = [
            ("job-name", self.job_name),
            ("output", self.output),
            ("error", self.error),
            ("time", format_minutes(self.time_limit)),
            ("nodes", "1"),
            ("ntasks", "1"),
            ("cpus-per-task", str(self.cpus)),
            ("mem", f"{self.mem_mb}M"),
            ("no-requeue", None),
        ]
        if self.signal:
            opts.append(("signal", self.signal))
        for key, value in (("partition", self.partition), ("account", self.account),
                           ("qos", self.qos), ("array", self.array)):
            if value:
                opts.append((key, value))
        lines = []
        for key, value in opts:
            if value is None:
                lines.append(f"#SBATCH --{key}")
            else:
                lines.append(f"#SBATCH --{key}={header_quote(value, key)}")
        for arg in self.extra:
            lines.append(f"#SBATCH {header_quote(arg, 'extra sbatch argument')}")
        return lines


def check_header_value(value: str, what: str) -> str:
    """Refuse values no `#SBATCH` line can carry: empty, line breaks, NUL, or a backslash
    (sbatch's header parser drops it even inside quotes). Spaces, quotes, `;` and `$`
    are fine: `header_quote` quotes them."""
    if not value or any(c in value for c in "\n\r\0\\"):
        raise HelixflowError(
            f"{what} {value!r} cannot go in an #SBATCH line (empty, line break or backslash)",
            hint="use a scratch path and names without line breaks or backslashes",
        )
    return value


def header_quote(value: str, what: str) -> str:
    """A value for an `#SBATCH` line. sbatch splits those lines itself, honouring single
    and double quotes like a shell (no expansion), so `shlex.quote` keeps spaces, quotes,
    `;`, `$()` and `#` literal.

    Example:
        >>> header_quote("/scratch/my run/slurm.out", "output")
        "'/scratch/my run/slurm.out'"
    """
    return shlex.quote(check_header_value(value, what))


def literal_filename(path: str) -> str:
    """A path for `--output`/`--error`, whose `%` patterns (`%j`, `%a`) Slurm expands:
    each literal `%` doubled (`%%`), so a folder named `50%20` stays that folder."""
    return path.replace("%", "%%")


def format_minutes(minutes: int) -> str:
    """Slurm `--time` for whole minutes: `D-HH:MM:00`."""
    days, rest = divmod(int(minutes), 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00"


def job_name(run_id: str, name: str) -> str:
    """The Slurm job name: carries the run id, so `squeue` shows whose job it is."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "-", f"hf-{run_id}-{name}")
    return safe[:200]


_JOB_PRELUDE = r"""set -euo pipefail
__hf_dir={job_dir}
__hf_child=""
__hf_finish() {{
  local rc=$?
  set +e
  printf '%s\n' "$rc" >"$__hf_dir/{exitcode}.tmp.$$" \
    && mv -f "$__hf_dir/{exitcode}.tmp.$$" "$__hf_dir/{exitcode}"
}}
trap __hf_finish EXIT
# Slurm's --signal (B:) and scancel reach this shell: pass them on to the running command.
__hf_forward() {{
  printf '%s\n' "$1" >>"$__hf_dir/{signal}"
  if [ -n "$__hf_child" ]; then kill -s "$1" "$__hf_child" 2>/dev/null || true
  elif [ "$1" = TERM ]; then exit 143
  elif [ "$1" = INT ]; then exit 130
  fi
}}
trap '__hf_forward TERM' TERM
trap '__hf_forward INT' INT
trap '__hf_forward USR1' USR1
trap '__hf_forward USR2' USR2
__hf_run() {{
  "$@" &
  __hf_child=$!
  local rc=0
  while :; do
    rc=0
    wait "$__hf_child" || rc=$?
    kill -0 "$__hf_child" 2>/dev/null || break
  done
  __hf_child=""
  return "$rc"
}}
rm -f "$__hf_dir/{exitcode}"
cd "$__hf_dir"
"""


def render_job_script(
    spec: JobSpec,
    job_dir: str,
    header: SbatchOptions | None,
    *,
    setup_lines: Sequence[str] = (),
) -> str:
    """The bash script of one job.

    `#SBATCH` header (when submitted on its own), strict mode, an EXIT trap writing the
    exit code to `.exitcode` atomically (temp file + mv) so a job that vanished from the
    queue is still decided, signal forwarding to the running command, `cd` to the job
    directory, the block's environment setup lines (trusted, verbatim), the job's `env`
    (quoted), then every command with each argument `shlex.quote`d.
    """
    lines = ["#!/bin/bash"]
    if header is not None:
        lines += header.lines()
    lines.append(f"# helixflow job {spec.name}")
    lines.append(_JOB_PRELUDE.format(
        job_dir=shlex.quote(job_dir), exitcode=EXITCODE_FILE, signal=SIGNAL_FILE,
    ).rstrip("\n"))
    if setup_lines:
        lines.append("# environment setup (cluster block)")
        lines += [line.rstrip("\n") for line in setup_lines]
    for key, value in spec.env.items():
        lines.append(f"export {key}={shlex.quote(value)}")
    for argv in spec.commands:
        lines.append("__hf_run " + shlex.join(argv))
    if spec.script:
        lines.append("# job script body")
        lines.append(spec.script.rstrip("\n"))
    return "\n".join(lines) + "\n"


def render_array_script(header: SbatchOptions, batch_dir: str) -> str:
    """The array script: each task runs its own `<batch_dir>/<task id>/job.sh`."""
    lines = ["#!/bin/bash", *header.lines(), "set -euo pipefail"]
    lines.append(
        f'exec /bin/bash {shlex.quote(batch_dir)}/"$SLURM_ARRAY_TASK_ID"/{JOB_SCRIPT}'
    )
    return "\n".join(lines) + "\n"


def array_spec(count: int, max_concurrent: int | None) -> str:
    """`--array` value for `count` tasks, throttled to `max_concurrent` at once."""
    spec = f"0-{count - 1}"
    return f"{spec}%{max_concurrent}" if max_concurrent else spec


def tail(text: str, lines: int = 30, chars: int = 4000) -> str:
    """The last lines of a log, bounded in size."""
    out = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return out[-chars:]


# -- SSH -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    """How to reach a cluster's login node without a password prompt."""

    host: str
    user: str | None = None
    port: int = 22
    key_path: str | None = None
    options: tuple[str, ...] = ()

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_base(self) -> list[str]:
        """`ssh` argv up to the destination: batch mode (never prompts), key, port."""
        argv = ["ssh", "-o", "BatchMode=yes", "-p", str(self.port)]
        if self.key_path:
            argv += ["-i", self.key_path, "-o", "IdentitiesOnly=yes"]
        for opt in self.options:
            argv += ["-o", opt]
        return argv

    def remote(self, argv: Sequence[str]) -> list[str]:
        """Run argv on the login node: the remote shell sees one string, each word quoted."""
        return [*self.ssh_base(), self.destination, "--", shlex.join(argv)]

    def rsync_push(self, local_dir: str, remote_dir: str) -> list[str]:
        """Copy a local directory's contents to the remote directory (created if needed).
        `-s` (protect args) sends remote paths unsplit by the remote shell: no quoting."""
        return ["rsync", "-a", "-s", "--mkpath", "-e", shlex.join(self.ssh_base()),
                local_dir.rstrip("/") + "/", f"{self.destination}:{remote_dir.rstrip('/')}/"]

    def rsync_pull(self, remote_path: str, local_path: str) -> list[str]:
        """Copy one remote file (or directory) back to a local path."""
        return ["rsync", "-a", "-s", "-e", shlex.join(self.ssh_base()),
                f"{self.destination}:{remote_path}", local_path]


def posix_join(*parts: str) -> str:
    """Join remote (POSIX) path parts."""
    return str(PurePosixPath(*parts))
