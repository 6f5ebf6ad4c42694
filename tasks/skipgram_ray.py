"""One skip-gram model trained by several Ray actors, synchronised every round.

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
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from helixflow.tasks.read_vectors import smooth_sums, smoothed_vectors, with_smoothed_vectors
from helixflow.tasks.skipgram import SGNS, SkipGramConfig, SkipGramModel, level_rows
from helixflow.tasks.token_stream import (
    EpochStream,
    Source,
    Vocab,
    build_vocab,
    in_vocab_total,
    source_counts,
)

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
        self.stream: EpochStream | None = None
        self.epoch_tokens = 0  # tokens trained so far in this epoch
        torch.set_num_threads(max(config.threads, 1))

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """This worker's token counts (kept: `setup` derives its epoch size from them)."""
        self.local_counts = source_counts(self.sources)
        return self.local_counts

    def setup(self, buckets: np.ndarray, counts: np.ndarray) -> int:
        """Build the shared vocabulary and identical initial weights (same seed); -> this
        worker's in-vocabulary tokens per epoch (from the counts of `counts`)."""
        self.vocab = Vocab(buckets, counts)
        self.model = SGNS(len(self.vocab), self.cfg, counts,
                           level_rows(buckets, self.cfg.levels, self.cfg.hash_size)
                           if self.cfg.levels else None)
        self.model.gen.manual_seed(self.cfg.seed + 1 + 1000 * self.rank)
        self.rng = np.random.default_rng(self.cfg.seed + 7919 * (self.rank + 1))
        self.snap_in = self.model.w_in.clone()
        self.snap_out = self.model.w_out.clone()
        return in_vocab_total(self.local_counts, self.vocab)

    def train_round(self, lo: int, hi: int, done: float, total: float,
                    scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Train on tokens [lo, hi) of this epoch's stream (the next hi - lo tokens; lo == 0
        starts an epoch: a new order of the sources and reads); -> rows and deltas of w_in
        and w_out."""
        if lo == 0 or self.stream is None:
            self.stream = EpochStream(self.sources, self.vocab, self.rng, self.cfg.shuffle)
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

    Args:
        token_shards: the token sources, as above.
        config: model and training settings; `config.threads` CPUs per actor.
        num_workers: Ray actors.
        sync_tokens: tokens per worker between synchronisations.
        mode: "mean" or "sum", how the workers' row deltas are combined.
        worker_options: extra Ray actor options (override num_cpus); None for none.

    Returns:
        The trained SkipGramModel, smoothed `config.smooth_rounds` times, with stats
        (tokens, train_s, sync_s, rounds, workers, loss). The actors are killed.
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
        return with_smoothed_vectors(model, vectors, config.smooth_rounds, time.perf_counter() - t0)
    finally:
        for w in workers:
            ray.kill(w)

