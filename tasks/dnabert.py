"""DNABERT: k-mer BERT embeddings of DNA, pretraining, and Ray Data inference.

Pure functions and classes (NumPy/Arrow in and out, no Prefect); the Prefect tasks and
the CLI wrap them.

Checkpoint layout (DNABERT's, i.e. a plain Hugging Face BERT directory):
`config.json` (a BertConfig; `model_type` may be absent, as in DNABERT's own files),
`vocab.txt`, and weights as `model.safetensors` or `pytorch_model.bin` (or sharded with
an index). A DNABERT-6 download (zhihan1996/DNA_bert_6) loads unchanged, offline
(`from_pretrained(dir, local_files_only=True)`). `pretrain` writes the same layout plus
`tokenizer_config.json` (`do_lower_case: false`, so Hugging Face's own tokenizer does not
lower-case k-mers into [UNK]) and `helixflow.json` (training metadata).

Vocabulary: [PAD], [UNK], [CLS], [SEP], [MASK] (ids 0..4), then the 4^k k-mers in
DNABERT's order, which is `itertools.product("ATCG", repeat=k)` (AAA, AAT, AAC, AAG,
ATA, ...; checked against DNABERT's bert-config-3..6/vocab.txt), not ACGT order. The
tokenizer reads the k-mer ids from whatever vocab.txt a checkpoint holds, so another
order would work too; a vocabulary must hold exactly the five specials and all 4^k k-mers.

Tokenisation (`KmerTokenizer`): every overlapping k-mer of the upper-cased sequence; a
k-mer with any letter other than A/C/G/T is [UNK]. This is exactly what Hugging Face's
BertTokenizer (do_lower_case=False) gives on the space-separated k-mers, computed with
NumPy on one byte buffer: 2-bit codes, a rolling k-mer index, one table lookup.

Long sequences: a model sees at most `max_tokens` tokens (512 for DNABERT) including
[CLS] and [SEP], so a longer sequence is cut into overlapping windows of max_tokens - 2
k-mers (`KmerTokenizer.windows`), each embedded, then pooled: the mean vector is the mean
over all k-mer tokens of all windows (so windows weigh by their tokens); the CLS vector is
the token-weighted mean of the windows' [CLS] vectors.

Pooling: `mean` = mean of the last hidden states of the k-mer tokens ([CLS], [SEP] and
padding excluded; a sequence shorter than k falls back to its [CLS] and [SEP]); `cls` =
the last hidden state of [CLS] (not BERT's tanh pooler, which DNABERT never trained for
embedding).

Pretraining (`pretrain`): masked-LM on the run's reads with DNABERT's span masking: a
masked k-mer is visible in its overlapping neighbours, so whole spans of `span` (= k)
consecutive tokens are masked around randomly drawn centres (offsets -((k-1)//2) ..
k//2, as DNABERT's MASK_LIST). Centres are drawn with probability mask_prob / span, so
about mask_prob of the k-mer tokens are masked (DNABERT-6 used 0.025 centres x 6).
Masked tokens become [MASK] 80 %, a random k-mer 10 %, unchanged 10 %.

Inference: `embed` in process, or `embed_dataset` / `DnabertEmbedder` through Ray Data
`map_batches` on an actor pool, each actor loading the model once.

Example:
    >>> tok = KmerTokenizer(3)
    >>> ids, mask = tok.encode(["ACGTN"])
    >>> ids.tolist()  # [CLS], ACG, CGT, GTN -> [UNK], [SEP]
    [[2, 16, 50, 1, 3]]
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.assets import materialize

from helixflow.caching import stage_options
from helixflow.errors import InputError, TooLittleInput
from helixflow.retries import retry_options

if TYPE_CHECKING:  # heavy imports stay lazy: Prefect tasks import this module cheaply
    import ray.data
    import torch
    from transformers import BertConfig, BertModel

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
DNABERT_ALPHABET = "ATCG"
"""DNABERT's k-mer order: itertools.product over this alphabet."""
KMER_SIZES = (3, 4, 5, 6)
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
POOLINGS = ("mean", "cls")
EMBED_CHUNK = 16_384  # sequences tokenised at a time by `embed`
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
"""bfloat16 = autocast matmuls (about 2x on a CPU with AVX512-BF16/AMX; vectors differ
from float32 by about 1e-2): opt-in, float32 is the reference."""

SequenceInput = Iterable[str] | pa.Array | pa.ChunkedArray | np.ndarray
"""Sequences as Python strings, an Arrow string/binary array, or a NumPy array of str."""

_CODE = np.full(256, 4, dtype=np.uint8)  # byte -> 2-bit code in DNABERT order, 4 = other
for _i, _base in enumerate(DNABERT_ALPHABET):
    _CODE[ord(_base)] = _CODE[ord(_base.lower())] = _i


# --------------------------------------------------------------------------------------
# Tokenizer


def dnabert_vocab(k: int) -> list[str]:
    """DNABERT's vocabulary for k: the five special tokens, then 4^k k-mers (ATCG order)."""
    if k not in KMER_SIZES:
        raise ValueError(f"k must be one of {KMER_SIZES}, got {k}")
    return [*SPECIAL_TOKENS, *("".join(p) for p in itertools.product(DNABERT_ALPHABET, repeat=k))]


def sequence_buffer(sequences: SequenceInput) -> tuple[np.ndarray, np.ndarray]:
    """All sequences as one uint8 byte buffer and int64 offsets (n + 1).

    Arrow input is read from its buffers without a Python object per sequence; a null
    counts as an empty sequence. Non-ASCII characters become '?' (so [UNK]).
    """
    if isinstance(sequences, pa.ChunkedArray):
        sequences = sequences.combine_chunks()
    if isinstance(sequences, np.ndarray) and sequences.dtype.kind in "US":
        sequences = pa.array(sequences.tolist(), pa.large_string())
    if isinstance(sequences, pa.Array):
        if pa.types.is_binary(sequences.type) or pa.types.is_large_binary(sequences.type):
            arr = pc.cast(sequences, pa.large_binary())
        else:
            arr = pc.cast(sequences, pa.large_string())
        if arr.null_count:
            arr = pc.fill_null(arr, "" if pa.types.is_large_string(arr.type) else b"")
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[
            arr.offset : arr.offset + len(arr) + 1
        ]
        buf = arr.buffers()[2]
        data = np.frombuffer(buf, np.uint8) if buf is not None else np.zeros(0, np.uint8)
        return data, offsets
    parts = [s.encode("ascii", errors="replace") for s in sequences]
    lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(parts) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.frombuffer(b"".join(parts), np.uint8), offsets


@dataclass(frozen=True)
class Windows:
    """Windows of k-mer tokens: window i covers k-mers [start[i], start[i] + n_kmers[i])
    of sequence owner[i], i.e. bases [start, start + n_kmers + k - 1)."""

    owner: np.ndarray  # int64 sequence index, non-decreasing
    start: np.ndarray  # int64 first k-mer (= first base) of the window
    n_kmers: np.ndarray  # int64 k-mer tokens in the window


@dataclass(frozen=True)
class Encoded:
    """Token matrix of windows, padded to the longest window: [CLS] k-mers [SEP] [PAD]..."""

    input_ids: np.ndarray  # int64 [R, T]
    attention_mask: np.ndarray  # int64 [R, T]
    windows: Windows


class KmerTokenizer:
    """Overlapping k-mer tokenizer in DNABERT's vocabulary layout, vectorised with NumPy.

    `vocab` (default: DNABERT's for k) maps token -> id by line number, as vocab.txt.
    """

    def __init__(self, k: int, vocab: Sequence[str] | None = None) -> None:
        self.vocab: list[str] = list(vocab) if vocab is not None else dnabert_vocab(k)
        self.k = k
        expected = 4**k + len(SPECIAL_TOKENS)
        if k not in KMER_SIZES:
            raise ValueError(f"k must be one of {KMER_SIZES}, got {k}")
        if len(self.vocab) != expected:
            raise ValueError(
                f"a {k}-mer vocabulary has {expected} tokens, this one {len(self.vocab)}"
            )
        index = {tok: i for i, tok in enumerate(self.vocab)}
        for i, special in enumerate(SPECIAL_TOKENS):
            if index.get(special) != i:
                raise ValueError(f"{special} must be token {i} (DNABERT layout)")
        lut = np.full(4**k + 1, UNK_ID, np.int64)  # 2-bit k-mer index -> vocab id
        for code, kmer in enumerate(dnabert_vocab(k)[len(SPECIAL_TOKENS) :]):
            if kmer not in index:
                raise ValueError(f"k-mer {kmer} missing from the vocabulary")
            lut[code] = index[kmer]
        self._lut = lut

    @classmethod
    def from_file(cls, path: str | Path) -> KmerTokenizer:
        """Tokenizer from a vocab.txt; k is the length of its k-mer tokens.

        Raises InputError for a vocabulary that is not DNABERT's layout for k = 3..6.
        """
        tokens = Path(path).read_text(encoding="utf-8").splitlines()
        while tokens and not tokens[-1].strip():
            tokens.pop()
        tokens = [t.strip() for t in tokens]
        kmers = [t for t in tokens if t not in SPECIAL_TOKENS]
        k = len(kmers[0]) if kmers else 0
        try:
            return cls(k, tokens)
        except ValueError as exc:
            raise InputError(
                str(path),
                f"not a DNABERT k-mer vocabulary ({exc}; {len(tokens)} tokens, "
                f"expected 4^k + 5 for k in {KMER_SIZES})",
            ) from None

    def write_vocab(self, path: str | Path) -> Path:
        """Write vocab.txt, one token per line (line number = id)."""
        path = Path(path)
        path.write_text("\n".join(self.vocab) + "\n", encoding="utf-8")
        return path

    def kmer_ids(self, sequences: SequenceInput) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of all overlapping k-mers of all sequences, concatenated (int64), and
        the number of k-mers of each sequence (max(len - k + 1, 0))."""
        data, offsets = sequence_buffer(sequences)
        k = self.k
        lengths = np.diff(offsets)
        counts = np.maximum(lengths - k + 1, 0)
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, np.int64), counts
        base = offsets[:-1] - offsets[0]
        codes = _CODE[data[offsets[0] : offsets[-1]]]
        m = len(codes) - k + 1
        index = np.zeros(m, np.int64)
        bad = np.zeros(m, bool)
        for j in range(k):  # rolling 2-bit index over k columns, vectorised over positions
            col = codes[j : j + m]
            index = (index << 2) | (col & 3)
            bad |= col == 4
        index[bad] = 4**k  # -> [UNK]
        starts = np.zeros(len(counts), np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        pos = np.arange(total, dtype=np.int64) + np.repeat(base - starts, counts)
        return self._lut[index[pos]], counts

    def windows(
        self,
        sequence_lengths: np.ndarray | Sequence[int],
        max_tokens: int,
        stride: int | None = None,
    ) -> Windows:
        """Windows of at most max_tokens - 2 k-mers covering each sequence (in bases).

        A sequence that fits is one window; a longer one gets windows every `stride`
        k-mers (default: half a window, so windows overlap by half) plus one ending at its
        last k-mer.
        """
        width = max_tokens - 2
        if width < 1:
            raise ValueError(f"max_tokens must be at least 3, got {max_tokens}")
        stride = stride or max(width // 2, 1)
        if not 1 <= stride <= width:
            raise ValueError(f"stride must be in 1..{width}, got {stride}")
        n = np.maximum(np.asarray(sequence_lengths, np.int64) - self.k + 1, 0)
        over = np.maximum(n - width, 0)
        per_seq = np.where(over > 0, -(-over // stride) + 1, 1)
        owner = np.repeat(np.arange(len(n), dtype=np.int64), per_seq)
        first = np.zeros(len(n), np.int64)
        np.cumsum(per_seq[:-1], out=first[1:])
        rank = np.arange(len(owner), dtype=np.int64) - first[owner]
        start = np.minimum(rank * stride, over[owner])
        return Windows(owner, start, np.minimum(n, width)[owner])

    def encode_windows(
        self, sequences: SequenceInput, max_tokens: int = 512, stride: int | None = None
    ) -> Encoded:
        """Token matrix with one row per window (`windows`) of every sequence."""
        ids, counts = self.kmer_ids(sequences)
        win = self.windows(counts + self.k - 1, max_tokens, stride)
        first = np.zeros(len(counts), np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        return self._matrix(ids, first[win.owner] + win.start, win)

    def encode(
        self, sequences: SequenceInput, max_tokens: int = 512
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), int64 [B, T]: [CLS] k-mers [SEP], padded to the
        longest; a sequence longer than max_tokens is truncated (as HF truncation=True)."""
        ids, counts = self.kmer_ids(sequences)
        kept = np.minimum(counts, max_tokens - 2)
        first = np.zeros(len(counts), np.int64)
        np.cumsum(counts[:-1], out=first[1:])
        zero = np.zeros(len(counts), np.int64)
        win = Windows(np.arange(len(counts), dtype=np.int64), zero, kept)
        enc = self._matrix(ids, first, win)
        return enc.input_ids, enc.attention_mask

    @staticmethod
    def _matrix(ids: np.ndarray, src_start: np.ndarray, win: Windows) -> Encoded:
        rows = len(win.n_kmers)
        width = int(win.n_kmers.max()) if rows else 0
        out = np.full((rows, width + 2), PAD_ID, np.int64)
        out[:, 0] = CLS_ID
        cols = np.arange(width, dtype=np.int64)
        valid = cols[None, :] < win.n_kmers[:, None]
        src = src_start[:, None] + cols[None, :]
        out[:, 1:-1][valid] = ids[src[valid]]
        out[np.arange(rows), win.n_kmers + 1] = SEP_ID
        mask = (np.arange(width + 2)[None, :] < (win.n_kmers + 2)[:, None]).astype(np.int64)
        return Encoded(out, mask, win)


# --------------------------------------------------------------------------------------
# Checkpoints


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (they are not errors here)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """The files that define a checkpoint: config.json, vocab.txt and the weights.

    Raises InputError naming what is missing.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(str(model_dir), "no such model directory")
    missing = [name for name in ("config.json", "vocab.txt") if not (model_dir / name).is_file()]
    weights = [model_dir / name for name in WEIGHT_FILES if (model_dir / name).is_file()]
    if not weights:
        missing.append("model.safetensors or pytorch_model.bin")
    if missing:
        raise InputError(
            str(model_dir),
            f"not a BERT checkpoint in DNABERT's layout: missing {', '.join(missing)}",
            hint="a model directory holds config.json, vocab.txt and the weights "
            "(as a DNABERT download or `pretrain` writes them)",
        )
    for index in [w for w in weights if w.suffix == ".json"]:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        weights += [model_dir / s for s in shards]
    return [model_dir / "config.json", model_dir / "vocab.txt", *weights]


def model_digest(model_dir: str | Path) -> str:
    """sha256 over the checkpoint's files (names and bytes): the model's id for lineage."""
    digest = hashlib.sha256()
    for path in sorted(checkpoint_files(model_dir), key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_model(model_dir: str | Path) -> tuple[BertModel, KmerTokenizer]:
    """BertModel (eval mode, no pooler) and tokenizer of a checkpoint directory, offline.

    Works for a BertForMaskedLM or BertModel checkpoint in safetensors or the older
    pytorch_model.bin. Raises InputError for a missing file or a vocabulary that is not
    DNABERT's layout or does not match the config's vocab_size.
    """
    from transformers import BertConfig, BertModel

    model_dir = Path(model_dir)
    checkpoint_files(model_dir)
    tokenizer = KmerTokenizer.from_file(model_dir / "vocab.txt")
    config = BertConfig.from_pretrained(model_dir, local_files_only=True)
    if config.vocab_size != len(tokenizer.vocab):
        raise InputError(
            str(model_dir / "config.json"),
            f"vocab_size {config.vocab_size} != {len(tokenizer.vocab)} tokens in vocab.txt "
            f"(4^{tokenizer.k} + 5)",
        )
    with _quiet_transformers():
        model = BertModel.from_pretrained(
            model_dir, config=config, local_files_only=True, add_pooling_layer=False
        )
    model.eval()
    return model, tokenizer


def max_tokens_of(model: BertModel) -> int:
    """Longest input the model takes, [CLS] and [SEP] included (512 for DNABERT)."""
    return int(model.config.max_position_embeddings)


# --------------------------------------------------------------------------------------
# Embedding


@dataclass
class _Pooled:
    """Per-window sums, to be pooled per sequence."""

    token_sum: np.ndarray  # [R, H] sum of k-mer token vectors (or [CLS]/[SEP] if none)
    token_count: np.ndarray  # [R] tokens summed
    cls: np.ndarray  # [R, H]


def _run_windows(
    model: BertModel,
    enc: Encoded,
    batch_size: int,
    device: torch.device,
    precision: str = "float32",
) -> _Pooled:
    """Forward all windows, longest first so that batches carry little padding."""
    import torch

    _check_precision(precision)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bfloat16")

    n_kmers = enc.windows.n_kmers
    rows = len(n_kmers)
    hidden = int(model.config.hidden_size)
    token_sum = np.zeros((rows, hidden), np.float32)
    cls = np.zeros((rows, hidden), np.float32)
    count = np.where(n_kmers > 0, n_kmers, 2).astype(np.float32)
    order = np.argsort(-n_kmers, kind="stable")
    with torch.inference_mode(), autocast:
        for lo in range(0, rows, batch_size):
            idx = order[lo : lo + batch_size]
            n = n_kmers[idx]
            width = int(n.max()) + 2
            ids = torch.from_numpy(np.ascontiguousarray(enc.input_ids[idx, :width])).to(device)
            # No mask when nothing is padded: the attention kernels take a faster path.
            mask = None
            if int(n.min()) + 2 < width:
                mask = torch.from_numpy(np.ascontiguousarray(enc.attention_mask[idx, :width])).to(
                    device
                )
            states = model(input_ids=ids, attention_mask=mask).last_hidden_state
            cols = torch.arange(width, device=device)
            n_t = torch.from_numpy(n).to(device)
            pool = (cols[None, :] >= 1) & (cols[None, :] <= n_t[:, None])
            empty = n_t == 0  # shorter than k: pool [CLS] and [SEP]
            pool = torch.where(empty[:, None], cols[None, :] <= 1, pool)
            summed = torch.bmm(pool.to(states.dtype)[:, None, :], states)[:, 0]
            token_sum[idx] = summed.float().cpu().numpy()
            cls[idx] = states[:, 0].float().cpu().numpy()
    return _Pooled(token_sum, count, cls)


def _pool_sequences(
    pooled: _Pooled, owner: np.ndarray, n_sequences: int, pooling: Sequence[str]
) -> dict[str, np.ndarray]:
    """Windows -> sequences: token-weighted means (one window: its own vectors)."""
    hidden = pooled.cls.shape[1]
    weight = np.zeros(n_sequences, np.float32)
    np.add.at(weight, owner, pooled.token_count)
    weight = np.maximum(weight, 1e-12)
    out: dict[str, np.ndarray] = {}
    if "mean" in pooling:
        total = np.zeros((n_sequences, hidden), np.float32)
        np.add.at(total, owner, pooled.token_sum)
        out["mean"] = total / weight[:, None]
    if "cls" in pooling:
        total = np.zeros((n_sequences, hidden), np.float32)
        np.add.at(total, owner, pooled.cls * pooled.token_count[:, None])
        out["cls"] = total / weight[:, None]
    return out


def _check_pooling(pooling: Sequence[str] | str) -> tuple[str, ...]:
    pooling = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    unknown = [p for p in pooling if p not in POOLINGS]
    if unknown or not pooling:
        raise ValueError(f"pooling must be a subset of {POOLINGS}, got {pooling}")
    return pooling


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def embed(
    sequences: SequenceInput,
    model: str | Path | tuple[BertModel, KmerTokenizer],
    batch_size: int = 64,
    pooling: Sequence[str] | str = POOLINGS,
    *,
    max_tokens: int | None = None,
    stride: int | None = None,
    threads: int | None = None,
    precision: str = "float32",
) -> dict[str, np.ndarray]:
    """Embeddings of sequences in this process: {"mean": N x H, "cls": N x H} float32.

    `model` is a checkpoint directory or a (model, tokenizer) pair from `load_model`.
    Sequences longer than the model's maximum (or `max_tokens`) are embedded in windows
    overlapping by `stride` k-mers and pooled (see the module docstring). `threads` sets
    torch's intra-op threads for this process; `precision` is one of PRECISIONS.
    """
    import torch

    pooling = _check_pooling(pooling)
    if threads:
        torch.set_num_threads(threads)
    bert, tokenizer = load_model(model) if isinstance(model, str | Path) else model
    limit = min(max_tokens or max_tokens_of(bert), max_tokens_of(bert))
    device = next(bert.parameters()).device
    if not isinstance(sequences, pa.Array | pa.ChunkedArray | np.ndarray):
        sequences = sequences if isinstance(sequences, list) else list(sequences)
    parts: list[dict[str, np.ndarray]] = []
    for lo in range(0, max(len(sequences), 1), EMBED_CHUNK):  # bounded token matrices
        enc = tokenizer.encode_windows(sequences[lo : lo + EMBED_CHUNK], limit, stride)
        n_sequences = int(enc.windows.owner[-1]) + 1 if len(enc.windows.owner) else 0
        pooled = _run_windows(bert, enc, batch_size, device, precision)
        parts.append(_pool_sequences(pooled, enc.windows.owner, n_sequences, pooling))
    return {name: np.concatenate([p[name] for p in parts]) for name in pooling}


def _vector_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """float32 N x H -> Arrow fixed_size_list<float32>[H] (no copy)."""
    matrix = np.ascontiguousarray(matrix, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


class DnabertEmbedder:
    """Callable class for Ray Data `map_batches` on an actor pool: loads the model once
    per actor (in __init__), sets the actor's torch threads, and adds `mean` / `cls`
    vector columns to each batch (fixed-size float32 lists for a pyarrow batch, 2-D
    arrays for a numpy batch)."""

    def __init__(
        self,
        model_dir: str,
        column: str = "sequence",
        batch_size: int = 64,
        threads: int | None = 1,
        pooling: Sequence[str] | str = POOLINGS,
        max_tokens: int | None = None,
        stride: int | None = None,
        precision: str = "float32",
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.column = column
        self.batch_size = batch_size
        self.pooling = _check_pooling(pooling)
        self.max_tokens = max_tokens
        self.stride = stride
        self.precision = precision
        self.model, self.tokenizer = load_model(model_dir)
        self.model.to(_device())

    def embed(self, sequences: SequenceInput) -> dict[str, np.ndarray]:
        """Vectors of a batch of sequences (as `embed`, with the actor's model)."""
        return embed(
            sequences,
            (self.model, self.tokenizer),
            self.batch_size,
            self.pooling,
            max_tokens=self.max_tokens,
            stride=self.stride,
            precision=self.precision,
        )

    def __call__(self, batch: pa.Table | dict[str, np.ndarray]) -> pa.Table | dict[str, np.ndarray]:
        if isinstance(batch, pa.Table):
            vectors = self.embed(batch.column(self.column))
            for name, matrix in vectors.items():
                batch = batch.append_column(name, _vector_column(matrix))
            return batch
        vectors = self.embed(np.asarray(batch[self.column]))
        return {**batch, **vectors}


def embed_dataset(
    ds: ray.data.Dataset,
    model_dir: str | Path,
    *,
    column: str = "sequence",
    actors: int = 1,
    rows_per_batch: int = 512,
    batch_size: int = 64,
    threads: int = 1,
    pooling: Sequence[str] | str = POOLINGS,
    max_tokens: int | None = None,
    stride: int | None = None,
    precision: str = "float32",
) -> ray.data.Dataset:
    """Ray Data pipeline adding `mean` / `cls` vector columns to a dataset of sequences.

    `actors` DnabertEmbedder actors, each loading the model once and running `threads`
    torch threads (and reserving that many CPUs), one GPU each when CUDA is present;
    `rows_per_batch` rows go to an actor at a time, `batch_size` windows per forward.
    """
    import torch
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        DnabertEmbedder,
        fn_constructor_kwargs={
            "model_dir": str(model_dir),
            "column": column,
            "batch_size": batch_size,
            "threads": threads,
            "pooling": _check_pooling(pooling),
            "max_tokens": max_tokens,
            "stride": stride,
            "precision": precision,
        },
        batch_size=rows_per_batch,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=actors),
        num_cpus=threads,
        num_gpus=1 if torch.cuda.is_available() else 0,
    )


# --------------------------------------------------------------------------------------
# Pretraining


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
    with _quiet_transformers():
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
    """Write a trained model in DNABERT's layout, atomically (temp dir, then rename).

    Files: config.json, model.safetensors, vocab.txt, tokenizer_config.json,
    helixflow.json (config, loss curve, counts, time). An existing out_dir is replaced.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with _quiet_transformers():
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
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def pretrain(sequences: SequenceInput, config: PretrainConfig, out_dir: str | Path) -> Path:
    """Masked-LM pretraining of a small BERT on the reads, saved in DNABERT's layout.

    Returns out_dir, loadable by `load_model` (and by Hugging Face's from_pretrained).
    """
    return save_checkpoint(train_mlm(sequences, config), config, out_dir)


def loss_curve(model_dir: str | Path) -> list[float]:
    """Training loss per step recorded by `pretrain` in helixflow.json."""
    return list(json.loads((Path(model_dir) / "helixflow.json").read_text())["losses"])


__all__ = [
    "DNABERT_ALPHABET",
    "POOLINGS",
    "PRECISIONS",
    "SPECIAL_TOKENS",
    "DnabertEmbedder",
    "Encoded",
    "KmerTokenizer",
    "Precision",
    "PretrainConfig",
    "PretrainResult",
    "Windows",
    "checkpoint_files",
    "dnabert_vocab",
    "embed",
    "embed_dataset",
    "load_model",
    "loss_curve",
    "max_tokens_of",
    "model_digest",
    "pretrain",
    "save_checkpoint",
    "sequence_buffer",
    "span_mask",
    "train_mlm",
]


# --- Prefect tasks: the store edge ---------------------------------------------------------

DNABERT_VERSION = "2"  # 2: source_shard is the shard's label, not its URI
MODEL_MEDIA_TYPE = "application/x-tar"


def pack_checkpoint(model_dir: Path, out: Path) -> Path:
    """A checkpoint directory as one reproducible tar (same model, same sha256)."""
    from helixflow.tables import pack_files

    files = [*checkpoint_files(model_dir), Path(model_dir) / "helixflow.json"]
    return pack_files([f for f in files if f.exists()], out)


def materialize_checkpoint(store: Any, model: Any) -> Path:
    """The model artifact unpacked in this node's cache (once per sha256), for loading."""
    from helixflow.tables import unpack_cached

    return unpack_cached(store, model, "dnabert")


def _training_sequences(store: Any, shards: Sequence[Any], limit: int) -> pa.Array:
    """Up to `limit` read sequences from the shards, in shard order (streamed)."""
    from helixflow.tables import parquet_file

    parts: list[pa.Array] = []
    have = 0
    for shard in shards:
        with parquet_file(store, shard) as source:
            for batch in source.iter_batches(batch_size=65_536, columns=["sequence"]):
                parts.append(batch.column("sequence").slice(0, limit - have))
                have += len(parts[-1])
                if have >= limit:
                    return pa.concat_arrays(parts)
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


@materialize("helixflow://embed/dnabert-model", name="pretrain-dnabert",
              task_run_name="pretrain-dnabert-{sample}", **stage_options(DNABERT_VERSION))
def pretrain_dnabert(sample: str, shards: list[Any], config: PretrainConfig, store: Any,
                     run_id: str) -> Any:
    """Masked-LM pretraining of a small DNABERT on a sample's reads → the model artifact
    (a tar of the checkpoint in DNABERT's layout; its sha256 is the model id); `Skipped`
    when no read is long enough to train on."""
    from helixflow.artifacts import Skipped
    from helixflow.tables import publish_file

    sequences = _training_sequences(store, shards, config.max_sequences)
    with store.scratch() as scratch:
        try:
            if len(sequences) == 0:
                raise TooLittleInput("no reads left to pretrain DNABERT on")
            model_dir = pretrain(sequences, config, scratch / "model")
        except TooLittleInput as exc:
            return Skipped(stage="embedding", sample="dnabert", reason=str(exc))
        tar = pack_checkpoint(model_dir, scratch / f"dnabert{config.k}-{sample}.tar")
        meta = json.loads((model_dir / "helixflow.json").read_text())
        losses = meta.get("losses") or [None]
        return publish_file(
            store, tar, run_id=run_id, stage="models", media_type=MODEL_MEDIA_TYPE,
            producer="pretrain-dnabert", params=asdict(config),
            upstream=[s.ref() for s in shards],
            metadata={"model_digest": model_digest(model_dir), "sequences": len(sequences),
                      "final_loss": losses[-1], "first_loss": losses[0]},
        )


@materialize("helixflow://embed/dnabert", name="dnabert-embed",
              task_run_name="dnabert-{shard.name}", **stage_options(DNABERT_VERSION))
def embed_dnabert_shard(shard: Any, model: Any, actors: int, batch_size: int, store: Any,
                        run_id: str, precision: str = "float32") -> list[Any]:
    """DNABERT embeddings (mean-pooled and [CLS]) of one read shard through a Ray Data
    actor pool (model loaded once per actor) → two embedding shards, streamed back.
    `precision` is one of PRECISIONS."""
    import ray.data

    _check_precision(precision)

    from helixflow.tables import PARQUET, parquet_file, publish_file
    from helixflow.tasks.embeddings import EmbeddingWriter, iter_read_sequences

    model_dir = materialize_checkpoint(store, model)
    dim = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    with store.scratch() as scratch, parquet_file(store, shard) as source:
        writers = {
            pool: EmbeddingWriter(scratch / shard.name.replace(".parquet", f".dnabert-{pool}"
                                                              ".parquet"),
                                  dim, method=f"dnabert-{pool}", source_shard=shard.label,
                                  model_id=model.sha256)
            for pool in POOLINGS
        }
        try:
            for ids, sequences, rows in iter_read_sequences(source, batch_rows=200_000):
                ds = ray.data.from_arrow(pa.table({"sequence": sequences}))
                out = embed_dataset(ds, model_dir, actors=actors, batch_size=batch_size,
                                    rows_per_batch=1024, precision=precision)
                start = 0
                for batch in out.iter_batches(batch_size=4096, batch_format="pyarrow"):
                    n = batch.num_rows
                    for pool in POOLINGS:
                        flat = batch.column(pool).combine_chunks().flatten()
                        vectors = flat.to_numpy(zero_copy_only=False).reshape(n, dim)
                        writers[pool].write(ids.slice(start, n),
                                            np.ascontiguousarray(vectors, dtype=np.float32),
                                            rows[start:start + n])
                    start += n
            for writer in writers.values():
                writer.close()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        return [
            publish_file(store, w.path, run_id=run_id, stage="embed", media_type=PARQUET,
                         producer="dnabert-embed", rows=w.rows,
                         params={"pooling": pool, "batch_size": batch_size,
                                 "precision": precision},
                         upstream=[shard.ref(), model.ref()],
                         metadata={"method": f"dnabert-{pool}", "dim": dim,
                                   "model_id": model.sha256})
            for pool, w in writers.items()
        ]


@task(name="import-dnabert", task_run_name="import-dnabert", **retry_options())
def import_dnabert_checkpoint(model_dir: str, store: Any, run_id: str) -> Any:
    """A checkpoint directory given by the user (e.g. a DNABERT-6 download), checked by
    loading it, then packed into the store so workers and lineage see one artifact."""
    from helixflow.tables import publish_file

    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise InputError(str(path), "not a checkpoint directory",
                         hint="give the directory holding config.json, vocab.txt and weights")
    load_model(path)  # raises InputError naming what is missing or inconsistent
    with store.scratch() as scratch:
        tar = pack_checkpoint(path, scratch / f"{path.name or 'dnabert'}.tar")
        return publish_file(store, tar, run_id=run_id, stage="models",
                            media_type=MODEL_MEDIA_TYPE, producer="import-dnabert",
                            metadata={"model_digest": model_digest(path),
                                      "source": str(path.resolve())})
