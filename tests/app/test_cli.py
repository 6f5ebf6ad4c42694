"""The `helixflow` command: exit codes, one-line errors, lineage printing."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HELIXFLOW = str(Path(sys.executable).with_name("helixflow"))


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
        unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run([HELIXFLOW, *args], capture_output=True, text=True, timeout=timeout,
                          env={**full, "COLUMNS": "200", **(env or {})})


def test_help_and_usage_errors() -> None:
    for args in ((), ("run", "--help"), ("lineage", "--help"), ("server", "--help"),
                 ("demo-data", "--help")):
        proc = cli(*args, "--help") if not args else cli(*args)
        assert proc.returncode == 0, proc.stderr
    assert cli("run", "--shard-size", "0").returncode == 2
    assert cli("no-such-command").returncode == 2
    assert cli("lineage", "x", "--format", "yaml").returncode == 2


def test_demo_data_command(tmp_path: Path) -> None:
    proc = cli("demo-data", str(tmp_path / "d"), "--pairs", "500", "--genomes", "2")
    assert proc.returncode == 0, proc.stderr
    with gzip.open(tmp_path / "d" / "R1.fastq.gz", "rt") as handle:
        assert sum(1 for _ in handle) == 4 * 500


@pytest.mark.integration
def test_malformed_fastq_one_line_exit_1_nothing_published(
    prefect_api: str, tmp_path: Path
) -> None:
    bad = tmp_path / "broken_R1.fq"
    bad.write_text("@a\nACGT\n+\nIIII\n@b\nACXT\n+\nIIII\n")
    store = tmp_path / "store"
    proc = cli("run", str(bad), "--store", str(store), env={"PREFECT_API_URL": prefect_api})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken_R1.fq: record 2" in errors[0], proc.stderr
    assert not list(store.glob("runs/**/*.parquet"))


@pytest.mark.integration
def test_run_and_lineage_of_a_shard(prefect_api: str, tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    assert cli("demo-data", str(demo), "--pairs", "800", "--genomes", "2").returncode == 0
    store = tmp_path / "store"
    env = {"PREFECT_API_URL": prefect_api}
    # a pipe at 80 columns (as in CI logs): the URL line longer than 80 stays one line
    proc = cli("run", str(demo / "R1.fastq.gz"), str(demo / "R2.fastq.gz"), "--store",
               str(store), "--embed", "kmer", "--no-simulate", env={**env, "COLUMNS": "80"},
               unset=("RAY_AUTH_MODE",))  # as a user's shell: Ray decides on its token
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Token authentication" not in proc.stdout + proc.stderr  # no Ray notice
    ui = [line for line in proc.stdout.splitlines() if line.startswith("Flow run in the UI:")]
    assert len(ui) == 1 and len(ui[0]) > 80, proc.stdout
    assert re.fullmatch(r"Flow run in the UI: http://127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}",
                        ui[0]), ui
    shard = next(store.glob("runs/*/ingest/*.parquet"))
    lin = cli("lineage", str(shard), "--store", str(store), env=env)
    assert lin.returncode == 0, lin.stderr
    import hashlib

    sha = hashlib.sha256((demo / "R1.fastq.gz").read_bytes()).hexdigest()
    assert f"sha256:{sha}" in lin.stdout and "R1.fastq.gz" in lin.stdout
    mer = cli("lineage", str(demo / "R1.fastq.gz"), "--downstream", "--format", "mermaid",
              "--store", str(store), env=env)
    assert mer.returncode == 0 and mer.stdout.startswith("flowchart LR")
    assert shard.name in mer.stdout


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.integration
def test_malformed_reference_fails_fast_nothing_published(
    prefect_api: str, tmp_path: Path
) -> None:
    demo = tmp_path / "demo"
    assert cli("demo-data", str(demo), "--pairs", "300", "--genomes", "2").returncode == 0
    ref = tmp_path / "bad_ref.fa"
    ref.write_text(">chr1\nACGTACGT\n>chr2\nACGT-ACGT\nAC1GT\n")
    store = tmp_path / "store"
    proc = cli("run", str(demo / "R1.fastq.gz"), str(demo / "R2.fastq.gz"), "--store",
               str(store), "--reference", str(ref), env={"PREFECT_API_URL": prefect_api})
    line = _one_error_line(proc)
    assert f"{ref}: record 2: sequence 'chr2', line 5, column 3: '1'" in line, line
    assert not list(store.glob("runs/**/*.*")) and not list(store.glob("objects/**/*.*"))

    missing = cli("run", str(demo / "R1.fastq.gz"), "--store", str(store), "--reference",
                  str(tmp_path / "nope.fa"), env={"PREFECT_API_URL": prefect_api})
    assert "nope.fa" in _one_error_line(missing)


@pytest.mark.integration
def test_call_variants_on_a_user_bam(prefect_api: str, tmp_path: Path) -> None:
    from tests.conftest import require_tool

    minimap2, samtools = require_tool("minimap2"), require_tool("samtools")
    bcftools = require_tool("bcftools")
    demo = tmp_path / "demo"
    assert cli("demo-data", str(demo), "--pairs", "4000", "--genomes", "1").returncode == 0
    ref = demo / "genomes.fa"
    sam = subprocess.run([minimap2, "-ax", "sr", str(ref), str(demo / "R1.fastq.gz"),
                          str(demo / "R2.fastq.gz")], capture_output=True, check=True).stdout
    bam = tmp_path / "user.bam"
    subprocess.run([samtools, "sort", "-o", str(bam), "-"], input=sam, check=True)
    store = tmp_path / "store"
    env = {"PREFECT_API_URL": prefect_api}
    proc = cli("call-variants", str(bam), "--reference", str(ref), "--store", str(store),
               "--variant", "min_depth=5", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    vcf = next(store.glob("runs/*/variants/user.vcf.gz"))
    body = subprocess.run([bcftools, "view", "-H", str(vcf)], capture_output=True, text=True,
                          check=True).stdout
    assert len(body.splitlines()) >= 1
    assert not (tmp_path / "user.bam.bai").exists()  # indexed in scratch, not beside the input

    other = tmp_path / "other.fa"
    other.write_text(">not_the_same\n" + "ACGT" * 500 + "\n")
    proc = cli("call-variants", str(bam), "--reference", str(other), "--store", str(store),
               env=env)
    line = _one_error_line(proc)
    assert f"reference {other} does not match {bam}" in line, line


def test_pretrain_dnabert_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    assert cli("demo-data", str(demo), "--pairs", "300", "--genomes", "1").returncode == 0
    out = tmp_path / "model"
    proc = cli("pretrain-dnabert", str(demo / "R1.fastq.gz"), "--out", str(out), "--k", "3",
               "--hidden", "16", "--steps", "3", "--batch-size", "4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from helixflow.tasks.dnabert_checkpoint import load_model
    from helixflow.tasks.dnabert_tokens import KmerTokenizer

    model, tokenizer = load_model(out)
    assert isinstance(tokenizer, KmerTokenizer) and tokenizer.k == 3
    assert model.config.hidden_size == 16 and model.config.vocab_size == 4**3 + 5


def test_pretrain_dnabert_reads_no_file_past_max_reads(tmp_path: Path) -> None:
    """The sample stops at --max-reads: a later input is never opened (it was, and a bad
    one failed the command, when the read loop's `break` left the loop over files going)."""
    demo = tmp_path / "demo"
    assert cli("demo-data", str(demo), "--pairs", "300", "--genomes", "1").returncode == 0
    broken = tmp_path / "broken.fastq"
    broken.write_text("not a FASTQ record\n")
    proc = cli("pretrain-dnabert", str(demo / "R1.fastq.gz"), str(broken), "--out",
               str(tmp_path / "model"), "--k", "3", "--hidden", "8", "--layers", "1",
               "--steps", "1", "--batch-size", "2", "--max-reads", "50")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "model" / "config.json").is_file()
