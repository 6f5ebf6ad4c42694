"""Read statistics of READS_SCHEMA batches: counts, lengths, GC, N, mean Phred by position.

`batch_stats` is vectorised (no loop per read); its `ReadStats` are additive, so the
statistics of a whole input are the merge of its batches'. Pure functions, no Prefect.

Example:
    >>> stats = ReadStats()
    >>> for batch in iter_read_batches("R1.fq.gz", "R2.fq.gz"):  # doctest: +SKIP
    ...     stats = stats.merge(batch_stats(batch))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from helixflow.tasks.reads import PHRED_MAX, PHRED_MIN, string_parts

_SCAN = 1024 * 1024  # bytes per step when counting bases (no full-size temporaries)
_QUALITY_CELLS = 1 << 23  # reads x positions padded at a time for variable-length reads


def _padded_sum(arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    """Element-wise sum of 1-D integer arrays of different lengths (zero-padded)."""
    out = np.zeros(max((len(a) for a in arrays), default=0), np.int64)
    for a in arrays:
        out[: len(a)] += a
    return out


@dataclass
class MateStats:
    """Counts for the reads of one mate (0 = single-end); additive, so batches merge."""

    reads: int = 0
    bases: int = 0
    empty: int = 0
    min_length: int = 0
    max_length: int = 0
    gc: int = 0  # G + C bases
    at: int = 0  # A + T (+ U) bases
    n_bases: int = 0  # N bases
    length_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    quality_sums: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def merge(self, other: MateStats) -> MateStats:
        """Statistics of both sets of reads."""
        if not self.reads or not other.reads:
            return other if not self.reads else self
        return MateStats(
            reads=self.reads + other.reads,
            bases=self.bases + other.bases,
            empty=self.empty + other.empty,
            min_length=min(self.min_length, other.min_length),
            max_length=max(self.max_length, other.max_length),
            gc=self.gc + other.gc,
            at=self.at + other.at,
            n_bases=self.n_bases + other.n_bases,
            length_counts=_padded_sum((self.length_counts, other.length_counts)),
            quality_sums=_padded_sum((self.quality_sums, other.quality_sums)),
        )

    def reads_by_position(self) -> np.ndarray:
        """How many reads reach each position (0-based)."""
        return np.cumsum(self.length_counts[::-1])[::-1][1:]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: counts, length distribution, GC, N, mean Phred by position."""
        covered = self.reads_by_position()
        mean_q = self.quality_sums / np.maximum(covered, 1)
        lengths = np.flatnonzero(self.length_counts)
        return {
            "reads": self.reads,
            "bases": self.bases,
            "empty_reads": self.empty,
            "min_length": self.min_length,
            "max_length": self.max_length,
            "mean_length": self.bases / self.reads if self.reads else 0.0,
            "length_histogram": {int(n): int(self.length_counts[n]) for n in lengths},
            "gc_fraction": self.gc / (self.gc + self.at) if self.gc + self.at else None,
            "n_bases": self.n_bases,
            "mean_quality": float(self.quality_sums.sum() / self.bases) if self.bases else None,
            "mean_quality_by_position": [round(float(q), 4) for q in mean_q],
        }


@dataclass
class ReadStats:
    """Per-mate read statistics of one or more batches (keys: 0 single-end, 1, 2)."""

    mates: dict[int, MateStats] = field(default_factory=dict)

    def merge(self, other: ReadStats) -> ReadStats:
        """Statistics of both inputs, mate by mate."""
        keys = sorted(self.mates.keys() | other.mates.keys())
        return ReadStats(
            {m: self.mates.get(m, MateStats()).merge(other.mates.get(m, MateStats())) for m in keys}
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{"1": {...}, "2": {...}} (or {"0": {...}} single-end); see MateStats.to_dict."""
        return {str(m): s.to_dict() for m, s in sorted(self.mates.items())}


def _quality_sums(offsets: np.ndarray, data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sum of Phred scores at each position over all reads (vectorised, no loop per read)."""
    n = len(lengths)
    longest = int(lengths.max()) if n else 0
    q = data[offsets[0] : offsets[-1]]
    if not longest:
        return np.zeros(0, np.int64)
    # Summing into uint32 is twice as fast as int64 and cannot overflow below 34M reads.
    acc = np.uint32 if n * PHRED_MAX < 2**32 else np.int64
    if lengths.min() == longest:  # all reads the same length: a plain 2-D view
        sums = q.reshape(n, longest).sum(axis=0, dtype=acc).astype(np.int64)
        return sums - PHRED_MIN * n
    # Variable lengths: pad groups of reads into a matrix; boolean assignment fills the
    # cells row by row, which is exactly the order of the concatenated quality strings.
    sums = np.zeros(longest, np.int64)
    step = max(1, _QUALITY_CELLS // longest)
    for start in range(0, n, step):
        stop = min(start + step, n)
        span = lengths[start:stop]
        width = int(span.max())
        if not width:
            continue
        cells = np.arange(width) < span[:, None]
        matrix = np.zeros(cells.shape, np.uint8)
        matrix[cells] = q[offsets[start] - offsets[0] : offsets[stop] - offsets[0]]
        sums[:width] += matrix.sum(axis=0, dtype=acc)
        sums[:width] -= PHRED_MIN * cells.sum(axis=0)
    return sums


def _base_counts(bases: np.ndarray) -> dict[str, int]:
    """Count A, C, G, T, U and N, a cache-sized piece at a time (no full-size temporaries)."""
    counts = dict.fromkeys("ACGTUN", 0)
    for i in range(0, len(bases), _SCAN):
        piece = bases[i : i + _SCAN]
        for letter in counts:
            counts[letter] += int(np.count_nonzero(piece == ord(letter)))
    return counts


def _mate_stats(sequence: pa.Array, quality: pa.Array) -> MateStats:
    """Statistics of one mate's reads."""
    offsets, data = string_parts(sequence)
    lengths = np.diff(offsets).astype(np.int64)
    counts = _base_counts(data[offsets[0] : offsets[-1]])
    q_offsets, q_data = string_parts(quality)
    return MateStats(
        reads=len(lengths),
        bases=int(lengths.sum()),
        empty=int(np.count_nonzero(lengths == 0)),
        min_length=int(lengths.min()),
        max_length=int(lengths.max()),
        gc=counts["G"] + counts["C"],
        at=counts["A"] + counts["T"] + counts["U"],
        n_bases=counts["N"],
        length_counts=np.bincount(lengths).astype(np.int64),
        quality_sums=_quality_sums(q_offsets, q_data, lengths),
    )


def batch_stats(batch: pa.RecordBatch | pa.Table) -> ReadStats:
    """Per-mate read statistics of a READS_SCHEMA batch (as made by iter_read_batches).

    Counts reads, bases, empty reads, min/max/mean length, the length histogram, GC
    fraction ((G+C)/(A+C+G+T+U), ambiguity codes excluded), N bases and mean Phred by
    position. Bases are expected upper-case, as iter_read_batches makes them. Merge the
    results of several batches with `ReadStats.merge`. Vectorised: no loop per read.

    Args:
        batch: reads in READS_SCHEMA (a RecordBatch, or a Table).

    Returns:
        ReadStats with one MateStats per mate present (0 single-end, 1 and 2 for pairs).

    Example:
        >>> stats = ReadStats()
        >>> for batch in iter_read_batches("R1.fq.gz", "R2.fq.gz"):  # doctest: +SKIP
        ...     stats = stats.merge(batch_stats(batch))
    """
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else None
        if batch is None:
            return ReadStats()
    mate = batch.column("mate").to_numpy()
    sequence, quality = batch.column("sequence"), batch.column("quality")
    result = ReadStats()
    for m in np.flatnonzero(np.bincount(mate)):
        rows = np.flatnonzero(mate == m)
        if rows[-1] - rows[0] + 1 == len(rows):  # contiguous, as iter_read_batches lays out
            seq, qual = sequence.slice(rows[0], len(rows)), quality.slice(rows[0], len(rows))
        else:
            seq, qual = sequence.take(rows), quality.take(rows)
        result.mates[int(m)] = _mate_stats(seq, qual)
    return result
