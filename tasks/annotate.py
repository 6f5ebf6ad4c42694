"""Annotation tasks: ORFs and motif sites on a reference or contigs FASTA.

The kernels are `tasks.orfs` (six-frame ORF search) and `tasks.motifs` (IUPAC consensus
and PWM scanning); this module is their I/O edge: fetch the FASTA, run, publish tables.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
from prefect.assets import materialize
from pydantic import BaseModel, Field, field_validator

from helixflow.artifacts import Artifact, FileRef
from helixflow.caching import stage_options
from helixflow.errors import InputError, naming_sources
from helixflow.samples import safe_name
from helixflow.store import Store
from helixflow.tables import fetch, publish_table
from helixflow.tasks.motif_matrices import PWM, pwm_from_counts
from helixflow.tasks.motif_parsers import parse_jaspar, parse_meme
from helixflow.tasks.motifs import IUPAC, find_consensus, scan_pwms
from helixflow.tasks.orfs import OrfParams, find_orfs
from helixflow.uris import display_name

ANNOTATE_VERSION = "2"

# Default consensus motifs: a few restriction sites, E. coli's Chi site and the
# Shine-Dalgarno core; users pass their own (IUPAC) through the flow's parameters.
DEFAULT_MOTIFS: dict[str, str] = {
    "EcoRI": "GAATTC",
    "BamHI": "GGATCC",
    "HindIII": "AAGCTT",
    "Chi": "GCTGGTGG",
    "Shine-Dalgarno": "AGGAGG",
}


class MotifParams(BaseModel):
    """Which motifs to look for and how strictly.

    Example:
        >>> MotifParams(consensus={"EcoRI": "GAATTC"}, max_mismatches=0, p_value=1e-5)
        MotifParams(consensus={'EcoRI': 'GAATTC'}, max_mismatches=0, pwm_files=[], p_value=1e-05)
    """

    consensus: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MOTIFS))
    """IUPAC consensus motifs, name → letters, searched on both strands."""
    max_mismatches: int = Field(0, ge=0)
    """Positions of a consensus site allowed not to match."""
    pwm_files: list[FileRef] = Field(default_factory=list)
    """Position weight matrices in JASPAR or MEME minimal format (told apart by content)."""
    p_value: float = Field(1e-4, gt=0, le=1)
    """Largest p-value of a reported PWM site (FIMO's default)."""

    @field_validator("consensus")
    @classmethod
    def _iupac(cls, value: dict[str, str]) -> dict[str, str]:
        for name, motif in value.items():
            bad = sorted({c for c in motif.upper() if c not in IUPAC})
            if not motif or bad:
                raise ValueError(f"motif {name}={motif!r} is not IUPAC letters (bad: {bad})")
        return value


def load_pwms(path: Path, shown: str) -> list[PWM]:
    """Every matrix of a JASPAR or MEME minimal-format file as a log-odds PWM.

    Args:
        path: the local motif file (UTF-8 text).
        shown: the name to use for the file in error messages.

    Returns:
        One PWM per matrix, in file order.

    Raises:
        InputError: the file is unreadable, malformed, or holds no matrix.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(shown, f"unreadable motif file ({exc})") from None
    matrices = (parse_meme(text, shown) if text.lstrip().startswith("MEME version")
                else parse_jaspar(text, shown))
    if not matrices:
        raise InputError(shown, "no motif matrix in the file",
                         hint="give JASPAR (>ID name + A/C/G/T rows) or MEME minimal format")
    return [pwm_from_counts(m) for m in matrices]


class AnnotationResult(BaseModel):
    """ORF and motif tables for one FASTA, with counts for the report."""

    orfs: Artifact
    motifs: Artifact
    orf_count: int
    motif_counts: dict[str, int]


def _stem(ref: FileRef) -> str:
    name = ref.name
    for ext in (".gz", ".fasta", ".fa", ".fna"):
        name = name.removesuffix(ext)
    return safe_name(name, fallback="sequences")  # a file name in scratch and the store


@materialize(
    "helixflow://annotate",
    name="annotate-sequences",
    task_run_name="annotate-{fasta.name}",
    **stage_options(ANNOTATE_VERSION),
)
def annotate_sequences(
    fasta: FileRef,
    orf_params: OrfParams,
    motifs: MotifParams,
    store: Store,
    run_id: str,
) -> AnnotationResult:
    """Six-frame ORFs, consensus-motif and PWM sites (both strands) of every sequence in a
    FASTA, as two Parquet tables (the motif table is BED-like: seq_id, start, end, …).

    Args:
        fasta: the FASTA to annotate.
        orf_params: ORF search settings.
        motifs: the consensus motifs, PWM files and thresholds to search.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifacts belong to.

    Returns:
        AnnotationResult with the ORF and motif-site table artifacts, the ORF count and the
        number of sites per motif name (0 for motifs without a site).

    Raises:
        InputError: the FASTA or a motif file is malformed.
    """
    with store.scratch() as scratch:
        path = fetch(store, fasta, scratch)
        with naming_sources({path: display_name(fasta.uri)}):
            orfs = find_orfs(path, orf_params)
        hits = [find_consensus(path, motif, name=name, max_mismatches=motifs.max_mismatches)
                for name, motif in sorted(motifs.consensus.items())]
        pwms: list[PWM] = []
        for i, ref in enumerate(motifs.pwm_files):
            local = fetch(store, ref, scratch, name=f"motifs{i}.txt")
            pwms.extend(load_pwms(local, display_name(ref.uri)))
        if pwms:
            hits.append(scan_pwms(path, pwms, p_threshold=motifs.p_value))
        sites = pa.concat_tables(hits) if hits else pa.table({})
        counts = {name: 0 for name in [*motifs.consensus, *(p.name for p in pwms)]}
        if sites.num_rows:
            for name in sites.column("name").to_pylist():
                counts[name] = counts.get(name, 0) + 1
        stem = _stem(fasta)
        common = {"run_id": run_id, "stage": "annotate", "producer": "annotate-sequences"}
        orf_art = publish_table(store, orfs, scratch, name=f"{stem}.orfs.parquet",
                                params=dataclasses.asdict(orf_params), upstream=[fasta], **common)
        motif_art = publish_table(
            store, sites, scratch, name=f"{stem}.motifs.parquet",
            params=motifs.model_dump(mode="json"), metadata={"counts": counts},
            upstream=[fasta, *motifs.pwm_files], **common,
        )
    return AnnotationResult(orfs=orf_art, motifs=motif_art, orf_count=orfs.num_rows,
                            motif_counts=counts)
