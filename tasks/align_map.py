"""Reads to alignments: a READS_SCHEMA batch mapped with mappy (minimap2) into a
coordinate-sorted BAM (`align_batch`). Pure functions on local paths, no Prefect (the
tasks are `tasks.align`). Reads come as Arrow batches in `tasks.reads.READS_SCHEMA`; in a
paired batch the mate-1 rows come first, then the mate-2 rows in the same fragment order.
The index is `tasks.align_index`, the SAM records `tasks.align_sam`; writing BAM (header,
sort, merge, index) is `tasks.bam`.

How it is fast. mappy releases the GIL while it maps, so `threads` workers map chunks of
fragments at once, each with its own `mappy.ThreadBuffer`. Each worker formats its
records as SAM text (cheaper in Python than building `pysam.AlignedSegment`s field by
field), streamed into `samtools sort` while mapping goes on: the same work as
`minimap2 -ax sr | samtools sort`. Without the samtools command, a temporary SAM file and
`pysam.sort` do it (slower: pysam's htslib compresses with zlib, not libdeflate).
For 2x150 bp pairs about a fifth of the mapping CPU is Python (formatting, mappy's hit
objects), which holds the GIL, so two threads give less than twice one.

Unmapped reads are kept. The "sr" preset drops secondary alignments, as minimap2's preset
does.

Example:
    >>> mmi = build_index(Path("ref.fa"), "sr", Path("cache"))  # doctest: +SKIP
    >>> rg = {"ID": "S1.L1", "SM": "S1", "LB": "lib1", "PL": "ILLUMINA"}
    >>> counts = align_batch(batch, mmi, Path("shard-0.bam"), rg)  # doctest: +SKIP
    >>> merge_bams([Path("shard-0.bam"), Path("shard-1.bam")], Path("S1.bam"))  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import mappy
import pyarrow as pa

from helixflow.files import atomic_path
from helixflow.tasks.align_index import load_aligner, preset_for
from helixflow.tasks.align_sam import (
    FLAG_PAIRED,
    FLAG_PROPER,
    FLAG_R1,
    FLAG_R2,
    FLAG_SECONDARY,
    FLAG_SUPPLEMENTARY,
    Mate2Hit,
    classify_hits,
    proper_pair,
    sam_record,
    unmapped_record,
)
from helixflow.tasks.bam import (
    ReadLists,
    SortedBamSink,
    sam_header,
    split_batch,
)

MAX_FRAG_LEN = 800
"""Longest fragment (bp) of a proper pair in "sr" mode: minimap2's -F default."""

_CHUNK = 2_000  # fragments per unit of work handed to a mapping thread


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


def _program_line(preset: str) -> str:
    """The @PG line of an aligned BAM: program, version and preset, and no path.

    The same reads aligned in any store, scratch folder or HELIXFLOW_HOME must give the
    same bytes, so the header names no file (the index, the run folder): which reference
    and inputs made the BAM is in its lineage record. samtools runs with --no-PG for the
    same reason (its own @PG would hold its command line with temporary paths).
    """
    version = getattr(mappy, "__version__", "unknown")
    return f"@PG\tID:mappy\tPN:mappy\tVN:{version}\tCL:helixflow-align --preset={preset}"


@dataclass(frozen=True)
class _Job:
    """Everything a mapping thread needs, shared read-only."""

    aligner: mappy.Aligner
    reads: ReadLists
    rg_tag: str  # "\tRG:Z:<id>"
    keep_secondary: bool
    max_frag_len: int
    name_suffix: str = ""  # appended to read_id for minimap2's tie-break hash only


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
            primary, others = classify_hits(hits)
            counts.reads += 1
            if primary is None:
                counts.unmapped += 1
                out(unmapped_record(name, 0, seq, qual, None, tail))
                continue
            counts.mapped += 1
            out(sam_record(name, 0, primary, seq, qual, None, primary, tail))
            for hit, bit in others:
                if bit == FLAG_SECONDARY and not keep2:
                    continue
                counts.secondary += bit == FLAG_SECONDARY
                counts.supplementary += bit == FLAG_SUPPLEMENTARY
                out(sam_record(name, bit, hit, seq, qual, None, primary, tail))
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
                    hits2.append(Mate2Hit(hit, n2, s2, aligner))
        elif s1:
            hits1 = list(aligner.map(s1, name=key, buf=buf, MD=True))
        elif s2:
            hits2 = list(aligner.map(s2, name=key, buf=buf, MD=True))
        p1, others1 = classify_hits(hits1)
        p2, others2 = classify_hits(hits2)
        counts.reads += 2
        proper = proper_pair(p1, p2, job.max_frag_len)
        for flag, seq, qual, own, mate, others in (
            (FLAG_PAIRED | FLAG_R1, s1, q1, p1, p2, others1),
            (FLAG_PAIRED | FLAG_R2, s2, q2, p2, p1, others2),
        ):
            if own is None:
                counts.unmapped += 1
                out(unmapped_record(name, flag, seq, qual, mate, tail))
                continue
            counts.mapped += 1
            if proper:
                counts.properly_paired += 1
                out(sam_record(name, flag | FLAG_PROPER, own, seq, qual, mate, own, tail))
            else:
                out(sam_record(name, flag, own, seq, qual, mate, own, tail))
            for hit, bit in others:
                if bit == FLAG_SECONDARY and not keep2:
                    continue
                counts.secondary += bit == FLAG_SECONDARY
                counts.supplementary += bit == FLAG_SUPPLEMENTARY
                out(sam_record(name, flag | bit, hit, seq, qual, mate, own, tail))
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
