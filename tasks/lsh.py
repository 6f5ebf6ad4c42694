"""LSH of k-mers (LSHVec's hash) and token shards: reads -> canonical LSH tokens.

Why: raw 15-mers are far too many to embed (4^15 words, most seen once). LSHVec hashes each
k-mer with a random-hyperplane LSH into 2^hash_size buckets, so similar k-mers share a
bucket ("token"); `tasks.skipgram` learns the token vectors and `tasks.lshvec` makes read
vectors of them. Pure NumPy / Arrow, no Prefect.

Hash (`fit_lsh`, `LshFunction`, `tokenize`)
    Bases are encoded as complex numbers A = -1, T = +1, C = -i, G = +i, so a k-mer is a
    point x in C^k and its reverse complement is -reversed(x). Each of the `hash_size`
    hyperplanes is the affine hull of k k-mers drawn from the data, as LSHVec's
    `rand_proj.py` builds them: a pool of 2 * k * hash_size random N-free k-mers is sampled
    from the sequences, each hyperplane takes k distinct points of the pool and solves
    [X | -1] [n; c] = 0 (the right singular vector of the smallest singular value, via SVD),
    i.e. every sampled point satisfies x . n = c. Bit s of a k-mer is Re(x . n_s) > Re(c_s)
    (the comparison of LSHVec's C++ `CRandProj::hash`), the token is the integer of the bits
    (bit s worth 2^s), and the canonical token is the smaller of the k-mer's and of its
    reverse complement's (again as LSHVec), so a read and its reverse complement give the
    same tokens in reverse order. `tokenize` evaluates all k-mers of a shard with one
    matrix product over a sliding-window view (forward and reverse-complement hyperplanes
    stacked), no Python loop over reads or k-mers; k-mers with a non-ACGT base are dropped.
    The hyperplane coefficients are rounded to multiples of 2^-24, so every projection is a
    sum of dyadic numbers that float64 adds exactly, whatever the order: the vectorised
    hash, the reverse-complement path and the pure-Python reference (`hash_kmer`) agree
    bit for bit, and a read and its reverse complement give exactly mirrored tokens.
    The hash is an artifact: `LshFunction.save` / `load` (npz + JSON, atomic), `digest()`
    (sha256 of parameters and arrays) identifies it, and `LSH_VERSION` versions the scheme.

Token shards (`TOKENS_SCHEMA`, `write_token_shard`, `token_arrays`)
    One Parquet row per read (sequence id, row in the read shard, its tokens as int32 in
    k-mer order): what tokenisation writes, training streams and embedding reads.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from helixflow.errors import TooLittleInput
from helixflow.files import atomic_write
from helixflow.tasks.reads import BASE_CODE, string_parts

LSH_VERSION = "helixflow-lshvec-hash/1"
_QUANT_BITS = 24  # hyperplane coefficients are multiples of 2^-24: all float64 sums exact

# Base codes (BASE_CODE): A=0, C=1, G=2, T=3, anything else 4. Encoding A=-1, C=-i, G=+i,
# T=+1.
_ENC_RE = np.array([-1.0, 0.0, 0.0, 1.0, 0.0])
_ENC_IM = np.array([0.0, -1.0, 1.0, 0.0, 0.0])
ENCODING: dict[str, complex] = {"A": -1 + 0j, "C": -1j, "G": 1j, "T": 1 + 0j}


# --------------------------------------------------------------------------------------
# Sequences -> flat code buffer


def _flat_codes(sequences: pa.Array | pa.ChunkedArray | Sequence[str]) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """All sequences as one uint8 code array (0-3 ACGT, 4 other) and int64 offsets (n+1)."""
    if isinstance(sequences, pa.ChunkedArray):
        sequences = sequences.combine_chunks()
    if not isinstance(sequences, pa.Array):
        sequences = pa.array(sequences, type=pa.large_string())
    arr = sequences.cast(pa.large_binary())
    if arr.null_count:
        arr = arr.fill_null(b"")
    offsets, data = string_parts(arr)
    return BASE_CODE[data[offsets[0]:offsets[-1]]], (offsets - offsets[0]).astype(np.int64)


# --------------------------------------------------------------------------------------
# The hash function


@dataclass(frozen=True, eq=False)
class LshFunction:
    """Random-hyperplane LSH of k-mers: x -> bits Re(x . normals[s]) > Re(offsets[s]).

    normals: complex128 (hash_size, k); offsets: complex128 (hash_size,). Saved with
    `save`, identified by `digest()`.
    """

    k: int
    hash_size: int
    seed: int
    normals: np.ndarray
    offsets: np.ndarray
    version: str = LSH_VERSION
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_buckets(self) -> int:
        return 1 << self.hash_size

    def _params(self) -> dict[str, Any]:
        return {"version": self.version, "k": self.k, "hash_size": self.hash_size,
                "seed": self.seed, "meta": self.meta}

    def digest(self) -> str:
        """sha256 of the parameters and the hyperplanes (the model id of a hash)."""
        h = hashlib.sha256(json.dumps(self._params(), sort_keys=True).encode())
        for a in (self.normals, self.offsets):
            h.update(np.ascontiguousarray(a, np.complex128).tobytes())
        return h.hexdigest()

    def save(self, path: Path | str) -> Path:
        """Write `path` (npz, hyperplanes) and `path`.json (parameters, digest) atomically."""
        return save_npz(path, {"normals": self.normals.astype(np.complex128),
                               "offsets": self.offsets.astype(np.complex128)},
                        {**self._params(), "digest": self.digest()})

    @classmethod
    def load(cls, path: Path | str) -> LshFunction:
        """Read a hash saved by `save`; checks the version and the digest."""
        path = Path(path)
        meta = load_meta(path, LSH_VERSION, "hash")
        with np.load(path) as z:
            lsh = cls(k=int(meta["k"]), hash_size=int(meta["hash_size"]),
                      seed=int(meta["seed"]), normals=z["normals"], offsets=z["offsets"],
                      version=meta["version"], meta=meta.get("meta", {}))
        if lsh.digest() != meta["digest"]:
            raise ValueError(f"{path}: digest mismatch (corrupt or edited file)")
        return lsh

    def hash_kmer(self, kmer: str) -> int:
        """Pure-Python reference of the canonical token of one ACGT k-mer (slow; tests)."""
        if len(kmer) != self.k:
            raise ValueError(f"k-mer of length {len(kmer)}, expected {self.k}")
        x = [ENCODING[b] for b in kmer.upper()]
        rc = [-v for v in reversed(x)]

        def bits(v: list[complex]) -> int:
            out = 0
            for s in range(self.hash_size):
                dot = sum(v[j] * complex(self.normals[s, j]) for j in range(self.k))
                if dot.real > complex(self.offsets[s]).real:
                    out |= 1 << s
            return out

        return min(bits(x), bits(rc))


def meta_path(path: Path) -> Path:
    """The JSON sidecar (parameters, digest) of a hash or model saved at `path`.

    Args:
        path: the .npz path.

    Returns:
        `path` with ".json" appended to its name.
    """
    return path.with_name(path.name + ".json")


def save_npz(path: Path | str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Arrays as `path` (npz) and `meta` as its JSON sidecar, each written atomically: how
    a hash and a skip-gram model are saved.

    Args:
        path: the .npz file to write (parent folders are created).
        arrays: named arrays to store.
        meta: JSON-serialisable parameters (other values are written with str).

    Returns:
        `path` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue())
    atomic_write(meta_path(path), json.dumps(meta, indent=1, default=str).encode())
    return path


def load_meta(path: Path, version: str, what: str) -> dict[str, Any]:
    """The JSON sidecar of `path`; ValueError unless it is of `version`.

    Args:
        path: the .npz path whose sidecar to read.
        version: the format version expected in the sidecar's "version".
        what: what the file is ("hash", "model"), for the error message.

    Returns:
        The sidecar's content.

    Raises:
        ValueError: the sidecar has another version.
    """
    meta: dict[str, Any] = json.loads(meta_path(path).read_text())
    if meta["version"] != version:
        raise ValueError(f"{path}: {what} version {meta['version']!r}, expected {version}")
    return meta


def _valid_starts(codes: np.ndarray, offsets: np.ndarray, k: int) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """Start positions (flat) of all N-free k-mers and the read index of each."""
    lengths = np.diff(offsets)
    n_pos = max(len(codes) - k + 1, 0)
    if n_pos == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bad = np.concatenate([[0], np.cumsum(codes == 4, dtype=np.int64)])
    ok = bad[k:k + n_pos] == bad[:n_pos]
    read_of = np.repeat(np.arange(len(lengths)), lengths)[:n_pos]
    ok &= np.arange(n_pos) + k <= offsets[1:][read_of]
    starts = np.flatnonzero(ok)
    return starts, read_of[starts]


def fit_lsh(sequences: pa.Array | Sequence[str], k: int = 15, hash_size: int = 20,
            seed: int = 0, sample: int | None = None) -> LshFunction:
    """Build the hyperplanes from k-mers sampled from `sequences` (LSHVec's affine hulls).

    A pool of `sample` (default 2 * k * hash_size, LSHVec's choice) distinct N-free k-mers
    is drawn; hyperplane s passes through k distinct pool points: the null vector (n, c) of
    [X | -1] from the SVD, so X n = c for the k sampled points.

    Args:
        sequences: DNA reads (Arrow string array or list of str).
        k: the k-mer length hashed.
        hash_size: hyperplanes, i.e. bits per token, <= 62.
        seed: the random seed of the sampling.
        sample: pool size of distinct k-mers; None: 2 * k * hash_size.

    Returns:
        The LshFunction (quantised normals and offsets).

    Raises:
        ValueError: hash_size > 62.
        TooLittleInput: fewer than k distinct N-free k-mers in the reads.
    """
    if hash_size > 62:
        raise ValueError("hash_size must be <= 62 (tokens are int64)")
    rng = np.random.default_rng(seed)
    codes, offsets = _flat_codes(sequences)
    starts, _ = _valid_starts(codes, offsets, k)
    want = sample or 2 * k * hash_size
    if len(starts) < k:
        raise TooLittleInput(f"{len(starts)} N-free {k}-mers in the reads, need at least {k} "
                             f"to fit the LSH hash (reads shorter than k = {k}?)")
    pick = rng.choice(starts, size=min(len(starts), want * 4), replace=False)
    kmers = codes[pick[:, None] + np.arange(k)]
    _, first = np.unique(kmers, axis=0, return_index=True)  # distinct k-mers only
    kmers = kmers[np.sort(first)][:want]
    if len(kmers) < k:
        raise TooLittleInput(f"{len(kmers)} distinct N-free {k}-mers in the reads, need at "
                             f"least {k} to fit the LSH hash")
    pool = _ENC_RE[kmers] + 1j * _ENC_IM[kmers]
    normals = np.empty((hash_size, k), np.complex128)
    offs = np.empty(hash_size, np.complex128)
    for s in range(hash_size):
        pts = pool[rng.choice(len(pool), size=k, replace=False)]
        a = np.concatenate([pts, -np.ones((k, 1))], axis=1)
        _, _, vh = np.linalg.svd(np.concatenate([a, np.zeros((1, k + 1))], axis=0))
        v = vh[-1].conj()  # a @ v = 0
        normals[s], offs[s] = v[:k], v[k]
    return LshFunction(k=k, hash_size=hash_size, seed=seed, normals=_quantise(normals),
                       offsets=_quantise(offs), meta={"pool": len(pool)})


def _quantise(z: np.ndarray, bits: int = _QUANT_BITS) -> np.ndarray:
    """Round real and imaginary parts to multiples of 2^-bits (exact sums, see module)."""
    q = float(2 ** bits)
    return (np.round(z.real * q) / q + 1j * (np.round(z.imag * q) / q)).astype(np.complex128)


def _block_tables(lsh: LshFunction, width: int = 5) -> list[tuple[int, int, np.ndarray]]:
    """Projection tables per block of `width` bases: (start, width, table (4^w, 2h)).

    Re(x . n) is a sum over positions, so a block's contribution depends only on its
    bases: the k-mer's projection on all forward and reverse-complement hyperplanes is the
    sum of ceil(k / width) table rows.
    """
    k = lsh.k
    n_all = np.concatenate([lsh.normals, -lsh.normals[:, ::-1]], axis=0)  # (2h, k)
    out = []
    for j0 in range(0, k, width):
        w = min(width, k - j0)
        digits = (np.arange(4 ** w)[:, None] >> (2 * np.arange(w - 1, -1, -1))) & 3
        x = _ENC_RE[digits] + 1j * _ENC_IM[digits]  # (4^w, w)
        out.append((j0, w, (x @ n_all[:, j0:j0 + w].T).real))
    return out


def tokenize(sequences: pa.Array | pa.ChunkedArray | Sequence[str], lsh: LshFunction,
             chunk: int = 1 << 17) -> tuple[np.ndarray, np.ndarray]:
    """Canonical LSH tokens of every N-free k-mer: (int64 tokens, int64 offsets (n+1,)).

    Tokens of sequence i are tokens[offsets[i]:offsets[i+1]], in k-mer order. Projections
    are sums of per-block table rows (`_block_tables`), forward and reverse complement at
    once; bits are packed with np.packbits.

    Args:
        sequences: DNA reads (Arrow string array or list of str).
        lsh: the hash from `fit_lsh`.
        chunk: k-mers projected at a time (bounds the memory).

    Returns:
        (tokens, offsets): a token is the smaller of the k-mer's and its reverse
        complement's hash_size-bit codes.
    """
    k, h = lsh.k, lsh.hash_size
    codes, offsets = _flat_codes(sequences)
    starts, read_of = _valid_starts(codes, offsets, k)
    n_seq = len(offsets) - 1
    counts = np.bincount(read_of, minlength=n_seq)
    tok_off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    tokens = np.empty(len(starts), np.int64)
    if len(starts) == 0:
        return tokens, tok_off
    tables = _block_tables(lsh)
    base = codes & 3  # N only occurs in dropped k-mers
    packed: dict[int, np.ndarray] = {}
    for _, w, _ in tables:  # block codes at every position, per block width
        if w not in packed:
            n = len(base) - w + 1
            c = np.zeros(n, np.int32)
            for j in range(w):
                c = (c << 2) | base[j:j + n]
            packed[w] = c
    thresh = np.concatenate([lsh.offsets.real, lsh.offsets.real])
    nbytes = (h + 7) // 8
    weights = (1 << (8 * np.arange(nbytes))).astype(np.int64)
    for lo in range(0, len(starts), chunk):
        idx = starts[lo:lo + chunk]
        acc = None
        for j0, w, tab in tables:
            part = tab[packed[w][idx + j0]]
            acc = part if acc is None else acc.__iadd__(part)
        bits = acc > thresh
        fw = np.packbits(bits[:, :h], axis=1, bitorder="little").astype(np.int64) @ weights
        rc = np.packbits(bits[:, h:], axis=1, bitorder="little").astype(np.int64) @ weights
        tokens[lo:lo + chunk] = np.minimum(fw, rc)
    return tokens, tok_off

# --------------------------------------------------------------------------------------
# Token shards

TOKENS_SCHEMA = pa.schema([pa.field("sequence_id", pa.string()), pa.field("row", pa.int64()),
                           pa.field("tokens", pa.list_(pa.int32()))])
"""A token shard: one row per read, its canonical LSH tokens in k-mer order."""


def write_token_shard(source: Any, lsh: LshFunction, path: Path) -> tuple[int, int]:
    """Tokenise a read shard (a pyarrow ParquetFile) batch by batch into a token shard at
    `path` (TOKENS_SCHEMA); (reads, tokens) written.

    Args:
        source: an open Parquet read shard (READS_SCHEMA).
        lsh: the hash from `fit_lsh`.
        path: the token shard to write (zstd Parquet).

    Returns:
        (reads, tokens) written.
    """
    from helixflow.tasks.embeddings import iter_read_sequences

    rows = n_tokens = 0
    with pq.ParquetWriter(path, TOKENS_SCHEMA, compression="zstd") as writer:
        for ids, sequences, row in iter_read_sequences(source):
            tokens, offsets = tokenize(sequences, lsh)
            column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                              pa.array(tokens.astype(np.int32)))
            writer.write_table(pa.table([ids, pa.array(row), column], schema=TOKENS_SCHEMA))
            rows += len(row)
            n_tokens += len(tokens)
    return rows, n_tokens


def token_arrays(column: pa.ListArray | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A `tokens` column as (tokens int32, offsets int64 from 0): stored int32, no copy.

    Args:
        column: a TOKENS_SCHEMA `tokens` column (list<int32>).

    Returns:
        (flat int32 tokens, int64 offsets of length rows + 1).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = np.asarray(column.offsets, dtype=np.int64)
    return np.asarray(column.flatten(), dtype=np.int32), offsets - offsets[0]
