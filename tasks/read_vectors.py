"""Read vectors from token vectors, and read-token smoothing of the token vectors.

Sequence vectors (`sequence_vectors`)
    Mean, or SIF-weighted mean (a / (a + p(token)), Arora et al. 2017), of the token vectors
    of each read; optionally the first principal component is removed (`sif_component`).

Read-token smoothing (`SkipGramConfig.smooth_rounds`, `smooth_model`) -- helixflow's, too
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
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from helixflow.tasks.token_stream import Source, Vocab, source_batches

if TYPE_CHECKING:  # the model module imports this one (its trainer smooths)
    from helixflow.tasks.skipgram import SkipGramModel


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

    Args:
        tokens: int tokens of all sequences, concatenated.
        offsets: int64 offsets (n_seq + 1) into `tokens`.
        vectors: vocabulary-size x dim token vectors.
        vocab: the vocabulary (tokens, training counts) rows of `vectors` follow.
        weighting: "sif" or "mean".
        a: the SIF parameter `a` of the weight a / (a + p).
        component: a unit vector whose projection is removed; None for none.
        backoff: a callable tokens -> (known mask, vectors of the known ones); None skips
            out-of-vocabulary tokens.

    Returns:
        float32 n_seq x dim matrix.

    Raises:
        ValueError: an unknown weighting.
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
    """First principal direction (unit, uncentred as in SIF) of sequence vectors x.

    Args:
        x: n x dim sequence vectors; the first 50,000 rows are used.

    Returns:
        float32 unit vector of length dim.
    """
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

    Args:
        sources: token shards (parts) or in-memory (tokens, offsets) pairs.
        vectors: vocabulary-size x dim token vectors.
        vocab: the vocabulary rows of `vectors` follow.
        a: the SIF parameter of the read vectors.

    Returns:
        (int64 vocabulary rows seen, their float32 sums, their float64 occurrence counts).
    """
    dim = vectors.shape[1]
    acc = torch.zeros(len(vocab), dim)
    occ = np.zeros(len(vocab))
    p = vocab.counts / max(vocab.counts.sum(), 1)
    weight = (a / (a + p)).astype(np.float32)
    for source in sources:
        for tokens, offsets in source_batches(source):
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
    is the mean over all its occurrences of its read's vector; unseen tokens keep theirs.

    Args:
        vectors: vocabulary-size x dim token vectors (not modified).
        parts: `smooth_sums` results of disjoint sources.

    Returns:
        A float32 copy of `vectors` with the seen rows replaced.
    """
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


def with_smoothed_vectors(model: SkipGramModel, vectors: np.ndarray, rounds: int,
                  seconds: float) -> SkipGramModel:
    """`model` with smoothed token vectors; each level's backoff vector becomes the
    count-weighted mean of its tokens' (what one more round gives a prefix: the mean of
    the read vectors of its tokens' occurrences).

    Args:
        model: the trained model.
        vectors: its smoothed token vectors (same rows as `model.vectors`).
        rounds: the smoothing rounds done; 0 returns `model` unchanged.
        seconds: the total training time to record in the stats (train_s).

    Returns:
        A new model with `vectors`, recomputed backoff levels, and smooth_rounds recorded in
        its config and stats.
    """
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

    Args:
        model: the trained model.
        sources: its training sources (token shards or (tokens, offsets) pairs).
        rounds: smoothing rounds; 0 returns `model` unchanged.

    Returns:
        The smoothed model (see `with_smoothed_vectors`); train_s includes the smoothing.
    """
    t0 = time.perf_counter()
    vectors = model.vectors
    for _ in range(rounds):
        vectors = smoothed_vectors(vectors, [smooth_sums(sources, vectors, model.vocab,
                                                         model.config.sif_a)])
    seconds = model.stats.get("train_s", 0.0) + time.perf_counter() - t0
    return with_smoothed_vectors(model, vectors, rounds, seconds)

