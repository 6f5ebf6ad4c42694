"""The QC tasks: fastp 0.23.2 adapter detection once per sample, then trimming and
filtering per shard (the kernel is `tasks.qc_batch.filter_batch`; settings
`tasks.qc_params.QcParams`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact
from helixflow.caching import stage_options
from helixflow.store import Store
from helixflow.tables import as_batch, publish_table, read_table
from helixflow.tasks.qc_adapter_detect import DETECT_BASES, DETECT_READS
from helixflow.tasks.qc_batch import batch_layout, filter_batch, resolved_for
from helixflow.tasks.qc_params import QcParams
from helixflow.tasks.reads import string_parts

QC_VERSION = "2"  # 2: adapters detected from the reads as fastp does (was: a fixed list)


class QcResult(BaseModel):
    """One filtered shard (plus orphans when kept), its per-reason counts and the adapters
    searched (fastp's `read1_adapter_sequence`/`read2_adapter_sequence`, or "none")."""

    shard: Artifact
    orphans: Artifact | None = None
    counts: dict[str, int]
    adapters: dict[str, str] = {}


def sample_detection_reads(
    shards: list[Artifact], store: Store
) -> tuple[pa.Array | None, pa.Array | None]:
    """The first reads of a sample that fastp's adapter detection looks at, per mate, in
    file order: (mate-1 or single-end sequences, mate-2 sequences or None). Shards are
    read in order only until both mates have enough.

    Args:
        shards: the sample's read shards, in file order.
        store: the store holding them.

    Returns:
        (mate-1 or single-end sequences, mate-2 sequences); each None when the sample has
        no such reads.
    """
    parts: dict[int, list[pa.Array]] = {}
    have: dict[int, tuple[int, int]] = {}
    for shard in shards:
        table = read_table(store, shard, columns=["mate", "sequence"])
        mates = table.column("mate").to_numpy()
        for mate in np.unique(mates).tolist():
            reads, bases = have.get(mate, (0, 0))
            if reads >= DETECT_READS or bases >= DETECT_BASES:
                continue
            seqs = table.column("sequence").filter(pa.array(mates == mate)).combine_chunks()
            parts.setdefault(mate, []).append(seqs)
            lengths = np.diff(string_parts(seqs)[0])
            have[mate] = (reads + len(lengths), bases + int(lengths.sum()))
        if have and all(r >= DETECT_READS or b >= DETECT_BASES for r, b in have.values()):
            break
    joined = {m: pa.concat_arrays(p) for m, p in parts.items()}
    return joined.get(1, joined.get(0)), joined.get(2)


@task(name="detect-adapters", task_run_name="adapters-{sample}", **stage_options(QC_VERSION))
def detect_sample_adapters(
    sample: str, shards: list[Artifact], params: QcParams, store: Store
) -> QcParams:
    """`params` with the adapters fastp would detect in the sample's first reads filled in,
    once per sample so that all its shards trim the same adapters.

    Args:
        sample: the sample name, for the task run.
        shards: the sample's read shards, in file order.
        params: the QC settings; a mate whose adapter is already set, or is not to be
            detected, is left alone.
        store: the store holding the shards.

    Returns:
        `params` with detected_adapter_r1 / detected_adapter_r2 filled in.

    Example:
        >>> params = detect_sample_adapters("ecoli", shards, QcParams(), store)  # doctest: +SKIP
        >>> params.detected_adapter_r1  # doctest: +SKIP
        'GCATCCGGCA'
    """
    return params.with_detected(*sample_detection_reads(shards, store))


@materialize(
    "helixflow://qc",
    name="filter-reads",
    task_run_name="qc-{shard.name}",
    **stage_options(QC_VERSION),
)
def filter_reads(shard: Artifact, params: QcParams, store: Store, run_id: str) -> QcResult:
    """Trim and filter one read shard with fastp's semantics; publish survivors (and orphans).

    `params` should already be `resolved()` for the sample (polyG decided once per file).

    Args:
        shard: a Parquet read shard (READS_SCHEMA).
        params: the QC settings, resolved for the sample.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifacts belong to.

    Returns:
        QcResult with the kept reads (".reads." in the name becomes ".qc."), the orphaned
        mates (None when there are none), per-reason counts and the adapters searched.
    """
    batch = as_batch(read_table(store, shard))
    params = resolved_for(batch, params)  # a no-op when the flow resolved them per sample
    kept, orphans, counts = filter_batch(batch, params)
    base = shard.name.removesuffix(".parquet").replace(".reads.", ".qc.")
    common = {"run_id": run_id, "stage": "qc", "producer": "filter-reads",
              "params": dataclasses.asdict(params), "upstream": [shard.ref()]}
    with store.scratch() as scratch:
        out = publish_table(store, kept, scratch, name=f"{base}.parquet",
                            metadata={"counts": counts.to_dict()}, **common)
        lone = None
        if orphans is not None and orphans.num_rows:
            lone = publish_table(store, orphans, scratch, name=f"{base}.orphans.parquet",
                                 **common)
    paired = batch_layout(batch)[0]
    return QcResult(shard=out, orphans=lone, counts=counts.to_dict(),
                    adapters=params.adapter_report(paired))
