"""Tests for tasks.dedup: global exact-duplicate removal (map, reduce, apply)."""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helixflow.tasks.dedup import (
    DedupCounts,
    choose_keepers,
    drop_duplicates,
    fragment_keys,
    partition_keys,
)
from helixflow.tasks.fastq import iter_read_batches
from tests.conftest import require_tool

_COMP = str.maketrans("ACGTN", "TGCAN")


def revcomp(seq: str) -> str:
    return seq.translate(_COMP)[::-1]


def write_fastq(path: Path, reads: list[tuple[str, str, str]]) -> Path:
    with open(path, "w") as fh:
        for name, seq, qual in reads:
            fh.write(f"@{name}\n{seq}\n+\n{qual}\n")
    return path


def dedup(
    batches: list[pa.RecordBatch], n_partitions: int = 3, keep: str = "best", strand: str = "both"
) -> tuple[list[pa.RecordBatch], DedupCounts]:
    """The three phases as a pipeline would run them."""
    parts = [
        partition_keys(fragment_keys(b, i, strand=strand), n_partitions)  # type: ignore[arg-type]
        for i, b in enumerate(batches)
    ]
    results = [choose_keepers([p[j] for p in parts], keep=keep) for j in range(n_partitions)]  # type: ignore[arg-type]
    dropped = pa.concat_tables([d for d, _ in results])
    counts = DedupCounts()
    for _, c in results:
        counts = counts.merge(c)
    return [drop_duplicates(b, dropped, i) for i, b in enumerate(batches)], counts


def kept_names(batches: list[pa.RecordBatch]) -> list[str]:
    return [name for b in batches for name in b.column("read_id").to_pylist()]


@pytest.fixture
def single_reads(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    seqs = ["".join(rng.choice(list("ACGT"), 30)) for _ in range(4)]
    q = lambda c: c * 30  # noqa: E731
    reads = [
        ("r0", seqs[0], q("5")),
        ("r1", seqs[1], q("5")),
        ("r2", seqs[0], q("I")),  # duplicate of r0, better qualities
        ("r3", revcomp(seqs[1]), q("5")),  # reverse complement of r1
        ("r4", seqs[2], q("5")),
        ("r5", seqs[2][:-1], q("5")[:-1]),  # a prefix is not a duplicate
        ("r6", seqs[1], q("5")),  # duplicate of r1, same qualities
        ("r7", seqs[3].replace(seqs[3][5], "N", 1), q("5")),
        ("r8", "", ""),
        ("r9", "", ""),
    ]
    return write_fastq(tmp_path / "s.fq", reads)


def test_single_end_both_strands_keeps_best_then_first(single_reads: Path) -> None:
    batches = list(iter_read_batches(str(single_reads), batch_size=4))
    assert len(batches) == 3  # duplicates across shards
    kept, counts = dedup(batches)
    assert kept_names(kept) == ["r1", "r2", "r4", "r5", "r7", "r8"]
    assert counts == DedupCounts(fragments=10, kept=6, dropped=4)
    assert counts.duplication_rate == pytest.approx(0.4)


def test_single_end_first_and_forward(single_reads: Path) -> None:
    batches = list(iter_read_batches(str(single_reads), batch_size=4))
    kept, _ = dedup(batches, keep="first")
    assert kept_names(kept) == ["r0", "r1", "r4", "r5", "r7", "r8"]
    kept, counts = dedup(batches, keep="first", strand="forward")
    assert kept_names(kept) == ["r0", "r1", "r3", "r4", "r5", "r7", "r8"]
    assert counts.dropped == 3


def test_partitioning_does_not_change_the_result(single_reads: Path) -> None:
    batches = list(iter_read_batches(str(single_reads), batch_size=3))
    expected = kept_names(dedup(batches, n_partitions=1)[0])
    for p in (2, 5, 16):
        assert kept_names(dedup(batches, n_partitions=p)[0]) == expected
    parts = partition_keys(fragment_keys(batches[0], 0), 5)
    assert sum(t.num_rows for t in parts) == batches[0].num_rows


def test_pairs_hash_both_mates_and_swapped_mates_are_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a, b, c = ("".join(rng.choice(list("ACGT"), 25)) for _ in range(3))
    q, hi = "5" * 25, "I" * 25
    r1 = [("p0", a, q), ("p1", a, q), ("p2", b, hi), ("p3", a, hi), ("p4", a, q)]
    r2 = [("p0", b, q), ("p1", c, q), ("p2", a, hi), ("p3", b, q), ("p4", b, q)]
    f1 = write_fastq(tmp_path / "r1.fq", r1)
    f2 = write_fastq(tmp_path / "r2.fq", r2)
    batches = list(iter_read_batches(str(f1), str(f2), batch_size=2))
    kept, counts = dedup(batches)
    # p0, p2 (swapped mates: other strand), p3 (better R1), p4 are one fragment; p2 is best.
    assert kept_names(kept) == ["p1", "p1", "p2", "p2"]
    assert counts == DedupCounts(fragments=5, kept=2, dropped=3)
    kept, _ = dedup(batches, strand="forward", keep="first")
    assert kept_names(kept) == ["p0", "p1", "p0", "p1", "p2", "p2"]
    assert all(b.schema == batches[0].schema for b in kept)


def test_arguments_are_checked(single_reads: Path) -> None:
    batch = next(iter_read_batches(str(single_reads)))
    with pytest.raises(ValueError, match="strand"):
        fragment_keys(batch, 0, strand="reverse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_partitions"):
        partition_keys(fragment_keys(batch, 0), 0)
    with pytest.raises(ValueError, match="keep"):
        choose_keepers([], keep="last")  # type: ignore[arg-type]
    dropped, counts = choose_keepers([])
    assert dropped.num_rows == 0 and counts == DedupCounts()


def _seqkit_kept(seqkit: str, path: Path, forward: bool) -> list[str]:
    args = [seqkit, "rmdup", "-s", "-j", "1", str(path)] + (["-P"] if forward else [])
    out = subprocess.run(args, capture_output=True, check=True, text=True).stdout
    names = [line[1:].split()[0] for line in out.split("\n")[0::4] if line]
    return [re.sub(r"/[12]$", "", n) for n in names]


def _planted(source: Path, dest: Path) -> int:
    """A gzip FASTQ of real reads plus copies (some reverse-complemented) spread through it."""
    batch = next(iter_read_batches(str(source), batch_size=3000))
    seqs, quals = batch.column("sequence").to_pylist(), batch.column("quality").to_pylist()
    rng = np.random.default_rng(5)
    reads = [(f"orig{i}", s, q) for i, (s, q) in enumerate(zip(seqs, quals, strict=True))]
    for i, j in enumerate(rng.choice(len(seqs), 500, replace=False)):
        s = revcomp(seqs[j]) if i % 2 else seqs[j]
        q = quals[j][::-1] if i % 2 else quals[j]
        reads.insert(int(rng.integers(0, len(reads) + 1)), (f"dup{i}", s, q))
    with gzip.open(dest, "wt") as fh:
        for name, s, q in reads:
            fh.write(f"@{name}\n{s}\n+\n{q}\n")
    return len(reads)


@pytest.mark.integration
@pytest.mark.parametrize("forward", [False, True], ids=["both-strands", "forward"])
def test_surviving_set_equals_seqkit_rmdup(
    shared_data: Path, tmp_path: Path, forward: bool
) -> None:
    seqkit = require_tool("seqkit")
    real = shared_data / "reads" / "ecoli_mg1655_10k_R1.fastq.gz"
    planted = tmp_path / "planted.fq.gz"
    _planted(shared_data / "reads" / "ecoli_mg1655_1k_R1.fq.gz", planted)
    strand = "forward" if forward else "both"
    for path in (real, planted):
        batches = list(iter_read_batches(str(path), batch_size=5000))
        expected = _seqkit_kept(seqkit, path, forward)
        kept, counts = dedup(batches, n_partitions=4, keep="first", strand=strand)
        assert kept_names(kept) == expected  # same records, same order
        assert counts.kept == len(expected)
        # Keeping the best copy instead changes which record survives, not which sequences.
        best, _ = dedup(batches, n_partitions=4, keep="best", strand=strand)
        canon = (lambda s: s) if forward else (lambda s: min(s, revcomp(s)))
        ours = sorted(canon(s) for b in best for s in b.column("sequence").to_pylist())
        first = sorted(canon(s) for b in kept for s in b.column("sequence").to_pylist())
        assert ours == first
    assert counts.dropped >= 250  # the planted copies (plus any real duplicates)


def test_tables_and_empty_input(single_reads: Path) -> None:
    batches = list(iter_read_batches(str(single_reads), batch_size=4))
    table = pa.Table.from_batches(batches)
    keys = fragment_keys(table, 0)
    assert keys.num_rows == 10
    per_batch = pa.concat_tables([fragment_keys(b, 0) for b in batches])
    assert keys.column("hash_hi").equals(per_batch.column("hash_hi"))
    empty = table.slice(0, 0)
    assert fragment_keys(empty, 0).num_rows == 0
    dropped, _ = choose_keepers([keys])
    assert drop_duplicates(table, dropped, 0).num_rows == 6
    assert drop_duplicates(empty, dropped, 0).num_rows == 0


def test_key_does_not_depend_on_the_other_reads_of_the_shard(tmp_path: Path) -> None:
    # Shards differ in their longest read; the padding to it must not enter the hash.
    seq = "ACGTTGCAAC" * 3
    short = write_fastq(tmp_path / "a.fq", [("a", seq, "I" * 30)])
    long = write_fastq(tmp_path / "b.fq", [("b", seq, "I" * 30), ("c", "G" * 151, "I" * 151)])
    for strand in ("both", "forward"):
        a = fragment_keys(next(iter_read_batches(str(short))), 0, strand=strand)  # type: ignore[arg-type]
        b = fragment_keys(next(iter_read_batches(str(long))), 1, strand=strand)  # type: ignore[arg-type]
        assert a.column("hash_hi")[0] == b.column("hash_hi")[0]
        assert a.column("hash_lo")[0] == b.column("hash_lo")[0]
