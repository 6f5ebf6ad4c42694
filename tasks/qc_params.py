"""QC settings and counts: fastp 0.23.2's options (at its defaults) and what each step did.

`QcParams` holds every trimming and filtering setting, and the per-file and per-sample
decisions fastp takes from the reads themselves (polyG from the first read name,
adapters detected from the first reads); `QcCounts` counts reads and bases per step and
per filter reason, as fastp's JSON report does. The kernel is `tasks.qc_batch`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from helixflow.tasks.qc_adapter_detect import detect_adapter

TWO_COLOR_PREFIXES: tuple[str, ...] = ("NS", "NB", "A0")
"""Read-name prefixes by which fastp 0.23.2 recognises NextSeq 500/550 and NovaSeq runs
(`Evaluator::isTwoColorSystem`, tested on the first read of the file)."""

PHRED = 33  # quality bytes are Phred + 33
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

    def add(self, name: str, mask: np.ndarray, bases: np.ndarray) -> None:
        setattr(self, f"{name}_reads", getattr(self, f"{name}_reads") + int(np.count_nonzero(mask)))
        setattr(self, f"{name}_bases", getattr(self, f"{name}_bases") + int(bases[mask].sum()))
