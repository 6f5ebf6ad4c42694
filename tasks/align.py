"""The alignment tasks: align each read shard into a sorted BAM part (`align_reads`),
then merge a sample's parts into one indexed BAM (`merge_alignments`). The kernel is
`tasks.align_map.align_batch`, the index `tasks.align_index`.
"""

from __future__ import annotations

from pathlib import Path

import mappy
from prefect import task
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact, FileRef
from helixflow.caching import stage_options
from helixflow.store import Store
from helixflow.tables import as_batch, fetch, publish_file, read_table
from helixflow.tasks.align_index import build_index
from helixflow.tasks.align_map import AlignCounts, align_batch
from helixflow.tasks.bam import (
    BAM_MEDIA_TYPE,
    merge_bams,
    read_group_for,
)
from helixflow.tools import tool_version

ALIGN_VERSION = "3"
"""Bump when the bytes written for the same input change (goes into cache keys).
3: headers carry no paths (no scratch, store or index path in @PG lines)."""

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
