"""`embed-refresh` on the real server and Ray: the store's shards without embeddings get
them, with the LSHvec model named in a `ModelRegistry` block (never retrained)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.app.launch import launch_flow, launch_pipeline
from helixflow.blocks.models import ModelRegistry
from helixflow.flows.refresh import embed_refresh
from helixflow.lineage import load_records
from helixflow.store import Store

pytestmark = pytest.mark.integration

SMALL_LSHVEC = {"lshvec_dim": 16, "lshvec_epochs": 1, "lshvec_workers": 1}


def test_refresh_embeds_new_shards_with_the_registered_model(
    prefect_api: str, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    demos = [write_demo(tmp_path / name, DemoSpec(seed=seed, n_pairs=1200, n_genomes=2,
                                                  genome_length=10_000))
             for name, seed in (("a", 1), ("b", 2))]
    first = launch_pipeline([str(demos[0].r1), str(demos[0].r2)], store=str(store_dir),
                            embed_methods=["lshvec"], embed_options=SMALL_LSHVEC,
                            simulate=False, shard_size=1000)
    assert first.error is None, first.error
    second = launch_pipeline([str(demos[1].r1), str(demos[1].r2)], store=str(store_dir),
                             embed_methods=["kmer"], simulate=False, shard_size=1000)
    assert second.error is None, second.error
    records = load_records(Store(store_dir.as_uri()))
    (model,) = [r for r in records if r.task_name == "train-lshvec"]
    block = f"test-models-{uuid.uuid4().hex[:8]}"
    ModelRegistry(lshvec_model=model.uri).save(block)

    refreshed = launch_flow(embed_refresh, {"methods": ["kmer", "lshvec"],
                                            "embed_options": SMALL_LSHVEC,
                                            "model_block": block}, store=str(store_dir))
    assert refreshed.error is None, refreshed.error
    summary = refreshed.summary
    assert summary.shards == 4  # 2 runs × 1200 pairs in shards of 1000
    assert summary.embeddings == {"kmer5": 4, "lshvec": 4}
    # kmer: run a's 2 shards are new, run b's came from cache; lshvec: b's are new.
    after = load_records(Store(store_dir.as_uri()))
    mine = [r for r in after if r.run_id == refreshed.flow_run_id]
    executed = {(r.task_name, r.cached) for r in mine}
    assert ("train-lshvec", True) in executed and ("fit-lsh", True) in executed
    assert ("train-lshvec", False) not in executed
    kmer = [r for r in mine if r.task_name == "kmer-spectra"]
    assert sorted(r.cached for r in kmer) == [False, False, True, True]
    lshvec = [r for r in mine if r.task_name == "lshvec-embed"]
    assert sorted(r.cached for r in lshvec) == [False, False, True, True]
    assert all(model.sha256 in {u.sha256 for u in r.upstream} for r in lshvec)

    again = launch_flow(embed_refresh, {"methods": ["kmer", "lshvec"],
                                        "embed_options": SMALL_LSHVEC,
                                        "model_block": block}, store=str(store_dir))
    assert again.error is None, again.error
    assert again.summary.executed == 0  # nothing new: every task a cache hit
