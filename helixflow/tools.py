"""Versions of external command-line tools, for cache keys and lineage."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

from helixflow.errors import HelixflowError

# How each tool reports its version; the first line matching a version number wins.
_VERSION_ARGS: dict[str, list[str]] = {
    "samtools": ["--version"],
    "bcftools": ["--version"],
    "minimap2": ["--version"],
    "fastp": ["--version"],
    "seqkit": ["version"],
    "megahit": ["--version"],
    "prodigal": ["-v"],
    "lighter": ["-v"],
    "gmx": ["--version"],
    "sbatch": ["--version"],
}
_NUMBER = re.compile(r"\d+(?:\.\d+)+[\w.-]*")


def require_tool(name: str, *, package: str | None = None) -> str:
    """Path of an external tool, or a clear error naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        raise HelixflowError(
            f"required tool {name!r} is not on PATH",
            hint=f"install it, e.g. `apt-get install {package or name}`",
        )
    return path


@functools.cache
def tool_version(name: str) -> str:
    """`name`'s version string (e.g. '1.16.1'), 'missing' when it is not installed."""
    path = shutil.which(name)
    if path is None:
        return "missing"
    args = _VERSION_ARGS.get(name, ["--version"])
    try:
        proc = subprocess.run(
            [path, *args], capture_output=True, text=True, errors="replace", timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        match = _NUMBER.search(line)
        if match:
            return match.group(0)
    return "unknown"
