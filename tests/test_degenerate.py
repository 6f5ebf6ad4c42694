"""Degenerate inputs through `helixflow run` with the default stage set: a handful of real
reads, one pair against a single-genome reference, reads QC removes entirely, reads shorter
than k. Each run exits 0 with one `warning:` line per skipped stage, the run's manifest and
the `skipped` UI table say what was skipped and why, and the stages that ran made valid
outputs. An empty FASTQ stays a user mistake (one error line, exit 1).

MD stays small as elsewhere in the suite: one representative, a few hundred steps.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from helixflow.artifacts import Skipped
from helixflow.errors import TooLittleInput
from helixflow.tasks.analysis import AnalysisParams, small_input_params
from helixflow.tasks.dnabert_train import PretrainConfig, train_mlm
from helixflow.tasks.lsh import fit_lsh
from tests.app.test_cli import cli
from tests.conftest import require_tool

# Every stage runs, with small settings: one short MD, a few DNABERT steps, one LSHvec epoch.
SMALL = ("--max-representatives", "1", "--md-steps", "200", "--embed-option", "dnabert_steps=10",
         "--embed-option", "lshvec_epochs=1", "--embed-option", "lshvec_smooth_rounds=1")


# --- kernels: small inputs ---------------------------------------------------------------

def test_analysis_params_adapt_to_few_vectors() -> None:
    params = AnalysisParams(k_neighbors=30, n_clusters=8)
    adapted = small_input_params(params, 5)
    assert isinstance(adapted, AnalysisParams)
    assert (adapted.k_neighbors, adapted.n_clusters) == (4, 5)
    assert small_input_params(params, 100) == params
    assert small_input_params(params, 2) == "2 vectors, need at least 3 for a kNN graph"
    assert small_input_params(params, 0) == "0 vectors, need at least 3 for a kNN graph"


def test_lsh_and_dnabert_kernels_say_the_reads_are_too_short() -> None:
    with pytest.raises(TooLittleInput, match=r"0 N-free 15-mers .* shorter than k = 15"):
        fit_lsh(["ACGTACGTAC", "NNNNNNNNNNNNNNNNNNNN"], k=15, hash_size=8)
    with pytest.raises(TooLittleInput, match="2 distinct N-free 15-mers"):
        fit_lsh(["A" * 40, "C" * 40], k=15, hash_size=8)
    with pytest.raises(TooLittleInput, match="at least k = 6 bases"):
        train_mlm(["ACGT", "AC"], PretrainConfig(k=6, hidden=8, heads=1, intermediate=16,
                                                 steps=1, batch_size=2))
    assert Skipped(stage="md", sample="kmer5", reason="why").line == "md skipped for kmer5: why"


# --- the CLI with the default stages ----------------------------------------------------

def _fastq(path: Path, records: list[tuple[str, str, str]]) -> Path:
    path.write_text("".join(f"@{n}\n{s}\n+\n{q}\n" for n, s, q in records))
    return path


def _real_pairs(shared: Path, name: str, n: int, length: int | None = None) -> list[list]:
    """The first n records of each mate of a real paired FASTQ (cut to `length`)."""
    mates = []
    for mate in ("R1", "R2"):
        path = next((shared / "reads").glob(f"{name}_{mate}.f*q*"))
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as fh:  # type: ignore[operator]
            lines = [fh.readline().rstrip("\n") for _ in range(4 * n)]
        mates.append([(lines[i][1:], lines[i + 1][:length], lines[i + 3][:length])
                      for i in range(0, 4 * n, 4)])
    return mates


def _write_pairs(tmp: Path, sample: str, mates: list[list]) -> list[str]:
    return [str(_fastq(tmp / f"{sample}_{m}.fq", recs)) for m, recs in zip(("R1", "R2"), mates,
                                                                           strict=True)]


def _run(prefect_api: str, store: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                             dict]:
    """`helixflow run` → (process, the run's manifest); asserts a clean exit 0."""
    proc = cli("run", *args, "--store", str(store), env={"PREFECT_API_URL": prefect_api},
               timeout=1500)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "error:" not in text, text
    (manifest,) = store.glob("runs/*/manifest.json")
    return proc, json.loads(manifest.read_text())


def _warnings(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("warning:")]


def _assert_skipped(proc: subprocess.CompletedProcess[str], manifest: dict,
                    expected: dict[tuple[str, str], str]) -> None:
    """Exactly the expected (stage, for) were skipped, each one warning line whose reason
    contains the expected words, and the manifest holds the same entries."""
    got = {(k["stage"], k["sample"]): k["reason"] for k in manifest["skipped"]}
    assert set(got) == set(expected), got
    for key, words in expected.items():
        assert words in got[key], (key, got[key])
    lines = [Skipped(stage=s, sample=f, reason=r).line for (s, f), r in got.items()]
    assert sorted(_warnings(proc)) == sorted(f"warning: {line}" for line in lines), proc.stderr
    for line in lines:  # once on the console: not also as a log line
        assert (proc.stdout + proc.stderr).count(line) == 1, line


def _quickcheck(paths: list[Path], *, unaligned: bool = False) -> None:
    """samtools quickcheck (-u: unaligned BAMs have no @SQ targets)."""
    samtools = require_tool("samtools")
    assert paths
    subprocess.run([samtools, "quickcheck", *(["-u"] if unaligned else []), *map(str, paths)],
                   check=True)


def _records(path: Path) -> int:
    samtools = require_tool("samtools")
    out = subprocess.run([samtools, "view", "-c", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out)


def _run_folder(store: Path, manifest: dict) -> Path:
    return store / "runs" / manifest["run_id"]


NO_REFERENCE = {("annotation", "run"): "no --reference and no --assemble",
                ("embedding", "protein"): "no ORF table"}


@pytest.mark.integration
def test_empty_fastq_stays_a_clear_error(prefect_api: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty_R1.fq"
    empty.write_text("")
    proc = cli("run", str(empty), "--store", str(tmp_path / "store"),
               env={"PREFECT_API_URL": prefect_api})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "empty_R1.fq" in errors[0] and "empty" in errors[0], errors


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_a_handful_of_real_pairs(prefect_api: str, shared_data: Path, tmp_path: Path) -> None:
    """5 real E. coli pairs: the analysis clamps its kNN k to N-1 = 9 and runs; correction
    finds no coverage valley and passes the reads through."""
    inputs = _write_pairs(tmp_path, "five", _real_pairs(shared_data, "ecoli_mg1655_1k", 5))
    store = tmp_path / "store"
    proc, manifest = _run(prefect_api, store, *inputs, *SMALL)
    _assert_skipped(proc, manifest, {**NO_REFERENCE,
                                     ("correction", "five"): "valley"})
    run = _run_folder(store, manifest)
    bams = sorted((run / "unaligned").glob("*.bam"))
    _quickcheck(bams, unaligned=True)
    assert sum(map(_records, bams)) == 10
    assert "analysis: 10 vectors (9 neighbours each)" in proc.stdout, proc.stdout
    (clusters,) = run.glob("analysis/*.clusters.parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(clusters).num_rows == 10
    for method in ("kmer5", "lshvec", "dnabert-mean", "dnabert-cls"):
        assert f"embeddings {method}: 1 shard(s)" in proc.stdout, proc.stdout


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_every_read_filtered_out_by_qc(prefect_api: str, shared_data: Path,
                                       tmp_path: Path) -> None:
    """All-N and all-low-quality pairs against phiX174: QC removes them all; every later
    stage that needs reads is skipped with a warning (the analysis asked for k-mer spectra,
    which were skipped), the run completes, the aligned BAM is valid and empty, the VCF
    valid, and the UI's `skipped` table lists what was skipped."""
    n_reads = [(f"n{i}", "N" * 100, "I" * 100) for i in range(3)]
    low_q = [(f"q{i}", "ACGT" * 25, "#" * 100) for i in range(3)]
    inputs = _write_pairs(tmp_path, "filtered", [
        [(f"{n}/1", s, q) for n, s, q in n_reads + low_q],
        [(f"{n}/2", s, q) for n, s, q in n_reads + low_q]])
    store = tmp_path / "store"
    proc, manifest = _run(prefect_api, store, *inputs, "--reference",
                          str(shared_data / "genomes" / "phix174.fa"),
                          "--analysis-method", "kmer5", *SMALL)
    no_reads = "no reads left after QC"
    _assert_skipped(proc, manifest, {
        ("correction", "filtered"): no_reads,
        ("embedding", "kmer"): no_reads, ("embedding", "lshvec"): no_reads,
        ("embedding", "dnabert"): no_reads,
        ("analysis", "kmer5"): "its embedding was skipped",
        ("md", "run"): "no analysis",
    })
    run = _run_folder(store, manifest)
    (bam,) = run.glob("align/*.bam")
    _quickcheck([bam])
    assert _records(bam) == 0
    (vcf,) = run.glob("variants/*.vcf.gz")
    subprocess.run([require_tool("bcftools"), "view", "-h", str(vcf)], check=True,
                   capture_output=True)
    assert "embeddings protein-murphy10-k3: 1 shard(s)" in proc.stdout, proc.stdout

    flow_run = proc.stdout.rsplit("/runs/flow-run/", 1)[1].split()[0]
    resp = httpx.post(f"{prefect_api}/artifacts/filter", timeout=30, json={
        "artifacts": {"key": {"any_": ["skipped", "run-summary"]},
                      "flow_run_id": {"any_": [flow_run]}}})
    resp.raise_for_status()
    tables = {a["key"]: a["data"] for a in resp.json()}
    skipped = json.loads(tables["skipped"]) if isinstance(tables["skipped"], str) \
        else tables["skipped"]
    assert {(r["stage"], r["sample"]) for r in skipped} == {
        (k["stage"], k["sample"]) for k in manifest["skipped"]}
    summary = tables["run-summary"]
    summary = json.loads(summary) if isinstance(summary, str) else summary
    assert summary[0]["reads_after_qc"] == 0 and "correction" in summary[0]["skipped"]


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_reads_shorter_than_k(prefect_api: str, shared_data: Path, tmp_path: Path) -> None:
    """20-bp real reads: shorter than correction's k = 21 and (set here) LSHvec's k = 25;
    k-mer spectra and DNABERT (k = 6) still embed them."""
    inputs = _write_pairs(tmp_path, "short",
                          _real_pairs(shared_data, "ecoli_mg1655_1k", 5, length=20))
    store = tmp_path / "store"
    proc, manifest = _run(prefect_api, store, *inputs, "--embed-option", "lshvec_k=25",
                          *SMALL)
    skipped = {(k["stage"], k["sample"]) for k in manifest["skipped"]}
    expected = {**NO_REFERENCE,
                ("correction", "short"): "all shorter than k = 21",
                ("embedding", "lshvec"): "shorter than k = 25"}
    # MD runs when a representative's 20 bases hold a 5-codon ORF: either outcome is fine.
    if ("md", "kmer5") in skipped:
        expected[("md", "kmer5")] = "no representative read has an ORF"
    _assert_skipped(proc, manifest, expected)
    _quickcheck(sorted((_run_folder(store, manifest) / "unaligned").glob("*.bam")),
                unaligned=True)
    assert "embeddings kmer5: 1 shard(s)" in proc.stdout
    assert "embeddings dnabert-mean: 1 shard(s)" in proc.stdout
    assert "embeddings lshvec" not in proc.stdout
    assert "analysis: 10 vectors" in proc.stdout


@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_one_pair_against_a_single_genome(prefect_api: str, shared_data: Path,
                                          tmp_path: Path) -> None:
    """One simulated lambda pair, the lambda genome as reference, and assembly on: the pair
    is aligned (sorted, indexed BAM; VCF), the reference annotated and its ORFs embedded;
    MEGAHIT assembles nothing from one pair, 2 vectors are too few to cluster."""
    inputs = _write_pairs(tmp_path, "one", _real_pairs(shared_data, "lambda_simulated", 1))
    store = tmp_path / "store"
    reference = shared_data / "genomes" / "lambda.fa"
    proc, manifest = _run(prefect_api, store, *inputs, "--reference", str(reference),
                          "--assemble", *SMALL)
    _assert_skipped(proc, manifest, {
        ("correction", "one"): "",
        ("annotation", "one.contigs"): "no contig",
        ("analysis", "kmer5"): "2 vectors, need at least 3",
        ("md", "run"): "no analysis",
    })
    run = _run_folder(store, manifest)
    (bam,) = run.glob("align/*.bam")
    _quickcheck([bam])
    assert _records(bam) == 2
    (vcf,) = run.glob("variants/*.vcf.gz")
    subprocess.run([require_tool("bcftools"), "view", "-h", str(vcf)], check=True,
                   capture_output=True)
    assert any(p.name.startswith("lambda") for p in run.glob("annotate/*.orfs.parquet"))
    assert "embeddings protein-murphy10-k3: 1 shard(s)" in proc.stdout, proc.stdout
