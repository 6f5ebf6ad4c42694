"""Small-variant calling from an aligned, indexed BAM: SNVs and short indels to VCF.

A pure function on local paths (no Prefect); the Prefect/Ray task wraps it.

How it works. For each contig, `AlignmentFile.count_coverage` gives per-position A/C/G/T
counts of the bases that pass the base-quality threshold, from reads that pass the read
filter (mapped, primary, not QC-failed or duplicate, MAPQ >= the threshold). SNV
candidates are then found for the whole contig at once with NumPy: depth, alt count and
allele frequency against the thresholds. Indels come from the reads' CIGARs; each is
left-aligned on the reference before counting (the representation `bcftools norm -f`
gives), so the same event written at different places in a homopolymer is counted once.

Quality (QUAL) is the phred-scaled probability that the alt reads are sequencing errors:
the binomial tail P(X >= alt | depth, error rate), with a per-base error rate for SNVs
(`snv_error_rate / 3` per alt base) and another for indels. Genotypes are called by
allele frequency (>= `hom_af` homozygous alt); the data are usually clonal (microbes).

Output: bgzipped VCF 4.2 (`pysam.VariantFile`), contigs and lengths from the reference,
INFO DP/AF/INDEL, FORMAT GT/DP/AD, the sample from the BAM's read group, tabix index.

Example:
    >>> counts = call_variants(Path("S1.bam"), Path("ref.fa"), Path("S1.vcf.gz"),
    ...                        VariantParams(min_depth=10))  # doctest: +SKIP
    >>> counts.snvs, counts.indels  # doctest: +SKIP
    (100, 20)
"""

from __future__ import annotations

import dataclasses
import gzip
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pysam
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact, FileRef
from helixflow.caching import stage_options
from helixflow.errors import HelixflowError, InputError, naming_sources
from helixflow.files import atomic_path
from helixflow.store import Store, display_name
from helixflow.tables import fetch, publish_file
from helixflow.tasks.reads import BASE_CODE

_BASES = "ACGT"
_SKIP_FLAGS = 0x4 | 0x100 | 0x200 | 0x400  # unmapped, secondary, QC fail, duplicate
_CIGAR_ADVANCES_QUERY = (True, True, False, False, True, False, False, True, True)
_CIGAR_ADVANCES_REF = (True, False, True, True, False, False, False, True, True)
_MAX_QUAL = 999.0


@dataclass(frozen=True)
class VariantParams:
    """Thresholds of the caller. A site is called when it passes all of them.

    Attributes:
        min_depth: reads (bases passing the filters) covering the site.
        min_af: alt reads / depth.
        min_alt_reads: reads supporting the alt allele.
        min_base_quality: bases below this Phred quality are not counted (SNVs); an
            insertion needs all its bases at or above it.
        min_mapping_quality: reads below this MAPQ are ignored.
        min_qual: minimum QUAL (phred-scaled error probability) to report a call.
        snv_error_rate: per-base substitution error rate assumed for QUAL.
        indel_error_rate: per-read indel error rate assumed for QUAL.
        hom_af: AF from which the genotype is 1/1 instead of 0/1.
        max_indel_length: longer insertions/deletions in CIGARs are ignored.
        sample: sample name in the VCF; default the BAM's first read group SM.
    """

    min_depth: int = 8
    min_af: float = 0.2
    min_alt_reads: int = 3
    min_base_quality: int = 13
    min_mapping_quality: int = 20
    min_qual: float = 20.0
    snv_error_rate: float = 0.01
    indel_error_rate: float = 0.002
    hom_af: float = 0.8
    max_indel_length: int = 50
    sample: str | None = None

    def __post_init__(self) -> None:
        """Reject values outside their range here, not deep inside the caller."""
        checks = {
            "min_depth": self.min_depth >= 1,
            "min_alt_reads": self.min_alt_reads >= 1,
            "min_af": 0.0 <= self.min_af <= 1.0,
            "min_base_quality": 0 <= self.min_base_quality <= 93,
            "min_mapping_quality": 0 <= self.min_mapping_quality <= 255,
            "min_qual": self.min_qual >= 0,
            "snv_error_rate": 0.0 < self.snv_error_rate < 1.0,
            "indel_error_rate": 0.0 < self.indel_error_rate < 1.0,
            "hom_af": 0.0 < self.hom_af <= 1.0,
            "max_indel_length": self.max_indel_length >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(f"VariantParams out of range: {values}")


@dataclass
class VariantCounts:
    """What a call wrote: positions with enough depth, and records by kind."""

    contigs: int = 0
    callable_bases: int = 0
    snvs: int = 0
    insertions: int = 0
    deletions: int = 0
    records: int = 0

    @property
    def indels(self) -> int:
        return self.insertions + self.deletions

    def as_dict(self) -> dict[str, int]:
        """Plain dict, for artifacts and logs."""
        return asdict(self)


@dataclass(frozen=True)
class _Call:
    """One VCF record before writing: 0-based anchor position, alleles, evidence."""

    pos: int
    ref: str
    alts: tuple[str, ...]
    depth: int
    alt_counts: tuple[int, ...]
    qual: float
    indel: bool


# --------------------------------------------------------------------------------------
# Reference


def read_fasta(path: Path) -> dict[str, str]:
    """Contig name -> upper-case sequence of a (gzipped) FASTA file, in file order.

    Raises InputError for a missing file, text that is not FASTA, or a duplicate name.

    Args:
        path: a plain or gzipped FASTA file (ASCII).

    Returns:
        {contig name (first word of the header): sequence}.

    Raises:
        InputError: a missing or unreadable file, not FASTA, a header without a name, a
            duplicate name, or no record.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "reference FASTA not found", hint="check the path")
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    contigs: dict[str, list[str]] = {}
    current: list[str] | None = None
    try:
        with opener(path, "rt", encoding="ascii") as fh:
            for number, line in enumerate(fh, 1):
                if line.startswith(">"):
                    name = line[1:].split(maxsplit=1)[0] if line[1:].strip() else ""
                    if not name:
                        raise InputError(str(path), "FASTA header without a name", record=number)
                    if name in contigs:
                        raise InputError(str(path), f"duplicate contig name {name!r}",
                                         record=number)
                    current = contigs[name] = []
                elif current is None:
                    if line.strip():
                        raise InputError(str(path), "not a FASTA file (no '>' header first)",
                                         hint="pass the reference genome as FASTA")
                else:
                    current.append(line.strip())
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise InputError(str(path), f"unreadable reference ({exc})") from None
    if not contigs:
        raise InputError(str(path), "reference FASTA holds no sequence")
    return {name: "".join(parts).upper() for name, parts in contigs.items()}


def _check_bam(bam: Path, reference: dict[str, str], reference_path: Path) -> None:
    """Raise unless the BAM is indexed and its contigs are the reference's (names, lengths)."""
    if not Path(bam).is_file():
        raise InputError(str(bam), "BAM not found")
    with pysam.AlignmentFile(str(bam), "rb") as fh:
        if not fh.has_index():
            raise InputError(str(bam), "BAM has no index (.bai)",
                             hint=f"run `samtools index {bam}` (merge_bams writes it)")
        for name, length in zip(fh.references, fh.lengths, strict=True):
            if name not in reference:
                raise HelixflowError(
                    f"reference {reference_path} does not match {bam}: contig {name!r} "
                    "of the BAM is not in the reference",
                    hint="call variants with the FASTA the reads were aligned to",
                )
            if len(reference[name]) != length:
                raise HelixflowError(
                    f"reference {reference_path} does not match {bam}: contig {name!r} is "
                    f"{length} bp in the BAM but {len(reference[name])} bp in the reference",
                    hint="call variants with the FASTA the reads were aligned to",
                )


def _sample_name(bam: Path, params: VariantParams) -> str:
    if params.sample:
        return params.sample
    with pysam.AlignmentFile(str(bam), "rb") as fh:
        for group in fh.header.to_dict().get("RG", []):
            if group.get("SM"):
                return str(group["SM"])
    return Path(bam).name.split(".")[0] or "sample"


# --------------------------------------------------------------------------------------
# Statistics


def phred_binomial_tail(alt: np.ndarray, depth: np.ndarray, rate: float) -> np.ndarray:
    """-10 log10 P(X >= alt) for X ~ Binomial(depth, rate), capped at 999.

    Args:
        alt: alternate-allele read counts.
        depth: read depths, one per entry of `alt`.
        rate: the per-read error rate, 0 < rate < 1.

    Returns:
        float64 Phred scores, 0.0 where alt <= 0, at most 999.

    Example:
        >>> float(phred_binomial_tail(np.array([0]), np.array([10]), 0.01)[0])
        0.0
    """
    alt = np.asarray(alt, dtype=np.int64)
    depth = np.asarray(depth, dtype=np.int64)
    out = np.empty(len(alt), dtype=np.float64)
    log_p, log_q = math.log(rate), math.log1p(-rate)
    for i, (k, n) in enumerate(zip(alt.tolist(), depth.tolist(), strict=True)):
        if k <= 0:
            out[i] = 0.0
            continue
        ks = np.arange(k, n + 1)
        terms = (math.lgamma(n + 1) - np.array([math.lgamma(j + 1) + math.lgamma(n - j + 1)
                                                for j in ks.tolist()])
                 + ks * log_p + (n - ks) * log_q)
        top = terms.max()
        log10_tail = (top + math.log(np.exp(terms - top).sum())) / math.log(10)
        out[i] = min(_MAX_QUAL, max(0.0, -10.0 * log10_tail))
    return out


# --------------------------------------------------------------------------------------
# Calling


class _ReadFilter:
    """count_coverage read_callback: primary, mapped, not QC-fail/duplicate, MAPQ high enough."""

    def __init__(self, min_mapq: int) -> None:
        self.min_mapq = min_mapq

    def __call__(self, read: pysam.AlignedSegment) -> bool:
        return not (read.flag & _SKIP_FLAGS) and read.mapping_quality >= self.min_mapq


def _snv_calls(counts: np.ndarray, ref_codes: np.ndarray, params: VariantParams) -> list[_Call]:
    """SNV calls of a contig from its (4, L) A/C/G/T counts; vectorised over positions."""
    depth = counts.sum(axis=0)
    alt_counts = counts.copy()
    ok_ref = ref_codes < 4
    alt_counts[ref_codes[ok_ref], np.flatnonzero(ok_ref)] = 0  # the ref base is no alt
    alt_counts[:, ~ok_ref] = 0  # no calls where the reference is N or ambiguous
    with np.errstate(divide="ignore", invalid="ignore"):
        af = np.where(depth > 0, alt_counts / np.maximum(depth, 1), 0.0)
    passing = (alt_counts >= params.min_alt_reads) & (af >= params.min_af) \
        & (depth >= params.min_depth)
    sites = np.flatnonzero(passing.any(axis=0))
    calls = []
    for pos in sites.tolist():
        bases = [b for b in np.argsort(-alt_counts[:, pos], kind="stable").tolist()
                 if passing[b, pos]]
        alts = tuple(_BASES[b] for b in bases)
        n_alt = tuple(int(alt_counts[b, pos]) for b in bases)
        qual = float(phred_binomial_tail(np.array([sum(n_alt)]), np.array([depth[pos]]),
                                         params.snv_error_rate / 3)[0])
        if qual >= params.min_qual:
            calls.append(_Call(pos, _BASES[int(ref_codes[pos])], alts, int(depth[pos]), n_alt,
                               qual, indel=False))
    return calls


def left_align(ref: str, pos: int, deleted: int, inserted: str) -> tuple[int, str]:
    """Leftmost equivalent position of an indel (as `bcftools norm -f` shifts it).

    A deletion is `deleted` bases of `ref` from 0-based `pos`; an insertion puts
    `inserted` before `pos`. Returns the new `pos` and the (rotated) inserted bases.

    Args:
        ref: the contig sequence.
        pos: 0-based position of the indel.
        deleted: bases deleted; 0 for an insertion.
        inserted: the inserted bases; "" for a deletion.

    Returns:
        (leftmost 0-based position, inserted bases rotated to it; "" for a deletion).

    Example:
        >>> left_align("GAAAT", 3, 1, "")  # delete the last A of the run
        (1, '')
        >>> left_align("GAAAT", 4, 0, "A")  # insert an A after the run
        (1, 'A')
    """
    if deleted:
        while pos > 0 and ref[pos - 1] == ref[pos + deleted - 1]:
            pos -= 1
        return pos, ""
    while pos > 0 and inserted and ref[pos - 1] == inserted[-1]:
        inserted = inserted[-1] + inserted[:-1]
        pos -= 1
    return pos, inserted


def _indel_events(fh: pysam.AlignmentFile, contig: str, ref: str,
                  params: VariantParams) -> Counter[tuple[int, int, str]]:
    """Counts of left-aligned indels in the CIGARs: (pos, deleted length, inserted bases)."""
    events: Counter[tuple[int, int, str]] = Counter()
    keep = _ReadFilter(params.min_mapping_quality)
    min_bq, max_len = params.min_base_quality, params.max_indel_length
    for read in fh.fetch(contig):
        if not keep(read):
            continue
        cigar = read.cigartuples
        if cigar is None or len(cigar) == 1:
            continue
        if not any(op in (1, 2) for op, _ in cigar):
            continue
        rpos, qpos = read.reference_start, 0
        seq = read.query_sequence or ""
        quals = read.query_qualities
        last = len(cigar) - 1
        for i, (op, length) in enumerate(cigar):
            if op == 1 and 0 < i < last and length <= max_len:  # insertion inside the read
                bases = seq[qpos:qpos + length]
                if quals is None or min(quals[qpos:qpos + length]) >= min_bq:
                    events[_key(ref, rpos, 0, bases)] += 1
            elif op == 2 and 0 < i < last and length <= max_len:
                events[_key(ref, rpos, length, "")] += 1
            if _CIGAR_ADVANCES_QUERY[op]:
                qpos += length
            if _CIGAR_ADVANCES_REF[op]:
                rpos += length
    return events


def _key(ref: str, pos: int, deleted: int, inserted: str) -> tuple[int, int, str]:
    """Event key (pos, deleted length, inserted bases) after left-alignment."""
    pos, inserted = left_align(ref, pos, deleted, inserted)
    return pos, deleted, inserted


def _indel_calls(events: Counter[tuple[int, int, str]], depth: np.ndarray, ref: str,
                 params: VariantParams) -> list[_Call]:
    """Indel calls from event counts; depth is taken at the anchor base (pos - 1)."""
    calls = []
    for (pos, deleted, inserted), n in sorted(events.items()):
        if pos == 0 or n < params.min_alt_reads:
            continue  # VCF anchors an indel on the base before it; none at position 0
        anchor = pos - 1
        dp = max(int(depth[anchor]), n)
        if dp < params.min_depth or n / dp < params.min_af:
            continue
        qual = float(phred_binomial_tail(np.array([n]), np.array([dp]),
                                         params.indel_error_rate)[0])
        if qual < params.min_qual:
            continue
        if deleted:
            ref_allele, alt = ref[anchor:pos + deleted], ref[anchor]
        else:
            ref_allele, alt = ref[anchor], ref[anchor] + inserted
        calls.append(_Call(anchor, ref_allele, (alt,), dp, (n,), qual, indel=True))
    return calls


def _header(reference: dict[str, str], reference_name: str, sample: str,
            params: VariantParams) -> pysam.VariantHeader:
    header = pysam.VariantHeader()
    header.add_line("##source=helixflow.tasks.variants")
    header.add_line(f"##reference={reference_name}")
    header.add_line(f"##helixflowVariantParams={asdict(params)}".replace(" ", ""))
    for name, seq in reference.items():
        header.contigs.add(name, length=len(seq))
    header.add_meta("INFO", items=[("ID", "DP"), ("Number", "1"), ("Type", "Integer"),
                                   ("Description", "Depth of bases passing the filters")])
    header.add_meta("INFO", items=[("ID", "AF"), ("Number", "A"), ("Type", "Float"),
                                   ("Description", "Allele frequency: alt reads / DP")])
    header.add_meta("INFO", items=[("ID", "INDEL"), ("Number", "0"), ("Type", "Flag"),
                                   ("Description", "Insertion or deletion")])
    header.add_meta("FORMAT", items=[("ID", "GT"), ("Number", "1"), ("Type", "String"),
                                     ("Description", "Genotype")])
    header.add_meta("FORMAT", items=[("ID", "DP"), ("Number", "1"), ("Type", "Integer"),
                                     ("Description", "Read depth")])
    header.add_meta("FORMAT", items=[("ID", "AD"), ("Number", "R"), ("Type", "Integer"),
                                     ("Description", "Reads per allele (ref, alts)")])
    header.add_sample(sample)
    return header


def _genotype(call: _Call, hom_af: float) -> tuple[int, int]:
    fractions = [n / call.depth for n in call.alt_counts]
    if len(fractions) > 1 and fractions[1] >= 1 - hom_af:
        return (1, 2)
    return (1, 1) if fractions[0] >= hom_af else (0, 1)


def _contig_calls(fh: pysam.AlignmentFile, contig: str, ref: str, params: VariantParams,
                  counts: VariantCounts) -> Iterator[_Call]:
    """All calls of one contig, in position order (SNVs before indels at one position)."""
    acgt = fh.count_coverage(contig, 0, len(ref), quality_threshold=params.min_base_quality,
                             read_callback=_ReadFilter(params.min_mapping_quality))
    cov = np.stack([np.frombuffer(c, dtype=np.dtype(c.typecode)) for c in acgt]).astype(np.int64)
    depth = cov.sum(axis=0)
    counts.callable_bases += int(np.count_nonzero(depth >= params.min_depth))
    ref_codes = BASE_CODE[np.frombuffer(ref.encode("ascii"), dtype=np.uint8)]
    calls = _snv_calls(cov, ref_codes, params)
    calls += _indel_calls(_indel_events(fh, contig, ref, params), depth, ref, params)
    calls.sort(key=lambda c: (c.pos, c.indel, c.ref, c.alts))
    yield from calls


def call_variants(bam: Path, reference: Path, out_vcf_gz: Path,
                  params: VariantParams = VariantParams(), *,
                  reference_uri: str | None = None) -> VariantCounts:
    """Call SNVs and short indels from an aligned, indexed BAM into a bgzipped, indexed VCF.

    Args:
        bam: coordinate-sorted BAM with its .bai (as merge_bams writes).
        reference: the FASTA the reads were aligned to (plain or gzip).
        out_vcf_gz: VCF to write (bgzip); `out_vcf_gz` + ".tbi" is written too. Both
            appear atomically.
        params: thresholds.
        reference_uri: the reference as the user named it, for the header's ##reference
            (default: `reference` as a file:// URI). Pass it when `reference` is a
            temporary copy: the same inputs must give the same bytes wherever they run.

    Returns:
        VariantCounts: contigs, positions with depth >= min_depth, SNV/indel records.

    Raises:
        InputError: a missing or malformed BAM or reference, or a BAM without index.
        HelixflowError: the reference is not the one the BAM was aligned to.

    Example:
        >>> call_variants(Path("S1.bam"), Path("ref.fa"), Path("S1.vcf.gz"),
        ...               VariantParams(min_af=0.3))  # doctest: +SKIP
        VariantCounts(contigs=1, callable_bases=48502, snvs=100, insertions=9, ...)
    """
    ref_seqs = read_fasta(Path(reference))
    _check_bam(Path(bam), ref_seqs, Path(reference))
    sample = _sample_name(Path(bam), params)
    out = Path(out_vcf_gz)
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = VariantCounts()
    header = _header(ref_seqs, reference_uri or Path(reference).resolve().as_uri(), sample,
                     params)
    # Named .vcf.gz/.tbi as tabix expects; the index lands first, then the VCF.
    with atomic_path(out, suffix=".vcf.gz") as tmp, \
            atomic_path(f"{out}.tbi", suffix=".tbi") as tmp_tbi:
        with pysam.AlignmentFile(str(bam), "rb") as fh, \
                pysam.VariantFile(str(tmp), "wz", header=header) as vcf:
            for contig in fh.references:
                counts.contigs += 1
                for call in _contig_calls(fh, contig, ref_seqs[contig], params, counts):
                    record = vcf.new_record(
                        contig=contig, start=call.pos, alleles=(call.ref, *call.alts),
                        qual=round(call.qual, 2), filter="PASS",
                    )
                    record.info["DP"] = call.depth
                    record.info["AF"] = tuple(round(n / call.depth, 4) for n in call.alt_counts)
                    if call.indel:
                        record.info["INDEL"] = True
                        if len(call.ref) > 1:
                            counts.deletions += 1
                        else:
                            counts.insertions += 1
                    else:
                        counts.snvs += 1
                    fmt = record.samples[sample]
                    fmt["GT"] = _genotype(call, params.hom_af)
                    fmt["DP"] = call.depth
                    ref_reads = max(0, call.depth - sum(call.alt_counts)) if not call.indel \
                        else max(0, call.depth - call.alt_counts[0])
                    fmt["AD"] = (ref_reads, *call.alt_counts)
                    vcf.write(record)
                    counts.records += 1
        pysam.tabix_index(str(tmp), preset="vcf", force=True, index=str(tmp_tbi))
    return counts


# --- Prefect task ----------------------------------------------------------------------

VARIANTS_VERSION = "2"
"""Bump when the bytes written for the same input and parameters change (cache keys).
2: the header's ##reference is the reference's URI as given, never a scratch copy's path."""


class SampleVariants(BaseModel):
    vcf: Artifact
    tbi: Artifact
    counts: dict[str, int]


@materialize("helixflow://variants", name="call-variants", task_run_name="variants-{sample}",
             **stage_options(VARIANTS_VERSION))
def call_sample_variants(
    sample: str, bam: FileRef, bai: FileRef | None, reference: FileRef, params: VariantParams,
    store: Store, run_id: str,
) -> SampleVariants:
    """SNVs and small indels of one sample → `<sample>.vcf.gz` + `.tbi` (bcftools-readable).

    `bai` may be None (a user's BAM without an index): the BAM is then indexed in scratch.

    Args:
        sample: the sample name; names the outputs and the task run.
        bam: the sample's coordinate-sorted BAM.
        bai: its index, or None.
        reference: the reference FASTA the BAM was aligned to.
        params: variant-calling settings.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifacts belong to.

    Returns:
        SampleVariants with the VCF and tabix index artifacts and the record counts.

    Raises:
        InputError: a missing or malformed BAM or reference.
        HelixflowError: the reference is not the one the BAM was aligned to.
    """
    with store.scratch() as scratch:
        bam_path = fetch(store, bam, scratch, name=f"{sample}.bam")
        if not Path(f"{bam_path}.bai").exists():
            if bam_path.parent != scratch:  # never write next to a user's file
                (scratch / f"{sample}.bam").symlink_to(bam_path)
                bam_path = scratch / f"{sample}.bam"
            if bai is not None:
                bai_path = fetch(store, bai, scratch, name=f"{sample}.bam.bai")
                if bai_path != Path(f"{bam_path}.bai"):
                    Path(f"{bam_path}.bai").symlink_to(bai_path)
            else:
                _index_bam(bam_path, display_name(bam.uri))
        ref_path = fetch(store, reference, scratch, name="reference.fa")
        out = scratch / f"{sample}.vcf.gz"
        with naming_sources({bam_path: display_name(bam.uri),
                             ref_path: display_name(reference.uri)}):
            counts = call_variants(bam_path, ref_path, out, params, reference_uri=reference.uri)
        common = {"run_id": run_id, "stage": "variants", "producer": "call-variants",
                  "params": dataclasses.asdict(params)}
        bam_ref = FileRef(uri=bam.uri, size=bam.size, sha256=bam.sha256, etag=bam.etag)
        vcf = publish_file(store, out, media_type="application/x-bgzip-vcf",
                           rows=counts.records, upstream=[bam_ref, reference],
                           metadata={"counts": counts.as_dict()}, **common)
        tbi = publish_file(store, Path(f"{out}.tbi"), media_type="application/octet-stream",
                           upstream=[vcf.ref()], **common)
    return SampleVariants(vcf=vcf, tbi=tbi, counts=counts.as_dict())


def _index_bam(path: Path, shown: str) -> None:
    """`samtools index` through pysam; an unsorted or broken BAM is the user's to fix."""
    try:
        pysam.index(str(path))
    except pysam.SamtoolsError as exc:
        raise InputError(shown, f"cannot index the BAM ({str(exc).strip()})",
                         hint="give a coordinate-sorted BAM (samtools sort)") from None
