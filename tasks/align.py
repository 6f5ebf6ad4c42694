"""Reads to alignments: mappy (minimap2) index, alignment kernel, and its Prefect tasks.

Pure functions on local paths (no Prefect) first; the Prefect/Ray tasks at the end wrap
them, one shard per task, then merge a sample's parts. Reads come as Arrow batches in
`tasks.reads.READS_SCHEMA`; in a paired batch the mate-1 rows come first, then the mate-2
rows in the same fragment order. Writing BAM (header, sort, merge, index) is `tasks.bam`.

How it is fast. mappy releases the GIL while it maps, so `threads` workers map chunks of
fragments at once, each with its own `mappy.ThreadBuffer`. Each worker formats its
records as SAM text (cheaper in Python than building `pysam.AlignedSegment`s field by
field), streamed into `samtools sort` while mapping goes on: the same work as
`minimap2 -ax sr | samtools sort`. Without the samtools command, a temporary SAM file and
`pysam.sort` do it (slower: pysam's htslib compresses with zlib, not libdeflate).
For 2x150 bp pairs about a fifth of the mapping CPU is Python (formatting, mappy's hit
objects), which holds the GIL, so two threads give less than twice one.

SAM fields follow minimap2's own writer (`mm_write_sam3`): flags for pairing, strand,
mate strand, first/second, secondary (0x100) and supplementary (0x800, hard-clipped like
minimap2 without -Y); RNEXT/PNEXT from the mate's primary alignment; TLEN between the
5' ends; soft clips for the unaligned ends; NM, MD and RG tags. An unmapped read whose
mate is mapped takes the mate's position, as the SAM spec recommends; unmapped reads are
kept. The "sr" preset drops secondary alignments, as minimap2's preset does.

Example:
    >>> mmi = build_index(Path("ref.fa"), "sr", Path("cache"))  # doctest: +SKIP
    >>> rg = {"ID": "S1.L1", "SM": "S1", "LB": "lib1", "PL": "ILLUMINA"}
    >>> counts = align_batch(batch, mmi, Path("shard-0.bam"), rg)  # doctest: +SKIP
    >>> merge_bams([Path("shard-0.bam"), Path("shard-1.bam")], Path("S1.bam"))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import mappy
import pyarrow as pa
from prefect import task
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact, FileRef
from helixflow.caching import stage_options
from helixflow.errors import InputError
from helixflow.files import atomic_path
from helixflow.store import Store
from helixflow.tables import as_batch, fetch, publish_file, read_table
from helixflow.tasks.bam import (
    BAM_MEDIA_TYPE,
    ReadLists,
    SortedBamSink,
    merge_bams,
    read_group_for,
    sam_header,
    split_batch,
)
from helixflow.tools import tool_version

ALIGN_VERSION = "3"
"""Bump when the bytes written for the same input change (goes into cache keys).
3: headers carry no paths (no scratch, store or index path in @PG lines)."""

PRESETS: dict[str, str] = {
    "illumina": "sr",
    "short": "sr",
    "ont": "map-ont",
    "nanopore": "map-ont",
    "pacbio": "map-pb",
    "clr": "map-pb",
    "hifi": "map-hifi",
}
"""minimap2 preset for each read type."""
_KNOWN_PRESETS = frozenset({"sr", "map-ont", "map-pb", "map-hifi"})
MAX_FRAG_LEN = 800
"""Longest fragment (bp) of a proper pair in "sr" mode: minimap2's -F default."""

_CHUNK = 2_000  # fragments per unit of work handed to a mapping thread
_RC = str.maketrans("ACGTNacgtnRYSWKMBDHVU", "TGCANtgcanYRSWMKVHDBA")
_FLAG_PAIRED, _FLAG_PROPER, _FLAG_UNMAP, _FLAG_MUNMAP = 0x1, 0x2, 0x4, 0x8
_FLAG_REV, _FLAG_MREV, _FLAG_R1, _FLAG_R2 = 0x10, 0x20, 0x40, 0x80
_FLAG_SECONDARY, _FLAG_SUPPLEMENTARY = 0x100, 0x800


def preset_for(read_type: str) -> str:
    """minimap2 preset for a read type ("illumina", "ont", "pacbio", "hifi") or a preset name.

    Args:
        read_type: a read type ("illumina", "ont", "pacbio", "hifi"; any case) or a
            minimap2 preset name ("sr", "map-ont", "map-pb", "map-hifi"), passed through.

    Returns:
        The minimap2 preset name.

    Raises:
        ValueError: an unknown read type (the message lists the allowed names).
    """
    if read_type in _KNOWN_PRESETS:
        return read_type
    try:
        return PRESETS[read_type.lower()]
    except KeyError:
        allowed = ", ".join(sorted({*PRESETS, *_KNOWN_PRESETS}))
        raise ValueError(f"unknown read type {read_type!r}; allowed: {allowed}") from None


@dataclass
class AlignCounts:
    """What one alignment wrote: reads in, their fate, and records out."""

    reads: int = 0
    mapped: int = 0
    unmapped: int = 0
    properly_paired: int = 0
    secondary: int = 0
    supplementary: int = 0
    records: int = 0

    def merge(self, other: AlignCounts) -> AlignCounts:
        """Sum of two counts (e.g. across shards)."""
        return AlignCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                              for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        """Plain dict, for artifacts and logs."""
        return asdict(self)


# --------------------------------------------------------------------------------------
# Reference and index


def _check_reference(reference_fa: Path) -> None:
    """Raise InputError unless the reference exists and starts like a FASTA file."""
    path = Path(reference_fa)
    if not path.is_file():
        raise InputError(str(path), "reference FASTA not found", hint="check the path")
    with path.open("rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        with gzip.open(path, "rb") as fh:
            try:
                head = fh.read(1)
            except (OSError, EOFError) as exc:
                raise InputError(str(path), f"corrupt gzip reference ({exc})") from None
    if not head.startswith(b">"):
        raise InputError(
            str(path), "not a FASTA file (it does not start with '>')",
            hint="pass the reference genome as FASTA (.fa or .fa.gz)",
        )


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks.

    Args:
        path: the file to hash.

    Returns:
        The sha256 digest as 64 lower-case hex characters.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def build_index(reference_fa: Path, preset: str, cache_dir: Path) -> Path:
    """The minimap2 index (.mmi) of a reference for a preset, built once and cached.

    The file is named by the sha256 of the reference's bytes and the preset, so a changed
    reference gets a new index and an unchanged one (under any path) reuses it. It is
    written beside its final name and renamed, so concurrent builders never see half.

    Args:
        reference_fa: local FASTA (plain or gzip).
        preset: minimap2 preset ("sr", "map-ont", "map-pb", "map-hifi").
        cache_dir: where indexes live; created if needed.

    Returns:
        Path of the .mmi.

    Raises:
        InputError: the reference is missing, not FASTA, or holds no sequence.

    Example:
        >>> build_index(Path("lambda.fa"), "sr", Path("~/.cache/helixflow/mmi"))  # doctest: +SKIP
        PosixPath('.../lambda.3f1c...-sr.mmi')
    """
    preset = preset_for(preset)
    reference_fa = Path(reference_fa)
    _check_reference(reference_fa)
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = reference_fa.name.split(".")[0] or "reference"
    out = cache_dir / f"{stem}.{file_sha256(reference_fa)[:20]}-{preset}.mmi"
    if out.exists():
        return out
    with atomic_path(out) as tmp:
        aligner = mappy.Aligner(str(reference_fa), preset=preset, fn_idx_out=str(tmp))
        if not aligner or aligner.n_seq == 0 or not tmp.stat().st_size:
            raise InputError(str(reference_fa), "minimap2 found no sequence in the reference")
    return out


@functools.lru_cache(maxsize=2)
def _load_aligner(index: str, preset: str, mtime_ns: int) -> mappy.Aligner:
    """A loaded index, kept for the next batch in the same worker process."""
    aligner = mappy.Aligner(index, preset=preset)
    if not aligner:
        raise InputError(index, "not a minimap2 index or FASTA file",
                         hint="rebuild it with build_index(reference, preset, cache_dir)")
    return aligner


def load_aligner(index: Path, preset: str) -> mappy.Aligner:
    """mappy.Aligner over an .mmi (or FASTA) with the preset's mapping options, cached.

    Args:
        index: a minimap2 index (.mmi) or a FASTA to index on load.
        preset: a read type or minimap2 preset name (see `preset_for`).

    Returns:
        The loaded aligner, cached per worker process on (path, preset, mtime).

    Raises:
        InputError: `index` is not a file.
    """
    path = Path(index)
    if not path.is_file():
        raise InputError(str(path), "minimap2 index not found",
                         hint="build it with build_index(reference, preset, cache_dir)")
    return _load_aligner(str(path), preset_for(preset), path.stat().st_mtime_ns)


def _program_line(preset: str) -> str:
    """The @PG line of an aligned BAM: program, version and preset, and no path.

    The same reads aligned in any store, scratch folder or HELIXFLOW_HOME must give the
    same bytes, so the header names no file (the index, the run folder): which reference
    and inputs made the BAM is in its lineage record. samtools runs with --no-PG for the
    same reason (its own @PG would hold its command line with temporary paths).
    """
    version = getattr(mappy, "__version__", "unknown")
    return f"@PG\tID:mappy\tPN:mappy\tVN:{version}\tCL:helixflow-align --preset={preset}"


# --------------------------------------------------------------------------------------
# Alignment


@dataclass(frozen=True)
class _Job:
    """Everything a mapping thread needs, shared read-only."""

    aligner: mappy.Aligner
    reads: ReadLists
    rg_tag: str  # "\tRG:Z:<id>"
    keep_secondary: bool
    max_frag_len: int
    name_suffix: str = ""  # appended to read_id for minimap2's tie-break hash only


class _Mate2Hit:
    """A mate-2 hit of a paired `Aligner.map` with its query interval and MD repaired.

    mappy (2.31, cmappy.h `mm_map_aux`) maps mate 2 reverse-complemented and flips the
    hit's strand back, but not `q_st`/`q_en`, and builds the MD tag from those unflipped
    coordinates. Both are wrong whenever the two ends are clipped differently; minimap2's
    own writer flips them (map.c). This copies the hit with `q_st`/`q_en` flipped and the
    MD recomputed from the reference and the CIGAR.
    """

    __slots__ = ("MD", "NM", "cigar", "cigar_str", "ctg", "is_primary", "mapq", "q_en", "q_st",
                 "r_en", "r_st", "read_num", "strand")

    def __init__(self, hit: Any, n: int, seq: str, aligner: mappy.Aligner) -> None:
        self.ctg, self.r_st, self.r_en, self.strand = hit.ctg, hit.r_st, hit.r_en, hit.strand
        self.q_st, self.q_en = n - hit.q_en, n - hit.q_st
        self.mapq, self.cigar, self.cigar_str, self.NM = hit.mapq, hit.cigar, hit.cigar_str, hit.NM
        self.is_primary, self.read_num = hit.is_primary, hit.read_num
        if self.strand < 0:  # the aligned span on the reverse complement
            span = seq.translate(_RC)[::-1][n - self.q_en:n - self.q_st]
        else:
            span = seq[self.q_st:self.q_en]
        self.MD = md_tag(aligner.seq(self.ctg, self.r_st, self.r_en) or "", span, hit.cigar)


def md_tag(ref: str, query: str, cigar: list[list[int]]) -> str:
    """SAM MD tag of an alignment: `ref` and `query` are the aligned spans (no clips),
    `cigar` the (length, op) pairs with M/I/D/N ops as mappy gives them.

    Args:
        ref: the reference bases of the aligned span (any case; mismatches are upper-cased).
        query: the read bases of the aligned span, soft clips removed.
        cigar: (length, op) pairs as mappy's `Alignment.cigar`; ops 0/7/8 (M, =, X), 1 (I),
            2 (D) and 3 (N) are read.

    Returns:
        The MD:Z value, e.g. "2G0^T4".

    Example:
        >>> md_tag("ACGTACGT", "ACCACGT", [[3, 0], [1, 2], [4, 0]])
        '2G0^T4'
    """
    parts: list[str] = []
    run = r = q = 0
    for length, op in cigar:
        if op in (0, 7, 8):  # M, =, X
            for k in range(length):
                if ref[r + k].upper() == query[q + k].upper():
                    run += 1
                else:
                    parts.append(f"{run}{ref[r + k].upper()}")
                    run = 0
            r += length
            q += length
        elif op == 1:  # insertion: not in MD
            q += length
        elif op in (2, 3):  # deletion (and skip, which MD does not show)
            if op == 2:
                parts.append(f"{run}^{ref[r:r + length].upper()}")
                run = 0
            r += length
    parts.append(str(run))
    return "".join(parts)


def _classify(hits: list[Any]) -> tuple[Any, list[tuple[Any, int]]]:
    """Primary hit (or None) and the others with their flag bit, as minimap2 decides.

    mappy's `is_primary` means "not secondary": the first such hit is the primary, the
    later ones are supplementary (minimap2's mm_set_sam_pri).
    """
    if len(hits) == 1 and hits[0].is_primary:  # the usual case for short reads
        return hits[0], []
    primary, others = None, []
    for hit in hits:
        if not hit.is_primary:
            others.append((hit, _FLAG_SECONDARY))
        elif primary is None:
            primary = hit
        else:
            others.append((hit, _FLAG_SUPPLEMENTARY))
    return primary, others


def _tlen(hit: Any, mate: Any) -> int:
    """TLEN between the 5' ends, as minimap2 writes it (0 across contigs)."""
    if mate is None or hit.ctg != mate.ctg:
        return 0
    this5 = hit.r_en - 1 if hit.strand < 0 else hit.r_st
    next5 = mate.r_en - 1 if mate.strand < 0 else mate.r_st
    d = next5 - this5
    return d + 1 if d > 0 else d - 1 if d < 0 else 0


def _proper(a: Any, b: Any, max_frag_len: int) -> bool:
    """Both primaries on one contig, facing each other (FR), within max_frag_len."""
    if a is None or b is None or a.ctg != b.ctg or a.strand == b.strand:
        return False
    fwd, rev = (a, b) if a.strand > 0 else (b, a)
    return fwd.r_st <= rev.r_en and max(a.r_en, b.r_en) - min(a.r_st, b.r_st) <= max_frag_len


def _record(name: str, flag: int, hit: Any, seq: str, qual: str, mate: Any,
            own_primary: Any, tail: str) -> str:
    """One SAM line for a mapped hit; `mate` is the mate's primary (None: mate unmapped).

    Called for every record, so each hit attribute is read once (they are Cython
    properties) and TLEN is computed inline (as _tlen does)."""
    n = len(seq)
    strand, ctg, r_st, q_st, q_en = hit.strand, hit.ctg, hit.r_st, hit.q_st, hit.q_en
    if strand < 0:
        flag |= _FLAG_REV
        left, right = n - q_en, q_st
    else:
        left, right = q_st, n - q_en
    if flag & _FLAG_SECONDARY:
        clip, seq_out, qual_out = "S", "*", "*"
    else:
        if strand < 0:
            seq, qual = seq.translate(_RC)[::-1], qual[::-1]
        if flag & _FLAG_SUPPLEMENTARY:
            clip = "H"
            seq_out, qual_out = seq[left:n - right] or "*", qual[left:n - right] or "*"
        else:
            clip, seq_out, qual_out = "S", seq or "*", qual or "*"
    ops = hit.cigar
    cigar = f"{ops[0][0]}M" if len(ops) == 1 else hit.cigar_str  # fast path: one M op
    if left:
        cigar = f"{left}{clip}{cigar}"
    if right:
        cigar = f"{cigar}{right}{clip}"
    if not flag & _FLAG_PAIRED:
        mate_fields = "*\t0\t0"
    elif mate is None:
        flag |= _FLAG_MUNMAP
        rnext = "=" if own_primary.ctg == ctg else own_primary.ctg
        mate_fields = f"{rnext}\t{own_primary.r_st + 1}\t0"
    else:
        m_strand, m_ctg, m_st = mate.strand, mate.ctg, mate.r_st
        if m_strand < 0:
            flag |= _FLAG_MREV
        if m_ctg == ctg:  # TLEN between the 5' ends
            d = (mate.r_en - 1 if m_strand < 0 else m_st) - (hit.r_en - 1 if strand < 0 else r_st)
            tlen = d + 1 if d > 0 else d - 1 if d < 0 else 0
            mate_fields = f"=\t{m_st + 1}\t{tlen}"
        else:
            mate_fields = f"{m_ctg}\t{m_st + 1}\t0"
    return (f"{name}\t{flag}\t{ctg}\t{r_st + 1}\t{hit.mapq}\t{cigar}\t{mate_fields}\t"
            f"{seq_out}\t{qual_out}\tNM:i:{hit.NM}\tMD:Z:{hit.MD}{tail}")


def _unmapped(name: str, flag: int, seq: str, qual: str, mate: Any, tail: str) -> str:
    """SAM line of an unmapped read, placed at its mate's position when the mate mapped."""
    if mate is None:
        if flag & _FLAG_PAIRED:
            flag |= _FLAG_MUNMAP
        place = "*\t0\t0\t*\t*\t0\t0"
    else:
        if mate.strand < 0:
            flag |= _FLAG_MREV
        place = f"{mate.ctg}\t{mate.r_st + 1}\t0\t*\t=\t{mate.r_st + 1}\t0"
    return f"{name}\t{flag | _FLAG_UNMAP}\t{place}\t{seq or '*'}\t{qual or '*'}{tail}"


_local = threading.local()


def _map_chunk(job: _Job, start: int, end: int) -> tuple[str, AlignCounts]:
    """SAM text and counts for fragments start..end, mapped on this thread's buffer.

    The read name goes to mappy because minimap2 breaks ties between equally good
    placements with a hash of it: the same read gets the same placement in every run.
    minimap2 hashes the name as the FASTQ spells it (for pairs, mate 1's, with any "/1"),
    so `job.name_suffix` is added back to hash what minimap2 would; SAM keeps read_id.
    """
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = mappy.ThreadBuffer()
    aligner, reads, tail, suffix = job.aligner, job.reads, job.rg_tag + "\n", job.name_suffix
    counts = AlignCounts()
    lines: list[str] = []
    out = lines.append
    keep2 = job.keep_secondary
    if not reads.paired:
        for i in range(start, end):
            name, seq, qual = reads.names[i], reads.seq1[i], reads.qual1[i]
            key = name + suffix
            hits = list(aligner.map(seq, name=key, buf=buf, MD=True)) if seq else []
            primary, others = _classify(hits)
            counts.reads += 1
            if primary is None:
                counts.unmapped += 1
                out(_unmapped(name, 0, seq, qual, None, tail))
                continue
            counts.mapped += 1
            out(_record(name, 0, primary, seq, qual, None, primary, tail))
            for hit, bit in others:
                if bit == _FLAG_SECONDARY and not keep2:
                    continue
                counts.secondary += bit == _FLAG_SECONDARY
                counts.supplementary += bit == _FLAG_SUPPLEMENTARY
                out(_record(name, bit, hit, seq, qual, None, primary, tail))
        counts.records = len(lines)
        return "".join(lines), counts
    assert reads.seq2 is not None and reads.qual2 is not None
    for i in range(start, end):
        name = reads.names[i]
        key = name + suffix
        s1, q1, s2, q2 = reads.seq1[i], reads.qual1[i], reads.seq2[i], reads.qual2[i]
        hits1: list[Any] = []
        hits2: list[Any] = []
        if s1 and s2:
            n2 = len(s2)
            for hit in aligner.map(s1, s2, name=key, buf=buf, MD=True):
                if hit.read_num == 1:
                    hits1.append(hit)
                elif hit.q_st == n2 - hit.q_en:  # symmetric clips: mappy's fields are right
                    hits2.append(hit)
                else:
                    hits2.append(_Mate2Hit(hit, n2, s2, aligner))
        elif s1:
            hits1 = list(aligner.map(s1, name=key, buf=buf, MD=True))
        elif s2:
            hits2 = list(aligner.map(s2, name=key, buf=buf, MD=True))
        p1, others1 = _classify(hits1)
        p2, others2 = _classify(hits2)
        counts.reads += 2
        proper = _proper(p1, p2, job.max_frag_len)
        for flag, seq, qual, own, mate, others in (
            (_FLAG_PAIRED | _FLAG_R1, s1, q1, p1, p2, others1),
            (_FLAG_PAIRED | _FLAG_R2, s2, q2, p2, p1, others2),
        ):
            if own is None:
                counts.unmapped += 1
                out(_unmapped(name, flag, seq, qual, mate, tail))
                continue
            counts.mapped += 1
            if proper:
                counts.properly_paired += 1
                out(_record(name, flag | _FLAG_PROPER, own, seq, qual, mate, own, tail))
            else:
                out(_record(name, flag, own, seq, qual, mate, own, tail))
            for hit, bit in others:
                if bit == _FLAG_SECONDARY and not keep2:
                    continue
                counts.secondary += bit == _FLAG_SECONDARY
                counts.supplementary += bit == _FLAG_SUPPLEMENTARY
                out(_record(name, flag | bit, hit, seq, qual, mate, own, tail))
    counts.records = len(lines)
    return "".join(lines), counts


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


_NAME_SUFFIXES = ("", "/1", "/2")


def name_suffix_of(fastq: str | Path, storage_options: dict[str, Any] | None = None) -> str:
    """The "/1" or "/2" that ends the first read name of a FASTQ ("" if none): what
    read_id lost at ingest and minimap2 hashes (pass it to align_batch as name_suffix).

    Args:
        fastq: a FASTQ path or URL, plain or compressed.
        storage_options: fsspec options for a remote `fastq`; None for none.

    Returns:
        "/1", "/2", or "" when the first read name has neither suffix (or the file is empty).
    """
    from helixflow.tasks.inflate import open_fastq

    with open_fastq(str(fastq), storage_options) as fh:
        header = fh.readline()
    words = header[1:].split(None, 1) if header.startswith(b"@") else []
    name = words[0].decode("utf-8", "replace") if words else ""
    return name[-2:] if len(name) >= 3 and name[-2:] in ("/1", "/2") else ""


def align_batch(
    batch: pa.RecordBatch | pa.Table,
    index: Path,
    out_sorted_bam: Path,
    read_group: dict[str, str],
    preset: str = "sr",
    threads: int = 2,
    *,
    max_frag_len: int = MAX_FRAG_LEN,
    shard_level: int = 1,
    name_suffix: str = "",
) -> AlignCounts:
    """Align a batch with mappy (pairs together) into a coordinate-sorted BAM.

    Args:
        batch: reads in READS_SCHEMA (single-end, or mate-1 rows then mate-2 rows).
        index: .mmi from build_index (a FASTA works too, indexed on the fly).
        out_sorted_bam: BAM to write, atomically; not indexed (merge_bams indexes).
        read_group: @RG fields (ID, SM, LB, PL required); every record gets RG:Z:ID.
        preset: minimap2 preset or read type; "sr" keeps no secondary alignments.
        threads: mapping threads, also used by the sort.
        max_frag_len: longest fragment of a proper pair (flag 0x2).
        shard_level: BGZF level of this BAM; 1 because merge_bams recompresses it. Use
            6 (samtools' default) for a BAM that is kept as it is.
        name_suffix: what the source FASTQ had after read_id in mate 1's name ("/1" for
            old Illumina and ART names; see name_suffix_of). minimap2 picks among equally
            good placements (repeats, MAPQ 0) by a hash of the name it read, suffix
            included; with the suffix, helixflow picks the same copy. Records keep read_id.

    Returns:
        AlignCounts: reads, mapped/unmapped reads, properly paired reads, secondary and
        supplementary records, records written.

    Raises:
        InputError: the index is missing or unreadable.
        ValueError: bad batch layout, read group or preset.

    Example:
        >>> align_batch(batch, mmi, Path("shard-0.bam"), rg, preset="sr")  # doctest: +SKIP
        AlignCounts(reads=500000, mapped=499120, ...)
    """
    preset = preset_for(preset)
    aligner = load_aligner(index, preset)
    reads = split_batch(batch)
    sq = [(name, len(aligner.seq(name) or "")) for name in aligner.seq_names]
    program = _program_line(preset)
    header = sam_header(sq, read_group, program)
    if name_suffix not in _NAME_SUFFIXES:
        raise ValueError(f"name_suffix must be one of {_NAME_SUFFIXES}, got {name_suffix!r}")
    job = _Job(aligner, reads, f"\tRG:Z:{read_group['ID']}", preset != "sr", max_frag_len,
               name_suffix)
    threads = max(1, int(threads))
    total = AlignCounts()
    out = Path(out_sorted_bam)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, SortedBamSink(tmp, threads, shard_level) as sink:
        sink.write(header)
        chunks = list(_chunks(len(reads.names), _CHUNK))
        with ThreadPoolExecutor(threads, thread_name_prefix="helixflow-map") as pool:
            for text, counts in pool.map(lambda c: _map_chunk(job, *c), chunks):
                sink.write(text)
                total = total.merge(counts)
        sink.finish()
    return total


# --- Prefect tasks: align each shard, merge a sample's parts --------------------------


class AlignedShard(BaseModel):
    """One shard's coordinate-sorted BAM part and what its alignment counted."""

    bam: Artifact
    counts: dict[str, int]


class SampleBam(BaseModel):
    """A sample's coordinate-sorted BAM and its index, side by side in the run folder."""

    bam: Artifact
    bai: Artifact
    counts: dict[str, int]


@task(name="align-reads", task_run_name="align-{shard.name}",
      **stage_options(ALIGN_VERSION, tools=("samtools",)))
def align_reads(
    shard: Artifact, sample: str, reference: FileRef, preset: str, store: Store, run_id: str,
    name_suffix: str = "",
) -> AlignedShard:
    """Align one shard with mappy into a sorted BAM part (index cached per reference).

    Args:
        shard: a read shard (READS_SCHEMA Parquet) in the store.
        sample: sample name; gives the read group (`read_group_for`).
        reference: the reference FASTA; its minimap2 index is cached under HELIXFLOW_HOME.
        preset: minimap2 preset or read type ("sr", "illumina", "ont", ...).
        store: where the part is published.
        run_id: the run whose `align-parts` folder shows the part.
        name_suffix: the "/1" the FASTQ names had (see name_suffix_of), for tie-breaks.

    Returns:
        AlignedShard: the published BAM part and its AlignCounts as a dict.
    """
    from helixflow.settings import helixflow_home

    with store.scratch() as scratch:
        ref_path = fetch(store, reference, scratch, name="reference.fa")
        index = build_index(ref_path, preset, helixflow_home() / "cache" / "minimap2")
        out = scratch / shard.name.replace(".parquet", ".bam")
        counts = align_batch(as_batch(read_table(store, shard)), index, out,
                             read_group_for(sample), preset=preset, threads=2,
                             name_suffix=name_suffix)
        art = publish_file(store, out, run_id=run_id, stage="align-parts",
                           media_type=BAM_MEDIA_TYPE, producer="align-reads",
                           rows=counts.records, params={"preset": preset},
                           upstream=[shard.ref(), reference],
                           tools={"mappy": mappy.__version__, "samtools": tool_version("samtools")},
                           metadata={"counts": counts.as_dict()})
    return AlignedShard(bam=art, counts=counts.as_dict())


@materialize("helixflow://align", name="merge-alignments", task_run_name="merge-bam-{sample}",
             **stage_options(ALIGN_VERSION, tools=("samtools",)))
def merge_alignments(
    sample: str, parts: list[AlignedShard], store: Store, run_id: str
) -> SampleBam:
    """Merge a sample's sorted parts into `<sample>.bam` + `<sample>.bam.bai`.

    Args:
        sample: sample name (the BAM's file name).
        parts: the sample's aligned shards, from align_reads.
        store: where the BAM and its index are published.
        run_id: the run whose `align` folder shows them.

    Returns:
        SampleBam: the BAM, its .bai and the summed AlignCounts.
    """
    counts = AlignCounts()
    for part in parts:
        counts = counts.merge(AlignCounts(**part.counts))
    with store.scratch() as scratch:
        locals_ = [fetch(store, p.bam, scratch, name=f"part{i}.bam") for i, p in enumerate(parts)]
        out = merge_bams(locals_, scratch / f"{sample}.bam")
        ups = [p.bam.ref() for p in parts]
        tools = {"samtools": tool_version("samtools")}
        bam = publish_file(store, out, run_id=run_id, stage="align", media_type=BAM_MEDIA_TYPE,
                           producer="merge-alignments", rows=counts.records, upstream=ups,
                           tools=tools, metadata={"counts": counts.as_dict()})
        bai = publish_file(store, Path(f"{out}.bai"), run_id=run_id, stage="align",
                           media_type="application/octet-stream", producer="merge-alignments",
                           upstream=[bam.ref()], tools=tools)
    return SampleBam(bam=bam, bai=bai, counts=counts.as_dict())
