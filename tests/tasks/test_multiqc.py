"""MultiQC: the real MultiQC parses helixflow's per-sample files into the run's figures."""

from __future__ import annotations

import ast
import csv
import json
import random
import subprocess
from pathlib import Path

import pysam
import pytest

from helixflow.store import Store
from helixflow.tasks.multiqc import fastp_json, publish_multiqc, run_multiqc, write_inputs
from helixflow.tasks.report import SampleReport
from tests.conftest import require_tool

SAMPLE = "gut sample 1"  # a space: sample names travel as file names
QC = {"reads_in": 1000, "bases_in": 150_000, "reads_out": 900, "bases_out": 130_000,
      "low_quality_reads": 50, "too_many_n_reads": 20, "too_short_reads": 30,
      "adapter_trimmed_reads": 100, "adapter_trimmed_bases": 2000,
      "read1_adapter_sequence": "AGATCGGAAGAGC"}


def _sample(name: str = SAMPLE, qc: dict | None = None) -> SampleReport:
    stats = {str(m): {"reads": 500, "bases": 75_000, "mean_length": 150.0, "gc_fraction": 0.5}
             for m in (1, 2)}
    return SampleReport(sample=name, layout="paired", read_stats=stats,
                        qc=QC if qc is None else qc,
                        dedup={"fragments": 450, "dropped": 54, "duplication_rate": 0.12})


def _bam_and_vcf(folder: Path, store: Store) -> tuple[tuple, object, int, int]:
    """A sorted, indexed BAM of 300 reads (250 mapped) with one SNP, its VCF from bcftools;
    published to `store`. Returns ((bam, bai), vcf, mapped reads, variant records)."""
    rng = random.Random(7)
    ref = "".join(rng.choice("ACGT") for _ in range(3000))
    (folder / "ref.fa").write_text(f">chr1\n{ref}\n")
    pysam.faidx(str(folder / "ref.fa"))
    header = {"HD": {"VN": "1.6", "SO": "coordinate"}, "SQ": [{"SN": "chr1", "LN": 3000}]}
    records = []
    with pysam.AlignmentFile(str(folder / "x.bam"), "wb", header=header) as out:
        for i in range(300):
            a = pysam.AlignedSegment(out.header)
            a.query_name = f"r{i}"
            pos = rng.randrange(1455, 1545)  # every read covers the SNP at 1550
            seq = list(ref[pos:pos + 100])
            seq[1550 - pos] = "T" if ref[1550] != "T" else "G"
            a.query_sequence = "".join(seq)
            a.query_qualities = pysam.qualitystring_to_array("I" * 100)
            if i < 250:
                a.flag, a.reference_id, a.reference_start = 0, 0, pos
                a.mapping_quality, a.cigarstring = 60, "100M"
            else:
                a.flag, a.reference_id, a.reference_start = 4, -1, -1
            records.append(a)
        mapped = sorted((r for r in records if not r.is_unmapped), key=lambda r: r.reference_start)
        for a in mapped + [r for r in records if r.is_unmapped]:
            out.write(a)
    pysam.index(str(folder / "x.bam"))
    vcf = folder / "x.vcf.gz"
    pileup = subprocess.run(["bcftools", "mpileup", "-f", str(folder / "ref.fa"),
                             str(folder / "x.bam")], capture_output=True, check=True)
    subprocess.run(["bcftools", "call", "-mv", "-Oz", "-o", str(vcf)], input=pileup.stdout,
                   capture_output=True, check=True)
    with pysam.VariantFile(str(vcf)) as v:
        n_records = sum(1 for _ in v)
    pub = {name: store.publish(folder / name, run_id="r", stage="align", producer="test",
                               move=False) for name in ("x.bam", "x.bam.bai", "x.vcf.gz")}
    return (pub["x.bam"].ref(), pub["x.bam.bai"].ref()), pub["x.vcf.gz"].ref(), 250, n_records


def test_fastp_json_carries_the_qc_and_dedup_figures() -> None:
    report = fastp_json(_sample())
    assert report["summary"]["before_filtering"]["total_reads"] == 1000
    assert report["summary"]["after_filtering"]["total_bases"] == 130_000
    assert report["summary"]["before_filtering"]["read2_mean_length"] == 150.0
    assert report["filtering_result"] == {
        "passed_filter_reads": 900, "low_quality_reads": 50, "too_many_N_reads": 20,
        "low_complexity_reads": 0, "too_short_reads": 30, "too_long_reads": 0}
    assert report["duplication"] == {"rate": 0.12}
    assert report["adapter_cutting"]["read1_adapter_sequence"] == "AGATCGGAAGAGC"
    assert "fastp_version" not in report["summary"]  # it is not fastp's output
    single = fastp_json(SampleReport(sample="s", layout="single", read_stats={}, qc={}))
    assert "read2_mean_length" not in single["summary"]["before_filtering"]
    assert "duplication" not in single


def test_multiqc_parses_the_runs_figures(tmp_path: Path) -> None:
    require_tool("samtools")
    require_tool("bcftools")
    store = Store(str(tmp_path / "store"))
    bam, vcf, mapped, n_variants = _bam_and_vcf(tmp_path, store)
    assert n_variants >= 1
    samples = [_sample(), _sample("other", {**QC, "reads_out": 800})]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    files = write_inputs(samples, {SAMPLE: bam}, {SAMPLE: vcf}, store, inputs)
    assert [f.name for f in files] == sorted(
        [f"{SAMPLE}.bcftools_stats.txt", f"{SAMPLE}.fastp.json", f"{SAMPLE}.flagstat.txt",
         f"{SAMPLE}.idxstats.txt", f"{SAMPLE}.samtools_stats.txt", "other.fastp.json"])
    assert str(tmp_path) not in (inputs / f"{SAMPLE}.samtools_stats.txt").read_text()

    report = run_multiqc(inputs, tmp_path / "out")
    assert report is not None and b"MultiQC" in report.read_bytes()[:20000]
    parsed = json.loads((tmp_path / "out" / "multiqc_data" / "multiqc_data.json").read_text())
    general = parsed["report_general_stats_data"]
    fastp = general["fastp"]
    assert set(fastp) == {SAMPLE, "other"}  # sample names back from the file names
    assert fastp[SAMPLE]["before_filtering_total_reads"] == 1000
    assert fastp[SAMPLE]["after_filtering_total_reads"] == 900
    assert fastp["other"]["after_filtering_total_reads"] == 800
    assert fastp[SAMPLE]["pct_duplication"] == pytest.approx(12.0)
    assert fastp[SAMPLE]["filtering_result_too_short_reads"] == 30

    def table(name: str) -> dict[str, dict[str, str]]:
        path = tmp_path / "out" / "multiqc_data" / name
        with path.open() as fh:
            return {row["Sample"]: row for row in csv.DictReader(fh, delimiter="\t")}

    assert float(table("multiqc_samtools_stats.txt")[SAMPLE]["reads_mapped"]) == mapped
    assert float(table("multiqc_samtools_stats.txt")[SAMPLE]["raw_total_sequences"]) == 300
    assert int(table("multiqc_samtools_flagstat.txt")[SAMPLE]["mapped_passed"]) == mapped
    assert ast.literal_eval(table("multiqc_samtools_idxstats.txt")[SAMPLE]["chr1"])[0] == mapped
    assert int(table("multiqc_bcftools_stats.txt")[SAMPLE]["number_of_records"]) == n_variants


def test_the_task_publishes_report_tables_and_inputs(tmp_path: Path) -> None:
    require_tool("samtools")
    require_tool("bcftools")
    store = Store(str(tmp_path / "store"))
    bam, vcf, _, _ = _bam_and_vcf(tmp_path, store)
    arts = publish_multiqc.fn([_sample()], {SAMPLE: bam},
                              {SAMPLE: vcf}, store, "r")
    assert arts[0].name == "multiqc_report.html" and arts[0].stage == "multiqc"
    names = {(a.stage, a.name) for a in arts}
    assert ("multiqc", "multiqc_general_stats.txt") in names
    assert ("multiqc-input", f"{SAMPLE}.fastp.json") in names
    assert all(a.tools["multiqc"] == "1.35" for a in arts)
    assert {u.sha256 for u in arts[0].upstream} == {bam[0].sha256, bam[1].sha256, vcf.sha256}
    assert Path(store._path(arts[0].uri)).is_file()


def test_a_sample_without_reads_still_makes_a_report(tmp_path: Path) -> None:
    """A degenerate run (every read filtered, no BAM): no error."""
    store = Store(str(tmp_path / "store"))
    empty = _sample("empty", {"reads_in": 10, "bases_in": 1000, "reads_out": 0, "bases_out": 0,
                              "too_short_reads": 10})
    arts = publish_multiqc.fn([empty], {}, {}, store, "r")
    assert arts == [] or arts[0].name == "multiqc_report.html"
