"""`embed-refresh`: embed the store's read shards that have no embeddings of the methods
in service yet (the scheduled, nightly deployment).

Shards are found through lineage (every run's final, error-corrected read shards); the
embedding tasks are content-cached, so shards embedded before cost a cache lookup, not a
recomputation. Trained models come from a `ModelRegistry` block when one is named (vectors
stay comparable across nights), else they are trained on the shards being embedded.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from helixflow.artifacts import Artifact
from helixflow.blocks.models import ModelRegistry
from helixflow.blocks.store import resolve_store
from helixflow.errors import HelixflowError
from helixflow.flows.embed import EmbedParams, run_dnabert, run_kmer_embeddings, run_lshvec
from helixflow.flows.preprocess import stage_params
from helixflow.lineage import LineageGraph, LineageRecord, load_records
from helixflow.recorder import RunRecorder
from helixflow.runner import DeferredRayTaskRunner
from helixflow.store import Store

READS_STAGE = "correct"  # the reads every embedding method starts from


class RefreshSummary(BaseModel):
    """What one refresh embedded."""

    run_id: str
    shards: int
    reads: int
    embeddings: dict[str, int]
    executed: int
    cached: int


def read_shards(records: list[LineageRecord], since: datetime | None = None
                ) -> dict[str, list[Artifact]]:
    """The store's final read shards (one per content), by sample, oldest first."""
    seen: set[str] = set()
    out: dict[str, list[Artifact]] = {}
    for rec in sorted(records, key=lambda r: r.created_at):
        if rec.stage != READS_STAGE or rec.sha256 in seen:
            continue
        if since is not None and rec.created_at < since:
            continue
        seen.add(rec.sha256)
        sample = rec.uri.rsplit("/", 1)[-1].split(".corrected.", 1)[0]
        out.setdefault(sample, []).append(rec.artifact())
    return out


def pinned_lshvec(graph: LineageGraph, model_uri: str) -> tuple[Artifact, Artifact]:
    """(LSH hash, model) of a registered LSHvec model, the hash found through lineage."""
    model = graph.resolve(model_uri)
    if not isinstance(model, LineageRecord) or model.task_name != "train-lshvec":
        raise HelixflowError(f"{model_uri} is not an LSHvec model in this store",
                             hint="register the models/lshvec artifact of a run")
    for up in model.upstream:
        parent = graph.resolve(up.sha256 or up.uri)
        if isinstance(parent, LineageRecord) and parent.task_name == "fit-lsh":
            return parent.artifact(), model.artifact()
    raise HelixflowError(f"no LSH hash recorded upstream of {model_uri}")


@flow(name="embed-refresh", flow_run_name="{run_label}", log_prints=True,
      task_runner=DeferredRayTaskRunner())
def embed_refresh(
    store: str | None = None,
    store_block: str | None = None,
    methods: list[str] | None = None,
    embed_options: dict[str, Any] | None = None,
    model_block: str | None = None,
    since_days: float | None = None,
    run_label: str = "embed-refresh",
) -> RefreshSummary:
    """Embed read shards that lack embeddings of the methods in service.

    Args:
        store: store URL (default `$HELIXFLOW_STORE` or the local store)
        store_block: a saved `HelixflowStore` block
        methods: kmer, lshvec, dnabert (default kmer and lshvec)
        embed_options: fields of `flows.embed.EmbedParams`
        model_block: a saved `ModelRegistry` block naming the models in service
        since_days: only shards made in the last N days (default all)
        run_label: the flow run's display name
    """
    logger = get_run_logger()
    st: Store = resolve_store(store, store_block)
    run_id = str(runtime.flow_run.id)
    recorder = RunRecorder(st, run_id)
    registry = ModelRegistry.load(model_block) if model_block else ModelRegistry()
    chosen = methods or ["kmer", "lshvec"]
    options = {"kmer_k": registry.kmer_k, **(embed_options or {})}
    if registry.dnabert_checkpoint:
        options.setdefault("dnabert_model", registry.dnabert_checkpoint)
    params = stage_params(EmbedParams, {**options, "methods": chosen}, "embed")

    records = load_records(st)
    since = datetime.now(UTC) - timedelta(days=since_days) if since_days else None
    shards = read_shards(records, since)
    n_shards = sum(len(v) for v in shards.values())
    logger.info("%d read shard(s) of %d sample(s) in %s", n_shards, len(shards), st.url)
    counts: dict[str, int] = {}
    if shards:
        if "kmer" in params.methods:
            by_sample = run_kmer_embeddings(shards, params.kmer_k, st, run_id, recorder)
            counts[f"kmer{params.kmer_k}"] = sum(len(v) for v in by_sample.values())
        if "lshvec" in params.methods:
            pinned = (pinned_lshvec(LineageGraph(records), registry.lshvec_model)
                      if registry.lshvec_model else None)
            counts["lshvec"] = len(run_lshvec(shards, params, st, run_id, recorder, pinned))
        if "dnabert" in params.methods:
            _model, by_method = run_dnabert(shards, params, st, run_id, recorder)
            counts.update({m: len(v) for m, v in by_method.items()})
    recorder.flush()
    summary = RefreshSummary(
        run_id=run_id, shards=n_shards,
        reads=sum(a.rows or 0 for v in shards.values() for a in v),
        embeddings=counts, executed=recorder.executed, cached=recorder.cached)
    create_table_artifact(
        key="embed-refresh", description=f"Embedding refresh {run_id} of {st.url}",
        table=[{"method": m, "shards": n, "tasks executed": recorder.executed,
                "from cache": recorder.cached} for m, n in counts.items()])
    return summary
