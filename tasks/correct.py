"""Spectrum-based substitution error correction of short reads: the tasks.

Why: sequencing errors make k-mers that occur once or twice in a 30x data set, while
k-mers of the genome occur about coverage x (L - k + 1) / L times. Counting every
canonical k-mer of the whole data set and keeping the frequent ("solid") ones gives a
reference-free dictionary; a base whose k-mers are all weak, and which becomes solid in
all of them with one other base, is an error (the idea of Quake, SEC and Lighter).

Phases (each a pure function, distributed by the pipeline through the tasks here):

1. `count_kmers` per shard, `merge_counts` per sample (`tasks.correct_spectrum`);
2. `kmer_histogram` and `solid_threshold`: the valley between the error peak and the
   coverage peak; `SolidKmers` holds the k-mers at or above it (`tasks.correct_spectrum`);
3. `correct_batch` per shard: weak stretches, the base next to a solid k-mer tried with
   the three others, accepted when exactly one makes the k-mers solid
   (`tasks.correct_substitutions`).

Example (error-free reads of a 60-base genome, three times over, and one read with an
error at base 20):
    >>> import pyarrow as pa
    >>> genome = "GATTTGGTCGTGAGCCGCAGACTAACAGTACTACCCGTTCGCATGCCAGCTGACAATCCG"
    >>> reads = [genome[i : i + 40] for i in range(21)] * 3
    >>> wrong = reads[0][:20] + "T" + reads[0][21:]
    >>> batch = pa.table({"sequence": [*reads, wrong], "quality": ["I" * 40] * 64})
    >>> counts = merge_counts([count_kmers(batch.slice(0, 32), 11),
    ...                        count_kmers(batch.slice(32), 11)])
    >>> threshold = solid_threshold(kmer_histogram(counts))
    >>> threshold
    2
    >>> solid = SolidKmers.from_counts(counts, threshold, k=11)
    >>> fixed, stats = correct_batch(batch, solid, k=11)
    >>> fixed.column("sequence")[63].as_py() == reads[0], stats.corrected_bases
    (True, 1)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.compute as pc
from prefect import get_run_logger, task
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact
from helixflow.caching import stage_options
from helixflow.store import Store
from helixflow.tables import as_batch, publish_table, read_table
from helixflow.tasks.correct_spectrum import (
    SolidKmers,
    count_kmers,
    kmer_histogram,
    merge_counts,
    solid_threshold,
)
from helixflow.tasks.correct_substitutions import CorrectionCounts, CorrectionParams, correct_batch

CORRECT_VERSION = "2"

class SolidSet(BaseModel):
    """The solid k-mers of a sample, the histogram and the threshold that chose them."""

    kmers: Artifact
    k: int
    threshold: int
    histogram: list[int]
    skipped: str | None = None  # why correction is skipped (e.g. coverage too low)


class CorrectResult(BaseModel):
    shard: Artifact
    counts: dict[str, int]


@task(name="count-kmers", task_run_name="kmers-{shard.name}", **stage_options(CORRECT_VERSION))
def count_shard_kmers(shard: Artifact, k: int, store: Store, run_id: str) -> Artifact:
    """Canonical k-mer counts of one shard (sorted, exact).

    Args:
        shard: a Parquet read shard (READS_SCHEMA; only `sequence` is read).
        k: the k-mer length, 1..31.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        The COUNTS_SCHEMA table artifact, named `<shard>.k<k>.parquet`.
    """
    counts = count_kmers(read_table(store, shard, columns=["sequence"]), k)
    with store.scratch() as scratch:
        return publish_table(store, counts, scratch, run_id=run_id, stage="kmers",
                             name=shard.name.replace(".parquet", f".k{k}.parquet"),
                             producer="count-kmers", params={"k": k}, upstream=[shard.ref()])


@task(name="solid-kmers", task_run_name="solid-kmers-{sample}", **stage_options(CORRECT_VERSION))
def choose_solid_kmers(
    sample: str, counts: list[Artifact], k: int, threshold: int | None, store: Store, run_id: str
) -> SolidSet:
    """Merge shard counts; solid = count >= threshold (first valley of the histogram).

    With no valley in the histogram (and no `threshold`), the sample is marked skipped
    (a warning is logged) and its reads later pass through uncorrected.

    Args:
        sample: the sample name; names the artifact and the task run.
        counts: the sample's per-shard count artifacts from `count_shard_kmers`.
        k: the k-mer length the counts were made with.
        threshold: the smallest count of a solid k-mer; None: `solid_threshold` of the
            merged histogram.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        SolidSet with the solid k-mer table artifact (`kmer` column only), k, the threshold
        used, the histogram (trailing zero bins dropped) and `skipped` (the reason, or None).
    """
    merged = merge_counts(read_table(store, c) for c in counts)
    hist = kmer_histogram(merged)
    skipped = None
    try:
        cut = threshold if threshold is not None else solid_threshold(hist)
    except ValueError as exc:
        # No error peak/valley to cut at (too little coverage): correcting against a
        # made-up threshold would damage reads, so the sample passes through unchanged.
        skipped = f"{sample}: no solid/weak valley in the k-mer histogram ({exc})"
        get_run_logger().warning("skipping error correction: %s", skipped)
        cut = int(hist.size)
    solid = merged.filter(pc.greater_equal(merged["count"], cut)).select(["kmer"])
    with store.scratch() as scratch:
        art = publish_table(store, solid, scratch, run_id=run_id, stage="kmers",
                            name=f"{sample}.solid-k{k}.parquet", producer="solid-kmers",
                            params={"k": k, "threshold": cut},
                            upstream=[c.ref() for c in counts])
    last = int(np.flatnonzero(hist)[-1]) + 1 if hist.any() else 0
    return SolidSet(kmers=art, k=k, threshold=cut, histogram=[int(x) for x in hist[:last]],
                    skipped=skipped)


@materialize("helixflow://correct", name="correct-reads", task_run_name="correct-{shard.name}",
             **stage_options(CORRECT_VERSION))
def correct_reads(
    shard: Artifact, solid: SolidSet, params: CorrectionParams, store: Store, run_id: str
) -> CorrectResult:
    """Correct one shard's substitution errors against the sample's solid k-mers.

    Args:
        shard: a deduplicated Parquet read shard (READS_SCHEMA).
        solid: the sample's solid k-mers; when `solid.skipped` is set the reads are published
            unchanged.
        params: correction settings.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        CorrectResult with the corrected shard (".dedup." in the name becomes ".corrected.")
        and the CorrectionCounts as a dict.
    """
    batch = as_batch(read_table(store, shard))
    if solid.skipped:
        corrected, counts = batch, CorrectionCounts(reads=batch.num_rows)
    else:
        kmers = read_table(store, solid.kmers).column("kmer").to_numpy()
        table = SolidKmers.from_kmers(kmers, solid.k)
        corrected, counts = correct_batch(batch, table, solid.k, params)
    name = shard.name.replace(".dedup.", ".corrected.")
    with store.scratch() as scratch:
        art = publish_table(store, corrected, scratch, run_id=run_id, stage="correct",
                            name=name, producer="correct-reads",
                            params={**dataclasses.asdict(params), "k": solid.k},
                            upstream=[shard.ref(), solid.kmers.ref()])
    return CorrectResult(shard=art, counts=dataclasses.asdict(counts))
