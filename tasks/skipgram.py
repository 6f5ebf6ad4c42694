"""Skip-gram with negative sampling over LSH tokens: the model, its SGD step, the local trainer.

Skip-gram (`SkipGramConfig`, `build_vocab`, `train_skipgram`)
    Skip-gram with negative sampling as in word2vec / fastText: dynamic window (an effective
    window drawn uniformly from 1..window per centre), negatives from the unigram^0.75
    table, frequent-token subsampling (keep probability sqrt(t/f) + t/f), linear learning
    rate decay over all epochs. Used buckets are remapped to a dense vocabulary with a
    min_count filter. The update is hand-rolled SGD on batches of (centre, context,
    negatives) with `index_add_` sparse row updates (no autograd), pairs shuffled within
    chunks of the corpus so a batch rarely repeats a centre.

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

The trainer streams its input (`tasks.token_stream`) every epoch; `train_skipgram` is the
one-process trainer, `tasks.skipgram_ray` the same model on Ray actors. A `SkipGramModel`
is saved as npz + a JSON sidecar (`save` / `load`, atomic, versioned by `MODEL_VERSION`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from helixflow.tasks.lsh import load_meta, save_npz
from helixflow.tasks.read_vectors import smooth_model
from helixflow.tasks.token_stream import (
    EpochStream,
    Source,
    TokenSource,
    Vocab,
    build_vocab,
    in_vocab_total,
    source_counts,
)

MODEL_VERSION = "helixflow-lshvec-model/1"


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

    Args:
        buckets: the vocabulary's token values (hash_size-bit LSH tokens), ascending.
        levels: prefix widths b in bits, each <= hash_size.
        hash_size: bits per token.

    Returns:
        int64 V x (1 + len(levels)) row indices: column 0 is 0..V-1, level rows follow
        after V, numbered per level.
    """
    cols = [np.arange(len(buckets), dtype=np.int64)]
    n_rows = len(buckets)
    for b in levels:
        _, inv = np.unique(np.asarray(buckets) >> (hash_size - b), return_inverse=True)
        cols.append(inv.astype(np.int64) + n_rows)
        n_rows += int(inv.max()) + 1 if len(inv) else 0
    return np.stack(cols, axis=1)


_ROW_CAP = 32.0  # most windows' gradients one input row takes from a batch (SGNS.step)


class SGNS:
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
        levels = {f"level{i}_{part}": arr for i, pair in enumerate(self.levels)
                  for part, arr in zip(("buckets", "vectors"), pair, strict=True)}
        return save_npz(path, {"buckets": self.vocab.buckets, "counts": self.vocab.counts,
                               "vectors": self.vectors, "out_vectors": self.out_vectors,
                               **levels},
                        {"version": MODEL_VERSION, "config": asdict(self.config),
                         "lsh_digest": lsh_digest, "stats": self.stats})

    @classmethod
    def load(cls, path: Path | str) -> SkipGramModel:
        """Read a model saved by `save`; checks the version."""
        path = Path(path)
        meta = load_meta(path, MODEL_VERSION, "model")
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
    `TokenSource`), streamed every epoch as the Ray workers do (`EpochStream`).

    Args:
        token_seqs: one source or a sequence of them.
        config: model and training settings (dim, epochs, min_count, levels, seed, threads…).
        vocab: the vocabulary to train; None builds it from the sources with
            `config.min_count`.

    Returns:
        The trained SkipGramModel, smoothed `config.smooth_rounds` times, with stats
        (tokens, train_s, loss).
    """
    sources = ([token_seqs] if isinstance(token_seqs, tuple | TokenSource)
               else list(token_seqs))
    counts = source_counts(sources)
    if vocab is None:
        vocab = build_vocab([counts], config.min_count)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(config.threads, 1))
    try:
        t0 = time.perf_counter()
        model = SGNS(len(vocab), config, vocab.counts,
                      level_rows(vocab.buckets, config.levels, config.hash_size)
                      if config.levels else None)
        size = in_vocab_total(counts, vocab)
        rng = np.random.default_rng(config.seed)
        total = float(size * config.epochs)
        done = 0.0
        for _ in range(config.epochs):
            stream = EpochStream(sources, vocab, rng, config.shuffle)
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

