"""Tests for read statistics (tasks/readstats.py) against a per-read reference."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from helixflow.tasks.fastq import iter_read_batches
from helixflow.tasks.readstats import ReadStats, batch_stats
from tests.tasks.test_fastq import (
    Record,
    collect,
    fastq_text,
    random_records,
    reference_parse,
    write,
)


def naive_stats(records: list[tuple[str, str, str]]) -> dict[str, object]:
    """Per-read Python reference for one mate."""
    lengths = [len(s) for _, s, _ in records]
    bases = "".join(s for _, s, _ in records)
    by_pos: dict[int, list[int]] = {}
    for _, _, q in records:
        for i, c in enumerate(q):
            by_pos.setdefault(i, []).append(ord(c) - 33)
    gc, at = sum(bases.count(b) for b in "GC"), sum(bases.count(b) for b in "ATU")
    return {
        "reads": len(records),
        "bases": len(bases),
        "empty_reads": lengths.count(0),
        "min_length": min(lengths),
        "max_length": max(lengths),
        "length_histogram": {n: lengths.count(n) for n in sorted(set(lengths))},
        "gc_fraction": gc / (gc + at),
        "n_bases": bases.count("N"),
        "mean_quality_by_position": [sum(v) / len(v) for _, v in sorted(by_pos.items())],
    }


def assert_stats_match(got: dict[str, object], expected: dict[str, object]) -> None:
    for key, value in expected.items():
        if key == "mean_quality_by_position":
            assert got[key] == pytest.approx(value, abs=1e-4)
        elif key == "gc_fraction":
            assert got[key] == pytest.approx(value)
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("fixed_length", [False, True])
def test_batch_stats_match_a_per_read_reference(tmp_path: Path, fixed_length: bool) -> None:
    def records(seed: int) -> Sequence[Record]:
        recs = random_records(500, seed=seed, max_len=80)
        if fixed_length:
            rng = np.random.default_rng(seed)
            recs = [
                (h, "".join(rng.choice(list("ACGTN"), 80)), "I" * 40 + "#" * 40) for h, _, _ in recs
            ]
        return recs

    r1 = write(tmp_path / "R1.fq", fastq_text(records(21)))
    r2 = write(tmp_path / "R2.fq", fastq_text(records(22)))
    merged = ReadStats()
    for batch in iter_read_batches(str(r1), str(r2), batch_size=64):
        merged = merged.merge(batch_stats(batch))
    whole = batch_stats(collect(str(r1), str(r2)))
    assert merged.to_dict() == whole.to_dict()
    stats = merged.to_dict()
    assert set(stats) == {"1", "2"}
    assert_stats_match(stats["1"], naive_stats(reference_parse(r1)))
    assert_stats_match(stats["2"], naive_stats(reference_parse(r2)))
    assert stats["1"]["mean_length"] == pytest.approx(stats["1"]["bases"] / 500)


def test_single_end_stats_use_mate_zero(tmp_path: Path) -> None:
    path = write(tmp_path / "r.fq", fastq_text([("a", "GGCA", "!!II"), ("b", "", "")]))
    stats = batch_stats(collect(str(path))).to_dict()
    assert list(stats) == ["0"]
    assert stats["0"]["gc_fraction"] == 0.75
    assert stats["0"]["mean_quality_by_position"] == [0.0, 0.0, 40.0, 40.0]
    assert stats["0"]["empty_reads"] == 1
