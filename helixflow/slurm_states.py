"""What Slurm says of its jobs: `squeue`, `scontrol` and `sbatch` output parsed; Slurm job
states mapped to Prefect's (final? resubmit? error?), a memory kill recognised, exit codes
as a shell reports them, and the memory of the attempt after an OUT_OF_MEMORY.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from prefect.client.schemas.objects import StateType

from helixflow.errors import HelixflowError

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


# -- squeue, scontrol, sbatch --------------------------------------------------------------


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
