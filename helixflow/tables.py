"""Reading and publishing Parquet tables and files in the store: the I/O edge of tasks."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from helixflow.artifacts import Artifact, FileRef
from helixflow.resources import where_am_i
from helixflow.store import Store
from helixflow.uris import is_local, local_path

PARQUET = "application/vnd.apache.parquet"


def read_table(store: Store, ref: FileRef, columns: list[str] | None = None) -> pa.Table:
    """A Parquet artifact as an Arrow table (streamed from S3, memory-mapped locally)."""
    if is_local(ref.uri):
        return pq.read_table(local_path(ref.uri), columns=columns, memory_map=True)
    with store.open(ref.uri, "rb") as handle:
        return pq.read_table(handle, columns=columns)


@contextmanager
def parquet_file(store: Store, ref: FileRef | str) -> Iterator[pq.ParquetFile]:
    """A Parquet artifact (or URI) opened for streaming by row group (memory-mapped locally)."""
    uri = ref if isinstance(ref, str) else ref.uri
    if is_local(uri):
        yield pq.ParquetFile(local_path(uri), memory_map=True)
        return
    with store.open(uri, "rb") as handle:
        yield pq.ParquetFile(handle)


def fetch(store: Store, ref: FileRef, dest_dir: Path, name: str | None = None) -> Path:
    """A local path holding the artifact's bytes (the file itself when the store is local)."""
    if is_local(ref.uri):
        return local_path(ref.uri)
    dest = dest_dir / (name or ref.name)
    with store.open(ref.uri, "rb") as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 8 << 20)
    return dest


def write_parquet(table: pa.Table | pa.RecordBatch, path: Path) -> int:
    """zstd Parquet at a local path; returns rows."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    pq.write_table(table, path, compression="zstd", row_group_size=128 * 1024)
    return table.num_rows


def publish_table(
    store: Store,
    table: pa.Table | pa.RecordBatch,
    scratch: Path,
    *,
    run_id: str,
    stage: str,
    name: str,
    producer: str,
    params: dict[str, Any] | None = None,
    upstream: list[FileRef] | None = None,
    metadata: dict[str, Any] | None = None,
    tools: dict[str, str] | None = None,
) -> Artifact:
    """Write a table to scratch as Parquet and publish it atomically as an artifact."""
    path = scratch / name
    rows = write_parquet(table, path)
    return store.publish(
        path, run_id=run_id, stage=stage, media_type=PARQUET, rows=rows, producer=producer,
        params=params or {}, upstream=upstream or [], metadata=metadata or {},
        tools=tools or {}, executed_on=where_am_i(),
    )


def publish_file(
    store: Store,
    path: Path,
    *,
    run_id: str,
    stage: str,
    media_type: str,
    producer: str,
    name: str | None = None,
    rows: int | None = None,
    params: dict[str, Any] | None = None,
    upstream: list[FileRef] | None = None,
    metadata: dict[str, Any] | None = None,
    tools: dict[str, str] | None = None,
) -> Artifact:
    """Publish a finished local file (BAM, VCF, FASTA, HTML) atomically as an artifact."""
    return store.publish(
        path, run_id=run_id, stage=stage, name=name, media_type=media_type, rows=rows,
        producer=producer, params=params or {}, upstream=upstream or [],
        metadata=metadata or {}, tools=tools or {}, executed_on=where_am_i(),
    )


def as_batch(table: pa.Table) -> pa.RecordBatch:
    """One contiguous RecordBatch of a table (kernels index rows by position)."""
    combined = table.combine_chunks()
    batches = combined.to_batches()
    if not batches:
        return pa.RecordBatch.from_pylist([], schema=table.schema)
    return batches[0]


def pack_files(files: list[Path], out: Path) -> Path:
    """Files as one reproducible tar (sorted names, zeroed times and owners), so the same
    content always has the same sha256: models and hash functions are published this way."""
    import tarfile

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(files, key=lambda p: p.name):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return out


def unpack_cached(store: Store, bundle: FileRef, kind: str) -> Path:
    """A tar artifact unpacked in this node's cache, once per sha256 (model loading on
    every worker without refetching)."""
    import contextlib
    import os
    import tarfile
    import tempfile

    from helixflow.settings import helixflow_home

    root = helixflow_home() / "cache" / kind
    target = root / str(bundle.sha256)
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        tar_path = fetch(store, bundle, Path(tmp), name="bundle.tar")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tar_path) as tar:
            tar.extractall(unpacked, filter="data")
        with contextlib.suppress(OSError):  # another worker may have won the race
            os.replace(unpacked, target)
    return target
