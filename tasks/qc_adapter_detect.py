"""QC adapter detection: the 3' adapter fastp 0.23.2 finds in the first reads of a file
(`Evaluator::evalAdapterAndReadNum` and `getAdapterWithSeed`).

fastp loads the first reads of the file (up to 256Ki reads or until 151 x 256Ki bases are
read), needs at least 10,000 of them, and counts every 10-mer of ACGT starting at
position 20 or later and ending at least one base (max(1, trim_tail1)) before the 3' end.
Ten seeds are the most frequent 10-mers that are not low-complexity (no base 6 times or
more, fewer than 8 C/G, not starting GGGG); a seed must occur at least 10 times and 20x
more often than the mean 10-mer. The first seed with 3+ base changes is extended both
ways along the dominant path of a tree of the sequences that follow (and, reversed,
precede) its occurrences: a step needs 50 sequences and one base in >= 95 % of them. The
known-adapter table (`tasks.fastp_adapters`) replaces the result when one of its entries
is a prefix of it; otherwise the result is kept only if both walks ended for lack of
sequences.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from helixflow.tasks.fastp_adapters import KNOWN_ADAPTERS
from helixflow.tasks.reads import base_codes, padded, string_parts

DETECT_READS = 256 * 1024
DETECT_BASES = 151 * DETECT_READS
_DETECT_MIN_READS = 10_000
_KEY_LEN = 10
_KEY_SPACE = 1 << (2 * _KEY_LEN)
_SEED_START = 20
_SEEDS = 10
_SEED_MIN = 10
_SEED_FOLD = 20
_TREE_MIN = 50
_TREE_RATIO = 0.95
_ADAPTER_MAX = 60
_DETECT_CHUNK = 16384
_FASTP_BASES = np.frombuffer(b"ATCG", np.uint8)  # fastp's 2-bit order for k-mer keys
_KEY_CODE = base_codes(b"ATCG", lower_case=False)  # 4: any other byte, lower case too
_N = ord("N")


def detection_reads(lengths: np.ndarray) -> int:
    """How many of the first reads (of these lengths) fastp's evaluator loads.

    Args:
        lengths: read lengths in file order.

    Returns:
        The number of leading reads: at most 256Ki, stopping at the read that brings the
        bases to 151 x 256Ki.
    """
    n = min(len(lengths), DETECT_READS)
    over = np.flatnonzero(np.cumsum(lengths[:n], dtype=np.int64) >= DETECT_BASES)
    return int(over[0]) + 1 if len(over) else n


@functools.lru_cache(maxsize=1)
def _seed_candidates() -> np.ndarray:
    """Mask over all 10-mer keys: the ones fastp may take as seeds (not low-complexity)."""
    keys = np.arange(_KEY_SPACE, dtype=np.int32)
    per_base = np.zeros((4, _KEY_SPACE), np.int8)  # A, T, C, G
    for i in range(_KEY_LEN):
        digit = (keys >> (2 * i)) & 3
        for b in range(4):
            per_base[b] += digit == b
    ok = (per_base < _KEY_LEN - 4).all(axis=0)
    ok &= per_base[2] + per_base[3] < _KEY_LEN - 2
    ok &= (keys >> 12) != 0xFF  # GGGG...
    return ok


def _key_string(key: int) -> str:
    """The 10-mer of a key (first base in the highest bits)."""
    shifts = range(2 * (_KEY_LEN - 1), -1, -2)
    return bytes(_FASTP_BASES[(key >> s) & 3] for s in shifts).decode()


def _chunk_keys(offsets: np.ndarray, data: np.ndarray, shift: int) -> np.ndarray:
    """10-mer keys of one chunk of reads: keys[i, j] is the key of read i at position
    _SEED_START + j, or -1 outside the counted range or where the 10-mer holds a base other
    than ACGT. Built by doubling (1, 2, 4, 8 then 10 bases per word): four passes, not ten."""
    width = max(int(np.diff(offsets).max(initial=0)), _SEED_START + _KEY_LEN)
    seq, length = padded(offsets, data, width), np.diff(offsets).astype(np.int64)
    codes = _KEY_CODE[seq[:, _SEED_START:]]
    k1 = (codes & 3).astype(np.uint32)
    k2 = k1[:, :-1] << 2 | k1[:, 1:]
    k4 = k2[:, :-2] << 4 | k2[:, 2:]
    k8 = k4[:, :-4] << 8 | k4[:, 4:]
    span = codes.shape[1] - _KEY_LEN + 1
    keys = (k8[:, :span] << 4 | k2[:, 8:]).astype(np.int32)
    others = np.zeros((len(length), codes.shape[1] + 1), np.int16)
    np.cumsum(codes > 3, axis=1, dtype=np.int16, out=others[:, 1:])
    bad = others[:, _KEY_LEN:] > others[:, :span]
    bad |= np.arange(span) > (length - _SEED_START - _KEY_LEN - shift)[:, None]
    keys[bad] = -1
    return keys


def _chunks(
    sequences: pa.Array, n: int
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """(first read, string parts) of the first n reads, a chunk at a time."""
    for lo in range(0, n, _DETECT_CHUNK):
        yield lo, string_parts(sequences.slice(lo, min(_DETECT_CHUNK, n - lo)))


def _dominant_path(seqs: np.ndarray) -> tuple[bytes, bool]:
    """fastp NucleotideTree::getDominantPath over byte rows (0 = end; a row stops at N):
    (the path, whether it ended for lack of sequences rather than of a dominant base)."""
    path = bytearray()
    rows = np.arange(len(seqs))
    for depth in range(seqs.shape[1]):
        col = seqs[rows, depth]
        live = (col != 0) & (col != _N)
        total = int(np.count_nonzero(live))
        if total < _TREE_MIN:
            return bytes(path), True
        values, counts = np.unique(col[live], return_counts=True)
        best = int(counts.argmax())
        if counts[best] / total < _TREE_RATIO:
            return bytes(path), False
        path.append(int(values[best]))
        rows = rows[col == values[best]]
    return bytes(path), True


def _seed_occurrences(
    sequences: pa.Array, n: int, seeds: np.ndarray, shift: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key, read, position) of every counted occurrence of the seeds in the first n reads."""
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for lo, (offsets, data) in _chunks(sequences, n):
        keys = _chunk_keys(offsets, data, shift)
        rows, cols = np.nonzero(np.isin(keys, seeds))
        found.append((keys[rows, cols], rows + lo, cols + _SEED_START))
    key, read, pos = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return key, read, pos


def _extend_seed(
    sequences: pa.Array, read: np.ndarray, pos: np.ndarray, seed: int, shift: int
) -> str:
    """fastp getAdapterWithSeed, given the seed's occurrences (read, position): the seed
    extended both ways, or "" when rejected."""
    offsets, data = string_parts(sequences)
    start, length = offsets[read].astype(np.int64), np.diff(offsets)[read].astype(np.int64)
    steps = np.arange(int(length.max(initial=0)))
    ahead = pos[:, None] + _KEY_LEN + steps  # what follows, up to length - shift
    behind = pos[:, None] - 1 - steps  # what precedes, reversed
    last = len(data) - 1
    after = np.where(ahead < (length - shift)[:, None],
                     data[np.minimum(start[:, None] + ahead, last)], 0).astype(np.uint8)
    before = np.where(behind >= 0, data[np.clip(start[:, None] + behind, 0, last)], 0)
    forward, leaf_f = _dominant_path(after)
    backward, leaf_b = _dominant_path(before.astype(np.uint8))
    adapter = (backward[::-1].decode() + _key_string(seed) + forward.decode())[:_ADAPTER_MAX]
    known = match_known_adapter(adapter)
    if known:
        return known
    return adapter if leaf_f and leaf_b else ""


def match_known_adapter(seq: str) -> str:
    """The first entry of fastp's known-adapter table (in byte order) that is a prefix of
    `seq`, or "".

    Args:
        seq: a detected adapter sequence.

    Returns:
        The matching KNOWN_ADAPTERS entry, or "".
    """
    for adapter in KNOWN_ADAPTERS:
        if len(adapter) <= len(seq) and seq.startswith(adapter):
            return adapter
    return ""


def detect_adapter(sequences: pa.Array | pa.ChunkedArray, trim_tail1: int = 0) -> str:
    """The 3' adapter fastp 0.23.2 detects from the first reads of a file, or "" for none.

    Args:
        sequences: the file's reads in order (at least its first 256Ki reads, or all of them;
            later ones are ignored as fastp ignores them).
        trim_tail1: fastp's `--trim_tail1`; the last max(1, trim_tail1) bases of each read
            are left out of the counts (for read 2 too, as fastp does).

    Returns:
        The adapter sequence, or "" when none is found or there are fewer than 10,000 reads
        to look at.

    Example:
        >>> detect_adapter(pa.array(reads))  # doctest: +SKIP
        'AGATCGGAAGAGCACACGTCTGAACTCCAGTCA'
    """
    if isinstance(sequences, pa.ChunkedArray):
        sequences = sequences.combine_chunks()
    offsets, _ = string_parts(sequences)
    n = detection_reads(np.diff(offsets).astype(np.int64))
    if n < _DETECT_MIN_READS:
        return ""
    shift = max(1, trim_tail1)
    counts = np.zeros(_KEY_SPACE, np.int64)
    for _, (chunk_offsets, data) in _chunks(sequences, n):
        keys = _chunk_keys(chunk_offsets, data, shift)
        counts += np.bincount(keys[keys >= 0], minlength=_KEY_SPACE)
    counts[0] = 0
    candidates = np.flatnonzero(_seed_candidates())
    total = int(counts[candidates].sum())
    # fastp keeps a top-10 by insertion: higher counts first, a later key before an equal one
    top = candidates[np.lexsort((-candidates, -counts[candidates]))[:_SEEDS]]
    occurrences: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for key in top.tolist():
        count = int(counts[key])
        if count < _SEED_MIN or count * _KEY_SPACE < total * _SEED_FOLD:
            break
        seed = _key_string(key)
        if sum(a != b for a, b in itertools.pairwise(seed)) < 3:
            continue
        if occurrences is None:  # one more pass over the reads, for all seeds at once
            occurrences = _seed_occurrences(sequences, n, top, shift)
        keys, read, pos = occurrences
        mine = keys == key
        adapter = _extend_seed(sequences, read[mine], pos[mine], key, shift)
        if adapter:
            return adapter
    return ""
