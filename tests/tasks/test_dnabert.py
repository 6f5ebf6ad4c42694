"""Tests for DNABERT (tasks/dnabert.py): k-mer tokenizer, checkpoints, pretraining, Ray Data.

Every model is a tiny BERT (1 layer, hidden 32, k = 3) built here: nothing is downloaded.
Token ids are checked by hand and against Hugging Face's own BertTokenizer (the Rust one
and the legacy Python one) on DNABERT's vocabulary; a checkpoint written as a DNABERT
download looks (pytorch_model.bin from torch.save, config.json without model_type,
vocab.txt) must load unchanged.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from helixflow.errors import InputError
from helixflow.tasks.dnabert import DnabertEmbedder, embed, embed_dataset
from helixflow.tasks.dnabert_checkpoint import load_model, loss_curve, model_digest
from helixflow.tasks.dnabert_tokens import CLS_ID, SEP_ID, UNK_ID, KmerTokenizer, dnabert_vocab
from helixflow.tasks.dnabert_train import PretrainConfig, pretrain, span_mask

TINY = PretrainConfig(
    k=3, layers=1, hidden=32, heads=2, intermediate=64, max_tokens=24, steps=8, batch_size=8
)


def random_dna(n: int, seed: int, alphabet: str = "ACGT") -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A k = 3 model pretrained for a few steps on random reads."""
    reads = [random_dna(60, seed) for seed in range(64)]
    return pretrain(reads, TINY, tmp_path_factory.mktemp("dnabert") / "tiny")


# --- tokenizer ---------------------------------------------------------------------------


def test_vocab_layout_is_dnabert() -> None:
    vocab = dnabert_vocab(3)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # DNABERT's bert-config-3/vocab.txt: AAA AAT AAC AAG ATA ... (product over "ATCG")
    assert vocab[5:10] == ["AAA", "AAT", "AAC", "AAG", "ATA"]
    assert vocab[-1] == "GGG"
    assert len(dnabert_vocab(6)) == 4101


def test_hand_computed_ids() -> None:
    # Index of a k-mer = 5 + its rank in product("ATCG"): A=0 T=1 C=2 G=3 (base 4 digits).
    acg = 5 + (0 * 16 + 2 * 4 + 3)  # 16
    cgt = 5 + (2 * 16 + 3 * 4 + 1)  # 50
    ids, mask = KmerTokenizer(3).encode(["ACGTN"])
    assert ids.tolist() == [[CLS_ID, acg, cgt, UNK_ID, SEP_ID]] == [[2, 16, 50, 1, 3]]
    assert mask.tolist() == [[1, 1, 1, 1, 1]]


def test_padding_truncation_and_inputs() -> None:
    tok = KmerTokenizer(3)
    ids, mask = tok.encode(["ACGTA", "AC", "acgta"], max_tokens=4)
    assert ids.tolist() == [[2, 16, 50, 3], [2, 3, 0, 0], [2, 16, 50, 3]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]
    # Arrow (with a slice offset and a null), NumPy and Python give the same ids.
    arr = pa.array(["TTTT", "ACGTN", None, "GGGA"]).slice(1)
    from_arrow = tok.encode(arr)[0]
    from_list = tok.encode(["ACGTN", "", "GGGA"])[0]
    from_numpy = tok.encode(np.array(["ACGTN", "", "GGGA"]))[0]
    assert from_arrow.tolist() == from_list.tolist() == from_numpy.tolist()


@pytest.mark.parametrize("k", [3, 4])
def test_matches_hf_bert_tokenizer(tmp_path: Path, k: int) -> None:
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    tok = KmerTokenizer(k)
    vocab = tok.write_vocab(tmp_path / "vocab.txt")
    fast = BertTokenizer.from_pretrained(tmp_path, do_lower_case=False, local_files_only=True)
    slow = BertTokenizerLegacy(str(vocab), do_lower_case=False)
    seqs = [random_dna(n, n, "ACGTN" if n % 3 else "ACGT") for n in (k, 7, 20, 33, 50)]
    ids, mask = tok.encode(seqs)
    for row, seq in enumerate(seqs):
        kmers = " ".join(seq[i : i + k] for i in range(len(seq) - k + 1))
        expected = fast(kmers)["input_ids"]
        assert slow(kmers)["input_ids"] == expected
        assert ids[row, : mask[row].sum()].tolist() == expected


def test_vocab_from_file_and_bad_vocab(tmp_path: Path) -> None:
    path = KmerTokenizer(4).write_vocab(tmp_path / "vocab.txt")
    tok = KmerTokenizer.from_file(path)
    assert tok.k == 4 and tok.vocab == dnabert_vocab(4)
    # Another k-mer order in vocab.txt is honoured (ids come from the file).
    acgt = [*dnabert_vocab(3)[:5], *("".join(p) for p in itertools.product("ACGT", repeat=3))]
    (tmp_path / "acgt.txt").write_text("\n".join(acgt) + "\n")
    ids, _ = KmerTokenizer.from_file(tmp_path / "acgt.txt").encode(["ACG"])
    assert ids.tolist() == [[2, 5 + acgt[5:].index("ACG"), 3]]
    (tmp_path / "short.txt").write_text("\n".join(dnabert_vocab(3)[:-1]) + "\n")
    with pytest.raises(InputError, match="not a DNABERT k-mer vocabulary"):
        KmerTokenizer.from_file(tmp_path / "short.txt")


def test_windows_cover_long_sequences() -> None:
    tok = KmerTokenizer(3)
    win = tok.windows([10, 3, 2, 30], max_tokens=8, stride=3)  # 6 k-mers per window
    assert win.owner.tolist() == [0, 0, 1, 2] + [3] * 9
    assert win.start.tolist() == [0, 2, 0, 0, 0, 3, 6, 9, 12, 15, 18, 21, 22]
    assert win.n_kmers.tolist() == [6, 6, 1, 0] + [6] * 9
    seq = random_dna(40, 1)
    enc = tok.encode_windows([seq], max_tokens=8, stride=3)
    full = tok.encode([seq], max_tokens=100)[0][0, 1:-1]
    for row, start in enumerate(enc.windows.start):
        assert enc.input_ids[row, 1:-1].tolist() == full[start : start + 6].tolist()


def test_span_mask_masks_k_consecutive_kmers() -> None:
    gen = torch.Generator().manual_seed(0)
    n = torch.tensor([20, 20, 5])
    masked = span_mask(n, 22, span=6, prob=0.05, generator=gen)
    assert masked.any()
    assert not masked[:, 0].any() and not masked[:2, 21].any() and not masked[2, 6:].any()
    # One centre masks offsets -2..3 (DNABERT's MASK_LIST for k = 6).
    centres = torch.zeros(1, 22, dtype=torch.bool)
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        m = span_mask(torch.tensor([20]), 22, span=6, prob=0.0, generator=gen)
        centres |= m
        assert 1 <= int(m.sum()) <= 6
        runs = np.flatnonzero(m[0].numpy())
        assert (np.diff(runs) == 1).all()  # contiguous
    assert int(centres.sum()) > 6


# --- checkpoints, pretraining ---------------------------------------------------------


def test_pretrain_writes_dnabert_layout(tiny_model: Path) -> None:
    names = {p.name for p in tiny_model.iterdir()}
    assert {"config.json", "vocab.txt", "model.safetensors", "helixflow.json"} <= names
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["model_type"] == "bert" and config["vocab_size"] == 4**3 + 5
    assert (tiny_model / "vocab.txt").read_text().splitlines() == dnabert_vocab(3)
    assert not [p for p in tiny_model.parent.iterdir() if ".tmp-" in p.name]
    assert len(loss_curve(tiny_model)) == TINY.steps
    digest = model_digest(tiny_model)
    assert len(digest) == 64 and digest == model_digest(tiny_model)


def test_pretrain_is_deterministic(tiny_model: Path, tmp_path: Path) -> None:
    reads = [random_dna(60, seed) for seed in range(64)]
    again = pretrain(reads, TINY, tmp_path / "again")
    assert loss_curve(again) == loss_curve(tiny_model)
    assert model_digest(again) == model_digest(tiny_model)


def test_round_trip_same_embeddings(tmp_path: Path) -> None:
    from helixflow.tasks.dnabert_train import save_checkpoint, train_mlm

    reads = [random_dna(50, seed) for seed in range(32)]
    result = train_mlm(reads, TINY)
    queries = [random_dna(n, 100 + n) for n in (5, 12, 20)]
    before = embed(queries, (result.model.bert, result.tokenizer))
    out = save_checkpoint(result, TINY, tmp_path / "m")
    after = embed(queries, out)
    for name in ("mean", "cls"):
        assert after[name].shape == (3, 32) and after[name].dtype == np.float32
        np.testing.assert_allclose(after[name], before[name], atol=1e-6)
    # Hugging Face loads it too, and its tokenizer does not lower-case k-mers.
    from transformers import BertForMaskedLM, BertTokenizer

    BertForMaskedLM.from_pretrained(out, local_files_only=True)
    assert BertTokenizer.from_pretrained(out, local_files_only=True)("ACG")["input_ids"] == [
        2,
        16,
        3,
    ]


def test_loss_decreases_on_repetitive_corpus(tmp_path: Path) -> None:
    unit = random_dna(12, 7)
    reads = [(unit * 10)[i % 12 : i % 12 + 60] for i in range(64)]
    config = PretrainConfig(
        k=3, layers=1, hidden=32, heads=2, intermediate=64, max_tokens=32, steps=40,
        batch_size=8, lr=5e-3, seed=3,
    )  # fmt: skip
    losses = loss_curve(pretrain(reads, config, tmp_path / "rep"))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.75 * first, (first, last)


def test_missing_files_and_vocab_mismatch(tiny_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model / "config.json").read_text())
    with pytest.raises(InputError, match=r"missing vocab\.txt, model\.safetensors"):
        load_model(broken)
    (broken / "vocab.txt").write_text("\n".join(dnabert_vocab(4)) + "\n")
    (broken / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match="vocab_size 69 != 261"):
        load_model(broken)
    with pytest.raises(InputError, match="no such model directory"):
        load_model(tmp_path / "nope")


def test_old_layout_checkpoint_loads_unchanged(tmp_path: Path) -> None:
    """As a DNABERT download: pytorch_model.bin of a BertForMaskedLM, config.json without
    model_type, vocab.txt (plus DNABERT's extra config keys)."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(0)
    old = tmp_path / "dnabert3"
    old.mkdir()
    config = BertConfig(
        vocab_size=69, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40,
    )  # fmt: skip
    mlm = BertForMaskedLM(config).eval()
    torch.save(mlm.state_dict(), old / "pytorch_model.bin")
    raw = {
        key: value
        for key, value in config.to_dict().items()
        if key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                   "intermediate_size", "max_position_embeddings", "hidden_act",
                   "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size",
                   "initializer_range", "layer_norm_eps")
    }  # fmt: skip
    raw |= {  # keys of DNABERT's own config.json (transformers 2.x era)
        "architectures": ["BertForMaskedLM"], "bos_token_id": 0, "eos_token_ids": 0,
        "finetuning_task": None, "num_labels": 2, "num_rnn_layer": 1, "output_past": True,
        "pruned_heads": {}, "rnn": "lstm", "rnn_hidden": 768, "split": 10,
        "torchscript": False, "use_bfloat16": False,
    }  # fmt: skip
    (old / "config.json").write_text(json.dumps(raw))
    (old / "vocab.txt").write_text("\n".join(dnabert_vocab(3)) + "\n")
    assert "model_type" not in json.loads((old / "config.json").read_text())

    model, tok = load_model(old)
    assert tok.k == 3
    torch.testing.assert_close(
        model.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight
    )
    # Same vectors as a plain Hugging Face BertModel on the same ids.
    seqs = [random_dna(30, 5), random_dna(30, 6)]
    ours = embed(seqs, old)
    hf = BertModel.from_pretrained(old, local_files_only=True).eval()
    ids, _ = tok.encode(seqs)
    with torch.no_grad():
        states = hf(input_ids=torch.from_numpy(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(ours["cls"], states[:, 0], atol=1e-5)
    np.testing.assert_allclose(ours["mean"], states[:, 1:-1].mean(axis=1), atol=1e-5)


def test_windowed_embedding(tiny_model: Path) -> None:
    model, tok = load_model(tiny_model)  # max_position_embeddings 24 -> 22 k-mers a window
    long_seq, short = random_dna(200, 11), random_dna(15, 12)
    out = embed([long_seq, short, "AC"], (model, tok), batch_size=4, stride=8)
    assert out["mean"].shape == out["cls"].shape == (3, 32)
    assert np.isfinite(out["mean"]).all()
    # A short sequence is one window: the same vectors alone or next to long ones.
    alone = embed([short], (model, tok))
    np.testing.assert_allclose(out["mean"][1], alone["mean"][0], atol=1e-5)
    np.testing.assert_allclose(out["cls"][1], alone["cls"][0], atol=1e-5)
    # The long one: token-weighted mean over its windows, computed by hand.
    enc = tok.encode_windows([long_seq], 24, stride=8)
    with torch.no_grad():
        states = model(input_ids=torch.from_numpy(enc.input_ids)).last_hidden_state.numpy()
    assert len(enc.windows.owner) == -(-(198 - 22) // 8) + 1
    np.testing.assert_allclose(out["mean"][0], states[:, 1:-1].mean(axis=(0, 1)), atol=1e-5)
    np.testing.assert_allclose(out["cls"][0], states[:, 0].mean(axis=0), atol=1e-5)
    only_mean = embed([short], (model, tok), pooling="mean")
    assert set(only_mean) == {"mean"}


def test_bfloat16_and_bad_options(tiny_model: Path) -> None:
    seqs = [random_dna(n, n) for n in (20, 50)]
    exact = embed(seqs, tiny_model)
    fast = embed(seqs, tiny_model, precision="bfloat16")
    assert fast["mean"].dtype == np.float32
    np.testing.assert_allclose(fast["mean"], exact["mean"], atol=0.1)
    with pytest.raises(ValueError, match="precision"):
        embed(seqs, tiny_model, precision="int8")
    with pytest.raises(ValueError, match="pooling"):
        embed(seqs, tiny_model, pooling=("max",))


# --- Ray Data ----------------------------------------------------------------------------


def test_embedder_callable_numpy_and_arrow(tiny_model: Path) -> None:
    embedder = DnabertEmbedder(str(tiny_model), batch_size=3, threads=None)
    seqs = [random_dna(n, n) for n in (10, 40, 70)]
    table = embedder(pa.table({"read_id": ["a", "b", "c"], "sequence": seqs}))
    assert table.column_names == ["read_id", "sequence", "mean", "cls"]
    assert table.schema.field("mean").type == pa.list_(pa.float32(), 32)
    as_numpy = embedder({"sequence": np.array(seqs, dtype=object)})
    np.testing.assert_allclose(np.stack(table.column("mean").to_numpy(zero_copy_only=False)),
                               as_numpy["mean"], atol=1e-6)  # fmt: skip


def test_ray_data_matches_in_process(tiny_model: Path) -> None:
    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    seqs = [random_dna(int(n), int(n)) for n in np.linspace(8, 90, 40)]
    expected = embed(seqs, tiny_model, batch_size=16)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        table = pa.table({"i": np.arange(40), "sequence": seqs})
        ds = ray.data.from_arrow([table.slice(0, 20), table.slice(20)])  # 2 blocks
        out = embed_dataset(ds, tiny_model, actors=2, rows_per_batch=8, batch_size=5)
        rows = sorted(out.take_all(), key=lambda row: int(row["i"]))
    finally:
        ray.shutdown()
    assert [int(row["i"]) for row in rows] == list(range(40))
    for name in ("mean", "cls"):
        got = np.stack([np.asarray(row[name], np.float32) for row in rows])
        np.testing.assert_allclose(got, expected[name], atol=1e-5)


def test_pool_size_follows_the_cluster() -> None:
    from helixflow.tasks.dnabert import MAX_AUTO_ACTORS, pool_size

    assert pool_size(3) == 3  # asked for: as asked
    assert pool_size(0) == 1  # no Ray connected here: one actor
    import ray

    ray.init(address="local", num_cpus=MAX_AUTO_ACTORS + 2, include_dashboard=False,
             log_to_driver=False)
    try:
        assert pool_size(0) == MAX_AUTO_ACTORS
    finally:
        ray.shutdown()
