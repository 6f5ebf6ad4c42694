"""Whole FASTQ records: split decompressed blocks into records, parse and validate them.

`RecordReader` reads whole 4-line records of one file into a reusable buffer and says why
a file ended early (truncated gzip, a record cut short, CR-only line ends, no records).
`Records.parse` checks every record with whole-buffer NumPy/Arrow work (structure by
comparing bytes at line starts, quality range by min/max, bases by `bytes.translate`) and
gathers names, sequences and qualities as Arrow columns with one `take` each; only when a
check fails does a slow path look at the one bad record to say what is wrong. Errors are
`InputError(path, message, record=n)` with the 1-based record number in that file.

Pure functions and classes, no Prefect; `tasks.fastq` assembles the records into batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from helixflow.errors import InputError
from helixflow.tasks.inflate import BlockSource, GzipFault
from helixflow.tasks.reads import IUPAC_BASES, PHRED_MAX, PHRED_MIN, string_parts

_SCAN = 1024 * 1024  # bytes per step when checking bases
_MAX_LINE = 256 * 1024 * 1024  # longer "lines" mean this is not FASTQ (memory stays bounded)
_NL, _CR, _AT, _PLUS = 10, 13, ord("@"), ord("+")
_HINT_COPY = "the file is incomplete or damaged: copy it again (`gzip -t FILE` checks a .gz)"
_HINT_CR = "FASTQ lines end in LF or CRLF; `tr '\\r' '\\n' < IN > OUT` converts CR-only files"

# bytes.translate table: valid bases in either case -> upper case, anything else -> NUL.
_CANON_TABLE = bytes(
    c if c in IUPAC_BASES else c - 32 if c >= 97 and c - 32 in IUPAC_BASES else 0
    for c in range(256)
)


# --------------------------------------------------------------------------------------
# Splitting a stream into whole records


class Scratch:
    """A reusable byte buffer that each sub-chunk's text is read into.

    Decompressed blocks are copied in (and freed) as they arrive. The buffer is reused
    and sized up front from the record size seen: growing it step by step would touch
    (and page-fault) several times the memory it ends up using. Nothing keeps a view of it
    between sub-chunks: the columns are gathered into new Arrow buffers.
    """

    def __init__(self) -> None:
        self.buffer = np.empty(0, np.uint8)

    def reserve(self, size: int, keep: int) -> None:
        """Make room for `size` bytes, keeping [0, keep). Untouched room costs no memory."""
        if size > len(self.buffer):
            grown = np.empty(size, np.uint8)
            grown[:keep] = self.buffer[:keep]
            self.buffer = grown

    def put(self, pos: int, data: bytes | memoryview) -> None:
        """Copy `data` to `pos`, growing the buffer if needed."""
        end = pos + len(data)
        self.reserve(end if end <= len(self.buffer) else max(end, 2 * len(self.buffer)), pos)
        self.buffer[pos:end] = np.frombuffer(data, np.uint8)


@dataclass
class Chunk:
    """Whole records of one file, read into the first `size` bytes of a Scratch buffer."""

    path: str
    first_record: int  # 1-based number of the first record
    size: int
    line_ends: np.ndarray  # int64 positions in the buffer, 4 per record
    error: InputError | None = None  # raise after validating these records

    @property
    def n(self) -> int:
        """Number of records."""
        return len(self.line_ends) // 4


class RecordReader:
    """Reads whole FASTQ records of one file, `n` at a time, reading as little as needed."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None) -> None:
        self.uri = uri
        self._source = BlockSource(uri, storage_options)
        self._carry: bytes = b""  # bytes read past the last record handed out
        self._last_byte = _NL
        self._eof = False
        self._fault: str | None = None
        self.records = 0  # records handed out so far

    def close(self) -> None:
        """Stop the reader thread and close the file."""
        self._source.close()

    def _next_block(self) -> bytes:
        """The next block; at the end b"" (or a newline ending an unterminated last line)."""
        try:
            block = self._source.read_block()
        except GzipFault as exc:
            self._eof, self._fault = True, exc.reason
            return b""
        if block:
            self._last_byte = block[-1]
            return block
        self._eof = True
        return b"" if self._last_byte == _NL else b"\n"

    def read_into(self, scratch: Scratch, n: int) -> Chunk:
        """Read up to `n` records into `scratch`; fewer only at the end of the file.

        The returned chunk's `error` says why the file ended early, if it did.
        """
        want = 4 * n
        found: list[np.ndarray] = []
        lines, end, line_start = 0, 0, 0
        block: bytes | memoryview = self._carry
        self._carry = b""
        while True:
            if block:
                ends = np.flatnonzero(np.frombuffer(block, np.uint8) == _NL)
                line_start = end + int(ends[-1]) + 1 if len(ends) else line_start
                if end + len(block) - line_start > _MAX_LINE:
                    raise InputError(
                        self.uri,
                        f"no line feed in {_MAX_LINE >> 20} MiB: not FASTQ, or CR-only line ends",
                        record=self.records + (lines + len(ends)) // 4 + 1,
                        hint=_HINT_CR,
                    )
                if end == 0 and len(ends):  # room for this chunk, judged by this block
                    scratch.reserve(2 * want * (len(block) // len(ends) + 1), 0)
                if lines + len(ends) >= want:  # this block completes the chunk
                    cut = int(ends[want - lines - 1]) + 1
                    scratch.put(end, memoryview(block)[:cut])
                    found.append(ends[: want - lines] + end)
                    self._carry = bytes(memoryview(block)[cut:])
                    lines, end = want, end + cut
                    break
                scratch.put(end, block)
                found.append(ends + end)
                lines, end = lines + len(ends), end + len(block)
            if self._eof:
                break
            block = self._next_block()
        line_ends = np.concatenate(found) if found else np.empty(0, np.int64)
        complete = lines // 4
        line_ends = line_ends[: 4 * complete]
        size = int(line_ends[-1]) + 1 if complete else 0
        chunk = Chunk(self.uri, self.records + 1, size, line_ends)
        self.records += complete
        if complete < n:
            chunk.error = self._end_error(scratch.buffer[size:end].tobytes(), lines % 4)
        return chunk

    def _end_error(self, tail: bytes, tail_lines: int) -> InputError | None:
        """Why the file ended: a broken gzip stream, a partial record, no records at all,
        or None if it ended well (blank lines after the last record are fine)."""
        done = self.records
        if self._fault:
            return InputError(
                self.uri, f"{self._fault} after record {done}", record=done + 1, hint=_HINT_COPY
            )
        if b"\r" in tail.replace(b"\r\n", b"\n").rstrip(b"\r"):
            return InputError(
                self.uri,
                "lines end in CR only (classic Mac); FASTQ needs LF or CRLF",
                record=done + 1,
                hint=_HINT_CR,
            )
        if tail.strip(b"\r\n"):
            return InputError(
                self.uri,
                f"file ends in the middle of a record ({tail_lines} of 4 lines)",
                record=done + 1,
                hint=_HINT_COPY,
            )
        if done == 0:
            return InputError(self.uri, "file is empty (no FASTQ records)", record=1)
        return None


# --------------------------------------------------------------------------------------
# Parsing and validating whole records


def _short(line: bytes, limit: int = 24) -> str:
    """A line as a short quoted excerpt for an error message."""
    if not line:
        return "an empty line"
    text = repr(line[:limit].decode("utf-8", "backslashreplace"))
    return text[:-1] + "…'" if len(line) > limit else text


def _diagnose(lines: list[bytes]) -> str:
    """What is wrong with one record (its 4 lines, line ends removed), checked in line order.

    The vectorised checks only say *which* record is bad; this says why, in one line.
    """
    header, seq, plus, qual = lines
    if not header.startswith(b"@"):
        hint = " (this looks like FASTA)" if header.startswith(b">") else ""
        return f"expected a header line starting with '@', found {_short(header)}{hint}"
    if not plus.startswith(b"+"):
        return f"expected a '+' line after the sequence, found {_short(plus)}"
    if len(qual) != len(seq):
        return f"quality length {len(qual)} != sequence length {len(seq)}"
    if len(plus) > 1 and plus[1:] != header[1:]:
        return f"'+' line {_short(plus)} does not repeat the header {_short(header)}"
    if not header[1:].replace(b"\t", b" ").split(b" ", 1)[0]:
        return "empty read name after '@'"
    for i, q in enumerate(qual):
        if not PHRED_MIN <= q <= PHRED_MAX:
            return (
                f"quality character {chr(q)!r} (byte {q}) at position {i + 1} is outside "
                f"Phred+33 ('!'..'~')"
            )
    for i, b in enumerate(seq):
        if not _CANON_TABLE[b]:
            return (
                f"invalid base {chr(b)!r} (byte {b}) at position {i + 1}; "
                f"expected IUPAC codes {IUPAC_BASES.decode()}"
            )
    try:
        header.decode("utf-8")
    except UnicodeDecodeError:
        return "read name is not valid UTF-8"
    return "malformed record"


def _segments(buffer: pa.Buffer, bounds: np.ndarray) -> pa.Array:
    """Zero-copy binary array whose i-th value is buffer[bounds[i]:bounds[i + 1]]."""
    n = len(bounds) - 1
    if len(buffer) < 2**31:
        return pa.Array.from_buffers(
            pa.binary(), n, [None, pa.py_buffer(bounds.astype(np.int32)), buffer]
        )
    return pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(bounds), buffer])


def _slices(buffer: pa.Buffer, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray) -> pa.Array:
    """buffer[starts[i]:ends[i]] for i in rows, as one contiguous binary array.

    Needs starts[0] <= ends[0] <= starts[1] <= ends[1] ... (true for fields of FASTQ lines).
    """
    bounds = np.empty(2 * len(starts) + 1, np.int64)
    bounds[0:-1:2], bounds[1:-1:2], bounds[-1] = starts, ends, ends[-1]
    return _segments(buffer, bounds).take(2 * rows)


def _as_string(values: pa.Array) -> pa.Array:
    """Reinterpret a gathered binary array as `string` (contents are checked separately)."""
    if values.type == pa.large_binary():
        try:
            return values.cast(pa.large_string()).cast(pa.string())
        except pa.ArrowInvalid:
            raise ValueError("a batch column exceeds 2 GiB; use a smaller batch_size") from None
    return values.view(pa.string())


def _rows_of(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Row of each position in a string column's data (positions relative to offsets[0])."""
    return np.searchsorted(offsets, positions + offsets[0], side="right") - 1


def _name_lengths(headers: pa.Array) -> np.ndarray:
    """Length of the read name in each header (after '@'): up to the first space or tab,
    less a trailing /1 or /2."""
    offsets, data = string_parts(headers)
    starts, ends = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
    if not len(data):
        return np.zeros(len(headers), np.int64)
    blanks = np.flatnonzero((data == 32) | (data == 9))
    if len(blanks):
        nxt = np.searchsorted(blanks, starts)
        first = blanks[np.minimum(nxt, len(blanks) - 1)]
        ends = np.where((nxt < len(blanks)) & (first < ends), first, ends)
    length = ends - starts
    last, before = data[np.maximum(ends - 1, 0)], data[np.maximum(ends - 2, 0)]
    suffix = (length >= 3) & (before == ord("/")) & ((last == ord("1")) | (last == ord("2")))
    return length - 2 * suffix


def _check_qualities(quality: pa.Array) -> np.ndarray:
    """Rows whose quality string has a byte outside Phred+33."""
    offsets, data = string_parts(quality)
    q = data[offsets[0] : offsets[-1]]
    if not len(q) or (q.min() >= PHRED_MIN and q.max() <= PHRED_MAX):
        return np.empty(0, np.int64)
    return _rows_of(offsets, np.flatnonzero((q < PHRED_MIN) | (q > PHRED_MAX)))


def _check_bases(sequence: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The sequences upper-cased, and the rows holding non-IUPAC bytes."""
    offsets, data = string_parts(sequence)
    bases = data[offsets[0] : offsets[-1]]
    # The common case, all upper-case and valid, checked a cache-sized piece at a time.
    if not any(
        bases[i : i + _SCAN].tobytes().translate(None, IUPAC_BASES)
        for i in range(0, len(bases), _SCAN)
    ):
        return sequence, np.empty(0, np.int64)
    canon = bases.tobytes().translate(_CANON_TABLE)
    invalid = np.flatnonzero(np.frombuffer(canon, np.uint8) == 0)
    if len(invalid):
        return sequence, _rows_of(offsets, invalid)
    upper = pa.Array.from_buffers(
        pa.string(), len(sequence), [None, pa.py_buffer(offsets - offsets[0]), pa.py_buffer(canon)]
    )
    return upper, np.empty(0, np.int64)


def _check_utf8(read_id: pa.Array) -> np.ndarray:
    """Rows whose name is not valid UTF-8 (Arrow strings must be)."""
    try:
        read_id.validate(full=True)
    except pa.ArrowInvalid:
        names = read_id.view(pa.binary()).to_pylist()
        return np.array([i for i, name in enumerate(names) if not _is_utf8(name)], np.int64)
    return np.empty(0, np.int64)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass
class Parsed:
    """Validated columns of a set of records, rows in the requested order."""

    read_id: pa.Array
    sequence: pa.Array
    quality: pa.Array


class Records:
    """The records of a chunk, located by line: record i is lines 4i..4i+3 (CR excluded)."""

    def __init__(self, chunk: Chunk, scratch: Scratch) -> None:
        self.chunk = chunk
        data = scratch.buffer[: chunk.size]
        self.buffer = pa.py_buffer(data)
        ends = chunk.line_ends
        starts = np.empty_like(ends)
        starts[:1] = 0
        starts[1:] = ends[:-1] + 1
        crlf = (ends > starts) & (data[np.maximum(ends - 1, 0)] == _CR)
        self.data, self.starts, self.ends = data, starts, ends - crlf
        self.n = chunk.n

    def fail(self, index: int) -> InputError:
        """The InputError describing the (bad) record at 0-based `index`."""
        s = self.starts[4 * index : 4 * index + 4].tolist()
        e = self.ends[4 * index : 4 * index + 4].tolist()
        lines = [self.data[a:b].tobytes() for a, b in zip(s, e, strict=True)]
        return InputError(self.chunk.path, _diagnose(lines), record=self.chunk.first_record + index)

    def parse(self, order: np.ndarray | None = None) -> Parsed:
        """Validate every record and gather its columns; rows follow `order` (record indices).

        Raises the InputError of the first bad record.
        """
        data, s, e = self.data, self.starts, self.ends
        malformed = (
            (data[s[0::4]] != _AT)
            | (data[s[2::4]] != _PLUS)
            | ((e[1::4] - s[1::4]) != (e[3::4] - s[3::4]))
        )
        if malformed.any():  # offsets past this record are not trustworthy: stop there
            first = int(np.argmax(malformed))
            if first:
                self._gather(first, None)  # raises if an earlier record is bad
            raise self.fail(first)
        return self._gather(self.n, order)

    def _gather(self, n: int, order: np.ndarray | None) -> Parsed:
        """Columns of the first `n` (well-formed) records; raises for bad content."""
        s, e = self.starts[: 4 * n], self.ends[: 4 * n]
        hs, ss, ps, qs = s[0::4], s[1::4], s[2::4], s[3::4]
        he, se, pe, qe = e[0::4], e[1::4], e[2::4], e[3::4]
        everything = np.arange(n)
        headers = _slices(self.buffer, hs + 1, he, everything)
        name_len = _name_lengths(headers)
        bad = [np.flatnonzero(name_len == 0)]
        named = np.flatnonzero(pe - ps > 1)  # a '+' line that names the read must repeat it
        if len(named):
            pluses = _slices(self.buffer, ps + 1, pe, named)
            same = pc.equal(pluses, headers.take(named)).to_numpy(zero_copy_only=False)
            bad.append(named[~same])
        rows = everything if order is None else order
        bounds = np.empty(6 * n + 1, np.int64)
        bounds[0:-1:6], bounds[1:-1:6] = hs + 1, hs + 1 + name_len
        bounds[2:-1:6], bounds[3:-1:6] = ss, se
        bounds[4:-1:6], bounds[5:-1:6] = qs, qe
        bounds[-1] = qe[-1]
        segments = _segments(self.buffer, bounds)
        read_id = _as_string(segments.take(6 * rows))
        sequence, bad_bases = _check_bases(_as_string(segments.take(6 * rows + 2)))
        quality = _as_string(segments.take(6 * rows + 4))
        for bad_rows in (bad_bases, _check_qualities(quality), _check_utf8(read_id)):
            bad.append(rows[bad_rows])
        first = min((int(x.min()) for x in bad if len(x)), default=None)
        if first is not None:
            raise self.fail(first)
        return Parsed(read_id, sequence, quality)
