"""The local Prefect server's process: its command line and port, recognising it by pid
(never trusting a recycled one), stopping its process group, reaping the children this
process started. Part of `helixflow.app.server`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from helixflow.errors import HelixflowError

HOST = "127.0.0.1"

# Servers this process started, kept so that `kill` and `reap` can collect them (no zombies).
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(port: int, env: dict[str, str], cwd: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start the server on `port`, detached (own session and process group: it outlives
    us), its output to `log`; remembered in `CHILDREN` until reaped or `forget`."""
    proc = subprocess.Popen(
        command(port),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own session and process group: outlives us
        close_fds=True,
    )
    CHILDREN[proc.pid] = proc
    return proc


def forget(pid: int) -> None:
    """Stop tracking a server that has exited (its status already collected)."""
    CHILDREN.pop(pid, None)


def command(port: int) -> list[str]:
    """The server command line; `is_server_process` recognises it by these arguments."""
    return [
        sys.executable, "-m", "prefect", "server", "start",
        "--host", HOST, "--port", str(port),
        "--analytics-off",
    ]  # fmt: skip


def free_port(preferred: int | None = None) -> int:
    """`preferred` if it is free on 127.0.0.1 now, else any free port (the server may
    still lose it: `_start` retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: connections of a stopped server in TIME_WAIT do not block it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, preferred or 0))
        except OSError:
            sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _process_info(pid: int) -> tuple[str, list[str]] | None:
    """(state letter, argv) of a process, or None if there is none."""
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            stat = (proc / "stat").read_text()
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (FileNotFoundError, ProcessLookupError):
            return None
        except PermissionError:
            return ("?", [])
        # The state letter follows the command name, which is in parentheses.
        return stat.rsplit(")", 1)[1].split()[0], [a for a in argv if a]
    result = subprocess.run(  # macOS and other systems without /proc
        ["ps", "-p", str(pid), "-o", "stat=", "-o", "command="],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout.strip():
        return None
    stat, _, command = result.stdout.strip().partition(" ")
    return stat[:1], command.split()


def _pid_alive(pid: int) -> bool:
    """True if `pid` is a live process (a zombie counts as dead)."""
    info = _process_info(pid)
    return info is not None and info[0] != "Z"


def is_server_process(pid: int, port: int) -> bool:
    """True if `pid` is alive and is a `prefect server start ... --port <port>`.

    Guards against a recycled pid: a stale state file must not make us trust, or kill,
    some other process.
    """
    info = _process_info(pid)
    if info is None or info[0] == "Z":
        return False
    argv = info[1]
    if not any("prefect" in arg for arg in argv) or "server" not in argv:
        return False
    return any(a == "--port" and b == str(port) for a, b in itertools.pairwise(argv))


def kill(pid: int, deadline: float) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it outlives `deadline`."""
    group = _leads_group(pid)
    _signal(pid, signal.SIGTERM, group)
    if not _wait_dead(pid, deadline):
        _signal(pid, signal.SIGKILL, group)
        if not _wait_dead(pid, time.monotonic() + 10.0):
            raise HelixflowError(
                f"the Prefect server (pid {pid}) survived SIGKILL",
                hint=f"kill it by hand: kill -9 {pid}",
            )
    if group:  # anything the server left behind in its group goes too
        _signal(pid, signal.SIGKILL, group)
    reap(pid)  # it may have turned zombie after the last check: collect it now


def _wait_dead(pid: int, deadline: float) -> bool:
    """Wait until `pid` has exited (reaping it if it is our child); False on timeout."""
    while True:
        reap(pid)
        if not _pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _leads_group(pid: int) -> bool:
    """True if `pid` leads its own process group (as the servers we start do)."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    """Send `sig` to the process group led by `pid`, or to `pid` alone."""
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def reap(pid: int) -> None:
    """Collect the exit status of a server this process started, so it is not a zombie."""
    proc = CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        CHILDREN.pop(pid, None)
