"""Skip-gram training input: the token vocabulary and token sources streamed an epoch at a time.

A vocabulary (`Vocab`, `build_vocab`) is the used LSH buckets remapped to dense ids, with a
min_count filter; per-shard count tables (`count_tokens`) merge (`merge_counts`), so Ray
workers count their own shards. A `TokenSource` is (a part of) a token shard read a batch at
a time from the store, or in-memory (tokens, offsets); `EpochStream` yields one epoch of
in-vocabulary token ids in bounded blocks (sources in a random order, reads shuffled within
a block), so a trainer's memory never grows with the input. Used by `tasks.skipgram` (one
process), `tasks.skipgram_ray` (Ray actors) and the smoothing of `tasks.read_vectors`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from helixflow.tasks.lsh import token_arrays


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
    """(unique bucket ids, counts) of a token array: the mergeable per-shard statistic.

    Args:
        tokens: integer tokens.

    Returns:
        (ascending int64 unique tokens, their int64 counts).
    """
    u, c = np.unique(tokens, return_counts=True)
    return u.astype(np.int64), c.astype(np.int64)


def merge_counts(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    """Add per-shard (ids, counts) tables.

    Args:
        parts: (ids, counts) tables, e.g. from `count_tokens`.

    Returns:
        (ascending int64 unique ids, their summed int64 counts); empty arrays for no parts.
    """
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    cnt = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    u, inv = np.unique(ids, return_inverse=True)
    return u, np.bincount(inv, weights=cnt, minlength=len(u)).astype(np.int64)


def build_vocab(tokens: np.ndarray | Sequence[tuple[np.ndarray, np.ndarray]],
                min_count: int = 1) -> Vocab:
    """Vocabulary of buckets seen at least `min_count` times (tokens or count tables).

    Args:
        tokens: a token array, or (ids, counts) tables to merge.
        min_count: fewest occurrences of a kept bucket.

    Returns:
        Vocab of the kept buckets (ascending) and their counts.
    """
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


def source_batches(source: Source) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens, offsets from 0) of `_SOURCE_READS` reads at a time of a source.

    Args:
        source: a TokenSource, or in-memory (tokens, offsets).

    Returns:
        An iterator of (tokens, int64 offsets starting at 0); nothing for a source without
        reads.
    """
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


def source_counts(sources: Sequence[Source]) -> tuple[np.ndarray, np.ndarray]:
    """(bucket ids, counts) over the sources, streamed: batch tables are merged once they
    outgrow the running one (amortised; memory a few vocabulary-sized tables).

    Args:
        sources: token sources, read once.

    Returns:
        (ascending int64 bucket ids, their int64 counts).
    """
    parts = [(np.zeros(0, np.int64), np.zeros(0, np.int64))]
    pending = 0
    for source in sources:
        for tokens, _ in source_batches(source):
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


def in_vocab_total(counts: tuple[np.ndarray, np.ndarray], vocab: Vocab) -> int:
    """Tokens of one epoch: the in-vocabulary entries of the sources' count table (no
    second pass over the data).

    Args:
        counts: (ids, counts) over the sources, as `source_counts` returns them.
        vocab: the training vocabulary.

    Returns:
        The number of token occurrences in the vocabulary.
    """
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
        for tokens, offsets in source_batches(sources[i]):
            a, b = _in_vocab(tokens, offsets, vocab)
            ids.append(a)
            lens.append(b)
            n += len(a)
            if n >= _SHUFFLE_TOKENS:
                yield _shuffle_block(ids, lens, rng, shuffle)
                ids, lens, n = [], [], 0
    if n:
        yield _shuffle_block(ids, lens, rng, shuffle)


class EpochStream:
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

