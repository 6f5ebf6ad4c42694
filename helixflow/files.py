"""Atomic local writes: a file appears whole under its name, or not at all.

Every writer of a local file that someone else may read by name (a shard before it is
published, a model, a NetCDF file, a state file) goes through `atomic_path`, so the rule
is the same everywhere: write to a temporary name in the target's own folder, flush it to
disk, give it the mode a plainly created file would get, rename it over the target, flush
the folder; on any error the temporary file is removed and the target is untouched.
`atomic_dir` applies the same rule to a folder written as a whole (a model checkpoint).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make a rename in folder `path` durable (no-op where folders can't be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path, *, mode: int = 0o666, suffix: str = "") -> Iterator[Path]:
    """A temporary path next to `path`; renamed onto `path` when the block succeeds.

    The writer inside the block opens and closes the temporary file itself (any library
    that takes a path: netCDF4, pysam, pyarrow). `mode` is masked by the umask, as for
    `open()`; pass 0o777 for a folder's worth of executable output. `suffix` ends the
    temporary name (".bam", ".vcf.gz") for tools that choose a format by file name.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "x.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("whole")
        >>> target.read_text()
        'whole'
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.is_file():
            _fsync_file(tmp)
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder next to `path`; it replaces `path` (a folder) when the block succeeds.

    The files written in it are flushed to disk, the folder gets the mode `mkdir` would
    give (not mkdtemp's 0o700), an existing `path` is renamed aside and removed after the
    new folder took its name. On any error the temporary folder is removed and `path` is
    untouched. (Between the two renames `path` is briefly absent: a folder cannot be
    renamed over a non-empty one.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                _fsync_file(file)
        fsync_dir(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
