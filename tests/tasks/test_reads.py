"""Tests for the shared read helpers (tasks/reads.py): schema, shard writer, string_parts,
padded, base codes. The old hand-written tables and padding functions of qc, dedup, correct,
kmers, orfs, variants and the demo are kept here verbatim, to prove the shared ones give
every caller exactly what it had (all 256 byte values; many random matrices)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helixflow.app import demo
from helixflow.tasks import correct, dedup, kmers, orfs, qc, variants
from helixflow.tasks.fastq import iter_read_batches
from helixflow.tasks.reads import (
    BASE_CODE,
    NUCLEOTIDE_CODE,
    READS_SCHEMA,
    base_codes,
    padded,
    string_parts,
    write_read_shard,
)
from tests.tasks.test_fastq import fastq_text, random_records, write

ALL_BYTES = np.arange(256, dtype=np.uint8)


# --------------------------------------------------------------------------------------
# Schema and shards


def test_schema_is_the_documented_one() -> None:
    assert [(f.name, str(f.type)) for f in READS_SCHEMA] == [
        ("read_id", "string"),
        ("mate", "uint8"),
        ("fragment", "int64"),
        ("record", "int64"),
        ("sequence", "string"),
        ("quality", "string"),
        ("is_empty", "bool"),
    ]


def test_write_read_shard_round_trips_with_metadata(tmp_path: Path) -> None:
    r1 = write(tmp_path / "R1.fq", fastq_text(random_records(300, seed=23)))
    r2 = write(tmp_path / "R2.fq", fastq_text(random_records(300, seed=24)))
    batch = next(iter(iter_read_batches(str(r1), str(r2))))
    out = tmp_path / "shards" / "part-00000.parquet"
    assert write_read_shard(batch, out, metadata={"sample": "S1", "source": "R1.fq"}) == 600
    table = pq.read_table(out)
    assert table.cast(READS_SCHEMA).equals(pa.Table.from_batches([batch]))
    assert table.schema.metadata[b"sample"] == b"S1"
    meta = pq.ParquetFile(out).metadata
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left
    assert write_read_shard(pa.Table.from_batches([batch]), tmp_path / "t.parquet") == 600


def test_write_read_shard_refuses_other_tables_and_remote_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="READS_SCHEMA"):
        write_read_shard(pa.table({"x": [1]}), tmp_path / "x.parquet")
    empty = pa.Table.from_batches([], schema=READS_SCHEMA)
    with pytest.raises(ValueError, match="local"):
        write_read_shard(empty, "s3://bucket/x.parquet")


def test_write_read_shard_other_codec_keeps_the_layout(tmp_path: Path) -> None:
    table = pa.table(
        {
            "read_id": ["a", "b"],
            "mate": pa.array([0, 0], pa.uint8()),
            "fragment": [0, 1],
            "record": [1, 2],
            "sequence": ["AC", ""],
            "quality": ["II", ""],
            "is_empty": [False, True],
        },
        schema=READS_SCHEMA,
    )
    out = tmp_path / "x.parquet"
    assert write_read_shard(table, out, compression="lz4") == 2
    meta = pq.ParquetFile(out).metadata
    assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"LZ4"}
    assert pq.read_table(out).equals(table)


# --------------------------------------------------------------------------------------
# string_parts


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.binary()])
def test_string_parts_views_sliced_and_chunked_arrays(kind: pa.DataType) -> None:
    values = pa.array(["AC", "", "GTT", "N"], kind)
    sliced = values.slice(1, 3)
    offsets, data = string_parts(sliced)
    got = [data[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(sliced))]
    assert got == [b"", b"GTT", b"N"]
    assert offsets.dtype == (np.int64 if kind == pa.large_string() else np.int32)
    assert string_parts(sliced, wide=True)[0].dtype == np.int64
    assert np.array_equal(string_parts(sliced, wide=True)[0], offsets)
    chunked = pa.chunked_array([values.slice(0, 2), values.slice(2)])
    c_offsets, c_data = string_parts(chunked)
    assert c_data[c_offsets[0] : c_offsets[-1]].tobytes() == b"ACGTTN"


# --------------------------------------------------------------------------------------
# padded: the three copies it replaces, verbatim


def _qc_padded(offsets: np.ndarray, data: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.diff(offsets).astype(np.int64)
    n = len(lengths)
    matrix = np.zeros((n, width), np.uint8)
    flat = data[offsets[0] : offsets[-1]]
    if n and width and lengths.min() == width:
        matrix[:] = flat.reshape(n, width)
    elif n and width:
        matrix[np.arange(width) < lengths[:, None]] = flat
    return matrix, lengths


_DEDUP_COMPLEMENT = np.arange(256, dtype=np.uint8)
for _a, _b in zip(b"ACGTURYSWKMBDHVN", b"TGCAAYRSWMKVHDBN", strict=True):
    _DEDUP_COMPLEMENT[_a] = _b


def _dedup_padded(
    data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, reverse: bool
) -> np.ndarray:
    width = max(8, -(-int(lengths.max(initial=0)) // 8) * 8)
    cols = np.arange(width, dtype=np.int64)
    inside = cols < lengths[:, None]
    if reverse:
        index = starts[:, None] + lengths[:, None] - 1 - cols
    else:
        index = starts[:, None] + cols
    if len(data) == 0:
        return np.zeros((len(lengths), width), np.uint8)
    np.clip(index, 0, len(data) - 1, out=index)
    matrix = data[index]
    if reverse:
        matrix = _DEDUP_COMPLEMENT[matrix]
    matrix[~inside] = 0
    return matrix


def _correct_padded(
    data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, fill: int
) -> np.ndarray:
    cols = np.arange(width, dtype=np.int64)
    index = starts[:, None] + cols
    if len(data) == 0:
        return np.full((len(lengths), width), fill, np.uint8)
    np.clip(index, 0, len(data) - 1, out=index)
    matrix = data[index]
    matrix[cols >= lengths[:, None]] = fill
    return matrix


def _random_strings(seed: int) -> pa.Array:
    """Strings of random bytes and lengths (some empty, sometimes all one length), sliced."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40))
    same = seed % 4 == 0
    lengths = np.full(n, 7) if same else rng.integers(0, 30, n)
    values = [bytes(rng.integers(0, 256, k, dtype=np.uint8)) for k in lengths]
    array = pa.array([b"pre", *values, b"post"], pa.binary())
    return array.slice(1, n)


@pytest.mark.parametrize("seed", range(40))
def test_padded_gives_what_each_old_copy_gave(seed: int) -> None:
    array = _random_strings(seed)
    offsets, data = string_parts(array)
    wide, _ = string_parts(array, wide=True)
    lengths = np.diff(wide)
    longest = int(lengths.max(initial=0))
    for width in {longest, longest + 3}:
        old, old_lengths = _qc_padded(offsets, data, width)
        assert np.array_equal(padded(offsets, data, width), old)
        assert np.array_equal(np.diff(offsets).astype(np.int64), old_lengths)
        for fill in (ord("N"), 126):
            old = _correct_padded(data, wide[:-1], lengths, width, fill)
            assert np.array_equal(padded(wide, data, width, fill=fill), old)
    for reverse in (False, True):
        old = _dedup_padded(data, wide[:-1], lengths, reverse)
        new = padded(wide, data, old.shape[1], reverse=reverse)
        new = _DEDUP_COMPLEMENT[new] if reverse else new
        assert np.array_equal(new, old)
        assert new.flags.c_contiguous


def test_padded_refuses_a_width_below_the_longest_string() -> None:
    offsets, data = string_parts(pa.array(["ACGT"]))
    with pytest.raises(ValueError, match="longest"):
        padded(offsets, data, 3)


def test_padded_matrix_is_writable_and_not_a_view() -> None:
    offsets, data = string_parts(pa.array(["AC", "GT"]))
    matrix = padded(offsets, data, 2)
    matrix[0, 0] = ord("T")
    assert data.tobytes() == b"ACGT"


# --------------------------------------------------------------------------------------
# Base codes: each caller's table against its old hand-written one, on all 256 bytes


def _old_acgt_lower() -> np.ndarray:  # correct, variants (and lshvec)
    table = np.full(256, 4, np.uint8)
    for i, b in enumerate(b"ACGT"):
        table[b] = i
        table[b + 32] = i
    return table


def _old_acgtu_lower() -> np.ndarray:  # kmers, orfs
    table = _old_acgt_lower()
    table[ord("U")] = table[ord("u")] = 3
    return table


def _old_qc_key_code() -> np.ndarray:
    table = np.full(256, 4, np.uint8)
    table[np.frombuffer(b"ATCG", np.uint8)] = np.arange(4, dtype=np.uint8)
    return table


def _old_demo_code() -> np.ndarray:
    table = np.full(256, 255, dtype=np.uint8)
    table[np.frombuffer(b"ACGTN", dtype=np.uint8)] = np.arange(5, dtype=np.uint8)
    return table


def _old_dnabert_code() -> np.ndarray:  # tasks/dnabert.py, for the engineer switching it
    table = np.full(256, 4, dtype=np.uint8)
    for i, base in enumerate("ATCG"):
        table[ord(base)] = table[ord(base.lower())] = i
    return table


def test_base_codes_match_every_old_table_on_all_bytes() -> None:
    assert np.array_equal(BASE_CODE[ALL_BYTES], _old_acgt_lower()[ALL_BYTES])
    assert np.array_equal(NUCLEOTIDE_CODE[ALL_BYTES], _old_acgtu_lower()[ALL_BYTES])
    assert np.array_equal(qc._KEY_CODE[ALL_BYTES], _old_qc_key_code()[ALL_BYTES])
    assert np.array_equal(orfs._CODE[ALL_BYTES], _old_acgtu_lower()[ALL_BYTES])
    assert np.array_equal(demo._CODE[ALL_BYTES], _old_demo_code()[ALL_BYTES])
    assert np.array_equal(base_codes(b"ATCG")[ALL_BYTES], _old_dnabert_code()[ALL_BYTES])


def test_callers_use_the_shared_tables() -> None:
    """correct, variants and kmers index BASE_CODE / NUCLEOTIDE_CODE themselves."""
    assert correct.BASE_CODE is BASE_CODE
    assert variants.BASE_CODE is BASE_CODE
    assert kmers.NUCLEOTIDE_CODE is NUCLEOTIDE_CODE
    assert orfs._CODE is NUCLEOTIDE_CODE
    assert dedup.padded is padded


def test_base_code_tables_are_read_only() -> None:
    with pytest.raises(ValueError):
        BASE_CODE[0] = 1
