"""Annotation tasks: ORFs and motif sites on a reference or contigs FASTA.

The kernels are `tasks.orfs` (six-frame ORF search) and `tasks.motifs` (IUPAC consensus
and PWM scanning); this module is their I/O edge: fetch the FASTA, run, publish tables.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact, FileRef
from helixflow.caching import stage_options
from helixflow.store import Store
from helixflow.tables import fetch, publish_table
from tasks.motifs import find_consensus
from tasks.orfs import OrfParams, find_orfs

ANNOTATE_VERSION = "1"

# Default consensus motifs: a few restriction sites, E. coli's Chi site and the
# Shine-Dalgarno core; users pass their own (IUPAC) through the flow's parameters.
DEFAULT_MOTIFS: dict[str, str] = {
    "EcoRI": "GAATTC",
    "BamHI": "GGATCC",
    "HindIII": "AAGCTT",
    "Chi": "GCTGGTGG",
    "Shine-Dalgarno": "AGGAGG",
}


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
    return name or "sequences"


@materialize(
    "helixflow://annotate",
    name="annotate-sequences",
    task_run_name="annotate-{fasta.name}",
    **stage_options(ANNOTATE_VERSION),
)
def annotate_sequences(
    fasta: FileRef,
    orf_params: OrfParams,
    motifs: dict[str, str],
    max_mismatches: int,
    store: Store,
    run_id: str,
) -> AnnotationResult:
    """Six-frame ORFs and consensus-motif sites (both strands) of every sequence in a FASTA."""
    with store.scratch() as scratch:
        path = fetch(store, fasta, scratch)
        orfs = find_orfs(path, orf_params)
        hits = [find_consensus(path, motif, name=name, max_mismatches=max_mismatches)
                for name, motif in sorted(motifs.items())]
        sites = pa.concat_tables(hits) if hits else pa.table({})
        counts = {name: 0 for name in motifs}
        if sites.num_rows:
            for name in sites.column("name").to_pylist():
                counts[name] = counts.get(name, 0) + 1
        stem = _stem(fasta)
        common = {"run_id": run_id, "stage": "annotate", "producer": "annotate-sequences",
                  "upstream": [fasta]}
        orf_art = publish_table(store, orfs, scratch, name=f"{stem}.orfs.parquet",
                                params=dataclasses.asdict(orf_params), **common)
        motif_art = publish_table(
            store, sites, scratch, name=f"{stem}.motifs.parquet",
            params={"motifs": motifs, "max_mismatches": max_mismatches},
            metadata={"counts": counts}, **common,
        )
    return AnnotationResult(orfs=orf_art, motifs=motif_art, orf_count=orfs.num_rows,
                            motif_counts=counts)
