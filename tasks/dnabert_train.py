"""DNABERT pretraining: masked-LM training of a small BERT on reads, saved as a checkpoint.

Pretraining (`pretrain`): masked-LM on the run's reads with DNABERT's span masking: a
masked k-mer is visible in its overlapping neighbours, so whole spans of `span` (= k)
consecutive tokens are masked around randomly drawn centres (offsets -((k-1)//2) ..
k//2, as DNABERT's MASK_LIST). Centres are drawn with probability mask_prob / span, so
about mask_prob of the k-mer tokens are masked (DNABERT-6 used 0.025 centres x 6).
Masked tokens become [MASK] 80 %, a random k-mer 10 %, unchanged 10 %.

`save_checkpoint` writes DNABERT's layout (`tasks.dnabert_checkpoint`) plus
`tokenizer_config.json` (`do_lower_case: false`, so Hugging Face's own tokenizer does not
lower-case k-mers into [UNK]) and `helixflow.json` (training metadata), atomically.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from helixflow.errors import TooLittleInput
from helixflow.files import atomic_dir
from helixflow.tasks.dnabert_checkpoint import quiet_transformers
from helixflow.tasks.dnabert_tokens import (
    MASK_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    KmerTokenizer,
    SequenceInput,
)

if TYPE_CHECKING:  # heavy imports stay lazy: Prefect tasks import this module cheaply
    import torch
    from transformers import BertConfig


@dataclass(frozen=True)
class PretrainConfig:
    """Model size and masked-LM training settings for `pretrain`."""

    k: int = 6
    layers: int = 2
    hidden: int = 128
    heads: int = 2
    intermediate: int = 512
    max_tokens: int = 256  # max_position_embeddings: [CLS] + k-mers + [SEP] (a 150 bp read: 147)
    mask_prob: float = 0.15  # fraction of k-mer tokens masked (approximately)
    span: int | None = None  # masked span in tokens; None = k (DNABERT)
    lr: float = 1e-3
    warmup: float = 0.1  # fraction of steps with linear warm-up, then linear decay
    weight_decay: float = 0.01
    steps: int = 500
    batch_size: int = 32
    max_sequences: int = 200_000  # reads kept for training (first ones)
    dropout: float = 0.1
    seed: int = 0
    threads: int | None = None

    def bert_config(self) -> BertConfig:
        """The BertConfig of this model (DNABERT's vocabulary size for k)."""
        from transformers import BertConfig

        return BertConfig(
            vocab_size=4**self.k + len(SPECIAL_TOKENS),
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            intermediate_size=self.intermediate,
            max_position_embeddings=self.max_tokens,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
            type_vocab_size=2,
            pad_token_id=PAD_ID,
            architectures=["BertForMaskedLM"],
        )


@dataclass
class PretrainResult:
    """What `train_mlm` returns: the model (MLM head included) and the loss per step."""

    model: Any  # BertForMaskedLM
    tokenizer: KmerTokenizer
    losses: list[float] = field(default_factory=list)
    sequences: int = 0
    windows: int = 0
    seconds: float = 0.0


def span_mask(
    n_kmers: torch.Tensor, width: int, span: int, prob: float, generator: torch.Generator
) -> torch.Tensor:
    """DNABERT span masking: bool [B, width] over rows [CLS] k-mers [SEP] [PAD]...

    Centres are drawn among the k-mer tokens with probability `prob`; each masks the
    tokens at offsets -((span-1)//2) .. span//2 around it, clipped to the k-mer tokens.
    At least one token per batch is masked.

    Args:
        n_kmers: int tensor [B], the k-mer tokens of each row.
        width: the batch's token width, [CLS] and [SEP] included.
        span: tokens masked around each centre.
        prob: the probability that a k-mer token is a centre.
        generator: the seeded torch generator to draw from.

    Returns:
        bool tensor [B, width], True at masked k-mer tokens.
    """
    import torch

    cols = torch.arange(width)
    kmer = (cols[None, :] >= 1) & (cols[None, :] <= n_kmers[:, None])
    centres = (torch.rand(kmer.shape, generator=generator) < prob) & kmer
    if not centres.any():
        row = int(torch.argmax(n_kmers))
        centres[row, 1 + int(torch.randint(int(n_kmers[row]), (1,), generator=generator))] = True
    masked = torch.zeros_like(centres)
    low = -((span - 1) // 2)
    for offset in range(low, low + span):
        if offset >= 0:
            masked[:, offset:] |= centres[:, : width - offset]
        else:
            masked[:, :offset] |= centres[:, -offset:]
    return masked & kmer


def _read_sequences(sequences: SequenceInput, limit: int) -> SequenceInput:
    if isinstance(sequences, pa.Array | pa.ChunkedArray | np.ndarray):
        return sequences[:limit]
    return list(itertools.islice(sequences, limit))


def train_mlm(
    sequences: SequenceInput, config: PretrainConfig = PretrainConfig()
) -> PretrainResult:
    """Masked-LM training of a fresh small BERT on the sequences, in memory.

    Reads are cut into non-overlapping windows of config.max_tokens; batches are drawn
    at random (seeded), masked with `span_mask`, and trained with AdamW, linear warm-up
    and decay, gradient clipping at 1. Deterministic for a given seed and thread count.

    Args:
        sequences: the training sequences; at most `config.max_sequences` are used.
        config: model size, masking and optimiser settings, seed and threads.

    Returns:
        PretrainResult with the model (eval mode), tokenizer, loss per step, sequences and
        windows used, and seconds taken.

    Raises:
        TooLittleInput: no sequence has at least k bases.
    """
    import torch
    from transformers import BertForMaskedLM

    t0 = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    tokenizer = KmerTokenizer(config.k)
    seqs = _read_sequences(sequences, config.max_sequences)
    width = config.max_tokens - 2
    enc = tokenizer.encode_windows(seqs, config.max_tokens, stride=width)
    keep = enc.windows.n_kmers > 0
    ids_all = enc.input_ids[keep].astype(np.int32)
    n_all = enc.windows.n_kmers[keep]
    if len(n_all) == 0:
        raise TooLittleInput(f"no read of at least k = {config.k} bases to pretrain DNABERT on")
    with quiet_transformers():
        model = BertForMaskedLM(config.bert_config())
    model.train()
    decay = [p for n, p in model.named_parameters() if not n.endswith(("bias", "LayerNorm.weight"))]
    no_decay = [p for n, p in model.named_parameters() if n.endswith(("bias", "LayerNorm.weight"))]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    warm = max(int(config.steps * config.warmup), 1)

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (config.steps - step) / max(config.steps - warm, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    span = config.span or config.k
    centre_prob = config.mask_prob / span
    vocab_size = len(tokenizer.vocab)
    losses: list[float] = []
    for _step in range(config.steps):
        rows = rng.integers(0, len(n_all), size=config.batch_size)
        n = torch.from_numpy(n_all[rows])
        batch_width = int(n.max()) + 2
        ids = torch.from_numpy(ids_all[rows, :batch_width].astype(np.int64))
        attention = (torch.arange(batch_width)[None, :] < (n + 2)[:, None]).long()
        masked = span_mask(n, batch_width, span, centre_prob, gen)
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        draw = torch.rand(ids.shape, generator=gen)
        inputs = ids.clone()
        inputs[masked & (draw < 0.8)] = MASK_ID
        random_tok = masked & (draw >= 0.8) & (draw < 0.9)
        inputs[random_tok] = torch.randint(
            len(SPECIAL_TOKENS), vocab_size, (int(random_tok.sum()),), generator=gen
        )
        loss = model(input_ids=inputs, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    model.eval()
    return PretrainResult(
        model,
        tokenizer,
        losses,
        int(enc.windows.owner[-1]) + 1,
        len(n_all),
        time.perf_counter() - t0,
    )


def save_checkpoint(result: PretrainResult, config: PretrainConfig, out_dir: str | Path) -> Path:
    """Write a trained model in DNABERT's layout, atomically (`helixflow.files.atomic_dir`).

    Files: config.json, model.safetensors, vocab.txt, tokenizer_config.json,
    helixflow.json (config, loss curve, counts, time). An existing out_dir is replaced.

    Args:
        result: the trained model, as `train_mlm` returns it.
        config: the settings it was trained with (written to helixflow.json).
        out_dir: the checkpoint directory to write.

    Returns:
        `out_dir` as a Path.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        with quiet_transformers():
            result.model.save_pretrained(tmp, safe_serialization=True)
        result.tokenizer.write_vocab(tmp / "vocab.txt")
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "BertTokenizer",
                    "do_lower_case": False,
                    "model_max_length": config.max_tokens,
                },
                indent=2,
            )
            + "\n"
        )
        losses = result.losses
        tail = losses[-max(len(losses) // 10, 1) :] if losses else []
        meta = {
            "format": "helixflow.dnabert/1",
            "k": config.k,
            "config": asdict(config),
            "sequences": result.sequences,
            "windows": result.windows,
            "seconds": round(result.seconds, 3),
            "final_loss": float(np.mean(tail)) if tail else None,
            "losses": [round(x, 5) for x in losses],
        }
        (tmp / "helixflow.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def pretrain(sequences: SequenceInput, config: PretrainConfig, out_dir: str | Path) -> Path:
    """Masked-LM pretraining of a small BERT on the reads, saved in DNABERT's layout.

    Returns out_dir, loadable by `load_model` (and by Hugging Face's from_pretrained).

    Args:
        sequences: the training sequences; at most `config.max_sequences` are used.
        config: model size, masking and optimiser settings, seed and threads.
        out_dir: the checkpoint directory to write (replaced if it exists).

    Returns:
        `out_dir` as a Path.

    Raises:
        TooLittleInput: no sequence has at least k bases.
    """
    return save_checkpoint(train_mlm(sequences, config), config, out_dir)
