"""FASTQ files to read batches: mates paired, records validated, READS_SCHEMA out.

`iter_read_batches` is the entry point. The work is in three modules, each on its own:
`tasks.inflate` (open a path or fsspec URI, inflate gzip on a thread), `tasks.fastqrecords`
(split the bytes into whole records, parse and validate them, errors naming file and
record) and this one (pair mates, assemble batches, prefetch). Statistics are in
`tasks.readstats`, the schema and the shard writer in `tasks.reads`.

Pure functions (NumPy/Arrow in and out, no Prefect) so they can be tested and benchmarked on
their own; the Prefect tasks (tasks/ingest.py) wrap them.

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
    ...     stats = batch_stats(batch)  # tasks.readstats
    ...     write_read_shard(batch, "shard-0.parquet")  # tasks.reads
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from helixflow.errors import InputError
from helixflow.tasks.fastqrecords import Chunk, Parsed, RecordReader, Records, Scratch
from helixflow.tasks.reads import READS_SCHEMA, string_parts

_HINT_PAIRS = (
    "mate files must hold the same fragments in the same order; "
    "`seqkit pair -1 R1 -2 R2` keeps the reads found in both"
)
_END = object()  # the last item of a prefetched stream


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

    def add(self, mate: int, parsed: Parsed, start: int, stop: int) -> None:
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


def _count_error(short: RecordReader, long: RecordReader) -> InputError:
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

    def __init__(self, readers: list[RecordReader]) -> None:
        self.readers = readers
        self.scratch = Scratch()
        self._record_bytes = 1  # text per record, as last seen

    def _step(self, remaining: int) -> int:
        """Records to read next: a sub-chunk, smaller for long reads, at most `remaining`."""
        return min(remaining, _SUB_CHUNK, max(64, _SUB_CHUNK_BYTES // self._record_bytes))

    def _read(
        self, reader: RecordReader, k: int, order: bool = False
    ) -> tuple[Chunk, Parsed | None]:
        """Up to `k` validated records; raises the chunk's end-of-file error after them."""
        chunk = reader.read_into(self.scratch, k)
        parsed = None
        if chunk.n:
            self._record_bytes = max(1, chunk.size // chunk.n)
            records = Records(chunk, self.scratch)
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
    readers: list[RecordReader] = []
    try:
        for uri in uris:
            readers.append(RecordReader(uri, opts))
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

    Returns:
        An iterator of READS_SCHEMA record batches, read ahead in a background thread.

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
