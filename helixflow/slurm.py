"""Batch jobs, free of Prefect flows and subprocesses: what a job is (`JobSpec`), what became
of it (`JobResult`), and how a failed one is reported (`SlurmJobFailed`).

A job is generic (GROMACS or anything else): argv commands (or a bash body the caller
quoted), input files staged into its directory, output file names copied back, resources.
`helixflow.slurm_jobs` runs these through Slurm (local CLI or SSH) or, with no Slurm,
through bash; `helixflow.slurm_scripts` renders their scripts, `helixflow.slurm_states`
reads what Slurm says of them, `helixflow.slurm_backends` submits them and
`helixflow.slurm_staging` writes their folders.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator

from helixflow.artifacts import Artifact, FileRef
from helixflow.errors import HelixflowError

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


def tail(text: str, lines: int = 30, chars: int = 4000) -> str:
    """The last lines of a log, bounded in size."""
    out = "\n".join(text.rstrip("\n").splitlines()[-lines:])
    return out[-chars:]
