"""The demo's reads: counts, FASTQ validity, errors, adapters, polyG, duplicates, blocks."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helixflow.app import demo_reads
from helixflow.app.demo import Demo, DemoSpec, write_demo
from helixflow.app.demo_reads import ADAPTER_R1, ADAPTER_R2
from tests.app.demo_helpers import (
    SMALL,
    Reads,
    as_array,
    expected_mates,
    mutated_genomes,
    parse_reads,
    read_fastq,
    read_tsv,
    revcomp,
)
from tests.conftest import require_tool


def test_counts_match_truth_files_and_manifest(
    default_demo: Demo, reads: Reads, truth: list[dict[str, str]]
) -> None:
    """Pairs, duplicates, empties, adapters, Ns agree in files, truth and manifest."""
    spec, counts = DemoSpec(), default_demo.manifest["counts"]
    n_dup = round(spec.duplicate_fraction * spec.n_pairs)
    assert len(reads.seq1) == len(reads.seq2) == len(truth) == spec.n_pairs == counts["pairs"]
    assert sum(r["is_duplicate"] == "1" for r in truth) == n_dup == counts["duplicate_pairs"]
    empty = [r["is_empty"] == "1" for r in truth]
    assert sum(empty) == spec.empty_reads == counts["empty_pairs"]
    assert [s == "" for s in reads.seq1] == empty
    assert [s == "" for s in reads.seq2] == empty
    assert sum(r["has_adapter"] == "1" for r in truth) == counts["adapter_pairs"] > 100
    assert sum(r["has_polyg"] == "1" for r in truth) == counts["polyg_pairs"] > 10
    assert sum(s.count("N") for s in reads.seq1 + reads.seq2) == counts["ambiguous_bases"] > 0
    per_genome = {g: sum(r["genome"] == g for r in truth) for g in counts["pairs_per_genome"]}
    assert per_genome == counts["pairs_per_genome"]
    assert len(read_tsv(default_demo.genes)) == counts["genes"]
    assert len(read_tsv(default_demo.variants)) == counts["variants"] == spec.n_variants


def test_reads_are_valid_fastq_and_mates_pair(reads: Reads, truth: list[dict[str, str]]) -> None:
    """Every record is valid Phred+33 FASTQ and R1/R2 ids pair in file order."""
    rl = DemoSpec().read_length
    for seqs, quals in ((reads.seq1, reads.qual1), (reads.seq2, reads.qual2)):
        for seq, qual in zip(seqs, quals, strict=True):
            assert len(seq) == len(qual) and len(seq) in (0, rl)
        assert set("".join(seqs)) <= set("ACGTN")
        q = as_array([q for q in quals if q]) - 33
        assert q.min() >= 2 and q.max() <= 41
        s = as_array([s for s in seqs if s])
        assert np.all(q[s == ord("N")] == 2)
    assert reads.ids1 == reads.ids2 == [r["name"] for r in truth]
    assert len(set(reads.ids1)) == len(reads.ids1)
    assert all(re.fullmatch(r"1:N:0:[ACGT]+", c) for c in reads.comments1)
    assert all(re.fullmatch(r"2:N:0:[ACGT]+", c) for c in reads.comments2)


def test_qualities_decline_towards_three_prime(reads: Reads) -> None:
    """Qualities follow the usual Illumina shape."""
    for quals in (reads.qual1, reads.qual2):
        mean = (as_array([q for q in quals if q]) - 33).mean(axis=0)
        assert 30 < mean[5:25].mean() < 40
        assert mean[-10:].mean() < mean[5:25].mean() - 4


def test_errors_match_truth_and_qualities(
    default_demo: Demo, reads: Reads, truth: list[dict[str, str]]
) -> None:
    """Reads equal their truth locus up to errors, at the rate qualities say."""
    genomes = mutated_genomes(default_demo)
    rows = [i for i, r in enumerate(truth) if r["is_duplicate"] == "0" and r["is_empty"] == "0"]
    mates = [expected_mates(truth[i], genomes, default_demo.manifest) for i in rows]
    expected = np.vstack([as_array([m[0] for m in mates]), as_array([m[1] for m in mates])])
    observed = np.vstack(
        [as_array([reads.seq1[i] for i in rows]), as_array([reads.seq2[i] for i in rows])]
    )
    quals = np.vstack(
        [as_array([reads.qual1[i] for i in rows]), as_array([reads.qual2[i] for i in rows])]
    )
    phred = quals.astype(int) - 33
    called = observed != ord("N")
    wrong = (observed != expected) & called
    # Exact: every difference from the truth locus is a recorded substitution.
    assert int(wrong.sum()) == default_demo.manifest["counts"]["substitution_errors"]
    # Statistical: errors occur at the rate the qualities promise, overall and per band.
    p_error = 10.0 ** (-phred / 10.0)
    expect = p_error[called].sum()
    assert abs(wrong.sum() - expect) < 0.05 * expect, (wrong.sum(), expect)
    for low, high in ((2, 12), (13, 22), (23, 32), (33, 41)):
        band = called & (phred >= low) & (phred <= high)
        e = p_error[band].sum()
        if e > 200:
            assert abs(wrong[band].sum() - e) < 0.15 * e, (low, high, wrong[band].sum(), e)


def test_adapter_reads_carry_the_adapter_at_the_insert_end(
    reads: Reads, truth: list[dict[str, str]]
) -> None:
    """Inserts shorter than a read run into the TruSeq adapter right after the insert."""
    rl = DemoSpec().read_length
    checked = exact = mismatches = 0
    expected_errors = 0.0
    for i, row in enumerate(truth):
        insert = int(row["insert"])
        if row["is_empty"] == "1":
            continue
        assert (row["has_adapter"] == "1") == (insert < rl)
        if row["has_adapter"] == "0":
            continue
        mates = (
            (reads.seq1[i], reads.qual1[i], ADAPTER_R1),
            (reads.seq2[i], reads.qual2[i], ADAPTER_R2),
        )
        for seq, qual, adapter in mates:
            n = min(len(adapter), rl - insert)
            found, phred = seq[insert : insert + n], qual[insert : insert + n]
            wrong = sum(a not in (b, "N") for a, b in zip(found, adapter[:n], strict=True))
            mismatches += wrong
            expected_errors += sum(10 ** (-(ord(q) - 33) / 10) for q in phred)
            checked += 1
            exact += wrong == 0
    # Mismatches in the adapter are sequencing errors, as frequent as the qualities say.
    assert checked > 200 and exact > 0.9 * checked
    assert abs(mismatches - expected_errors) < 0.3 * expected_errors + 10, (
        mismatches,
        expected_errors,
    )


def test_polyg_follows_the_adapter_construct(
    default_demo: Demo, reads: Reads, truth: list[dict[str, str]]
) -> None:
    """Past the adapter construct a two-colour instrument reads G."""
    construct = len(default_demo.manifest["adapters"]["r1_readthrough"])
    tails = [
        reads.seq1[i][int(r["insert"]) + construct :]
        for i, r in enumerate(truth)
        if r["has_polyg"] == "1" and r["is_duplicate"] == "0"
    ]
    assert len(tails) > 10
    tail = "".join(tails)
    assert tail.count("G") > 0.95 * len(tail)


def test_duplicates_are_exact_copies_of_another_pair(
    reads: Reads, truth: list[dict[str, str]]
) -> None:
    """PCR duplicates copy both mates exactly; some qualities differ."""
    index = {r["name"]: i for i, r in enumerate(truth)}
    same_quality = 0
    dups = [i for i, r in enumerate(truth) if r["is_duplicate"] == "1"]
    for i in dups:
        j = index[truth[i]["duplicate_of"]]
        assert truth[j]["is_duplicate"] == "0" and truth[j]["is_empty"] == "0"
        assert (reads.seq1[i], reads.seq2[i]) == (reads.seq1[j], reads.seq2[j])
        for key in ("genome", "start", "insert", "strand"):
            assert truth[i][key] == truth[j][key]
        same_quality += (reads.qual1[i], reads.qual2[i]) == (reads.qual1[j], reads.qual2[j])
    assert 0 < same_quality < len(dups)
    assert all(r["duplicate_of"] == "" for r in truth if r["is_duplicate"] == "0")


def test_mate_two_is_the_other_end_of_the_fragment(
    default_demo: Demo, reads: Reads, truth: list[dict[str, str]]
) -> None:
    """R2 is the reverse complement of the fragment's far end."""
    genomes = mutated_genomes(default_demo)
    i = next(
        k
        for k, r in enumerate(truth)
        if r["strand"] == "+" and r["is_duplicate"] == "0" and int(r["insert"]) > 400
    )
    row = truth[i]
    start, insert = int(row["start"]), int(row["insert"])
    end_of_fragment = genomes[row["genome"]][start + insert - 30 : start + insert]
    matches = sum(a == b for a, b in zip(revcomp(end_of_fragment), reads.seq2[i][:30], strict=True))
    assert matches >= 28


def test_blocks_keep_counts_and_unique_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block-wise simulation (large n_pairs) keeps counts, names and duplicates right."""
    monkeypatch.setattr(demo_reads, "CHUNK_PAIRS", 700)
    spec = DemoSpec(**{**SMALL.__dict__, "empty_reads": 4})
    demo = write_demo(tmp_path / "d", spec)
    rows = read_tsv(demo.truth)
    parsed = parse_reads(demo)
    assert len(rows) == len(set(parsed.ids1)) == spec.n_pairs
    assert sum(r["is_duplicate"] == "1" for r in rows) == round(spec.n_pairs * 0.05)
    assert sum(r["is_empty"] == "1" for r in rows) == 4
    index = {r["name"]: i for i, r in enumerate(rows)}
    for i, r in enumerate(rows):
        if r["duplicate_of"]:
            assert parsed.seq1[i] == parsed.seq1[index[r["duplicate_of"]]]



# --- external tools ----------------------------------------------------------------------


@pytest.mark.integration
def test_fastp_accepts_reads_and_detects_adapters(default_demo: Demo, tmp_path: Path) -> None:
    """fastp reads the files, finds both TruSeq adapters, duplicates and polyG."""
    report = tmp_path / "fastp.json"
    done = subprocess.run(
        [
            require_tool("fastp"),
            "-i", str(default_demo.r1),
            "-I", str(default_demo.r2),
            "-o", str(tmp_path / "o1.fq.gz"),
            "-O", str(tmp_path / "o2.fq.gz"),
            "--detect_adapter_for_pe",
            "-j", str(report),
            "-h", str(tmp_path / "fastp.html"),
            "-w", "2",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert result["summary"]["before_filtering"]["total_reads"] == 2 * DemoSpec().n_pairs
    cutting = result["adapter_cutting"]
    assert cutting["read1_adapter_sequence"] == ADAPTER_R1
    assert cutting["read2_adapter_sequence"] == ADAPTER_R2
    assert cutting["adapter_trimmed_reads"] >= default_demo.manifest["counts"]["adapter_pairs"]
    assert abs(result["duplication"]["rate"] - DemoSpec().duplicate_fraction) < 0.02
    # The NovaSeq-style names (@A0...) make fastp trim polyG tails.
    trimmed = [r[1] for r in read_fastq(tmp_path / "o1.fq.gz")]
    assert not any(re.search("G{10,}$", s) for s in trimmed)
