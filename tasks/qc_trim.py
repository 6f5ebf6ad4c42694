"""QC trimming steps on one mate's reads of a chunk: fixed trimming with the
sliding-window quality cut (fastp `Filter::trimAndCut`), polyG and polyX tails.

Each step works on a `Mate` (padded (reads x positions) byte matrices and per-read
lengths) with cumulative sums, masked arg-max/arg-min and gathers: no loop per read.
Adapter trimming, which compares sequences, is `tasks.qc_adapter_trim`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helixflow.tasks.qc_params import PHRED, QcCounts, QcParams

_G, _N = ord("G"), ord("N")


@dataclass
class Mate:
    """One mate's reads in a chunk while they are trimmed."""

    seq: np.ndarray  # (n, width) uint8, zero-padded, rebased so the read starts at column 0
    qual: np.ndarray
    length: np.ndarray  # current length (int64)
    alive: np.ndarray  # False where fastp's trimAndCut returned NULL
    front: np.ndarray  # bases removed from the 5' end (fastp's frontTrimmed)
    original: np.ndarray  # input length


def _next_not_n(seq: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Smallest index >= pos that is not N (pos itself when pos is past the matrix)."""
    width = seq.shape[1]
    cols = np.where(seq == _N, width, np.arange(width))
    nxt = np.minimum.accumulate(cols[:, ::-1], axis=1)[:, ::-1]
    inside = pos < width
    out = pos.copy()
    out[inside] = nxt[np.flatnonzero(inside), pos[inside]]
    return out


def _prev_not_n(seq: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Largest index <= pos that is not N, or -1."""
    width = seq.shape[1]
    cols = np.where(seq == _N, -1, np.arange(width))
    prv = np.maximum.accumulate(cols, axis=1)
    inside = (pos >= 0) & (pos < width)
    out = pos.copy()
    out[inside] = prv[np.flatnonzero(inside), pos[inside]]
    return out


def trim_and_cut(
    mate: Mate, front_fixed: int, tail_fixed: int, p: QcParams, counts: QcCounts
) -> None:
    """Fixed 5'/3' trimming and the sliding-window quality cut (fastp Filter::trimAndCut)."""
    length = mate.original
    n = len(length)
    if not (front_fixed or tail_fixed or p.cut_front or p.cut_tail):
        return
    rlen = length - front_fixed - tail_fixed
    alive = rlen >= 0
    front = np.full(n, front_fixed, np.int64)
    if p.cut_front or p.cut_tail:
        w = p.cut_window_size
        width = mate.seq.shape[1]
        if width >= w:
            csum = np.zeros((n, width + 1), np.int32)
            np.cumsum(mate.qual, axis=1, dtype=np.int32, out=csum[:, 1:])
            windows = csum[:, w:] - csum[:, :-w]  # windows[:, s] = quality sum of [s, s + w)
        else:
            windows = np.zeros((n, 0), np.int32)
        good = windows >= w * (PHRED + p.cut_mean_quality)
        cols = np.arange(windows.shape[1])
        if p.cut_front:
            alive &= length - front - tail_fixed - w > 0
            stop = length - tail_fixed - w  # fastp scans s while s + w < l - tail
            hits = good & (cols >= front[:, None]) & (cols < stop[:, None])
            s = np.where(hits.any(axis=1), hits.argmax(axis=1), stop)
            s = np.where(s > 0, s + w - 1, s)
            front = _next_not_n(mate.seq, s)
            rlen = length - front - tail_fixed
        if p.cut_tail:
            alive &= length - front - tail_fixed - w > 0
            # fastp scans t from l - tail - 1 down while t - w >= front; window [t-w+1, t].
            top = length - tail_fixed - w  # window start of the first t
            hits = good & (cols >= (front + 1)[:, None]) & (cols <= top[:, None])
            last = windows.shape[1] - 1 - hits[:, ::-1].argmax(axis=1)
            t = np.where(hits.any(axis=1), last + w - 1, front + w - 1)
            t = np.where(t < length - 1, t - w + 1, t)
            t = _prev_not_n(mate.seq, t)
            rlen = t - front + 1
        alive &= (rlen > 0) & (front < length - 1)
    rlen = np.where(alive, rlen, 0)
    front = np.where(alive, front, 0)
    fits = length - front_fixed - tail_fixed >= 0
    fixed = np.where(alive | fits, front_fixed + tail_fixed, length)
    fixed = np.minimum(fixed, length)
    counts.add("front_tail_trimmed", fixed > 0, fixed)
    cut = length - fixed - rlen
    counts.add("quality_cut", cut > 0, cut)
    mate.alive &= alive
    mate.front = front
    mate.length = rlen
    if front.any():  # rebase: shift rows so every read starts at column 0
        width = mate.seq.shape[1]
        idx = np.minimum(front[:, None] + np.arange(width), width - 1)
        keep = np.arange(width) < rlen[:, None]
        mate.seq = np.where(keep, np.take_along_axis(mate.seq, idx, axis=1), 0).astype(np.uint8)
        mate.qual = np.where(keep, np.take_along_axis(mate.qual, idx, axis=1), 0).astype(np.uint8)


def from_end(matrix: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bases read from the 3' end ((n, width); column k = k-th base from the end) and a
    mask of the columns inside each read (past a read's start: undefined bytes)."""
    width = matrix.shape[1]
    if len(length) and length.min() == width:  # all full length: a plain reversal
        return matrix[:, ::-1].copy(), np.ones(matrix.shape, bool)
    idx = length[:, None] - 1 - np.arange(width)
    valid = idx >= 0
    return np.take_along_axis(matrix, np.maximum(idx, 0), axis=1), valid


def poly_g(mate: Mate, min_len: int, active: np.ndarray, counts: QcCounts) -> None:
    """Trim a 3' polyG run (fastp PolyX::trimPolyG): walk from the end, one mismatch allowed
    per 8 bases and 5 in all, at least min_len bases; cut at the last G of the run."""
    if not mate.seq.shape[1]:
        return
    rows = np.flatnonzero(active & (mate.length >= min_len))
    if not len(rows):
        return
    length = mate.length[rows]
    bases, valid = from_end(mate.seq[rows], length)
    k = np.arange(bases.shape[1])
    is_g = (bases == _G) & valid
    mism = np.cumsum(valid & ~is_g, axis=1, dtype=np.int16)
    stop = ((mism > 5) | ((mism > (k + 1) // 8) & (k >= min_len - 1))) & valid
    brk = np.where(stop.any(axis=1), stop.argmax(axis=1), length)
    trim = brk >= min_len
    last_g = np.where(is_g & (k <= brk[:, None]), k, -1).max(axis=1)
    new = np.where(trim & (last_g >= 0), length - 1 - last_g, length)
    cut = length - new
    counts.add("polyg_trimmed", cut > 0, cut)
    mate.length[rows] = new


def poly_x(mate: Mate, min_len: int, active: np.ndarray, counts: QcCounts) -> None:
    """Trim a 3' run of any one base (fastp PolyX::trimPolyX; N counts as every base)."""
    if not mate.seq.shape[1]:
        return
    rows = np.flatnonzero(active & (mate.length > 0))
    if not len(rows):
        return
    length = mate.length[rows]
    bases, valid = from_end(mate.seq[rows], length)
    k = np.arange(bases.shape[1])
    is_n = bases == _N
    cum = np.stack(
        [np.cumsum(((bases == b) | is_n) & valid, axis=1, dtype=np.int16) for b in b"ATCG"]
    )  # (4, n, width), fastp's order A, T, C, G
    cmp = k + 1
    allowed = np.minimum(5, cmp // 8)
    brk_all = (cum.max(axis=0) < cmp - allowed) & ((k >= 8) | (k + 1 >= min_len - 1)) & valid
    brk = np.where(brk_all.any(axis=1), brk_all.argmax(axis=1), length)
    has = brk + 1 >= min_len
    at = np.minimum(brk, length - 1)
    at_counts = cum[:, np.arange(len(rows)), np.maximum(at, 0)]  # (4, n)
    poly = np.frombuffer(b"ATCG", np.uint8)[at_counts.argmax(axis=0)]
    is_poly = (bases == poly[:, None]) & (k <= at[:, None]) & valid
    last = np.where(is_poly, k, -1).max(axis=1)
    new = np.where(has, length - last - 1, length)
    cut = length - new
    counts.add("polyx_trimmed", cut > 0, cut)
    mate.length[rows] = new
