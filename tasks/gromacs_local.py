"""Running a GROMACS job (`tasks.gromacs_job.MdJob`) here, in a local directory: its argv
commands one after the other, failures explained from GROMACS's own error text
(`gromacs_error`), each command named for messages (`describe_command`).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from helixflow.errors import HelixflowError
from helixflow.tasks.gromacs_job import STDERR_WRAPPER, STDIN_WRAPPER


def describe_command(argv: Sequence[str]) -> str:
    """'gmx grompp -o nvt.tpr'-style label of a job command for messages.

    Args:
        argv: a job command, possibly wrapped by `with_stdin` / `with_stderr_file`.

    Returns:
        The program name, its gmx subcommand and its -deffnm or -o value; "empty command"
        for an empty argv.
    """
    args = list(argv)
    if args[:3] in (["sh", "-c", STDIN_WRAPPER], ["sh", "-c", STDERR_WRAPPER]):
        args = args[5:]
    if not args:
        return "empty command"
    label = [Path(args[0]).name]
    rest = args[1:]
    sub = next((a for a in rest if not a.startswith("-")), None)
    if sub is not None and label[0].startswith("gmx"):
        label.append(sub)
    for flag in ("-deffnm", "-o"):
        if flag in rest and rest.index(flag) + 1 < len(rest):
            label += [flag, rest[rest.index(flag) + 1]]
            break
    return " ".join(label)


def gromacs_error(text: str) -> str:
    """GROMACS' own error message from a log, on one line.

    That is the fatal-error block between dashed rules, preceded by grompp's WARNING and
    ERROR paragraphs (which say what is actually wrong when the block only says 'Too
    many warnings'); else the last lines.

    Args:
        text: a GROMACS tool's output.

    Returns:
        The message; the last 5 non-blank lines joined by " | " when there is no error
        block, or "no output".
    """
    lines = text.splitlines()
    problems: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith(("WARNING", "ERROR")) and "[" in line:
            para = [line.strip()]
            for nxt in lines[i + 1 :]:
                if not nxt.strip():
                    break
                para.append(nxt.strip())
            problems.append(" ".join(para))
    rules = [i for i, line in enumerate(lines) if line.startswith("-----")]
    fatal = ""
    for a, b in zip(rules[-2::-1], rules[:0:-1], strict=False):  # last block first
        block = [ln.strip() for ln in lines[a + 1 : b] if ln.strip()]
        if any(ln.startswith("Program:") for ln in block):
            skip = ("Program:", "Source file:", "Function:", "For more information",
                    "website at", "MPI rank:")
            fatal = " ".join(ln for ln in block if not ln.startswith(skip))
            break
    message = " ".join([*problems[-3:], fatal]).strip()
    if message:
        return message
    return " | ".join(ln.strip() for ln in lines[-5:] if ln.strip()) or "no output"


def run_md_locally(
    commands: Sequence[Sequence[str]],
    workdir: str | Path,
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> list[float]:
    """Run the job's commands in order in `workdir`; the seconds each took.

    Each command's stdout and stderr go to `workdir/logs/NN-<tool>.log`. A failing
    command raises HelixflowError naming the step (e.g. 'gmx grompp -o nvt.tpr') with
    GROMACS' error text, and the log path in the hint.

    Args:
        commands: argv lists, run without a shell, stdin closed.
        workdir: the job directory, holding the inputs; receives the outputs and logs/.
        timeout: seconds each command may take; None for no limit.
        env: variables added to the environment (GMX_MAXBACKUP=-1 is set unless overridden).

    Returns:
        Wall seconds per command, in order.

    Raises:
        HelixflowError: a command is not found, times out or exits non-zero.
    """
    workdir = Path(workdir)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_env = {**os.environ, "GMX_MAXBACKUP": "-1", **(env or {})}
    seconds: list[float] = []
    for number, argv in enumerate(commands, start=1):
        label = describe_command(argv)
        words = label.split()
        tool = words[1] if len(words) > 1 and not words[1].startswith("-") else words[0]
        log = logs / f"{number:02d}-{re.sub(r'[^A-Za-z0-9_.+-]', '_', tool)}.log"
        began = time.perf_counter()
        try:
            with open(log, "wb") as out:
                proc = subprocess.run(
                    list(argv), cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env=run_env, timeout=timeout, check=False,
                )
        except FileNotFoundError:
            raise HelixflowError(
                f"{label}: {argv[0]!r} not found",
                hint="install GROMACS (`apt-get install gromacs`) or set GromacsSettings.gmx",
            ) from None
        except subprocess.TimeoutExpired:
            raise HelixflowError(
                f"{label} timed out after {timeout} s", hint=f"see {log}"
            ) from None
        seconds.append(time.perf_counter() - began)
        if proc.returncode != 0:
            text = log.read_text(errors="replace")
            raise HelixflowError(
                f"{label} failed (exit {proc.returncode}): {gromacs_error(text)}",
                hint=f"full output in {log}",
            )
    return seconds
