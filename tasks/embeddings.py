"""Embedding shards: one Parquet file of sequence vectors per input shard and method.

Every embedding method (k-mer spectra, LSHvec, DNABERT) writes the same layout, so search,
clustering and training read any of them the same way, with pyarrow, DuckDB or Ray Data.

Layout (EMBEDDING columns, one row per sequence):
- `sequence_id`: read or contig id; `source_shard`: the input shard's name and content
  identity (`FileRef.label`, e.g. `s1.part-00000.parquet@sha256:…`; not its URI, so the
  bytes are the same in every store and run); `row`: the sequence's 0-based row in that
  shard, so a vector leads back to its read.
- `method`: what made the vector (see EMBEDDING_METHODS), e.g. "kmer5",
  "protein-murphy10-k3", "lshvec", "dnabert-mean", "dnabert-cls".
- `model_id`: sha256 (or registry id) of the model or hash-function artifact; "" for
  parameter-free methods (k-mer spectra).
- `vector`: fixed_size_list<float32>[dim]; DuckDB sees FLOAT[] (list of floats).
The schema metadata repeats method, dim and model_id (keys `embedding.method`,
`embedding.dim`, `embedding.model_id`) so a reader knows the shard without scanning it.

Memory: vectors go in and out as N x D float32 NumPy matrices sharing memory with the Arrow
column (no per-row Python objects, no copy for C-contiguous float32 input or for reading).

Example:
    >>> table = embedding_table(["r1"], np.ones((1, 4), np.float32),
    ...                         source_shard="s3://b/reads/part-0.parquet", method="kmer3")
    >>> read_embedding_matrix(table)[1].shape
    (1, 4)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from helixflow.errors import InputError
from helixflow.files import atomic_path

EMBEDDING_METHODS: dict[str, str] = {
    "kmer": r"kmer[3-7]",
    "protein": r"protein-[a-z]+[0-9]+-k[1-9][0-9]*",
    "lshvec": r"lshvec",
    "dnabert": r"dnabert-(mean|cls)",
}
"""Method families and the pattern (full match) of their method names: canonical DNA k-mer
spectra ("kmer5"), reduced-alphabet protein k-mer spectra ("protein-murphy10-k3"), LSHvec
and DNABERT (mean-pooled or [CLS] token)."""

PARAMETER_FREE_METHODS: frozenset[str] = frozenset({"kmer", "protein"})
"""Families whose vectors need no model artifact: their model_id is ""; others need one."""

METADATA_METHOD, METADATA_DIM, METADATA_MODEL_ID = (
    b"embedding.method",
    b"embedding.dim",
    b"embedding.model_id",
)

# Constant per shard: dictionary-encode them in Parquet. Vectors are neither dictionary
# encoded nor given statistics (min/max of list elements help no query).
_DICTIONARY_COLUMNS = ["source_shard", "method", "model_id"]
_STATISTICS_COLUMNS = ["sequence_id", "source_shard", "row", "method", "model_id"]


def method_family(method: str) -> str:
    """The EMBEDDING_METHODS family of a method name, or ValueError listing the patterns.

    Args:
        method: an embedding method name, e.g. "kmer5" or "dnabert-cls".

    Returns:
        The key of the first EMBEDDING_METHODS pattern the name fully matches.

    Raises:
        ValueError: no pattern matches.
    """
    for family, pattern in EMBEDDING_METHODS.items():
        if re.fullmatch(pattern, method):
            return family
    raise ValueError(
        f"unknown embedding method {method!r}; expected one of the patterns "
        f"{sorted(EMBEDDING_METHODS.values())}"
    )


def _check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"embedding dim must be a positive integer, got {dim!r}")
    return int(dim)


def vector_type(dim: int) -> pa.FixedSizeListType:
    """fixed_size_list<element: float32>[dim]; 'element' is the child name Parquet readers
    give back, so a schema read from a shard equals the one written.

    Args:
        dim: floats per vector, >= 1.

    Returns:
        The Arrow vector type.

    Raises:
        ValueError: `dim` is not a positive integer.
    """
    return pa.list_(pa.field("element", pa.float32()), _check_dim(dim))


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    """The column as one array; a single chunk is used as is (combine_chunks copies)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def embedding_schema(dim: int, *, method: str | None = None, model_id: str = "") -> pa.Schema:
    """The embedding shard schema for vectors of `dim` floats.

    With `method`, the schema metadata records method, dim and model_id (as written by
    embedding_table); without, only dim (a schema to compare column types against).

    Args:
        dim: floats per vector, >= 1.
        method: the method name to record in the metadata; None records dim only.
        model_id: the model's id to record (with `method` only); "" for k-mer methods.

    Returns:
        The schema: sequence_id, source_shard, row, method, model_id, vector.

    Raises:
        ValueError: `dim` is not a positive integer.
    """
    dim = _check_dim(dim)
    metadata = {METADATA_DIM: str(dim).encode()}
    if method is not None:
        metadata[METADATA_METHOD] = method.encode()
        metadata[METADATA_MODEL_ID] = model_id.encode()
    return pa.schema(
        [
            pa.field("sequence_id", pa.string(), nullable=False),
            pa.field("source_shard", pa.string(), nullable=False),
            pa.field("row", pa.int64(), nullable=False),
            pa.field("method", pa.string(), nullable=False),
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("vector", vector_type(dim), nullable=False),
        ],
        metadata=metadata,
    )


def _ids_array(sequence_ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> pa.Array:
    if isinstance(sequence_ids, pa.ChunkedArray):
        sequence_ids = _one_chunk(sequence_ids)
    if isinstance(sequence_ids, str | bytes):
        raise TypeError("sequence_ids must be a list of strings or an Arrow array, not a string")
    if not isinstance(sequence_ids, pa.Array):
        sequence_ids = pa.array(list(sequence_ids), pa.string())
    if not (pa.types.is_string(sequence_ids.type) or pa.types.is_large_string(sequence_ids.type)):
        raise TypeError(f"sequence_ids must be strings, got Arrow type {sequence_ids.type}")
    return sequence_ids.cast(pa.string())


def _check_vectors(vectors: np.ndarray, ids: pa.Array, source_shard: str) -> np.ndarray:
    """The vectors as a C-contiguous float32 N x D matrix, or a clear error."""
    if not isinstance(vectors, np.ndarray):
        raise TypeError(f"vectors must be a NumPy array, got {type(vectors).__name__}")
    if vectors.dtype != np.float32:
        raise TypeError(
            f"vectors must be float32, got {vectors.dtype} (convert with .astype(np.float32))"
        )
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be a 2-D N x dim matrix, got shape {vectors.shape}")
    if vectors.shape[0] != len(ids):
        raise ValueError(f"{vectors.shape[0]} vectors for {len(ids)} sequence ids")
    _check_dim(vectors.shape[1])
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InputError(
            source_shard,
            f"sequence {ids[row].as_py()!r} (row {row}): embedding has NaN or infinite values",
        )
    return np.ascontiguousarray(vectors)  # a copy only for strided input


def embedding_table(
    sequence_ids: pa.Array | pa.ChunkedArray | Sequence[str],
    vectors: np.ndarray,
    *,
    source_shard: str,
    method: str,
    model_id: str = "",
    rows: np.ndarray | None = None,
) -> pa.Table:
    """One embedding shard as an Arrow table, the vector column sharing `vectors`' memory.

    Args:
        sequence_ids: one id per vector (Arrow strings or a list of str), no nulls.
        vectors: N x dim float32 matrix, finite values. C-contiguous input is not copied
            (keep it unchanged while the table lives); other layouts are copied once.
        source_shard: the input shard's `FileRef.label` (name@sha256), the same in every store.
        method: a method name matching EMBEDDING_METHODS (e.g. "kmer5", "dnabert-cls").
        model_id: sha256 or id of the model artifact; must be "" for k-mer methods and
            non-empty for model-based ones, so every vector can be traced to its model.
        rows: each sequence's row in the source shard (default 0..N-1).

    Returns:
        The table in `embedding_schema(dim, method=method, model_id=model_id)`.

    Raises:
        TypeError: vectors not a float32 NumPy array, ids not strings.
        ValueError: wrong shape, length mismatches, unknown method, bad model_id or rows.
        InputError: a null id, or a vector with NaN/inf (naming the sequence id).
    """
    family = method_family(method)
    if family in PARAMETER_FREE_METHODS and model_id:
        raise ValueError(f"{method} needs no model: model_id must be '', got {model_id!r}")
    if family not in PARAMETER_FREE_METHODS and not model_id:
        raise ValueError(f"{method} vectors need the model's id (e.g. its sha256) as model_id")
    ids = _ids_array(sequence_ids)
    if ids.null_count:
        row = int(np.flatnonzero(~np.asarray(pc.is_valid(ids)))[0])
        raise InputError(source_shard, f"row {row}: sequence id is missing")
    matrix = _check_vectors(vectors, ids, source_shard)
    n, dim = matrix.shape
    if rows is None:
        row_array = pa.array(np.arange(n, dtype=np.int64))
    else:
        rows = np.asarray(rows)
        if rows.shape != (n,) or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"rows must be {n} integers, got {rows.dtype} of shape {rows.shape}")
        if n and rows.min() < 0:
            raise ValueError("rows must be >= 0 (0-based rows of the source shard)")
        row_array = pa.array(rows.astype(np.int64, copy=False))
    values = pa.Array.from_buffers(pa.float32(), n * dim, [None, pa.py_buffer(matrix)])
    vector = pa.FixedSizeListArray.from_arrays(values, type=vector_type(dim))
    schema = embedding_schema(dim, method=method, model_id=model_id)
    return pa.Table.from_arrays(
        [
            ids,
            pa.repeat(pa.scalar(source_shard, pa.string()), n),
            row_array,
            pa.repeat(pa.scalar(method, pa.string()), n),
            pa.repeat(pa.scalar(model_id, pa.string()), n),
            vector,
        ],
        schema=schema,
    )


def _check_table(table: pa.Table) -> int:
    """The vector dim of an embedding table, or ValueError if it is not one."""
    vector_type = table.schema.field("vector").type if "vector" in table.schema.names else None
    if not isinstance(vector_type, pa.FixedSizeListType):
        raise ValueError(f"not an embedding table (see embedding_schema): {table.schema}")
    expected = embedding_schema(vector_type.list_size)
    if [(f.name, f.type) for f in table.schema] != [(f.name, f.type) for f in expected]:
        raise ValueError(f"expected embedding columns {expected.names}, got {table.schema}")
    meta = table.schema.metadata or {}
    if meta.get(METADATA_DIM, str(vector_type.list_size).encode()) != str(
        vector_type.list_size
    ).encode():
        raise ValueError(
            f"schema metadata says dim {meta[METADATA_DIM].decode()}, "
            f"vectors have {vector_type.list_size}"
        )
    return int(vector_type.list_size)


def write_embedding_shard(table: pa.Table, path: str | Path) -> None:
    """Write an embedding table to a zstd-compressed Parquet file at a local path, atomically.

    The file appears complete or not at all (`helixflow.files.atomic_path`). Only the
    per-shard constant columns are dictionary encoded; vectors are plain floats.

    Args:
        table: vectors and ids in the embedding schema (see `embedding_table`).
        path: local destination; parent directories are created.

    Returns:
        None.

    Raises:
        ValueError: `path` is a URL, or `table` is not in the embedding schema.
    """
    _check_table(table)
    if "://" in str(path):
        raise ValueError(f"write_embedding_shard writes local files only, got {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            use_dictionary=_DICTIONARY_COLUMNS,
            write_statistics=_STATISTICS_COLUMNS,
        )


def read_embedding_matrix(source: str | Path | pa.Table) -> tuple[pa.Array, np.ndarray]:
    """(sequence ids, N x dim float32 matrix) of an embedding shard or table.

    The matrix is a read-only view of the Arrow vector column (no copy). Accepts files
    written by other tools too, as long as every vector has the same length (a Parquet
    list column, e.g. written by DuckDB, is checked and converted).

    Args:
        source: a Parquet file path or an Arrow table with `sequence_id` and `vector`.

    Returns:
        (sequence ids, N x dim float32 matrix); (ids, a 0 x 0 matrix) for an empty list
        column.

    Raises:
        ValueError: no `vector` column, null vectors, or vectors of different lengths.
    """
    if isinstance(source, pa.Table):
        table = source.select(["sequence_id", "vector"])
    else:
        table = pq.read_table(source, columns=["sequence_id", "vector"])
    where = "table" if isinstance(source, pa.Table) else str(source)
    ids = _one_chunk(table.column("sequence_id"))
    vectors = _one_chunk(table.column("vector"))
    if vectors.null_count:
        raise ValueError(f"{where}: {vectors.null_count} null vectors")
    if not isinstance(vectors.type, pa.FixedSizeListType):
        lengths = np.asarray(pc.list_value_length(vectors))
        if len(lengths) and (lengths != lengths[0]).any():
            span = f"{lengths.min()}..{lengths.max()}"
            raise ValueError(f"{where}: vectors differ in length ({span})")
        if not len(lengths):
            return ids, np.zeros((0, 0), np.float32)
        dim = int(lengths[0])
        vectors = vectors.cast(pa.list_(vectors.type.value_type, dim))
    dim = vectors.type.list_size
    values = vectors.flatten()  # honours the array's slice offset
    if values.type != pa.float32():
        raise ValueError(f"{where}: vectors hold {values.type}, expected float32")
    matrix = values.to_numpy(zero_copy_only=True).reshape(len(vectors), dim)
    return ids, matrix


class _Aborted(Exception):
    """Handed to a writer's `atomic_path` to make it drop the temporary file."""


class EmbeddingWriter:
    """Streams one shard's vectors to Parquet batch by batch (memory bounded by a batch),
    then publishes the file atomically on `close()`; `abort()` leaves nothing behind.

    Example:
        >>> with EmbeddingWriter(Path("e.parquet"), 4, method="kmer3",
        ...                      source_shard="file:///s.parquet") as w:  # doctest: +SKIP
        ...     w.write(["r1"], np.ones((1, 4), np.float32), np.array([0]))
    """

    def __init__(self, path: Path, dim: int, *, method: str, source_shard: str,
                 model_id: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.schema = embedding_schema(dim, method=method, model_id=model_id)
        self.method, self.model_id, self.source_shard = method, model_id, source_shard
        self.rows = 0
        self._publish = atomic_path(self.path)  # entered here, left in close() or abort()
        self._tmp = self._publish.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd",
                                        use_dictionary=_DICTIONARY_COLUMNS,
                                        write_statistics=_STATISTICS_COLUMNS)

    def write(self, sequence_ids: pa.Array | Sequence[str], vectors: np.ndarray,
              rows: np.ndarray) -> None:
        table = embedding_table(sequence_ids, vectors, source_shard=self.source_shard,
                                method=self.method, model_id=self.model_id, rows=rows)
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> int:
        """Finish the file and move it into place; returns the rows written."""
        self._writer.close()
        self._publish.__exit__(None, None, None)
        return self.rows

    def abort(self) -> None:
        """Close and remove the unfinished file; the destination stays as it was."""
        self._writer.close()
        aborted = _Aborted()
        self._publish.__exit__(_Aborted, aborted, None)  # removes the temporary file

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def sequence_ids(read_ids: pa.Array, mates: pa.Array) -> pa.Array:
    """Read ids as embedding sequence ids: `name/1`, `name/2` for mates, `name` alone for
    single-end reads (mate 0), so both mates of a pair keep distinct vectors.

    Args:
        read_ids: READS_SCHEMA `read_id` values.
        mates: the matching `mate` values (0, 1 or 2).

    Returns:
        A string array of the same length.
    """
    suffix = pc.if_else(pc.equal(mates, 0), "",
                        pc.binary_join_element_wise("/", pc.cast(mates, pa.string()), ""))
    return pc.binary_join_element_wise(read_ids, suffix, "")


def iter_read_sequences(source: pq.ParquetFile, batch_rows: int = 65_536
                        ) -> Iterator[tuple[pa.Array, pa.Array, np.ndarray]]:
    """(sequence ids, sequences, row numbers) of a read shard, one bounded batch at a time.

    Args:
        source: an open Parquet read shard (READS_SCHEMA; read_id, mate and sequence are read).
        batch_rows: rows per batch.

    Returns:
        An iterator of (ids as `sequence_ids` makes them, the `sequence` column, int64 row
        numbers in the shard).
    """
    start = 0
    for batch in source.iter_batches(batch_size=batch_rows,
                                     columns=["read_id", "mate", "sequence"]):
        ids = sequence_ids(batch.column("read_id"), batch.column("mate"))
        rows = np.arange(start, start + batch.num_rows, dtype=np.int64)
        start += batch.num_rows
        yield ids, batch.column("sequence"), rows
