"""DNABERT's k-mer tokenizer: DNA sequences -> token ids, in windows a model can take.

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

Example:
    >>> tok = KmerTokenizer(3)
    >>> ids, mask = tok.encode(["ACGTN"])
    >>> ids.tolist()  # [CLS], ACG, CGT, GTN -> [UNK], [SEP]
    [[2, 16, 50, 1, 3]]
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from helixflow.errors import InputError
from helixflow.tasks.reads import base_codes, string_parts

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
DNABERT_ALPHABET = "ATCG"
"""DNABERT's k-mer order: itertools.product over this alphabet."""
KMER_SIZES = (3, 4, 5, 6)

SequenceInput = Iterable[str] | pa.Array | pa.ChunkedArray | np.ndarray
"""Sequences as Python strings, an Arrow string/binary array, or a NumPy array of str."""

_CODE = base_codes(DNABERT_ALPHABET.encode())  # byte -> code in DNABERT order, 4 = other


def dnabert_vocab(k: int) -> list[str]:
    """DNABERT's vocabulary for k: the five special tokens, then 4^k k-mers (ATCG order).

    Args:
        k: the k-mer length, one of KMER_SIZES (3 to 6).

    Returns:
        The 5 + 4**k tokens in vocabulary order.

    Raises:
        ValueError: `k` not in KMER_SIZES.
    """
    if k not in KMER_SIZES:
        raise ValueError(f"k must be one of {KMER_SIZES}, got {k}")
    return [*SPECIAL_TOKENS, *("".join(p) for p in itertools.product(DNABERT_ALPHABET, repeat=k))]


def sequence_buffer(sequences: SequenceInput) -> tuple[np.ndarray, np.ndarray]:
    """All sequences as one uint8 byte buffer and int64 offsets (n + 1).

    Arrow input is read from its buffers without a Python object per sequence; a null
    counts as an empty sequence. Non-ASCII characters become '?' (so [UNK]).

    Args:
        sequences: Python strings, an Arrow string/binary array, or a NumPy str array.

    Returns:
        (data, offsets): sequence i is data[offsets[i]:offsets[i + 1]].
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
        offsets, data = string_parts(arr)
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

