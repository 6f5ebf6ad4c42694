"""Tests for tasks/correct_spectrum.py: k-mer counting, merging, histogram, solid threshold
and the solid k-mer set."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from helixflow.tasks.correct_spectrum import (
    SolidKmers,
    count_kmers,
    kmer_histogram,
    merge_counts,
    partition_counts,
    solid_threshold,
)
from helixflow.tasks.reads import READS_SCHEMA

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
