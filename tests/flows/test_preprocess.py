"""Phase 1 end to end on the demo community with its reference: outputs judged by the real
tools (samtools quickcheck, bcftools), variants against the planted truth, lineage from the
VCF back to the FASTQ, the HTML report."""

from __future__ import annotations

import ast
import csv
import hashlib
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.app.launch import launch_pipeline
from helixflow.lineage import LineageGraph, load_records
from helixflow.store import Store, local_path
from tests.conftest import require_tool

pytestmark = pytest.mark.integration


def _upstream_inputs(node) -> set[tuple[str, str | None]]:
    found = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if not n.children and n.task_name is None:
            found.add((n.uri, n.sha256))
        stack.extend(n.children)
    return found


def corrected_reads(store_dir: Path, run_id: str) -> int:
    """Reads in the run's final (corrected) shards."""
    return sum(pq.read_metadata(p).num_rows
               for p in (store_dir / "runs" / run_id / "correct").glob("*.parquet"))


def test_demo_with_reference(prefect_api: str, tmp_path: Path, openlineage_receiver) -> None:
    samtools, bcftools = require_tool("samtools"), require_tool("bcftools")
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=8000, n_genomes=2, genome_length=20_000,
                                                  n_variants=12))
    store_dir = tmp_path / "store"
    launched = launch_pipeline([str(demo.r1), str(demo.r2)], store=str(store_dir),
                               reference=str(demo.genomes), shard_size=4000,
                               truth=str(demo.truth))
    assert launched.error is None, launched.error
    summary = launched.summary
    for stage in ("ingest-fastq", "filter-reads", "remove-duplicates", "correct-reads",
                  "align-reads", "merge-alignments", "call-variants", "annotate-sequences"):
        assert summary.by_task[stage]["executed"] >= 1, (stage, summary.by_task)

    bam = local_path(summary.bams["demo"])
    assert subprocess.run([samtools, "quickcheck", str(bam)]).returncode == 0
    assert Path(f"{bam}.bai").exists()
    idx = subprocess.run([samtools, "idxstats", str(bam)], capture_output=True, text=True,
                         check=True).stdout
    mapped = sum(int(line.split("\t")[2]) for line in idx.splitlines())
    assert mapped > 0.9 * 2 * 8000 * 0.9  # most reads survive QC/dedup and map

    vcf = local_path(summary.vcfs["demo"])
    body = subprocess.run([bcftools, "view", "-H", str(vcf)], capture_output=True, text=True,
                          check=True).stdout
    called = {(f[0], int(f[1]), f[3], f[4]) for f in (ln.split("\t") for ln in body.splitlines())}
    with open(demo.variants) as handle:
        truth = {(r["genome"], int(r["pos"]), r["ref"], r["alt"])
                 for r in csv.DictReader(handle, delimiter="\t")}
    tp = len(called & truth)
    f1 = 2 * tp / (len(called) + len(truth))
    assert f1 >= 0.95, (sorted(called - truth), sorted(truth - called))

    # lineage: the VCF's upstream reaches both FASTQ files with their sha256
    graph = LineageGraph(load_records(Store(str(store_dir))))
    tree = graph.upstream(graph.resolve(vcf.as_uri()))
    inputs = _upstream_inputs(tree)
    for fq in (demo.r1, demo.r2):
        assert (fq.resolve().as_uri(), hashlib.sha256(fq.read_bytes()).hexdigest()) in inputs

    # embeddings: one kmer5 shard per read shard, DuckDB-readable, lineage to the FASTQ
    import duckdb

    kmer = [local_path(u) for u in summary.embeddings["kmer5"]]
    assert len(kmer) == len(list((store_dir / "runs" / summary.run_id / "correct").glob(
        "*.parquet")))
    ((n, dim),) = duckdb.sql(f"select count(*), max(len(vector)) from read_parquet("
                             f"{[str(p) for p in kmer]})").fetchall()
    assert dim == 512 and n == corrected_reads(store_dir, summary.run_id)
    tree = graph.upstream(graph.resolve(kmer[0].as_uri()))
    assert any(uri.endswith("R1.fastq.gz") for uri, _ in _upstream_inputs(tree))
    for method in ("lshvec", "dnabert-mean", "dnabert-cls"):  # trained models, lineage to them
        assert len(summary.embeddings[method]) == len(kmer), method
        for shard in summary.embeddings[method]:
            rec = graph.resolve(shard)
            assert rec is not None and any(u.uri.endswith(".tar") for u in rec.upstream), method
    assert summary.analysis["n_clusters"] >= 2 and summary.analysis["ari_spectral"] >= 0.8
    assert len(summary.trajectories) == 2  # the default: MD of two representatives
    (protein,) = summary.embeddings["protein-murphy10-k3"]
    sql = f"select count(*) from read_parquet('{local_path(protein)}')"
    assert duckdb.sql(sql).fetchall()[0][0] > 0

    orfs = next((store_dir / "runs" / summary.run_id / "annotate").glob("*.orfs.parquet"))
    assert pq.read_metadata(orfs).num_rows > 0
    report = local_path(summary.report_uri).read_text()
    for section in ("Quality filtering", "Duplicates", "Error correction", "Alignment",
                    "Variants", "Annotation"):
        assert section in report

    # MultiQC parsed the run's own figures: QC in/out, duplication, mapped reads, variants
    assert summary.multiqc_uri and summary.multiqc_uri in report
    mq = local_path(summary.multiqc_uri).parent
    assert local_path(summary.multiqc_uri).read_bytes()[:15].lower() == b"<!doctype html>"

    def mq_table(name: str) -> dict[str, str]:
        with (mq / name).open() as fh:
            (row,) = [r for r in csv.DictReader(fh, delimiter="\t") if r["Sample"] == "demo"]
        return row

    (sample,) = summary.samples
    fastp = ast.literal_eval(mq_table("multiqc_fastp.txt")["summary"])
    assert fastp["before_filtering"]["total_reads"] == sample["reads"]
    assert fastp["after_filtering"]["total_reads"] == sample["reads_after_qc"]
    rate = ast.literal_eval(mq_table("multiqc_fastp.txt")["duplication"])["rate"]
    assert 0 < rate < 0.5  # the demo's duplicate fraction, as dedup measured it
    assert int(mq_table("multiqc_samtools_flagstat.txt")["mapped_passed"]) == mapped
    assert int(mq_table("multiqc_bcftools_stats.txt")["number_of_records"]) == len(called)

    # OpenLineage: the events sent during the run link raw FASTQ → … → MD trajectory
    events = openlineage_receiver.events
    kinds = {(e["eventType"], e["job"]["name"]) for e in events}
    assert ("START", "helixflow.flow") in kinds and ("COMPLETE", "helixflow.flow") in kinds
    complete = [e for e in events if e["eventType"] == "COMPLETE" and e["outputs"]]
    assert {e["job"]["name"] for e in complete} >= {
        "helixflow.ingest-fastq", "helixflow.filter-reads", "helixflow.kmer-spectra"}
    made_from: dict[str, set[str]] = {}
    for e in complete:
        assert e["job"]["namespace"] == "helixflow-test"
        facet = e["run"]["facets"]["helixflow"]
        assert facet["prefectFlowRunId"] and facet["helixflowRunId"] == summary.run_id
        assert e["run"]["facets"]["parent"]["job"]["name"] == "helixflow.flow"
        for out in e["outputs"]:
            assert len(out["facets"]["version"]["datasetVersion"]) == 64
            made_from.setdefault(out["name"], set()).update(i["name"] for i in e["inputs"])
    seen, todo = set(), [str(local_path(summary.trajectories[0]))]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(made_from.get(name, ()))
    assert str(demo.r1.resolve()) in seen and str(demo.r2.resolve()) in seen
    assert any(name.endswith(".kmer5.parquet") or "/embed/" in name for name in seen)


def test_annotation_and_caller_options_reach_the_tasks(prefect_api: str, tmp_path: Path) -> None:
    from tests.tasks.test_motifs import MEME_TEXT

    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=1500, n_genomes=1, genome_length=15_000,
                                                  n_variants=0))
    motif_file = tmp_path / "crp.meme"
    motif_file.write_text(MEME_TEXT)
    store_dir = tmp_path / "store"
    launched = launch_pipeline(
        [str(demo.r1), str(demo.r2)], store=str(store_dir), reference=str(demo.genomes),
        motifs={"GATC": "GATC"}, motif_files=[str(motif_file)], motif_p_value=0.1,
        orf_options={"start_codons": ["ATG", "GTG", "TTG"], "table": 4, "min_length_nt": 120},
        variant_options={"min_depth": 4}, embed_methods=["protein", "dnabert"], simulate=False,
        embed_options={"dnabert_precision": "bfloat16", "dnabert_steps": 5}, assemble=True,
    )
    assert launched.error is None, launched.error
    run = store_dir / "runs" / launched.summary.run_id
    sites = pq.read_table(next((run / "annotate").glob("*.motifs.parquet")))
    assert set(sites.column("name").to_pylist()) == {"GATC", "crp", "lexA"}
    pwm_sites = [r for r in sites.to_pylist() if r["name"] != "GATC"]
    assert all(r["p_value"] <= 0.1 for r in pwm_sites)
    records = load_records(Store(str(store_dir)))
    orfs = [r for r in records if r.stage == "annotate" and r.uri.endswith(".orfs.parquet")]
    assert orfs and orfs[0].parameters["table"] == 4
    assert orfs[0].parameters["start_codons"] == ["ATG", "GTG", "TTG"]
    motif_rec = next(r for r in records if r.uri.endswith(".motifs.parquet"))
    assert motif_file.resolve().as_uri() in {u.uri for u in motif_rec.upstream}
    assert any(r.parameters.get("min_depth") == 4 for r in records if r.stage == "variants")
    dnabert = [r for r in records if r.stage == "embed" and r.task_name == "dnabert-embed"]
    assert len(dnabert) == 2 * len(launched.summary.embeddings["dnabert-mean"]) > 0
    assert {r.parameters["precision"] for r in dnabert} == {"bfloat16"}
    # assembled contigs are annotated; their ORFs' protein k-mers lead back to the FASTQ
    assert launched.summary.assemblies["demo"]["n50"] > 10_000
    (contig_protein,) = [u for u in launched.summary.embeddings["protein-murphy10-k3"]
                         if "contigs" in u]
    graph = LineageGraph(records)
    inputs = _upstream_inputs(graph.upstream(graph.resolve(contig_protein)))
    assert demo.r1.resolve().as_uri() in {uri for uri, _ in inputs}
    import duckdb

    sql = f"select count(*) from read_parquet('{local_path(contig_protein)}')"
    assert duckdb.sql(sql).fetchall()[0][0] > 0

    bad = launch_pipeline([str(demo.r1), str(demo.r2)], store=str(store_dir), simulate=False,
                          reference=str(demo.genomes), orf_options={"table": 99})
    assert bad.error is not None and "invalid orf options" in str(bad.error)
    bad = launch_pipeline([str(demo.r1), str(demo.r2)], store=str(store_dir), simulate=False,
                          embed_methods=["dnabert"], embed_options={"dnabert_precision": "int8"})
    assert bad.error is not None and "dnabert_precision" in str(bad.error)
