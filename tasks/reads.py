"""What every read stage shares: the read-shard schema, its writer, and helpers on read columns.

A read shard is a zstd Parquet file in READS_SCHEMA (written by ingest, qc, dedup and
correct; read by alignment, assembly, embeddings). The stages work on its string columns
as NumPy views (`string_parts`), as left-aligned byte matrices (`padded`) and as small
integer codes (`base_codes`), so those three live here once.

Pure functions (NumPy/Arrow in and out, no Prefect).

Example:
    >>> import pyarrow as pa
    >>> offsets, data = string_parts(pa.array(["ACG", "T"]))
    >>> padded(offsets, data, 3, fill=ord("N")).tobytes()
    b'ACGTNN'
    >>> BASE_CODE[data].tolist()
    [0, 1, 2, 3]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from helixflow.files import atomic_path

READS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("read_id", pa.string(), nullable=False),
        pa.field("mate", pa.uint8(), nullable=False),
        pa.field("fragment", pa.int64(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
        pa.field("sequence", pa.string(), nullable=False),
        pa.field("quality", pa.string(), nullable=False),
        pa.field("is_empty", pa.bool_(), nullable=False),
    ]
)
"""One row per read. `read_id` is the name up to the first whitespace without a trailing
/1 or /2; `mate` is 0 (single-end), 1 or 2; `fragment` is the 0-based read (single-end) or
pair index in the input; `record` the 1-based record number in the read's source file.
In a paired batch the mate-1 rows come first, then the mate-2 rows in the same order."""

IUPAC_BASES = b"ACGTUNRYSWKMBDHV"
"""The bases a read may hold (upper case, as ingest stores them)."""
PHRED_MIN, PHRED_MAX = 33, 126
"""Quality bytes: Phred+33 characters '!'..'~'."""


# --------------------------------------------------------------------------------------
# Read columns as NumPy


def string_parts(
    values: pa.Array | pa.ChunkedArray, *, wide: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) of a string/binary array as NumPy views, without copying the data.

    String i is data[offsets[i]:offsets[i + 1]]; offsets[0] is not necessarily 0 (a
    sliced array keeps its parent's buffer). A chunked array is combined first.

    Args:
        values: a string, binary, large_string or large_binary array.
        wide: give int64 offsets whatever the array type (a copy of the offsets only);
            otherwise they are int32 for string/binary and int64 for the large types.

    Returns:
        (offsets, data): len(values) + 1 offsets, and the data buffer as uint8.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    _, offsets_buf, data_buf = values.buffers()
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        offsets = np.frombuffer(offsets_buf, np.int64, len(values) + 1, values.offset * 8)
    else:
        offsets = np.frombuffer(offsets_buf, np.int32, len(values) + 1, values.offset * 4)
        if wide:
            offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    return offsets, data


def padded(
    offsets: np.ndarray, data: np.ndarray, width: int, *, fill: int = 0, reverse: bool = False
) -> np.ndarray:
    """Consecutive strings as the rows of an (n, width) uint8 matrix, left-aligned.

    Row i holds data[offsets[i]:offsets[i + 1]] (reversed when `reverse`, still starting
    in column 0), then `fill` up to `width`. The strings must be consecutive in `data`,
    as the rows of one Arrow array are (`string_parts`). The matrix is a new array.

    Args:
        offsets: n + 1 offsets into `data` (e.g. a slice of `string_parts` offsets).
        data: the bytes.
        width: columns; at least the longest string.
        fill: the byte after each string's end.
        reverse: each row holds its string back to front (for reverse complements:
            map the matrix through a complement table whose `fill` maps to itself).

    Returns:
        The (n, width) uint8 matrix.

    Example:
        >>> offsets, data = np.array([0, 3, 4]), np.frombuffer(b"ACGT", np.uint8)
        >>> padded(offsets, data, 3, reverse=True).tolist()
        [[71, 67, 65], [84, 0, 0]]
    """
    lengths = np.diff(offsets)
    n = len(lengths)
    matrix = np.full((n, width), fill, np.uint8)
    if not n:
        return matrix
    if int(lengths.max()) > width:
        raise ValueError(f"width {width} is less than the longest string ({lengths.max()})")
    flat = data[offsets[0] : offsets[-1]]
    target = matrix
    if reverse:  # filling the rows bottom-up from the reversed bytes reverses each string
        flat, lengths, target = flat[::-1], lengths[::-1], matrix[::-1]
    if width and lengths.min() == width:
        target[:] = flat.reshape(n, width)
    elif width:
        target[np.arange(width) < lengths[:, None]] = flat
    return matrix


INVALID_BASE = 4
"""Code of every byte that is not a base of the table (`base_codes` default)."""


def base_codes(
    order: bytes = b"ACGT",
    *,
    invalid: int = INVALID_BASE,
    lower_case: bool = True,
    uracil: bool = False,
) -> np.ndarray:
    """Byte -> base code lookup table (index it with a uint8 array of bases).

    The i-th letter of `order` gets code i; every other byte gets `invalid`. This is the
    one definition of base codes; stages that need another order or "invalid" code (fastp's
    ATCG key order, the demo's ACGTN) build their variant here rather than by hand.

    Args:
        order: the letters, in code order (upper case).
        invalid: the code of every other byte.
        lower_case: lower-case letters get their upper-case letter's code.
        uracil: U (and u with `lower_case`) gets T's code.

    Returns:
        A read-only uint8 array of 256 codes.

    Example:
        >>> base_codes(b"ATCG", lower_case=False)[np.frombuffer(b"GATcN", np.uint8)].tolist()
        [3, 0, 1, 4, 4]
    """
    table = np.full(256, invalid, np.uint8)
    for code, letter in enumerate(order):
        table[letter] = code
        if lower_case:
            table[ord(chr(letter).lower())] = code
    if uracil:
        table[ord("U")] = table[ord("T")]
        if lower_case:
            table[ord("u")] = table[ord("T")]
    table.setflags(write=False)
    return table


BASE_CODE = base_codes()
"""A, C, G, T in either case -> 0, 1, 2, 3; anything else (N, IUPAC codes, U, padding) -> 4."""

NUCLEOTIDE_CODE = base_codes(uracil=True)
"""As BASE_CODE, with U/u coded as T (for spectra and ORFs of DNA or RNA)."""


# --------------------------------------------------------------------------------------
# Writing shards


# Lengths apart from the bytes, names prefix-coded, counters delta-coded: 7% faster to
# write, 6% smaller and faster to read than PLAIN (measured on 2x150 bp pairs); DuckDB,
# Polars and Spark read them.
_SHARD_ENCODINGS = {
    "read_id": "DELTA_BYTE_ARRAY",
    "fragment": "DELTA_BINARY_PACKED",
    "record": "DELTA_BINARY_PACKED",
    "sequence": "DELTA_LENGTH_BYTE_ARRAY",
    "quality": "DELTA_LENGTH_BYTE_ARRAY",
}


def write_read_shard(
    batch_or_table: pa.RecordBatch | pa.Table,
    path: str | Path,
    *,
    metadata: dict[str, str] | None = None,
    compression: str = "zstd",
) -> int:
    """Write reads to a zstd-compressed Parquet file at a local path, atomically.

    The file appears complete or not at all (`helixflow.files.atomic_path`), so a crash
    never leaves a half shard that looks valid. String columns skip dictionary encoding and
    statistics, which cost time and give nothing for reads. zstd at level 1 (Arrow's
    default): higher levels cost more time for nothing on bases (about 3.2x either way).

    Args:
        batch_or_table: reads in READS_SCHEMA.
        path: local destination; parent directories are created.
        metadata: extra key/value pairs stored in the Parquet schema metadata.
        compression: Parquet codec; other than "zstd" only to compare codecs (bench/qc.py).

    Returns:
        The number of rows written.

    Example:
        >>> write_read_shard(batch, "part-0.parquet", metadata={"sample": "S1"})  # doctest: +SKIP
        500000
    """
    table = (
        pa.Table.from_batches([batch_or_table])
        if isinstance(batch_or_table, pa.RecordBatch)
        else batch_or_table
    )
    if [(f.name, f.type) for f in table.schema] != [(f.name, f.type) for f in READS_SCHEMA]:
        raise ValueError(f"expected READS_SCHEMA columns {READS_SCHEMA.names}, got {table.schema}")
    if "://" in str(path):
        raise ValueError(f"write_read_shard writes local files only, got {path}")
    path = Path(path)
    meta = dict(table.schema.metadata or {})
    meta.update({str(k).encode(): str(v).encode() for k, v in (metadata or {}).items()})
    table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression=compression,
            use_dictionary=["mate"],
            column_encoding=_SHARD_ENCODINGS,
            write_statistics=["mate", "fragment", "record", "is_empty"],
        )
    return table.num_rows
