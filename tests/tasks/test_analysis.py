"""The analysis task on real embedding shards: k-mer spectra of a two-genome demo."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.store import Store, identify
from helixflow.tasks.analysis import AnalysisParams, analyze_embeddings, read_representatives
from helixflow.tasks.fastq import iter_read_batches
from helixflow.tasks.kmers import embed_kmer_spectra
from helixflow.tasks.reads import write_read_shard


def test_clusters_follow_genomes_and_representatives_are_real_reads(tmp_path: Path) -> None:
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=1500, n_genomes=3, genome_length=30_000,
                                                  duplicate_fraction=0, empty_reads=0))
    store = Store(str(tmp_path / "store"))
    shards = []
    for i, batch in enumerate(iter_read_batches(str(demo.r1), str(demo.r2), batch_size=1000)):
        path = tmp_path / f"reads.{i:05d}.parquet"
        write_read_shard(pa.Table.from_batches([batch]), path)
        shard = store.publish(path, run_id="r", stage="correct", rows=batch.num_rows,
                              media_type="application/vnd.apache.parquet", producer="test")
        shards.append(embed_kmer_spectra.fn(shard, 4, store, "r"))
    result = analyze_embeddings.fn("kmer4", shards, AnalysisParams(), identify(
        str(demo.truth)), "genome", store, "r")
    m = result.metrics
    print(m)  # -s shows the figures
    # Measured: 4 clusters (conductance 3, eigengap 4), ARI 0.94 spectral; Leiden 4
    # communities (resolution 0.50, the one giving k), ARI 0.95. Conductance alone: 3
    # clusters, 0.95; Leiden 4, 0.95.
    assert m["vectors"] == 3000 and m["n_clusters"] in (3, 4), m
    assert m["ari_spectral"] >= 0.85 and m["ari_leiden"] >= 0.85, m
    clusters = pq.read_table(store._path(result.clusters.uri))
    assert clusters.num_rows == 3000 and set(clusters.column("truth").to_pylist()) == {
        "g01", "g02", "g03"}
    reps = read_representatives(store, result.representatives)
    assert len(reps) == m["n_clusters"] and sum(r["size"] for r in reps) == 3000
    reads = {}
    for shard in shards:
        src = pq.read_table(store._path(shard.upstream[0].uri), columns=["sequence"])
        reads[shard.upstream[0].label] = src.column("sequence").to_pylist()
    for rep in reps:
        assert rep["sequence"] == reads[rep["source_shard"]][rep["row"]]
    png = Path(store._path(result.projection.uri)).read_bytes()
    assert png[:4] == b"\x89PNG"
    assert int.from_bytes(png[16:20], "big") == 2 * 7 * 110  # two 7-inch panels at 110 dpi
    assert m["communities"] == m["n_clusters"] and m["resolution"] < 1.0, m


def _kmer_shard(store: Store, tmp_path: Path, demo, n_pairs: int):
    batch = next(iter_read_batches(str(demo.r1), str(demo.r2), batch_size=n_pairs))
    path = tmp_path / f"few{n_pairs}.parquet"
    write_read_shard(pa.Table.from_batches([batch]), path)
    shard = store.publish(path, run_id="r", stage="correct", rows=batch.num_rows,
                          media_type="application/vnd.apache.parquet", producer="test")
    return embed_kmer_spectra.fn(shard, 4, store, "r")


def test_few_vectors_clamp_k_and_too_few_are_skipped(tmp_path: Path) -> None:
    from helixflow.artifacts import Skipped

    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=50, n_genomes=2, genome_length=5_000))
    store = Store(str(tmp_path / "store"))
    few = analyze_embeddings.fn("kmer4", [_kmer_shard(store, tmp_path, demo, 3)],
                                AnalysisParams(k_neighbors=30, n_clusters=12), None, "genome",
                                store, "r")
    assert few.metrics["vectors"] == 6 and few.metrics["k_neighbors"] == 5, few.metrics
    assert 1 <= few.metrics["n_clusters"] <= 6
    assert sum(r["size"] for r in read_representatives(store, few.representatives)) == 6
    one = analyze_embeddings.fn("kmer4", [_kmer_shard(store, tmp_path, demo, 1)],
                                AnalysisParams(), None, "genome", store, "r")
    assert one == Skipped(stage="analysis", sample="kmer4",
                          reason="2 vectors, need at least 3 for a kNN graph")
