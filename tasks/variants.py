"""The variant-calling task: SNVs and short indels of one sample's BAM → bgzipped,
tabix-indexed VCF in the store (the caller is `tasks.variant_caller.call_variants`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pysam
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact, FileRef
from helixflow.caching import stage_options
from helixflow.errors import InputError, naming_sources
from helixflow.store import Store
from helixflow.tables import fetch, publish_file
from helixflow.tasks.variant_caller import VariantParams, call_variants
from helixflow.uris import display_name

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
