"""LSHvec: k-mer embeddings through locality-sensitive hashing (after Shi et al., LSHVec).

Why: raw 15-mers are far too many to embed (4^15 words, most seen once). LSHVec hashes each
k-mer with a random-hyperplane LSH into 2^hash_size buckets, so similar k-mers share a
bucket ("token"), then learns token vectors with skip-gram and describes a read by the mean
of its token vectors. The kernels are pure (NumPy / torch / Ray); the Prefect tasks at the
end of the module are their store edge (hash, token shards, model and embeddings as artifacts).

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

Skip-gram (`SkipGramConfig`, `build_vocab`, `train_skipgram`)
    Skip-gram with negative sampling as in word2vec / fastText: dynamic window (an effective
    window drawn uniformly from 1..window per centre), negatives from the unigram^0.75
    table, frequent-token subsampling (keep probability sqrt(t/f) + t/f), linear learning
    rate decay over all epochs. Used buckets are remapped to a dense vocabulary with a
    min_count filter. The update is hand-rolled SGD on batches of (centre, context,
    negatives) with `index_add_` sparse row updates (no autograd), pairs shuffled within
    chunks of the corpus so a batch rarely repeats a centre.

Distributed training (`train_skipgram_ray`) -- design choice
    Synchronous all-reduce of the touched rows, every `sync_tokens` tokens per worker,
    with the driver as the reducer ("sparse model averaging"). Each Ray actor holds the
    full model, trains plain SGNS on its own token shards, which it streams from the store
    itself every epoch (`TokenSource`; sources in a random order, reads shuffled within
    bounded blocks) rather than holding them, so its memory does not grow with the input,
    and at the end of a round returns only the rows it changed with their deltas
    (W - W_round_start). The driver combines the deltas row by row -- the mean over the
    workers that touched the row (default) or their sum (`mode="sum"`); level rows (see
    Levels) are always summed, being shared by design -- puts the result
    in the object store once, and every actor sets W = W_round_start + combined, so all
    replicas are identical after every round.
    Why: (1) SGNS updates are sparse: most rows are touched by one worker in a round and
    keep that worker's full update, whereas plain parameter averaging would halve them
    (an effective learning rate that depends on the number of workers); rows touched by
    several workers (frequent tokens, negatives) get the mean, which stays stable where a
    sum doubles the step -- on the two-topic toy corpus with long rounds the sum diverged
    (topic margin 0.19) and the mean matched one process (0.89 vs 0.87); (2) it needs
    nothing beyond Ray: `ray.util.collective` needs pygloo for CPU (not installed here),
    torch.distributed/gloo needs open ports between workers, a parameter-server actor
    would serialise every batch through one process; (3) traffic is the touched rows once
    per round (~0.5 M tokens), a small share of the time; (4) one torch thread per worker
    is also the fastest way to use the cores: torch's multi-threaded `index_add_` is
    20x slower than the single-threaded one on a busy 2-core machine (measured), so two
    processes with one thread each beat one process with two threads.

Levels (`SkipGramConfig.levels`, `level_rows`) -- helixflow's addition to LSHVec
    With 2^20 buckets, the tokens of a low-coverage genome are mostly seen once or twice
    and their vectors barely move from their random start. The top b bits of a token are
    themselves an LSH token (b of the hyperplanes), seen thousands of times for b = 8..14.
    As fastText builds a word from its character n-grams, a token's input vector is the
    mean of its own row and of one row per level (its b-bit prefix); each row gets the
    whole gradient, capped for rows in very many windows of a batch (`_ROW_CAP`). The
    model keeps the level tables, so a token never seen in training still gets a vector
    from its prefixes (`SkipGramModel.backoff`). On ANCHORS' benchmark C, levels (14, 8)
    lift kNN-15 accuracy from 0.85 to 0.91 after one epoch (bench/lshvec.py).

Read-token smoothing (`SkipGramConfig.smooth_rounds`, `smooth_model`) -- also helixflow's
    After training, each round sets every token's vector to the mean, over its
    occurrences in the training reads, of the SIF-weighted mean vector of the read it is
    in: a step of simple graph convolution on the read-token graph. Skip-gram relates
    tokens at most `window` apart; a round relates every token to its whole reads (and,
    through overlapping reads, to the genome around them). Ray workers each sum over
    their own sources (`smooth_sums`) and the driver adds the sums (`smoothed_vectors`),
    so the result is the one-process one. With `sif_a` = 1e-6 (tokens met more than a
    few times, e.g. shared by genomes, count little in a read's vector, so smoothing does
    not bridge genomes), 8 rounds raise benchmark C's logistic-regression / kNN-15
    accuracy from 0.61 / 0.90 to 0.89 / 0.94 (README, "LSHvec read-token smoothing").

Sequence vectors (`sequence_vectors`)
    Mean, or SIF-weighted mean (a / (a + p(token)), Arora et al. 2017), of the token vectors
    of each read; optionally the first principal component is removed (`sif_component`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect.assets import materialize

from helixflow.caching import stage_options
from helixflow.errors import HelixflowError, TooLittleInput

LSH_VERSION = "helixflow-lshvec-hash/1"
_QUANT_BITS = 24  # hyperplane coefficients are multiples of 2^-24: all float64 sums exact
MODEL_VERSION = "helixflow-lshvec-model/1"

# Base codes: A=0, C=1, G=2, T=3, anything else 4. Encoding A=-1, C=-i, G=+i, T=+1.
_CODE = np.full(256, 4, np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _i
    _CODE[_b + 32] = _i  # lower case
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
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int64, count=n + 1, offset=arr.offset * 8)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = data[offsets[0]:offsets[-1]]
    return _CODE[data], (offsets - offsets[0]).astype(np.int64)


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, normals=self.normals.astype(np.complex128),
                 offsets=self.offsets.astype(np.complex128))
        meta = {**self._params(), "digest": self.digest()}
        _atomic_write(path, buf.getvalue())
        _atomic_write(_meta_path(path), json.dumps(meta, indent=1).encode())
        return path

    @classmethod
    def load(cls, path: Path | str) -> LshFunction:
        """Read a hash saved by `save`; checks the version and the digest."""
        path = Path(path)
        meta = json.loads(_meta_path(path).read_text())
        if meta["version"] != LSH_VERSION:
            raise ValueError(f"{path}: hash version {meta['version']!r}, expected {LSH_VERSION}")
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


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)  # mkstemp makes 0600; artifacts are shared
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
# Vocabulary and skip-gram


@dataclass(frozen=True)
class SkipGramConfig:
    """Skip-gram with negative sampling; defaults follow the LSHVec benchmark (fastText)."""

    dim: int = 100
    window: int = 5
    negatives: int = 5
    epochs: int = 5
    subsample: float = 1e-4
    lr: float = 0.05
    lr_end: float = 0.0001
    batch_size: int = 1024
    min_count: int = 1
    seed: int = 0
    threads: int = 1
    chunk_tokens: int = 1 << 19
    neg_power: float = 0.75
    shuffle: bool = True
    levels: tuple[int, ...] = ()
    """Coarser LSH resolutions (bits) whose vectors are averaged into each token's input
    vector, e.g. (14, 8) for 20-bit tokens: see `level_rows`. () = plain LSHvec."""
    hash_size: int = 20
    """Bits of the tokens (the hash's hash_size); levels are its top bits."""
    smooth_rounds: int = 0
    """Rounds of read-token smoothing after training (`smooth_model`); 0 = none."""
    sif_a: float = 1e-6
    """SIF weight a / (a + p(token)) of the read vectors, in smoothing and (weighting
    "sif") in the model's embeddings. Small next to the usual 1e-3 for words: a token met
    more than a few times (a repeat, or shared across genomes) counts much less in its
    reads' vectors than the mostly unique others (see `smooth_model`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(int(b) for b in self.levels))
        bad = [b for b in self.levels if not 0 < b < self.hash_size]
        if bad:
            raise ValueError(f"levels must be between 1 and hash_size - 1 "
                             f"({self.hash_size - 1}), not {bad}")
        if self.smooth_rounds < 0:
            raise ValueError(f"smooth_rounds must be >= 0, not {self.smooth_rounds}")
        if not self.sif_a > 0:
            raise ValueError(f"sif_a must be > 0, not {self.sif_a}")


@dataclass(frozen=True, eq=False)
class Vocab:
    """Dense vocabulary: bucket ids (sorted) kept after min_count, and their counts."""

    buckets: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.buckets)

    def lookup(self, tokens: np.ndarray) -> np.ndarray:
        """Vocabulary index of each token, -1 where it is not in the vocabulary."""
        if len(self.buckets) == 0:
            return np.full(len(tokens), -1, np.int64)
        pos = np.searchsorted(self.buckets, tokens)
        pos = np.minimum(pos, len(self.buckets) - 1)
        return np.where(self.buckets[pos] == tokens, pos, -1).astype(np.int64)


def count_tokens(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique bucket ids, counts) of a token array: the mergeable per-shard statistic."""
    u, c = np.unique(tokens, return_counts=True)
    return u.astype(np.int64), c.astype(np.int64)


def merge_counts(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """Add per-shard (ids, counts) tables."""
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    cnt = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    u, inv = np.unique(ids, return_inverse=True)
    return u, np.bincount(inv, weights=cnt, minlength=len(u)).astype(np.int64)


def build_vocab(tokens: np.ndarray | Sequence[tuple[np.ndarray, np.ndarray]],
                min_count: int = 1) -> Vocab:
    """Vocabulary of buckets seen at least `min_count` times (tokens or count tables)."""
    ids, cnt = count_tokens(tokens) if isinstance(tokens, np.ndarray) else merge_counts(tokens)
    keep = cnt >= min_count
    return Vocab(buckets=ids[keep], counts=cnt[keep])


# --------------------------------------------------------------------------------------
# Training input: token sources streamed batch by batch, one epoch at a time


_SOURCE_READS = 1 << 13  # reads per batch read from a token source (~1.1 M tokens at 150 bp)
# Reads are shuffled within blocks of about this many in-vocabulary tokens (~8 MB of int32
# ids, ~15,000 reads of 150 bp). A full permutation of the reads needs the whole corpus in
# memory on every worker (what made training memory grow with the number of shards);
# `train_tokens` already shuffles its pairs within `chunk_tokens` (2^19), so a block a few
# chunks long still mixes reads across chunks and rounds, and sources are visited in a
# random order on top of it. Memory: one block plus one source batch, whatever the input.
_SHUFFLE_TOKENS = 1 << 21


@dataclass(frozen=True, eq=False)
class TokenSource:
    """Part `part` of `parts` (by reads) of a Parquet token shard (TOKENS_SCHEMA), read a
    batch at a time: a store artifact (`store` given) or a local path / URI (`store` None).
    Picklable, so a Ray actor reads its share itself, on its own node."""

    art: Any
    store: Any = None
    part: int = 0
    parts: int = 1

    def batches(self, reads: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(tokens int32, offsets int64 from 0) of at most `reads` reads at a time; only
        the row groups overlapping this part are read."""
        from helixflow.tables import parquet_file

        with parquet_file(self.store, self.art) as pf:
            md = pf.metadata
            lo = md.num_rows * self.part // self.parts
            hi = md.num_rows * (self.part + 1) // self.parts
            starts = np.cumsum([0] + [md.row_group(g).num_rows
                                      for g in range(md.num_row_groups)])
            groups = [g for g in range(md.num_row_groups)
                      if starts[g] < hi and starts[g + 1] > lo]
            if not groups:
                return
            row = int(starts[groups[0]])
            for batch in pf.iter_batches(batch_size=reads, row_groups=groups,
                                         columns=["tokens"]):
                a, b = max(lo - row, 0), min(hi - row, batch.num_rows)
                row += batch.num_rows
                if b > a:
                    yield token_arrays(batch.column("tokens").slice(a, b - a))


Source = TokenSource | tuple[np.ndarray, np.ndarray]
"""Training input: a token shard (part) read from storage, or in-memory (tokens, offsets)."""


def _source_batches(source: Source) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, offsets from 0) of `_SOURCE_READS` reads at a time of a source."""
    if isinstance(source, TokenSource):
        yield from source.batches(_SOURCE_READS)
        return
    tokens, offsets = source
    offsets = np.asarray(offsets, np.int64)
    if len(offsets) < 2:
        return
    offsets = offsets - offsets[0]
    for a in range(0, len(offsets) - 1, _SOURCE_READS):
        b = min(a + _SOURCE_READS, len(offsets) - 1)
        lo, hi = offsets[a], offsets[b]
        yield np.asarray(tokens[lo:hi]), offsets[a:b + 1] - lo


def _source_counts(sources: Sequence[Source]) -> tuple[np.ndarray, np.ndarray]:
    """(bucket ids, counts) over the sources, streamed: batch tables are merged once they
    outgrow the running one (amortised; memory a few vocabulary-sized tables)."""
    parts = [(np.zeros(0, np.int64), np.zeros(0, np.int64))]
    pending = 0
    for source in sources:
        for tokens, _ in _source_batches(source):
            parts.append(count_tokens(tokens))
            pending += len(parts[-1][0])
            if pending > len(parts[0][0]) + (1 << 20):
                parts, pending = [merge_counts(parts)], 0
    return merge_counts(parts)


def _in_vocab(tokens: np.ndarray, offsets: np.ndarray,
              vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """A batch's in-vocabulary ids (int32, read order) and the lengths of the reads that
    keep at least one token (out-of-vocabulary tokens and empty reads are dropped)."""
    look = vocab.lookup(tokens)
    keep = look >= 0
    ck = np.concatenate([[0], np.cumsum(keep)])
    lens = ck[offsets[1:]] - ck[offsets[:-1]]
    return look[keep].astype(np.int32), lens[lens > 0]


def _in_vocab_total(counts: tuple[np.ndarray, np.ndarray], vocab: Vocab) -> int:
    """Tokens of one epoch: the in-vocabulary entries of the sources' count table (no
    second pass over the data)."""
    ids, cnt = counts
    return int(cnt[vocab.lookup(ids) >= 0].sum())


def _shuffle_block(ids: list[np.ndarray], lens: list[np.ndarray], rng: np.random.Generator,
                   shuffle: bool) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated (ids, read lengths), reads permuted when `shuffle`."""
    flat, lengths = np.concatenate(ids), np.concatenate(lens)
    if not shuffle or len(lengths) < 2:
        return flat, lengths
    perm = rng.permutation(len(lengths))
    starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    new = lengths[perm]
    new_starts = np.concatenate([[0], np.cumsum(new)])[:-1]
    return flat[np.repeat(starts[perm] - new_starts, new) + np.arange(len(flat))], new


def _epoch_blocks(sources: Sequence[Source], vocab: Vocab, rng: np.random.Generator,
                  shuffle: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch as blocks of (in-vocabulary ids, read lengths): the sources in a random
    order, reads shuffled within blocks of ~`_SHUFFLE_TOKENS` tokens (input order when not
    `shuffle`). Why shuffle: inputs are often sorted (by sample, genome or position); a
    chunk drawn from one genome would fill whole batches with the same frequent tokens."""
    order = rng.permutation(len(sources)) if shuffle else range(len(sources))
    ids: list[np.ndarray] = []
    lens: list[np.ndarray] = []
    n = 0
    for i in order:
        for tokens, offsets in _source_batches(sources[i]):
            a, b = _in_vocab(tokens, offsets, vocab)
            ids.append(a)
            lens.append(b)
            n += len(a)
            if n >= _SHUFFLE_TOKENS:
                yield _shuffle_block(ids, lens, rng, shuffle)
                ids, lens, n = [], [], 0
    if n:
        yield _shuffle_block(ids, lens, rng, shuffle)


class _EpochStream:
    """The tokens of one epoch of some sources, taken in order a range at a time."""

    def __init__(self, sources: Sequence[Source], vocab: Vocab, rng: np.random.Generator,
                 shuffle: bool = True) -> None:
        self.blocks = _epoch_blocks(sources, vocab, rng, shuffle)
        self.ids = np.zeros(0, np.int32)  # what is left of the current block
        self.lens = np.zeros(0, np.int64)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, sequence ids) of the next `n` tokens (fewer at the end of the epoch).

        Sequence ids number the reads within this take, so contexts never cross reads; a
        read cut by `n` goes on in the next take.
        """
        ids: list[np.ndarray] = []
        lens: list[np.ndarray] = []
        have = 0
        while have < n:
            if len(self.ids) == 0:
                block = next(self.blocks, None)
                if block is None:
                    break
                self.ids, self.lens = block
                continue
            need = n - have
            if len(self.ids) <= need:
                ids.append(self.ids)
                lens.append(self.lens)
                have += len(self.ids)
                self.ids, self.lens = self.ids[:0], self.lens[:0]
                continue
            cum = np.cumsum(self.lens)
            r = int(np.searchsorted(cum, need))  # the read holding token need - 1
            head = need - (int(cum[r - 1]) if r else 0)
            ids.append(self.ids[:need])
            lens.append(np.append(self.lens[:r], head))
            rest = self.lens[r:].copy()
            rest[0] -= head
            self.ids, self.lens = self.ids[need:], rest[1:] if rest[0] == 0 else rest
            have = n
        if not ids:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        lengths = np.concatenate(lens)
        return (np.concatenate(ids),
                np.repeat(np.arange(len(lengths), dtype=np.int32), lengths))


def _keep_prob(counts: np.ndarray, t: float) -> np.ndarray:
    """word2vec's subsampling keep probability sqrt(t/f) + t/f (1 when t <= 0)."""
    if t <= 0:
        return np.ones(len(counts))
    f = counts / max(counts.sum(), 1)
    r = t / np.maximum(f, 1e-300)
    return np.minimum(1.0, np.sqrt(r) + r)


def _neg_table(counts: np.ndarray, power: float, size: int = 10_000_000) -> torch.Tensor:
    """Unigram^power sampling table (word2vec style): uniform index -> vocabulary id."""
    p = counts.astype(np.float64) ** power
    p /= p.sum()
    reps = np.maximum(np.round(p * size), 1).astype(np.int64)  # every word sampleable
    return torch.from_numpy(np.repeat(np.arange(len(counts), dtype=np.int64), reps))


def _windows(ids: np.ndarray, seq: np.ndarray, window: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centres and their context ids (n, 2 * window), -1 padded, shuffled.

    The effective window of each centre is drawn from 1..window (word2vec / fastText);
    contexts never cross a sequence boundary. Centres without any context are dropped.
    """
    n = len(ids)
    b = rng.integers(1, window + 1, size=n)
    ctx = np.full((n, 2 * window), -1, np.int32)
    for d in range(1, min(window, n - 1) + 1):
        same = seq[d:] == seq[:-d]
        left = same & (b[d:] >= d)  # centre i + d sees i on its left
        ctx[d:, window - d][left] = ids[:-d][left]
        right = same & (b[:-d] >= d)  # centre i sees i + d on its right
        ctx[:-d, window + d - 1][right] = ids[d:][right]
    has = (ctx >= 0).any(1)
    cen, ctx = ids[has], ctx[has]
    perm = rng.permutation(len(cen))
    return cen[perm], ctx[perm]


def level_rows(buckets: np.ndarray, levels: Sequence[int], hash_size: int) -> np.ndarray:
    """Rows of the input table for each vocabulary entry (V, 1 + len(levels)): its own
    row, then per level b the row shared by every token with the same top b bits.

    Why: with 2^20 buckets most tokens of a low-coverage genome are seen once or twice, so
    their vectors stay near their random start. A token's top b bits are themselves an LSH
    token (the k-mer's signs on b of the hyperplanes; the canonical choice is kept because
    the smaller token has the smaller prefix), seen thousands of times at b = 8..14. As
    fastText does with character n-grams, a token's input vector is the mean of its own row
    and of its prefixes' rows, so rare tokens inherit what their coarse buckets learned.
    """
    cols = [np.arange(len(buckets), dtype=np.int64)]
    n_rows = len(buckets)
    for b in levels:
        _, inv = np.unique(np.asarray(buckets) >> (hash_size - b), return_inverse=True)
        cols.append(inv.astype(np.int64) + n_rows)
        n_rows += int(inv.max()) + 1 if len(inv) else 0
    return np.stack(cols, axis=1)


_ROW_CAP = 32.0  # most windows' gradients one input row takes from a batch (_SGNS.step)


class _SGNS:
    """Input/output matrices and the batched SGD step (no autograd).

    One step takes a batch of centre tokens with their (padded) windows. As in word2vec's
    skip-gram, the context tokens are the inputs and the centre is the positive output;
    the `negatives` sampled outputs are shared by the whole window (Ji et al. 2016,
    "Parallelizing word2vec in shared and distributed memory"): every (context, negative)
    pair still gets its term, as in word2vec, but a window costs one small matrix product
    instead of 2 * window separate updates. Updates are `index_add_` on the touched rows.
    With `rows` (`level_rows`), an input vector is the mean of its rows and each of them
    gets the whole gradient (fastText's subword update); outputs stay one row per token.
    """

    def __init__(self, n: int, cfg: SkipGramConfig, counts: np.ndarray,
                 rows: np.ndarray | None = None) -> None:
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        n_in = n if rows is None else int(rows.max()) + 1 if rows.size else n
        self.w_in = (torch.rand(n_in, cfg.dim, generator=gen) - 0.5) / cfg.dim
        self.rows = None if rows is None else torch.from_numpy(rows.astype(np.int64))
        self.n_vocab = n  # input rows [0, n) are the tokens' own; level rows follow
        self.w_out = torch.zeros(n, cfg.dim)
        self.table = _neg_table(counts, cfg.neg_power)
        self.keep = _keep_prob(counts, cfg.subsample)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.label = torch.zeros(1, 1, cfg.negatives + 1)
        self.label[0, 0, 0] = 1.0
        self.loss_sum = 0.0
        self.loss_n = 0

    def step(self, cen: torch.Tensor, ctx: torch.Tensor, lr: float,
             track: bool = False) -> None:
        """SGD on centres `cen` (B,) with contexts `ctx` (B, 2w), -1 = no context there.

        Padding slots gather row 0 but get a zero gradient (cheaper than masking rows).
        """
        d, k = self.cfg.dim, self.cfg.negatives
        n, w2 = ctx.shape
        neg = self.table[torch.randint(len(self.table), (n, k), generator=self.gen)]
        tgt = torch.cat([cen[:, None], neg], dim=1).view(-1)  # (B * (K+1))
        mask = ctx >= 0
        cflat = ctx.clamp(min=0).view(-1)
        if self.rows is not None:  # mean of the token's rows at every level
            r = self.rows.shape[1]
            cflat = self.rows.index_select(0, cflat).view(-1)  # (B * 2w * R)
            vin = self.w_in.index_select(0, cflat).view(n * w2, r, d).mean(1).view(n, w2, d)
        else:
            vin = self.w_in.index_select(0, cflat).view(n, w2, d)
        vout = self.w_out.index_select(0, tgt).view(n, k + 1, d)
        score = torch.bmm(vin, vout.transpose(1, 2))  # (B, 2w, K+1)
        g = (self.label - torch.sigmoid(score)).mul_(mask.unsqueeze(2) * lr)
        if track:
            ls = torch.nn.functional.logsigmoid
            m = mask.float()
            self.loss_sum += float(-(ls(score[:, :, 0]) * m).sum()
                                   - (ls(-score[:, :, 1:]) * m.unsqueeze(2)).sum())
            self.loss_n += int(m.sum())
        g_out = torch.bmm(g.transpose(1, 2), vin)  # (B, K+1, d)
        g_in = torch.bmm(g, vout).view(-1, 1, d)  # (B * 2w, 1, d)
        if self.rows is not None:
            r = self.rows.shape[1]
            g_in = g_in.repeat(1, r, 1)  # (B * 2w, R, d), its own memory: scaled in place
            # A level row can be in thousands of windows of one batch; their summed
            # gradient overshoots (diverges when 2^level is small next to the batch), so
            # a level row takes at most `_ROW_CAP` windows' worth. Own rows are left alone.
            lv = cflat.view(-1, r)[:, 1:] - self.n_vocab  # level rows, numbered from 0
            real = mask.view(-1, 1).expand(-1, r - 1).reshape(-1).float()  # not padding
            cnt = torch.bincount(lv.reshape(-1), weights=real,
                                 minlength=len(self.w_in) - self.n_vocab)
            g_in[:, 1:] *= (_ROW_CAP / cnt.clamp(min=1.0)).clamp_(max=1.0)[lv].unsqueeze(2)
        self.w_in.index_add_(0, cflat, g_in.reshape(-1, d))
        self.w_out.index_add_(0, tgt, g_out.view(-1, d))

    def export(self, vocab: Vocab, stats: dict[str, Any]) -> SkipGramModel:
        """The trained model: each token's vector is the mean over its levels' rows; each
        level's table is kept (sorted coarse buckets, their rows) for `backoff`."""
        out = self.w_out.numpy().copy()
        if self.rows is None:
            return SkipGramModel(vocab, self.w_in.numpy().copy(), out, self.cfg, stats)
        levels = []
        for j, b in enumerate(self.cfg.levels, start=1):
            first = int(self.rows[:, j].min()) if len(vocab) else 0
            coarse = np.unique(vocab.buckets >> (self.cfg.hash_size - b))
            levels.append((coarse, self.w_in[first:first + len(coarse)].numpy().copy()))
        return SkipGramModel(vocab, self.w_in[self.rows].mean(1).numpy(), out, self.cfg,
                             stats, tuple(levels))

    def train_tokens(self, ids: np.ndarray, seq: np.ndarray, rng: np.random.Generator,
                     done: float, total: float, scale: float = 1.0) -> float:
        """One pass over (ids, seq) in chunks; lr decays with done/total tokens. -> done.

        `scale` converts this process's tokens to global progress (other workers train
        at the same pace).
        """
        cfg = self.cfg
        for lo in range(0, len(ids), cfg.chunk_tokens):
            cid, cseq = ids[lo:lo + cfg.chunk_tokens], seq[lo:lo + cfg.chunk_tokens]
            keep = rng.random(len(cid)) < self.keep[cid]
            cen, ctx = _windows(cid[keep], cseq[keep], cfg.window, rng)
            cen_t = torch.from_numpy(cen.astype(np.int64))
            ctx_t = torch.from_numpy(ctx.astype(np.int64))
            n = max(len(cen), 1)
            for i, b in enumerate(range(0, len(cen), cfg.batch_size)):
                prog = min((done + scale * len(cid) * b / n) / max(total, 1), 1.0)
                lr = cfg.lr + (cfg.lr_end - cfg.lr) * prog
                self.step(cen_t[b:b + cfg.batch_size], ctx_t[b:b + cfg.batch_size], lr,
                          track=i % 64 == 0)
            done += scale * len(cid)
        return done


@dataclass(frozen=True, eq=False)
class SkipGramModel:
    """Trained token vectors: vocabulary, input vectors (float32 V x dim, the mean over
    levels), output vectors, and per `config.levels` entry (coarse buckets, vectors)."""

    vocab: Vocab
    vectors: np.ndarray
    out_vectors: np.ndarray
    config: SkipGramConfig
    stats: dict[str, Any] = field(default_factory=dict)
    levels: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

    def backoff(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for tokens outside the vocabulary (e.g. from reads the model was not
        trained on): the mean of their coarse buckets' vectors, as fastText builds an
        unseen word from its n-grams. -> (mask of tokens with any known level, vectors)."""
        acc = np.zeros((len(tokens), self.vectors.shape[1]), np.float32)
        hits = np.zeros(len(tokens), np.int64)
        for b, (buckets, vectors) in zip(self.config.levels, self.levels, strict=True):
            coarse = np.asarray(tokens, np.int64) >> (self.config.hash_size - b)
            pos = np.minimum(np.searchsorted(buckets, coarse), max(len(buckets) - 1, 0))
            found = (buckets[pos] == coarse) if len(buckets) else np.zeros(len(coarse), bool)
            acc[found] += vectors[pos[found]]
            hits += found
        known = hits > 0
        return known, acc[known] / hits[known, None]

    def save(self, path: Path | str, lsh_digest: str = "") -> Path:
        """npz (vocabulary, vectors) + JSON (config, version, hash digest), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        levels = {f"level{i}_{part}": arr for i, pair in enumerate(self.levels)
                  for part, arr in zip(("buckets", "vectors"), pair, strict=True)}
        np.savez(buf, buckets=self.vocab.buckets, counts=self.vocab.counts,
                 vectors=self.vectors, out_vectors=self.out_vectors, **levels)
        _atomic_write(path, buf.getvalue())
        meta = {"version": MODEL_VERSION, "config": asdict(self.config),
                "lsh_digest": lsh_digest, "stats": self.stats}
        _atomic_write(_meta_path(path), json.dumps(meta, indent=1, default=str).encode())
        return path

    @classmethod
    def load(cls, path: Path | str) -> SkipGramModel:
        path = Path(path)
        meta = json.loads(_meta_path(path).read_text())
        if meta["version"] != MODEL_VERSION:
            raise ValueError(f"{path}: model version {meta['version']!r}")
        config = SkipGramConfig(**meta["config"])
        with np.load(path) as z:
            levels = tuple((z[f"level{i}_buckets"], z[f"level{i}_vectors"])
                           for i in range(len(config.levels)))
            return cls(vocab=Vocab(z["buckets"], z["counts"]), vectors=z["vectors"],
                       out_vectors=z["out_vectors"], config=config,
                       stats=meta.get("stats", {}), levels=levels)


def train_skipgram(token_seqs: Source | Sequence[Source],
                   config: SkipGramConfig = SkipGramConfig(),
                   vocab: Vocab | None = None) -> SkipGramModel:
    """Train SGNS token vectors in this process on token sources ((tokens, offsets) or
    `TokenSource`), streamed every epoch as the Ray workers do (`_EpochStream`)."""
    sources = ([token_seqs] if isinstance(token_seqs, tuple | TokenSource)
               else list(token_seqs))
    counts = _source_counts(sources)
    if vocab is None:
        vocab = build_vocab([counts], config.min_count)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(config.threads, 1))
    try:
        t0 = time.perf_counter()
        model = _SGNS(len(vocab), config, vocab.counts,
                      level_rows(vocab.buckets, config.levels, config.hash_size)
                      if config.levels else None)
        size = _in_vocab_total(counts, vocab)
        rng = np.random.default_rng(config.seed)
        total = float(size * config.epochs)
        done = 0.0
        for _ in range(config.epochs):
            stream = _EpochStream(sources, vocab, rng, config.shuffle)
            while True:
                ids, seq = stream.take(config.chunk_tokens)  # train_tokens' chunks
                if len(ids) == 0:
                    break
                done = model.train_tokens(ids, seq, rng, done, total)
        stats = {"tokens": size, "train_s": time.perf_counter() - t0,
                 "loss": model.loss_sum / max(model.loss_n, 1)}
        trained = model.export(vocab, stats)
        del model
        return smooth_model(trained, sources, config.smooth_rounds)
    finally:
        torch.set_num_threads(old_threads)


# --------------------------------------------------------------------------------------
# Ray: synchronous sum of touched-row deltas


_DELTA_ROWS = 1 << 15  # rows compared with the round-start snapshot at a time


class _RayWorker:
    """One replica of the model training on its token sources (run as a Ray actor).

    The sources (`TokenSource`s, or (tokens, offsets) resolved from ObjectRefs) are
    streamed again every epoch rather than held: memory is the model plus one shuffle
    block, whatever the number and size of the shards.
    """

    def __init__(self, config: SkipGramConfig, rank: int, *sources: Source) -> None:
        self.cfg = config
        self.rank = rank
        self.sources = list(sources)
        self.stream: _EpochStream | None = None
        self.epoch_tokens = 0  # tokens trained so far in this epoch
        torch.set_num_threads(max(config.threads, 1))

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """This worker's token counts (kept: `setup` derives its epoch size from them)."""
        self.local_counts = _source_counts(self.sources)
        return self.local_counts

    def setup(self, buckets: np.ndarray, counts: np.ndarray) -> int:
        """Build the shared vocabulary and identical initial weights (same seed); -> this
        worker's in-vocabulary tokens per epoch (from the counts of `counts`)."""
        self.vocab = Vocab(buckets, counts)
        self.model = _SGNS(len(self.vocab), self.cfg, counts,
                           level_rows(buckets, self.cfg.levels, self.cfg.hash_size)
                           if self.cfg.levels else None)
        self.model.gen.manual_seed(self.cfg.seed + 1 + 1000 * self.rank)
        self.rng = np.random.default_rng(self.cfg.seed + 7919 * (self.rank + 1))
        self.snap_in = self.model.w_in.clone()
        self.snap_out = self.model.w_out.clone()
        return _in_vocab_total(self.local_counts, self.vocab)

    def train_round(self, lo: int, hi: int, done: float, total: float,
                    scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Train on tokens [lo, hi) of this epoch's stream (the next hi - lo tokens; lo == 0
        starts an epoch: a new order of the sources and reads); -> rows and deltas of w_in
        and w_out."""
        if lo == 0 or self.stream is None:
            self.stream = _EpochStream(self.sources, self.vocab, self.rng, self.cfg.shuffle)
            self.epoch_tokens = 0
        ids, seq = self.stream.take(hi - lo)
        self.epoch_tokens += len(ids)
        self.model.train_tokens(ids, seq, self.rng, done, total, scale)
        out = []
        for w, snap in ((self.model.w_in, self.snap_in), (self.model.w_out, self.snap_out)):
            # by blocks of rows, into one buffer (pages of untouched rows are never
            # written, and the unused tail is given back): no full-matrix temporaries
            rows = np.empty(len(w), np.int64)
            deltas = np.empty(tuple(w.shape), np.float32)
            k = 0
            for b in range(0, len(w), _DELTA_ROWS):
                delta = w[b:b + _DELTA_ROWS] - snap[b:b + _DELTA_ROWS]
                r = torch.nonzero(delta.abs().sum(1)).squeeze(1)
                rows[k:k + len(r)] = r.numpy() + b
                deltas[k:k + len(r)] = delta[r].numpy()
                k += len(r)
            rows.resize(k, refcheck=False)
            deltas.resize((k, w.shape[1]), refcheck=False)
            out += [rows, deltas]
        return out[0], out[1], out[2], out[3]

    def apply(self, summed: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
        """W = W_round_start + summed deltas (same on every replica)."""
        rin, din, rout, dout = summed
        for w, snap, r, d in ((self.model.w_in, self.snap_in, rin, din),
                              (self.model.w_out, self.snap_out, rout, dout)):
            rt = torch.from_numpy(r)
            new = snap[rt] + torch.from_numpy(d)
            w[rt] = new
            snap[rt] = new

    def export(self, stats: dict[str, Any]) -> SkipGramModel:
        return self.model.export(self.vocab, stats)

    def smooth_part(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`smooth_sums` over this worker's sources (called after `export`: the training
        state is dropped to make room for the sums)."""
        self.model = self.snap_in = self.snap_out = None  # type: ignore[assignment]
        return smooth_sums(self.sources, vectors, self.vocab, self.cfg.sif_a)

    def loss(self) -> tuple[float, int]:
        return self.model.loss_sum, self.model.loss_n


def _reduce(parts: list[tuple[np.ndarray, np.ndarray]], n: int, dim: int,
            mode: str, sum_from: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum (or mean over the workers that touched each row) of row deltas; rows from
    `sum_from` on (level rows) are always summed."""
    rows = np.concatenate([p[0] for p in parts])
    u, inv = np.unique(rows, return_inverse=True)
    acc = torch.zeros(len(u), dim)
    acc.index_add_(0, torch.from_numpy(inv), torch.from_numpy(np.concatenate([p[1]
                                                                            for p in parts])))
    if mode == "mean":
        touched = np.bincount(inv, minlength=len(u)).astype(np.float32)
        if sum_from is not None:
            touched[u >= sum_from] = 1.0
        acc /= torch.from_numpy(touched)[:, None]
    elif mode != "sum":
        raise ValueError(f"mode must be 'sum' or 'mean', not {mode!r}")
    return u, acc.numpy()


def train_skipgram_ray(token_shards: Sequence[Any], config: SkipGramConfig = SkipGramConfig(),
                       num_workers: int = 2, sync_tokens: int = 500_000,
                       mode: str = "mean", worker_options: dict[str, Any] | None = None
                       ) -> SkipGramModel:
    """Train one SGNS model with `num_workers` Ray actors (Ray must be initialised).

    token_shards: token sources -- `TokenSource`s (each actor reads them from storage
    itself), (tokens, offsets) tuples or ObjectRefs to them -- dealt to the workers
    round-robin; a worker streams its sources every epoch. Every `sync_tokens` tokens per
    worker, the touched rows' deltas are combined through the driver -- mean over the
    workers that touched a row (`mode="mean"`) or sum (`"sum"`); see the module docstring.
    """
    import ray

    t0 = time.perf_counter()
    groups: list[list[Any]] = [[] for _ in range(num_workers)]
    for i, s in enumerate(token_shards):
        groups[i % num_workers].append(s)
    opts = {"num_cpus": max(config.threads, 1), **(worker_options or {})}
    actor_cls = ray.remote(_RayWorker).options(**opts)
    # sources are top-level arguments: Ray resolves ObjectRefs on the worker's node
    workers = [actor_cls.remote(config, r, *g) for r, g in enumerate(groups)]
    tables = ray.get([w.counts.remote() for w in workers])
    vocab = build_vocab(tables, config.min_count)
    b_ref, c_ref = ray.put(vocab.buckets), ray.put(vocab.counts)
    sizes = ray.get([w.setup.remote(b_ref, c_ref) for w in workers])
    total = float(sum(sizes) * config.epochs)
    n_rounds = max(1, math.ceil(max(sizes) / max(sync_tokens, 1)))
    done = 0.0
    sync_s = 0.0
    for _ in range(config.epochs):
        for r in range(n_rounds):
            bounds = [(s * r // n_rounds, s * (r + 1) // n_rounds) for s in sizes]
            parts = ray.get([w.train_round.remote(lo, hi, done, total, sum(sizes) / max(sz, 1))
                             for w, (lo, hi), sz in zip(workers, bounds, sizes, strict=True)])
            ts = time.perf_counter()
            # level rows are shared by design (each gathers many tokens' gradients, capped
            # per batch): the workers' deltas add up, as in one process; see module doc
            summed_in = _reduce([(p[0], p[1]) for p in parts], len(vocab), config.dim, mode,
                                sum_from=len(vocab))
            summed_out = _reduce([(p[2], p[3]) for p in parts], len(vocab), config.dim, mode)
            ref = ray.put((*summed_in, *summed_out))
            ray.get([w.apply.remote(ref) for w in workers])
            sync_s += time.perf_counter() - ts
            done += sum(hi - lo for lo, hi in bounds)
    losses = ray.get([w.loss.remote() for w in workers])
    stats = {"tokens": int(sum(sizes)), "train_s": time.perf_counter() - t0,
             "sync_s": sync_s, "rounds": n_rounds * config.epochs, "workers": num_workers,
             "loss": sum(x for x, _ in losses) / max(sum(n for _, n in losses), 1)}
    model = ray.get(workers[0].export.remote(stats))  # replicas are identical
    try:
        vectors = model.vectors
        for _ in range(config.smooth_rounds):
            ref = ray.put(vectors)
            vectors = smoothed_vectors(vectors, ray.get([w.smooth_part.remote(ref)
                                                         for w in workers]))
        return _with_vectors(model, vectors, config.smooth_rounds, time.perf_counter() - t0)
    finally:
        for w in workers:
            ray.kill(w)


# --------------------------------------------------------------------------------------
# Sequence vectors


def _bag_sums(ids: np.ndarray, seq: np.ndarray, w: np.ndarray, table: np.ndarray,
              n_seq: int) -> np.ndarray:
    """Weighted sum of table rows `ids` per sequence (`seq` sorted), straight from the
    table: no tokens × dim gather (which took ~110 bytes per token)."""
    starts = np.searchsorted(seq, np.arange(n_seq)).astype(np.int64)
    with warnings.catch_warnings():  # a read-only table (e.g. from Ray) is only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        weight = torch.from_numpy(np.ascontiguousarray(table, np.float32))
    return torch.nn.functional.embedding_bag(
        torch.from_numpy(ids.astype(np.int64, copy=False)), weight, torch.from_numpy(starts),
        mode="sum", per_sample_weights=torch.from_numpy(w)).numpy()


def sequence_vectors(tokens: np.ndarray, offsets: np.ndarray, vectors: np.ndarray,
                     vocab: Vocab, weighting: str = "sif", a: float = 1e-3,
                     component: np.ndarray | None = None,
                     backoff: Any = None) -> np.ndarray:
    """float32 (n_seq, dim): mean or SIF-weighted mean of each sequence's token vectors.

    SIF weight of a token = a / (a + p(token)), p its frequency in the training corpus.
    Tokens outside the vocabulary get a vector from `backoff` (`SkipGramModel.backoff`,
    weight 1: never seen) or are skipped; a sequence without any gets zeros. If
    `component` (unit vector, see `sif_component`) is given, its projection is removed.
    """
    if weighting not in ("sif", "mean"):
        raise ValueError(f"weighting must be 'sif' or 'mean', not {weighting!r}")
    n_seq = len(offsets) - 1
    ids = vocab.lookup(tokens)
    seq_all = np.repeat(np.arange(n_seq), np.diff(offsets))
    keep = ids >= 0
    ids, seq = ids[keep], seq_all[keep]
    if weighting == "sif":
        p = vocab.counts / max(vocab.counts.sum(), 1)
        w = (a / (a + p[ids])).astype(np.float32)
    else:
        w = np.ones(len(ids), np.float32)
    total = _bag_sums(ids, seq, w, vectors, n_seq)
    den = np.bincount(seq, weights=w, minlength=n_seq)
    if backoff is not None and not keep.all():
        uniq, inv = np.unique(np.asarray(tokens)[~keep], return_inverse=True)
        known, table = backoff(uniq)
        row = np.full(len(uniq), -1, np.int64)
        row[known] = np.arange(int(known.sum()))
        oov_ids, oov_seq = row[inv], seq_all[~keep]
        hit = oov_ids >= 0
        if hit.any():
            ones = np.ones(int(hit.sum()), np.float32)
            total += _bag_sums(oov_ids[hit], oov_seq[hit], ones, table, n_seq)
            den += np.bincount(oov_seq[hit], minlength=n_seq)
    res = total / np.maximum(den, 1e-12)[:, None].astype(np.float32)
    if component is not None:
        res = res - np.outer(res @ component, component).astype(np.float32)
    return res.astype(np.float32)


def sif_component(x: np.ndarray) -> np.ndarray:
    """First principal direction (unit, uncentred as in SIF) of sequence vectors x."""
    _, _, vt = np.linalg.svd(x[: min(len(x), 50_000)].astype(np.float64), full_matrices=False)
    return vt[0].astype(np.float32)


# --------------------------------------------------------------------------------------
# Read-token smoothing

_SMOOTH_TOKENS = 1 << 17  # token occurrences added to the sums at a time (a 50 MB gather)


def smooth_sums(sources: Sequence[Source], vectors: np.ndarray, vocab: Vocab,
                a: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass of smoothing over `sources`: for every token of the vocabulary seen in
    them, the sum of the SIF-weighted (`a`) mean vectors (`vectors`) of the reads it occurs
    in, once per occurrence. -> (vocabulary rows seen, sums float32, occurrences float64).

    Sums and occurrences of disjoint sources add up (`smoothed_vectors`), so Ray workers
    each take their share. Memory: one vocabulary-sized table, whatever the input.
    """
    dim = vectors.shape[1]
    acc = torch.zeros(len(vocab), dim)
    occ = np.zeros(len(vocab))
    p = vocab.counts / max(vocab.counts.sum(), 1)
    weight = (a / (a + p)).astype(np.float32)
    for source in sources:
        for tokens, offsets in _source_batches(source):
            n_seq = len(offsets) - 1
            ids = vocab.lookup(tokens)
            seq = np.repeat(np.arange(n_seq), np.diff(offsets))
            keep = ids >= 0
            ids, seq = ids[keep], seq[keep]
            w = weight[ids]
            means = torch.from_numpy(_bag_sums(ids, seq, w, vectors, n_seq)
                                     / np.maximum(np.bincount(seq, weights=w, minlength=n_seq),
                                                  1e-12)[:, None].astype(np.float32))
            for lo in range(0, len(ids), _SMOOTH_TOKENS):
                part = torch.from_numpy(seq[lo:lo + _SMOOTH_TOKENS])
                acc.index_add_(0, torch.from_numpy(ids[lo:lo + _SMOOTH_TOKENS]),
                               means.index_select(0, part))
            occ += np.bincount(ids, minlength=len(vocab))
    rows = np.flatnonzero(occ)
    return rows, acc[torch.from_numpy(rows)].numpy(), occ[rows]


def smoothed_vectors(vectors: np.ndarray, parts: Sequence[tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]]) -> np.ndarray:
    """New token vectors from `smooth_sums` of disjoint sources: each seen token's vector
    is the mean over all its occurrences of its read's vector; unseen tokens keep theirs."""
    out = np.array(vectors, np.float32, copy=True)
    if not parts:
        return out
    rows = np.concatenate([p[0] for p in parts])
    u, inv = np.unique(rows, return_inverse=True)
    acc = torch.zeros(len(u), out.shape[1])
    acc.index_add_(0, torch.from_numpy(inv), torch.from_numpy(np.concatenate([p[1]
                                                                            for p in parts])))
    occ = np.bincount(inv, weights=np.concatenate([p[2] for p in parts]), minlength=len(u))
    out[u] = acc.numpy() / occ[:, None].astype(np.float32)
    return out


def _with_vectors(model: SkipGramModel, vectors: np.ndarray, rounds: int,
                  seconds: float) -> SkipGramModel:
    """`model` with smoothed token vectors; each level's backoff vector becomes the
    count-weighted mean of its tokens' (what one more round gives a prefix: the mean of
    the read vectors of its tokens' occurrences)."""
    if rounds == 0:
        return model
    levels = []
    for b, (coarse, _) in zip(model.config.levels, model.levels, strict=True):
        group = np.searchsorted(coarse, model.vocab.buckets >> (model.config.hash_size - b))
        acc = torch.zeros(len(coarse), vectors.shape[1])
        acc.index_add_(0, torch.from_numpy(group),
                       torch.from_numpy(vectors * model.vocab.counts[:, None].astype(np.float32)))
        total = np.bincount(group, weights=model.vocab.counts, minlength=len(coarse))
        levels.append((coarse, (acc.numpy() / np.maximum(total, 1)[:, None]).astype(np.float32)))
    stats = {**model.stats, "smooth_rounds": rounds, "train_s": seconds}
    return replace(model, vectors=vectors, levels=tuple(levels), stats=stats,
                   config=replace(model.config, smooth_rounds=rounds))


def smooth_model(model: SkipGramModel, sources: Sequence[Source], rounds: int) -> SkipGramModel:
    """`rounds` of read-token smoothing of a trained model over its training sources.

    A round sets every token's vector to the mean, over its occurrences, of the vector of
    the read it occurs in (SIF-weighted mean of the read's token vectors): one step of
    simple graph convolution (Wu et al. 2019, SGC) on the read-token graph. Why: skip-gram
    with a 5-token window barely moves a token seen once or twice, which at 2^20 buckets
    is most tokens of a low-coverage genome, and never relates tokens further apart than
    the window; a round gives each token its whole reads' context. The read vectors are
    SIF-weighted with the model's `sif_a`: at the usual 1e-3, frequent tokens bridge
    genomes and more than 3-4 rounds over-smooth; at 1e-6 benchmark C (bench/lshvec.py)
    improves up to 8 rounds and levels off (LR 0.89, kNN-15 0.94). Smoothing random
    vectors instead of trained ones reaches only 0.72 / 0.90.
    """
    t0 = time.perf_counter()
    vectors = model.vectors
    for _ in range(rounds):
        vectors = smoothed_vectors(vectors, [smooth_sums(sources, vectors, model.vocab,
                                                         model.config.sif_a)])
    seconds = model.stats.get("train_s", 0.0) + time.perf_counter() - t0
    return _with_vectors(model, vectors, rounds, seconds)


# --- Prefect tasks: the store edge -------------------------------------------------------

LSHVEC_TASKS_VERSION = "5"  # 5: source_shard is the shard's label, not its URI
_EMBED_BATCH = 50_000  # reads per batch of embed_lshvec_shard: memory set by this, not the shard
TOKENS_SCHEMA = pa.schema([pa.field("sequence_id", pa.string()), pa.field("row", pa.int64()),
                           pa.field("tokens", pa.list_(pa.int32()))])
"""A token shard: one row per read, its canonical LSH tokens in k-mer order."""


def _sample_sequences(store: Any, shards: Sequence[Any], limit: int) -> pa.Array:
    from helixflow.tables import parquet_file

    parts, have = [], 0
    for shard in shards:
        with parquet_file(store, shard) as source:
            for batch in source.iter_batches(batch_size=65_536, columns=["sequence"]):
                parts.append(batch.column("sequence").slice(0, limit - have))
                have += len(parts[-1])
                if have >= limit:
                    return pa.concat_arrays(parts)
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def load_lsh(store: Any, art: Any) -> LshFunction:
    from helixflow.tables import unpack_cached

    return LshFunction.load(unpack_cached(store, art, "lshvec") / "lsh.npz")


def load_model(store: Any, art: Any) -> SkipGramModel:
    from helixflow.tables import unpack_cached

    return SkipGramModel.load(unpack_cached(store, art, "lshvec") / "model.npz")


def write_token_shard(source: Any, lsh: LshFunction, path: Path) -> tuple[int, int]:
    """Tokenise a read shard (a pyarrow ParquetFile) batch by batch into a token shard at
    `path` (TOKENS_SCHEMA); (reads, tokens) written."""
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
    """A `tokens` column as (tokens int32, offsets int64 from 0): stored int32, no copy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = np.asarray(column.offsets, dtype=np.int64)
    return np.asarray(column.flatten(), dtype=np.int32), offsets - offsets[0]


def write_lshvec_embeddings(source: Any, model: SkipGramModel, weighting: str,
                            writer: Any) -> None:
    """Read vectors of a token shard (a pyarrow ParquetFile), `_EMBED_BATCH` reads at a
    time, into an `EmbeddingWriter`: memory is set by the batch, not the shard."""
    for batch in source.iter_batches(batch_size=_EMBED_BATCH,
                                     columns=["sequence_id", "row", "tokens"]):
        flat, offsets = token_arrays(batch.column("tokens"))
        vectors = sequence_vectors(flat, offsets, model.vectors, model.vocab,
                                   weighting=weighting, a=model.config.sif_a,
                                   backoff=model.backoff)
        writer.write(batch.column("sequence_id"), vectors, batch.column("row").to_numpy())


@materialize("helixflow://embed/lshvec-hash", name="fit-lsh", task_run_name="fit-lsh-k{k}",
             **stage_options(LSHVEC_TASKS_VERSION))
def fit_lsh_hash(shards: list[Any], k: int, hash_size: int, seed: int, store: Any,
                 run_id: str) -> Any:
    """The LSH function (hyperplanes through k-mers sampled from the reads) → a versioned
    artifact, reused by tokenisation, training and later inference; `Skipped` when the
    reads hold too few k-mers to fit it (none left, or all shorter than k)."""
    from helixflow.artifacts import Skipped
    from helixflow.tables import pack_files, publish_file

    sample = _sample_sequences(store, shards, 20_000)
    try:
        if len(sample) == 0:
            raise TooLittleInput("no reads to sample k-mers from for the LSH hash")
        lsh = fit_lsh(sample, k=k, hash_size=hash_size, seed=seed)
    except TooLittleInput as exc:
        return Skipped(stage="embedding", sample="lshvec", reason=str(exc))
    with store.scratch() as scratch:
        path = lsh.save(scratch / "lsh.npz")
        tar = pack_files([path, _meta_path(path)], scratch / f"lsh-k{k}-h{hash_size}.tar")
        return publish_file(store, tar, run_id=run_id, stage="models",
                            media_type="application/x-tar", producer="fit-lsh",
                            params={"k": k, "hash_size": hash_size, "seed": seed},
                            upstream=[s.ref() for s in shards],
                            metadata={"lsh_digest": lsh.digest(), "version": LSH_VERSION})


@materialize("helixflow://embed/lshvec-tokens", name="lsh-tokenize",
             task_run_name="tokens-{shard.name}", **stage_options(LSHVEC_TASKS_VERSION))
def tokenize_shard(shard: Any, lsh_art: Any, store: Any, run_id: str) -> Any:
    """Every read of a shard as its LSH token sequence → a token shard (Parquet)."""
    from helixflow.tables import PARQUET, parquet_file, publish_file

    lsh = load_lsh(store, lsh_art)
    name = shard.name.replace(".parquet", ".tokens.parquet")
    with store.scratch() as scratch, parquet_file(store, shard) as source:
        path = scratch / name
        rows, _tokens = write_token_shard(source, lsh, path)
        return publish_file(store, path, run_id=run_id, stage="embed", media_type=PARQUET,
                            producer="lsh-tokenize", rows=rows,
                            upstream=[shard.ref(), lsh_art.ref()],
                            metadata={"lsh_digest": lsh_art.metadata.get("lsh_digest")})


@materialize("helixflow://embed/lshvec-model", name="train-lshvec",
             task_run_name="train-lshvec", **stage_options(LSHVEC_TASKS_VERSION))
def train_lshvec(token_shards: list[Any], lsh_art: Any, config: SkipGramConfig,
                 workers: int, store: Any, run_id: str) -> Any:
    """Skip-gram over the token shards on `workers` Ray actors (one model, synchronised
    every round) → the model artifact. Each actor streams its token shards (or parts of
    them) from the store every epoch: neither this coordinator, the object store nor the
    actors hold the corpus, so memory does not grow with the number of shards."""
    from helixflow.tables import pack_files, publish_file

    bits = lsh_art.params.get("hash_size")
    if config.levels and bits is not None and int(bits) != config.hash_size:
        raise HelixflowError(f"LSHvec levels {list(config.levels)} are prefixes of "
                             f"{config.hash_size}-bit tokens, but the hash {lsh_art.uri} "
                             f"has hash_size {bits}")
    parts = -(-workers // max(len(token_shards), 1))  # every worker gets some reads
    sources = [TokenSource(art, store, i, parts) for art in token_shards for i in range(parts)]
    model = train_skipgram_ray(sources, config, num_workers=workers,
                               worker_options={"scheduling_strategy": "SPREAD"})
    with store.scratch() as scratch:
        path = model.save(scratch / "model.npz", lsh_digest=lsh_art.metadata.get("lsh_digest",
                                                                                   ""))
        tar = pack_files([path, _meta_path(path)], scratch / "lshvec-model.tar")
        return publish_file(store, tar, run_id=run_id, stage="models",
                            media_type="application/x-tar", producer="train-lshvec",
                            params={**asdict(config), "workers": workers},
                            upstream=[lsh_art.ref(), *(t.ref() for t in token_shards)],
                            metadata={"vocab": len(model.vocab), "dim": config.dim,
                                      "stats": model.stats})


@materialize("helixflow://embed/lshvec", name="lshvec-embed",
             task_run_name="lshvec-{tokens.name}", **stage_options(LSHVEC_TASKS_VERSION))
def embed_lshvec_shard(tokens: Any, model_art: Any, weighting: str, store: Any,
                       run_id: str) -> Any:
    """SIF-weighted (or plain) mean token vectors of every read of a token shard → an
    embedding shard (`lshvec`, model id = the model artifact's sha256)."""
    from helixflow.tables import PARQUET, parquet_file, publish_file
    from helixflow.tasks.embeddings import EmbeddingWriter

    model = load_model(store, model_art)
    dim = int(model.vectors.shape[1])
    source = next((u for u in tokens.upstream if u.uri.endswith(".parquet")), tokens).label
    with store.scratch() as scratch, parquet_file(store, tokens) as pf:
        path = scratch / tokens.name.replace(".tokens.parquet", ".lshvec.parquet")
        with EmbeddingWriter(path, dim, method="lshvec", source_shard=source,
                             model_id=str(model_art.sha256)) as writer:
            write_lshvec_embeddings(pf, model, weighting, writer)
        return publish_file(store, path, run_id=run_id, stage="embed", media_type=PARQUET,
                            producer="lshvec-embed", rows=writer.rows,
                            params={"weighting": weighting},
                            upstream=[tokens.ref(), model_art.ref()],
                            metadata={"method": "lshvec", "dim": dim,
                                      "model_id": model_art.sha256})
