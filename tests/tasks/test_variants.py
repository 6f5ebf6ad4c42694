"""Tests for the variant caller (tasks/variants.py).

A random genome gets planted SNVs and one-base indels (several inside homopolymers, where
an aligner may put the gap anywhere in the run); reads are simulated from the mutated
genome at ~30x with ART when it is installed, else with a NumPy simulator, aligned with
align_batch and called. SNVs must reach F1 >= 0.95 against the truth; indels are
compared left-aligned (the `bcftools norm -f` representation). The bcftools tests are
integration tests (skipped without bcftools, failed under CI=true).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pysam
import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.errors import HelixflowError, InputError
from helixflow.tasks.align import align_batch, build_index
from helixflow.tasks.bam import merge_bams
from helixflow.tasks.fastq import iter_read_batches
from helixflow.tasks.variants import (
    VariantCounts,
    VariantParams,
    call_variants,
    left_align,
    phred_binomial_tail,
    read_fasta,
)
from tests.conftest import require_tool
from tests.tasks.test_align import RG, random_genome, write_fasta

Variant = tuple[str, int, str, str]  # contig, 1-based POS, REF, ALT
CONTIG = "chrV"


def plant(genome: str, rng: np.random.Generator) -> tuple[str, set[Variant]]:
    """40 SNVs, 6 insertions and 6 deletions, >= 40 bp apart; half the indels in runs.

    Returns the mutated genome and the truth in reference coordinates, indels left-aligned.
    """
    positions = np.sort(rng.choice(np.arange(300, len(genome) - 300, 40), 52, replace=False))
    kinds = rng.permutation(["snv"] * 40 + ["ins"] * 6 + ["del"] * 6)
    seq = list(genome)
    truth: set[Variant] = set()
    edits = []
    for p, kind in zip(positions.tolist(), kinds.tolist(), strict=True):
        if kind == "snv":
            alt = str(rng.choice([b for b in "ACGT" if b != genome[p]]))
            edits.append((p, 1, alt))
            truth.add((CONTIG, p + 1, genome[p], alt))
        elif kind == "ins":
            base = genome[p] if rng.random() < 0.5 else str(rng.choice(list("ACGT")))
            edits.append((p, 0, base))
            q, s = left_align(genome, p, 0, base)
            truth.add((CONTIG, q, genome[q - 1], genome[q - 1] + s))
        else:
            edits.append((p, 1, ""))
            q, _ = left_align(genome, p, 1, "")
            truth.add((CONTIG, q, genome[q - 1:q + 1], genome[q - 1]))
    for p, n, alt in sorted(edits, reverse=True):
        seq[p:p + n] = list(alt)
    return "".join(seq), truth


def with_homopolymers(genome: str, rng: np.random.Generator) -> str:
    """Sprinkle 4-6 bp runs through the genome so indels land in runs too."""
    seq = list(genome)
    for p in range(200, len(seq) - 200, 97):
        base = str(rng.choice(list("ACGT")))
        run = int(rng.integers(4, 7))
        seq[p:p + run] = [base] * run
    return "".join(seq)


def simulate(mutated: Path, out: Path) -> list[Path]:
    """2x150 pairs at ~30x from ART HS25 (real Illumina error profiles)."""
    prefix = out / "reads_"
    subprocess.run([require_tool("art_illumina"), "-ss", "HS25", "-p", "-l", "150", "-f", "30",
                    "-m", "300", "-s", "20", "-rs", "7", "-na", "-q", "-i", str(mutated), "-o",
                    str(prefix)], check=True, stdout=subprocess.DEVNULL)
    return [Path(f"{prefix}1.fq"), Path(f"{prefix}2.fq")]


def align(reference: Path, r1: Path, r2: Path, out: Path) -> Path:
    index = build_index(reference, "sr", out.parent / "mmi")
    parts = []
    for i, batch in enumerate(iter_read_batches(str(r1), str(r2), batch_size=2_000)):
        parts.append(out.with_name(f"part{i}.bam"))
        align_batch(batch, index, parts[-1], RG)
    return merge_bams(parts, out)


def calls(vcf: Path) -> tuple[set[Variant], set[Variant]]:
    snvs, indels = set(), set()
    with pysam.VariantFile(str(vcf)) as fh:
        for rec in fh:
            for alt in rec.alts or ():
                item = (rec.contig, rec.pos, rec.ref, alt)
                (snvs if len(rec.ref) == len(alt) == 1 else indels).add(item)
    return snvs, indels


def f1(called: set[Variant], truth: set[Variant]) -> float:
    tp = len(called & truth)
    return 2 * tp / max(1, len(called) + len(truth))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, Path, Path, VariantCounts, set[Variant]]:
    """Reference, BAM, VCF, counts and truth of the planted-variant sample."""
    rng = np.random.default_rng(2024)
    work = tmp_path_factory.mktemp("planted")
    genome = with_homopolymers(random_genome(rng, 30_000), rng)
    reference = write_fasta(work / "ref.fa", {CONTIG: genome})
    mutated_seq, truth = plant(genome, rng)
    mutated = write_fasta(work / "mutated.fa", {CONTIG: mutated_seq})
    r1, r2 = simulate(mutated, work)
    bam = align(reference, r1, r2, work / "sample.bam")
    vcf = work / "sample.vcf.gz"
    counts = call_variants(bam, reference, vcf, VariantParams())
    return reference, bam, vcf, counts, truth


# --------------------------------------------------------------------------------------
# Kernels


def test_left_align_moves_indels_to_the_start_of_runs() -> None:
    ref = "GCAAAATG"
    assert left_align(ref, 5, 1, "") == (2, "")  # delete the last A: leftmost is the first
    assert left_align(ref, 6, 0, "A") == (2, "A")  # insert A after the run
    assert left_align("GCACACT", 6, 0, "AC") == (1, "CA")  # dinucleotide repeat
    assert left_align(ref, 1, 1, "") == (1, "")  # nothing to shift past


def test_phred_binomial_tail_grows_with_evidence() -> None:
    q = phred_binomial_tail(np.array([0, 1, 3, 10, 30]), np.array([30, 30, 30, 30, 30]), 0.01)
    assert q[0] == 0.0 and all(np.diff(q) > 0) and q[-1] == pytest.approx(600.0)
    assert phred_binomial_tail(np.array([200]), np.array([200]), 0.01)[0] == 999.0  # capped
    assert abs(q[1] - -10 * np.log10(1 - 0.99 ** 30)) < 1e-6


def test_variant_params_are_checked() -> None:
    with pytest.raises(ValueError, match="min_af"):
        VariantParams(min_af=1.5)
    with pytest.raises(ValueError, match="min_depth"):
        VariantParams(min_depth=0)


def test_read_fasta_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_fasta(tmp_path / "missing.fa")
    bad = tmp_path / "bad.fa"
    bad.write_text("ACGT\n")
    with pytest.raises(InputError, match="not a FASTA"):
        read_fasta(bad)
    dup = tmp_path / "dup.fa"
    dup.write_text(">a\nAC\n>a\nGT\n")
    with pytest.raises(InputError, match="record 3: duplicate contig"):
        read_fasta(dup)


# --------------------------------------------------------------------------------------
# Calling planted variants


@pytest.mark.integration
def test_planted_snvs_are_called_with_f1_above_095(planted) -> None:
    _, _, vcf, counts, truth = planted
    snvs, _ = calls(vcf)
    true_snvs = {v for v in truth if len(v[2]) == len(v[3]) == 1}
    assert f1(snvs, true_snvs) >= 0.95, (snvs - true_snvs, true_snvs - snvs)
    assert counts.snvs == len(snvs) and counts.callable_bases > 25_000


@pytest.mark.integration
def test_planted_indels_are_called_left_aligned(planted) -> None:
    _, _, vcf, counts, truth = planted
    _, indels = calls(vcf)
    true_indels = {v for v in truth if not len(v[2]) == len(v[3]) == 1}
    assert len(indels & true_indels) >= 0.9 * len(true_indels), true_indels - indels
    assert len(indels - true_indels) <= 1, indels - true_indels
    assert counts.indels == len(indels)


@pytest.mark.integration
def test_vcf_header_records_and_index(planted) -> None:
    reference, _, vcf, counts, _ = planted
    assert Path(f"{vcf}.tbi").exists()
    with pysam.VariantFile(str(vcf)) as fh:
        assert list(fh.header.contigs) == [CONTIG]
        assert fh.header.contigs[CONTIG].length == len(read_fasta(reference)[CONTIG])
        assert list(fh.header.samples) == [RG["SM"]]
        assert {"DP", "AF", "INDEL"} <= set(fh.header.info)
        records = list(fh.fetch(CONTIG, 0, 30_000))  # region query through the .tbi
    assert len(records) == counts.records
    for rec in records:
        sample = rec.samples[RG["SM"]]
        assert rec.info["DP"] >= 8 and 0 < rec.info["AF"][0] <= 1
        assert sample["GT"] in ((0, 1), (1, 1), (1, 2)) and rec.qual >= 20
        assert sum(sample["AD"]) <= rec.info["DP"]


@pytest.mark.integration
def test_bcftools_reads_the_vcf_and_norm_changes_nothing(planted, tmp_path: Path) -> None:
    bcftools = require_tool("bcftools")
    reference, _, vcf, counts, _ = planted
    view = subprocess.run([bcftools, "view", "-H", str(vcf)], capture_output=True, text=True,
                          check=True)
    assert len(view.stdout.splitlines()) == counts.records
    ref = tmp_path / "ref.fa"  # bcftools norm writes ref.fa.fai beside it
    shutil.copy(reference, ref)
    norm = tmp_path / "norm.vcf.gz"
    subprocess.run([bcftools, "norm", "--check-ref", "e", "-f", str(ref), "-Oz", "-o",
                    str(norm), str(vcf)], capture_output=True, check=True)
    assert calls(norm) == calls(vcf)  # REF matches the reference and indels are left-aligned


@pytest.mark.integration
def test_demo_community_snvs(tmp_path: Path) -> None:
    """The demo's planted SNVs, from its Illumina-like reads (adapters, polyG, N bases)."""
    demo = write_demo(tmp_path / "demo", DemoSpec(n_genomes=2, genome_length=20_000,
                                                  n_pairs=4_000, n_variants=30))
    bam = align(demo.genomes, demo.r1, demo.r2, tmp_path / "demo.bam")
    vcf = tmp_path / "demo.vcf.gz"
    call_variants(bam, demo.genomes, vcf, VariantParams())
    truth = set()
    for line in demo.variants.read_text().splitlines()[1:]:
        contig, pos, ref, alt = line.split("\t")
        truth.add((contig, int(pos), ref, alt))
    snvs, _ = calls(vcf)
    assert f1(snvs, truth) >= 0.95, (snvs - truth, truth - snvs)


# --------------------------------------------------------------------------------------
# User mistakes


@pytest.mark.integration
def test_reference_not_matching_the_bam_is_one_clear_error(planted, tmp_path: Path) -> None:
    _, bam, _, _, _ = planted
    other = write_fasta(tmp_path / "other.fa", {CONTIG: "ACGT" * 100})
    with pytest.raises(HelixflowError, match=r"does not match .* 30\d\d\d bp in the BAM") as info:
        call_variants(bam, other, tmp_path / "x.vcf.gz", VariantParams())
    assert "\n" not in str(info.value) and info.value.hint
    renamed = write_fasta(tmp_path / "renamed.fa", {"chrOther": "ACGT" * 100})
    with pytest.raises(HelixflowError, match="'chrV' of the BAM is not in the reference"):
        call_variants(bam, renamed, tmp_path / "x.vcf.gz", VariantParams())
    assert not (tmp_path / "x.vcf.gz").exists()


@pytest.mark.integration
def test_bam_without_index_is_an_input_error(planted, tmp_path: Path) -> None:
    reference, bam, _, _, _ = planted
    copy = tmp_path / "copy.bam"
    shutil.copy(bam, copy)
    with pytest.raises(InputError, match="no index") as info:
        call_variants(copy, reference, tmp_path / "x.vcf.gz", VariantParams())
    assert "samtools index" in (info.value.hint or "")
