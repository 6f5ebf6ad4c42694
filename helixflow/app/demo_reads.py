"""The demo's reads: Illumina-like pairs from the genomes, with their truth table.

Fragments of normal size (clipped at `MIN_INSERT`), adapter read-through then polyG,
Phred qualities declining towards 3', substitution errors drawn from them, a few Ns, PCR
duplicates within a block of `CHUNK_PAIRS` pairs, Casava 1.8 names; written block by block
into R1/R2 FASTQ and the truth TSV. Part of `helixflow.app.demo`.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helixflow.app.demo_files import open_out
from helixflow.app.demo_genomes import BASES, Genome, encode

if TYPE_CHECKING:
    from helixflow.app.demo import DemoSpec

ADAPTER_R1 = "AGATCGGAAGAGCACACGTCTGAACTCCAGTCA"
ADAPTER_R2 = "AGATCGGAAGAGCGTCGTGTAGGGAAAGAGTGT"
INDEX_I7 = "ATCACG"
INDEX_I5 = "AGATCTCG"
READTHROUGH_R1 = ADAPTER_R1 + "C" + INDEX_I7 + "ATCTCGTATGCCGTCTTCTGCTTG"
"""What R1 reads after the insert: adapter, i7 index, P7; polyG follows."""
READTHROUGH_R2 = ADAPTER_R2 + INDEX_I5 + "GTGTAGATCTCGGTGGTCGCCGTATCATT"
"""What R2 reads after the insert: adapter, i5 index, P5; polyG follows."""

INSTRUMENT, RUN, FLOWCELL, LANE = "A00123", 8, "HDEMODSXY", 1
TRUTH_COLUMNS = (
    "name",
    "genome",
    "start",
    "insert",
    "strand",
    "is_duplicate",
    "has_adapter",
    "is_empty",
    "has_polyg",
    "duplicate_of",
)

CHUNK_PAIRS = 50_000
MIN_INSERT = 35
MIN_Q, MAX_Q = 2, 41
N_RATE = 2e-5

_N = 4
_P_ERROR = (10.0 ** (-np.arange(MAX_Q + 1) / 10.0)).astype(np.float32)


@dataclass(frozen=True)
class _Batch:
    """One block of simulated pairs in file order (codes 0..4 = ACGTN, Phred scores)."""

    genome: np.ndarray
    start: np.ndarray
    insert: np.ndarray
    reverse: np.ndarray
    duplicate_of: np.ndarray  # index within the block, -1 if not a duplicate
    empty: np.ndarray
    r1: np.ndarray
    r2: np.ndarray
    q1: np.ndarray
    q2: np.ndarray
    substitutions: int  # in non-empty, non-duplicate reads; Ns not counted


def _allocate(total: int, sizes: list[int]) -> list[int]:
    """Split `total` over blocks proportionally to `sizes`, summing exactly to `total`."""
    cum = np.cumsum(sizes)
    marks = np.floor(total * cum / cum[-1] + 0.5).astype(int)
    return np.diff(np.concatenate([[0], marks])).tolist()


def _block_sizes(n_pairs: int) -> list[int]:
    """Near-equal block sizes of at most `CHUNK_PAIRS` pairs."""
    n_blocks = -(-n_pairs // CHUNK_PAIRS)
    base, extra = divmod(n_pairs, n_blocks)
    return [base + (i < extra) for i in range(n_blocks)]


def _readthrough(seq: str, read_length: int) -> np.ndarray:
    """Codes a mate reads past the insert: the adapter construct, then polyG."""
    tail = (seq + "G" * read_length)[:read_length]
    return encode(tail)


def _true_mates(
    fwd: np.ndarray,
    start: np.ndarray,
    insert: np.ndarray,
    seq: np.ndarray,
    tail: np.ndarray,
    read_length: int,
) -> np.ndarray:
    """Error-free mates: the insert read from one end (complemented if reverse), then tail.

    `start` is an index into the concatenated genomes `seq`; `fwd` says whether the mate
    reads the forward strand from `start` or the reverse strand from the fragment's end.
    """
    j = np.arange(read_length)
    last = (start + insert - 1)[:, None]
    pos = np.where(fwd[:, None], start[:, None] + j, last - j)
    inside = j < insert[:, None]
    pos = np.clip(pos, start[:, None], last)
    codes = seq[pos]
    codes = np.where(fwd[:, None], codes, 3 - codes)
    tail_at = np.clip(j - insert[:, None], 0, read_length - 1)
    return np.where(inside, codes, tail[tail_at]).astype(np.uint8)


def _qualities(rng: np.random.Generator, n: int, read_length: int, mate: int) -> np.ndarray:
    """Phred scores that rise over the first cycles, then decline towards 3'.

    R2 is a little worse than R1; each read has its own offset, 3% of reads degrade
    steeply, and 0.4% of bases dip to Q2-15 (bubbles, focus).
    """
    j = np.arange(read_length, dtype=np.float32)
    x = j / max(read_length - 1, 1)
    decline = 8.0 if mate == 1 else 11.0
    profile = 33.0 + 4.0 * np.minimum(j, 4) / 4 - decline * x**2 - (mate - 1)
    q = profile + rng.normal(0.0, 1.5, (n, 1)).astype(np.float32)
    bad = rng.random((n, 1), dtype=np.float32) < 0.03
    q = q - bad * (18.0 * x**1.5)
    q = q + rng.standard_normal((n, read_length), dtype=np.float32) * 2.5
    dip = rng.random((n, read_length), dtype=np.float32) < 0.004
    q = np.where(dip, rng.uniform(MIN_Q, 15.0, (n, read_length)).astype(np.float32), q)
    return np.clip(np.rint(q), MIN_Q, MAX_Q).astype(np.uint8)


def _sequence(
    rng: np.random.Generator, true: np.ndarray, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply substitutions with P = 10^(-Q/10) and a few Ns (Q2) to error-free codes.

    Returns the observed codes and the qualities (set to Q2 at Ns).
    """
    err = rng.random(true.shape, dtype=np.float32) < _P_ERROR[q]
    shift = rng.integers(1, 4, true.shape, dtype=np.uint8)
    codes = np.where(err, (true + shift) % 4, true).astype(np.uint8)
    n_mask = rng.random(true.shape, dtype=np.float32) < N_RATE
    codes[n_mask] = _N
    return codes, np.where(n_mask, MIN_Q, q).astype(np.uint8)


def _substitutions(true: np.ndarray, observed: np.ndarray) -> int:
    """Bases that differ from the truth, Ns not counted."""
    return int(((observed != true) & (observed != _N)).sum())


def _simulate_block(
    rng: np.random.Generator,
    size: int,
    n_dup: int,
    n_empty: int,
    seq: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    spec: DemoSpec,
) -> _Batch:
    """Simulate `size` pairs: `size - n_dup` sampled fragments plus `n_dup` exact copies."""
    rl = spec.read_length
    n_uniq = size - n_dup
    genome = rng.choice(len(lengths), size=n_uniq, p=lengths / lengths.sum())
    insert = np.rint(rng.normal(spec.insert_mean, spec.insert_sd, n_uniq)).astype(np.int64)
    insert = np.clip(insert, MIN_INSERT, lengths[genome])
    start = rng.integers(0, lengths[genome] - insert + 1)
    reverse = rng.random(n_uniq) < 0.5
    empty = np.zeros(n_uniq, dtype=bool)
    empty[rng.choice(n_uniq, size=n_empty, replace=False)] = True

    at = offsets[genome] + start
    t1 = _true_mates(~reverse, at, insert, seq, _readthrough(READTHROUGH_R1, rl), rl)
    t2 = _true_mates(reverse, at, insert, seq, _readthrough(READTHROUGH_R2, rl), rl)
    r1, q1 = _sequence(rng, t1, _qualities(rng, n_uniq, rl, 1))
    r2, q2 = _sequence(rng, t2, _qualities(rng, n_uniq, rl, 2))
    full = ~empty
    substitutions = _substitutions(t1[full], r1[full]) + _substitutions(t2[full], r2[full])

    candidates = np.flatnonzero(~empty)
    if n_dup and not len(candidates):
        raise ValueError("no non-empty pair to duplicate; lower empty_reads")
    orig = rng.choice(candidates, size=n_dup) if n_dup else np.zeros(0, dtype=np.int64)
    keep_q = rng.random(n_dup) < 0.5
    dq1 = np.where(keep_q[:, None], q1[orig], _qualities(rng, n_dup, rl, 1))
    dq2 = np.where(keep_q[:, None], q2[orig], _qualities(rng, n_dup, rl, 2))
    dq1[r1[orig] == _N] = MIN_Q
    dq2[r2[orig] == _N] = MIN_Q

    order = rng.permutation(size)
    source = np.concatenate([np.arange(n_uniq), orig])
    dup_of = np.concatenate([np.full(n_uniq, -1), orig])
    position = np.empty(size, dtype=np.int64)
    position[order] = np.arange(size)  # where each pre-shuffle pair lands
    dup_of = np.where(dup_of >= 0, position[np.maximum(dup_of, 0)], -1)
    return _Batch(
        genome=genome[source][order],
        start=start[source][order],
        insert=insert[source][order],
        reverse=reverse[source][order],
        duplicate_of=dup_of[order],
        empty=np.concatenate([empty, np.zeros(n_dup, dtype=bool)])[order],
        r1=np.concatenate([r1, r1[orig]])[order],
        r2=np.concatenate([r2, r2[orig]])[order],
        q1=np.concatenate([q1, dq1])[order],
        q2=np.concatenate([q2, dq2])[order],
        substitutions=substitutions,
    )


def _read_names(first: int, n: int) -> list[str]:
    """Unique Casava 1.8 read ids for pairs `first` .. `first + n - 1` (file order)."""
    names = []
    for i in range(first, first + n):
        tile = 1101 + i // 10_000
        x = 1000 + 37 * ((i % 10_000) // 100)
        y = 1000 + 23 * (i % 100)
        names.append(f"{INSTRUMENT}:{RUN}:{FLOWCELL}:{LANE}:{tile}:{x}:{y}")
    return names


def _fastq(
    names: list[str], mate: int, codes: np.ndarray, q: np.ndarray, empty: np.ndarray
) -> bytes:
    """FASTQ records; empty reads get an empty sequence and quality line."""
    n, rl = codes.shape
    width = 2 * rl + 4
    body = np.empty((n, width), dtype=np.uint8)
    body[:, :rl] = BASES[codes]
    body[:, rl : rl + 3] = np.frombuffer(b"\n+\n", dtype=np.uint8)
    body[:, rl + 3 : 2 * rl + 3] = q + 33
    body[:, -1] = ord("\n")
    flat = body.tobytes()
    comment = f" {mate}:N:0:{INDEX_I7}\n"
    parts = []
    for i, name in enumerate(names):
        parts.append(f"@{name}{comment}".encode())
        parts.append(b"\n+\n\n" if empty[i] else flat[i * width : (i + 1) * width])
    return b"".join(parts)


def _flags(batch: _Batch, read_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: reads into the adapter; reads past the whole construct into polyG."""
    polyg_from = read_length - min(len(READTHROUGH_R1), len(READTHROUGH_R2))
    full = ~batch.empty
    return (batch.insert < read_length) & full, (batch.insert < polyg_from) & full


def _truth(names: list[str], batch: _Batch, genome_names: list[str], read_length: int) -> bytes:
    """Truth rows (one per pair, file order) as TSV bytes."""
    adapter, polyg = _flags(batch, read_length)
    columns = zip(
        names,
        [genome_names[g] for g in batch.genome.tolist()],
        batch.start.tolist(),
        batch.insert.tolist(),
        ["-" if r else "+" for r in batch.reverse.tolist()],
        [names[d] if d >= 0 else "" for d in batch.duplicate_of.tolist()],
        adapter.tolist(),
        batch.empty.tolist(),
        polyg.tolist(),
        strict=True,
    )
    lines = [
        f"{name}\t{genome}\t{start}\t{insert}\t{strand}\t{int(bool(dup_of))}\t"
        f"{int(has_adapter)}\t{int(is_empty)}\t{int(has_polyg)}\t{dup_of}\n"
        for name, genome, start, insert, strand, dup_of, has_adapter, is_empty, has_polyg in columns
    ]
    return "".join(lines).encode()


def write_reads(
    dest: Path,
    spec: DemoSpec,
    genomes: list[Genome],
    mutated: list[np.ndarray],
    seed: np.random.SeedSequence,
) -> dict[str, Any]:
    """Simulate all pairs block by block into R1/R2/truth; return the counts."""
    sizes = _block_sizes(spec.n_pairs)
    n_dup = math.floor(spec.duplicate_fraction * spec.n_pairs + 0.5)
    dups = _allocate(n_dup, sizes)
    empties = _allocate(spec.empty_reads, sizes)
    seq = np.concatenate(mutated)
    lengths = np.array([len(m) for m in mutated], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    genome_names = [g.name for g in genomes]
    counts: dict[str, Any] = dict.fromkeys(
        (
            "pairs",
            "duplicate_pairs",
            "empty_pairs",
            "adapter_pairs",
            "polyg_pairs",
            "bases",
            "ambiguous_bases",
            "substitution_errors",
        ),
        0,
    )
    per_genome = np.zeros(len(genomes), dtype=np.int64)
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=2) as pool:
        f1 = stack.enter_context(open_out(dest / "R1.fastq.gz", compress=True))
        f2 = stack.enter_context(open_out(dest / "R2.fastq.gz", compress=True))
        ft = stack.enter_context(open_out(dest / "truth.tsv.gz", compress=True))
        ft.write(("\t".join(TRUTH_COLUMNS) + "\n").encode())
        first = 0
        children = seed.spawn(len(sizes))
        for size, k_dup, k_empty, child in zip(sizes, dups, empties, children, strict=True):
            rng = np.random.default_rng(child)
            b = _simulate_block(rng, size, k_dup, k_empty, seq, offsets, lengths, spec)
            names = _read_names(first, size)
            # zlib releases the GIL: compress both mates side by side.
            w1 = pool.submit(f1.write, _fastq(names, 1, b.r1, b.q1, b.empty))
            w2 = pool.submit(f2.write, _fastq(names, 2, b.r2, b.q2, b.empty))
            ft.write(_truth(names, b, genome_names, spec.read_length))
            w1.result()
            w2.result()
            full = ~b.empty
            counts["pairs"] += size
            counts["duplicate_pairs"] += int((b.duplicate_of >= 0).sum())
            counts["empty_pairs"] += int(b.empty.sum())
            adapter, polyg = _flags(b, spec.read_length)
            counts["adapter_pairs"] += int(adapter.sum())
            counts["polyg_pairs"] += int(polyg.sum())
            counts["bases"] += 2 * spec.read_length * int(full.sum())
            counts["ambiguous_bases"] += int((b.r1[full] == _N).sum() + (b.r2[full] == _N).sum())
            counts["substitution_errors"] += b.substitutions
            per_genome += np.bincount(b.genome, minlength=len(genomes))
            first += size
    counts["pairs_per_genome"] = dict(zip(genome_names, per_genome.tolist(), strict=True))
    return counts

