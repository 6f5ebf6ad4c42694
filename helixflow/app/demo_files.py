"""The demo's files on disk: deterministic writers, file identities, atomic siblings.

Part of `helixflow.app.demo`: gzip output depends on content only (mtime 0, no name), every
file is fsynced, and a demo is built in a hidden sibling directory so renames are atomic.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

GZIP_LEVEL = 4  # 3x faster than 6 for 3% more bytes


def sibling_dir(out: Path, role: str) -> Path:
    """A new hidden directory next to `out` (same file system, so renames are atomic).

    Made with `os.mkdir` so it gets the usual umask permissions (mkdtemp would give 0700).
    """
    while True:
        path = out.parent / f".{out.name}.{role}-{secrets.token_hex(6)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


def sha256(path: Path, *, decompress: bool = False) -> str:
    """Hex sha256 of a file's bytes (or of its gunzipped content)."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") if decompress else path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file; for .gz also of the content, which does not depend on
    the zlib build (compressed bytes can differ between zlib implementations)."""
    identity: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    if path.suffix == ".gz":
        identity["content_sha256"] = sha256(path, decompress=True)
    return identity


@contextmanager
def open_out(path: Path, *, compress: bool) -> Iterator[IO[bytes]]:
    """A binary writer, gzip with mtime 0 and no file name so bytes depend on content only."""
    with path.open("wb") as raw:
        if compress:
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
            ) as gz:
                yield gz
        else:
            yield raw
        raw.flush()
        os.fsync(raw.fileno())

