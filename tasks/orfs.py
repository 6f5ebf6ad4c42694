"""Six-frame open reading frame (ORF) search on contigs, reference genomes or reads.

Pure functions (NumPy/Arrow in and out, no Prefect); the Prefect/Ray tasks wrap them.

How it is vectorised. All sequences of a call are packed into one array of base codes,
each in its own slot and separated by a sentinel code, so a codon that straddles two
sequences contains a sentinel. One lookup turns every position into a codon index, and
per frame (`codons[f::3]`) the stops and sentinel codons ("breaks") split the frame into
segments; each segment is at most one ORF: it ends at its stop codon and begins at its
first start codon (`numpy.searchsorted`), or right after the previous stop when no start
codon is required. The reverse strand is the same pass over the reverse complement of the
packed array. Proteins are gathered with one index array over the translated codons. The
only Python loops are over the 2 strands x 3 frames, never over codons or sequences, so
a batch of a million reads costs one pass, like one genome of the same total length.

Conventions:
- Coordinates are 0-based, end exclusive, on the forward strand of the sequence, and the
  interval includes the stop codon (as GFF/BED gene calls do). For a '-' ORF the start
  codon is the reverse complement of `seq[end-3:end]` and the stop of `seq[start:start+3]`.
- `frame` is 0, 1 or 2: `start % 3` on '+', `(len(seq) - end) % 3` on '-' (the offset
  from the 5' end of the strand the ORF is read on).
- `protein` is the translation without the stop codon; the first residue is 'M' when the
  ORF begins with one of the requested start codons (alternative starts such as GTG and
  TTG are initiator methionines). Codons with an ambiguous base translate to 'X' and are
  neither stops nor starts.
- `partial` ORFs (only with ``partial=True``) run off a sequence end: no stop codon
  before the 3' end, or, without start codons, no stop before the 5' end.
- Circular sequences (``circular=True``): ORFs may span the origin; such an ORF has
  `start < len(seq) < end`, i.e. `end - len(seq)` bases of it lie at the sequence start.
  No ORF is partial on a circle.

Example:
    >>> table = find_orfs([("s1", "CCATGAAATTTGGGTAACC")], OrfParams(min_length_nt=9))
    >>> table.to_pylist()[0]["protein"], table.to_pylist()[0]["start"]
    ('MKFG', 2)
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

ORFS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("seq_id", pa.string(), nullable=False),
        pa.field("start", pa.int64(), nullable=False),
        pa.field("end", pa.int64(), nullable=False),
        pa.field("strand", pa.string(), nullable=False),
        pa.field("frame", pa.int8(), nullable=False),
        pa.field("start_codon", pa.string(), nullable=False),
        pa.field("length_nt", pa.int64(), nullable=False),
        pa.field("protein", pa.string(), nullable=False),
        pa.field("partial", pa.bool_(), nullable=False),
    ]
)
"""One row per ORF; see the module docstring for the coordinate conventions."""

# NCBI genetic codes (https://www.ncbi.nlm.nih.gov/Taxonomy/Utils/wprintgc.cgi), amino
# acids in NCBI's codon order TTT, TTC, TTA, TTG, TCT, ... (bases in the order T C A G).
GENETIC_CODES: dict[int, str] = {
    1: "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
    2: "FFLLSSSSYY**CCWWLLLLPPPPHHQQRRRRIIMMTTTTNNKKSS**VVVVAAAADDEEGGGG",
    3: "FFLLSSSSYY**CCWWTTTTPPPPHHQQRRRRIIMMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
    4: "FFLLSSSSYY**CCWWLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
    5: "FFLLSSSSYY**CCWWLLLLPPPPHHQQRRRRIIMMTTTTNNKKSSSSVVVVAAAADDEEGGGG",
    6: "FFLLSSSSYYQQCC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
    9: "FFLLSSSSYY**CCWWLLLLPPPPHHQQRRRRIIIMTTTTNNNKSSSSVVVVAAAADDEEGGGG",
    10: "FFLLSSSSYY**CCCWLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
    11: "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
    12: "FFLLSSSSYY**CC*WLLLSPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
}
BACTERIAL_STARTS: tuple[str, ...] = ("ATG", "GTG", "TTG")
"""Start codons for bacteria and archaea (what prodigal uses with table 11)."""

# Base codes: 0..3 = ACGT, 4 = any other IUPAC code, 5 = sentinel between sequences.
AMBIGUOUS_CODE, SENTINEL_CODE = 4, 5
_AMBIG, _SENTINEL = AMBIGUOUS_CODE, SENTINEL_CODE
_NCODE = 6
_CODE = NUCLEOTIDE_CODE  # ACGT (and U as T) either case -> 0..3, any other byte -> 4
_COMPLEMENT = np.array([3, 2, 1, 0, _AMBIG, _SENTINEL], dtype=np.uint8)
_NCBI_ORDER = "TCAG"


@dataclass(frozen=True)
class OrfParams:
    """What counts as an ORF.

    Args:
        min_length_nt: shortest ORF in nucleotides, stop codon included.
        min_length_aa: shortest protein in residues (stop excluded); both limits apply.
        start_codons: codons an ORF may begin with; empty means stop-to-stop ORFs (begin
            right after the previous in-frame stop), which suits short reads.
        table: NCBI translation table number (see GENETIC_CODES).
        circular: the sequences are circular; ORFs may wrap across the origin.
        partial: also report ORFs that run off a sequence end (see module docstring).
    """

    min_length_nt: int = 90
    min_length_aa: int = 0
    start_codons: tuple[str, ...] = ("ATG",)
    table: int = 11
    circular: bool = False
    partial: bool = False

    def __post_init__(self) -> None:
        """Reject bad values here, with what is allowed, not deep inside the scan."""
        if isinstance(self.min_length_nt, bool) or not isinstance(self.min_length_nt, int):
            raise ValueError(f"min_length_nt must be an integer, got {self.min_length_nt!r}")
        if self.min_length_nt < 3:
            raise ValueError(f"min_length_nt must be at least 3, got {self.min_length_nt}")
        if isinstance(self.min_length_aa, bool) or not isinstance(self.min_length_aa, int):
            raise ValueError(f"min_length_aa must be an integer, got {self.min_length_aa!r}")
        if self.min_length_aa < 0:
            raise ValueError(f"min_length_aa must be >= 0, got {self.min_length_aa}")
        if self.table not in GENETIC_CODES:
            raise ValueError(
                f"translation table {self.table!r} is not supported; "
                f"choose one of {sorted(GENETIC_CODES)}"
            )
        if isinstance(self.start_codons, str):
            raise ValueError("start_codons must be a tuple of codons, e.g. ('ATG', 'GTG')")
        for codon in self.start_codons:
            if len(codon) != 3 or any(b not in "ACGTU" for b in codon.upper()):
                raise ValueError(f"start codon {codon!r} is not three of A, C, G, T")
        if self.circular and self.partial:
            raise ValueError("circular sequences have no ends: use circular or partial, not both")


# --------------------------------------------------------------------------------------
# Sequence input


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

    Shared with tasks.motifs: every sequence source becomes one byte buffer, without a
    Python object per read for Arrow input.

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
    codes = np.full(total, _SENTINEL, dtype=np.uint8)
    codes[is_base] = _CODE[data]
    return PackedSequences(codes=codes, starts=starts, lengths=lengths.astype(np.int64))


# --------------------------------------------------------------------------------------
# Codon tables


def _codon_luts(params: OrfParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables over codon index c0*36 + c1*6 + c2 (codes 0..5): amino acid byte,
    is-stop, is-start and is-break (contains a sentinel)."""
    aa_ncbi = GENETIC_CODES[params.table]
    n = _NCODE**3
    aa = np.full(n, ord("X"), dtype=np.uint8)
    stop = np.zeros(n, dtype=bool)
    start = np.zeros(n, dtype=bool)
    brk = np.zeros(n, dtype=bool)
    starts = {c.upper().replace("U", "T") for c in params.start_codons}
    for c0 in range(_NCODE):
        for c1 in range(_NCODE):
            for c2 in range(_NCODE):
                idx = (c0 * _NCODE + c1) * _NCODE + c2
                if _SENTINEL in (c0, c1, c2):
                    brk[idx] = True
                    continue
                if _AMBIG in (c0, c1, c2):
                    continue
                codon = "".join("ACGT"[c] for c in (c0, c1, c2))
                k = sum(_NCBI_ORDER.index(b) * w for b, w in zip(codon, (16, 4, 1), strict=True))
                aa[idx] = ord(aa_ncbi[k])
                stop[idx] = aa_ncbi[k] == "*"
                start[idx] = codon in starts
    return aa, stop, start, brk


def _codon_index(codes: np.ndarray) -> np.ndarray:
    """Codon index at every position (len(codes) - 2 values)."""
    # 6**3 = 216 codon indices fit in uint8: no wider temporaries on big batches.
    idx = codes[:-2] * np.uint8(_NCODE)
    idx += codes[1:-1]
    idx *= np.uint8(_NCODE)
    idx += codes[2:]
    return idx


# --------------------------------------------------------------------------------------
# The scan


@dataclass
class _StrandOrfs:
    """ORFs found on one strand of the packed array, in packed-array coordinates."""

    begin: np.ndarray  # position of the first base
    end: np.ndarray  # position after the last base (stop included when complete)
    partial: np.ndarray


def _scan_strand(
    idx: np.ndarray, stop_lut: np.ndarray, start_lut: np.ndarray, brk_lut: np.ndarray,
    params: OrfParams,
) -> _StrandOrfs:
    """All maximal ORFs of one strand: per frame, the segments between breaks."""
    begins, ends, partials = [], [], []
    use_starts = bool(params.start_codons)
    for frame in range(3):
        fidx = idx[frame::3]
        is_stop = stop_lut[fidx]
        breaks = np.flatnonzero(is_stop | brk_lut[fidx])
        if len(breaks) == 0:
            continue
        prev = breaks[:-1]  # segment k lies strictly between breaks k and k + 1
        this = breaks[1:]
        complete_3 = is_stop[this]
        if use_starts:
            start_pos = np.flatnonzero(start_lut[fidx])
            first = np.searchsorted(start_pos, prev + 1)
            first_start = np.append(start_pos, np.iinfo(np.int64).max)[first]
            ok = first_start < this
            seg_begin = first_start
            complete_5 = np.ones(len(this), dtype=bool)
        else:
            seg_begin = prev + 1
            ok = seg_begin < this
            complete_5 = is_stop[prev]
        seg_end = this + complete_3  # include the stop codon
        is_partial = ~(complete_3 & complete_5)
        if not params.partial:
            ok &= ~is_partial
        begins.append(frame + 3 * seg_begin[ok])
        ends.append(frame + 3 * seg_end[ok])
        partials.append(is_partial[ok])
    if not begins:
        empty = np.zeros(0, dtype=np.int64)
        return _StrandOrfs(empty, empty, np.zeros(0, dtype=bool))
    return _StrandOrfs(
        np.concatenate(begins).astype(np.int64),
        np.concatenate(ends).astype(np.int64),
        np.concatenate(partials),
    )


def _gather_proteins(
    idx: np.ndarray, aa_lut: np.ndarray, begin: np.ndarray, n_res: np.ndarray,
    first_m: np.ndarray,
) -> pa.Array:
    """Protein strings: aa_lut[idx[begin + 3 i]] for i < n_res, one gather for all ORFs."""
    offsets = np.concatenate([[0], np.cumsum(n_res)]).astype(np.int64)
    total = int(offsets[-1])
    within = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], n_res)
    residues = aa_lut[idx[np.repeat(begin, n_res) + 3 * within]]
    has = n_res > 0
    residues[offsets[:-1][has & first_m]] = ord("M")
    return pa.LargeStringArray.from_buffers(
        len(n_res), pa.py_buffer(offsets), pa.py_buffer(residues.tobytes())
    )


def find_orfs(sequences: Sequences, params: OrfParams = OrfParams()) -> pa.Table:
    """Six-frame ORFs of every sequence, as an Arrow table in ORFS_SCHEMA.

    Rows are sorted by sequence (input order), then start, then strand. For each stop
    codon only the longest ORF is reported (from the first start codon after the
    previous in-frame stop), as getorf and prodigal's candidate list do.

    Args:
        sequences: (id, sequence) pairs, a FASTA path or a reads table (see Sequences).
        params: ORF definition.

    Returns:
        One row per ORF (ORFS_SCHEMA).

    Example:
        >>> t = find_orfs([("s", "ATGAAATAG")], OrfParams(min_length_nt=9))
        >>> t.column("end").to_pylist(), t.column("protein").to_pylist()
        ([9], ['MK'])
    """
    ids, data, offsets = sequence_arrays(sequences)
    copies = 3 if params.circular else 1
    packed = pack_sequences(data, offsets, copies)
    aa_lut, stop_lut, start_lut, brk_lut = _codon_luts(params)
    seq_len = (packed.lengths // copies).astype(np.int64)
    total = len(packed.codes)

    columns: dict[str, list[np.ndarray]] = {
        k: [] for k in ("seq", "start", "end", "strand", "frame", "partial")
    }
    proteins: list[pa.Array] = []
    codons: list[np.ndarray] = []
    for strand, codes in (("+", packed.codes), ("-", _COMPLEMENT[packed.codes][::-1])):
        idx = _codon_index(codes)
        found = _scan_strand(idx, stop_lut, start_lut, brk_lut, params)
        # Sequence of each ORF and its offset within that sequence on this strand.
        if strand == "+":
            slot_start = packed.starts
        else:  # the strand's 5' end is the packed sequence's last base
            slot_start = total - (packed.starts + packed.lengths)
        order = np.argsort(slot_start, kind="stable")
        where = np.searchsorted(slot_start[order], found.begin, side="right") - 1
        seq = order[where]
        local_begin = found.begin - slot_start[seq]
        length = found.end - found.begin
        has_stop = _ends_in_stop(idx, found.begin, length, stop_lut)
        keep = length >= params.min_length_nt
        keep &= (length - 3 * has_stop) // 3 >= params.min_length_aa
        if params.circular:  # one copy of each ORF: begins in the middle copy, fits once
            n = seq_len[seq]
            keep &= (local_begin >= n) & (local_begin < 2 * n) & (length <= n)
        seq, local_begin, length = seq[keep], local_begin[keep], length[keep]
        begin, partial, has_stop = found.begin[keep], found.partial[keep], has_stop[keep]
        n = seq_len[seq]
        if params.circular:
            local_begin = local_begin - n
        if strand == "+":
            start = local_begin
            frame = start % 3
        else:  # strand coordinates [b, b + len) are forward [n - b - len, n - b)
            start = n - local_begin - length
            frame = local_begin % 3
            if params.circular:
                start = start % n
        end = start + length
        n_res = (length - 3 * has_stop) // 3
        first_m = np.zeros(len(begin), dtype=bool)
        if params.start_codons:
            first_m = start_lut[idx[begin]]
        proteins.append(_gather_proteins(idx, aa_lut, begin, n_res, first_m))
        codons.append(idx[begin])
        columns["seq"].append(seq)
        columns["start"].append(start)
        columns["end"].append(end)
        columns["strand"].append(np.full(len(seq), strand == "+"))
        columns["frame"].append(frame)
        columns["partial"].append(partial)

    cat = {k: np.concatenate(v) for k, v in columns.items()}
    codon_idx = np.concatenate(codons)
    protein = pa.concat_arrays(proteins)
    order = np.lexsort((~cat["strand"], cat["start"], cat["seq"]))
    codon_names = _codon_names()
    table = pa.table(
        {
            "seq_id": ids.take(pa.array(cat["seq"][order])),
            "start": pa.array(cat["start"][order], pa.int64()),
            "end": pa.array(cat["end"][order], pa.int64()),
            "strand": pa.array(np.where(cat["strand"][order], "+", "-"), pa.string()),
            "frame": pa.array(cat["frame"][order].astype(np.int8), pa.int8()),
            "start_codon": pa.array(codon_names[codon_idx[order]], pa.string()),
            "length_nt": pa.array(cat["end"][order] - cat["start"][order], pa.int64()),
            "protein": pc.cast(protein.take(pa.array(order)), pa.string()),
            "partial": pa.array(cat["partial"][order], pa.bool_()),
        },
        schema=ORFS_SCHEMA,
    )
    return table


def _ends_in_stop(
    idx: np.ndarray, begin: np.ndarray, length: np.ndarray, stop_lut: np.ndarray
) -> np.ndarray:
    """Whether the last codon of each ORF is a stop (false for 3'-open partial ORFs)."""
    if len(begin) == 0:
        return np.zeros(0, dtype=bool)
    last = begin + length - 3
    return stop_lut[idx[np.clip(last, 0, len(idx) - 1)]] & (length >= 3)


def _codon_names() -> np.ndarray:
    """Codon text for every codon index ('NNN'-style with N for ambiguous bases)."""
    letters = "ACGTN-"
    return np.array(
        [a + b + c for a in letters for b in letters for c in letters], dtype=object
    )


def longest_orf_per_sequence(orfs: pa.Table) -> pa.Table:
    """The longest ORF of each sequence (ties: the leftmost), for read-level screens.

    Args:
        orfs: a table from `find_orfs`.

    Returns:
        At most one row per seq_id, in order of first appearance in `orfs`.

    Example:
        >>> t = find_orfs([("r1", "ATGAAATAGATGAAACCCTAG")], OrfParams(min_length_nt=9))
        >>> longest_orf_per_sequence(t).column("length_nt").to_pylist()
        [12]
    """
    if orfs.num_rows == 0:
        return orfs
    seq_codes = pc.dictionary_encode(orfs.column("seq_id").combine_chunks()).indices
    group = np.asarray(seq_codes, dtype=np.int64)
    length = orfs.column("length_nt").to_numpy()
    row = np.arange(orfs.num_rows)
    order = np.lexsort((row, -length, group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    chosen = np.sort(order[first])
    return orfs.take(pa.array(chosen))
