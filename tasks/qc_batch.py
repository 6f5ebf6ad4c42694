"""Read quality control kernel: fastp 0.23.2 trimming and filtering on Arrow read batches.

Pure functions (NumPy/Arrow in and out, no Prefect) so they can be tested and benchmarked on
their own; the Prefect task (`tasks.qc`) wraps `filter_batch`.

What it does, in fastp 0.23.2's order (its `PairEndProcessor::processPairEnd`):

1. fixed trimming (`trim_front`/`trim_tail`) and the sliding-window quality cut
   (`cut_front`, `cut_tail`), done together as fastp's `Filter::trimAndCut` does; a read
   cut to nothing is dropped as too short (`tasks.qc_trim`);
2. polyG tail trimming (`trim_poly_g`; fastp switches it on for NextSeq/NovaSeq reads);
3. adapters: for pairs, overlap analysis first (R1 against reverse-complemented R2; an
   overlap with R2 starting before R1 means the insert is shorter than the reads, and both
   mates are cut to the insert). Where the overlap did not trim, the adapter sequence is
   searched with mismatches (one allowed per 8 compared bases): the one given, or the one
   detected from the sample's first reads as fastp's evaluator does (`detect_adapter`;
   single-end reads by default, pairs with `detect_adapter_for_pe`), or none
   (`tasks.qc_adapter_trim`, `tasks.qc_adapter_detect`);
4. polyX tail trimming (`trim_poly_x`);
5. filters, in fastp's order: unqualified-base percentage (and mean quality), N count,
   length (`length_required`, `length_limit`), low complexity (`tasks.qc_filters`). A
   pair survives only if both mates pass; it is counted under the worse reason of its two
   mates, for both reads, as fastp's JSON report counts it.

fastp's quirks are kept on purpose (agreement read by read is the point): the quality cut
moves the front cut `window - 1` bases past the first good window and the tail cut back by
`window - 1` from the last good window; overlap acceptance only counts mismatches in the
first 50 overlapping bases; bases are compared as characters (N matches N).

How it is fast. No Python loop per read: a batch is processed in chunks of fragments held
as padded 2-D byte matrices (reads x positions). Trimming decisions are cumulative sums,
masked arg-max/arg-min and gathers over those matrices; sequence comparisons screen
packed 16-base windows (`tasks.qc_adapter_trim`).

Example:
    >>> for batch in iter_read_batches("R1.fq.gz", "R2.fq.gz"):  # doctest: +SKIP
    ...     kept, orphans, counts = filter_batch(batch, QcParams())
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from helixflow.tasks.qc_adapter_trim import Windows, overlap, trim_by_sequence
from helixflow.tasks.qc_filters import PASS, REASONS, filter_codes
from helixflow.tasks.qc_params import QcCounts, QcParams, read_adapter_fasta
from helixflow.tasks.qc_trim import Mate, poly_g, poly_x, trim_and_cut
from helixflow.tasks.reads import padded, string_parts

_CHUNK = 8192  # fragments per internal chunk: cache-sized arrays (fastest of 4k..32k measured)


@dataclass
class _Out:
    """Surviving reads of one mate over all chunks: source rows and trimmed bytes."""

    rows: list[np.ndarray] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    seq: list[np.ndarray] = field(default_factory=list)
    qual: list[np.ndarray] = field(default_factory=list)

    def add(self, mate: Mate, keep: np.ndarray, rows: np.ndarray) -> None:
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
) -> tuple[list[Mate], list[np.ndarray]]:
    """Trim and filter one chunk of fragments (one or two mates). Returns the mates and
    their filter codes."""
    width = max(int(np.diff(o).max(initial=0)) for o, _ in parts)
    paired = len(parts) == 4
    mates: list[Mate] = []
    for i in range(0, len(parts), 2):
        seq, qual = padded(*parts[i], width), padded(*parts[i + 1], width)
        length = np.diff(parts[i][0]).astype(np.int64)
        n = len(length)
        alive, front = np.ones(n, bool), np.zeros(n, np.int64)
        mates.append(Mate(seq, qual, length.copy(), alive, front, length))
    fixed = [(p.trim_front1, p.trim_tail1), (p.trim_front2, p.trim_tail2)]
    for mate, (f, t) in zip(mates, fixed, strict=False):
        trim_and_cut(mate, f, t, p, counts)
    both = mates[0].alive & mates[1].alive if paired else mates[0].alive
    if p.trim_poly_g:
        for mate in mates:
            poly_g(mate, p.poly_g_min_len, both, counts)
    windows: dict[int, Windows] = {}

    def windows_of(i: int) -> Windows:
        if i not in windows:
            windows[i] = Windows(mates[i].seq)
        return windows[i]

    by_overlap = np.zeros(len(both), bool)
    if paired and p.detect_pe_overlap and p.trim_adapters and both.any():
        found, offset, olap = overlap(mates[0], mates[1], both, p, windows_of(0))
        by_overlap = found & (offset < 0)
        old = [m.length.copy() for m in mates]
        mates[0].length = np.where(by_overlap, np.minimum(old[0], olap + mates[1].front), old[0])
        mates[1].length = np.where(by_overlap, np.minimum(old[1], olap + mates[0].front), old[1])
        cut = [o - m.length for o, m in zip(old, mates, strict=True)]
        counts.overlap_trimmed_pairs += int(np.count_nonzero(by_overlap))
        for c in cut:
            counts.add("adapter_trimmed", by_overlap & (c > 0), c)
    for i, mate in enumerate(mates):
        single, listed = _adapters_for(p, i + 1 if paired else 0, paired)
        if not single and not listed:
            continue
        before = mate.length.copy()
        if single:
            trim_by_sequence(mate, windows_of(i), single, both & ~by_overlap)
        req = 4 if len(listed) <= 16 else 5 if len(listed) <= 256 else 6
        for adapter in listed:
            trim_by_sequence(mate, windows_of(i), adapter, both, req)
        cut = before - mate.length
        counts.add("adapter_trimmed", cut > 0, cut)
    if p.trim_poly_x:
        for mate in mates:
            poly_x(mate, p.poly_x_min_len, both, counts)
    return mates, [filter_codes(m, p) for m in mates]


def batch_layout(batch: pa.RecordBatch) -> tuple[bool, int]:
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
    paired, fragments = batch_layout(batch)
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
    paired, fragments = batch_layout(batch)
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
        for reason_code, reason in REASONS.items():
            hit = pair_code == reason_code
            for mate in mates:
                counts.add(reason, hit, mate.length)
        for m, mate in enumerate(mates):
            kept[m].add(mate, survive, row_sets[m])
            counts.reads_out += int(np.count_nonzero(survive))
            counts.bases_out += int(mate.length[survive].sum())
            if paired:
                orphan = (codes[m] == PASS) & ~survive
                counts.add("orphaned", orphan, mate.length)
                if params.keep_orphans:
                    lone[m].add(mate, orphan, row_sets[m])
    survivors = _assemble(batch, kept)
    orphans = _assemble(batch, lone) if paired and params.keep_orphans else None
    return survivors, orphans, counts
