"""Tests for embedding shard I/O (tasks/embeddings.py): layout, zero-copy, round trips
through Parquet, readers other than ours (pyarrow, DuckDB) and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helixflow.errors import InputError
from helixflow.tasks import embeddings
from helixflow.tasks.embeddings import (
    EMBEDDING_METHODS,
    METADATA_DIM,
    METADATA_METHOD,
    METADATA_MODEL_ID,
    embedding_schema,
    embedding_table,
    method_family,
    read_embedding_matrix,
    write_embedding_shard,
)
from helixflow.tasks.kmers import canonical_kmer_spectra

SHARD = "s3://bucket/reads/sample=S1/part-00000.parquet"
SHA = "sha256:" + "ab" * 32


def vectors(n: int = 50, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def ids(n: int = 50) -> list[str]:
    return [f"read{i}" for i in range(n)]


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------------------
# Schema and methods


def test_schema_columns_and_metadata() -> None:
    schema = embedding_schema(8, method="dnabert-cls", model_id=SHA)
    assert schema.names == ["sequence_id", "source_shard", "row", "method", "model_id", "vector"]
    assert schema.field("vector").type == pa.list_(pa.float32(), 8)
    assert schema.field("vector").type.value_field.name == "element"  # as Parquet reads it
    assert schema.field("row").type == pa.int64()
    assert schema.metadata == {
        METADATA_DIM: b"8", METADATA_METHOD: b"dnabert-cls", METADATA_MODEL_ID: SHA.encode()
    }
    assert embedding_schema(3).metadata == {METADATA_DIM: b"3"}


@pytest.mark.parametrize("dim", [0, -1, 2.5, True])
def test_schema_rejects_bad_dim(dim: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        embedding_schema(dim)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "family"),
    [("kmer5", "kmer"), ("kmer3", "kmer"), ("protein-murphy10-k3", "protein"),
     ("protein-dayhoff6-k2", "protein"), ("lshvec", "lshvec"), ("dnabert-mean", "dnabert"),
     ("dnabert-cls", "dnabert")],
)
def test_method_families(method: str, family: str) -> None:
    assert method_family(method) == family
    assert family in EMBEDDING_METHODS


@pytest.mark.parametrize("method", ["kmer8", "kmer", "dnabert", "protein-murphy10", "LSHVEC", ""])
def test_unknown_methods_are_rejected(method: str) -> None:
    with pytest.raises(ValueError, match="unknown embedding method"):
        embedding_table(["a"], vectors(1), source_shard=SHARD, method=method)


def test_model_id_is_required_exactly_for_model_methods() -> None:
    with pytest.raises(ValueError, match="need the model's id"):
        embedding_table(["a"], vectors(1), source_shard=SHARD, method="lshvec")
    with pytest.raises(ValueError, match="needs no model"):
        embedding_table(["a"], vectors(1), source_shard=SHARD, method="kmer4", model_id=SHA)


# --------------------------------------------------------------------------------------
# Building tables


def test_table_shares_memory_with_the_vectors() -> None:
    v = vectors()
    table = embedding_table(ids(), v, source_shard=SHARD, method="dnabert-mean", model_id=SHA)
    values = table.column("vector").chunk(0).values
    assert values.buffers()[1].address == v.ctypes.data
    got_ids, matrix = read_embedding_matrix(table)
    assert np.shares_memory(matrix, v)
    np.testing.assert_array_equal(matrix, v)
    assert got_ids.to_pylist() == ids()
    assert table.column("row").to_pylist() == list(range(50))
    assert set(table.column("method").to_pylist()) == {"dnabert-mean"}
    assert set(table.column("model_id").to_pylist()) == {SHA}
    assert set(table.column("source_shard").to_pylist()) == {SHARD}
    assert table.schema.metadata[METADATA_DIM] == b"16"


def test_strided_vectors_are_copied_and_rows_kept() -> None:
    v = vectors(10, 32)[:, ::2]
    rows = np.arange(100, 110, dtype=np.int32)
    table = embedding_table(pa.array(ids(10)), v, source_shard=SHARD, method="kmer3", rows=rows)
    np.testing.assert_array_equal(read_embedding_matrix(table)[1], v)
    assert table.column("row").to_pylist() == list(range(100, 110))


def test_wrong_dtype_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"float32, got float64.*astype"):
        embedding_table(ids(), vectors().astype(np.float64), source_shard=SHARD, method="kmer5")
    with pytest.raises(TypeError, match="NumPy array"):
        embedding_table(["a"], [[1.0, 2.0]], source_shard=SHARD, method="kmer5")  # type: ignore[arg-type]


def test_shape_and_length_mismatches_are_rejected() -> None:
    with pytest.raises(ValueError, match="2-D"):
        embedding_table(ids(3), np.zeros(3, np.float32), source_shard=SHARD, method="kmer5")
    with pytest.raises(ValueError, match="50 vectors for 49 sequence ids"):
        embedding_table(ids(49), vectors(), source_shard=SHARD, method="kmer5")
    with pytest.raises(ValueError, match="positive integer"):
        embedding_table(ids(3), np.zeros((3, 0), np.float32), source_shard=SHARD, method="kmer5")
    with pytest.raises(ValueError, match="rows must be 50 integers"):
        embedding_table(ids(), vectors(), source_shard=SHARD, method="kmer5", rows=np.arange(3))
    with pytest.raises(ValueError, match=">= 0"):
        embedding_table(ids(), vectors(), source_shard=SHARD, method="kmer5",
                        rows=np.arange(50) - 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vector_names_the_sequence(bad: float) -> None:
    v = vectors()
    v[7, 3] = bad
    with pytest.raises(InputError, match=rf"{SHARD}: sequence 'read7' \(row 7\): .*NaN"):
        embedding_table(ids(), v, source_shard=SHARD, method="kmer5")


def test_null_id_is_rejected() -> None:
    with pytest.raises(InputError, match="row 1: sequence id is missing"):
        embedding_table(pa.array(["a", None]), vectors(2), source_shard=SHARD, method="kmer5")


# --------------------------------------------------------------------------------------
# Parquet round trips and other readers


@pytest.fixture
def shard(tmp_path: Path) -> tuple[Path, pa.Table, np.ndarray]:
    v = vectors(200, 24)
    table = embedding_table(ids(200), v, source_shard=SHARD, method="lshvec", model_id=SHA)
    path = tmp_path / "emb" / "part-00000.parquet"
    write_embedding_shard(table, path)
    return path, table, v


def test_round_trip(shard: tuple[Path, pa.Table, np.ndarray]) -> None:
    path, _, v = shard
    got_ids, matrix = read_embedding_matrix(path)
    assert got_ids.to_pylist() == ids(200)
    assert matrix.dtype == np.float32 and matrix.shape == (200, 24)
    assert matrix.flags.c_contiguous
    np.testing.assert_array_equal(matrix, v)
    assert files(path.parent) == ["part-00000.parquet"]  # no temporary file left


def test_pyarrow_reads_the_same_table(shard: tuple[Path, pa.Table, np.ndarray]) -> None:
    path, table, _ = shard
    read = pq.read_table(path)
    assert read.schema.equals(table.schema, check_metadata=True)
    assert read.equals(table)
    meta = pq.read_schema(path).metadata
    assert meta[METADATA_METHOD] == b"lshvec" and meta[METADATA_DIM] == b"24"
    column = pq.ParquetFile(path).metadata.row_group(0).column(5)
    assert column.path_in_schema == "vector.list.element"
    assert column.compression == "ZSTD"
    assert not column.has_dictionary_page


def test_duckdb_reads_vectors_as_float_lists(shard: tuple[Path, pa.Table, np.ndarray]) -> None:
    path, _, v = shard
    rows = duckdb.sql(
        f"select sequence_id, vector, row, method, model_id from read_parquet('{path}')"
    ).fetchall()
    assert [r[0] for r in rows] == ids(200)
    assert [r[1] for r in rows] == v.tolist()  # FLOAT values come back exactly
    assert {(r[3], r[4]) for r in rows} == {("lshvec", SHA)}
    assert [r[2] for r in rows] == list(range(200))


def test_reads_list_columns_written_by_duckdb(
    shard: tuple[Path, pa.Table, np.ndarray], tmp_path: Path
) -> None:
    path, _, v = shard
    copy = tmp_path / "duck.parquet"
    duckdb.sql(f"copy (select * from read_parquet('{path}')) to '{copy}' (format parquet)")
    got_ids, matrix = read_embedding_matrix(copy)
    assert got_ids.to_pylist() == ids(200)
    np.testing.assert_array_equal(matrix, v)
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(
        pa.table({"sequence_id": ["a", "b"], "vector": [[1.0, 2.0], [3.0]]},
                 schema=pa.schema([("sequence_id", pa.string()),
                                   ("vector", pa.list_(pa.float32()))])),
        ragged,
    )
    with pytest.raises(ValueError, match="differ in length"):
        read_embedding_matrix(ragged)


def test_multiple_row_groups_and_slices(tmp_path: Path) -> None:
    v = vectors(1000, 8)
    table = embedding_table(ids(1000), v, source_shard=SHARD, method="kmer3")
    path = tmp_path / "x.parquet"
    pq.write_table(table, path, row_group_size=128)
    np.testing.assert_array_equal(read_embedding_matrix(path)[1], v)
    np.testing.assert_array_equal(read_embedding_matrix(table.slice(10, 5))[1], v[10:15])


def test_empty_shard_round_trip(tmp_path: Path) -> None:
    table = embedding_table([], np.zeros((0, 32), np.float32), source_shard=SHARD,
                            method="kmer3")
    write_embedding_shard(table, tmp_path / "empty.parquet")
    got_ids, matrix = read_embedding_matrix(tmp_path / "empty.parquet")
    assert len(got_ids) == 0 and matrix.shape == (0, 32)


def test_kmer_spectra_to_duckdb(tmp_path: Path) -> None:
    seqs = ["ACGTACGTAA", "GGGCCCAATT", "NNNN"]
    spectra = canonical_kmer_spectra(seqs, 4)
    table = embedding_table(["r0", "r1", "r2"], spectra, source_shard=SHARD, method="kmer4")
    write_embedding_shard(table, tmp_path / "k.parquet")
    sums = duckdb.sql(
        f"select list_sum(vector) from read_parquet('{tmp_path / 'k.parquet'}') order by row"
    ).fetchall()
    assert [round(s[0], 5) for s in sums] == [1.0, 1.0, 0.0]


# --------------------------------------------------------------------------------------
# Writing: validation and atomicity


def test_write_rejects_non_embedding_tables(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an embedding table"):
        write_embedding_shard(pa.table({"a": [1]}), tmp_path / "x.parquet")
    table = embedding_table(ids(2), vectors(2, 4), source_shard=SHARD, method="kmer3")
    with pytest.raises(ValueError, match="expected embedding columns"):
        write_embedding_shard(table.drop_columns(["row"]), tmp_path / "x.parquet")
    lying = table.replace_schema_metadata({**table.schema.metadata, METADATA_DIM: b"5"})
    with pytest.raises(ValueError, match="metadata says dim 5, vectors have 4"):
        write_embedding_shard(lying, tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="local files only"):
        write_embedding_shard(table, "s3://bucket/x.parquet")
    assert files(tmp_path) == []


def test_failed_write_leaves_no_temporary_file_and_keeps_the_old_shard(
    shard: tuple[Path, pa.Table, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _, _ = shard
    before = path.read_bytes()
    other = embedding_table(ids(3), vectors(3, 24, seed=1), source_shard=SHARD,
                            method="lshvec", model_id=SHA)

    def broken_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        assert Path(src).exists()  # the complete temporary file, beside the destination
        assert Path(src).parent == path.parent
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)  # what helixflow.files renames with
    with pytest.raises(OSError, match="disk full"):
        write_embedding_shard(other, path)
    assert files(path.parent) == ["part-00000.parquet"]
    assert path.read_bytes() == before


def test_interrupted_parquet_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_write(table: pa.Table, where: Path, **kwargs: object) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(embeddings.pq, "write_table", half_write)
    table = embedding_table(ids(2), vectors(2, 4), source_shard=SHARD, method="kmer3")
    with pytest.raises(KeyboardInterrupt):
        write_embedding_shard(table, tmp_path / "new.parquet")
    assert files(tmp_path) == []


def test_embedding_writer_publishes_on_close_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    with embeddings.EmbeddingWriter(path, 4, method="kmer3", source_shard=SHARD) as writer:
        writer.write(ids(2), vectors(2, 4), np.arange(2))
        assert files(tmp_path) != ["e.parquet"]  # only the temporary file so far
    assert files(tmp_path) == ["e.parquet"]
    assert pq.read_table(path).num_rows == 2
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="died"), embeddings.EmbeddingWriter(
        path, 4, method="kmer3", source_shard=SHARD
    ) as writer:
        writer.write(ids(3), vectors(3, 4), np.arange(3))
        raise RuntimeError("embedding died")
    assert files(tmp_path) == ["e.parquet"]
    assert path.read_bytes() == before
