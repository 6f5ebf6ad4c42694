"""The k-mer spectrum of a read set, for error correction: canonical k-mers (k <= 31)
packed 2 bits per base in uint64, counted exactly, and the solid ones kept in a set.

- `count_kmers` per shard: canonical k-mers counted exactly with a sort and run lengths;
  `merge_counts` adds shard tables; for bounded memory `partition_counts` cuts sorted
  tables into k-mer ranges (`partition_bounds`) that separate reducers merge;
- `kmer_histogram` and `solid_threshold`: the count histogram and its valley between the
  error peak and the coverage peak;
- `SolidKmers`: the k-mers at or above it in an open-addressing hash table with
  vectorised lookups.

k-mers with N (any non-ACGT) are skipped. The correction kernel is
`tasks.correct_substitutions`; the tasks are in `tasks.correct`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pyarrow as pa

from helixflow.tasks.reads import BASE_CODE, padded, string_parts

COUNTS_SCHEMA: pa.Schema = pa.schema(
    [pa.field("kmer", pa.uint64(), nullable=False), pa.field("count", pa.uint32(), nullable=False)]
)
"""A k-mer count table: canonical 2-bit-packed k-mer (A=0 C=1 G=2 T=3, first base in the
high bits) and its number of occurrences."""

MAX_K = 31
_ROWS_PER_CHUNK = 2048  # reads at a time: (length x rows) uint64 matrices stay ~2.5 MB
_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # never a k-mer: k <= 31 uses at most 62 bits
def kmer_matrices(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward and reverse-complement packed k-mers at every start, and their validity.

    `codes` is (n, L) with 0-3 for ACGT and 4 for anything else (N, padding); the results
    are (n, L - k + 1). Rolled along the read one position at a time over all rows at
    once (rows contiguous in memory: the arrays returned are transposed views), which
    measured 3x faster than building k-mers by doubling whole matrices.
    """
    n, length = codes.shape
    nk = length - k + 1
    by_pos = codes.T
    bad = by_pos > 3
    c = np.where(bad, np.uint8(0), by_pos).astype(np.uint64)
    comp = np.uint64(3) - c
    comp <<= np.uint64(2 * (k - 1))
    fwd = np.empty((nk, n), np.uint64)
    rev = np.empty((nk, n), np.uint64)
    mask = np.uint64((1 << (2 * k)) - 1)
    two = np.uint64(2)
    f = np.zeros(n, np.uint64)
    r = np.zeros(n, np.uint64)
    for i in range(k - 1):
        f <<= two
        f |= c[i]
        r >>= two
        r |= comp[i]
    for j in range(nk):
        fj, rj = fwd[j], rev[j]
        np.left_shift(fwd[j - 1] if j else f, two, out=fj)
        fj |= c[j + k - 1]
        fj &= mask
        np.right_shift(rev[j - 1] if j else r, two, out=rj)
        rj |= comp[j + k - 1]
    valid = np.ones((nk, n), bool)
    some = np.flatnonzero(bad.any(axis=0))  # reads with an N or padding: usually few
    if len(some):
        cum = np.zeros((length + 1, len(some)), np.int16)
        np.cumsum(bad[:, some], axis=0, dtype=np.int16, out=cum[1:])
        valid[:, some] = cum[k : k + nk] == cum[:nk]
    return fwd.T, rev.T, valid.T


def code_chunks(batch: pa.RecordBatch | pa.Table) -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, codes matrix, lengths) for consecutive chunks of a batch's reads."""
    offsets, data = string_parts(batch.column("sequence"), wide=True)
    lengths = np.diff(offsets)
    n = len(lengths)
    for s in range(0, n, _ROWS_PER_CHUNK):
        e = min(n, s + _ROWS_PER_CHUNK)
        width = int(lengths[s:e].max(initial=0))
        raw = padded(offsets[s : e + 1], data, width, fill=ord("N"))
        yield s, BASE_CODE[raw], lengths[s:e]  # A C G T -> 0..3, N and others -> 4


def check_k(k: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 1 to {MAX_K} (2 bits per base in uint64)")

def _run_lengths(sorted_kmers: np.ndarray, weights: np.ndarray | None) -> pa.Table:
    """COUNTS_SCHEMA table of sorted k-mers: one row per run of equal values."""
    n = len(sorted_kmers)
    head = np.ones(n, bool)
    np.not_equal(sorted_kmers[1:], sorted_kmers[:-1], out=head[1:])
    starts = np.flatnonzero(head)
    if weights is None:
        counts = np.diff(np.append(starts, n))
    else:
        counts = np.add.reduceat(weights, starts) if n else np.zeros(0, np.int64)
    counts = np.minimum(counts, np.iinfo(np.uint32).max)  # saturate rather than wrap
    return pa.table(
        [pa.array(sorted_kmers[starts], pa.uint64()), pa.array(counts.astype(np.uint32))],
        schema=COUNTS_SCHEMA,
    )


def count_kmers(batch: pa.RecordBatch | pa.Table, k: int) -> pa.Table:
    """Count the canonical k-mers of all reads of a READS_SCHEMA batch (exact).

    A k-mer and its reverse complement count as one (the smaller packed value); k-mers
    with a base other than ACGT are skipped. Sort and run lengths (np.sort is the cost:
    about 70-100 ns per k-mer on these machines).

    Args:
        batch: reads in READS_SCHEMA (only `sequence` is used).
        k: k-mer length, 1..31.

    Returns:
        COUNTS_SCHEMA table sorted by kmer.

    Example:
        >>> count_kmers(batch, k=21).num_rows  # doctest: +SKIP
        4805120
    """
    check_k(k)
    pieces = []
    for _, codes, _ in code_chunks(batch):
        if codes.shape[1] < k:
            continue
        fwd, rev, valid = kmer_matrices(codes, k)
        pieces.append(np.minimum(fwd.T, rev.T)[valid.T])  # .T: contiguous, faster
    kmers = np.concatenate(pieces) if pieces else np.empty(0, np.uint64)
    kmers.sort()
    return _run_lengths(kmers, None)


def merge_counts(tables: Iterable[pa.Table]) -> pa.Table:
    """Sum several COUNTS_SCHEMA tables (e.g. one per shard) into one, sorted by kmer.

    Tables sorted by kmer (as count_kmers makes them) merge fastest: the stable sort
    (timsort) then only merges runs.

    Args:
        tables: COUNTS_SCHEMA tables; empty ones are ignored.

    Returns:
        One COUNTS_SCHEMA table, one row per distinct k-mer, sorted by kmer (an empty table
        when there is no row).
    """
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return COUNTS_SCHEMA.empty_table()
    kmers = np.concatenate([t.column("kmer").to_numpy() for t in tables])
    counts = np.concatenate([t.column("count").to_numpy().astype(np.int64) for t in tables])
    order = np.argsort(kmers, kind="stable")
    return _run_lengths(kmers[order], counts[order])


def partition_bounds(k: int, n_partitions: int) -> np.ndarray:
    """k-mer values splitting the canonical k-mer space into `n_partitions` ranges of
    about equal size: a canonical k-mer is the smaller of two, so small values are
    more common (P(value < x) = 1 - (1 - x)^2 for random sequence).

    Args:
        k: the k-mer length, 1..MAX_K (31).
        n_partitions: the number of ranges, >= 1.

    Returns:
        `n_partitions + 1` ascending uint64 bounds, from 0 to 4**k; range j is
        [bounds[j], bounds[j + 1]).

    Raises:
        ValueError: `k` or `n_partitions` out of range.
    """
    check_k(k)
    if n_partitions < 1:
        raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
    share = np.arange(n_partitions + 1) / n_partitions
    bounds = np.floor((1 - np.sqrt(1 - share)) * 4.0**k).astype(np.uint64)
    bounds[-1] = np.uint64(4**k)
    return bounds


def partition_counts(counts: pa.Table, n_partitions: int, k: int) -> list[pa.Table]:
    """Split a sorted count table into `n_partitions` k-mer ranges (zero-copy slices), so
    that range j of every shard can be merged by reducer j in bounded memory.

    Args:
        counts: a COUNTS_SCHEMA table sorted by kmer.
        n_partitions: the number of ranges, >= 1.
        k: the k-mer length the counts were made with.

    Returns:
        `n_partitions` slices of `counts`, range j holding the k-mers in
        `partition_bounds(k, n_partitions)` range j (possibly empty).

    Raises:
        ValueError: `k` or `n_partitions` out of range.
    """
    bounds = partition_bounds(k, n_partitions)
    rows = np.searchsorted(counts.column("kmer").to_numpy(), bounds)
    rows[-1] = counts.num_rows
    return [counts.slice(int(a), int(b - a)) for a, b in pairwise(rows)]


def kmer_histogram(counts: pa.Table, max_count: int = 10_000) -> np.ndarray:
    """hist[c] = number of distinct k-mers seen c times (the last bin holds >= max_count).

    Returned for reports (the classic k-mer spectrum plot) and for solid_threshold.

    Args:
        counts: a COUNTS_SCHEMA table.
        max_count: the last bin; higher counts are added to it.

    Returns:
        int64 array of length `max_count + 1`.
    """
    values = counts.column("count").to_numpy().astype(np.int64)
    return np.bincount(np.minimum(values, max_count), minlength=max_count + 1).astype(np.int64)


def solid_threshold(hist: np.ndarray) -> int:
    """Smallest count of a solid k-mer: the valley of the histogram between the error
    peak at count 1 and the coverage peak (its lowest point, not the first local minimum,
    which noise in the sparse low counts would move).

    Raises ValueError when the histogram has no valley (coverage too low for a spectrum
    method, or reads already error-free): then pass a threshold explicitly.

    Args:
        hist: a k-mer histogram as `kmer_histogram` returns it (last bin = overflow, ignored).

    Returns:
        The threshold count, at least 2: k-mers seen this often or more are solid.

    Raises:
        ValueError: the histogram has fewer than 4 bins below the overflow bin, or no valley.
    """
    hist = np.asarray(hist, dtype=np.int64)[:-1]  # the last bin collects all high counts
    if len(hist) < 4:
        raise ValueError("k-mer histogram too short; give the solid threshold explicitly")
    rising = np.flatnonzero(hist[2:] > hist[1:-1])  # first c >= 1 with hist[c + 1] > hist[c]
    if not len(rising):
        raise ValueError(
            "k-mer histogram has no valley after the error peak (too little coverage?); "
            "give the solid threshold explicitly"
        )
    peak = int(rising[0]) + 1 + int(np.argmax(hist[rising[0] + 1 :]))
    return max(2, 1 + int(np.argmin(hist[1:peak])))

def _hash(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of k-mer values (new array)."""
    h = x ^ (x >> np.uint64(30))
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


@dataclass
class SolidKmers:
    """The set of solid canonical k-mers: an open-addressing hash table (linear probing,
    load <= 1/2) held in one uint64 array, with vectorised insert and lookup.

    Why not a sorted array and np.searchsorted: over 5 M k-mers a binary search measured
    1.2 us per random query here, a lookup in this table 30-90 ns (one cache miss).
    """

    k: int
    table: np.ndarray = field(repr=False)
    size: int = 0

    @classmethod
    def from_kmers(cls, kmers: np.ndarray, k: int) -> SolidKmers:
        """A set holding `kmers` (canonical, unique)."""
        check_k(k)
        kmers = np.asarray(kmers, np.uint64)
        bits = max(4, int(np.ceil(np.log2(max(1, len(kmers)) * 2))))
        table = np.full(1 << bits, _EMPTY, np.uint64)
        mask = np.uint64((1 << bits) - 1)
        slot = _hash(kmers) & mask
        pending = np.arange(len(kmers))
        while len(pending):
            s = slot[pending]
            free = table[s] == _EMPTY
            table[s[free]] = kmers[pending[free]]  # concurrent claims: one write wins
            placed = table[s] == kmers[pending]
            pending = pending[~placed]
            slot[pending] = (slot[pending] + np.uint64(1)) & mask
        return cls(k=k, table=table, size=len(kmers))

    @classmethod
    def from_counts(cls, counts: pa.Table, threshold: int, k: int) -> SolidKmers:
        """The k-mers of a COUNTS_SCHEMA table seen at least `threshold` times."""
        keep = counts.column("count").to_numpy() >= threshold
        return cls.from_kmers(counts.column("kmer").to_numpy()[keep], k)

    def __len__(self) -> int:
        return self.size

    def contains(self, kmers: np.ndarray) -> np.ndarray:
        """Boolean array: is each canonical k-mer in the set."""
        kmers = np.asarray(kmers, np.uint64)
        mask = np.uint64(len(self.table) - 1)
        h = _hash(kmers)
        h &= mask
        slot = h.view(np.int64)  # a signed index gathers without a conversion copy
        t = self.table[slot]
        found = t == kmers
        more = ~found & (t != _EMPTY)  # collided on the first probe: walk on
        pending = np.flatnonzero(more)
        probe, slot = kmers[pending], slot[pending]
        last = len(self.table) - 1
        while len(pending):
            slot = (slot + 1) & last
            t = self.table[slot]
            hit = t == probe
            found[pending[hit]] = True
            more = ~hit & (t != _EMPTY)
            pending, probe, slot = pending[more], probe[more], slot[more]
        return found
