"""Tests for the LSHvec modules (tasks/lsh, token_stream, skipgram, skipgram_ray, read_vectors,
lshvec) on small generated data: hash, skip-gram, Ray trainer, vectors."""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import helixflow.tasks.lshvec as lshvec_mod
import helixflow.tasks.skipgram_ray as skipgram_ray
import helixflow.tasks.token_stream as token_stream
from helixflow.tasks.lsh import TOKENS_SCHEMA, LshFunction, fit_lsh, tokenize
from helixflow.tasks.read_vectors import (
    sequence_vectors,
    sif_component,
    smooth_model,
    smooth_sums,
    smoothed_vectors,
)
from helixflow.tasks.skipgram import SkipGramConfig, SkipGramModel, level_rows, train_skipgram
from helixflow.tasks.token_stream import Vocab, build_vocab

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


def test_level_rows_share_rows_by_token_prefix() -> None:
    buckets = np.array([0b01000, 0b10110, 0b10111])
    rows = level_rows(buckets, (3, 1), hash_size=5)
    # own rows 0-2; 3-bit prefixes 010, 101 -> rows 3, 4; 1-bit prefixes 0, 1 -> rows 5, 6
    assert rows.tolist() == [[0, 3, 5], [1, 4, 6], [2, 4, 6]]
    with pytest.raises(ValueError, match="levels"):
        SkipGramConfig(levels=(5,), hash_size=5)


def rare_token_corpus(n_seq: int = 400, length: int = 30, bits: int = 12,
                      seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`bits`-bit tokens whose top bit is the topic; at 12 bits each token is seen about
    3 times (2,048 per topic), too rarely to learn its topic from its own contexts."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 2, n_seq)
    half = 1 << (bits - 1)
    tok = rng.integers(0, half, (n_seq, length)) + half * topic[:, None]
    return tok.reshape(-1), np.arange(n_seq + 1, dtype=np.int64) * length, topic


def centroid_accuracy(vecs: np.ndarray, topic: np.ndarray) -> float:
    """Held-out accuracy of a nearest-centroid rule fitted on the first half."""
    half = len(vecs) // 2
    c = np.stack([vecs[:half][topic[:half] == t].mean(0) for t in (0, 1)])
    pred = np.argmin(((vecs[half:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    return float(np.mean(pred == topic[half:]))


def test_levels_let_rare_tokens_share_their_prefix() -> None:
    tok, off, topic = rare_token_corpus()
    cfg = replace(TOY, epochs=1, lr=0.025, hash_size=12)
    plain = train_skipgram((tok, off), cfg)
    multi = train_skipgram((tok, off), replace(cfg, levels=(1,)))
    assert multi.vectors.shape == plain.vectors.shape == (len(np.unique(tok)), 16)
    (prefixes, table), = multi.levels
    assert prefixes.tolist() == [0, 1] and table.shape == (2, 16)
    acc = {name: centroid_accuracy(sequence_vectors(tok, off, m.vectors, m.vocab,
                                                    weighting="mean"), topic)
           for name, m in (("plain", plain), ("multi", multi))}
    assert acc["multi"] > 0.95
    assert acc["multi"] > acc["plain"] + 0.1, acc


def test_backoff_vectors_for_unseen_tokens(tmp_path: Path) -> None:
    tok, off, _ = rare_token_corpus(100, bits=8)
    cfg = replace(TOY, epochs=1, hash_size=8, levels=(4, 1))
    model = train_skipgram((tok, off), cfg)
    back = SkipGramModel.load(model.save(tmp_path / "m.npz"))
    assert back.config.levels == (4, 1)
    for (b1, v1), (b2, v2) in zip(model.levels, back.levels, strict=True):
        assert np.array_equal(b1, b2) and np.array_equal(v1, v2)
    # a vocabulary without token 5: its vector comes from its prefixes 0000 and 0
    keep = model.vocab.buckets != 5
    small = Vocab(model.vocab.buckets[keep], model.vocab.counts[keep])
    known, vec = back.backoff(np.array([5, 1 << 20]))
    assert known.tolist() == [True, False]  # 1 << 20 has no known prefix
    expect = (model.levels[0][1][0] + model.levels[1][1][0]) / 2
    assert np.allclose(vec[0], expect, atol=1e-6)
    one = np.array([5, 5]), np.array([0, 1, 2])
    with_backoff = sequence_vectors(*one, model.vectors[keep], small, backoff=back.backoff)
    assert np.allclose(with_backoff, expect, atol=1e-6)
    assert not sequence_vectors(*one, model.vectors[keep], small).any()  # skipped: zeros


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


# ---------------------------------------------------------------------------------------
# Read-token smoothing


def test_smoothing_by_hand() -> None:
    vocab = Vocab(np.array([10, 20, 30, 40]), np.array([1, 2, 1, 996]))
    vectors = np.eye(4, dtype=np.float32)
    a = 1e-3
    w = {t: a / (a + c / 1000) for t, c in zip((10, 20, 30, 40), (1, 2, 1, 996), strict=True)}
    read_a = (np.array([10, 20]), np.array([0, 2]))
    read_b = (np.array([20, 30, 77]), np.array([0, 3]))  # 77: not in the vocabulary
    r_a = (w[10] * vectors[0] + w[20] * vectors[1]) / (w[10] + w[20])
    r_b = (w[20] * vectors[1] + w[30] * vectors[2]) / (w[20] + w[30])
    rows, sums, occ = smooth_sums([read_a, read_b], vectors, vocab, a)
    assert rows.tolist() == [0, 1, 2] and occ.tolist() == [1, 2, 1]
    assert np.allclose(sums, [r_a, r_a + r_b, r_b], atol=1e-6)
    new = smoothed_vectors(vectors, [smooth_sums([read_a], vectors, vocab, a),
                                     smooth_sums([read_b], vectors, vocab, a)])
    assert np.allclose(new, [r_a, (r_a + r_b) / 2, r_b, vectors[3]], atol=1e-6)
    assert np.allclose(smoothed_vectors(vectors, [(rows, sums, occ)]), new, atol=1e-6)


def test_smoothing_matches_sparse_graph_convolution() -> None:
    import scipy.sparse as sp

    tok, off = ragged_corpus()
    vocab = build_vocab(tok)
    vectors = np.random.default_rng(0).standard_normal((len(vocab), 8)).astype(np.float32)
    # R: reads x tokens occurrence counts; read <- SIF mean of tokens, token <- mean of reads
    seq = np.repeat(np.arange(len(off) - 1), np.diff(off))
    r = sp.csr_matrix((np.ones(len(tok)), (seq, vocab.lookup(tok))),
                      shape=(len(off) - 1, len(vocab)))
    a = 1e-2  # tokens here are frequent: weights from 0.2 to 0.9
    rw = r @ sp.diags(a / (a + vocab.counts / vocab.counts.sum()))
    to_reads = sp.diags(1 / np.maximum(np.asarray(rw.sum(1)).ravel(), 1e-300)) @ rw
    to_tokens = sp.diags(1 / np.asarray(r.sum(0)).ravel()) @ r.T
    expect = vectors.astype(np.float64)
    for _ in range(2):
        expect = to_tokens @ (to_reads @ expect)
    halves = [(tok[:off[150]], off[:151]), (tok[off[150]:], off[150:] - off[150])]
    got = vectors
    for _ in range(2):
        got = smoothed_vectors(got, [smooth_sums([h], got, vocab, a) for h in halves])
    assert np.allclose(got, expect, atol=1e-5)


def test_smoothing_lifts_rare_tokens_and_keeps_levels_consistent(tmp_path: Path) -> None:
    tok, off, topic = rare_token_corpus()
    cfg = replace(TOY, epochs=1, lr=0.025, hash_size=12, levels=(4,))
    plain = train_skipgram((tok, off), replace(cfg, levels=()))
    smooth = smooth_model(plain, [(tok, off)], 2)
    assert smooth_model(plain, [(tok, off)], 0) is plain
    assert smooth.stats["smooth_rounds"] == smooth.config.smooth_rounds == 2
    assert smooth.stats["train_s"] >= plain.stats["train_s"]
    acc = {name: centroid_accuracy(sequence_vectors(tok, off, m.vectors, m.vocab), topic)
           for name, m in (("plain", plain), ("smooth", smooth))}
    assert acc["smooth"] > 0.95 and acc["smooth"] > acc["plain"] + 0.1, acc
    # in train_skipgram, with levels: the same as smoothing afterwards; each level's
    # backoff vector is the count-weighted mean of its tokens' smoothed vectors
    multi = train_skipgram((tok, off), replace(cfg, smooth_rounds=2))
    after = smooth_model(train_skipgram((tok, off), cfg), [(tok, off)], 2)
    assert np.allclose(multi.vectors, after.vectors, atol=1e-6)
    (prefixes, table), = multi.levels
    group = multi.vocab.buckets >> 8
    c = multi.vocab.counts[:, None]
    for j, prefix in enumerate(prefixes[:3]):
        sel = group == prefix
        expect = (multi.vectors[sel] * c[sel]).sum(0) / c[sel].sum()
        assert np.allclose(table[j], expect, atol=1e-5)
    back = SkipGramModel.load(multi.save(tmp_path / "m.npz"))
    assert back.config.smooth_rounds == 2 and np.array_equal(back.levels[0][1], table)
    with pytest.raises(ValueError, match="smooth_rounds"):
        SkipGramConfig(smooth_rounds=-1)
    with pytest.raises(ValueError, match="sif_a"):
        SkipGramConfig(sif_a=0.0)


def test_embeddings_use_the_models_sif_a(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from helixflow.tasks.embeddings import EmbeddingWriter

    vocab = Vocab(np.array([10, 20]), np.array([1, 999]))
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    path = tmp_path / "tokens.parquet"
    pq.write_table(pa.table([pa.array(["r0"]), pa.array([0]), pa.array([[10, 20]])],
                            schema=TOKENS_SCHEMA), path)
    got = {}
    for a in (1e-6, 1e-2):
        model = SkipGramModel(vocab, vectors, vectors, SkipGramConfig(dim=2, sif_a=a))
        with EmbeddingWriter(tmp_path / f"e{a}.parquet", 2, method="lshvec",
                             source_shard="s", model_id="0" * 64) as writer:
            lshvec_mod.write_lshvec_embeddings(pq.ParquetFile(path), model, "sif", writer)
        got[a] = np.array(pq.read_table(tmp_path / f"e{a}.parquet")["vector"][0].as_py())
        w10, w20 = a / (a + 1e-3), a / (a + 0.999)
        assert np.allclose(got[a], [w10 / (w10 + w20), w20 / (w10 + w20)], atol=1e-6)
    assert got[1e-6][0] > 0.99 > got[1e-2][0]


def publish_token_shard(root: Path, tok: np.ndarray, off: np.ndarray,
                        url: str | None = None, row_group: int = 40) -> tuple[Any, Any]:
    """(store, artifact) of a token shard (TOKENS_SCHEMA, small row groups) in a new store
    at `url` (default: a local store under `root`)."""
    import pyarrow.parquet as pq

    from helixflow.store import Store

    n = len(off) - 1
    column = pa.ListArray.from_arrays(pa.array(off.astype(np.int32)),
                                      pa.array(tok.astype(np.int32)))
    table = pa.table([pa.array([f"r{i}" for i in range(n)]), pa.array(np.arange(n)), column],
                     schema=TOKENS_SCHEMA)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "shard.tokens.parquet"
    pq.write_table(table, path, row_group_size=row_group)
    store = Store(url or str(root / "store"))
    art = store.publish(path, run_id="r", stage="embed", rows=n, producer="test",
                        media_type="application/vnd.apache.parquet")
    return store, art


def test_ray_two_workers_deterministic_and_sources_agree(tmp_path: Path) -> None:
    # A clean process: in the full suite, Ray state left by earlier in-process Ray sessions
    # made this actor's creation get cancelled (not reproducible alone).
    script = textwrap.dedent("""
        import os, pickle, sys, ray
        from dataclasses import replace
        from pathlib import Path
        sys.path.insert(0, os.getcwd())
        from tests.tasks.test_lshvec import TOY, publish_token_shard, topic_corpus
        from helixflow.tasks.skipgram_ray import train_skipgram_ray
        from helixflow.tasks.token_stream import TokenSource
        tok, off = topic_corpus()
        half = 300 * 30
        shards = [(tok[:half], off[:301]), (tok[half:], off[300:] - half)]
        store, art = publish_token_shard(Path(sys.argv[2]), tok, off)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            models = [train_skipgram_ray([ray.put(s) for s in shards], TOY, num_workers=2,
                                         sync_tokens=3000) for _ in range(2)]
            # the same halves, read by each actor from the store (parts of one shard)
            sources = [TokenSource(art, store, i, 2) for i in range(2)]
            models.append(train_skipgram_ray(sources, TOY, num_workers=2, sync_tokens=3000))
            # with a coarser level (topic A's tokens 0-19 and B's 100-119 differ in bit 6)
            multi = replace(TOY, hash_size=7, levels=(3,))
            models.append(train_skipgram_ray(sources, multi, num_workers=2, sync_tokens=3000))
            # read-token smoothing by the actors, each over its own sources
            models.append(train_skipgram_ray(sources, replace(TOY, smooth_rounds=2),
                                             num_workers=2, sync_tokens=3000))
        finally:
            ray.shutdown()
        with open(sys.argv[1], "wb") as fh:
            pickle.dump(models, fh)
    """)
    out = tmp_path / "model.pkl"
    proc = subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "shard")],
                          cwd=REPO, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, again, from_store, multi, smooth = pickle.loads(out.read_bytes())
    tok, off = topic_corpus()
    single = train_skipgram((tok, off), TOY)
    assert model.vectors.shape == single.vectors.shape
    assert np.array_equal(model.vocab.buckets, single.vocab.buckets)
    assert np.array_equal(model.vocab.counts, single.vocab.counts)
    assert model.stats["workers"] == 2 and model.stats["rounds"] >= 3 * 3
    assert model.stats["tokens"] == len(tok)  # every token is in the vocabulary here
    # deterministic for a seed; a store source streams the same reads as the arrays
    assert np.array_equal(again.vectors, model.vectors)
    assert np.array_equal(from_store.vectors, model.vectors)
    assert topic_margin(model) > 0.3
    assert topic_margin(model) > 0.7 * topic_margin(single)
    # levels: each replica exports the same coarse table (the actors' w_in are identical)
    (prefixes, table), = multi.levels
    assert prefixes.tolist() == np.unique(single.vocab.buckets >> 4).tolist()
    assert table.shape == (len(prefixes), TOY.dim) and np.isfinite(table).all()
    assert topic_margin(multi) > 0.3
    # the actors' smoothing sums add up to one process smoothing over the whole corpus
    assert smooth.stats["smooth_rounds"] == 2
    assert np.allclose(smooth.vectors, smooth_model(from_store, [(tok, off)], 2).vectors,
                       atol=1e-5)
    assert not np.allclose(smooth.vectors, from_store.vectors, atol=1e-3)


def ragged_corpus(n_seq: int = 300, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Reads of 0..39 tokens (some empty), tokens 0..59 with a skewed frequency."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 40, n_seq)
    tok = (rng.random(int(lens.sum())) ** 2 * 60).astype(np.int64)
    return tok, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)


def _batches(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """All batches of a token source joined again into (tokens, offsets)."""
    toks, lens = [], []
    for t, o in token_stream.source_batches(source):
        assert o[0] == 0 and o[-1] == len(t) and len(o) - 1 <= token_stream._SOURCE_READS
        toks.append(t)
        lens.append(np.diff(o))
    n = np.concatenate(lens) if lens else np.zeros(0, np.int64)
    return np.concatenate(toks), np.concatenate([[0], np.cumsum(n)])


@pytest.mark.parametrize("memory", [False, True])
def test_token_sources_parts_cover_the_shard(tmp_path: Path, memory: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_stream, "_SOURCE_READS", 13)  # batches cut row groups of 40
    tok, off = ragged_corpus()
    url = f"memory://lshvec-test-{os.getpid()}" if memory else None  # memory: not mmap
    store, art = publish_token_shard(tmp_path, tok, off, url=url)
    whole = _batches(token_stream.TokenSource(art, store))
    assert whole[0].dtype == np.int32
    assert np.array_equal(whole[0], tok) and np.array_equal(whole[1], off)
    for parts in (2, 3, 7):
        got = [_batches(token_stream.TokenSource(art, store, i, parts)) for i in range(parts)]
        sizes = [len(o) - 1 for _, o in got]
        assert sum(sizes) == len(off) - 1 and max(sizes) - min(sizes) <= 1  # by reads
        assert np.array_equal(np.concatenate([t for t, _ in got]), tok)
        assert np.array_equal(np.concatenate([np.diff(o) for _, o in got]), np.diff(off))
    # in-memory (tokens, offsets), offsets not starting at 0 (reads 5.. of a bigger shard)
    mem = _batches((tok[off[5]:], off[5:]))
    assert np.array_equal(mem[0], tok[off[5]:]) and np.array_equal(mem[1], off[5:] - off[5])


def read_tagged_corpus(n_seq: int = 200, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Reads of 0..29 tokens; token j of read r is r * 100 + j (each token says where from)."""
    lens = np.random.default_rng(seed).integers(0, 30, n_seq)
    tok = np.concatenate([r * 100 + np.arange(n) for r, n in enumerate(lens)])
    return tok.astype(np.int64), np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)


def test_epoch_stream_every_token_once_per_epoch_never_across_reads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_stream, "_SOURCE_READS", 7)
    monkeypatch.setattr(token_stream, "_SHUFFLE_TOKENS", 120)  # many blocks per epoch
    tok, off = read_tagged_corpus()
    # out of vocabulary: every 4th token, and all tokens of reads 10-19 (reads left empty)
    oov = (np.arange(len(tok)) % 4 == 0) | ((tok // 100 >= 10) & (tok // 100 < 20))
    vocab = Vocab(np.unique(tok[~oov]), np.ones(int((~oov).sum()), np.int64))
    cuts = [0, 70, 71, 200]  # three sources, one with a single read
    sources = [(tok[off[a]:off[b]], off[a:b + 1]) for a, b in itertools.pairwise(cuts)]
    size = token_stream.in_vocab_total(token_stream.source_counts(sources), vocab)
    assert size == int((~oov).sum())
    ref = tok[~oov]  # input order
    rng = np.random.default_rng(0)
    orders = []
    for epoch in range(3):
        shuffle = epoch < 2
        blocks = list(token_stream._epoch_blocks(sources, vocab, np.random.default_rng(epoch),
                                               shuffle))
        # bounded buffer: a block ends once it holds _SHUFFLE_TOKENS tokens (+ one batch)
        assert len(blocks) > 3 and max(len(b[0]) for b in blocks) < 120 + 7 * 30
        stream = token_stream.EpochStream(sources, vocab, rng, shuffle)
        got = []
        while True:
            ids, seq = stream.take(int(rng.integers(1, 90)))
            if len(ids) == 0:
                break
            tokens = vocab.buckets[ids]
            read = tokens // 100
            # a sequence id is one read, and a read's tokens are contiguous, in order
            same = np.diff(seq) == 0
            assert np.array_equal(same, np.diff(read) == 0)
            assert np.all(np.diff(tokens)[same] > 0)
            assert len(np.unique(seq)) == len(np.unique(read)) == int((~same).sum()) + 1
            got.append(tokens)
        epoch_tokens = np.concatenate(got)
        assert len(epoch_tokens) == size
        assert np.array_equal(np.sort(epoch_tokens), np.sort(ref))  # each token once
        read = epoch_tokens // 100
        starts = np.flatnonzero(np.diff(np.concatenate([[-1], read])) != 0)
        assert len(starts) == len(np.unique(read))  # reads stay whole within the epoch
        assert not np.isin(np.arange(10, 20), read).any()  # empty reads dropped
        orders.append(read[starts])
        if not shuffle:
            assert np.array_equal(epoch_tokens, ref)
    assert not np.array_equal(orders[0], orders[2])  # reads are shuffled...
    assert not np.array_equal(orders[0], orders[1])  # ...differently every epoch


def test_ray_worker_streams_its_sources(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_stream, "_SHUFFLE_TOKENS", 500)
    tok, off = ragged_corpus()
    store, art = publish_token_shard(tmp_path, tok, off)
    half = int(off[150])
    # part 0 of 2 of the store shard (reads 0-149) and reads 150-299 in memory
    worker = skipgram_ray._RayWorker(TOY, 0, token_stream.TokenSource(art, store, 0, 2),
                                   (tok[half:], off[150:] - half))
    counts = worker.counts()
    assert np.array_equal(counts[1], build_vocab(tok).counts)
    vocab = build_vocab([counts], min_count=60)  # some tokens drop out
    size = worker.setup(vocab.buckets, vocab.counts)
    assert size == int((vocab.lookup(tok) >= 0).sum()) and 0 < size < len(tok)
    assert not hasattr(worker, "corpus")  # nothing but the sources is kept
    n_rounds = 4
    for _ in range(2):  # two epochs of synchronised-size rounds, as the driver runs them
        for r in range(n_rounds):
            lo, hi = size * r // n_rounds, size * (r + 1) // n_rounds
            rows_in, d_in, rows_out, _ = worker.train_round(lo, hi, 0.0, 2.0 * size, 1.0)
            assert len(rows_in) > 0 and d_in.shape == (len(rows_in), TOY.dim)
            assert rows_in.max() < len(vocab) and len(rows_out) > 0
            worker.apply((rows_in, d_in, rows_out, np.zeros((len(rows_out), TOY.dim),
                                                            np.float32)))
        assert worker.epoch_tokens == size  # every in-vocabulary token, once per epoch


def test_skipgram_loss_decreases_over_epochs() -> None:
    tok, off = topic_corpus()
    one = train_skipgram((tok, off), replace(TOY, epochs=1))
    assert one.stats["tokens"] == len(tok)
    # same first epoch (seeded), then more: the mean loss over all epochs must go down
    assert train_skipgram((tok, off), TOY).stats["loss"] < 0.95 * one.stats["loss"]


def test_train_lshvec_rejects_levels_of_another_hash_size() -> None:
    from types import SimpleNamespace

    from helixflow.errors import HelixflowError

    lsh_art = SimpleNamespace(params={"hash_size": 16}, uri="file:///store/lsh-k15-h16.tar")
    with pytest.raises(HelixflowError, match="hash_size 16"):
        lshvec_mod.train_lshvec.fn([], lsh_art, SkipGramConfig(levels=(14, 8)), 1, None, "r")


def test_embed_params_check_levels_when_read() -> None:
    from pydantic import ValidationError

    from helixflow.flows.embed import EmbedParams

    assert EmbedParams(lshvec_levels=["10", "6"]).lshvec_levels == [10, 6]  # CLI form
    with pytest.raises(ValidationError, match=r"hash_size - 1 \(11\), not \[14\]"):
        EmbedParams(lshvec_hash_size=12)  # the default levels (14, 8) need 15+ bits
