"""Exact-duplicate removal across all shards of a run, in bounded memory (map/reduce).

Why three phases: a run is many read shards processed by separate workers, and a duplicate
may sit in any other shard. Holding every sequence in one place does not scale, so
duplicates are found on small fixed-size keys instead:

1. map, per shard (`fragment_keys`): one row per fragment with a 128-bit hash of its
   sequence(s), the sum of its Phred scores and its global position (shard, fragment);
   `partition_keys` splits the rows by hash into P partitions;
2. reduce, per partition (`choose_keepers`): the partition's rows from every shard are
   grouped by hash; in each group the keeper is the fragment with the best qualities
   (ties: first occurrence), and every other member is emitted as dropped;
3. apply, per shard (`drop_duplicates`): filter the shard against its dropped ids.

Memory per reduce task is about 40 bytes times the fragments of one partition.

Hashing is vectorised: sequences are laid out as a zero-padded byte matrix, viewed as
64-bit words, and folded column by column into two independent 64-bit lanes with
different finalisers (murmur3's fmix64 and splitmix64's); the length is mixed in last.
Two distinct sequences share a key with probability about 2^-128 per pair, so for a run of
10^10 fragments a false merge has odds below 10^-18: keys are treated as exact.

Sequence identity follows `seqkit rmdup -s` by default: a read and its reverse complement
are the same sequence (`strand="both"`); for pairs, the same fragment read from the other
strand has its mates swapped, so (R1, R2) equals (R2, R1). `strand="forward"` compares
as written (`seqkit rmdup -s -P`, fastp `-D`).

Example:
    >>> keys = [fragment_keys(b, shard_index=i) for i, b in enumerate(batches)]  # doctest: +SKIP
    >>> parts = [partition_keys(k, 16) for k in keys]  # doctest: +SKIP
    >>> results = [choose_keepers([p[j] for p in parts]) for j in range(16)]  # doctest: +SKIP
    >>> dropped = pa.concat_tables([d for d, _ in results])  # doctest: +SKIP
    >>> kept = [drop_duplicates(b, dropped, i) for i, b in enumerate(batches)]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact
from helixflow.caching import stage_options
from helixflow.store import Store
from helixflow.tables import as_batch, publish_table, read_table
from helixflow.tasks.reads import padded, string_parts

KEYS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("hash_hi", pa.uint64(), nullable=False),
        pa.field("hash_lo", pa.uint64(), nullable=False),
        pa.field("qsum", pa.int64(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("fragment", pa.int64(), nullable=False),
    ]
)
"""Map-phase output: one row per fragment."""

DROPPED_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("fragment", pa.int64(), nullable=False),
    ]
)
"""Reduce-phase output: the fragments to remove."""

Strand = Literal["both", "forward"]

_PHRED_OFFSET = 33
_ROWS_PER_CHUNK = 1 << 15  # reads hashed at a time: keeps the padded matrices in cache
_SEED_A = np.uint64(0x243F6A8885A308D3)
_SEED_B = np.uint64(0x13198A2E03707344)
_PAIR_KEY = np.uint64(0xA4093822299F31D0)

# Complement of every IUPAC code (upper case), for reverse complements; others map to self.
_COMPLEMENT = np.arange(256, dtype=np.uint8)
for _a, _b in zip(b"ACGTURYSWKMBDHVN", b"TGCAAYRSWMKVHDBN", strict=True):
    _COMPLEMENT[_a] = _b


@dataclass(frozen=True)
class DedupCounts:
    """Fragments seen, kept and dropped (by one partition, or merged over several)."""

    fragments: int = 0
    kept: int = 0
    dropped: int = 0

    def merge(self, other: DedupCounts) -> DedupCounts:
        """Counts of both inputs."""
        return DedupCounts(
            self.fragments + other.fragments, self.kept + other.kept, self.dropped + other.dropped
        )

    @property
    def duplication_rate(self) -> float:
        """Share of fragments that are duplicates of a kept one (0 when empty)."""
        return self.dropped / self.fragments if self.fragments else 0.0


# --------------------------------------------------------------------------------------
# Hashing


def _fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser, in place (a bijection with full avalanche)."""
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place; different constants from _fmix64 keep lanes apart."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _fold(matrix: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit hash lanes of each padded row.

    Only a row's own words are folded in, never its padding, so the hash does not
    depend on the longest read of the batch (shards differ in that).
    """
    words = np.ascontiguousarray(matrix).view("<u8")
    n = len(lengths)
    own = (lengths + 7) // 8
    a = np.full(n, _SEED_A, np.uint64)
    b = np.full(n, _SEED_B, np.uint64)
    for j in range(words.shape[1]):
        w = words[:, j]
        rows = np.flatnonzero(own <= j)
        if len(rows) == n:
            break
        if len(rows):  # some rows have ended: keep their state
            keep_a, keep_b = a[rows], b[rows]
        a ^= w
        _fmix64(a)
        b += w
        _splitmix64(b)
        if len(rows):
            a[rows], b[rows] = keep_a, keep_b
    ln = lengths.astype(np.uint64)
    a ^= ln
    b += ln * np.uint64(0x9E3779B97F4A7C15)
    return _fmix64(a), _splitmix64(b)


def _sequence_hashes(
    sequence: pa.Array, reverse: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-read 128-bit hash (two uint64 lanes) of the sequence or its reverse complement."""
    offsets, data = string_parts(sequence, wide=True)
    lengths = np.diff(offsets)
    n = len(lengths)
    hi = np.empty(n, np.uint64)
    lo = np.empty(n, np.uint64)
    for s in range(0, n, _ROWS_PER_CHUNK):
        e = min(n, s + _ROWS_PER_CHUNK)
        # Rows of whole 8-byte words (at least one), zero-padded; the complement keeps 0.
        width = max(8, -(-int(lengths[s:e].max(initial=0)) // 8) * 8)
        matrix = padded(offsets[s : e + 1], data, width, reverse=reverse)
        if reverse:
            matrix = _COMPLEMENT[matrix]
        hi[s:e], lo[s:e] = _fold(matrix, lengths[s:e])
    return hi, lo


def _combine(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Order-dependent 128-bit hash of the pair (a, b) of 128-bit hashes."""
    hi = a[0] ^ _fmix64(b[0] ^ _PAIR_KEY)
    lo = a[1] + _splitmix64(b[1] + _PAIR_KEY)
    return _fmix64(hi), _splitmix64(lo)


def _smaller(
    x: tuple[np.ndarray, np.ndarray], y: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise lexicographic minimum of two 128-bit hashes (a strand-free choice)."""
    take_y = (y[0] < x[0]) | ((y[0] == x[0]) & (y[1] < x[1]))
    return np.where(take_y, y[0], x[0]), np.where(take_y, y[1], x[1])


def _quality_sums(quality: pa.Array) -> np.ndarray:
    """Sum of Phred scores of each read (vectorised with a cumulative sum)."""
    offsets, data = string_parts(quality, wide=True)
    cum = np.zeros(len(data) + 1, np.int64)
    np.cumsum(data, dtype=np.int64, out=cum[1:])
    return cum[offsets[1:]] - cum[offsets[:-1]] - _PHRED_OFFSET * np.diff(offsets)


def _mate_rows(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray | None]:
    """Row numbers of the first read of each fragment and of its mate 2 (None single-end).

    Checks the READS_SCHEMA layout: mate-1 rows first, then mate-2 rows in the same order.
    """
    mate = batch.column("mate").to_numpy(zero_copy_only=False)
    fragment = batch.column("fragment").to_numpy(zero_copy_only=False)
    first = np.flatnonzero(mate != 2)
    second = np.flatnonzero(mate == 2)
    if len(second) == 0:
        return first, None
    if len(first) != len(second) or not np.array_equal(fragment[first], fragment[second]):
        raise ValueError(
            "paired batch is not in READS_SCHEMA layout (mate-1 rows, then mate-2 rows "
            "of the same fragments in the same order); build it with iter_read_batches"
        )
    return first, second


def _as_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """A single RecordBatch view of a batch or table."""
    if isinstance(batch, pa.Table):
        if not batch.num_rows:
            return pa.RecordBatch.from_pylist([], schema=batch.schema)
        return batch.combine_chunks().to_batches()[0]
    return batch


# --------------------------------------------------------------------------------------
# Map, reduce, apply


def fragment_keys(
    batch: pa.RecordBatch | pa.Table, shard_index: int, *, strand: Strand = "both"
) -> pa.Table:
    """Map phase: one KEYS_SCHEMA row per fragment of a READS_SCHEMA batch.

    The hash covers the sequence (single-end) or both mates' sequences in order (pairs);
    with `strand="both"` it is the smaller of the two strands' hashes, so a read and its
    reverse complement (pairs: mates swapped) get the same key, as in `seqkit rmdup -s`.
    `qsum` is the Phred sum over the fragment's bases; `shard`, `fragment` locate it.

    Args:
        batch: reads in READS_SCHEMA.
        shard_index: this shard's position in the run; earlier shards hold earlier reads.
        strand: "both" (default, seqkit's rule) or "forward" (compare as written).

    Returns:
        A KEYS_SCHEMA table with one row per fragment, in batch order.

    Example:
        >>> fragment_keys(batch, shard_index=3).column_names  # doctest: +SKIP
        ['hash_hi', 'hash_lo', 'qsum', 'shard', 'fragment']
    """
    if strand not in ("both", "forward"):
        raise ValueError(f"strand must be 'both' or 'forward', got {strand!r}")
    if shard_index < 0:
        raise ValueError(f"shard_index must be >= 0, got {shard_index}")
    batch = _as_batch(batch)
    first, second = _mate_rows(batch)
    sequence, quality = batch.column("sequence"), batch.column("quality")
    qsum = _quality_sums(quality)
    r1_seq = sequence.take(pa.array(first)) if second is not None else sequence
    fwd = _sequence_hashes(r1_seq, reverse=False)
    if second is None:
        key = _smaller(fwd, _sequence_hashes(r1_seq, reverse=True)) if strand == "both" else fwd
        frag_q = qsum[first]
    else:
        r2 = _sequence_hashes(sequence.take(pa.array(second)), reverse=False)
        key = _combine(fwd, r2)
        if strand == "both":
            key = _smaller(key, _combine(r2, fwd))
        frag_q = qsum[first] + qsum[second]
    fragment = batch.column("fragment").to_numpy(zero_copy_only=False)[first]
    return pa.table(
        [
            pa.array(key[0], pa.uint64()),
            pa.array(key[1], pa.uint64()),
            pa.array(frag_q, pa.int64()),
            pa.array(np.full(len(first), shard_index, np.int32)),
            pa.array(fragment, pa.int64()),
        ],
        schema=KEYS_SCHEMA,
    )


def partition_keys(keys: pa.Table, n_partitions: int) -> list[pa.Table]:
    """Split a shard's keys into `n_partitions` tables by hash (same hash, same partition).

    Args:
        keys: KEYS_SCHEMA table from fragment_keys.
        n_partitions: P >= 1; partition j gets the keys with hash_hi % P == j.

    Returns:
        P KEYS_SCHEMA tables (some may be empty).
    """
    if n_partitions < 1:
        raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
    part = keys.column("hash_hi").to_numpy() % np.uint64(n_partitions)
    order = np.argsort(part, kind="stable")
    bounds = np.searchsorted(part[order], np.arange(n_partitions + 1, dtype=np.uint64))
    sorted_keys = keys.take(pa.array(order))
    return [
        sorted_keys.slice(int(bounds[j]), int(bounds[j + 1] - bounds[j]))
        for j in range(n_partitions)
    ]


def choose_keepers(
    parts: list[pa.Table], *, keep: Literal["best", "first"] = "best"
) -> tuple[pa.Table, DedupCounts]:
    """Reduce phase: among one partition's keys from all shards, the duplicates to drop.

    Fragments with the same hash are duplicates. One per group is kept: with
    `keep="best"` the highest Phred sum, ties going to the first occurrence (lowest shard,
    then fragment); with `keep="first"` the first occurrence (what seqkit and fastp keep).

    Args:
        parts: KEYS_SCHEMA tables, all for the same partition.
        keep: "best" (default) or "first".

    Returns:
        (dropped, counts): DROPPED_SCHEMA table sorted by (shard, fragment), and counts.

    Example:
        >>> dropped, counts = choose_keepers([p[0] for p in partitions])  # doctest: +SKIP
        >>> counts.duplication_rate  # doctest: +SKIP
        0.032
    """
    if keep not in ("best", "first"):
        raise ValueError(f"keep must be 'best' or 'first', got {keep!r}")
    tables = [t.select(KEYS_SCHEMA.names).cast(KEYS_SCHEMA) for t in parts if t.num_rows]
    if not tables:
        return DROPPED_SCHEMA.empty_table(), DedupCounts()
    keys = pa.concat_tables(tables).combine_chunks()
    hi = keys.column("hash_hi").to_numpy()
    lo = keys.column("hash_lo").to_numpy()
    shard = keys.column("shard").to_numpy()
    fragment = keys.column("fragment").to_numpy()
    sort_keys = [fragment, shard]
    if keep == "best":
        sort_keys.append(-keys.column("qsum").to_numpy())
    order = np.lexsort([*sort_keys, lo, hi])  # last key is primary
    hi_s, lo_s = hi[order], lo[order]
    head = np.ones(len(order), bool)
    head[1:] = (hi_s[1:] != hi_s[:-1]) | (lo_s[1:] != lo_s[:-1])
    drop = order[~head]
    drop = drop[np.lexsort([fragment[drop], shard[drop]])]
    dropped = pa.table(
        [pa.array(shard[drop], pa.int32()), pa.array(fragment[drop], pa.int64())],
        schema=DROPPED_SCHEMA,
    )
    kept = int(head.sum())
    return dropped, DedupCounts(len(order), kept, len(order) - kept)


def drop_duplicates(
    batch: pa.RecordBatch | pa.Table, dropped: pa.Table, shard_index: int
) -> pa.RecordBatch:
    """Apply phase: the shard's reads without the dropped fragments (both mates go).

    Args:
        batch: the shard's reads in READS_SCHEMA.
        dropped: DROPPED_SCHEMA rows of any shards (only this shard's are used).
        shard_index: the index this shard had in fragment_keys.

    Returns:
        The batch filtered, rows in their original order.
    """
    batch = _as_batch(batch)
    shard = dropped.column("shard").to_numpy()
    gone = dropped.column("fragment").to_numpy()[shard == shard_index]
    fragment = batch.column("fragment").to_numpy(zero_copy_only=False)
    keep = ~np.isin(fragment, gone)
    return batch.filter(pa.array(keep))


# --- Prefect tasks: map / reduce / apply over a sample's shards ------------------------

DEDUP_VERSION = "1"


class DedupResult(BaseModel):
    """The dropped fragments of one partition, with its counts."""

    dropped: Artifact
    counts: dict[str, float]


def _counts_dict(counts: DedupCounts) -> dict[str, float]:
    return {**{f.name: getattr(counts, f.name) for f in dataclasses.fields(counts)},
            "duplication_rate": counts.duplication_rate}


@task(name="hash-fragments", task_run_name="dedup-keys-{shard.name}",
      **stage_options(DEDUP_VERSION))
def hash_fragments(
    shard: Artifact, shard_index: int, n_partitions: int, store: Store, run_id: str
) -> list[Artifact]:
    """Map: the shard's fragment keys, split into `n_partitions` key tables by hash.

    Args:
        shard: a Parquet read shard (READS_SCHEMA).
        shard_index: the shard's position in the sample, stored in the keys to locate reads.
        n_partitions: the number of key tables to split into, by hash.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifacts belong to.

    Returns:
        `n_partitions` KEYS_SCHEMA table artifacts, `<shard>.keys-NNN.parquet`, in
        partition order.
    """
    keys = fragment_keys(as_batch(read_table(store, shard)), shard_index)
    base = shard.name.removesuffix(".parquet")
    with store.scratch() as scratch:
        return [
            publish_table(store, part, scratch, run_id=run_id, stage="dedup-keys",
                          name=f"{base}.keys-{p:03d}.parquet", producer="hash-fragments",
                          params={"n_partitions": n_partitions}, upstream=[shard.ref()])
            for p, part in enumerate(partition_keys(keys, n_partitions))
        ]


@task(name="choose-duplicates", task_run_name="dedup-{sample}-part-{partition}",
      **stage_options(DEDUP_VERSION))
def choose_duplicates(
    sample: str, partition: int, parts: list[Artifact], store: Store, run_id: str
) -> DedupResult:
    """Reduce: one partition's keys from every shard → the fragments to drop.

    Args:
        sample: the sample name; names the artifact and the task run.
        partition: the partition number, for the artifact name.
        parts: this partition's key tables, one per shard (from `hash_fragments`).
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        DedupResult with the table of fragments to drop and the partition's counts.
    """
    dropped, counts = choose_keepers([read_table(store, p) for p in parts])
    with store.scratch() as scratch:
        art = publish_table(store, dropped, scratch, run_id=run_id, stage="dedup-keys",
                            name=f"{sample}.dropped-{partition:03d}.parquet",
                            producer="choose-duplicates", upstream=[p.ref() for p in parts],
                            metadata={"counts": _counts_dict(counts)})
    return DedupResult(dropped=art, counts=_counts_dict(counts))


@materialize("helixflow://dedup", name="remove-duplicates",
             task_run_name="dedup-{shard.name}", **stage_options(DEDUP_VERSION))
def remove_duplicates(
    shard: Artifact, shard_index: int, dropped: list[Artifact], store: Store, run_id: str
) -> Artifact:
    """Apply: the shard without the fragments any partition chose to drop.

    Args:
        shard: the Parquet read shard (READS_SCHEMA) to filter.
        shard_index: the index it was given in `hash_fragments`.
        dropped: every partition's drop table from `choose_duplicates`.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        The kept reads (both mates of a dropped fragment go) as a shard artifact, ".qc." in
        the name replaced by ".dedup.".
    """
    drop = pa.concat_tables([read_table(store, d) for d in dropped])
    kept = drop_duplicates(as_batch(read_table(store, shard)), drop, shard_index)
    name = shard.name.replace(".qc.", ".dedup.")
    with store.scratch() as scratch:
        return publish_table(store, kept, scratch, run_id=run_id, stage="dedup", name=name,
                             producer="remove-duplicates",
                             upstream=[shard.ref()] + [d.ref() for d in dropped])
