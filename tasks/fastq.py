"""FASTQ parsing and validation kernel: gzip/plain FASTQ in, Arrow record batches out.

Pure functions (NumPy/Arrow in and out, no Prefect) so they can be tested and benchmarked on
their own; the Prefect tasks wrap them.

How it is fast (measured in bench/ingest.py against `seqkit stats`):
- Each file is read by a background thread that inflates gzip with ISA-L
  (`isal.igzip_lib`, about twice zlib's speed, GIL released) into 256 KiB blocks.
- The parser finds line ends with one NumPy pass per block and copies ~16k records at a
  time (a sub-chunk) into a small reusable buffer. Every record becomes six offsets
  (name, sequence, quality) in that buffer; as a zero-copy Arrow binary array, one Arrow
  `take` per column gathers all names, sequences and qualities, with no Python object
  per read. Validation is whole-buffer work too: structure by comparing bytes at line
  starts, quality range by min/max, bases by `bytes.translate`. Only when a check fails
  does a slow path look at the one bad record to say what is wrong.
- Sub-chunks are appended to the batch's columns in place (buffers reused once the
  consumer lets go of a batch), so memory is the batch itself plus a few MB, and it
  stays warm instead of being page-faulted in afresh.
- Another thread builds the next batch while the consumer works on the current one, so
  inflating, parsing and the caller's statistics and Parquet writing overlap.
dnaio (a C parser) was measured too: faster at only iterating records, slower once every
read has to become Arrow data, which needs a Python object per read on the way.

Conventions:
- Records are the classic 4-line FASTQ (no line-wrapped sequences). CRLF line endings are
  accepted; a missing final newline is accepted; blank lines after the last record are
  ignored.
- Bases must be IUPAC nucleotide codes (ACGTUNRYSWKMBDHV) in either case; lower case is
  upper-cased (FASTQ gives case no meaning, and downstream k-mer/GC code then needs to
  handle one alphabet only). Everything else is stored exactly as in the file.
- Qualities must be Phred+33 characters ('!'..'~', bytes 33..126).
- A read of length 0 is valid; it is kept and flagged `is_empty`.
- Errors are `InputError(path, message, record=n)`; `n` is the 1-based number of the
  offending record in that file. For "the input stopped early" errors (truncated gzip,
  file ending mid-record, mate file running out, empty file) it is the first record that
  could not be read.

Example:
    >>> for batch in iter_read_batches("R1.fq.gz", "R2.fq.gz"):  # doctest: +SKIP
    ...     stats = batch_stats(batch)
    ...     write_read_shard(batch, "shard-0.parquet")
"""

from __future__ import annotations

import io
import os
import queue
import sys
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from isal import igzip_lib

from helixflow.errors import InputError

READS_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("read_id", pa.string(), nullable=False),
        pa.field("mate", pa.uint8(), nullable=False),
        pa.field("fragment", pa.int64(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),
        pa.field("sequence", pa.string(), nullable=False),
        pa.field("quality", pa.string(), nullable=False),
        pa.field("is_empty", pa.bool_(), nullable=False),
    ]
)
"""One row per read. `read_id` is the name up to the first whitespace without a trailing
/1 or /2; `mate` is 0 (single-end), 1 or 2; `fragment` is the 0-based read (single-end) or
pair index in the input; `record` the 1-based record number in the read's source file."""

IUPAC_BASES = b"ACGTUNRYSWKMBDHV"
PHRED_MIN, PHRED_MAX = 33, 126

_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_COMPRESSIONS = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
# Small blocks are faster than big ones: allocations stay on the heap (no mmap and page
# faults per block) and in cache. Measured: 256 KiB blocks inflate 30% faster than 1 MiB.
_RAW_CHUNK = 64 * 1024  # compressed bytes per read() from the source
_BLOCK = 256 * 1024  # decompressed bytes per block handed to the parser
_READ_AHEAD = 64  # blocks a reader thread may run ahead of the parser (16 MiB)
_SCAN = 1024 * 1024  # bytes per step when checking bases
_MAX_LINE = 256 * 1024 * 1024  # longer "lines" mean this is not FASTQ (memory stays bounded)
_NL, _CR, _AT, _PLUS = 10, 13, ord("@"), ord("+")
_HINT_COPY = "the file is incomplete or damaged: copy it again (`gzip -t FILE` checks a .gz)"
_HINT_CR = "FASTQ lines end in LF or CRLF; `tr '\\r' '\\n' < IN > OUT` converts CR-only files"
_HINT_PAIRS = (
    "mate files must hold the same fragments in the same order; "
    "`seqkit pair -1 R1 -2 R2` keeps the reads found in both"
)

# bytes.translate table: valid bases in either case -> upper case, anything else -> NUL.
_CANON_TABLE = bytes(
    c if c in IUPAC_BASES else c - 32 if c >= 97 and c - 32 in IUPAC_BASES else 0
    for c in range(256)
)


# --------------------------------------------------------------------------------------
# Opening and decompressing


class _GzipFault(Exception):
    """The gzip stream is truncated or corrupt; `reason` is a short lower-case phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _open_raw(uri: str, storage_options: dict[str, Any] | None) -> BinaryIO:
    """Open the undecoded bytes of a local path or fsspec URI, mapping 'not there' to InputError."""
    try:
        if "://" in uri:  # the store module (and fsspec) costs 70 ms to import: only here
            from helixflow.store import is_local, local_path

            if is_local(uri):
                return open(local_path(uri), "rb")  # the caller closes it
            import fsspec

            return cast(BinaryIO, fsspec.open(uri, "rb", **(storage_options or {})).open())
        return open(uri, "rb")  # the caller closes it
    except FileNotFoundError:
        raise InputError(uri, "no such file", hint="check the path or URI") from None
    except IsADirectoryError:
        raise InputError(uri, "is a directory, expected a FASTQ file") from None
    except PermissionError:
        raise InputError(uri, "permission denied") from None


def _inflate_fast(read: Callable[[int], bytes]) -> Iterator[bytes]:
    """Decompress gzip data (any number of members, so bgzip too) with ISA-L into blocks.

    Raises _GzipFault for a truncated or corrupt stream. ISA-L may hold back or drop the
    last output before a fault; _inflate recovers it with _inflate_exact.
    """
    member: igzip_lib.IgzipDecompressor | None = None
    data = b""
    while True:
        if not data:
            data = read(_RAW_CHUNK)
            if not data:
                if member is not None:
                    raise _GzipFault("truncated gzip stream")
                return
        if member is None:
            data = data.lstrip(b"\x00")  # NUL padding between members is allowed
            if not data:
                continue
            member = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
        try:
            out = member.decompress(data, _BLOCK)
            data = b""
            if out:
                yield out
            while not member.eof and not member.needs_input:
                out = member.decompress(b"", _BLOCK)
                if out:
                    yield out
        except igzip_lib.IsalError as exc:
            raise _GzipFault(f"corrupt gzip stream ({exc})") from None
        if member.eof:
            data = member.unused_data
            member = None


class _RawBuffer:
    """Compressed bytes read on demand, for parsing gzip headers and trailers."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.data = b""

    def fill(self, n: int) -> bool:
        """Make at least `n` bytes available; False if the stream ends first."""
        while len(self.data) < n:
            more = self._read(_RAW_CHUNK)
            if not more:
                return False
            self.data += more
        return True

    def need(self, n: int) -> None:
        """Like fill, but a stream ending first is a truncated gzip stream."""
        if not self.fill(n):
            raise _GzipFault("truncated gzip stream")


def _skip_gzip_header(raw: _RawBuffer) -> None:
    """Consume one gzip member header (RFC 1952), checking magic and method."""
    raw.fill(2)
    if not raw.data.startswith(_GZIP_MAGIC):
        raise _GzipFault("corrupt gzip stream (data after the last gzip member)")
    raw.need(10)
    if raw.data[2] != 8:
        raise _GzipFault("corrupt gzip stream (unknown compression method)")
    flags, pos = raw.data[3], 10
    if flags & 4:  # FEXTRA (bgzip keeps its block size here)
        raw.need(pos + 2)
        pos += 2 + int.from_bytes(raw.data[pos : pos + 2], "little")
    for flag in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & flag:
            while (nul := raw.data.find(b"\x00", pos)) < 0:
                raw.need(len(raw.data) + 1)
            pos = nul + 1
    if flags & 2:  # FHCRC
        pos += 2
    raw.need(pos)
    raw.data = raw.data[pos:]


def _inflate_exact(read: Callable[[int], bytes], skip: int) -> Iterator[bytes]:
    """Decompress again with zlib, checking each member's CRC and size by hand, so every
    byte before a fault comes out; skips the first `skip` bytes of output.

    Slow; only used to say exactly how far a broken stream goes.
    """
    raw, emitted = _RawBuffer(read), 0
    while True:
        raw.data = raw.data.lstrip(b"\x00")
        while not raw.data:
            if not raw.fill(1):
                return
            raw.data = raw.data.lstrip(b"\x00")
        _skip_gzip_header(raw)
        body, crc, size = zlib.decompressobj(-zlib.MAX_WBITS), 0, 0
        while not body.eof:
            raw.need(1)
            try:
                out = body.decompress(raw.data, _BLOCK)
            except zlib.error as exc:
                raise _GzipFault(f"corrupt gzip stream ({exc})") from None
            raw.data = body.unconsumed_tail
            crc, size = zlib.crc32(out, crc), size + len(out)
            if emitted + len(out) > skip:
                yield out[max(0, skip - emitted) :]
            emitted += len(out)
        raw.data = body.unused_data + raw.data
        raw.need(8)
        if int.from_bytes(raw.data[:4], "little") != crc:
            raise _GzipFault("corrupt gzip stream (CRC check failed)")
        if int.from_bytes(raw.data[4:8], "little") != size & 0xFFFFFFFF:
            raise _GzipFault("corrupt gzip stream (length check failed)")
        raw.data = raw.data[8:]


def _inflate(raw: BinaryIO) -> Iterator[bytes]:
    """Decompressed blocks of a gzip stream: fast with ISA-L; exact about where it breaks.

    On a fault, if the file can be rewound, decompress it again with zlib to deliver every
    recoverable byte and the precise reason before raising _GzipFault.
    """
    delivered = 0
    try:
        for block in _inflate_fast(raw.read):
            delivered += len(block)
            yield block
    except _GzipFault:
        if not _rewind(raw):
            raise
        yield from _inflate_exact(raw.read, delivered)
        raise  # zlib found the stream intact after all: trust ISA-L's complaint


def _rewind(raw: BinaryIO) -> bool:
    """Seek back to the start if the stream allows it."""
    try:
        raw.seek(0)
    except (OSError, ValueError, AttributeError):
        return False
    return True


def _plain(read: Callable[[int], bytes]) -> Iterator[bytes]:
    """Uncompressed data in blocks of _BLOCK."""
    while block := read(_BLOCK):
        yield block


_END = object()


class _BlockSource:
    """A file's decompressed bytes as blocks, produced ahead of time by a background thread.

    Inflating releases the GIL, so this overlaps decompression (and remote I/O) with parsing.
    """

    def __init__(self, uri: str, storage_options: dict[str, Any] | None) -> None:
        self.uri = uri
        self._raw = _open_raw(uri, storage_options)
        try:
            head = self._peek(6)
            for magic, name in _OTHER_COMPRESSIONS.items():
                if head.startswith(magic):
                    raise InputError(
                        uri,
                        f"{name}-compressed input is not supported",
                        hint="decompress it, or recompress with gzip or bgzip",
                    )
        except BaseException:
            self._raw.close()
            raise
        if head.startswith(_GZIP_MAGIC):
            self._blocks = _inflate(self._raw)
        else:
            self._blocks = _plain(self._raw.read)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_READ_AHEAD)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, name="helixflow-fastq-read")
        self._thread.daemon = True
        self._thread.start()

    def _peek(self, n: int) -> bytes:
        """First `n` bytes without consuming them (local files peek; fsspec files seek back)."""
        peek = getattr(self._raw, "peek", None)
        if peek is not None:
            return bytes(peek(n)[:n])
        head = self._raw.read(n)
        self._raw.seek(0)
        return head

    def _produce(self) -> None:
        try:
            for block in self._blocks:
                if not self._put(block):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read_block(self) -> bytes:
        """The next block, b"" at the end; re-raises the reader thread's error (e.g. _GzipFault)."""
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, bytes):
            return item
        self._done = True
        if isinstance(item, BaseException):
            raise item
        return b""

    def close(self) -> None:
        """Stop the thread and close the file; safe to call twice."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
        self._raw.close()


class _BlockStream(io.RawIOBase):
    """`io.RawIOBase` view of a _BlockSource; gzip faults surface as InputError."""

    def __init__(self, source: _BlockSource) -> None:
        super().__init__()
        self._source = source
        self._block = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._block:
            try:
                block = self._source.read_block()
            except _GzipFault as exc:
                raise InputError(self._source.uri, exc.reason) from None
            if not block:
                return 0
            self._block = memoryview(block)
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._block))
        view[:n] = self._block[:n]
        self._block = self._block[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()


def open_fastq(uri: str, storage_options: dict[str, Any] | None = None) -> BinaryIO:
    """Open a FASTQ file for reading its (decompressed) bytes.

    Gzip is recognised by its magic bytes, not the file name; multi-member gzip and bgzip
    work. Decompression (ISA-L) runs in a background thread, so it overlaps the caller's
    work. A truncated or corrupt gzip stream raises InputError once the good data is read.

    Args:
        uri: local path, `file://` URL or any fsspec URI (`s3://bucket/key.fq.gz`).
        storage_options: passed to fsspec for remote URIs (credentials, endpoint_url).

    Returns:
        A binary file object; use it as a context manager or close it.

    Example:
        >>> with open_fastq("reads.fq.gz") as f:  # doctest: +SKIP
        ...     first_line = f.readline()
    """
    source = _BlockSource(uri, storage_options)
    return cast(BinaryIO, io.BufferedReader(_BlockStream(source), buffer_size=_BLOCK))


# --------------------------------------------------------------------------------------
# Splitting a stream into whole records


class _Scratch:
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
class _Chunk:
    """Whole records of one file, read into the first `size` bytes of a _Scratch buffer."""

    path: str
    first_record: int  # 1-based number of the first record
    size: int
    line_ends: np.ndarray  # int64 positions in the buffer, 4 per record
    error: InputError | None = None  # raise after validating these records

    @property
    def n(self) -> int:
        """Number of records."""
        return len(self.line_ends) // 4


class _RecordReader:
    """Reads whole FASTQ records of one file, `n` at a time, reading as little as needed."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None) -> None:
        self.uri = uri
        self._source = _BlockSource(uri, storage_options)
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
        except _GzipFault as exc:
            self._eof, self._fault = True, exc.reason
            return b""
        if block:
            self._last_byte = block[-1]
            return block
        self._eof = True
        return b"" if self._last_byte == _NL else b"\n"

    def read_into(self, scratch: _Scratch, n: int) -> _Chunk:
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
        chunk = _Chunk(self.uri, self.records + 1, size, line_ends)
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


def string_parts(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) of a string/binary array as NumPy views, without copying the data.

    Offsets are int32 for string/binary and int64 for the large types; a chunked array is
    combined first. Shared by every kernel that works on read columns.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    _, offsets_buf, data_buf = values.buffers()
    if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type):
        offsets = np.frombuffer(offsets_buf, np.int64, len(values) + 1, values.offset * 8)
    else:
        offsets = np.frombuffer(offsets_buf, np.int32, len(values) + 1, values.offset * 4)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    return offsets, data


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
class _Parsed:
    """Validated columns of a set of records, rows in the requested order."""

    read_id: pa.Array
    sequence: pa.Array
    quality: pa.Array


class _Records:
    """The records of a chunk, located by line: record i is lines 4i..4i+3 (CR excluded)."""

    def __init__(self, chunk: _Chunk, scratch: _Scratch) -> None:
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

    def parse(self, order: np.ndarray | None = None) -> _Parsed:
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

    def _gather(self, n: int, order: np.ndarray | None) -> _Parsed:
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
        return _Parsed(read_id, sequence, quality)


# --------------------------------------------------------------------------------------
# Batches


class _Recycler:
    """Hands out byte buffers for batch columns and reuses those of batches let go.

    The kernel zeroes fresh memory on first touch, which cost ~8% of the ingest time with a
    new buffer per batch; a buffer of a batch the consumer has dropped is warm. CPython's
    reference count says when that is: our list holds one reference, and every Arrow
    array built on a buffer holds another (through the export that pa.py_buffer keeps).
    Only the `track` most recent buffers are followed (the rest are the consumer's to
    free), and at most `keep` idle ones are kept.
    """

    def __init__(self, keep: int = 6, track: int = 24) -> None:
        self._buffers: list[np.ndarray] = []
        self._keep, self._track = keep, track

    def get(self, size: int) -> np.ndarray:
        """A buffer of at least `size` bytes that nothing else uses (contents undefined)."""
        # getrefcount == 2: the list, and the call's own argument.
        idle = [i for i in range(len(self._buffers)) if sys.getrefcount(self._buffers[i]) == 2]
        fits = [i for i in idle if len(self._buffers[i]) >= size]
        chosen = min(fits, key=lambda i: len(self._buffers[i])) if fits else None
        drop = {i for i in idle if i != chosen}
        drop = set(sorted(drop)[: max(0, len(drop) - self._keep)])  # oldest idle beyond keep
        buffer = self._buffers[chosen] if chosen is not None else np.empty(size, np.uint8)
        self._buffers = [b for i, b in enumerate(self._buffers) if i not in drop]
        if chosen is None:
            self._buffers = [*self._buffers[-(self._track - 1) :], buffer]
        return buffer


class _StringBuilder:
    """A string column grown piece by piece in one buffer.

    Pieces are small (one sub-chunk) and copied once into place, so neither a list of
    pieces nor a final concatenation holds a second copy of the batch. The buffer is sized
    from the first piece, so it rarely has to grow.
    """

    def __init__(self, rows: int, recycler: _Recycler) -> None:
        self._rows_hint = rows
        self._recycler = recycler
        self.offsets = np.zeros(rows + 1, np.int64)
        self.rows = 0
        self.size = 0
        self._data = np.empty(0, np.uint8)

    def append(self, piece: pa.Array) -> None:
        """Add the rows of a string array."""
        offsets, data = string_parts(piece)
        n, start, stop = len(piece), int(offsets[0]), int(offsets[-1])
        end = self.size + stop - start
        if self.rows + n > len(self.offsets) - 1:
            self.offsets = np.concatenate([self.offsets, np.zeros(self.rows + n, np.int64)])
        if end > len(self._data):
            if self.size:  # outgrown: move to a bigger buffer
                wanted = max(end, len(self._data) * 3 // 2)
            else:  # first piece: room for the rows expected at this many bytes per row
                wanted = max(end, int((stop - start) / max(n, 1) * self._rows_hint * 1.1) + 4096)
            bigger = self._recycler.get(wanted)
            bigger[: self.size] = self._data[: self.size]
            self._data = bigger
        self._data[self.size : end] = data[start:stop]
        self.offsets[self.rows + 1 : self.rows + n + 1] = offsets[1:] - start + self.size
        self.rows, self.size = self.rows + n, end

    def finish(self) -> pa.Array:
        """The column (string type: at most 2 GiB of data)."""
        if self.size >= 2**31:
            raise ValueError("a batch column exceeds 2 GiB; use a smaller batch_size")
        offsets = pa.py_buffer(self.offsets[: self.rows + 1].astype(np.int32))
        data = pa.py_buffer(self._data[: self.size])
        return pa.Array.from_buffers(pa.string(), self.rows, [None, offsets, data])


class _BatchBuilder:
    """Collects validated pieces into one READS_SCHEMA batch, mate-1 rows before mate-2 rows.

    Pieces are appended in row order. Interleaved input delivers its mates mixed, so there
    mate 2 goes to builders of its own and is appended to mate 1 at the end.
    """

    def __init__(self, layout: str, batch_size: int, recycler: _Recycler) -> None:
        self.layout = layout  # "single", "paired" or "interleaved"
        rows = batch_size if layout == "single" else 2 * batch_size
        self._columns = [_StringBuilder(rows, recycler) for _ in range(3)]
        self._mate2: list[_StringBuilder] | None = None
        if layout == "interleaved":
            self._mate2 = [_StringBuilder(batch_size, recycler) for _ in range(3)]
        self.fragments = 0

    def add(self, mate: int, parsed: _Parsed, start: int, stop: int) -> None:
        """Add rows [start, stop) of `parsed` as reads of `mate` (0, 1 or 2)."""
        target = self._mate2 if mate == 2 and self._mate2 is not None else self._columns
        for builder, column in zip(
            target, (parsed.read_id, parsed.sequence, parsed.quality), strict=True
        ):
            builder.append(column.slice(start, stop - start))
        if mate < 2:
            self.fragments += stop - start

    def finish(self, first_fragment: int) -> pa.RecordBatch:
        """The batch; `record` follows from the fragment number and the layout."""
        if self._mate2 is not None:
            for builder, more in zip(self._columns, self._mate2, strict=True):
                builder.append(more.finish())
        read_id, sequence, quality = (b.finish() for b in self._columns)
        mates = np.array([0] if self.layout == "single" else [1, 2], np.uint8)
        n = self.fragments
        fragment = np.tile(np.arange(first_fragment, first_fragment + n), len(mates))
        mate = np.repeat(mates, n)
        record = 2 * fragment + mate if self.layout == "interleaved" else fragment + 1
        lengths = np.diff(string_parts(sequence)[0])
        return pa.RecordBatch.from_arrays(
            [
                read_id,
                pa.array(mate, pa.uint8()),
                pa.array(fragment, pa.int64()),
                pa.array(record, pa.int64()),
                sequence,
                quality,
                pa.array(lengths == 0, pa.bool_()),
            ],
            schema=READS_SCHEMA,
        )


def _first_mismatch(mate1: pa.Array, mate2: pa.Array) -> int | None:
    """Index of the first pair whose names differ, or None."""
    same = pc.equal(mate1, mate2).to_numpy(zero_copy_only=False)
    return None if same.all() else int(np.argmin(same))


def _name_error(path: str, record: int, name: str, mate_path: str, mate_record: int) -> InputError:
    where = f"{Path(mate_path).name} record {mate_record}"
    return InputError(
        path,
        f"read name {name!r} does not match its mate {where}",
        record=record,
        hint=_HINT_PAIRS,
    )


def _count_error(short: _RecordReader, long: _RecordReader) -> InputError:
    return InputError(
        short.uri,
        f"file ends after record {short.records} but its mate file {Path(long.uri).name} "
        "has more records",
        record=short.records + 1,
        hint=_HINT_PAIRS,
    )


# Records parsed at a time. A batch is assembled from such sub-chunks so that the text
# buffer and the temporaries stay small (cache-sized, reused) whatever the batch size;
# only the batch's own columns grow with it. Long reads get fewer records per sub-chunk.
_SUB_CHUNK = 16_384
_SUB_CHUNK_BYTES = 32 * 1024 * 1024


class _Filler:
    """Reads, validates and adds fragments to a batch builder, sub-chunk by sub-chunk."""

    def __init__(self, readers: list[_RecordReader]) -> None:
        self.readers = readers
        self.scratch = _Scratch()
        self._record_bytes = 1  # text per record, as last seen

    def _step(self, remaining: int) -> int:
        """Records to read next: a sub-chunk, smaller for long reads, at most `remaining`."""
        return min(remaining, _SUB_CHUNK, max(64, _SUB_CHUNK_BYTES // self._record_bytes))

    def _read(
        self, reader: _RecordReader, k: int, order: bool = False
    ) -> tuple[_Chunk, _Parsed | None]:
        """Up to `k` validated records; raises the chunk's end-of-file error after them."""
        chunk = reader.read_into(self.scratch, k)
        parsed = None
        if chunk.n:
            self._record_bytes = max(1, chunk.size // chunk.n)
            records = _Records(chunk, self.scratch)
            if order:  # interleaved: records 1, 3, 5... (mate 1) first, then 2, 4, 6...
                n = chunk.n // 2
                rows = np.concatenate([np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)])
                parsed = records.parse(rows)
            else:
                parsed = records.parse()
        return chunk, parsed

    def single(self, builder: _BatchBuilder, batch_size: int) -> bool:
        """Fill a single-end batch; True at the end of the input."""
        while builder.fragments < batch_size:
            k = self._step(batch_size - builder.fragments)
            chunk, parsed = self._read(self.readers[0], k)
            if chunk.error:
                raise chunk.error
            if parsed is not None:
                builder.add(0, parsed, 0, chunk.n)
            if chunk.n < k:
                return True
        return False

    def paired(self, builder: _BatchBuilder, batch_size: int) -> bool:
        """Fill a batch from two mate files: all of its R1 records, then as many of R2.

        Reading mate by mate puts rows where the batch wants them (mate 1, then mate 2)
        without a second copy. Names are compared sub-chunk by sub-chunk.
        """
        r1, r2 = self.readers
        names: list[pa.Array] = []
        ended = False
        while builder.fragments < batch_size and not ended:
            k = self._step(batch_size - builder.fragments)
            chunk, parsed = self._read(r1, k)
            if parsed is not None:
                builder.add(1, parsed, 0, chunk.n)
                names.append(parsed.read_id)
            if chunk.error:
                raise chunk.error
            ended = chunk.n < k
        for mate1 in names:
            chunk, parsed = self._read(r2, len(mate1))
            if parsed is not None:
                mismatch = _first_mismatch(mate1[: chunk.n], parsed.read_id)
                if mismatch is not None:
                    record = chunk.first_record + mismatch
                    name = parsed.read_id[mismatch].as_py()
                    raise _name_error(r2.uri, record, name, r1.uri, record)
            if chunk.error:
                raise chunk.error
            if chunk.n < len(mate1):
                raise _count_error(r2, r1)
            if parsed is not None:
                builder.add(2, parsed, 0, chunk.n)
        if ended:  # R2 must end here too
            chunk, _ = self._read(r2, 1)
            if chunk.n:
                raise _count_error(r1, r2)
            if chunk.error:
                raise chunk.error
        return ended

    def interleaved(self, builder: _BatchBuilder, batch_size: int) -> bool:
        """Fill a batch from one file of alternating mates."""
        reader = self.readers[0]
        while builder.fragments < batch_size:
            k = self._step(batch_size - builder.fragments)
            chunk, parsed = self._read(reader, 2 * k, order=True)
            n = chunk.n // 2
            if parsed is not None:
                mismatch = _first_mismatch(parsed.read_id[:n], parsed.read_id[n : 2 * n])
                if mismatch is not None:
                    first = chunk.first_record + 2 * mismatch
                    name = parsed.read_id[n + mismatch].as_py()
                    raise _name_error(reader.uri, first + 1, name, reader.uri, first)
            if chunk.error:
                raise chunk.error
            if chunk.n % 2:
                raise InputError(
                    reader.uri,
                    "interleaved file ends with an unpaired record",
                    record=chunk.first_record + chunk.n - 1,
                    hint=_HINT_PAIRS,
                )
            if parsed is not None:
                builder.add(1, parsed, 0, n)
                builder.add(2, parsed, n, 2 * n)
            if chunk.n < 2 * k:
                return True
        return False


def _batches(
    uris: list[str], interleaved: bool, batch_size: int, opts: dict[str, Any] | None
) -> Iterator[pa.RecordBatch]:
    """Batches of validated reads (see iter_read_batches), produced in this thread."""
    readers: list[_RecordReader] = []
    try:
        for uri in uris:
            readers.append(_RecordReader(uri, opts))
        filler = _Filler(readers)
        layout = "interleaved" if interleaved else ("paired" if len(uris) == 2 else "single")
        fill = getattr(filler, layout)
        recycler = _Recycler()
        fragment, ended = 0, False
        while not ended:
            builder = _BatchBuilder(layout, batch_size, recycler)
            ended = fill(builder, batch_size)
            if builder.fragments:
                yield builder.finish(fragment)
                fragment += builder.fragments
    finally:
        for reader in readers:
            reader.close()


def _prefetch(items: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Run `items` in a background thread, one item ahead of the consumer.

    Parsing mostly runs in NumPy/Arrow with the GIL released, so it overlaps whatever the
    consumer does with the previous batch (statistics, Parquet writing). The producer
    starts item k+1 only when the consumer takes item k, so at most two batches are alive.
    Errors are re-raised in the consumer; closing the consumer stops the thread.
    """
    slots: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=1)
    taken = threading.Semaphore(0)
    stop = threading.Event()

    def put(item: object, error: BaseException | None = None) -> bool:
        while not stop.is_set():
            try:
                slots.put((item, error), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def wait_until_taken() -> bool:
        while not stop.is_set():
            if taken.acquire(timeout=0.1):
                return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item) or not wait_until_taken():
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(None, exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="helixflow-fastq-parse", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            taken.release()
            if error is not None:
                raise error
            if item is _END:
                return
            yield cast(pa.RecordBatch, item)
    finally:
        stop.set()
        while True:
            try:
                slots.get_nowait()
            except queue.Empty:
                break
        thread.join()


def iter_read_batches(
    r1: str,
    r2: str | None = None,
    *,
    interleaved: bool = False,
    batch_size: int = 250_000,
    storage_options: dict[str, Any] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream validated reads as Arrow record batches in READS_SCHEMA.

    Memory is bounded by `batch_size`, never by the file size: about two batches plus a few
    tens of MB. (A whole ingest with batch_stats and write_read_shard peaked at ~600 MB RSS
    for 2x150 bp pairs at the default batch size, ~290 MB at 50_000.)

    Paired input (`r2`, or `interleaved=True` for mates alternating in `r1`) yields batches
    holding the mate-1 rows of their fragments first, then the mate-2 rows in the same
    fragment order; mates must have the same name (compared up to the first whitespace,
    without /1 or /2). The first malformed record stops the stream with an InputError.

    Args:
        r1: FASTQ path or fsspec URI (plain, gzip or bgzip).
        r2: mate-2 FASTQ for pairs in two files.
        interleaved: `r1` holds pairs as consecutive records.
        batch_size: fragments (reads, or pairs) per batch.
        storage_options: fsspec options for remote URIs.

    Raises:
        InputError: malformed input, naming the file and the 1-based record.
        ValueError: inconsistent arguments.

    Example:
        >>> batches = iter_read_batches("R1.fq.gz", "R2.fq.gz")  # doctest: +SKIP
        >>> sum(b.num_rows for b in batches)  # doctest: +SKIP
        200000
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if interleaved and r2 is not None:
        raise ValueError("interleaved=True reads both mates from r1; do not pass r2")
    if r2 is not None and str(r1) == str(r2):
        raise ValueError(f"r1 and r2 are the same file: {r1}")
    uris = [str(r1)] if r2 is None else [str(r1), str(r2)]
    return _prefetch(_batches(uris, interleaved, batch_size, storage_options))


# --------------------------------------------------------------------------------------
# Statistics

_QUALITY_CELLS = 1 << 23  # reads x positions padded at a time for variable-length reads


def _padded_sum(arrays: tuple[np.ndarray, ...]) -> np.ndarray:
    """Element-wise sum of 1-D integer arrays of different lengths (zero-padded)."""
    out = np.zeros(max((len(a) for a in arrays), default=0), np.int64)
    for a in arrays:
        out[: len(a)] += a
    return out


@dataclass
class MateStats:
    """Counts for the reads of one mate (0 = single-end); additive, so batches merge."""

    reads: int = 0
    bases: int = 0
    empty: int = 0
    min_length: int = 0
    max_length: int = 0
    gc: int = 0  # G + C bases
    at: int = 0  # A + T (+ U) bases
    n_bases: int = 0  # N bases
    length_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    quality_sums: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def merge(self, other: MateStats) -> MateStats:
        """Statistics of both sets of reads."""
        if not self.reads or not other.reads:
            return other if not self.reads else self
        return MateStats(
            reads=self.reads + other.reads,
            bases=self.bases + other.bases,
            empty=self.empty + other.empty,
            min_length=min(self.min_length, other.min_length),
            max_length=max(self.max_length, other.max_length),
            gc=self.gc + other.gc,
            at=self.at + other.at,
            n_bases=self.n_bases + other.n_bases,
            length_counts=_padded_sum((self.length_counts, other.length_counts)),
            quality_sums=_padded_sum((self.quality_sums, other.quality_sums)),
        )

    def reads_by_position(self) -> np.ndarray:
        """How many reads reach each position (0-based)."""
        return np.cumsum(self.length_counts[::-1])[::-1][1:]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: counts, length distribution, GC, N, mean Phred by position."""
        covered = self.reads_by_position()
        mean_q = self.quality_sums / np.maximum(covered, 1)
        lengths = np.flatnonzero(self.length_counts)
        return {
            "reads": self.reads,
            "bases": self.bases,
            "empty_reads": self.empty,
            "min_length": self.min_length,
            "max_length": self.max_length,
            "mean_length": self.bases / self.reads if self.reads else 0.0,
            "length_histogram": {int(n): int(self.length_counts[n]) for n in lengths},
            "gc_fraction": self.gc / (self.gc + self.at) if self.gc + self.at else None,
            "n_bases": self.n_bases,
            "mean_quality": float(self.quality_sums.sum() / self.bases) if self.bases else None,
            "mean_quality_by_position": [round(float(q), 4) for q in mean_q],
        }


@dataclass
class ReadStats:
    """Per-mate read statistics of one or more batches (keys: 0 single-end, 1, 2)."""

    mates: dict[int, MateStats] = field(default_factory=dict)

    def merge(self, other: ReadStats) -> ReadStats:
        """Statistics of both inputs, mate by mate."""
        keys = sorted(self.mates.keys() | other.mates.keys())
        return ReadStats(
            {m: self.mates.get(m, MateStats()).merge(other.mates.get(m, MateStats())) for m in keys}
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{"1": {...}, "2": {...}} (or {"0": {...}} single-end); see MateStats.to_dict."""
        return {str(m): s.to_dict() for m, s in sorted(self.mates.items())}


def _quality_sums(offsets: np.ndarray, data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sum of Phred scores at each position over all reads (vectorised, no loop per read)."""
    n = len(lengths)
    longest = int(lengths.max()) if n else 0
    q = data[offsets[0] : offsets[-1]]
    if not longest:
        return np.zeros(0, np.int64)
    # Summing into uint32 is twice as fast as int64 and cannot overflow below 34M reads.
    acc = np.uint32 if n * PHRED_MAX < 2**32 else np.int64
    if lengths.min() == longest:  # all reads the same length: a plain 2-D view
        sums = q.reshape(n, longest).sum(axis=0, dtype=acc).astype(np.int64)
        return sums - PHRED_MIN * n
    # Variable lengths: pad groups of reads into a matrix; boolean assignment fills the
    # cells row by row, which is exactly the order of the concatenated quality strings.
    sums = np.zeros(longest, np.int64)
    step = max(1, _QUALITY_CELLS // longest)
    for start in range(0, n, step):
        stop = min(start + step, n)
        span = lengths[start:stop]
        width = int(span.max())
        if not width:
            continue
        cells = np.arange(width) < span[:, None]
        matrix = np.zeros(cells.shape, np.uint8)
        matrix[cells] = q[offsets[start] - offsets[0] : offsets[stop] - offsets[0]]
        sums[:width] += matrix.sum(axis=0, dtype=acc)
        sums[:width] -= PHRED_MIN * cells.sum(axis=0)
    return sums


def _base_counts(bases: np.ndarray) -> dict[str, int]:
    """Count A, C, G, T, U and N, a cache-sized piece at a time (no full-size temporaries)."""
    counts = dict.fromkeys("ACGTUN", 0)
    for i in range(0, len(bases), _SCAN):
        piece = bases[i : i + _SCAN]
        for letter in counts:
            counts[letter] += int(np.count_nonzero(piece == ord(letter)))
    return counts


def _mate_stats(sequence: pa.Array, quality: pa.Array) -> MateStats:
    """Statistics of one mate's reads."""
    offsets, data = string_parts(sequence)
    lengths = np.diff(offsets).astype(np.int64)
    counts = _base_counts(data[offsets[0] : offsets[-1]])
    q_offsets, q_data = string_parts(quality)
    return MateStats(
        reads=len(lengths),
        bases=int(lengths.sum()),
        empty=int(np.count_nonzero(lengths == 0)),
        min_length=int(lengths.min()),
        max_length=int(lengths.max()),
        gc=counts["G"] + counts["C"],
        at=counts["A"] + counts["T"] + counts["U"],
        n_bases=counts["N"],
        length_counts=np.bincount(lengths).astype(np.int64),
        quality_sums=_quality_sums(q_offsets, q_data, lengths),
    )


def batch_stats(batch: pa.RecordBatch | pa.Table) -> ReadStats:
    """Per-mate read statistics of a READS_SCHEMA batch (as made by iter_read_batches).

    Counts reads, bases, empty reads, min/max/mean length, the length histogram, GC
    fraction ((G+C)/(A+C+G+T+U), ambiguity codes excluded), N bases and mean Phred by
    position. Bases are expected upper-case, as iter_read_batches makes them. Merge the
    results of several batches with `ReadStats.merge`. Vectorised: no loop per read.

    Args:
        batch: reads in READS_SCHEMA (a RecordBatch, or a Table).

    Returns:
        ReadStats with one MateStats per mate present (0 single-end, 1 and 2 for pairs).

    Example:
        >>> stats = ReadStats()
        >>> for batch in iter_read_batches("R1.fq.gz", "R2.fq.gz"):  # doctest: +SKIP
        ...     stats = stats.merge(batch_stats(batch))
    """
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else None
        if batch is None:
            return ReadStats()
    mate = batch.column("mate").to_numpy()
    sequence, quality = batch.column("sequence"), batch.column("quality")
    result = ReadStats()
    for m in np.flatnonzero(np.bincount(mate)):
        rows = np.flatnonzero(mate == m)
        if rows[-1] - rows[0] + 1 == len(rows):  # contiguous, as iter_read_batches lays out
            seq, qual = sequence.slice(rows[0], len(rows)), quality.slice(rows[0], len(rows))
        else:
            seq, qual = sequence.take(rows), quality.take(rows)
        result.mates[int(m)] = _mate_stats(seq, qual)
    return result


# --------------------------------------------------------------------------------------
# Writing


# Lengths apart from the bytes, names prefix-coded, counters delta-coded: 7% faster to
# write, 6% smaller and faster to read than PLAIN (measured on 2x150 bp pairs); DuckDB,
# Polars and Spark read them.
_SHARD_ENCODINGS = {
    "read_id": "DELTA_BYTE_ARRAY",
    "fragment": "DELTA_BINARY_PACKED",
    "record": "DELTA_BINARY_PACKED",
    "sequence": "DELTA_LENGTH_BYTE_ARRAY",
    "quality": "DELTA_LENGTH_BYTE_ARRAY",
}


def write_read_shard(
    batch_or_table: pa.RecordBatch | pa.Table,
    path: str | Path,
    *,
    metadata: dict[str, str] | None = None,
) -> int:
    """Write reads to a zstd-compressed Parquet file at a local path, atomically.

    The file appears complete or not at all (written beside it, then renamed), so a crash
    never leaves a half shard that looks valid. String columns skip dictionary encoding and
    statistics, which cost time and give nothing for reads. zstd at level 1 (Arrow's
    default): higher levels cost more time for nothing on bases (about 3.2x either way).

    Args:
        batch_or_table: reads in READS_SCHEMA.
        path: local destination; parent directories are created.
        metadata: extra key/value pairs stored in the Parquet schema metadata.

    Returns:
        The number of rows written.

    Example:
        >>> write_read_shard(batch, "part-0.parquet", metadata={"sample": "S1"})  # doctest: +SKIP
        500000
    """
    table = (
        pa.Table.from_batches([batch_or_table])
        if isinstance(batch_or_table, pa.RecordBatch)
        else batch_or_table
    )
    if [(f.name, f.type) for f in table.schema] != [(f.name, f.type) for f in READS_SCHEMA]:
        raise ValueError(f"expected READS_SCHEMA columns {READS_SCHEMA.names}, got {table.schema}")
    if "://" in str(path):
        raise ValueError(f"write_read_shard writes local files only, got {path}")
    path = Path(path)
    meta = dict(table.schema.metadata or {})
    meta.update({str(k).encode(): str(v).encode() for k, v in (metadata or {}).items()})
    table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            use_dictionary=["mate"],
            column_encoding=_SHARD_ENCODINGS,
            write_statistics=["mate", "fragment", "record", "is_empty"],
        )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return table.num_rows
