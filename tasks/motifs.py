"""Motif search on DNA: IUPAC consensus motifs with mismatches and position weight matrices.

Pure functions (NumPy/Arrow in and out, no Prefect); the Prefect/Ray tasks wrap them.

- Consensus motifs (`find_consensus`): IUPAC letters, up to `max_mismatches` positions
  that do not match. A sequence base other than A/C/G/T only matches an `N` in the motif.
- Count matrices are read from JASPAR (`parse_jaspar`, with or without the `A [ ... ]`
  labels) and MEME minimal format (`parse_meme`, probabilities times nsites). A PWM
  (`pwm_from_counts`) holds log-odds scores in bits, log2(p / background), with
  probabilities (counts + pseudocount * background) / (sites + pseudocount), so a column
  with a zero count still scores finitely.
- P-values (`PWM.p_value`) come from the exact distribution of the window score under
  the background (independent bases), computed by dynamic programming over the matrix
  columns on scores rounded to `resolution` bits, as FIMO and TFM-Pvalue do. They are
  exact for the rounded matrix.
- Scanning (`scan_pwms`) covers both strands (the reverse-complemented matrix over the
  forward sequence). Windows containing a base other than A/C/G/T are skipped.

How it is vectorised: all sequences are packed into one code array (tasks.orfs); a
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

import functools
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view

from helixflow.errors import InputError
from helixflow.tasks.orfs import (
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
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_UNIFORM = np.full(4, 0.25)


# --------------------------------------------------------------------------------------
# Matrices


@dataclass(frozen=True)
class CountMatrix:
    """A motif as counts (width x 4, columns A C G T), as read from a motif file."""

    name: str
    counts: np.ndarray
    alt_name: str = ""
    background: np.ndarray | None = None  # from the file (MEME), else None

    @property
    def width(self) -> int:
        """Number of positions."""
        return int(self.counts.shape[0])


@dataclass(frozen=True)
class PWM:
    """Log-odds position weight matrix (bits, width x 4, columns A C G T) and background.

    Args:
        name: reported in hits.
        scores: log-odds score of each base at each position.
        background: base probabilities the p-values assume (A C G T, sums to 1).
        resolution: score granularity (bits) of the exact p-value computation.
    """

    name: str
    scores: np.ndarray
    background: np.ndarray = field(default_factory=lambda: _UNIFORM.copy())
    resolution: float = 0.001

    def __post_init__(self) -> None:
        """Check shapes and values so a bad matrix fails here, not mid-scan."""
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != 4 or scores.shape[0] == 0:
            raise ValueError(f"PWM {self.name!r}: scores must be width x 4, got {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError(f"PWM {self.name!r}: scores must be finite (use a pseudocount)")
        bg = np.asarray(self.background, dtype=np.float64)
        if bg.shape != (4,) or (bg <= 0).any() or not math.isclose(bg.sum(), 1.0, rel_tol=1e-6):
            raise ValueError(f"background must be 4 positive probabilities summing to 1, got {bg}")
        if not self.resolution > 0:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "background", bg / bg.sum())

    @property
    def width(self) -> int:
        """Number of positions."""
        return int(self.scores.shape[0])

    def reverse_complement(self) -> PWM:
        """The matrix of the other strand: positions reversed, A<->T and C<->G swapped."""
        return PWM(self.name, self.scores[::-1, ::-1].copy(), self.background[::-1].copy(),
                   self.resolution)

    def _integer_scores(self) -> np.ndarray:
        """Scores rounded to multiples of `resolution`, as integers."""
        return np.rint(self.scores / self.resolution).astype(np.int64)

    def score_distribution(self) -> tuple[int, np.ndarray]:
        """Exact distribution of the rounded window score under the background.

        Returns (lowest integer score, probabilities of lowest, lowest + 1, ...); the
        score in bits is the integer times `resolution`. Dynamic programming over the
        columns: each column shifts the running distribution by its four scores,
        weighted by the background.
        """
        ints = self._integer_scores()
        low = ints.min(axis=1)
        shifted = ints - low[:, None]
        dist = np.ones(1)
        for col in shifted:
            new = np.zeros(len(dist) + int(col.max()))
            for base in range(4):
                new[col[base] : col[base] + len(dist)] += self.background[base] * dist
            dist = new
        return int(low.sum()), dist

    @functools.cached_property
    def survival(self) -> tuple[int, np.ndarray]:
        """(lowest integer score, P(rounded score >= lowest + k) for each k), computed once.

        Summed from the top so that tiny tail probabilities keep their precision.
        """
        low, dist = self.score_distribution()
        return low, np.cumsum(dist[::-1])[::-1]

    def p_value(self, score: float) -> float:
        """P(window score >= score) for a random background sequence.

        Example:
            >>> PWM("x", np.array([[1.0, 0, 0, 0]] * 2)).p_value(2.0)
            0.0625
        """
        low, sf = self.survival
        k = int(np.ceil(score / self.resolution - 1e-9)) - low
        return float(sf[min(max(k, 0), len(sf) - 1)]) if k < len(sf) else 0.0

    def score_for_p_value(self, p: float) -> float:
        """The lowest attainable score whose p-value is <= p (inf when none is that rare)."""
        low, sf = self.survival
        _, dist = self.score_distribution()
        ok = np.flatnonzero((sf <= p * (1 + 1e-9)) & (dist > 0))
        return math.inf if len(ok) == 0 else float((int(ok[0]) + low) * self.resolution)


def pwm_from_counts(
    matrix: CountMatrix,
    background: np.ndarray | None = None,
    pseudocount: float = 1.0,
    resolution: float = 0.001,
) -> PWM:
    """Log-odds PWM (bits) of a count matrix.

    Args:
        matrix: counts, e.g. from parse_jaspar or parse_meme.
        background: A C G T probabilities; default the matrix's own (MEME) or uniform.
        pseudocount: total pseudocount per column, shared out by the background.
        resolution: score granularity of p-values (bits).

    Returns:
        PWM with N x 4 log2-odds scores (A C G T), the normalised background and
        `resolution`.

    Raises:
        ValueError: a negative pseudocount, or a zero probability (pseudocount 0).

    Example:
        >>> m = CountMatrix("m", np.array([[3.0, 1, 0, 0]]))
        >>> pwm_from_counts(m, pseudocount=4.0).scores.round(3).tolist()
        [[1.0, 0.0, -1.0, -1.0]]
    """
    if background is None:
        background = matrix.background if matrix.background is not None else _UNIFORM
    bg = np.asarray(background, dtype=np.float64)
    bg = bg / bg.sum()
    if pseudocount < 0:
        raise ValueError(f"pseudocount must be >= 0, got {pseudocount}")
    counts = matrix.counts.astype(np.float64)
    sites = counts.sum(axis=1, keepdims=True)
    probs = (counts + pseudocount * bg) / (sites + pseudocount)
    with np.errstate(divide="ignore"):
        scores = np.log2(probs / bg)
    if not np.isfinite(scores).all():
        raise ValueError(
            f"motif {matrix.name!r} has zero counts: use pseudocount > 0 to score them"
        )
    return PWM(matrix.name, scores, bg, resolution)


# --------------------------------------------------------------------------------------
# Parsers


def _numbers(text: str, source: str, line_no: int) -> list[float]:
    """The numbers on one matrix line, or an InputError naming the line."""
    tokens = text.split()
    try:
        return [float(t) for t in tokens]
    except ValueError:
        message = f"line {line_no}: expected numbers, got {text.strip()!r}"
        raise InputError(source, message) from None


def _check_counts(counts: np.ndarray, name: str, source: str, line_no: int) -> None:
    """Counts must be finite, non-negative and have at least one position."""
    if counts.shape[0] == 0:
        raise InputError(source, f"line {line_no}: motif {name!r} has no positions")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise InputError(source, f"line {line_no}: motif {name!r} has negative or invalid values")


def parse_jaspar(text: str, source: str = "<jaspar>") -> list[CountMatrix]:
    """Count matrices from JASPAR text: '>ID name' headers, then rows `A [ 1 2 ... ]`
    (labels and brackets optional; unlabelled rows are A, C, G, T in that order).

    Raises InputError (naming `source` and the line) for anything else.

    Args:
        text: the file's text; blank lines and '#' comments are skipped.
        source: the file's name, for error messages.

    Returns:
        One CountMatrix (N x 4 counts, A C G T) per motif, in file order; a bare .pfm
        without header gives one named "motif".

    Raises:
        InputError: a malformed header or row, missing or unequal A/C/G/T rows, bad counts,
            or no motif at all.

    Example:
        >>> text = ">MA0001.1 X\\nA [ 1 0 ]\\nC [ 0 1 ]\\nG [ 0 0 ]\\nT [ 0 0 ]\\n"
        >>> m, = parse_jaspar(text)
        >>> m.name, m.alt_name, m.counts.tolist()
        ('MA0001.1', 'X', [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    """
    motifs: list[CountMatrix] = []
    header: tuple[str, str, int] | None = None
    rows: dict[str, list[float]] = {}
    order = "ACGT"

    def finish(line_no: int) -> None:
        if header is None:
            return
        name, alt, at = header
        if sorted(rows) != sorted(order):
            raise InputError(source, f"line {at}: motif {name!r} needs rows A, C, G and T")
        widths = {len(v) for v in rows.values()}
        if len(widths) != 1:
            raise InputError(source, f"line {at}: motif {name!r} rows differ in length")
        counts = np.array([rows[b] for b in order], dtype=np.float64).T
        _check_counts(counts, name, source, at)
        motifs.append(CountMatrix(name, counts, alt))

    line_no = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith(">"):
            finish(line_no)
            fields = stripped[1:].split(None, 1)
            if not fields:
                raise InputError(source, f"line {line_no}: motif header without an id")
            header = (fields[0], fields[1].strip() if len(fields) > 1 else "", line_no)
            rows = {}
            continue
        if header is None:  # a bare .pfm file: four unlabelled rows, no header
            header = ("motif", "", line_no)
        match = re.fullmatch(r"([ACGTacgt])?\s*[\[|]?\s*(.*?)\s*\]?", stripped)
        assert match is not None  # the pattern matches any text
        letter = (match.group(1) or order[len(rows)] if len(rows) < 4 else "").upper()
        if not letter or letter in rows:
            raise InputError(source, f"line {line_no}: unexpected row {stripped[:40]!r}")
        rows[letter] = _numbers(match.group(2), source, line_no)
    finish(line_no)
    if not motifs:
        raise InputError(source, "no motif found", hint="is this a JASPAR matrix file?")
    return motifs


def parse_meme(text: str, source: str = "<meme>") -> list[CountMatrix]:
    """Count matrices from MEME minimal motif format (letter-probability matrices).

    Counts are probabilities times `nsites` (20 when absent, as MEME assumes); the file's
    background letter frequencies, if given, travel with each matrix.

    Args:
        text: the file's text.
        source: the file's name, for error messages.

    Returns:
        One CountMatrix per letter-probability matrix, in file order.

    Raises:
        InputError: no "MEME version" line, a non-DNA alphabet, a malformed background or
            matrix, or no matrix at all.

    Example:
        >>> text = "MEME version 4\\n\\nALPHABET= ACGT\\n\\nMOTIF m1\\n" \\
        ...        "letter-probability matrix: alength= 4 w= 1 nsites= 10\\n0.5 0.5 0 0\\n"
        >>> parse_meme(text)[0].counts.tolist()
        [[5.0, 5.0, 0.0, 0.0]]
    """
    lines = text.splitlines()
    if not any(line.startswith("MEME version") for line in lines):
        raise InputError(source, "no 'MEME version' line", hint="is this a MEME motif file?")
    background: np.ndarray | None = None
    motifs: list[CountMatrix] = []
    name, alt = "", ""
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line.startswith("ALPHABET"):
            alphabet = line.split("=", 1)[1].strip() if "=" in line else ""
            if alphabet.split()[0:1] != ["ACGT"]:
                raise InputError(source, f"line {i}: only the DNA alphabet ACGT is supported")
        elif line.startswith("Background letter frequencies"):
            freqs: dict[str, float] = {}
            while i < len(lines) and lines[i].strip():
                tokens = lines[i].split()
                for letter, value in zip(tokens[::2], tokens[1::2], strict=False):
                    freqs[letter.upper()] = float(value)
                i += 1
            if sorted(freqs) != list("ACGT"):
                raise InputError(source, f"line {i}: background must give A, C, G and T")
            background = np.array([freqs[b] for b in "ACGT"])
            background = background / background.sum()
        elif line.startswith("MOTIF"):
            fields = line.split()
            if len(fields) < 2:
                raise InputError(source, f"line {i}: MOTIF without an id")
            name, alt = fields[1], " ".join(fields[2:])
        elif line.startswith("letter-probability matrix"):
            if not name:
                raise InputError(source, f"line {i}: matrix before any MOTIF line")
            at = i
            keys = dict(re.findall(r"(\w+)\s*=\s*(" + _NUMBER + ")", line))
            width = int(float(keys.get("w", "0")))
            nsites = float(keys.get("nsites", "20"))
            rows: list[list[float]] = []
            while i < len(lines) and (width == 0 or len(rows) < width):
                row_text = lines[i].strip()
                if not row_text:
                    if width == 0 and rows:
                        break
                    i += 1
                    continue
                if not re.match(_NUMBER, row_text):
                    break
                rows.append(_numbers(row_text, source, i + 1))
                i += 1
            if not rows or any(len(r) != 4 for r in rows):
                raise InputError(source, f"line {at}: motif {name!r} needs rows of 4 numbers")
            if width and len(rows) != width:
                message = f"line {at}: motif {name!r} has {len(rows)} rows, w={width}"
                raise InputError(source, message)
            probs = np.array(rows, dtype=np.float64)
            _check_counts(probs, name, source, at)
            motifs.append(CountMatrix(name, probs * nsites, alt, background))
            name = ""
    if not motifs:
        raise InputError(source, "no letter-probability matrix found")
    return motifs


# --------------------------------------------------------------------------------------
# Scanning


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
