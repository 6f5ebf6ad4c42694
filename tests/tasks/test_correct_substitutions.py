"""Tests for tasks/correct_substitutions.py: substitution correction of generated reads
with planted errors, and of ART-simulated reads against their truth (integration)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helixflow.tasks.correct_spectrum import (
    SolidKmers,
    count_kmers,
    kmer_histogram,
    solid_threshold,
)
from helixflow.tasks.correct_substitutions import (
    CorrectionCounts,
    CorrectionParams,
    correct_batch,
)
from helixflow.tasks.fastq import iter_read_batches
from tests.conftest import require_tool
from tests.tasks.test_correct_spectrum import K, make_batch, reference_counts, revcomp


def test_solid_set_of_another_k_is_refused() -> None:
    solid = SolidKmers.from_kmers(np.array([1, 2], np.uint64), 3)
    with pytest.raises(ValueError, match="k=3"):
        correct_batch(make_batch(["ACGT"]), solid, 4)


# --------------------------------------------------------------------------------------
# Correction on generated reads with planted errors


def simulate(
    rng: np.random.Generator, genome: str, n: int, length: int
) -> tuple[list[str], list[str]]:
    """Error-free reads from both strands and Illumina-like Q30-40 qualities."""
    starts = rng.integers(0, len(genome) - length, n)
    seqs = [genome[s : s + length] for s in starts]
    seqs = [revcomp(s) if rng.random() < 0.5 else s for s in seqs]
    quals = ["".join(chr(33 + q) for q in rng.integers(30, 41, length)) for _ in range(n)]
    return seqs, quals


def substitute(
    seq: str, qual: str, pos: int, rng: np.random.Generator, q: int = 8
) -> tuple[str, str]:
    wrong = rng.choice([b for b in "ACGT" if b != seq[pos]])
    return seq[:pos] + wrong + seq[pos + 1 :], qual[:pos] + chr(33 + q) + qual[pos + 1 :]


def mismatches(a: str, b: str) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def planted() -> dict[str, object]:
    """40x reads of a random 20 kb genome; errors planted in reads 0-299, N in 300-349."""
    rng = np.random.default_rng(7)
    genome = "".join(rng.choice(list("ACGT"), 20_000))
    truth, quals = simulate(rng, genome, 8000, 100)
    reads = list(truth)
    kinds: dict[int, str] = {}
    for i in range(300):
        kind = ("middle", "start", "end", "pair", "far-pair")[i % 5]
        kinds[i] = kind
        positions = {
            "middle": [int(rng.integers(20, 80))],
            "start": [int(rng.integers(0, 5))],
            "end": [int(rng.integers(95, 100))],
            "pair": [40, 42],
            "far-pair": [30, 60],
        }[kind]
        for p in positions:
            reads[i], quals[i] = substitute(reads[i], quals[i], p, rng)
    for i in range(300, 350):
        p = int(rng.integers(0, 100))
        reads[i] = reads[i][:p] + "N" + reads[i][p + 1 :]
    batch = make_batch(reads, quals)
    counts = count_kmers(batch, K)
    threshold = solid_threshold(kmer_histogram(counts))
    solid = SolidKmers.from_counts(counts, threshold, K)
    fixed, stats = correct_batch(batch, solid, K)
    return {"truth": truth, "reads": reads, "quals": quals, "kinds": kinds,
            "batch": batch, "solid": solid, "threshold": threshold,
            "fixed": fixed.column("sequence").to_pylist(), "stats": stats, "out": fixed}


def test_threshold_separates_errors_from_genome(planted: dict) -> None:
    # 40x of 100 bp reads: genome k-mers about 34x, planted errors once or twice.
    # 40x of 100 bp reads: genome k-mers about 34x (none below 15), errors once or twice.
    assert 3 <= planted["threshold"] <= 15
    counts = count_kmers(planted["batch"], K)
    solid = set(counts.filter(pa.compute.greater_equal(counts["count"], planted["threshold"]))
                .column("kmer").to_pylist())
    genome_kmers = set(reference_counts(planted["truth"], K))
    assert solid <= genome_kmers  # no error k-mer is solid
    assert len(solid) > 0.99 * len(genome_kmers)  # only the thinly covered genome ends miss


def test_planted_errors_are_fixed(planted: dict) -> None:
    truth, fixed, kinds = planted["truth"], planted["fixed"], planted["kinds"]
    for kind in ("middle", "start", "end", "pair", "far-pair"):
        rows = [i for i, kd in kinds.items() if kd == kind]
        ok = sum(fixed[i] == truth[i] for i in rows)
        assert ok == len(rows), f"{kind}: {len(rows) - ok} of {len(rows)} reads left wrong"


def test_no_read_made_worse_and_error_free_reads_untouched(planted: dict) -> None:
    truth, reads, fixed = planted["truth"], planted["reads"], planted["fixed"]
    for t, r, f in zip(truth, reads, fixed, strict=True):
        assert mismatches(f, t) <= mismatches(r, t)
    assert fixed[350:] == reads[350:]


def test_n_is_never_changed(planted: dict) -> None:
    reads, fixed = planted["reads"], planted["fixed"]
    for r, f in zip(reads[300:350], fixed[300:350], strict=True):
        assert [i for i, b in enumerate(r) if b == "N"] == [i for i, b in enumerate(f) if b == "N"]
        assert f == r  # the reads around N are error-free: nothing to change


def test_other_columns_and_counts(planted: dict) -> None:
    out, batch, stats = planted["out"], planted["batch"], planted["stats"]
    assert out.schema == batch.schema
    for name in ("read_id", "mate", "fragment", "record", "quality", "is_empty"):
        assert out.column(name).equals(batch.column(name))
    assert isinstance(stats, CorrectionCounts)
    assert stats.reads == 8000 and stats.bases == 800_000
    assert stats.corrected_bases == 3 * 60 + 2 * 60 * 2  # three kinds with 1 error, two with 2
    assert stats.corrected_reads == 300
    merged = stats.merge(stats)
    assert merged.corrected_bases == 2 * stats.corrected_bases


def test_sliced_batches_and_tables_give_the_same_result(planted: dict) -> None:
    batch, solid, out = planted["batch"], planted["solid"], planted["out"]
    part, _ = correct_batch(batch.slice(250, 100), solid, K)
    assert part.column("sequence").equals(out.column("sequence").slice(250, 100))
    table = pa.Table.from_batches([batch.slice(0, 150), batch.slice(150, 200)])
    whole, _ = correct_batch(table, solid, K)
    assert whole.column("sequence").equals(out.column("sequence").slice(0, 350))
    empty, counts = correct_batch(table.slice(0, 0), solid, K)
    assert empty.num_rows == 0 and counts.reads == 0


def test_high_quality_bases_and_crowded_reads_are_left_alone(planted: dict) -> None:
    rng = np.random.default_rng(3)
    truth = planted["truth"]
    solid = planted["solid"]
    seq, qual = truth[0], "I" * 100  # Q40 everywhere
    one, one_q = substitute(seq, qual, 50, rng, q=40)
    crowded, crowded_q = seq, qual
    for p in (30, 34, 38, 42, 46):  # 5 errors within 20 bp, more than max_per_window=4
        crowded, crowded_q = substitute(crowded, crowded_q, p, rng)
    batch = make_batch([one, crowded], [one_q, crowded_q])
    fixed, stats = correct_batch(batch, solid, K, CorrectionParams(max_quality=30))
    assert fixed.column("sequence").to_pylist() == [one, crowded]
    fixed, stats = correct_batch(batch, solid, K)
    assert fixed.column("sequence").to_pylist()[0] == seq
    assert fixed.column("sequence").to_pylist()[1] == crowded
    assert stats.unfixable_reads == 1


# --------------------------------------------------------------------------------------
# ART-simulated reads (integration)


@pytest.mark.integration
def test_art_reads_are_corrected(shared_data: Path, tmp_path: Path) -> None:
    art = require_tool("art_illumina")
    prefix = tmp_path / "phix"
    subprocess.run(
        [art, "-ss", "HS25", "-p", "-l", "150", "-f", "40", "-m", "300", "-s", "20", "-rs",
         "42", "-na", "-ef", "-i", str(shared_data / "genomes" / "phix174.fa"), "-o", str(prefix)],
        check=True, stdout=subprocess.DEVNULL,
    )
    truth: dict[tuple[str, int], str] = {}
    for line in Path(f"{prefix}_errFree.sam").read_text().splitlines():
        if line.startswith("@"):
            continue
        f = line.split("\t")
        flag = int(f[1])
        truth[(f[0], 1 if flag & 64 else 2)] = revcomp(f[9]) if flag & 16 else f[9]
    batch = next(iter_read_batches(f"{prefix}1.fq", f"{prefix}2.fq", batch_size=100_000))
    counts = count_kmers(batch, 21)
    solid = SolidKmers.from_counts(counts, solid_threshold(kmer_histogram(counts)), 21)
    fixed, _ = correct_batch(batch, solid, 21)
    tp = fp = fn = 0
    keys = zip(batch.column("read_id").to_pylist(), batch.column("mate").to_pylist(), strict=True)
    pairs = zip(keys, batch.column("sequence").to_pylist(), fixed.column("sequence").to_pylist(),
                strict=True)
    for key, before, after in pairs:
        t = truth[key]
        assert mismatches(after, t) <= mismatches(before, t)
        for x, y, z in zip(before, after, t, strict=True):
            tp += x != z and y == z
            fp += x == z and y != z
            fn += x != z and y != z
    gain = (tp - fp) / (tp + fn)
    assert tp > 100
    assert gain >= 0.9, (tp, fp, fn)
