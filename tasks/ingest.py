"""FASTQ ingest: validate raw reads and cut them into Parquet shards in the store.

The parsing and validation kernel lives in `tasks.fastq` (pure, no Prefect); this module
is the I/O edge: it streams one sample into shards in a scratch directory, and only when
the whole input has validated publishes them, so bad input publishes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact, FileRef
from helixflow.caching import stage_options
from helixflow.resources import where_am_i
from helixflow.retries import retry_options
from helixflow.samples import Sample
from helixflow.store import Store
from helixflow.tasks.fastq import iter_read_batches
from helixflow.tasks.reads import write_read_shard
from helixflow.tasks.readstats import ReadStats, batch_stats
from helixflow.uris import is_local, local_path

INGEST_VERSION = "3"
SHARD_MEDIA_TYPE = "application/vnd.apache.parquet"


class IngestResult(BaseModel):
    """The shards of one sample plus its read statistics."""

    sample: str
    layout: str
    inputs: list[FileRef]
    shards: list[Artifact]
    stats: dict[str, Any]
    first_read_id: str = ""
    name_suffix: str = ""  # "/1" when R1's names end so (minimap2 hashes it; read_id drops it)


def summarize(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Totals over mates of `ReadStats.to_dict()` output, for summary tables.

    Args:
        stats: per-mate statistics, {"0" | "1" | "2": MateStats dict}, as
            `ReadStats.to_dict()` gives them.

    Returns:
        reads, bases, empty_reads, n_bases (sums), mean_length, and gc and mean_quality
        (base-weighted means; None when no mate has bases or a value).
    """
    mates = list(stats.values())
    reads = sum(m["reads"] for m in mates)
    bases = sum(m["bases"] for m in mates)

    def weighted(key: str) -> float | None:
        pairs = [(m[key], m["bases"]) for m in mates if m.get(key) is not None and m["bases"]]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else None

    return {
        "reads": reads,
        "bases": bases,
        "empty_reads": sum(m["empty_reads"] for m in mates),
        "mean_length": bases / reads if reads else 0.0,
        "gc": weighted("gc_fraction"),
        "n_bases": sum(m["n_bases"] for m in mates),
        "mean_quality": weighted("mean_quality"),
    }


def shard_name(sample: str, index: int) -> str:
    """The file name of a sample's read shard number `index`.

    Args:
        sample: the sample name.
        index: the 0-based shard number (zero-padded to 5 digits).

    Returns:
        "<sample>.reads.<index>.parquet".
    """
    return f"{sample}.reads.{index:05d}.parquet"


def _reader_uri(ref: FileRef) -> str:
    return str(local_path(ref.uri)) if is_local(ref.uri) else ref.uri


def write_sample_shards(
    sample: Sample,
    r1: FileRef,
    r2: FileRef | None,
    out_dir: Path,
    *,
    shard_size: int,
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[tuple[Path, int]], ReadStats, str]:
    """Stream a sample into local shard files; returns (path, rows) per shard, stats and
    the first read's id (fastp-style per-file decisions, e.g. polyG trimming, need it).

    Raises `InputError` on the first malformed record, before anything is published.

    Args:
        sample: the sample (name, and `interleaved` for mates alternating in r1).
        r1: the mate-1 (or single-end) FASTQ.
        r2: the mate-2 FASTQ, or None.
        out_dir: the local folder to write the shards to.
        shard_size: fragments (reads or pairs) per shard.
        storage_options: fsspec options for remote inputs; None for none.

    Returns:
        ([(shard path, rows)], the merged ReadStats, the first read's id).

    Raises:
        InputError: malformed or empty input.
    """
    shards: list[tuple[Path, int]] = []
    stats: ReadStats | None = None
    first_id = ""
    sources = [r1.uri] + ([r2.uri] if r2 else [])
    batches = iter_read_batches(
        _reader_uri(r1),
        _reader_uri(r2) if r2 else None,
        interleaved=sample.interleaved,
        batch_size=shard_size,
        storage_options=storage_options,
    )
    for index, batch in enumerate(batches):
        path = out_dir / shard_name(sample.name, index)
        rows = write_read_shard(
            batch,
            path,
            metadata={"helixflow.sample": sample.name, "helixflow.sources": ",".join(sources)},
        )
        shards.append((path, rows))
        if index == 0 and batch.num_rows:
            first_id = str(batch.column("read_id")[0].as_py())
        this = batch_stats(batch)
        stats = this if stats is None else stats.merge(this)
    if stats is None:  # iter_read_batches raises on empty input; this guards the contract
        raise RuntimeError(f"no batches read from {sources}")
    return shards, stats, first_id


@materialize(
    "helixflow://ingest",
    name="ingest-fastq",
    task_run_name="ingest-{sample.name}",
    **stage_options(INGEST_VERSION),
)
def ingest_fastq(
    sample: Sample,
    r1: FileRef,
    r2: FileRef | None,
    shard_size: int,
    store: Store,
    run_id: str,
) -> IngestResult:
    """Validate one sample's FASTQ and publish it as zstd Parquet read shards.

    Args:
        sample: the sample (name and layout; its URIs are informational, content comes from r1/r2)
        r1, r2: the input files with their content identity (r2 None for single/interleaved)
        shard_size: fragments (reads or pairs) per shard
        store: where shards are published
        run_id: the run whose folder shows the shards

    Returns:
        IngestResult with one Artifact per shard and the sample's read statistics.
    """
    logger = get_run_logger()
    inputs = [r1] + ([r2] if r2 else [])
    options = store.storage_options if store.scheme == "s3" else None
    params = {"shard_size": shard_size, "layout": sample.layout}
    with store.scratch() as scratch:
        files, stats, first_id = write_sample_shards(
            sample, r1, r2, scratch, shard_size=shard_size, storage_options=options
        )
        node = where_am_i()
        summary = stats.to_dict()
        shards = [
            store.publish(
                path, run_id=run_id, stage="ingest", media_type=SHARD_MEDIA_TYPE,
                rows=rows, producer="ingest-fastq", params=params, upstream=inputs,
                executed_on=node,
                metadata={"sample": sample.name, "shard": i, "input_stats": summary},
            )
            for i, (path, rows) in enumerate(files)
        ]
    logger.info(
        "ingested %s (%s): %d shards, %s reads", sample.name, sample.layout, len(shards),
        summarize(summary)["reads"],
    )
    from helixflow.tasks.align_map import name_suffix_of

    return IngestResult(
        sample=sample.name, layout=sample.layout, inputs=inputs, shards=shards, stats=summary,
        first_read_id=first_id, name_suffix=name_suffix_of(r1.uri, options),
    )


@task(
    name="identify-input",
    task_run_name="identify-{uri}",
    **retry_options(),
)
def identify_input(uri: str, storage_options: dict[str, Any] | None = None) -> FileRef:
    """Content identity of one input file: sha256 (local) or ETag+size (S3).

    Args:
        uri: a local path or URL.
        storage_options: fsspec options for a remote `uri`; None for none.

    Returns:
        A FileRef with the file's identity.
    """
    from helixflow.store import identify

    return identify(uri, storage_options)
