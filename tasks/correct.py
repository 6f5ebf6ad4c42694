"""Spectrum-based substitution error correction of short reads (vectorised NumPy kernels).

Why: sequencing errors make k-mers that occur once or twice in a 30x data set, while
k-mers of the genome occur about coverage x (L - k + 1) / L times. Counting every
canonical k-mer of the whole data set and keeping the frequent ("solid") ones gives a
reference-free dictionary; a base whose k-mers are all weak, and which becomes solid in
all of them with one other base, is an error (the idea of Quake, SEC and Lighter).

Phases (each a pure function; the pipeline distributes them):

1. `count_kmers` per shard: canonical k-mers (k <= 31) packed 2 bits per base in uint64,
   counted exactly with a sort and run lengths; `merge_counts` adds shard tables; for
   bounded memory `partition_counts` cuts sorted tables into k-mer ranges
   (`partition_bounds`) that separate reducers merge;
2. `kmer_histogram` and `solid_threshold`: the count histogram and its valley between
   the error peak and the coverage peak; `SolidKmers` holds the k-mers at or above it
   in an open-addressing hash table with vectorised lookups;
3. `correct_batch` per shard: finds stretches of weak k-mers in every read and derives
   the wrong base from the solid k-mer next to the stretch (the first weak k-mer after
   a solid one has the error at its last base; the last weak one before a solid one at
   its first base). The three other bases are tried there; a substitution is accepted
   only if exactly one of them makes every k-mer over the base solid (or, when a second
   error cuts the stretch short, at least `min_support` of them while no other base
   makes any). Two errors less than k apart (between solid k-mers, or close together at
   a read end) are tried together, all 15 base pairs, and fixed when exactly one pair
   works. When both ends of a short stretch propose different bases (repeats, where
   erroneous k-mers exist elsewhere in the genome), only the lower-quality one is
   changed. Rounds repeat on the reads the last round changed.

Vectorised over all reads of a batch: loops run over read positions (building k-mers),
over candidate bases, correction rounds and hash-table probe steps, never over reads.

Safety rules: N (any non-ACGT) is never changed and k-mers containing it are neither solid
nor weak; a base is changed at most once; a base with Phred > `params.max_quality` is
never changed; a read with more than `params.max_per_window` corrections in any
`params.window` bases is left as it was (Lighter's -maxcor).

Example:
    >>> counts = merge_counts([count_kmers(b, k=21) for b in batches])  # doctest: +SKIP
    >>> solid = SolidKmers.from_counts(counts, solid_threshold(kmer_histogram(counts)), k=21)
    >>> fixed, stats = correct_batch(batch, solid, k=21)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger, task
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact
from helixflow.caching import stage_options
from helixflow.store import Store
from helixflow.tables import as_batch, publish_table, read_table
from helixflow.tasks.reads import BASE_CODE, padded, string_parts

COUNTS_SCHEMA: pa.Schema = pa.schema(
    [pa.field("kmer", pa.uint64(), nullable=False), pa.field("count", pa.uint32(), nullable=False)]
)
"""A k-mer count table: canonical 2-bit-packed k-mer (A=0 C=1 G=2 T=3, first base in the
high bits) and its number of occurrences."""

MAX_K = 31
_ROWS_PER_CHUNK = 2048  # reads at a time: (length x rows) uint64 matrices stay ~2.5 MB
_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # never a k-mer: k <= 31 uses at most 62 bits
_ACGT = np.frombuffer(b"ACGT", np.uint8)
_PHRED_OFFSET = 33


@dataclass(frozen=True)
class CorrectionParams:
    """Knobs of correct_batch; the defaults suit Illumina reads at 20-100x coverage.

    Attributes:
        max_quality: bases with Phred above this are never changed (Lighter has no such
            limit; the default 93, the highest Phred+33 score, blocks nothing).
        max_quality_weak: the weaker kinds of evidence (a stretch cut short by another
            error, two errors fixed together) may change only bases with Phred at or
            below this: errors sit mostly at low qualities.
        window, max_per_window: a read with more corrections than this in any window is
            considered unfixable and left unchanged (Lighter's -maxcor 4 in 20 bp).
        rounds: correction passes; each fixes at most one error per weak stretch side.
        min_support: a substitution at a stretch of weak k-mers that another error cuts
            short must make at least this many k-mers solid (isolated errors must make all
            k-mers over the base solid).
    """

    max_quality: int = 93
    max_quality_weak: int = 93
    window: int = 20
    max_per_window: int = 4
    rounds: int = 4
    min_support: int = 4


@dataclass
class CorrectionCounts:
    """What correct_batch did (sum over batches with `merge`)."""

    reads: int = 0
    bases: int = 0
    corrected_bases: int = 0
    corrected_reads: int = 0
    unfixable_reads: int = 0
    weak_reads: int = 0

    def merge(self, other: CorrectionCounts) -> CorrectionCounts:
        """Counts of both inputs."""
        return CorrectionCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


# --------------------------------------------------------------------------------------
# Packing


def _kmer_matrices(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _chunks(batch: pa.RecordBatch | pa.Table) -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, codes matrix, lengths) for consecutive chunks of a batch's reads."""
    offsets, data = string_parts(batch.column("sequence"), wide=True)
    lengths = np.diff(offsets)
    n = len(lengths)
    for s in range(0, n, _ROWS_PER_CHUNK):
        e = min(n, s + _ROWS_PER_CHUNK)
        width = int(lengths[s:e].max(initial=0))
        raw = padded(offsets[s : e + 1], data, width, fill=ord("N"))
        yield s, BASE_CODE[raw], lengths[s:e]  # A C G T -> 0..3, N and others -> 4


def _check_k(k: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 1 to {MAX_K} (2 bits per base in uint64)")


# --------------------------------------------------------------------------------------
# Counting


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
    _check_k(k)
    pieces = []
    for _, codes, _ in _chunks(batch):
        if codes.shape[1] < k:
            continue
        fwd, rev, valid = _kmer_matrices(codes, k)
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
    _check_k(k)
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


# --------------------------------------------------------------------------------------
# Solid k-mer set


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
        _check_k(k)
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


# --------------------------------------------------------------------------------------
# Correction


def _solid_matrix(
    fwd: np.ndarray, rev: np.ndarray, valid: np.ndarray, solid: SolidKmers
) -> np.ndarray:
    """Which k-mers of the matrices are solid (invalid ones are not)."""
    by_pos = valid.T  # contiguous for matrices from _kmer_matrices: faster masking
    out = np.zeros(by_pos.shape, bool)
    out[by_pos] = solid.contains(np.minimum(fwd.T[by_pos], rev.T[by_pos]))
    return out.T


def _candidates(
    weak: np.ndarray, good: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bases to try at the edges of weak stretches next to a solid k-mer.

    Returns (row, position, first k-mer, direction): direction +1 means the stretch
    follows a solid k-mer at first-1 and the error is at first+k-1; -1 means it precedes
    a solid k-mer at first+1 and the error is at its first base, position == first.
    """
    left = np.zeros_like(weak)
    left[:, 1:] = weak[:, 1:] & good[:, :-1]
    right = np.zeros_like(weak)
    right[:, :-1] = weak[:, :-1] & good[:, 1:]
    lr, lj = np.nonzero(left)
    rr, rj = np.nonzero(right)
    rows = np.concatenate([lr, rr])
    first = np.concatenate([lj, rj])
    pos = np.concatenate([lj + k - 1, rj])
    direction = np.concatenate([np.ones(len(lr), np.int64), -np.ones(len(rr), np.int64)])
    return rows, pos, first, direction


def _try_bases(
    fwd: np.ndarray,
    rev: np.ndarray,
    valid: np.ndarray,
    codes: np.ndarray,
    cand: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    solid: SolidKmers,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each candidate and each of the 3 other bases: how many consecutive k-mers over
    the base, walking away from the solid anchor, become solid; and how many there are.

    Returns (support (m, 3), span (m,), alternative codes (m, 3)).
    """
    rows, pos, first, direction = cand
    m = len(rows)
    nk = fwd.shape[1]
    old = codes[rows, pos].astype(np.uint64)
    alts = (old[:, None] + np.arange(1, 4, dtype=np.uint64)) % np.uint64(4)  # (m, 3)
    steps = np.arange(k)
    j = first[:, None] + direction[:, None] * steps  # k-mer starts, walking away
    inside = (j >= 0) & (j < nk) & (j <= pos[:, None]) & (j >= pos[:, None] - k + 1)
    jc = np.clip(j, 0, nk - 1)
    inside &= valid[rows[:, None], jc]  # a k-mer with an N stops the walk
    span = np.cumprod(inside, axis=1).sum(axis=1)
    offset = (pos[:, None] - jc).astype(np.uint64)  # base's index inside each k-mer
    f = fwd[rows[:, None], jc]
    r = rev[rows[:, None], jc]
    support = np.zeros((m, 3), np.int64)
    live = np.cumprod(inside, axis=1).astype(bool)
    for a in range(3):
        delta = (old ^ alts[:, a])[:, None]
        f2 = f ^ (delta << (np.uint64(2) * (np.uint64(k - 1) - offset)))
        r2 = r ^ (delta << (np.uint64(2) * offset))
        ok = np.zeros(live.shape, bool)
        ok[live] = solid.contains(np.minimum(f2[live], r2[live]))
        support[:, a] = np.cumprod(ok, axis=1).sum(axis=1)
    return support, span, alts.astype(np.uint8)


def _pair_candidates(
    weak: np.ndarray, good: np.ndarray, valid: np.ndarray, k: int
) -> tuple[np.ndarray, ...]:
    """Two-error hypotheses for the weak stretches: (row, pa, pb, first, last, group,
    both) with first..last the stretch's k-mers, `group` one id per stretch and `both`
    true where both bases must change.

    A stretch between two solid k-mers, longer than k and shorter than 2k, has its errors
    at pa = first + k - 1 and pb = last. A stretch that runs into the end of the read (or
    an N) after a solid k-mer has one at pa = first + k - 1 and may have a second close
    behind, tried at pa + 1..3; mirrored at the start of the read.
    """
    nk = weak.shape[1]
    before = np.zeros_like(weak)
    before[:, 1:] = weak[:, :-1]
    after = np.zeros_like(weak)
    after[:, :-1] = weak[:, 1:]
    rows, a = np.nonzero(weak & ~before)
    _, b = np.nonzero(weak & ~after)  # run ends, in the same row-major order as starts
    length = b - a + 1
    anchored_left = np.zeros(len(a), bool)
    anchored_left[a > 0] = good[rows[a > 0], a[a > 0] - 1]
    anchored_right = np.zeros(len(b), bool)
    inner = b < nk - 1
    anchored_right[inner] = good[rows[inner], b[inner] + 1]
    open_left = ~anchored_left & ((a == 0) | ~valid[rows, np.maximum(a - 1, 0)])
    open_right = (~anchored_right & ~valid[rows, np.minimum(b + 1, nk - 1)]) | (b == nk - 1)
    group = np.arange(len(a))
    middle = anchored_left & anchored_right & (length > k) & (length < 2 * k)
    tail = anchored_left & open_right & (length > 1) & (length < 2 * k)
    head = anchored_right & open_left & (length > 1) & (length < 2 * k)
    out = [(rows[middle], a[middle] + k - 1, b[middle], a[middle], b[middle], group[middle],
            np.zeros(middle.sum(), bool))]
    for gap in (1, 2, 3):
        t, h = tail & (length > gap), head & (length > gap)
        out.append((rows[t], a[t] + k - 1, a[t] + k - 1 + gap, a[t], b[t], group[t],
                    np.ones(t.sum(), bool)))
        out.append((rows[h], b[h], b[h] - gap, a[h], b[h], group[h], np.ones(h.sum(), bool)))
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def _pairs(
    fwd: np.ndarray,
    rev: np.ndarray,
    valid: np.ndarray,
    weak: np.ndarray,
    good: np.ndarray,
    codes: np.ndarray,
    quals: np.ndarray,
    changed: np.ndarray,
    solid: SolidKmers,
    k: int,
    params: CorrectionParams,
) -> int:
    """Fix two errors less than k apart together, in place; returns bases changed.

    Every choice of bases at the two positions of each hypothesis (_pair_candidates) is
    tried on all k-mers of the stretch; where exactly one choice over all hypotheses of
    a stretch makes them all solid, it is applied.
    """
    nk = fwd.shape[1]
    rows, pa_, pb, lo, hi, group, both = _pair_candidates(weak, good, valid, k)
    width = codes.shape[1]
    sel = (pb >= 0) & (pb < width)
    pbc = np.clip(pb, 0, width - 1)
    sel &= (codes[rows, pa_] < 4) & (codes[rows, pbc] < 4)
    sel &= ~changed[rows, pa_] & ~changed[rows, pbc]
    limit = params.max_quality_weak
    sel &= (quals[rows, pa_] <= limit) & (quals[rows, pbc] <= limit)
    rows, pa_, pb, lo, hi, group, both = (
        x[sel] for x in (rows, pa_, pbc, lo, hi, group, both)
    )
    if not len(rows):
        return 0
    j = lo[:, None] + np.arange(2 * k - 1)
    inside = j <= hi[:, None]
    jc = np.minimum(j, nk - 1)
    f, r = fwd[rows[:, None], jc], rev[rows[:, None], jc]
    has1 = (j <= pa_[:, None]) & (j >= (pa_ - k + 1)[:, None])
    has2 = (j <= pb[:, None]) & (j >= (pb - k + 1)[:, None])
    o1 = np.where(has1, pa_[:, None] - jc, 0).astype(np.uint64)
    o2 = np.where(has2, pb[:, None] - jc, 0).astype(np.uint64)
    c1 = codes[rows, pa_].astype(np.uint64)
    c2 = codes[rows, pb].astype(np.uint64)
    top, two, four = np.uint64(k - 1), np.uint64(2), np.uint64(4)
    hits = np.zeros(len(rows), np.int64)
    pick1 = np.zeros(len(rows), np.uint64)
    pick2 = np.zeros(len(rows), np.uint64)
    for x in range(4):
        for y in range(4):
            if x == 0 and y == 0:
                continue
            d1 = ((c1 + np.uint64(x)) % four ^ c1)[:, None] * has1
            d2 = ((c2 + np.uint64(y)) % four ^ c2)[:, None] * has2
            f2 = f ^ (d1 << (two * (top - o1))) ^ (d2 << (two * (top - o2)))
            r2 = r ^ (d1 << (two * o1)) ^ (d2 << (two * o2))
            ok = np.ones(inside.shape, bool)
            ok[inside] = solid.contains(np.minimum(f2[inside], r2[inside]))
            works = ok.all(axis=1)
            if x == 0 or y == 0:
                works &= ~both
            hits += works
            pick1[works] = (c1[works] + np.uint64(x)) % four
            pick2[works] = (c2[works] + np.uint64(y)) % four
    per_group = np.bincount(group, weights=hits, minlength=int(group.max()) + 1)
    unique = (hits == 1) & (per_group[group] == 1)
    rows, pa_, pb = rows[unique], pa_[unique], pb[unique]
    pick1, pick2 = pick1[unique].astype(np.uint8), pick2[unique].astype(np.uint8)
    moved1 = codes[rows, pa_] != pick1
    moved2 = codes[rows, pb] != pick2
    codes[rows, pa_], codes[rows, pb] = pick1, pick2
    changed[rows[moved1], pa_[moved1]] = True
    changed[rows[moved2], pb[moved2]] = True
    return int(moved1.sum() + moved2.sum())


def _one_per_short_stretch(
    weak: np.ndarray, rows: np.ndarray, pos: np.ndarray, first: np.ndarray,
    qual: np.ndarray, k: int,
) -> np.ndarray:
    """Which accepted fixes to keep when both sides of one weak stretch propose
    different bases.

    A stretch of at most k weak k-mers holds one error, yet in repeats (where the
    erroneous k-mers exist elsewhere in the genome, so the stretch is shorter than k)
    both ends can be "fixed". Then only the lower-quality base is changed, and neither
    on a tie: Illumina errors sit at low qualities.
    """
    starts = weak.copy()
    starts[:, 1:] &= ~weak[:, :-1]
    run_id = np.cumsum(starts.ravel()).reshape(weak.shape)
    length = np.bincount(run_id[weak])
    rid = run_id[rows, first]
    n_runs = len(length)
    lo = np.full(n_runs, np.iinfo(np.int64).max)
    hi = np.full(n_runs, -1)
    np.minimum.at(lo, rid, pos)
    np.maximum.at(hi, rid, pos)
    conflict = (lo[rid] != hi[rid]) & (length[rid] <= k)
    q_min = np.full(n_runs, np.iinfo(np.int64).max)
    np.minimum.at(q_min, rid[conflict], qual[conflict])
    winner = conflict & (qual == q_min[rid])
    lo[:] = np.iinfo(np.int64).max
    hi[:] = -1
    np.minimum.at(lo, rid[winner], pos[winner])
    np.maximum.at(hi, rid[winner], pos[winner])
    return ~conflict | (winner & (lo[rid] == hi[rid]))


def _round(
    codes: np.ndarray,
    quals: np.ndarray,
    changed: np.ndarray,
    solid: SolidKmers,
    k: int,
    params: CorrectionParams,
) -> tuple[int, int]:
    """One correction pass over a chunk, in place.

    Returns (bases changed, reads with a weak k-mer before the pass).
    """
    fwd, rev, valid = _kmer_matrices(codes, k)
    good = _solid_matrix(fwd, rev, valid, solid)
    weak = valid & ~good
    weak_rows = int(weak.any(axis=1).sum())
    if not weak_rows:
        return 0, 0
    rows, pos, first, direction = _candidates(weak, good, k)
    allowed = (codes[rows, pos] < 4) & (quals[rows, pos] <= params.max_quality)
    allowed &= ~changed[rows, pos]  # a base is changed at most once
    cand = (rows[allowed], pos[allowed], first[allowed], direction[allowed])
    if not len(cand[0]):
        return 0, weak_rows
    support, span, alts = _try_bases(fwd, rev, valid, codes, cand, solid, k)
    order = np.argsort(-support, axis=1, kind="stable")
    best = np.take_along_axis(support, order[:, :1], axis=1)[:, 0]
    second = np.take_along_axis(support, order[:, 1:2], axis=1)[:, 0]
    choice = np.take_along_axis(alts, order[:, :1], axis=1)[:, 0]
    # Full support: every k-mer over the base solid. Partial: another error cuts the
    # stretch short; then the winner must be clear and made of enough k-mers.
    full = (best == span) & (span > 0) & (second < span)
    partial = (best >= params.min_support) & (second == 0) & (best < span)
    partial &= quals[cand[0], cand[1]] <= params.max_quality_weak
    accept = full | partial
    rows, pos, choice = cand[0][accept], cand[1][accept], choice[accept]
    keep = _one_per_short_stretch(weak, rows, pos, cand[2][accept], quals[rows, pos], k)
    rows, pos, choice = rows[keep], pos[keep], choice[keep]
    # The same base proposed from both sides of a stretch: keep it once, and only if both
    # sides agree on the new base.
    key = rows.astype(np.int64) * codes.shape[1] + pos
    uniq, index, inverse = np.unique(key, return_index=True, return_inverse=True)
    agree = np.ones(len(uniq), bool)
    np.logical_and.at(agree, inverse, choice == choice[index][inverse])
    index = index[agree]
    codes[rows[index], pos[index]] = choice[index]
    changed[rows[index], pos[index]] = True
    paired = _pairs(fwd, rev, valid, weak, good, codes, quals, changed, solid, k, params)
    return len(index) + paired, weak_rows


def _too_many(changed: np.ndarray, window: int, limit: int) -> np.ndarray:
    """Rows with more than `limit` changed bases in some window of `window` bases."""
    n, length = changed.shape
    cum = np.zeros((n, length + 1), np.int32)
    np.cumsum(changed, axis=1, dtype=np.int32, out=cum[:, 1:])
    w = min(window, length)
    return (cum[:, w:] - cum[:, :-w]).max(axis=1, initial=0) > limit


def correct_batch(
    batch: pa.RecordBatch | pa.Table,
    solid: SolidKmers,
    k: int,
    params: CorrectionParams | None = None,
) -> tuple[pa.RecordBatch, CorrectionCounts]:
    """Correct substitution errors in a READS_SCHEMA batch against a solid k-mer set.

    Args:
        batch: reads in READS_SCHEMA.
        solid: solid canonical k-mers of the whole data set (same k).
        k: k-mer length used to build `solid`.
        params: limits and rounds (CorrectionParams defaults when None).

    Returns:
        (batch with corrected `sequence`, everything else unchanged; counts).

    Example:
        >>> fixed, counts = correct_batch(batch, solid, k=21)  # doctest: +SKIP
        >>> counts.corrected_bases  # doctest: +SKIP
        1873
    """
    _check_k(k)
    if solid.k != k:
        raise ValueError(f"solid k-mers were built with k={solid.k}, not k={k}")
    params = params or CorrectionParams()
    if isinstance(batch, pa.Table):
        if not batch.num_rows:
            return pa.RecordBatch.from_pylist([], schema=batch.schema), CorrectionCounts()
        batch = batch.combine_chunks().to_batches()[0]
    sequence = batch.column("sequence")
    offsets, data = string_parts(sequence, wide=True)
    q_offsets, q_data = string_parts(batch.column("quality"), wide=True)
    if not np.array_equal(np.diff(offsets), np.diff(q_offsets)):
        raise ValueError("sequence and quality lengths differ")
    counts = CorrectionCounts(reads=len(offsets) - 1, bases=int(offsets[-1] - offsets[0]))
    new_data = data.copy()
    for start, codes, _ in _chunks(batch):
        n, width = codes.shape
        if width < k:
            continue
        quals = padded(q_offsets[start : start + n + 1], q_data, width, fill=126)
        quals = quals.astype(np.int16) - _PHRED_OFFSET
        changed = np.zeros(codes.shape, bool)
        original = codes.copy()
        active = np.arange(n)  # later rounds revisit only the reads the last one changed
        for i in range(params.rounds):
            if i == 0:
                sub_codes, sub_quals, sub_changed = codes, quals, changed
            else:
                sub_codes, sub_quals = codes[active], quals[active]
                sub_changed = changed[active]
            before = sub_changed.copy()
            n_changed, weak_rows = _round(sub_codes, sub_quals, sub_changed, solid, k, params)
            if i == 0:
                counts.weak_reads += weak_rows
            if not n_changed:
                break
            if i:
                codes[active], changed[active] = sub_codes, sub_changed
            active = active[(sub_changed != before).any(axis=1)]
        bad = _too_many(changed, params.window, params.max_per_window)
        changed[bad] = False
        counts.unfixable_reads += int((bad & (original != codes).any(axis=1)).sum())
        r, p = np.nonzero(changed)
        new_data[offsets[start + r] + p] = _ACGT[codes[r, p]]
        counts.corrected_bases += len(r)
        counts.corrected_reads += len(np.unique(r))
    seq_array = sequence.combine_chunks() if isinstance(sequence, pa.ChunkedArray) else sequence
    buffers = seq_array.buffers()
    fixed = pa.Array.from_buffers(
        seq_array.type, len(seq_array), [buffers[0], buffers[1], pa.py_buffer(new_data)],
        null_count=seq_array.null_count, offset=seq_array.offset,
    )
    columns = [fixed if name == "sequence" else batch.column(name) for name in batch.schema.names]
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema), counts


# --- Prefect tasks: count per shard, merge to a solid set, correct per shard ------------

CORRECT_VERSION = "2"

class SolidSet(BaseModel):
    """The solid k-mers of a sample, the histogram and the threshold that chose them."""

    kmers: Artifact
    k: int
    threshold: int
    histogram: list[int]
    skipped: str | None = None  # why correction is skipped (e.g. coverage too low)


class CorrectResult(BaseModel):
    shard: Artifact
    counts: dict[str, int]


@task(name="count-kmers", task_run_name="kmers-{shard.name}", **stage_options(CORRECT_VERSION))
def count_shard_kmers(shard: Artifact, k: int, store: Store, run_id: str) -> Artifact:
    """Canonical k-mer counts of one shard (sorted, exact).

    Args:
        shard: a Parquet read shard (READS_SCHEMA; only `sequence` is read).
        k: the k-mer length, 1..31.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        The COUNTS_SCHEMA table artifact, named `<shard>.k<k>.parquet`.
    """
    counts = count_kmers(read_table(store, shard, columns=["sequence"]), k)
    with store.scratch() as scratch:
        return publish_table(store, counts, scratch, run_id=run_id, stage="kmers",
                             name=shard.name.replace(".parquet", f".k{k}.parquet"),
                             producer="count-kmers", params={"k": k}, upstream=[shard.ref()])


@task(name="solid-kmers", task_run_name="solid-kmers-{sample}", **stage_options(CORRECT_VERSION))
def choose_solid_kmers(
    sample: str, counts: list[Artifact], k: int, threshold: int | None, store: Store, run_id: str
) -> SolidSet:
    """Merge shard counts; solid = count >= threshold (first valley of the histogram).

    With no valley in the histogram (and no `threshold`), the sample is marked skipped
    (a warning is logged) and its reads later pass through uncorrected.

    Args:
        sample: the sample name; names the artifact and the task run.
        counts: the sample's per-shard count artifacts from `count_shard_kmers`.
        k: the k-mer length the counts were made with.
        threshold: the smallest count of a solid k-mer; None: `solid_threshold` of the
            merged histogram.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        SolidSet with the solid k-mer table artifact (`kmer` column only), k, the threshold
        used, the histogram (trailing zero bins dropped) and `skipped` (the reason, or None).
    """
    merged = merge_counts(read_table(store, c) for c in counts)
    hist = kmer_histogram(merged)
    skipped = None
    try:
        cut = threshold if threshold is not None else solid_threshold(hist)
    except ValueError as exc:
        # No error peak/valley to cut at (too little coverage): correcting against a
        # made-up threshold would damage reads, so the sample passes through unchanged.
        skipped = f"{sample}: no solid/weak valley in the k-mer histogram ({exc})"
        get_run_logger().warning("skipping error correction: %s", skipped)
        cut = int(hist.size)
    solid = merged.filter(pc.greater_equal(merged["count"], cut)).select(["kmer"])
    with store.scratch() as scratch:
        art = publish_table(store, solid, scratch, run_id=run_id, stage="kmers",
                            name=f"{sample}.solid-k{k}.parquet", producer="solid-kmers",
                            params={"k": k, "threshold": cut},
                            upstream=[c.ref() for c in counts])
    last = int(np.flatnonzero(hist)[-1]) + 1 if hist.any() else 0
    return SolidSet(kmers=art, k=k, threshold=cut, histogram=[int(x) for x in hist[:last]],
                    skipped=skipped)


@materialize("helixflow://correct", name="correct-reads", task_run_name="correct-{shard.name}",
             **stage_options(CORRECT_VERSION))
def correct_reads(
    shard: Artifact, solid: SolidSet, params: CorrectionParams, store: Store, run_id: str
) -> CorrectResult:
    """Correct one shard's substitution errors against the sample's solid k-mers.

    Args:
        shard: a deduplicated Parquet read shard (READS_SCHEMA).
        solid: the sample's solid k-mers; when `solid.skipped` is set the reads are published
            unchanged.
        params: correction settings.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        CorrectResult with the corrected shard (".dedup." in the name becomes ".corrected.")
        and the CorrectionCounts as a dict.
    """
    batch = as_batch(read_table(store, shard))
    if solid.skipped:
        corrected, counts = batch, CorrectionCounts(reads=batch.num_rows)
    else:
        kmers = read_table(store, solid.kmers).column("kmer").to_numpy()
        table = SolidKmers.from_kmers(kmers, solid.k)
        corrected, counts = correct_batch(batch, table, solid.k, params)
    name = shard.name.replace(".dedup.", ".corrected.")
    with store.scratch() as scratch:
        art = publish_table(store, corrected, scratch, run_id=run_id, stage="correct",
                            name=name, producer="correct-reads",
                            params={**dataclasses.asdict(params), "k": solid.k},
                            upstream=[shard.ref(), solid.kmers.ref()])
    return CorrectResult(shard=art, counts=dataclasses.asdict(counts))
