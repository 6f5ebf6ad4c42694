"""The pipeline end to end on the real Prefect server and real (local) Ray.

Outcomes asserted: shard row counts and checksums, lineage edges back to the input FASTQ's
sha256, caching across runs (no ingest executed the second time), re-execution when a
parameter changes, bad input publishing nothing, and every task run on the one server.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.app.launch import launch_pipeline
from helixflow.errors import InputError
from helixflow.lineage import LineageGraph, load_records
from helixflow.store import Store
from helixflow.uris import local_path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return write_demo(
        tmp_path_factory.mktemp("demo"), DemoSpec(n_pairs=3000, n_genomes=3, genome_length=20_000)
    )


# Caching and lineage are the same for every stage: keep these runs to phase 1 + k-mer
# embeddings (tests/flows/test_simulate.py and test_preprocess.py cover the rest).
PHASE1 = {"embed_methods": ["kmer"], "simulate": False}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _task_runs(api: str, flow_run_id: str) -> list[dict]:
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    resp = httpx.post(f"{api}/task_runs/filter", json=body, timeout=30)
    resp.raise_for_status()
    return resp.json()


def _fastq_reads(path: Path) -> int:
    with gzip.open(path, "rt") as handle:
        return sum(1 for _ in handle) // 4


def test_run_twice_caches_and_records_lineage(prefect_api: str, demo, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    first = launch_pipeline(
        [str(demo.r1), str(demo.r2)], **PHASE1, store=str(store_dir), shard_size=1000)
    assert first.error is None, first.error
    summary = first.summary
    assert summary.tasks_cached == 0
    assert summary.by_task["ingest-fastq"] == {"executed": 1, "cached": 0}
    assert summary.by_task["filter-reads"] == {"executed": 3, "cached": 0}
    assert summary.by_task["correct-reads"] == {"executed": 3, "cached": 0}
    # no reference: the final reads become unaligned BAMs with a read group
    ubams = sorted((store_dir / "runs" / summary.run_id / "unaligned").glob("*.bam"))
    assert len(ubams) == 3
    import pysam

    with pysam.AlignmentFile(str(ubams[0]), "rb", check_sq=False) as bam:
        assert bam.header["RG"][0]["SM"] == summary.samples[0]["sample"]
        flags = {read.flag for read in bam}
    assert flags <= {77, 141} and flags

    # shards: 3000 pairs in shards of 1000 pairs → 3 shards of 2000 rows, all reads present
    shard_dir = store_dir / "runs" / summary.run_id / "ingest"
    shards = sorted(shard_dir.glob("*.parquet"))
    assert len(shards) == 3
    table = pq.read_table(shards)
    assert table.num_rows == 2 * _fastq_reads(demo.r1) == 6000
    assert table.filter(pc.equal(table["mate"], 2)).num_rows == 3000

    # lineage: each shard's upstream is the two FASTQ files with their sha256
    graph = LineageGraph(load_records(Store(str(store_dir))))
    record = graph.resolve(shards[0].as_uri())
    assert record is not None and record.sha256 == _sha256(shards[0])
    ups = {ref.uri: ref.sha256 for ref in record.upstream}
    assert ups == {demo.r1.resolve().as_uri(): _sha256(demo.r1),
                   demo.r2.resolve().as_uri(): _sha256(demo.r2)}
    assert record.flow_run_id == first.flow_run_id and record.task_run_id

    # every task run of the flow run is on this one server, including the Ray-executed ones
    runs = _task_runs(prefect_api, first.flow_run_id)
    names = sorted(r["name"] for r in runs)
    assert any(n.startswith("ingest-") for n in names)
    assert len(runs) == 2 + summary.tasks_executed  # identify R1/R2 + every recorded task
    assert all(r["state_type"] == "COMPLETED" for r in runs)
    assert record.executed_on and record.executed_on.startswith("ray:")

    # second run on the same bytes: ingest is a cache hit, its shards appear in the new run
    second = launch_pipeline(
        [str(demo.r1), str(demo.r2)], **PHASE1, store=str(store_dir), shard_size=1000)
    assert second.error is None, second.error
    # nothing heavy runs again; only the run's own report (it names the run) is rewritten
    executed = {t for t, c in second.summary.by_task.items() if c["executed"]}
    assert executed == {"write-qc-report"}, second.summary.by_task
    assert second.summary.by_task["ingest-fastq"] == {"executed": 0, "cached": 1}
    assert second.summary.by_task["correct-reads"] == {"executed": 0, "cached": 3}
    again = sorted((store_dir / "runs" / second.summary.run_id / "ingest").glob("*.parquet"))
    assert [_sha256(p) for p in again] == [_sha256(p) for p in shards]
    cached = [r for r in load_records(Store(str(store_dir))) if r.run_id == second.summary.run_id]
    assert len(cached) == len([r for r in load_records(Store(str(store_dir)))
                               if r.run_id == summary.run_id])
    assert cached and all(r.cached for r in cached if r.stage != "report")

    # a changed QC parameter re-runs QC only; ingest stays cached
    third = launch_pipeline(
        [str(demo.r1), str(demo.r2)], **PHASE1, store=str(store_dir), shard_size=1000,
                            qc_options={"length_required": 100})
    assert third.error is None, third.error
    assert third.summary.by_task["ingest-fastq"] == {"executed": 0, "cached": 1}
    assert third.summary.by_task["filter-reads"] == {"executed": 3, "cached": 0}
    assert third.summary.by_task["correct-reads"]["executed"] == 3  # downstream of QC
    assert third.summary.samples[0]["reads_after_qc"] < summary.samples[0]["reads_after_qc"]

    # a changed ingest parameter re-runs ingest and everything downstream of it
    fourth = launch_pipeline(
        [str(demo.r1), str(demo.r2)], **PHASE1, store=str(store_dir), shard_size=2000)
    assert fourth.error is None, fourth.error
    # ...except where the bytes are unchanged: the last shard (pairs 2000-2999) is identical
    # to the first run's third shard, so its QC is a cache hit — keys follow content.
    assert fourth.summary.by_task["ingest-fastq"] == {"executed": 1, "cached": 0}
    assert fourth.summary.by_task["filter-reads"] == {"executed": 1, "cached": 1}
    assert len(list((store_dir / "runs" / fourth.summary.run_id / "ingest").glob("*.parquet"))) == 2


def test_bad_input_fails_clearly_and_publishes_nothing(prefect_api: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.fq"
    good = "@r1\nACGT\n+\nIIII\n"
    bad.write_text(good * 5 + "@r6\nACGT\n+\nIII\n")  # record 6: quality one short
    store_dir = tmp_path / "store"
    launched = launch_pipeline([str(bad)], store=str(store_dir))
    assert isinstance(launched.error, InputError), repr(launched.error)
    assert launched.error.record == 6 and "bad.fq" in str(launched.error)
    runs = store_dir / "runs"
    assert not runs.exists() or not any(p.is_file() for p in runs.rglob("*"))
    assert not (store_dir / "objects").exists() or not any(
        p.is_file() for p in (store_dir / "objects").rglob("*")
    )


def test_missing_input_is_a_clear_error(prefect_api: str, tmp_path: Path) -> None:
    launched = launch_pipeline([str(tmp_path / "absent_R1.fq.gz")], store=str(tmp_path / "s"))
    assert isinstance(launched.error, InputError)
    assert "no such file" in str(launched.error)
    assert local_path((tmp_path / "s").as_uri()).exists() is False or not any(
        (tmp_path / "s").rglob("*.parquet")
    )
