"""Bounded read sampling: the first N sequences of some reads, reading no further.

Fitting the LSHvec hash, pretraining DNABERT and `helixflow pretrain-dnabert` each learn
from a sample of the reads. The sample is a prefix in input order, not a random draw: it
is deterministic without a seed (the same inputs give the same hash and model, byte for
byte), and reading stops at the bound, so the cost is set by the sample size, never by the
input. Batches are pulled lazily, so once the bound is reached no further batch is read and
no further file or shard is opened.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa

from helixflow.artifacts import FileRef
from helixflow.store import Store
from helixflow.tables import parquet_file

SAMPLE_BATCH = 65_536  # rows read at a time while sampling


def first_sequences(batches: Iterable[pa.RecordBatch], limit: int,
                    column: str = "sequence") -> pa.Array:
    """The first `limit` values of `column` over `batches`, in order.

    Args:
        batches: record batches holding `column` (a generator is pulled only as far as
            needed, then closed, so the files behind it are released).
        limit: most values returned; 0 or less reads nothing.
        column: the column to take.

    Returns:
        One array of at most `limit` values (an empty string array when there are none).

    Example:
        >>> b = pa.record_batch({"sequence": ["ACG", "TTA", "GGC"]})
        >>> first_sequences([b, b], 4).to_pylist()
        ['ACG', 'TTA', 'GGC', 'ACG']
    """
    parts: list[pa.Array] = []
    have = 0
    it = iter(batches)
    try:
        while have < limit:
            batch = next(it, None)
            if batch is None:
                break
            parts.append(batch.column(column).slice(0, limit - have))
            have += len(parts[-1])
    finally:
        close = getattr(it, "close", None)  # a generator: release what it holds open
        if close is not None:
            close()
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def shard_batches(store: Store, shards: Sequence[FileRef], columns: Sequence[str] = ("sequence",),
                  batch_size: int = SAMPLE_BATCH) -> Iterator[pa.RecordBatch]:
    """The rows of read shards as record batches, shard after shard, each opened lazily.

    Args:
        store: the store holding the shards.
        shards: read shards (Parquet), in order.
        columns: the columns to read.
        batch_size: rows per batch.

    Returns:
        An iterator of record batches with `columns`; each shard is closed once read.
    """
    for shard in shards:
        with parquet_file(store, shard) as source:
            yield from source.iter_batches(batch_size=batch_size, columns=list(columns))


def sample_shard_sequences(store: Store, shards: Sequence[FileRef], limit: int) -> pa.Array:
    """The first `limit` read sequences of the shards, in shard order (see `first_sequences`).

    Args:
        store: the store holding the shards.
        shards: read shards (Parquet), in order.
        limit: most sequences returned.

    Returns:
        The sequences (at most `limit`).
    """
    return first_sequences(shard_batches(store, shards), limit)
