"""Sequence input for the sequence scans (ORFs, motifs): FASTA records (`iter_fasta`), any
sequence source as one byte buffer with offsets (`sequence_arrays`), and sequences packed
into one array of base codes, each in its own slot between sentinels (`pack_sequences`),
so that one vectorised pass covers every sequence and no window spans two of them.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from helixflow.errors import InputError
from helixflow.tasks.reads import NUCLEOTIDE_CODE, string_parts

# Base codes: 0..3 = ACGT, 4 = any other IUPAC code, 5 = sentinel between sequences.
AMBIGUOUS_CODE, SENTINEL_CODE = 4, 5
_CODE = NUCLEOTIDE_CODE  # ACGT (and U as T) either case -> 0..3, any other byte -> 4


def iter_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """(id, sequence) of each record of a plain or gzipped FASTA file, upper-cased.

    The id is the header up to the first whitespace. Raises InputError for a file that
    does not start with '>' or has a record without an id.

    Args:
        path: a FASTA file, gzipped when its name ends in ".gz".

    Returns:
        An iterator of (id, upper-case sequence) in file order.

    Raises:
        InputError: the file is missing, has a sequence line before the first header, or a
            header without an id.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        fh = opener(path, "rt")
    except FileNotFoundError:
        raise InputError(str(path), "no such file", hint="check the path") from None
    with fh:
        name: str | None = None
        chunks: list[str] = []
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if line.startswith(">"):
                if name is not None:
                    yield name, "".join(chunks).upper()
                fields = line[1:].split()
                if not fields:
                    raise InputError(str(path), f"line {number}: FASTA header without an id")
                name, chunks = fields[0], []
            elif line:
                if name is None:
                    raise InputError(
                        str(path), f"line {number}: sequence before the first '>' header",
                        hint="is this a FASTA file?",
                    )
                chunks.append(line)
        if name is not None:
            yield name, "".join(chunks).upper()


Sequences = Iterable[tuple[str, str]] | pa.Table | pa.RecordBatch | str | Path
"""(id, sequence) pairs, a FASTA path, or reads in READS_SCHEMA (any table with
`sequence` and either `seq_id` or `read_id` (+ `mate`) columns)."""


def sequence_arrays(source: Sequences) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Ids (Arrow strings), the bytes of all sequences and their offsets (n + 1).

    Shared by tasks.orfs and tasks.motifs: every sequence source becomes one byte buffer,
    without a Python object per read for Arrow input.

    Args:
        source: (id, sequence) pairs, a FASTA path, or a table with `sequence` and `seq_id`
            or `read_id` (+ `mate`: mates get ids "id/1", "id/2").

    Returns:
        (ids as an Arrow string array, uint8 bytes of all sequences, int64 offsets of
        length n + 1).

    Raises:
        ValueError: a table without a `seq_id` or `read_id` column.
        InputError: a malformed FASTA file.
    """
    if isinstance(source, str | Path):
        source = iter_fasta(source)
    if isinstance(source, pa.Table | pa.RecordBatch):
        names = source.schema.names
        if "seq_id" in names:
            ids = source.column("seq_id")
        elif "read_id" in names:
            ids = source.column("read_id")
            if "mate" in names:  # mates share a read_id: name them id/1 and id/2
                mate = source.column("mate")
                suffixed = pc.binary_join_element_wise(ids, pc.cast(mate, pa.string()), "/")
                ids = pc.if_else(pc.equal(mate, 0), ids, suffixed)
        else:
            raise ValueError("a sequence table needs a 'seq_id' or 'read_id' column")
        seqs = source.column("sequence")
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        if isinstance(seqs, pa.ChunkedArray):
            seqs = seqs.combine_chunks()
        seqs = pc.cast(seqs, pa.large_string())
        offsets, data = string_parts(seqs)
        return pc.cast(ids, pa.string()), data, offsets
    id_list: list[str] = []
    parts: list[bytes] = []
    for seq_id, seq in source:
        id_list.append(seq_id)
        parts.append(seq.encode("ascii"))
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return pa.array(id_list, pa.string()), np.frombuffer(b"".join(parts), np.uint8), offsets


@dataclass(frozen=True)
class PackedSequences:
    """Sequences packed into one code array, each in a slot padded with sentinels.

    Codes: 0..3 = ACGT (U read as T, either case), 4 = any other letter, 5 = sentinel.
    """

    codes: np.ndarray  # uint8 codes, sentinel-padded
    starts: np.ndarray  # int64 position of each sequence's first base
    lengths: np.ndarray  # int64 length of each sequence as packed (tripled if circular)


def pack_sequences(data: np.ndarray, offsets: np.ndarray, copies: int) -> PackedSequences:
    """Pack sequences (`copies` times end to end, for circular search) with sentinels.

    Each slot starts at a multiple of 3 and is followed by at least one sentinel, so any
    window or codon that crosses from one sequence into the next contains a sentinel.

    Args:
        data: uint8 bytes of all sequences, as `sequence_arrays` returns them.
        offsets: int64 offsets of length n + 1 into `data`.
        copies: 1, or how many times each sequence is repeated (e.g. 3 for circular search).

    Returns:
        PackedSequences: codes (0..3 ACGT, 4 other, 5 sentinel), each slot's start and its
        packed length.
    """
    if copies > 1:  # circular genomes: few sequences, so a loop over them is cheap
        data = np.concatenate(
            [np.tile(data[a:b], copies) for a, b in itertools.pairwise(offsets.tolist())]
            or [np.zeros(0, np.uint8)]
        )
    elif len(offsets):
        data = data[offsets[0] : offsets[-1]]  # a sliced Arrow array shares a larger buffer
    lengths = np.diff(offsets).astype(np.int64) * copies
    slot = lengths + 3  # at least one sentinel after each sequence, slots keep frame 0
    slot += (-slot) % 3
    starts = 3 + np.concatenate([[0], np.cumsum(slot)[:-1]]).astype(np.int64)
    total = int(starts[-1] + slot[-1]) if len(starts) else 3
    # Bases fill the slots in order: mark each slot's base run with +1/-1 at its ends,
    # a running sum gives the mask, and one masked assignment copies all bases.
    marks = np.zeros(total + 1, dtype=np.int8)
    used = lengths > 0  # slots never touch, so no index repeats
    marks[starts[used]] = 1
    marks[(starts + lengths)[used]] = -1
    is_base = np.cumsum(marks[:-1], dtype=np.int8).astype(bool)
    codes = np.full(total, SENTINEL_CODE, dtype=np.uint8)
    codes[is_base] = _CODE[data]
    return PackedSequences(codes=codes, starts=starts, lengths=lengths.astype(np.int64))
