"""Tests for tasks/lshvec.py on small generated data (hash, skip-gram, Ray trainer, vectors)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import tasks.lshvec as lshvec_mod
from tasks.lshvec import (
    LshFunction,
    SkipGramConfig,
    SkipGramModel,
    Vocab,
    build_vocab,
    fit_lsh,
    sequence_vectors,
    sif_component,
    tokenize,
    train_skipgram,
)

_RC = str.maketrans("ACGTN", "TGCAN")


def revcomp(s: str) -> str:
    return s.translate(_RC)[::-1]


def random_seqs(n: int, length: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), size=length)) for _ in range(n)]


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seqs() -> list[str]:
    return random_seqs(40, 120)


@pytest.fixture(scope="module")
def lsh(seqs: list[str]) -> LshFunction:
    return fit_lsh(seqs, k=15, hash_size=20, seed=3)


def test_tokens_reverse_complement_invariant(seqs: list[str], lsh: LshFunction) -> None:
    tok, off = tokenize(seqs, lsh)
    rtok, roff = tokenize([revcomp(s) for s in seqs], lsh)
    assert np.array_equal(off, roff)
    for i in range(len(seqs)):
        assert np.array_equal(tok[off[i]:off[i + 1]], rtok[roff[i]:roff[i + 1]][::-1])


def test_tokens_range_offsets_and_dtype(seqs: list[str], lsh: LshFunction) -> None:
    tok, off = tokenize(pa.array(seqs), lsh)
    assert tok.dtype == np.int64 and off.dtype == np.int64
    assert len(off) == len(seqs) + 1 and off[-1] == len(tok)
    assert np.all(np.diff(off) == 120 - 15 + 1)
    assert tok.min() >= 0 and tok.max() < 2**20
    assert len(np.unique(tok)) > 50  # the hash spreads k-mers over many buckets


def test_n_kmers_dropped_and_short_reads(lsh: LshFunction) -> None:
    s = random_seqs(1, 60, seed=5)[0]
    with_n = s[:30] + "N" + s[31:]
    tok, off = tokenize([s, with_n, "ACGT", "", s.lower()], lsh)
    counts = np.diff(off)
    assert list(counts) == [46, 46 - 15, 0, 0, 46]
    full = tok[off[0]:off[1]]
    part = tok[off[1]:off[2]]
    # k-mers left of the N are starts 0..15, right of it starts 31..45
    assert np.array_equal(part, np.concatenate([full[:16], full[31:]]))
    assert np.array_equal(tok[off[4]:off[5]], full)  # lower case is read as upper case


def test_pure_python_reference_matches(seqs: list[str], lsh: LshFunction) -> None:
    tok, off = tokenize(seqs[:3], lsh)
    for i in range(3):
        ref = [lsh.hash_kmer(seqs[i][p:p + 15]) for p in range(0, 106, 7)]
        assert list(tok[off[i]:off[i + 1]][0:106:7]) == ref


def test_hyperplanes_pass_through_sampled_kmers(lsh: LshFunction) -> None:
    # each hyperplane is an affine hull of k encoded k-mers: unit-norm (n, c), rank k
    norms = np.sqrt((np.abs(lsh.normals) ** 2).sum(1) + np.abs(lsh.offsets) ** 2)
    assert np.allclose(norms, 1.0)
    assert lsh.normals.shape == (20, 15) and lsh.offsets.shape == (20,)


def test_save_load_round_trip(tmp_path: Path, seqs: list[str], lsh: LshFunction) -> None:
    path = lsh.save(tmp_path / "hash" / "lsh.npz")
    back = LshFunction.load(path)
    assert back.digest() == lsh.digest()
    assert np.array_equal(tokenize(seqs, back)[0], tokenize(seqs, lsh)[0])
    assert fit_lsh(seqs, k=15, hash_size=20, seed=3).digest() == lsh.digest()  # reproducible
    assert fit_lsh(seqs, k=15, hash_size=20, seed=4).digest() != lsh.digest()
    assert not list((tmp_path / "hash").glob(".*"))  # no temporary files left


def test_load_rejects_tampered(tmp_path: Path, lsh: LshFunction) -> None:
    path = lsh.save(tmp_path / "lsh.npz")
    np.savez(path, normals=lsh.normals * 2, offsets=lsh.offsets)
    with pytest.raises(ValueError, match="digest"):
        LshFunction.load(path)


# ---------------------------------------------------------------------------------------
# Skip-gram on a toy corpus: two "topics" whose tokens co-occur only within the topic.


def topic_corpus(n_seq: int = 600, length: int = 30, seed: int = 0) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Tokens 0-19 form topic A, 100-119 topic B; each sequence draws from one topic."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 2, n_seq)
    tok = rng.integers(0, 20, (n_seq, length)) + 100 * topic[:, None]
    off = np.arange(n_seq + 1, dtype=np.int64) * length
    return tok.reshape(-1).astype(np.int64), off


TOY = SkipGramConfig(dim=16, window=3, negatives=5, epochs=3, subsample=0.0, lr=0.05,
                     batch_size=64, seed=1, threads=1, chunk_tokens=8192)


def topic_margin(model: SkipGramModel) -> float:
    """Mean within-topic cosine minus mean cross-topic cosine of the token vectors."""
    v = model.vectors / np.linalg.norm(model.vectors, axis=1, keepdims=True)
    topic = model.vocab.buckets >= 100
    sim = v @ v.T
    same = topic[:, None] == topic[None, :]
    np.fill_diagonal(same, False)
    return float(sim[same].mean() - sim[topic[:, None] != topic[None, :]].mean())


def test_skipgram_separates_topics() -> None:
    tok, off = topic_corpus()
    model = train_skipgram((tok, off), TOY)
    assert model.vectors.shape == (40, 16) and model.vectors.dtype == np.float32
    assert list(model.vocab.buckets[:3]) == [0, 1, 2]
    assert topic_margin(model) > 0.3
    vecs = sequence_vectors(tok, off, model.vectors, model.vocab, weighting="mean")
    topic = tok[off[:-1]] >= 100
    c = vecs[topic].mean(0) - vecs[~topic].mean(0)
    assert np.mean(((vecs @ c) > (vecs.mean(0) @ c)) == topic) > 0.95


def test_skipgram_model_save_load(tmp_path: Path) -> None:
    tok, off = topic_corpus(100)
    model = train_skipgram((tok, off), SkipGramConfig(dim=8, epochs=1, batch_size=64))
    back = SkipGramModel.load(model.save(tmp_path / "m.npz", lsh_digest="abc"))
    assert np.array_equal(back.vectors, model.vectors)
    assert np.array_equal(back.vocab.buckets, model.vocab.buckets)
    assert back.config == model.config


def test_min_count_vocab() -> None:
    vocab = build_vocab(np.array([5, 5, 7, 9, 9, 9]), min_count=2)
    assert list(vocab.buckets) == [5, 9] and list(vocab.counts) == [2, 3]
    assert list(vocab.lookup(np.array([9, 7, 5, 100]))) == [1, -1, 0, -1]


def test_sequence_vectors_weights() -> None:
    vocab = Vocab(np.array([10, 20]), np.array([1, 999]))
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    tok = np.array([10, 20, 20, 30, 20])
    off = np.array([0, 3, 4, 5, 5])
    mean = sequence_vectors(tok, off, vectors, vocab, weighting="mean")
    assert mean.shape == (4, 2) and mean.dtype == np.float32
    assert np.allclose(mean[0], [1 / 3, 2 / 3])
    assert np.allclose(mean[1], 0) and np.allclose(mean[3], 0)  # OOV only / empty
    a = 1e-3
    sif = sequence_vectors(tok, off, vectors, vocab, weighting="sif", a=a)
    w10, w20 = a / (a + 1 / 1000), a / (a + 999 / 1000)
    assert np.allclose(sif[0], [w10 / (w10 + 2 * w20), 2 * w20 / (w10 + 2 * w20)], atol=1e-6)
    pc = sif_component(mean)
    removed = sequence_vectors(tok, off, vectors, vocab, weighting="mean", component=pc)
    assert np.allclose(removed @ pc, 0, atol=1e-6)


def test_ray_two_workers_match_single_process(tmp_path: Path) -> None:
    # A clean process: in the full suite, Ray state left by earlier in-process Ray sessions
    # made this actor's creation get cancelled (not reproducible alone).
    script = textwrap.dedent("""
        import os, pickle, sys, ray
        sys.path.insert(0, os.getcwd())
        from tests.tasks.test_lshvec import TOY, topic_corpus
        from tasks.lshvec import train_skipgram_ray
        tok, off = topic_corpus()
        half = 300 * 30
        shards = [(tok[:half], off[:301]), (tok[half:], off[300:] - half)]
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            model = train_skipgram_ray([ray.put(s) for s in shards], TOY, num_workers=2,
                                       sync_tokens=3000)
        finally:
            ray.shutdown()
        with open(sys.argv[1], "wb") as fh:
            pickle.dump(model, fh)
    """)
    out = tmp_path / "model.pkl"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = pickle.loads(out.read_bytes())
    tok, off = topic_corpus()
    single = train_skipgram((tok, off), TOY)
    assert model.vectors.shape == single.vectors.shape
    assert np.array_equal(model.vocab.buckets, single.vocab.buckets)
    assert model.stats["workers"] == 2 and model.stats["rounds"] >= 3 * 3
    assert topic_margin(model) > 0.3
    assert topic_margin(model) > 0.7 * topic_margin(single)


def ragged_corpus(n_seq: int = 300, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Reads of 0..39 tokens (some empty), tokens 0..59 with a skewed frequency."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 40, n_seq)
    tok = (rng.random(int(lens.sum())) ** 2 * 60).astype(np.int64)
    return tok, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)


def test_corpus_int32_lazy_shuffle_matches_full_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lshvec_mod, "_BUILD_TOKENS", 50)  # many build batches per shard
    tok, off = ragged_corpus()
    vocab = build_vocab(tok, min_count=40)  # some tokens (and some whole reads) drop out
    half = int(off[150])
    shards = [(tok[:half].astype(np.int32), off[:151]), (tok[half:], off[150:] - half)]
    corpus = lshvec_mod._Corpus.build(shards, vocab)
    # reference: the in-vocabulary ids in input order, with their read numbers
    look = vocab.lookup(tok)
    seq = np.repeat(np.arange(len(off) - 1), np.diff(off))
    keep = look >= 0
    ref_ids, ref_seq = look[keep], seq[keep]
    assert corpus.ids.dtype == np.int32 and corpus.ids.nbytes == 4 * len(ref_ids)
    assert np.array_equal(corpus.ids, ref_ids)
    # one epoch's order: whole reads permuted (rng.permutation of the non-empty reads),
    # the same as gathering a full shuffled copy
    reads = np.unique(ref_seq)
    perm = np.random.default_rng(9).permutation(len(reads))
    full_idx = np.concatenate([np.flatnonzero(ref_seq == reads[r]) for r in perm])
    corpus.shuffle(np.random.default_rng(9))
    ids, sq = corpus.take(0, len(corpus))
    assert np.array_equal(ids, ref_ids[full_idx])
    assert np.array_equal(np.diff(sq) == 0, np.diff(ref_seq[full_idx]) == 0)
    for lo, hi in [(0, 1), (17, 400), (399, 401), (len(ids) - 5, len(ids) + 10), (50, 50)]:
        part, pseq = corpus.take(lo, hi)
        assert np.array_equal(part, ids[lo:hi]) and np.array_equal(pseq, sq[lo:hi])
    corpus.shuffle(np.random.default_rng(9), shuffle=False)
    assert np.array_equal(corpus.take(0, len(corpus))[0], ref_ids)


def test_ray_worker_keeps_only_int32_corpus() -> None:
    tok, off = ragged_corpus()
    half = int(off[150])
    worker = lshvec_mod._RayWorker(TOY, 0, (tok[:half], off[:151]), (tok[half:],
                                                                     off[150:] - half))
    vocab = build_vocab([worker.counts()], 1)
    assert np.array_equal(vocab.counts, build_vocab(tok).counts)
    size = worker.setup(vocab.buckets, vocab.counts)
    assert size == len(tok) and worker.shards is None  # raw tokens dropped
    assert worker.corpus.ids.dtype == np.int32 and worker.corpus.ids.nbytes == 4 * size
    rows_in, d_in, _, _ = worker.train_round(0, size // 2, 0.0, float(size), 1.0)
    assert len(rows_in) > 0 and d_in.shape == (len(rows_in), TOY.dim)
