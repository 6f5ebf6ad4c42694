"""K-mer spectra: canonical DNA k-mer and reduced-alphabet protein k-mer frequency vectors.

Pure functions (NumPy/Arrow in, float32 matrices out, no Prefect); the embedding tasks wrap
them and store the rows with tasks.embeddings.

How it is vectorised. The sequences of a call are one flat byte buffer (the data buffer of
an Arrow string array, read with `tasks.reads.string_parts`, no copy). One lookup table turns
every byte into a letter code; k shifted views of the code array (a sliding window of width
k, one pass per window position, never per read or per k-mer) give the integer code of the
k-mer starting at every position. A window is kept when it holds no invalid letter (prefix
sums of the invalid flags) and ends inside its own sequence. A second lookup table maps each
k-mer code to its column; `numpy.bincount` over `row * D + column` counts all rows at once.
Rows are processed in blocks so that the int64 count temporaries stay small (a few tens of
MB) whatever the batch size; the only Python loop is over blocks and the k window offsets.

DNA conventions:
- A k-mer and its reverse complement are one feature (canonical k-mers), so a sequence and
  its reverse complement have the same spectrum. Columns are the canonical k-mers (the
  lexicographically smaller of the pair) in lexicographic order; `kmer_names(k)` lists them.
  D = 4^k / 2 for odd k, (4^k + 4^(k/2)) / 2 for even k (4^(k/2) k-mers are their own
  reverse complement).
- Upper or lower case; U is read as T. K-mers containing any other letter (N, IUPAC codes,
  gaps '-' or '.') are skipped. Bytes that are not letters, '-', '.' or '*' (digits,
  whitespace, non-ASCII) are an InputError naming the sequence.

Protein conventions:
- Residues are mapped to the groups of a published reduced alphabet (REDUCED_ALPHABETS);
  columns are all len(alphabet)^k group words in base-len(alphabet) order, named by the
  first letter of each group (`protein_kmer_names`).
- '*' (stop) and letters outside the alphabet's 20 standard amino acids (X, B, Z, J, U, O)
  break k-mers: windows containing them are skipped.

Example:
    >>> canonical_kmer_spectra(["ACGT"], 3)[0, kmer_names(3).index("ACG")]
    np.float32(1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect.assets import materialize

from helixflow.artifacts import Artifact
from helixflow.caching import stage_options
from helixflow.errors import InputError
from helixflow.store import Store
from helixflow.tables import PARQUET, parquet_file, publish_file
from helixflow.tasks.embeddings import EmbeddingWriter, iter_read_sequences
from helixflow.tasks.reads import INVALID_BASE, NUCLEOTIDE_CODE, string_parts

SequenceInput = pa.Array | pa.ChunkedArray | Sequence[str]
"""Sequences as an Arrow string array (e.g. a READS_SCHEMA `sequence` or ORFS_SCHEMA
`protein` column) or a list of Python strings."""

KMER_K_RANGE = range(3, 8)
"""Supported DNA k (3..7): 4^7 k-mer codes still fit in uint16 and D = 8192 columns."""

MAX_PROTEIN_COLUMNS = 1 << 20
"""Largest protein spectrum width (alphabet size ** k) accepted: dense rows beyond that are
no longer a sensible embedding."""

# Murphy, Wallqvist & Levy (2000) "Simplified amino acid alphabets for protein fold
# recognition and implications for folding", Protein Eng. 13(3):149-152,
# doi:10.1093/protein/13.3.149 (groups from BLOSUM50 correlations).
# Dayhoff, Schwartz & Orcutt (1978) "A model of evolutionary change in proteins",
# Atlas of Protein Sequence and Structure 5(3):345-352
# (the six exchange groups).
REDUCED_ALPHABETS: dict[str, tuple[str, ...]] = {
    "murphy4": ("LVIMC", "AGSTP", "FYW", "EDNQKRH"),
    "murphy8": ("LVIMC", "AG", "ST", "P", "FYW", "EDNQ", "KR", "H"),
    "murphy10": ("LVIM", "C", "A", "G", "ST", "P", "FYW", "EDNQ", "KR", "H"),
    "murphy15": (
        "LVIM", "C", "A", "G", "S", "T", "P", "FY", "W", "E", "D", "N", "Q", "KR", "H",
    ),
    "dayhoff6": ("AGPST", "C", "DENQ", "FWY", "HKR", "ILMV"),
}
"""Partitions of the 20 standard amino acids into groups, by name.

murphy4/8/10/15: Murphy, Wallqvist & Levy, Protein Eng. 13:149-152 (2000).
dayhoff6: Dayhoff, Schwartz & Orcutt, Atlas of Protein Sequence and Structure 5:345 (1978).
"""

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"

_BLOCK_CELLS = 1 << 22  # rows x columns counted per bincount (32 MB of int64 counts)
_BLOCK_BYTES = 1 << 24  # sequence bytes per block (bounds the per-position temporaries)

# Bytes allowed in a sequence: letters, gaps and the stop symbol. Anything else is an error.
_ALLOWED = np.zeros(256, dtype=bool)
_ALLOWED[ord("A") : ord("Z") + 1] = True
_ALLOWED[ord("a") : ord("z") + 1] = True
_ALLOWED[[ord("-"), ord("."), ord("*")]] = True



# --------------------------------------------------------------------------------------
# Column layouts


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k not in KMER_K_RANGE:
        raise ValueError(f"k must be an integer in 3..7, got {k!r}")


@lru_cache(maxsize=8)
def _canonical_layout(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(column of every k-mer code, canonical code of every column) for DNA k-mers.

    Codes are base 4 with A=0 < C=1 < G=2 < T=3, so numeric order is lexicographic order
    and min(code, reverse-complement code) is the lexicographically smaller k-mer.
    """
    codes = np.arange(4**k, dtype=np.int64)
    rc = np.zeros_like(codes)
    rest = codes.copy()
    for _ in range(k):  # reverse the base order and complement (3 - base)
        rc = (rc << 2) | (3 - (rest & 3))
        rest >>= 2
    canonical = np.minimum(codes, rc)
    columns_code, column = np.unique(canonical, return_inverse=True)
    column = column.astype(np.int32)
    column.setflags(write=False)
    columns_code.setflags(write=False)
    return column, columns_code


def canonical_kmer_count(k: int) -> int:
    """Number of canonical DNA k-mers D: 4^k/2 (odd k) or (4^k + 4^(k/2))/2 (even k).

    Args:
        k: the k-mer length, 3..7.

    Returns:
        D, the width of `canonical_kmer_spectra(…, k)`.

    Raises:
        ValueError: `k` out of range.
    """
    _check_k(k)
    return len(_canonical_layout(k)[1])


def kmer_names(k: int) -> list[str]:
    """Canonical DNA k-mers in column order of `canonical_kmer_spectra` (lexicographic).

    Args:
        k: the k-mer length, 3..7.

    Returns:
        The D canonical k-mers as upper-case strings.

    Raises:
        ValueError: `k` out of range.
    """
    _check_k(k)
    codes = _canonical_layout(k)[1]
    digits = (codes[:, None] >> (2 * np.arange(k - 1, -1, -1))) & 3
    letters = np.frombuffer(b"ACGT", np.uint8)[digits]
    return [bytes(row).decode("ascii") for row in letters]


def _alphabet(alphabet: str) -> tuple[str, ...]:
    try:
        return REDUCED_ALPHABETS[alphabet]
    except KeyError:
        raise ValueError(
            f"unknown reduced alphabet {alphabet!r}; choose one of {sorted(REDUCED_ALPHABETS)}"
        ) from None


@lru_cache(maxsize=16)
def _protein_code(alphabet: str) -> np.ndarray:
    """Byte -> group index (0..g-1), g for stops, unknown letters and anything else."""
    groups = _alphabet(alphabet)
    lut = np.full(256, len(groups), dtype=np.uint8)
    for index, members in enumerate(groups):
        for letter in members.encode("ascii"):
            lut[letter] = lut[letter + 32] = index
    lut.setflags(write=False)
    return lut


def _check_protein_k(k: int, alphabet: str) -> int:
    """Validate k and return the number of columns, len(alphabet) ** k."""
    size = len(_alphabet(alphabet))
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if size**k > MAX_PROTEIN_COLUMNS:
        raise ValueError(
            f"{alphabet} k={k} gives {size**k} columns (more than {MAX_PROTEIN_COLUMNS}); "
            "use a smaller k or alphabet"
        )
    return int(size**k)


def protein_kmer_names(k: int, alphabet: str = "murphy10") -> list[str]:
    """Protein group words in column order of `protein_kmer_spectra`.

    Each group is written as its first letter (e.g. murphy10 'L' stands for LVIM); columns
    run in base-len(alphabet) order over the groups as listed in REDUCED_ALPHABETS.

    Args:
        k: the k-mer length.
        alphabet: a key of REDUCED_ALPHABETS.

    Returns:
        len(alphabet) ** k words of k letters.

    Raises:
        ValueError: unknown alphabet or k too large.
    """
    width = _check_protein_k(k, alphabet)
    groups = _alphabet(alphabet)
    size = len(groups)
    codes = np.arange(width, dtype=np.int64)
    digits = (codes[:, None] // size ** np.arange(k - 1, -1, -1)) % size
    letters = np.frombuffer("".join(g[0] for g in groups).encode("ascii"), np.uint8)[digits]
    return [bytes(row).decode("ascii") for row in letters]


# --------------------------------------------------------------------------------------
# Input


def _as_string_array(sequences: SequenceInput) -> pa.Array:
    """An Arrow string/large_string array (one chunk) of the sequences."""
    if isinstance(sequences, pa.ChunkedArray):
        sequences = sequences.combine_chunks() if sequences.num_chunks != 1 else sequences.chunk(0)
    if isinstance(sequences, str | bytes):
        raise TypeError("sequences must be a list of strings or an Arrow array, not one string")
    if not isinstance(sequences, pa.Array):
        sequences = pa.array(list(sequences), pa.string())
    if not (pa.types.is_string(sequences.type) or pa.types.is_large_string(sequences.type)):
        raise TypeError(f"sequences must be strings, got Arrow type {sequences.type}")
    return sequences


def _sequence_name(ids: SequenceInput | None, row: int) -> str:
    if ids is None:
        return f"#{row}"
    value = ids[row]
    return str(value.as_py() if isinstance(value, pa.Scalar) else value)


def _checked_parts(
    sequences: pa.Array, ids: SequenceInput | None, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """(int64 offsets from 0, bytes) of the sequences; InputError for nulls or bad bytes."""
    if ids is not None and len(ids) != len(sequences):
        raise ValueError(f"{len(ids)} ids for {len(sequences)} sequences")
    if sequences.null_count:
        row = int(np.flatnonzero(~np.asarray(pc.is_valid(sequences)))[0])
        raise InputError(source, f"sequence {_sequence_name(ids, row)}: sequence is missing")
    offsets, data = string_parts(sequences)
    offsets = offsets.astype(np.int64)
    data = data[offsets[0] : offsets[-1]]
    offsets -= offsets[0]
    bad = np.flatnonzero(~_ALLOWED[data])
    if len(bad):
        at = int(bad[0])
        row = int(np.searchsorted(offsets, at, side="right") - 1)
        raise InputError(
            source,
            f"sequence {_sequence_name(ids, row)}: invalid character {chr(data[at])!r} "
            f"at position {at - int(offsets[row]) + 1}",
            hint="sequences may hold letters, '-', '.' and '*' only",
        )
    return offsets, data


def _blocks(offsets: np.ndarray, width: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) with at most _BLOCK_CELLS counts and about _BLOCK_BYTES bases."""
    n = len(offsets) - 1
    max_rows = max(1, _BLOCK_CELLS // width)
    ranges = []
    start = 0
    while start < n:
        by_bytes = int(np.searchsorted(offsets, offsets[start] + _BLOCK_BYTES, side="right")) - 1
        stop = min(n, start + max_rows, max(by_bytes, start + 1))
        ranges.append((start, stop))
        start = stop
    return ranges


# --------------------------------------------------------------------------------------
# The count


def _window_counts(
    letters: np.ndarray,
    offsets: np.ndarray,
    k: int,
    base: int,
    invalid: int,
    column: np.ndarray,
    width: int,
    out: np.ndarray,
) -> None:
    """Count k-mers of sequences given as letter codes (0..base-1, `invalid` breaks) into
    `out` (rows x width float32), looking each k-mer code up in `column`."""
    n = len(offsets) - 1
    positions = len(letters) - k + 1
    if n == 0 or positions <= 0:
        return
    lengths = np.diff(offsets)
    # Window start p is valid when letters[p:p+k] has no invalid code and p + k <= end of
    # its sequence.
    bad = np.zeros(len(letters) + 1, dtype=np.int32)
    np.cumsum(letters == invalid, out=bad[1:])
    ok = bad[k:] == bad[:-k]
    row = np.repeat(np.arange(n, dtype=np.int64), lengths)[:positions]
    ok &= np.arange(positions) <= (offsets[1:] - k)[row]
    code_type = np.uint16 if base**k <= 1 << 16 else np.int64
    codes = np.zeros(positions, dtype=code_type)
    clean = np.where(letters == invalid, 0, letters).astype(code_type)
    for j in range(k):  # the k columns of the sliding window, most significant first
        codes *= code_type(base)
        codes += clean[j : j + positions]
    cells = row[ok] * width + column[codes[ok]]
    counts = np.bincount(cells, minlength=n * width)
    out[:] = counts.reshape(n, width)


def _spectra(
    sequences: SequenceInput,
    k: int,
    lut: np.ndarray,
    base: int,
    column: np.ndarray,
    width: int,
    normalise: bool,
    ids: SequenceInput | None,
    source: str,
) -> np.ndarray:
    """Shared driver: validate, encode, count block by block, normalise rows."""
    array = _as_string_array(sequences)
    offsets, data = _checked_parts(array, ids, source)
    out = np.zeros((len(array), width), dtype=np.float32)
    for a, b in _blocks(offsets, width):
        letters = lut[data[offsets[a] : offsets[b]]]
        _window_counts(letters, offsets[a : b + 1] - offsets[a], k, base, base, column, width,
                       out[a:b])
    if normalise:
        totals = out.sum(axis=1, keepdims=True)
        np.divide(out, totals, out=out, where=totals > 0)
    return out


def canonical_kmer_spectra(
    sequences: SequenceInput,
    k: int,
    normalise: bool = True,
    *,
    ids: SequenceInput | None = None,
    source: str = "<sequences>",
) -> np.ndarray:
    """Canonical DNA k-mer spectrum of each sequence, as an N x D float32 matrix.

    A composition embedding that needs no model (metagenome binning, read-level screens).
    Columns follow `kmer_names(k)`; see the module docstring for the conventions. Dense
    output: N x D x 4 bytes (40k reads at k=7 is 1.3 GB), so batch large inputs.

    Args:
        sequences: DNA sequences (Arrow string array or list of str); any case, U = T.
        k: k-mer length, 3..7.
        normalise: divide each row by its number of k-mers so it sums to 1 (rows without
            a valid k-mer stay all zero); False gives raw counts.
        ids: sequence ids, only to name a bad sequence in errors (default: '#row').
        source: file or shard the sequences come from, for errors.

    Returns:
        N x D float32 matrix, columns in `kmer_names(k)` order.

    Raises:
        ValueError: k out of range.
        InputError: a missing sequence or a byte that is not a letter, '-', '.' or '*'.

    Example:
        >>> canonical_kmer_spectra(["ACGTN", "acgt"], 3, normalise=False).sum(axis=1)
        array([2., 2.], dtype=float32)
    """
    _check_k(k)
    column, columns_code = _canonical_layout(k)
    return _spectra(sequences, k, NUCLEOTIDE_CODE, INVALID_BASE, column, len(columns_code),
                    normalise, ids, source)


def protein_kmer_spectra(
    proteins: SequenceInput,
    k: int,
    alphabet: str = "murphy10",
    normalise: bool = True,
    *,
    ids: SequenceInput | None = None,
    source: str = "<proteins>",
) -> np.ndarray:
    """Reduced-alphabet k-mer spectrum of each protein, as an N x len(alphabet)^k matrix.

    Grouping similar residues makes spectra of distant homologues overlap (Edgar 2004,
    Nucleic Acids Res. 32:380) while keeping the width small (murphy10 k=3: 1000 columns).
    Columns follow `protein_kmer_names(k, alphabet)`.

    Args:
        proteins: protein sequences (e.g. the `protein` column of tasks.orfs.find_orfs).
        k: k-mer length; len(alphabet) ** k must not exceed MAX_PROTEIN_COLUMNS.
        alphabet: a key of REDUCED_ALPHABETS.
        normalise: rows sum to 1 (all-zero rows stay zero); False gives raw counts.
        ids: protein ids, only to name a bad sequence in errors.
        source: file or shard the proteins come from, for errors.

    Returns:
        N x len(alphabet) ** k float32 matrix, columns in `protein_kmer_names(k, alphabet)`
        order.

    Raises:
        ValueError: unknown alphabet or k too large.
        InputError: a missing sequence or a byte that is not a letter, '-', '.' or '*'.

    Example:
        >>> protein_kmer_spectra(["MKV*LL"], 2, "murphy4", normalise=False).sum()
        np.float32(3.0)
    """
    width = _check_protein_k(k, alphabet)
    column = np.arange(width, dtype=np.int64)
    size = len(_alphabet(alphabet))
    return _spectra(proteins, k, _protein_code(alphabet), size, column, width, normalise, ids,
                    source)


# --- Prefect tasks: one embedding shard per input shard ----------------------------------

KMERS_VERSION = "2"  # 2: source_shard is the shard's label, not its URI


@materialize("helixflow://embed/kmer", name="kmer-spectra",
             task_run_name="kmer{k}-{shard.name}", **stage_options(KMERS_VERSION))
def embed_kmer_spectra(shard: Artifact, k: int, store: Store, run_id: str) -> Artifact:
    """Canonical k-mer spectra of every read of a shard → an embedding shard (`kmer<k>`).

    Args:
        shard: a Parquet read shard (READS_SCHEMA).
        k: the k-mer length, 3..7.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        The embedding shard artifact, `<shard>.kmer<k>.parquet`, one row per read.

    Raises:
        InputError: a read with a byte that is not a letter, '-', '.' or '*'.
    """
    method = f"kmer{k}"
    name = shard.name.replace(".parquet", f".{method}.parquet")
    with store.scratch() as scratch, parquet_file(store, shard) as source:
        path = scratch / name
        with EmbeddingWriter(path, canonical_kmer_count(k), method=method,
                             source_shard=shard.label) as writer:
            for ids, sequences, rows in iter_read_sequences(source):
                vectors = canonical_kmer_spectra(sequences, k, ids=ids, source=shard.name)
                writer.write(ids, vectors, rows)
        return publish_file(store, path, run_id=run_id, stage="embed", media_type=PARQUET,
                            producer="kmer-spectra", rows=writer.rows, params={"k": k},
                            upstream=[shard.ref()],
                            metadata={"method": method, "dim": canonical_kmer_count(k)})


@materialize("helixflow://embed/protein", name="protein-kmers",
             task_run_name="protein-{alphabet}-k{k}-{orfs.name}", **stage_options(KMERS_VERSION))
def embed_protein_kmers(orfs: Artifact, k: int, alphabet: str, store: Store,
                        run_id: str) -> Artifact:
    """Reduced-alphabet k-mer spectra of the proteins of an ORF table (one vector per ORF,
    id `seq:start-end(strand)`) → an embedding shard (`protein-<alphabet>-k<k>`).

    Args:
        orfs: an ORF table (ORFS_SCHEMA, as `find_orfs` makes it).
        k: the k-mer length.
        alphabet: a key of REDUCED_ALPHABETS.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        The embedding shard artifact, `<orfs>.protein-<alphabet>-k<k>.parquet`.

    Raises:
        ValueError: unknown alphabet or k too large.
    """
    method = f"protein-{alphabet}-k{k}"
    dim = len(_alphabet(alphabet)) ** k
    name = orfs.name.replace(".parquet", f".{method}.parquet")
    with store.scratch() as scratch, parquet_file(store, orfs) as source:
        path = scratch / name
        with EmbeddingWriter(path, dim, method=method, source_shard=orfs.label) as writer:
            start = 0
            for batch in source.iter_batches(batch_size=32_768, columns=[
                    "seq_id", "start", "end", "strand", "protein"]):
                ids = pc.binary_join_element_wise(
                    batch.column("seq_id"), ":", pc.cast(batch.column("start"), pa.string()),
                    "-", pc.cast(batch.column("end"), pa.string()), "(",
                    batch.column("strand"), ")", "")
                vectors = protein_kmer_spectra(batch.column("protein"), k, alphabet, ids=ids,
                                               source=orfs.name)
                writer.write(ids, vectors, np.arange(start, start + batch.num_rows))
                start += batch.num_rows
        return publish_file(store, path, run_id=run_id, stage="embed", media_type=PARQUET,
                            producer="protein-kmers", rows=writer.rows,
                            params={"k": k, "alphabet": alphabet}, upstream=[orfs.ref()],
                            metadata={"method": method, "dim": dim})
