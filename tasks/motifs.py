"""Motif search on DNA: IUPAC consensus motifs with mismatches and position weight matrices.

Pure functions (NumPy/Arrow in and out, no Prefect); the Prefect/Ray tasks wrap them.

- Consensus motifs (`find_consensus`): IUPAC letters, up to `max_mismatches` positions
  that do not match. A sequence base other than A/C/G/T only matches an `N` in the motif.
- Count matrices are read from JASPAR and MEME files (`tasks.motif_parsers`); PWMs,
  their log-odds scores and exact p-values are `tasks.motif_matrices`.
- Scanning (`scan_pwms`) covers both strands (the reverse-complemented matrix over the
  forward sequence). Windows containing a base other than A/C/G/T are skipped.

How it is vectorised: all sequences are packed into one code array (tasks.sequence_input); a
window score is the sum over the motif's columns of the column's score at the base that
column sees, i.e. one gather per column over the whole array (the columns of a sliding
window view), so the Python loop runs over motif columns, never over positions.

Output rows (HITS_SCHEMA) are BED-like: 0-based start, end exclusive, on the forward
strand; `matched` is the site as read on the hit's strand (reverse-complemented for '-').

Example:
    >>> hits = find_consensus([("s", "TTGACGTCAA")], "TGACGTCA")
    >>> hits.column("start").to_pylist(), hits.column("strand").to_pylist()
    ([1, 1], ['+', '-'])
"""


from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view

from helixflow.tasks.motif_matrices import PWM
from helixflow.tasks.sequence_input import (
    AMBIGUOUS_CODE,
    SENTINEL_CODE,
    Sequences,
    pack_sequences,
    sequence_arrays,
)

HITS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("end", pa.int64(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("p_value", pa.float64(), nullable=True),
        pa.field("strand", pa.string(), nullable=False),
        pa.field("matched", pa.string(), nullable=False),
    ]
)
"""One row per motif hit. `score` is the log-odds score in bits for a PWM and the number
of matching positions for a consensus motif (whose `p_value` is null)."""

IUPAC: dict[str, str] = {
    "A": "A", "C": "C", "G": "G", "T": "T", "U": "T",
    "R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT", "M": "AC",
    "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG", "N": "ACGT",
}
_IUPAC_COMPLEMENT = str.maketrans("ACGTURYSWKMBDHVN", "TGCAAYRSWMKVHDBN")
_LETTERS = np.frombuffer(b"ACGTNN", dtype=np.uint8)  # code -> letter (sentinel never shown)
_RC_LETTERS = np.frombuffer(b"TGCANN", dtype=np.uint8)
@dataclass
class _Hits:
    """Hits of one motif on one strand, in packed-array positions."""

    pos: np.ndarray
    score: np.ndarray
    p_value: np.ndarray | None
    minus: bool
    name: str
    width: int


def _window_ok(codes: np.ndarray, width: int) -> np.ndarray:
    """Per window start: the window lies inside one sequence (contains no sentinel)."""
    cum = np.concatenate([[0], np.cumsum(codes == SENTINEL_CODE, dtype=np.int64)])
    return (cum[width:] - cum[:-width]) == 0


def _column_sum(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Sum over columns j of table[j, codes[start + j]] for every window start."""
    width = table.shape[0]
    windows = sliding_window_view(codes, width)  # a view: no copy
    total = np.zeros(len(windows), dtype=table.dtype)
    for j in range(width):
        total += table[j][windows[:, j]]
    return total


def _to_table(hits: list[_Hits], packed_codes: np.ndarray, ids: pa.Array,
              starts: np.ndarray) -> pa.Table:
    """Assemble hits into a HITS_SCHEMA table sorted by sequence, start, strand, name."""
    if not hits or sum(len(h.pos) for h in hits) == 0:
        return HITS_SCHEMA.empty_table()
    pos = np.concatenate([h.pos for h in hits])
    score = np.concatenate([h.score for h in hits])
    has_p = np.concatenate([np.full(len(h.pos), h.p_value is not None) for h in hits])
    p_value = np.concatenate(
        [h.p_value if h.p_value is not None else np.zeros(len(h.pos)) for h in hits]
    )
    minus = np.concatenate([np.full(len(h.pos), h.minus) for h in hits])
    width = np.concatenate([np.full(len(h.pos), h.width) for h in hits])
    name_idx = np.concatenate([np.full(len(h.pos), i) for i, h in enumerate(hits)])
    seq = np.searchsorted(starts, pos, side="right") - 1
    start = pos - starts[seq]
    order = np.lexsort((name_idx, minus, start, seq))
    matched = pa.concat_arrays([_matched(packed_codes, h) for h in hits]).take(pa.array(order))
    names = [hits[k].name for k in name_idx[order]]
    return pa.table(
        {
            "seq_id": ids.take(pa.array(seq[order])),
            "start": pa.array(start[order], pa.int64()),
            "end": pa.array(start[order] + width[order], pa.int64()),
            "name": pa.array(names, pa.string()),
            "score": pa.array(score[order], pa.float64()),
            "p_value": pa.array(p_value[order], pa.float64(), mask=~has_p[order]),
            "strand": pa.array(np.where(minus[order], "-", "+"), pa.string()),
            "matched": matched,
        },
        schema=HITS_SCHEMA,
    )


def _matched(codes: np.ndarray, hits: _Hits) -> pa.Array:
    """The site text of each hit, as read on its strand, gathered for all hits at once."""
    letters = _RC_LETTERS if hits.minus else _LETTERS
    windows = letters[sliding_window_view(codes, hits.width)[hits.pos]]
    if hits.minus:
        windows = windows[:, ::-1]
    offsets = np.arange(len(hits.pos) + 1, dtype=np.int32) * hits.width
    return pa.StringArray.from_buffers(
        len(hits.pos), pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(windows).tobytes())
    )


def find_consensus(
    sequences: Sequences,
    motif: str,
    *,
    name: str | None = None,
    max_mismatches: int = 0,
    both_strands: bool = True,
) -> pa.Table:
    """Sites matching an IUPAC consensus with at most `max_mismatches` mismatches.

    Args:
        sequences: (id, sequence) pairs, a FASTA path or a reads table.
        motif: IUPAC letters (ACGTURYSWKMBDHVN), e.g. 'TGASTCA'.
        name: reported in the `name` column; default the motif itself.
        max_mismatches: positions allowed not to match.
        both_strands: also report sites of the reverse-complemented motif ('-').

    Returns:
        HITS_SCHEMA rows; `score` is the number of matching positions, `p_value` null.

    Example:
        >>> find_consensus([("s", "AAGGATCC")], "GGWTCC").column("matched").to_pylist()
        ['GGATCC', 'GGATCC']
    """
    motif_u = motif.upper()
    if not motif_u or any(c not in IUPAC for c in motif_u):
        raise ValueError(f"motif must be IUPAC letters ({''.join(IUPAC)}), got {motif!r}")
    if isinstance(max_mismatches, bool) or not 0 <= max_mismatches < len(motif_u):
        raise ValueError(
            f"max_mismatches must be an integer in 0..{len(motif_u) - 1}, got {max_mismatches!r}"
        )
    ids, data, offsets = sequence_arrays(sequences)
    packed = pack_sequences(data, offsets, 1)
    width = len(motif_u)
    hits: list[_Hits] = []
    if len(packed.codes) < width:
        return HITS_SCHEMA.empty_table()
    ok = _window_ok(packed.codes, width)
    strands = [(False, motif_u)]
    if both_strands:
        strands.append((True, motif_u.translate(_IUPAC_COMPLEMENT)[::-1]))
    for minus, text in strands:
        table = np.zeros((width, 6), dtype=np.int16)  # 1 = this base matches here
        for j, letter in enumerate(text):
            for base in IUPAC[letter]:
                table[j, "ACGT".index(base)] = 1
            table[j, 4] = letter == "N"
        matches = _column_sum(packed.codes, table)
        found = np.flatnonzero(ok & (matches >= width - max_mismatches))
        hits.append(_Hits(found, matches[found].astype(np.float64), None, minus,
                          name or motif, width))
    return _to_table(hits, packed.codes, ids, packed.starts)


def scan_pwms(
    sequences: Sequences,
    pwms: list[PWM],
    *,
    p_threshold: float | None = 1e-4,
    score_threshold: float | None = None,
    both_strands: bool = True,
) -> pa.Table:
    """Sites scoring above threshold for each PWM, with exact p-values.

    A window is reported when its p-value is <= `p_threshold` and its score is >=
    `score_threshold` (each only when given; at least one must be).

    Args:
        sequences: (id, sequence) pairs, a FASTA path or a reads table.
        pwms: matrices to scan, e.g. `pwm_from_counts(m)` for each of `parse_jaspar(...)`.
        p_threshold: largest p-value reported (FIMO's default is 1e-4).
        score_threshold: smallest log-odds score (bits) reported.
        both_strands: also scan the reverse-complemented matrices ('-').

    Returns:
        HITS_SCHEMA rows sorted by sequence, start, strand and motif.

    Example:
        >>> pwm = PWM("ac", np.array([[2.0, -2, -2, -2], [-2, 2, -2, -2]]))
        >>> scan_pwms([("s", "GGACGG")], [pwm], p_threshold=0.1).column("start").to_pylist()
        [2]
    """
    if p_threshold is None and score_threshold is None:
        raise ValueError("give p_threshold, score_threshold or both")
    if p_threshold is not None and not 0 < p_threshold <= 1:
        raise ValueError(f"p_threshold must be in (0, 1], got {p_threshold}")
    ids, data, offsets = sequence_arrays(sequences)
    packed = pack_sequences(data, offsets, 1)
    hits: list[_Hits] = []
    for pwm in pwms:
        width = pwm.width
        if len(packed.codes) < width:
            continue
        ok = _only_acgt(packed.codes, width)  # also keeps windows inside one sequence
        low, sf = pwm.survival
        k_min = -np.iinfo(np.int64).max
        if p_threshold is not None:
            passing = np.flatnonzero(sf <= p_threshold * (1 + 1e-9))
            if len(passing) == 0:
                continue  # no window can be that rare
            k_min = int(passing[0]) + low
        for minus, mat in ((False, pwm), (True, pwm.reverse_complement()))[: 1 + both_strands]:
            ints = np.zeros((width, 6), dtype=np.int64)
            ints[:, :4] = mat._integer_scores()
            int_score = _column_sum(packed.codes, ints)
            keep = ok & (int_score >= k_min)
            found = np.flatnonzero(keep)
            # Float scores only where reported: one gather over the found windows.
            site = packed.codes[found[:, None] + np.arange(width)]
            score = mat.scores[np.arange(width), site].sum(axis=1)
            if score_threshold is not None:
                sel = score >= score_threshold - 1e-12
                found, score = found[sel], score[sel]
            p = sf[np.clip(int_score[found] - low, 0, len(sf) - 1)]
            hits.append(_Hits(found, score, p, minus, pwm.name, width))
    return _to_table(hits, packed.codes, ids, packed.starts)


def _only_acgt(codes: np.ndarray, width: int) -> np.ndarray:
    """Per window start: every base is A, C, G or T (so no sentinel either)."""
    cum = np.concatenate([[0], np.cumsum(codes >= AMBIGUOUS_CODE, dtype=np.int64)])
    return (cum[width:] - cum[:-width]) == 0
