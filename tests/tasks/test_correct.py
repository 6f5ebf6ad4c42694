"""Tests for tasks.correct: k-mer counting, solid threshold and substitution correction."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helixflow.tasks.correct import (
    CorrectionCounts,
    CorrectionParams,
    SolidKmers,
    correct_batch,
    count_kmers,
    kmer_histogram,
    merge_counts,
    partition_counts,
    solid_threshold,
)
from helixflow.tasks.fastq import iter_read_batches
from helixflow.tasks.reads import READS_SCHEMA
from tests.conftest import require_tool

K = 15
_COMP = str.maketrans("ACGTN", "TGCAN")
_CODE = {"A": 0, "C": 1, "G": 2, "T": 3}


def revcomp(seq: str) -> str:
    return seq.translate(_COMP)[::-1]


def pack(kmer: str) -> int:
    value = 0
    for base in kmer:
        value = value * 4 + _CODE[base]
    return value


def reference_counts(seqs: list[str], k: int) -> Counter[int]:
    """Canonical k-mer counts the slow, obvious way."""
    counts: Counter[int] = Counter()
    for s in seqs:
        for i in range(len(s) - k + 1):
            w = s[i : i + k]
            if set(w) <= set("ACGT"):
                counts[min(pack(w), pack(revcomp(w)))] += 1
    return counts


def make_batch(seqs: list[str], quals: list[str] | None = None) -> pa.RecordBatch:
    """Single-end reads in READS_SCHEMA."""
    n = len(seqs)
    quals = quals if quals is not None else ["I" * len(s) for s in seqs]
    return pa.RecordBatch.from_arrays(
        [
            pa.array([f"r{i}" for i in range(n)]),
            pa.array(np.zeros(n, np.uint8)),
            pa.array(np.arange(n, dtype=np.int64)),
            pa.array(np.arange(1, n + 1, dtype=np.int64)),
            pa.array(seqs),
            pa.array(quals),
            pa.array([not s for s in seqs]),
        ],
        schema=READS_SCHEMA,
    )


def as_dict(table: pa.Table) -> dict[int, int]:
    kmers, counts = table.column("kmer").to_pylist(), table.column("count").to_pylist()
    return dict(zip(kmers, counts, strict=True))


# --------------------------------------------------------------------------------------
# Counting


def test_counts_are_exact_with_n_short_and_empty_reads() -> None:
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGTN"), int(rng.integers(0, 60)), p=[0.24] * 4 + [0.04]))
            for _ in range(200)]
    seqs += ["ACGTACGTACGTACGTACGT", revcomp("ACGTACGTACGTACGTACGT"), "", "ACG", "N" * 30]
    for k in (1, 5, K, 31):
        got = as_dict(count_kmers(make_batch(seqs), k))
        assert got == dict(reference_counts(seqs, k)), k


def test_palindrome_and_strands_count_as_one() -> None:
    table = count_kmers(make_batch(["AAAAC", "GTTTT", "ACGT"]), 4)
    # AAAAC + GTTTT: AAAA twice (TTTT is its reverse complement), AAAC twice (GTTT)
    assert as_dict(table) == {pack("AAAA"): 2, pack("AAAC"): 2, pack("ACGT"): 1}


def test_merge_and_partitioned_merge_equal_counting_everything() -> None:
    rng = np.random.default_rng(1)
    genome = "".join(rng.choice(list("ACGT"), 300))
    seqs = [genome[i : i + 40] for i in rng.integers(0, 260, 120)]
    parts = [count_kmers(make_batch(seqs[i : i + 30]), K) for i in range(0, 120, 30)]
    whole = count_kmers(make_batch(seqs), K)
    merged = merge_counts(parts)
    assert merged.equals(whole)
    by_part = [merge_counts([partition_counts(t, 3, K)[j] for t in parts]) for j in range(3)]
    assert sum(t.num_rows for t in by_part) == whole.num_rows
    assert {k: v for t in by_part for k, v in as_dict(t).items()} == as_dict(whole)
    assert merge_counts([]).num_rows == 0


def test_arguments_are_checked() -> None:
    batch = make_batch(["ACGT"])
    for k in (0, 32):
        with pytest.raises(ValueError, match="k must be"):
            count_kmers(batch, k)
    solid = SolidKmers.from_kmers(np.array([1, 2], np.uint64), 3)
    with pytest.raises(ValueError, match="k=3"):
        correct_batch(batch, solid, 4)
    with pytest.raises(ValueError, match="n_partitions"):
        partition_counts(count_kmers(batch, 2), 0, 2)


# --------------------------------------------------------------------------------------
# Histogram, threshold, solid set


def test_histogram_and_first_valley() -> None:
    counts = pa.table(
        {"kmer": pa.array(np.arange(8, dtype=np.uint64)),
         "count": pa.array([1, 1, 1, 2, 5, 6, 6, 20_000], pa.uint32())}
    )
    hist = kmer_histogram(counts, max_count=100)
    assert hist[1] == 3 and hist[2] == 1 and hist[6] == 2 and hist[100] == 1
    assert hist.sum() == 8
    spectrum = np.array([0, 9000, 800, 120, 40, 25, 31, 90, 300, 500, 300, 90, 10])
    assert solid_threshold(spectrum) == 5
    with pytest.raises(ValueError, match="valley"):
        solid_threshold(np.array([0, 100, 50, 10, 1, 0]))


def test_solid_set_matches_isin() -> None:
    rng = np.random.default_rng(2)
    keys = np.unique(rng.integers(0, 4**K, 5000, dtype=np.uint64))
    solid = SolidKmers.from_kmers(keys, K)
    queries = np.concatenate([keys, rng.integers(0, 4**K, 5000, dtype=np.uint64)])
    assert np.array_equal(solid.contains(queries), np.isin(queries, keys))
    assert len(solid) == len(keys)
    assert not SolidKmers.from_kmers(np.empty(0, np.uint64), K).contains(keys).any()


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
