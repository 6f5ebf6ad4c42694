"""Read quality control kernel: fastp 0.23.2 trimming and filtering on Arrow read batches.

Pure functions (NumPy/Arrow in and out, no Prefect) so they can be tested and benchmarked on
their own; the Prefect task wraps `filter_batch`.

What it does, in fastp 0.23.2's order (its `PairEndProcessor::processPairEnd`):

1. fixed trimming (`trim_front`/`trim_tail`) and the sliding-window quality cut
   (`cut_front`, `cut_tail`), done together as fastp's `Filter::trimAndCut` does; a read
   cut to nothing is dropped as too short;
2. polyG tail trimming (`trim_poly_g`; fastp switches it on for NextSeq/NovaSeq reads);
3. adapters: for pairs, overlap analysis first (R1 against reverse-complemented R2; an
   overlap with R2 starting before R1 means the insert is shorter than the reads, and both
   mates are cut to the insert). Where the overlap did not trim, the adapter sequence is
   searched with mismatches (one allowed per 8 compared bases): the one given, or the one
   detected from the sample's first reads as fastp's evaluator does (`detect_adapter`;
   single-end reads by default, pairs with `detect_adapter_for_pe`), or none;
4. polyX tail trimming (`trim_poly_x`);
5. filters, in fastp's order: unqualified-base percentage (and mean quality), N count,
   length (`length_required`, `length_limit`), low complexity. A pair survives only if both
   mates pass; it is counted under the worse reason of its two mates, for both reads, as
   fastp's JSON report counts it.

fastp's quirks are kept on purpose (agreement read by read is the point): the quality cut
moves the front cut `window - 1` bases past the first good window and the tail cut back by
`window - 1` from the last good window; overlap acceptance only counts mismatches in the
first 50 overlapping bases; bases are compared as characters (N matches N).

How it is fast. No Python loop per read: a batch is processed in chunks of fragments held
as padded 2-D byte matrices (reads x positions). Trimming decisions are cumulative sums,
masked arg-max/arg-min and gathers over those matrices. Sequence comparisons (overlap
and adapter search) pack, for every read position, the next 16 bases into one 32-bit word
(2 bits per base), built in four doubling passes; a candidate shift is screened with a
few XOR/popcount operations for all reads at once (a lower bound of the mismatches), and
only screened-in candidates are compared base by base. The overlap analysis screens 16
shifts at a time as one (shifts x pairs) matrix, over the pairs still searching only
(a pair leaves once its first accepted shift is found, as fastp stops there), and packs
R2's reverse complement only where it is needed. Loops run over shift blocks and adapter
positions, never over reads. (0.44 s per 65k ART pairs before these last changes,
~0.18 CPU s after, with identical output.)

Example:
    >>> for batch in iter_read_batches("R1.fq.gz", "R2.fq.gz"):  # doctest: +SKIP
    ...     kept, orphans, counts = filter_batch(batch, QcParams())
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact
from helixflow.caching import stage_options
from helixflow.store import Store
from helixflow.tables import as_batch, publish_table, read_table
from helixflow.tasks.fastp_adapters import KNOWN_ADAPTERS
from helixflow.tasks.reads import base_codes, padded, string_parts

__all__ = [
    "QcCounts",
    "QcParams",
    "detect_adapter",
    "filter_batch",
    "is_two_color",
    "match_known_adapter",
    "read_adapter_fasta",
    "resolved_for",
]

TWO_COLOR_PREFIXES: tuple[str, ...] = ("NS", "NB", "A0")
"""Read-name prefixes by which fastp 0.23.2 recognises NextSeq 500/550 and NovaSeq runs
(`Evaluator::isTwoColorSystem`, tested on the first read of the file)."""

# fastp's filter result codes; a pair is reported under the larger of its mates' codes.
PASS, FAIL_N_BASE, FAIL_LENGTH, FAIL_TOO_LONG, FAIL_QUALITY, FAIL_COMPLEXITY = (
    0, 16, 20, 21, 24, 28,
)
_REASONS = {
    FAIL_N_BASE: "too_many_n",
    FAIL_LENGTH: "too_short",
    FAIL_TOO_LONG: "too_long",
    FAIL_QUALITY: "low_quality",
    FAIL_COMPLEXITY: "low_complexity",
}
_CHUNK = 8192  # fragments per internal chunk: cache-sized arrays (fastest of 4k..32k measured)
_PHRED = 33
_COMPARE_HEAD = 50  # fastp's overlap analysis only rejects on mismatches in the first 50 bases
_SHIFT_BLOCK = 16  # overlap shifts screened together as one (shifts x pairs) matrix


@dataclass(frozen=True)
class QcParams:
    """Trimming and filtering settings; the defaults are fastp 0.23.2's defaults.

    Attributes:
        trim_adapters: any adapter trimming at all (False is fastp's `-A`).
        adapter_r1: mate-1 (or single-end) 3' adapter. None: detected from the reads as
            fastp does (`detect_adapter`) for single-end reads; pairs rely on overlap
            analysis only unless detect_adapter_for_pe.
        adapter_r2: mate-2 3' adapter. None: detected from the mate-2 reads with
            detect_adapter_for_pe, else adapter_r1 (fastp `--adapter_sequence_r2`).
        adapter_fasta: a FASTA of extra adapters, all searched in every read after the
            overlap/single-adapter step (fastp `--adapter_fasta`); read once per process.
        detect_adapter_for_pe: detect each mate's adapter from its reads and search it in
            the pairs the overlap analysis did not trim (fastp `--detect_adapter_for_pe`).
        detected_adapter_r1, detected_adapter_r2: what detection found in the sample's
            first reads ("" = nothing), filled in once per sample by `with_detected` so
            every shard trims the same adapter. None = not detected yet: filter_batch then
            detects from the batch's own reads (fastp on a file holding only the batch).
        detect_pe_overlap: trim read-through in pairs by overlap analysis (fastp does this
            whenever adapter trimming is on; False is like `-A` for pairs).
        overlap_min: minimum overlap to trust (fastp `--overlap_len_require`).
        overlap_diff_limit: mismatches allowed in an overlap (`--overlap_diff_limit`).
        overlap_diff_percent_limit: ...and at most this percent of its length.
        trim_poly_g: polyG tail trimming; None = fastp's auto rule: on when the first read
            name looks like NextSeq/NovaSeq (TWO_COLOR_PREFIXES). filter_batch applies the
            rule to the batch's first read; resolve it once per file with
            `params.resolved(first_read_id)` to decide per file as fastp does.
        poly_g_min_len: shortest polyG tail trimmed (`--poly_g_min_len`).
        trim_poly_x: polyX (any single base) tail trimming, after adapters.
        poly_x_min_len: shortest polyX tail trimmed.
        trim_front1, trim_tail1, trim_front2, trim_tail2: bases cut unconditionally from
            the 5'/3' end of mate 1 (or single-end) and mate 2 (`-f -t -F -T`).
        cut_front: sliding-window cut from the 5' end until a window's mean quality
            reaches cut_mean_quality (`--cut_front`).
        cut_tail: the same from the 3' end (`--cut_tail`).
        cut_window_size: window length for both cuts.
        cut_mean_quality: mean Phred a window must reach.
        qualified_quality_phred: a base is qualified at this Phred or above (`-q`).
        unqualified_percent_limit: drop reads with more than this percent of
            unqualified bases (`-u`).
        average_qual: drop reads whose mean Phred is below this; 0 = off (`-e`).
        n_base_limit: drop reads with more N bases than this (`-n`).
        length_required: drop reads shorter than this after trimming (`-l`).
        length_limit: drop reads longer than this; 0 = no limit (`--length_limit`).
        low_complexity_filter: drop reads whose share of bases differing from the next
            base is below complexity_threshold percent (`-y`, `-Y`).
        complexity_threshold: see low_complexity_filter.
        keep_orphans: return the passing mate of a failed pair as an orphan
            (fastp `--unpaired1/--unpaired2`).
    """

    trim_adapters: bool = True
    adapter_r1: str | None = None
    adapter_r2: str | None = None
    adapter_fasta: str | None = None
    detect_adapter_for_pe: bool = False
    detected_adapter_r1: str | None = None
    detected_adapter_r2: str | None = None
    detect_pe_overlap: bool = True
    overlap_min: int = 30
    overlap_diff_limit: int = 5
    overlap_diff_percent_limit: int = 20
    trim_poly_g: bool | None = None
    poly_g_min_len: int = 10
    trim_poly_x: bool = False
    poly_x_min_len: int = 10
    trim_front1: int = 0
    trim_tail1: int = 0
    trim_front2: int = 0
    trim_tail2: int = 0
    cut_front: bool = False
    cut_tail: bool = False
    cut_window_size: int = 4
    cut_mean_quality: int = 20
    qualified_quality_phred: int = 15
    unqualified_percent_limit: int = 40
    average_qual: int = 0
    n_base_limit: int = 5
    length_required: int = 15
    length_limit: int = 0
    low_complexity_filter: bool = False
    complexity_threshold: int = 30
    keep_orphans: bool = False

    def __post_init__(self) -> None:
        for name in ("adapter_r1", "adapter_r2"):
            value = getattr(self, name)
            if value is not None and (not value or set(value.upper()) - set("ACGTN")):
                raise ValueError(f"{name} must be a non-empty ACGTN sequence, got {value!r}")
        for name in ("detected_adapter_r1", "detected_adapter_r2"):
            value = getattr(self, name)
            if value is not None and set(value) - set("ACGTN"):
                raise ValueError(f"{name} must be an ACGTN sequence or '', got {value!r}")
        checks = {
            "overlap_min": (1, 1000), "overlap_diff_limit": (0, 1000),
            "overlap_diff_percent_limit": (0, 100), "poly_g_min_len": (1, 1000),
            "poly_x_min_len": (1, 1000), "cut_window_size": (1, 1000),
            "cut_mean_quality": (1, 93), "qualified_quality_phred": (0, 93),
            "unqualified_percent_limit": (0, 100), "average_qual": (0, 93),
            "n_base_limit": (0, 1_000_000), "length_required": (0, 1_000_000),
            "length_limit": (0, 1_000_000), "complexity_threshold": (0, 100),
            "trim_front1": (0, 1_000_000), "trim_tail1": (0, 1_000_000),
            "trim_front2": (0, 1_000_000), "trim_tail2": (0, 1_000_000),
        }
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")

    def resolved(self, first_read_id: str) -> QcParams:
        """These settings with trim_poly_g decided by fastp's rule for a file whose first
        read is `first_read_id` (no change when trim_poly_g is already set)."""
        if self.trim_poly_g is not None:
            return self
        return dataclasses.replace(self, trim_poly_g=is_two_color(first_read_id))


    def detects(self, mate: int, paired: bool) -> bool:
        """Whether fastp would detect this mate's adapter (`Options::shallDetectAdapter`;
        mate 0 or 1 = single-end or mate 1)."""
        if not self.trim_adapters:
            return False
        if mate == 2:
            return paired and self.detect_adapter_for_pe and self.adapter_r2 is None
        return self.adapter_r1 is None and (not paired or self.detect_adapter_for_pe)

    def with_detected(self, read1: pa.Array | None, read2: pa.Array | None = None) -> QcParams:
        """These settings with the adapters fastp detects in a sample's first reads filled
        in (`read1`/`read2`: mate-1 or single-end and mate-2 sequences in file order; a
        mate not to be detected, or already detected, is left alone)."""
        paired = read2 is not None
        found: dict[str, str] = {}
        for mate, reads, name in ((1, read1, "detected_adapter_r1"),
                                  (2, read2, "detected_adapter_r2")):
            if reads is not None and self.detects(mate, paired) and getattr(self, name) is None:
                found[name] = detect_adapter(reads, self.trim_tail1)
        return dataclasses.replace(self, **found) if found else self

    def adapter(self, mate: int, paired: bool) -> str | None:
        """The single 3' adapter searched in this mate (mate 0 = single-end), if any."""
        if not self.trim_adapters:
            return None
        if self.detects(mate, paired):
            found = self.detected_adapter_r2 if mate == 2 else self.detected_adapter_r1
            return found.upper() if found else None
        given = (self.adapter_r2 or self.adapter_r1) if mate == 2 else self.adapter_r1
        return given.upper() if given else None

    def adapter_report(self, paired: bool) -> dict[str, str]:
        """The adapters searched, as fastp's JSON names them (`adapter_cutting.
        read1_adapter_sequence`, `read2_...`); "none" where no sequence is searched."""
        mates = (1, 2) if paired else (0,)
        return {f"read{max(m, 1)}_adapter_sequence": self.adapter(m, paired) or "none"
                for m in mates}


def is_two_color(read_id: str) -> bool:
    """True for NextSeq/NovaSeq read names, where fastp 0.23.2 turns polyG trimming on.

    Args:
        read_id: the first read's name, with or without the leading "@".

    Returns:
        Whether the name starts with one of TWO_COLOR_PREFIXES.
    """
    return read_id.lstrip("@").startswith(TWO_COLOR_PREFIXES)


@functools.lru_cache(maxsize=16)
def read_adapter_fasta(path: str) -> tuple[str, ...]:
    """Adapter sequences of a FASTA file, upper-cased, in file order (cached per path).

    Args:
        path: a local FASTA file of adapter sequences.

    Returns:
        The sequences, one per record.

    Raises:
        ValueError: the file holds no sequence or a non-ACGTN character.
    """
    seqs: list[str] = []
    current: list[str] = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line.startswith(">"):
            if current:
                seqs.append("".join(current))
            current = []
        elif line:
            current.append(line.upper())
    if current:
        seqs.append("".join(current))
    bad = [s for s in seqs if set(s) - set("ACGTN")]
    if not seqs or bad:
        got = bad[:1] or "none"
        raise ValueError(f"{path}: expected FASTA of ACGTN adapter sequences, got {got}")
    return tuple(seqs)


@dataclass
class QcCounts:
    """Reads and bases in, out, trimmed per step and removed per reason.

    Trimmed counts cover every read the step shortened, including reads filtered later
    (as fastp counts adapter-trimmed reads). Removed counts are fastp's
    `filtering_result`: a failed pair counts both reads under the worse mate's reason,
    with the bases left after trimming. So reads_in = reads_out + all *_reads removed, and
    bases_in = bases_out + all trimmed bases + all removed bases. `orphaned_*` are the
    passing mates of failed pairs (already counted under the pair's reason); they are
    returned as orphans when keep_orphans is set.
    """

    reads_in: int = 0
    bases_in: int = 0
    reads_out: int = 0
    bases_out: int = 0
    front_tail_trimmed_reads: int = 0
    front_tail_trimmed_bases: int = 0
    quality_cut_reads: int = 0
    quality_cut_bases: int = 0
    polyg_trimmed_reads: int = 0
    polyg_trimmed_bases: int = 0
    adapter_trimmed_reads: int = 0
    adapter_trimmed_bases: int = 0
    overlap_trimmed_pairs: int = 0
    polyx_trimmed_reads: int = 0
    polyx_trimmed_bases: int = 0
    too_short_reads: int = 0
    too_short_bases: int = 0
    too_long_reads: int = 0
    too_long_bases: int = 0
    too_many_n_reads: int = 0
    too_many_n_bases: int = 0
    low_quality_reads: int = 0
    low_quality_bases: int = 0
    low_complexity_reads: int = 0
    low_complexity_bases: int = 0
    orphaned_reads: int = 0
    orphaned_bases: int = 0

    def merge(self, other: QcCounts) -> QcCounts:
        """Counts of both inputs added field by field."""
        names = [f.name for f in dataclasses.fields(self)]
        return QcCounts(**{n: getattr(self, n) + getattr(other, n) for n in names})

    def to_dict(self) -> dict[str, int]:
        """JSON-ready {field: count}."""
        return {f.name: int(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def _add(self, name: str, mask: np.ndarray, bases: np.ndarray) -> None:
        setattr(self, f"{name}_reads", getattr(self, f"{name}_reads") + int(np.count_nonzero(mask)))
        setattr(self, f"{name}_bases", getattr(self, f"{name}_bases") + int(bases[mask].sum()))


# --------------------------------------------------------------------------------------
# Byte tables and packing

_COMPLEMENT = np.full(256, ord("N"), np.uint8)  # fastp: anything but ACGT complements to N
_COMPLEMENT[np.frombuffer(b"ACGT", np.uint8)] = np.frombuffer(b"TGCA", np.uint8)
_COMPLEMENT[0] = 0  # padding stays padding
_EVEN_BITS = np.uint32(0x55555555)
_MASKS = np.array([(1 << (2 * c)) - 1 for c in range(17)], np.uint32)
_G, _N = ord("G"), ord("N")


class _Windows:
    """For every position p of every read, bases p..p+15 packed 2 bits each into a uint32,
    stored (positions, reads) so one position across all reads is contiguous.

    Used to screen candidate shifts. A base's code is bits 1-2 of its byte (A 0, C 1, T 2,
    G 3; N packs like G, padding like A): two whole-matrix operations instead of a table
    lookup. Equal bytes always get equal codes, so a packed comparison never counts more
    mismatches than the exact one and screening cannot lose a true match; candidates are
    then verified base by base (`_diff`). Positions past the matrix read as zeros.
    """

    def __init__(self, matrix: np.ndarray) -> None:
        n, width = matrix.shape
        words = np.ascontiguousarray(matrix.T) >> np.uint8(1)
        words &= np.uint8(3)
        # Doubling: after the pass for `shift`, each word holds 2 * shift bases.
        for shift, dtype in ((1, np.uint8), (2, np.uint8), (4, np.uint16), (8, np.uint32)):
            words = words.astype(dtype, copy=False)
            if shift < width:
                words[:-shift] |= words[shift:] << dtype(2 * shift)
        self.words = words
        self._zeros = np.zeros(n, np.uint32)

    def at(self, p: int) -> np.ndarray:
        """Packed windows starting at position p, one per read."""
        return self.words[p] if 0 <= p < len(self.words) else self._zeros


def _pack16(matrix: np.ndarray) -> np.ndarray:
    """The packed window at position 0 of every row (as `_Windows(matrix).at(0)`), without
    packing the other positions."""
    head = matrix[:, :16]
    codes = ((head >> np.uint8(1)) & np.uint8(3)).astype(np.uint32)
    shifts = np.arange(0, 2 * head.shape[1], 2, dtype=np.uint32)
    return np.bitwise_or.reduce(codes << shifts, axis=1).astype(np.uint32, copy=False)


def _screen(a: np.ndarray, b: np.ndarray | np.uint32, count: np.ndarray | int) -> np.ndarray:
    """Lower bound of the mismatches among the first `count` (0..16) bases of two windows."""
    x = a ^ b
    x |= x >> np.uint32(1)
    x &= _EVEN_BITS if isinstance(count, int) and count == 16 else _EVEN_BITS & _MASKS[count]
    return np.bitwise_count(x)


def _diff(x: np.ndarray, y: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Exact mismatches among the first `count` columns of two equally shaped byte matrices."""
    return np.count_nonzero((x != y) & (np.arange(x.shape[1]) < count[:, None]), axis=1)


def _padded_right(matrix: np.ndarray, extra: int) -> np.ndarray:
    """The matrix with `extra` zero columns appended, so slices past a read's end are safe."""
    out = np.zeros((matrix.shape[0], matrix.shape[1] + extra), np.uint8)
    out[:, : matrix.shape[1]] = matrix
    return out


# --------------------------------------------------------------------------------------
# Trimming steps (each works on one mate's reads of a chunk)


@dataclass
class _Mate:
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


def _trim_and_cut(
    mate: _Mate, front_fixed: int, tail_fixed: int, p: QcParams, counts: QcCounts
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
        good = windows >= w * (_PHRED + p.cut_mean_quality)
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
    counts._add("front_tail_trimmed", fixed > 0, fixed)
    cut = length - fixed - rlen
    counts._add("quality_cut", cut > 0, cut)
    mate.alive &= alive
    mate.front = front
    mate.length = rlen
    if front.any():  # rebase: shift rows so every read starts at column 0
        width = mate.seq.shape[1]
        idx = np.minimum(front[:, None] + np.arange(width), width - 1)
        keep = np.arange(width) < rlen[:, None]
        mate.seq = np.where(keep, np.take_along_axis(mate.seq, idx, axis=1), 0).astype(np.uint8)
        mate.qual = np.where(keep, np.take_along_axis(mate.qual, idx, axis=1), 0).astype(np.uint8)


def _from_end(matrix: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bases read from the 3' end ((n, width); column k = k-th base from the end) and a
    mask of the columns inside each read (past a read's start: undefined bytes)."""
    width = matrix.shape[1]
    if len(length) and length.min() == width:  # all full length: a plain reversal
        return matrix[:, ::-1].copy(), np.ones(matrix.shape, bool)
    idx = length[:, None] - 1 - np.arange(width)
    valid = idx >= 0
    return np.take_along_axis(matrix, np.maximum(idx, 0), axis=1), valid


def _poly_g(mate: _Mate, min_len: int, active: np.ndarray, counts: QcCounts) -> None:
    """Trim a 3' polyG run (fastp PolyX::trimPolyG): walk from the end, one mismatch allowed
    per 8 bases and 5 in all, at least min_len bases; cut at the last G of the run."""
    if not mate.seq.shape[1]:
        return
    rows = np.flatnonzero(active & (mate.length >= min_len))
    if not len(rows):
        return
    length = mate.length[rows]
    bases, valid = _from_end(mate.seq[rows], length)
    k = np.arange(bases.shape[1])
    is_g = (bases == _G) & valid
    mism = np.cumsum(valid & ~is_g, axis=1, dtype=np.int16)
    stop = ((mism > 5) | ((mism > (k + 1) // 8) & (k >= min_len - 1))) & valid
    brk = np.where(stop.any(axis=1), stop.argmax(axis=1), length)
    trim = brk >= min_len
    last_g = np.where(is_g & (k <= brk[:, None]), k, -1).max(axis=1)
    new = np.where(trim & (last_g >= 0), length - 1 - last_g, length)
    cut = length - new
    counts._add("polyg_trimmed", cut > 0, cut)
    mate.length[rows] = new


def _poly_x(mate: _Mate, min_len: int, active: np.ndarray, counts: QcCounts) -> None:
    """Trim a 3' run of any one base (fastp PolyX::trimPolyX; N counts as every base)."""
    if not mate.seq.shape[1]:
        return
    rows = np.flatnonzero(active & (mate.length > 0))
    if not len(rows):
        return
    length = mate.length[rows]
    bases, valid = _from_end(mate.seq[rows], length)
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
    counts._add("polyx_trimmed", cut > 0, cut)
    mate.length[rows] = new


def _overlap(
    m1: _Mate, m2: _Mate, active: np.ndarray, p: QcParams, w1: _Windows
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fastp OverlapAnalysis::analyze for all pairs: the first accepted shift of R2's
    reverse complement against R1, forward shifts (R2 starting inside R1) first, then
    backward ones (read-through). Returns (found, offset, overlap_len); a negative offset
    means the insert is shorter than the reads.

    Shifts are screened _SHIFT_BLOCK at a time as (shifts x pairs) matrices, on the pairs
    still searching only (found pairs leave the working set), so the Python loop runs a
    few times per chunk rather than once per shift."""
    n = len(active)
    len1, len2 = m1.length, m2.length
    cols = np.arange(_COMPARE_HEAD)

    def rc_of(rows: np.ndarray, head: int | None = None) -> np.ndarray:
        """R2's reverse complement for some pairs (bytes past a read are undefined): its
        first `head` bases if given, else `width`; built where needed, not per chunk."""
        seq, length = m2.seq[rows], len2[rows]
        if head is None:
            return _COMPLEMENT[_from_end(seq, length)[0]]
        idx = np.maximum(length[:, None] - 1 - np.arange(head), 0)
        return _COMPLEMENT[np.take_along_axis(seq, idx, axis=1)]

    def gather(matrix: np.ndarray, rows: np.ndarray, start: np.ndarray) -> np.ndarray:
        """matrix[rows[i], start[i] : start[i] + _COMPARE_HEAD], indices past the end
        clamped: those columns lie beyond the overlap and are never counted."""
        at = np.minimum(np.add.outer(start, cols), matrix.shape[1] - 1)
        return matrix[rows[:, None], at]

    found = np.zeros(n, bool)
    offset = np.zeros(n, np.int64)
    olap = np.zeros(n, np.int64)
    fraction = p.overlap_diff_percent_limit / 100.0

    def scan(forward: bool) -> None:
        # Shift s is tried on pairs with s < reach (len1 - overlap_min forward,
        # len2 - overlap_min backward); a pair takes its first accepted shift. One read's
        # window moves (R1 forward, R2's reverse complement backward), the other's stays at
        # position 0. The moving windows of R2 are packed only for the pairs still
        # searching when the backward scan starts (usually a minority).
        reach_all = (len1 if forward else len2) - p.overlap_min
        idx = np.flatnonzero(active & ~found & (reach_all > 0))
        if not len(idx):
            return
        # rc: R2's reverse complement for these pairs (its first 50 bases forward, where
        # it stays at position 0), row rloc[i] for pair idx[i]; loc: column of the moving
        # windows (R1's, all pairs, forward; rc's backward).
        rloc = np.arange(len(idx))
        if forward:
            rc = rc_of(idx, _COMPARE_HEAD)
            moving, fixed, loc = w1, _pack16(rc), idx
        else:
            rc = rc_of(idx)
            moving, fixed, loc = _Windows(rc), w1.at(0)[idx], rloc
        reach = reach_all[idx]
        l1, l2 = len1[idx], len2[idx]
        uniform = l1.min() == l1.max() and l2.min() == l2.max()  # so is every subset
        stop = int(reach.max())
        for s0 in range(0, stop, _SHIFT_BLOCK):
            block = np.arange(s0, min(s0 + _SHIFT_BLOCK, stop))[:, None]  # (shifts, 1)
            a1, a2 = (int(l1[0]), int(l2[0])) if uniform else (l1, l2)
            ol = np.minimum(a1 - block, a2) if forward else np.minimum(a1, a2 - block)
            limit = np.minimum(p.overlap_diff_limit, np.floor(ol * fraction).astype(np.int64))
            cmp = np.minimum(ol, _COMPARE_HEAD)
            # Screen on the first 16 bases, then count exactly over the first 50.
            x = moving.words[s0 : s0 + len(block)]
            if x.shape[1] != len(loc):
                x = x[:, loc]
            lower = _screen(x, fixed, 16 if cmp.min() >= 16 else np.clip(cmp, 0, 16))
            passed = lower <= np.clip(limit, 0, 16).astype(np.uint8)  # bytes with bytes
            if not uniform:  # else every pair reaches the last shift
                passed &= block < reach
            bi, ki = np.nonzero(passed)  # shift-major order
            if not len(bi):
                continue
            shift, rows = s0 + bi, idx[ki]
            if forward:
                xs, ys = gather(m1.seq, rows, shift), rc[rloc[ki]]
            else:
                xs, ys = gather(m1.seq, rows, 0 * shift), gather(rc, rloc[ki], shift)
            pick = (bi, 0) if uniform else (bi, ki)
            ok = _diff(xs, ys, cmp[pick]) <= limit[pick]
            if not ok.any():
                continue
            # The first accepted shift of each pair (candidates are in shift order).
            first_k, first = np.unique(ki[ok], return_index=True)
            accepted = rows[ok][first]
            found[accepted] = True
            offset[accepted] = shift[ok][first] * (1 if forward else -1)
            olap[accepted] = (ol[(bi, 0) if uniform else (bi, ki)])[ok][first]
            keep = np.ones(len(idx), bool)
            keep[first_k] = False
            idx, loc, rloc, reach, fixed, l1, l2 = (
                a[keep] for a in (idx, loc, rloc, reach, fixed, l1, l2)
            )
            if not len(idx):
                return

    scan(True)
    scan(False)
    return found, offset, olap


def _trim_by_sequence(
    mate: _Mate, windows: _Windows, adapter: str, active: np.ndarray, match_req: int = 4
) -> np.ndarray:
    """fastp AdapterTrimmer::trimBySequence (Hamming stage): the first position where the
    adapter matches the read with at most one mismatch per 8 compared bases; positions
    down to -4 let an adapter dimer that lost its first bases empty the read. Returns
    the mask of reads trimmed (their lengths are updated)."""
    alen = len(adapter)
    trimmed = np.zeros(len(active), bool)
    if alen < match_req or not active.any():
        return trimmed
    key = np.frombuffer(adapter.encode(), np.uint8)
    packed = _Windows(key.reshape(1, -1))
    seq = _padded_right(mate.seq, alen + 8)
    start = -4 if alen >= 16 else -3 if alen >= 12 else -2 if alen >= 8 else 0
    length = mate.length
    found = ~active
    new = length.copy()
    for pos in range(start, int(length.max(initial=0)) - match_req):
        cand = ~found & (pos < length - match_req)
        if not cand.any():
            continue
        cmplen = np.minimum(length - pos, alen)
        allowed = cmplen // 8
        if pos >= 0:  # read[pos : pos + cmplen] against adapter[: cmplen]
            compared, r0, k0 = cmplen, pos, 0
        else:  # read[: cmplen + pos] against adapter[-pos : cmplen]
            compared, r0, k0 = cmplen + pos, 0, -pos
        lower = _screen(windows.at(r0), packed.at(k0)[0], np.clip(compared, 0, 16))
        rows = np.flatnonzero(cand & (lower <= allowed))
        if not len(rows):
            continue
        width = alen - k0
        x = seq[rows, r0 : r0 + width]
        y = np.broadcast_to(key[k0:], x.shape)
        rows = rows[_diff(x, y, compared[rows]) <= allowed[rows]]
        found[rows] = True
        new[rows] = max(pos, 0)
    trimmed = new < length
    mate.length = new
    return trimmed


# --------------------------------------------------------------------------------------
# Adapter detection (fastp 0.23.2 `Evaluator::evalAdapterAndReadNum` and `getAdapterWithSeed`)
#
# fastp loads the first reads of the file (up to 256Ki reads or until 151 x 256Ki bases are
# read), needs at least 10,000 of them, and counts every 10-mer of ACGT starting at
# position 20 or later and ending at least one base (max(1, trim_tail1)) before the 3' end.
# Ten seeds are the most frequent 10-mers that are not low-complexity (no base 6 times or
# more, fewer than 8 C/G, not starting GGGG); a seed must occur at least 10 times and 20x
# more often than the mean 10-mer. The first seed with 3+ base changes is extended both
# ways along the dominant path of a tree of the sequences that follow (and, reversed,
# precede) its occurrences: a step needs 50 sequences and one base in >= 95 % of them. The
# known-adapter table replaces the result when one of its entries is a prefix of it;
# otherwise the result is kept only if both walks ended for lack of sequences.

_DETECT_READS = 256 * 1024
_DETECT_BASES = 151 * _DETECT_READS
_DETECT_MIN_READS = 10_000
_KEY_LEN = 10
_KEY_SPACE = 1 << (2 * _KEY_LEN)
_SEED_START = 20
_SEEDS = 10
_SEED_MIN = 10
_SEED_FOLD = 20
_TREE_MIN = 50
_TREE_RATIO = 0.95
_ADAPTER_MAX = 60
_DETECT_CHUNK = 16384
_FASTP_BASES = np.frombuffer(b"ATCG", np.uint8)  # fastp's 2-bit order for k-mer keys
_KEY_CODE = base_codes(b"ATCG", lower_case=False)  # 4: any other byte, lower case too


def detection_reads(lengths: np.ndarray) -> int:
    """How many of the first reads (of these lengths) fastp's evaluator loads.

    Args:
        lengths: read lengths in file order.

    Returns:
        The number of leading reads: at most 256Ki, stopping at the read that brings the
        bases to 151 x 256Ki.
    """
    n = min(len(lengths), _DETECT_READS)
    over = np.flatnonzero(np.cumsum(lengths[:n], dtype=np.int64) >= _DETECT_BASES)
    return int(over[0]) + 1 if len(over) else n


@functools.lru_cache(maxsize=1)
def _seed_candidates() -> np.ndarray:
    """Mask over all 10-mer keys: the ones fastp may take as seeds (not low-complexity)."""
    keys = np.arange(_KEY_SPACE, dtype=np.int32)
    per_base = np.zeros((4, _KEY_SPACE), np.int8)  # A, T, C, G
    for i in range(_KEY_LEN):
        digit = (keys >> (2 * i)) & 3
        for b in range(4):
            per_base[b] += digit == b
    ok = (per_base < _KEY_LEN - 4).all(axis=0)
    ok &= per_base[2] + per_base[3] < _KEY_LEN - 2
    ok &= (keys >> 12) != 0xFF  # GGGG...
    return ok


def _key_string(key: int) -> str:
    """The 10-mer of a key (first base in the highest bits)."""
    shifts = range(2 * (_KEY_LEN - 1), -1, -2)
    return bytes(_FASTP_BASES[(key >> s) & 3] for s in shifts).decode()


def _chunk_keys(offsets: np.ndarray, data: np.ndarray, shift: int) -> np.ndarray:
    """10-mer keys of one chunk of reads: keys[i, j] is the key of read i at position
    _SEED_START + j, or -1 outside the counted range or where the 10-mer holds a base other
    than ACGT. Built by doubling (1, 2, 4, 8 then 10 bases per word): four passes, not ten."""
    width = max(int(np.diff(offsets).max(initial=0)), _SEED_START + _KEY_LEN)
    seq, length = padded(offsets, data, width), np.diff(offsets).astype(np.int64)
    codes = _KEY_CODE[seq[:, _SEED_START:]]
    k1 = (codes & 3).astype(np.uint32)
    k2 = k1[:, :-1] << 2 | k1[:, 1:]
    k4 = k2[:, :-2] << 4 | k2[:, 2:]
    k8 = k4[:, :-4] << 8 | k4[:, 4:]
    span = codes.shape[1] - _KEY_LEN + 1
    keys = (k8[:, :span] << 4 | k2[:, 8:]).astype(np.int32)
    others = np.zeros((len(length), codes.shape[1] + 1), np.int16)
    np.cumsum(codes > 3, axis=1, dtype=np.int16, out=others[:, 1:])
    bad = others[:, _KEY_LEN:] > others[:, :span]
    bad |= np.arange(span) > (length - _SEED_START - _KEY_LEN - shift)[:, None]
    keys[bad] = -1
    return keys


def _chunks(
    sequences: pa.Array, n: int
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """(first read, string parts) of the first n reads, a chunk at a time."""
    for lo in range(0, n, _DETECT_CHUNK):
        yield lo, string_parts(sequences.slice(lo, min(_DETECT_CHUNK, n - lo)))


def _dominant_path(seqs: np.ndarray) -> tuple[bytes, bool]:
    """fastp NucleotideTree::getDominantPath over byte rows (0 = end; a row stops at N):
    (the path, whether it ended for lack of sequences rather than of a dominant base)."""
    path = bytearray()
    rows = np.arange(len(seqs))
    for depth in range(seqs.shape[1]):
        col = seqs[rows, depth]
        live = (col != 0) & (col != _N)
        total = int(np.count_nonzero(live))
        if total < _TREE_MIN:
            return bytes(path), True
        values, counts = np.unique(col[live], return_counts=True)
        best = int(counts.argmax())
        if counts[best] / total < _TREE_RATIO:
            return bytes(path), False
        path.append(int(values[best]))
        rows = rows[col == values[best]]
    return bytes(path), True


def _seed_occurrences(
    sequences: pa.Array, n: int, seeds: np.ndarray, shift: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key, read, position) of every counted occurrence of the seeds in the first n reads."""
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for lo, (offsets, data) in _chunks(sequences, n):
        keys = _chunk_keys(offsets, data, shift)
        rows, cols = np.nonzero(np.isin(keys, seeds))
        found.append((keys[rows, cols], rows + lo, cols + _SEED_START))
    key, read, pos = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return key, read, pos


def _extend_seed(
    sequences: pa.Array, read: np.ndarray, pos: np.ndarray, seed: int, shift: int
) -> str:
    """fastp getAdapterWithSeed, given the seed's occurrences (read, position): the seed
    extended both ways, or "" when rejected."""
    offsets, data = string_parts(sequences)
    start, length = offsets[read].astype(np.int64), np.diff(offsets)[read].astype(np.int64)
    steps = np.arange(int(length.max(initial=0)))
    ahead = pos[:, None] + _KEY_LEN + steps  # what follows, up to length - shift
    behind = pos[:, None] - 1 - steps  # what precedes, reversed
    last = len(data) - 1
    after = np.where(ahead < (length - shift)[:, None],
                     data[np.minimum(start[:, None] + ahead, last)], 0).astype(np.uint8)
    before = np.where(behind >= 0, data[np.clip(start[:, None] + behind, 0, last)], 0)
    forward, leaf_f = _dominant_path(after)
    backward, leaf_b = _dominant_path(before.astype(np.uint8))
    adapter = (backward[::-1].decode() + _key_string(seed) + forward.decode())[:_ADAPTER_MAX]
    known = match_known_adapter(adapter)
    if known:
        return known
    return adapter if leaf_f and leaf_b else ""


def match_known_adapter(seq: str) -> str:
    """The first entry of fastp's known-adapter table (in byte order) that is a prefix of
    `seq`, or "".

    Args:
        seq: a detected adapter sequence.

    Returns:
        The matching KNOWN_ADAPTERS entry, or "".
    """
    for adapter in KNOWN_ADAPTERS:
        if len(adapter) <= len(seq) and seq.startswith(adapter):
            return adapter
    return ""


def detect_adapter(sequences: pa.Array | pa.ChunkedArray, trim_tail1: int = 0) -> str:
    """The 3' adapter fastp 0.23.2 detects from the first reads of a file, or "" for none.

    Args:
        sequences: the file's reads in order (at least its first 256Ki reads, or all of them;
            later ones are ignored as fastp ignores them).
        trim_tail1: fastp's `--trim_tail1`; the last max(1, trim_tail1) bases of each read
            are left out of the counts (for read 2 too, as fastp does).

    Returns:
        The adapter sequence, or "" when none is found or there are fewer than 10,000 reads
        to look at.

    Example:
        >>> detect_adapter(pa.array(reads))  # doctest: +SKIP
        'AGATCGGAAGAGCACACGTCTGAACTCCAGTCA'
    """
    if isinstance(sequences, pa.ChunkedArray):
        sequences = sequences.combine_chunks()
    offsets, _ = string_parts(sequences)
    n = detection_reads(np.diff(offsets).astype(np.int64))
    if n < _DETECT_MIN_READS:
        return ""
    shift = max(1, trim_tail1)
    counts = np.zeros(_KEY_SPACE, np.int64)
    for _, (chunk_offsets, data) in _chunks(sequences, n):
        keys = _chunk_keys(chunk_offsets, data, shift)
        counts += np.bincount(keys[keys >= 0], minlength=_KEY_SPACE)
    counts[0] = 0
    candidates = np.flatnonzero(_seed_candidates())
    total = int(counts[candidates].sum())
    # fastp keeps a top-10 by insertion: higher counts first, a later key before an equal one
    top = candidates[np.lexsort((-candidates, -counts[candidates]))[:_SEEDS]]
    occurrences: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for key in top.tolist():
        count = int(counts[key])
        if count < _SEED_MIN or count * _KEY_SPACE < total * _SEED_FOLD:
            break
        seed = _key_string(key)
        if sum(a != b for a, b in itertools.pairwise(seed)) < 3:
            continue
        if occurrences is None:  # one more pass over the reads, for all seeds at once
            occurrences = _seed_occurrences(sequences, n, top, shift)
        keys, read, pos = occurrences
        mine = keys == key
        adapter = _extend_seed(sequences, read[mine], pos[mine], key, shift)
        if adapter:
            return adapter
    return ""


# --------------------------------------------------------------------------------------
# Filters


def _row_counts(mask: np.ndarray) -> np.ndarray:
    """True cells per row of a 2-D boolean matrix (as bytes summed into uint16: twice as
    fast as count_nonzero along an axis)."""
    acc = np.uint16 if mask.shape[1] < 2**16 else np.int64
    return mask.view(np.uint8).sum(axis=1, dtype=acc).astype(np.int64)


def _filter_codes(mate: _Mate, p: QcParams) -> np.ndarray:
    """fastp Filter::passFilter result code of every read (PASS = 0)."""
    length = mate.length
    width = mate.seq.shape[1]
    inside = np.arange(width) < length[:, None]
    low_q = mate.qual < _PHRED + p.qualified_quality_phred
    is_n = mate.seq == _N
    if len(length) and length.min() < width:  # else every column is inside every read
        low_q &= inside
        is_n &= inside
    low = _row_counts(low_q)
    n_bases = _row_counts(is_n)
    code = np.zeros(len(length), np.int64)
    safe = np.maximum(length, 1)
    if p.average_qual:
        total = np.where(inside, mate.qual.astype(np.int64) - _PHRED, 0).sum(axis=1)
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


# --------------------------------------------------------------------------------------
# The kernel


@dataclass
class _Out:
    """Surviving reads of one mate over all chunks: source rows and trimmed bytes."""

    rows: list[np.ndarray] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    seq: list[np.ndarray] = field(default_factory=list)
    qual: list[np.ndarray] = field(default_factory=list)

    def add(self, mate: _Mate, keep: np.ndarray, rows: np.ndarray) -> None:
        """Add the reads where `keep`, cut to their lengths (`rows`: their source rows)."""
        width = mate.seq.shape[1]
        if keep.all():  # no copies of the matrices for the common case
            length, seq, qual = mate.length, mate.seq, mate.qual
            self.rows.append(rows)
        else:
            length, seq, qual = mate.length[keep], mate.seq[keep], mate.qual[keep]
            self.rows.append(rows[keep])
        self.lengths.append(length)
        if len(length) and length.min() == width:  # untrimmed: the matrix is the data
            self.seq.append(seq.reshape(-1))
            self.qual.append(qual.reshape(-1))
        else:
            inside = np.arange(width) < length[:, None]
            self.seq.append(seq[inside])
            self.qual.append(qual[inside])


def _adapters_for(p: QcParams, mate: int, paired: bool) -> tuple[str | None, list[str]]:
    """(the single adapter, the FASTA's adapters) searched in a mate. The single adapter,
    given or detected, is searched in pairs the overlap analysis did not trim; a user
    FASTA in all, as fastp does."""
    fasta = p.adapter_fasta if p.trim_adapters else None
    listed = list(read_adapter_fasta(fasta)) if fasta else []
    return p.adapter(mate, paired), listed


def _process_chunk(
    parts: list[tuple[np.ndarray, np.ndarray]], p: QcParams, counts: QcCounts
) -> tuple[list[_Mate], list[np.ndarray]]:
    """Trim and filter one chunk of fragments (one or two mates). Returns the mates and
    their filter codes."""
    width = max(int(np.diff(o).max(initial=0)) for o, _ in parts)
    paired = len(parts) == 4
    mates: list[_Mate] = []
    for i in range(0, len(parts), 2):
        seq, qual = padded(*parts[i], width), padded(*parts[i + 1], width)
        length = np.diff(parts[i][0]).astype(np.int64)
        n = len(length)
        alive, front = np.ones(n, bool), np.zeros(n, np.int64)
        mates.append(_Mate(seq, qual, length.copy(), alive, front, length))
    fixed = [(p.trim_front1, p.trim_tail1), (p.trim_front2, p.trim_tail2)]
    for mate, (f, t) in zip(mates, fixed, strict=False):
        _trim_and_cut(mate, f, t, p, counts)
    both = mates[0].alive & mates[1].alive if paired else mates[0].alive
    if p.trim_poly_g:
        for mate in mates:
            _poly_g(mate, p.poly_g_min_len, both, counts)
    windows: dict[int, _Windows] = {}

    def windows_of(i: int) -> _Windows:
        if i not in windows:
            windows[i] = _Windows(mates[i].seq)
        return windows[i]

    by_overlap = np.zeros(len(both), bool)
    if paired and p.detect_pe_overlap and p.trim_adapters and both.any():
        found, offset, olap = _overlap(mates[0], mates[1], both, p, windows_of(0))
        by_overlap = found & (offset < 0)
        old = [m.length.copy() for m in mates]
        mates[0].length = np.where(by_overlap, np.minimum(old[0], olap + mates[1].front), old[0])
        mates[1].length = np.where(by_overlap, np.minimum(old[1], olap + mates[0].front), old[1])
        cut = [o - m.length for o, m in zip(old, mates, strict=True)]
        counts.overlap_trimmed_pairs += int(np.count_nonzero(by_overlap))
        for c in cut:
            counts._add("adapter_trimmed", by_overlap & (c > 0), c)
    for i, mate in enumerate(mates):
        single, listed = _adapters_for(p, i + 1 if paired else 0, paired)
        if not single and not listed:
            continue
        before = mate.length.copy()
        if single:
            _trim_by_sequence(mate, windows_of(i), single, both & ~by_overlap)
        req = 4 if len(listed) <= 16 else 5 if len(listed) <= 256 else 6
        for adapter in listed:
            _trim_by_sequence(mate, windows_of(i), adapter, both, req)
        cut = before - mate.length
        counts._add("adapter_trimmed", cut > 0, cut)
    if p.trim_poly_x:
        for mate in mates:
            _poly_x(mate, p.poly_x_min_len, both, counts)
    return mates, [_filter_codes(m, p) for m in mates]


def _layout(batch: pa.RecordBatch) -> tuple[bool, int]:
    """(paired, fragments) of a READS_SCHEMA batch; checks the mate-1-then-mate-2 layout."""
    mate = batch.column("mate").to_numpy(zero_copy_only=False)
    n = len(mate)
    if not n or not mate.any():
        return False, n
    half = n // 2
    fragment = batch.column("fragment").to_numpy(zero_copy_only=False)
    if (
        n % 2
        or (mate[:half] != 1).any()
        or (mate[half:] != 2).any()
        or (fragment[:half] != fragment[half:]).any()
    ):
        raise ValueError(
            "paired batches must hold the mate-1 rows of their fragments, then the mate-2 rows "
            "in the same order (as tasks.fastq.iter_read_batches makes them)"
        )
    return True, half


def _assemble(batch: pa.RecordBatch, out: list[_Out]) -> pa.RecordBatch:
    """A READS_SCHEMA batch of the given rows with their trimmed sequences and qualities."""
    rows = np.concatenate([r for o in out for r in o.rows] or [np.zeros(0, np.int64)])
    lengths = np.concatenate([x for o in out for x in o.lengths] or [np.zeros(0, np.int64)])
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    columns: dict[str, pa.Array] = {}
    for name in ("sequence", "quality"):
        parts = [x for o in out for x in (o.seq if name == "sequence" else o.qual)]
        data = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
        columns[name] = pa.StringArray.from_buffers(
            len(lengths), pa.py_buffer(offsets), pa.py_buffer(data)
        )
    take = pa.array(rows, pa.int64())
    arrays = []
    for f in batch.schema:
        if f.name in columns:
            arrays.append(columns[f.name])
        elif f.name == "is_empty":
            arrays.append(pa.array(lengths == 0, pa.bool_()))
        else:
            arrays.append(batch.column(f.name).take(take))
    return pa.RecordBatch.from_arrays(arrays, schema=batch.schema)


def resolved_for(batch: pa.RecordBatch, params: QcParams) -> QcParams:
    """Settings with what fastp decides from the file itself (polyG from the first read
    name, adapters still to be detected) decided from this batch, as if it were the file.

    Args:
        batch: a READS_SCHEMA batch standing for the whole file.
        params: the QC settings.

    Returns:
        `params` with trim_poly_g decided from the first read's name (if it was None) and
        the adapters to detect filled in from the batch's mates.
    """
    paired, fragments = _layout(batch)
    if params.trim_poly_g is None:
        first = batch.column("read_id")[0].as_py() if batch.num_rows else ""
        params = params.resolved(first)
    seqs = batch.column("sequence")
    if paired:
        return params.with_detected(seqs.slice(0, fragments), seqs.slice(fragments))
    return params.with_detected(seqs)


def filter_batch(
    batch: pa.RecordBatch, params: QcParams = QcParams()
) -> tuple[pa.RecordBatch, pa.RecordBatch | None, QcCounts]:
    """Trim and filter a READS_SCHEMA batch as fastp 0.23.2 would, without a loop per read.

    Args:
        batch: single-end reads (mate 0) or pairs laid out as tasks.fastq.iter_read_batches
            makes them (mate-1 rows of the fragments, then their mate-2 rows).
        params: settings; trim_poly_g=None is decided from the batch's first read name
            (see QcParams.resolved to decide once per file), and adapters still to be
            detected are detected from the batch's reads (see QcParams.with_detected to
            detect once per sample).

    Returns:
        (survivors in the same schema and pair layout, orphans or None, counts). Orphans are
        the passing mates of failed pairs, only when params.keep_orphans; they keep their
        mate number, mate-1 rows first.

    Raises:
        ValueError: a paired batch not in the mate-1-then-mate-2 layout.

    Example:
        >>> kept, orphans, counts = filter_batch(batch, QcParams(cut_tail=True))  # doctest: +SKIP
        >>> counts.to_dict()["too_short_reads"]  # doctest: +SKIP
        132
    """
    paired, fragments = _layout(batch)
    params = resolved_for(batch, params)
    counts = QcCounts()
    seq_col, qual_col = batch.column("sequence"), batch.column("quality")
    n_mates = 2 if paired else 1
    kept = [_Out() for _ in range(n_mates)]
    lone = [_Out() for _ in range(n_mates)]
    for lo in range(0, fragments, _CHUNK):
        hi = min(lo + _CHUNK, fragments)
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        row_sets = []
        for m in range(n_mates):
            a, b = m * fragments + lo, m * fragments + hi
            parts.append(string_parts(seq_col.slice(a, b - a)))
            parts.append(string_parts(qual_col.slice(a, b - a)))
            row_sets.append(np.arange(a, b, dtype=np.int64))
        mates, codes = _process_chunk(parts, params, counts)
        for mate in mates:
            counts.reads_in += len(mate.original)
            counts.bases_in += int(mate.original.sum())
        pair_code = np.maximum(codes[0], codes[1]) if paired else codes[0]
        survive = pair_code == PASS
        for reason_code, reason in _REASONS.items():
            hit = pair_code == reason_code
            for mate in mates:
                counts._add(reason, hit, mate.length)
        for m, mate in enumerate(mates):
            kept[m].add(mate, survive, row_sets[m])
            counts.reads_out += int(np.count_nonzero(survive))
            counts.bases_out += int(mate.length[survive].sum())
            if paired:
                orphan = (codes[m] == PASS) & ~survive
                counts._add("orphaned", orphan, mate.length)
                if params.keep_orphans:
                    lone[m].add(mate, orphan, row_sets[m])
    survivors = _assemble(batch, kept)
    orphans = _assemble(batch, lone) if paired and params.keep_orphans else None
    return survivors, orphans, counts


# --- Prefect task: the I/O edge around filter_batch ------------------------------------

QC_VERSION = "2"  # 2: adapters detected from the reads as fastp does (was: a fixed list)


class QcResult(BaseModel):
    """One filtered shard (plus orphans when kept), its per-reason counts and the adapters
    searched (fastp's `read1_adapter_sequence`/`read2_adapter_sequence`, or "none")."""

    shard: Artifact
    orphans: Artifact | None = None
    counts: dict[str, int]
    adapters: dict[str, str] = {}


def sample_detection_reads(
    shards: list[Artifact], store: Store
) -> tuple[pa.Array | None, pa.Array | None]:
    """The first reads of a sample that fastp's adapter detection looks at, per mate, in
    file order: (mate-1 or single-end sequences, mate-2 sequences or None). Shards are
    read in order only until both mates have enough.

    Args:
        shards: the sample's read shards, in file order.
        store: the store holding them.

    Returns:
        (mate-1 or single-end sequences, mate-2 sequences); each None when the sample has
        no such reads.
    """
    parts: dict[int, list[pa.Array]] = {}
    have: dict[int, tuple[int, int]] = {}
    for shard in shards:
        table = read_table(store, shard, columns=["mate", "sequence"])
        mates = table.column("mate").to_numpy()
        for mate in np.unique(mates).tolist():
            reads, bases = have.get(mate, (0, 0))
            if reads >= _DETECT_READS or bases >= _DETECT_BASES:
                continue
            seqs = table.column("sequence").filter(pa.array(mates == mate)).combine_chunks()
            parts.setdefault(mate, []).append(seqs)
            lengths = np.diff(string_parts(seqs)[0])
            have[mate] = (reads + len(lengths), bases + int(lengths.sum()))
        if have and all(r >= _DETECT_READS or b >= _DETECT_BASES for r, b in have.values()):
            break
    joined = {m: pa.concat_arrays(p) for m, p in parts.items()}
    return joined.get(1, joined.get(0)), joined.get(2)


@task(name="detect-adapters", task_run_name="adapters-{sample}", **stage_options(QC_VERSION))
def detect_sample_adapters(
    sample: str, shards: list[Artifact], params: QcParams, store: Store
) -> QcParams:
    """`params` with the adapters fastp would detect in the sample's first reads filled in,
    once per sample so that all its shards trim the same adapters.

    Args:
        sample: the sample name, for the task run.
        shards: the sample's read shards, in file order.
        params: the QC settings; a mate whose adapter is already set, or is not to be
            detected, is left alone.
        store: the store holding the shards.

    Returns:
        `params` with detected_adapter_r1 / detected_adapter_r2 filled in.

    Example:
        >>> params = detect_sample_adapters("ecoli", shards, QcParams(), store)  # doctest: +SKIP
        >>> params.detected_adapter_r1  # doctest: +SKIP
        'GCATCCGGCA'
    """
    return params.with_detected(*sample_detection_reads(shards, store))


@materialize(
    "helixflow://qc",
    name="filter-reads",
    task_run_name="qc-{shard.name}",
    **stage_options(QC_VERSION),
)
def filter_reads(shard: Artifact, params: QcParams, store: Store, run_id: str) -> QcResult:
    """Trim and filter one read shard with fastp's semantics; publish survivors (and orphans).

    `params` should already be `resolved()` for the sample (polyG decided once per file).

    Args:
        shard: a Parquet read shard (READS_SCHEMA).
        params: the QC settings, resolved for the sample.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifacts belong to.

    Returns:
        QcResult with the kept reads (".reads." in the name becomes ".qc."), the orphaned
        mates (None when there are none), per-reason counts and the adapters searched.
    """
    batch = as_batch(read_table(store, shard))
    params = resolved_for(batch, params)  # a no-op when the flow resolved them per sample
    kept, orphans, counts = filter_batch(batch, params)
    base = shard.name.removesuffix(".parquet").replace(".reads.", ".qc.")
    common = {"run_id": run_id, "stage": "qc", "producer": "filter-reads",
              "params": dataclasses.asdict(params), "upstream": [shard.ref()]}
    with store.scratch() as scratch:
        out = publish_table(store, kept, scratch, name=f"{base}.parquet",
                            metadata={"counts": counts.to_dict()}, **common)
        lone = None
        if orphans is not None and orphans.num_rows:
            lone = publish_table(store, orphans, scratch, name=f"{base}.orphans.parquet",
                                 **common)
    paired = _layout(batch)[0]
    return QcResult(shard=out, orphans=lone, counts=counts.to_dict(),
                    adapters=params.adapter_report(paired))
