"""Job scripts: the `#SBATCH` header (each value quoted for sbatch's own parser), the bash
body of one job (exit-code sentinel, signal forwarding, quoted argv) and the array script
that runs each task's own job script; the file names of a job directory.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from helixflow.errors import HelixflowError
from helixflow.slurm import JobSpec

EXITCODE_FILE = ".exitcode"
SIGNAL_FILE = ".signal"
STDOUT_FILE = "slurm.out"
STDERR_FILE = "slurm.err"
JOB_SCRIPT = "job.sh"
ARRAY_SCRIPT = "array.sh"


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
