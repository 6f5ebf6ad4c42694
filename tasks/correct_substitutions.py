"""Substitution error correction of reads against a set of solid k-mers (vectorised).

`correct_batch` finds stretches of weak k-mers in every read and derives the wrong base
from the solid k-mer next to the stretch (the first weak k-mer after a solid one has the
error at its last base; the last weak one before a solid one at its first base). The
three other bases are tried there; a substitution is accepted only if exactly one of them
makes every k-mer over the base solid (or, when a second error cuts the stretch short, at
least `min_support` of them while no other base makes any). Two errors less than k apart
(between solid k-mers, or close together at a read end) are tried together, all 15 base
pairs, and fixed when exactly one pair works. When both ends of a short stretch propose
different bases (repeats, where erroneous k-mers exist elsewhere in the genome), only the
lower-quality one is changed. Rounds repeat on the reads the last round changed.

Vectorised over all reads of a batch: loops run over read positions (building k-mers),
over candidate bases, correction rounds and hash-table probe steps, never over reads.

Safety rules: N (any non-ACGT) is never changed and k-mers containing it are neither solid
nor weak; a base is changed at most once; a base with Phred > `params.max_quality` is
never changed; a read with more than `params.max_per_window` corrections in any
`params.window` bases is left as it was (Lighter's -maxcor).

The solid set comes from `tasks.correct_spectrum`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa

from helixflow.tasks.correct_spectrum import SolidKmers, check_k, code_chunks, kmer_matrices
from helixflow.tasks.reads import padded, string_parts

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

def _solid_matrix(
    fwd: np.ndarray, rev: np.ndarray, valid: np.ndarray, solid: SolidKmers
) -> np.ndarray:
    """Which k-mers of the matrices are solid (invalid ones are not)."""
    by_pos = valid.T  # contiguous for matrices from kmer_matrices: faster masking
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
    fwd, rev, valid = kmer_matrices(codes, k)
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
    check_k(k)
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
    for start, codes, _ in code_chunks(batch):
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
