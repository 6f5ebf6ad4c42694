"""Tests for tasks/sampling.py: the bound, determinism, and that reading stops at the bound."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helixflow.store import Store
from helixflow.tasks.sampling import first_sequences, sample_shard_sequences


def random_batches(seed: int, sizes: list[int]) -> list[pa.RecordBatch]:
    """Record batches of random reads (lengths 1-30) of the given row counts."""
    rng = np.random.default_rng(seed)
    return [pa.record_batch({"sequence": pa.array(
        ["".join(rng.choice(list("ACGTN"), size=rng.integers(1, 31))) for _ in range(n)],
        pa.string())}) for n in sizes]


@pytest.mark.parametrize("limit", [0, 1, 7, 10, 11, 25, 1000])
def test_bound_and_prefix(limit: int) -> None:
    batches = random_batches(3, [10, 0, 5, 10])
    every = [s for b in batches for s in b.column("sequence").to_pylist()]
    got = first_sequences(batches, limit)
    assert len(got) == min(limit, len(every))
    assert got.to_pylist() == every[:limit]


def test_deterministic_for_a_seed() -> None:
    a = first_sequences(random_batches(11, [40, 40, 40]), 90)
    b = first_sequences(random_batches(11, [40, 40, 40]), 90)
    other = first_sequences(random_batches(12, [40, 40, 40]), 90)
    assert a.equals(b) and not a.equals(other)


def test_reading_stops_at_the_bound() -> None:
    """No batch is pulled past the bound, and the generator is closed (files released)."""
    pulled: list[int] = []
    closed: list[bool] = []
    batches = random_batches(5, [4] * 10)

    def gen() -> Iterator[pa.RecordBatch]:
        try:
            for i, b in enumerate(batches):
                pulled.append(i)
                yield b
        finally:
            closed.append(True)

    assert len(first_sequences(gen(), 9)) == 9
    assert pulled == [0, 1, 2] and closed == [True]


def test_empty_input_is_an_empty_string_array() -> None:
    got = first_sequences(iter([]), 5)
    assert len(got) == 0 and got.type == pa.string()


def test_shards_in_order_until_the_bound(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    batches = random_batches(7, [30, 30, 30])
    shards = []
    for i, batch in enumerate(batches):
        path = tmp_path / f"s{i}.parquet"
        pq.write_table(pa.Table.from_batches([batch]), path)
        shards.append(store.publish(path, run_id="r", stage="ingest", name=path.name))
    every = [s for b in batches for s in b.column("sequence").to_pylist()]
    got = sample_shard_sequences(store, shards, 45)
    assert got.to_pylist() == every[:45]
