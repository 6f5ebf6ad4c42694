"""QC filters: fastp 0.23.2's `Filter::passFilter` result code of every read of a chunk.

In fastp's order: unqualified-base percentage (and mean quality), N count, length
(`length_required`, `length_limit`), low complexity. A pair is reported under the larger
of its mates' codes (`tasks.qc_batch`).
"""

from __future__ import annotations

import numpy as np

from helixflow.tasks.qc_params import PHRED, QcParams
from helixflow.tasks.qc_trim import Mate

_N = ord("N")

# fastp's filter result codes; a pair is reported under the larger of its mates' codes.
PASS, FAIL_N_BASE, FAIL_LENGTH, FAIL_TOO_LONG, FAIL_QUALITY, FAIL_COMPLEXITY = (
    0, 16, 20, 21, 24, 28,
)
REASONS = {
    FAIL_N_BASE: "too_many_n",
    FAIL_LENGTH: "too_short",
    FAIL_TOO_LONG: "too_long",
    FAIL_QUALITY: "low_quality",
    FAIL_COMPLEXITY: "low_complexity",
}

def _row_counts(mask: np.ndarray) -> np.ndarray:
    """True cells per row of a 2-D boolean matrix (as bytes summed into uint16: twice as
    fast as count_nonzero along an axis)."""
    acc = np.uint16 if mask.shape[1] < 2**16 else np.int64
    return mask.view(np.uint8).sum(axis=1, dtype=acc).astype(np.int64)


def filter_codes(mate: Mate, p: QcParams) -> np.ndarray:
    """fastp Filter::passFilter result code of every read (PASS = 0)."""
    length = mate.length
    width = mate.seq.shape[1]
    inside = np.arange(width) < length[:, None]
    low_q = mate.qual < PHRED + p.qualified_quality_phred
    is_n = mate.seq == _N
    if len(length) and length.min() < width:  # else every column is inside every read
        low_q &= inside
        is_n &= inside
    low = _row_counts(low_q)
    n_bases = _row_counts(is_n)
    code = np.zeros(len(length), np.int64)
    safe = np.maximum(length, 1)
    if p.average_qual:
        total = np.where(inside, mate.qual.astype(np.int64) - PHRED, 0).sum(axis=1)
        low_mean = (total // safe) < p.average_qual
    else:
        low_mean = np.zeros(len(length), bool)
    too_short = length < p.length_required
    too_long = (length > p.length_limit) if p.length_limit else np.zeros(len(length), bool)
    if p.low_complexity_filter and width > 1:
        changes = (mate.seq[:, 1:] != mate.seq[:, :-1]) & inside[:, 1:]
        complexity = np.count_nonzero(changes, axis=1) / np.maximum(length - 1, 1)
        simple = (length <= 1) | (complexity < p.complexity_threshold / 100.0)
    else:
        simple = np.full(len(length), p.low_complexity_filter)
    # Assign in reverse priority so that the first failing test of fastp's order wins.
    code[simple] = FAIL_COMPLEXITY
    code[too_long] = FAIL_TOO_LONG
    code[too_short] = FAIL_LENGTH
    code[n_bases > p.n_base_limit] = FAIL_N_BASE
    code[low_mean] = FAIL_QUALITY
    code[low > p.unqualified_percent_limit * length / 100.0] = FAIL_QUALITY
    code[(length == 0) | ~mate.alive] = FAIL_LENGTH
    return code
