"""Lineage records: stored in the store, queried up and down, rendered."""

from __future__ import annotations

import json
from pathlib import Path

from helixflow.artifacts import FileRef
from helixflow.lineage import LineageGraph, LineageLog, LineageRecord, load_records, render
from helixflow.store import Store


def _chain(tmp_path: Path) -> tuple[Store, FileRef, LineageRecord, LineageRecord]:
    store = Store(str(tmp_path / "store"))
    fastq = FileRef(uri="file:///data/R1.fq.gz", size=100, sha256="f" * 64)
    (tmp_path / "s.parquet").write_bytes(b"shard")
    shard = store.publish(tmp_path / "s.parquet", run_id="r1", stage="ingest",
                          producer="ingest-fastq", upstream=[fastq])
    (tmp_path / "e.parquet").write_bytes(b"emb")
    emb = store.publish(tmp_path / "e.parquet", run_id="r1", stage="embed",
                        producer="embed", upstream=[shard.ref()])
    log = LineageLog(store, "r1")
    recs = [LineageRecord.of(a, run_id="r1", flow_run_id="f", task_run_id="t", cached=False)
            for a in (shard, emb)]
    for rec in recs:
        log.add(rec)
    log.flush()
    return store, fastq, recs[0], recs[1]


def test_records_round_trip_through_store(tmp_path: Path) -> None:
    store, fastq, shard, emb = _chain(tmp_path)
    loaded = load_records(store)
    assert [r.uri for r in loaded] == [shard.uri, emb.uri]
    assert loaded[0].upstream[0].sha256 == fastq.sha256
    assert loaded[0].code_version["helixflow"]
    lines = (tmp_path / "store" / "lineage" / "runs" / "r1.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["sha256"] == shard.sha256


def test_upstream_and_downstream_edges(tmp_path: Path) -> None:
    store, fastq, shard, emb = _chain(tmp_path)
    graph = LineageGraph(load_records(store))
    up = graph.upstream(graph.resolve(emb.uri))
    assert up.uri == emb.uri
    assert [c.uri for c in up.children] == [shard.uri]
    assert [c.uri for c in up.children[0].children] == [fastq.uri]
    assert up.children[0].children[0].sha256 == fastq.sha256
    # resolvable by CAS URI and by sha256 too
    assert graph.resolve(shard.cas_uri).uri == shard.uri
    assert graph.resolve(shard.sha256).uri == shard.uri
    down = graph.downstream(graph.resolve(fastq.uri))
    assert [c.uri for c in down.children] == [shard.uri]
    assert [c.uri for c in down.children[0].children] == [emb.uri]


def test_render_formats(tmp_path: Path) -> None:
    store, fastq, shard, emb = _chain(tmp_path)
    graph = LineageGraph(load_records(store))
    node = graph.upstream(graph.resolve(emb.uri))
    text = render(node, "text", upstream=True)
    assert f"sha256:{fastq.sha256}" in text and "(input)" in text
    assert json.loads(render(node, "json", upstream=True))["children"][0]["uri"] == shard.uri
    mer = render(node, "mermaid", upstream=True)
    assert mer.startswith("flowchart LR") and mer.count("-->") == 2


def test_the_lineage_picture_is_drawn_and_grouped_when_large() -> None:
    from helixflow.lineage import LineageNode, dot, picture
    from tests.conftest import require_tool

    require_tool("dot")
    fq = LineageNode(uri="file:///d/R1.fq.gz", sha256="a" * 64)
    shards = [LineageNode(uri=f"file:///s/runs/r/ingest/p{i}.parquet", sha256=f"{i:064x}",
                          task_name="ingest-fastq", children=[fq]) for i in range(5)]
    small = dot(shards)
    assert small.count("fillcolor") == 6 and small.count("->") == 5
    assert 'label="ingest-fastq"' in small and "p4.parquet\\n" in small
    grouped = dot(shards, max_nodes=3)  # one box per producing task, one for the inputs
    assert grouped.count("fillcolor") == 2 and grouped.count("->") == 1
    assert "5 files" in grouped
    png = picture(small)
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture("digraph {") is None  # Graphviz refuses it: no picture, no exception
