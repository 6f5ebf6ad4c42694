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
