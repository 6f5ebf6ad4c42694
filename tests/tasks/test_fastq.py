"""Tests for reading FASTQ (tasks/fastq.py, fastqrecords.py, inflate.py): parse, pair, validate.

Generated data covers the edge cases; the real files in the shared data directory
(HELIXFLOW_SHARED_DATA, default <repo>/../shared/data) pin exact counts. Those tests skip
when the directory is absent, except under CI=true, where they fail.
"""

from __future__ import annotations

import functools
import gzip
import re
import subprocess
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from helixflow.errors import InputError
from helixflow.tasks import fastqrecords
from helixflow.tasks.fastq import iter_read_batches
from helixflow.tasks.inflate import open_fastq
from helixflow.tasks.reads import READS_SCHEMA
from helixflow.tasks.readstats import batch_stats
from tests.conftest import require_tool

Record = tuple[str, str, str]  # header line without '@', sequence, quality


# --------------------------------------------------------------------------------------
# Helpers


def fastq_text(records: Sequence[Record], newline: str = "\n") -> bytes:
    """Records as FASTQ bytes."""
    lines = []
    for header, seq, qual in records:
        lines += [f"@{header}", seq, "+", qual]
    return (newline.join(lines) + newline).encode()


@functools.cache
def random_records(
    n: int, seed: int = 0, max_len: int = 60, prefix: str = "r", suffix: str = ""
) -> tuple[Record, ...]:
    """Reads of random length (some empty), random bases and full-range Phred+33 qualities
    (so quality lines also start with '@' or '+'), names with comments."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(0, max_len + 1)) if i % 11 else 0
        seq = "".join(rng.choice(list("ACGTN"), length))
        qual = "".join(chr(int(c)) for c in rng.integers(33, 127, length))
        comment = " 1:N:0:ACGT" if i % 3 == 0 else ("\tx=1" if i % 3 == 1 else "")
        out.append((f"{prefix}{i}{suffix}{comment}", seq, qual))
    return tuple(out)


def read_name(header: str) -> str:
    """The reference rule: up to the first space or tab, without a trailing /1 or /2."""
    name = re.split(r"[ \t]", header, maxsplit=1)[0]
    return name[:-2] if len(name) >= 3 and re.search(r"/[12]$", name) else name


def reference_parse(path: Path) -> list[tuple[str, str, str]]:
    """A deliberately simple parser to check against: (read_id, sequence, quality)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode().split("\n")
    if raw.endswith(b"\n"):
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    return [
        (read_name(lines[i][1:]), lines[i + 1].upper(), lines[i + 3])
        for i in range(0, len(lines) - len(lines) % 4, 4)
    ]


def collect(*args: object, **kwargs: object) -> pa.Table:
    """All batches of iter_read_batches as one table (checking each batch's schema)."""
    batches = list(iter_read_batches(*args, **kwargs))  # type: ignore[arg-type]
    for batch in batches:
        assert batch.schema.equals(READS_SCHEMA)
    return pa.Table.from_batches(batches, schema=READS_SCHEMA)


def rows(table: pa.Table, mate: int) -> list[tuple[str, str, str]]:
    """(read_id, sequence, quality) of one mate, in fragment order."""
    t = table.filter(pc.equal(table["mate"], mate)).sort_by("fragment")
    return list(
        zip(
            t["read_id"].to_pylist(),
            t["sequence"].to_pylist(),
            t["quality"].to_pylist(),
            strict=True,
        )
    )


def gz(data: bytes) -> bytes:
    """Gzip quickly (gzip.compress defaults to level 9, slow on big test inputs)."""
    return gzip.compress(data, compresslevel=1)


def write(path: Path, data: bytes) -> Path:
    """Write `data` to `path` and return the path."""
    path.write_bytes(data)
    return path


def raises_input_error(*args: object, **kwargs: object) -> InputError:
    """Run iter_read_batches to the end and return the InputError it raised."""
    with pytest.raises(InputError) as info:
        for _ in iter_read_batches(*args, **kwargs):  # type: ignore[arg-type]
            pass
    return info.value


@pytest.fixture
def no_thread_leak() -> Iterator[None]:
    """Fail if a test leaves reader/parser threads running."""
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.name.startswith("helixflow")]
    assert not left, f"threads still running: {left}"


# --------------------------------------------------------------------------------------
# Parsing and layout


def test_single_end_round_trips_byte_for_byte(tmp_path: Path, no_thread_leak: None) -> None:
    records = random_records(3000, suffix="/1")
    path = write(tmp_path / "reads.fq.gz", gz(fastq_text(records)))
    table = collect(str(path), batch_size=1000)
    assert table.num_rows == 3000
    assert rows(table, 0) == reference_parse(path)
    assert table["record"].to_pylist() == list(range(1, 3001))
    assert table["fragment"].to_pylist() == list(range(3000))
    assert table["is_empty"].to_pylist() == [len(s) == 0 for _, s, _ in records]
    assert table["read_id"][1].as_py() == "r1"  # comment and /1 dropped


def test_paired_batches_hold_mate1_rows_then_mate2_rows(tmp_path: Path) -> None:
    r1 = write(tmp_path / "R1.fq", fastq_text(random_records(20, seed=1, suffix="/1")))
    r2 = write(tmp_path / "R2.fq", fastq_text(random_records(20, seed=2, suffix="/2")))
    batches = list(iter_read_batches(str(r1), str(r2), batch_size=7))
    assert [b.num_rows for b in batches] == [14, 14, 12]
    for first, batch in zip([0, 7, 14], batches, strict=True):
        n = batch.num_rows // 2
        assert batch["mate"].to_pylist() == [1] * n + [2] * n
        frags = list(range(first, first + n))
        assert batch["fragment"].to_pylist() == frags + frags
        assert batch["record"].to_pylist() == [f + 1 for f in frags] * 2
        ids = batch["read_id"].to_pylist()
        assert ids[:n] == ids[n:] == [f"r{f}" for f in frags]
    table = pa.Table.from_batches(batches)
    assert rows(table, 1) == reference_parse(r1)
    assert rows(table, 2) == reference_parse(r2)


def _pair_files(directory: Path, n: int) -> tuple[Path, Path]:
    """Gzipped R1/R2 files of `n` random reads each (names pair up)."""
    r1 = write(directory / "R1.fq.gz", gz(fastq_text(random_records(n, 3, 150))))
    r2 = write(directory / "R2.fq.gz", gz(fastq_text(random_records(n, 4, 150))))
    return r1, r2


@pytest.fixture(scope="module")
def big_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """~2 MB of FASTQ per mate: many 256 KiB blocks, so records straddle block edges."""
    return _pair_files(tmp_path_factory.mktemp("big"), 12_000)


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """~0.5 MB per mate: still a few blocks, few enough records for tiny batches."""
    return _pair_files(tmp_path_factory.mktemp("small"), 3_000)


@pytest.mark.parametrize(
    ("files", "batch_size"),
    [("small_pair", 1), ("small_pair", 7), ("big_pair", 1000), ("big_pair", 1_000_000)],
)
def test_batch_size_does_not_change_the_result(
    request: pytest.FixtureRequest, files: str, batch_size: int
) -> None:
    r1, r2 = request.getfixturevalue(files)
    reference = collect(str(r1), str(r2))
    table = collect(str(r1), str(r2), batch_size=batch_size)
    assert table.num_rows == reference.num_rows == 2 * len(reference_parse(r1))
    assert rows(table, 1) == rows(reference, 1) == reference_parse(r1)
    assert rows(table, 2) == rows(reference, 2) == reference_parse(r2)
    assert table.sort_by([("fragment", "ascending"), ("mate", "ascending")]).equals(
        reference.sort_by([("fragment", "ascending"), ("mate", "ascending")])
    )


def test_batches_let_go_of_are_reused_without_corrupting_later_ones(
    small_pair: tuple[Path, Path],
) -> None:
    # Keeping only Python copies lets each batch's buffers be recycled for later batches.
    r1, r2 = small_pair
    seen: list[dict[str, object]] = []
    for batch in iter_read_batches(str(r1), str(r2), batch_size=500):
        seen += batch.to_pylist()
    assert len(seen) == 6000
    by_mate = {
        m: sorted((r for r in seen if r["mate"] == m), key=lambda r: r["fragment"]) for m in (1, 2)
    }
    for mate, path in ((1, r1), (2, r2)):
        got = [(r["read_id"], r["sequence"], r["quality"]) for r in by_mate[mate]]
        assert got == reference_parse(path)


def test_batch_size_one_gives_one_fragment_per_batch(tmp_path: Path) -> None:
    path = write(tmp_path / "r.fq", fastq_text(random_records(25)))
    batches = list(iter_read_batches(str(path), batch_size=1))
    assert [b.num_rows for b in batches] == [1] * 25
    assert pa.Table.from_batches(batches).equals(collect(str(path)))


def test_interleaved_pairs(tmp_path: Path) -> None:
    mates1 = random_records(50, seed=5, suffix="/1")
    mates2 = random_records(50, seed=6, suffix="/2")
    interleaved = [r for pair in zip(mates1, mates2, strict=True) for r in pair]
    path = write(tmp_path / "il.fq", fastq_text(interleaved))
    table = collect(str(path), interleaved=True, batch_size=8)
    assert table.num_rows == 100
    ref = reference_parse(path)
    assert rows(table, 1) == ref[0::2]
    assert rows(table, 2) == ref[1::2]
    first = table.slice(0, 16)
    assert first["record"].to_pylist() == [1, 3, 5, 7, 9, 11, 13, 15, 2, 4, 6, 8, 10, 12, 14, 16]


def test_gzip_bgzip_multimember_and_plain_give_identical_tables(tmp_path: Path) -> None:
    text = fastq_text(random_records(5000, seed=7, max_len=150))
    plain = write(tmp_path / "plain.fq.gz", text)  # misleading name: detection is by magic
    gzipped = write(tmp_path / "gz.txt", gz(text))
    cut = len(text) // 3 + 17  # members split mid-record
    multi = write(tmp_path / "multi.fq.gz", gz(text[:cut]) + gz(text[cut:]))
    expected = collect(str(plain))
    assert expected.num_rows == 5000
    assert collect(str(gzipped)).equals(expected)
    assert collect(str(multi)).equals(expected)
    bgzip = require_tool("bgzip")
    bg = tmp_path / "bg.fq.gz"
    with bg.open("wb") as out:
        subprocess.run([bgzip, "-c"], input=text, stdout=out, check=True)
    assert bg.read_bytes()[12:14] == b"BC"  # really BGZF
    assert collect(str(bg)).equals(expected)


def test_crlf_line_endings_are_accepted(tmp_path: Path) -> None:
    records = random_records(200, seed=8)
    lf = write(tmp_path / "lf.fq", fastq_text(records))
    crlf = write(tmp_path / "crlf.fq", fastq_text(records, newline="\r\n"))
    assert collect(str(crlf)).equals(collect(str(lf)))


def test_lower_case_bases_are_upper_cased(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.fq", fastq_text([("a", "acgtNnRy", "IIIIIIII"), ("b", "ACGT", "IIII")])
    )
    assert collect(str(path))["sequence"].to_pylist() == ["ACGTNNRY", "ACGT"]


def test_empty_reads_are_kept_and_flagged(tmp_path: Path) -> None:
    records = [("first", "", ""), ("mid", "ACGT", "IIII"), ("e2", "", ""), ("last", "", "")]
    path = write(tmp_path / "r.fq", fastq_text(records))
    table = collect(str(path))
    assert table["is_empty"].to_pylist() == [True, False, True, True]
    assert table["sequence"].to_pylist() == ["", "ACGT", "", ""]
    assert table["quality"].to_pylist() == ["", "IIII", "", ""]


def test_missing_final_newline_and_trailing_blank_lines_are_accepted(tmp_path: Path) -> None:
    text = fastq_text(random_records(30, seed=9))
    expected = collect(str(write(tmp_path / "ok.fq", text)))
    assert collect(str(write(tmp_path / "no_nl.fq", text.rstrip(b"\n")))).equals(expected)
    assert collect(str(write(tmp_path / "blank.fq", text + b"\n\n"))).equals(expected)


def test_long_reads(tmp_path: Path) -> None:
    rng = np.random.default_rng(26)

    def letters(alphabet: bytes, n: int) -> str:
        return rng.choice(np.frombuffer(alphabet, np.uint8), n).tobytes().decode()

    records = [
        (f"long{i}", letters(b"ACGT", n), letters(b"!5I", n))
        for i, n in enumerate(rng.integers(1_000, 60_000, 60))
    ]
    path = write(tmp_path / "long.fq.gz", gz(fastq_text(records)))
    table = collect(str(path), batch_size=25)
    assert rows(table, 0) == reference_parse(path)
    stats = batch_stats(table).to_dict()["0"]
    assert stats["max_length"] == max(len(s) for _, s, _ in records)
    assert len(stats["mean_quality_by_position"]) == stats["max_length"]


def test_quality_lines_starting_with_at_or_plus_are_not_headers(tmp_path: Path) -> None:
    records = [("a", "ACGT", "@@@@"), ("b", "ACG", "+++"), ("c", "A", "@")]
    path = write(tmp_path / "r.fq", fastq_text(records))
    assert collect(str(path))["quality"].to_pylist() == ["@@@@", "+++", "@"]


def test_casava_and_slash_names_pair_up(tmp_path: Path) -> None:
    r1 = write(
        tmp_path / "R1.fq",
        fastq_text([("M:1:FC:1:1:10:20 1:N:0:ATCACG", "AC", "II"), ("x/1", "A", "I")]),
    )
    r2 = write(
        tmp_path / "R2.fq",
        fastq_text([("M:1:FC:1:1:10:20 2:N:0:ATCACG", "GT", "II"), ("x/2", "C", "I")]),
    )
    table = collect(str(r1), str(r2))
    assert table["read_id"].to_pylist() == ["M:1:FC:1:1:10:20", "x", "M:1:FC:1:1:10:20", "x"]


def test_closing_early_stops_the_threads(tmp_path: Path, no_thread_leak: None) -> None:
    path = write(tmp_path / "r.fq.gz", gz(fastq_text(random_records(5000, 10))))
    it = iter_read_batches(str(path), batch_size=10)
    next(it)
    it.close()  # type: ignore[attr-defined]


def test_fsspec_uri(no_thread_leak: None) -> None:
    text = fastq_text(random_records(100, seed=11))
    fs = fsspec.filesystem("memory")
    fs.pipe("/helixflow-test/r.fq.gz", gz(text))
    try:
        table = collect("memory://helixflow-test/r.fq.gz")
        assert table.num_rows == 100
        with open_fastq("memory://helixflow-test/r.fq.gz") as f:
            assert f.read() == text
        with pytest.raises(InputError, match="no such file"):
            collect("memory://helixflow-test/missing.fq.gz")
    finally:
        fs.rm("/helixflow-test", recursive=True)


def test_open_fastq_decompresses_and_closes(tmp_path: Path, no_thread_leak: None) -> None:
    text = fastq_text(random_records(2000, seed=12, max_len=150))
    path = write(tmp_path / "r.data", gz(text))
    with open_fastq(str(path)) as f:
        assert f.readline() == text.split(b"\n")[0] + b"\n"
        assert f.readline() + f.read() == text[text.index(b"\n") + 1 :]
    assert f.closed
    with open_fastq(str(write(tmp_path / "plain", text))) as f:
        assert f.read() == text


# --------------------------------------------------------------------------------------
# Validation: every malformed input is an InputError naming the file and record

GOOD = ("ok", "ACGT", "IIII")


def _bad_file_cases() -> list[object]:
    """(case, file content, bad record, message fragment) for each kind of malformed input."""
    good = fastq_text([GOOD])
    cases = [
        ("missing @", good + b"r2\nACGT\n+\nIIII\n", 2, "expected a header line starting with '@'"),
        ("fasta", b">chr1\nACGT\n+\nIIII\n", 1, "this looks like FASTA"),
        ("missing +", good * 2 + b"@r3\nACGT\nIIII\n" + good, 3, "expected a '+' line"),
        ("length", good + b"@r2\nACGT\n+\nIII\n", 2, "quality length 3 != sequence length 4"),
        ("quality low", good + b"@r2\nACGT\n+\nII I\n", 2, "(byte 32) at position 3"),
        ("quality high", good * 3 + b"@r4\nACGT\n+\nIII\x7f\n", 4, "outside Phred+33"),
        ("base", good + b"@r2\nACXT\n+\nIIII\n", 2, "invalid base 'X' (byte 88) at position 3"),
        ("base dot", good + b"@r2\nAC.T\n+\nIIII\n", 2, "invalid base '.'"),
        ("empty name", good + b"@ comment\nACGT\n+\nIIII\n", 2, "empty read name"),
        ("plus name", good + b"@r2\nACGT\n+r9\nIIII\n", 2, "does not repeat the header"),
        ("mid-record", good * 2 + b"@r3\nACGT\n", 3, "ends in the middle of a record (2 of 4"),
        ("after plus", good + b"@r2\nACGT\n+", 2, "(3 of 4 lines)"),
        ("empty file", b"", 1, "file is empty"),
        ("blank lines", b"\n\n", 1, "file is empty"),
        ("earliest", good + b"@r2\nACGT\n+\nII\x01I\n" + good + b"@r4\nACGT\nIIII\n", 2, "byte 1"),
        ("non-UTF-8", good + b"@r\xff2\nACGT\n+\nIIII\n", 2, "not valid UTF-8"),
    ]
    return [pytest.param(*case, id=case[0]) for case in cases]


@pytest.mark.parametrize(("case", "data", "record", "message"), _bad_file_cases())
def test_malformed_input_names_file_and_record(
    tmp_path: Path, case: str, data: bytes, record: int, message: str, no_thread_leak: None
) -> None:
    path = write(tmp_path / "bad.fq", data)
    error = raises_input_error(str(path))
    assert (error.path, error.record) == (str(path), record), str(error)
    assert message in error.detail
    assert str(error).startswith(f"{path}: record {record}: ")
    assert "\n" not in str(error)
    if case in ("empty file", "blank lines"):
        return
    # The same in a gzip file, deep inside a larger input, with batch edges around it.
    prefix = fastq_text(random_records(5000, seed=13))
    deep = write(tmp_path / "bad.fq.gz", gz(prefix + data))
    error = raises_input_error(str(deep), batch_size=999)
    assert (error.path, error.record) == (str(deep), 5000 + record), str(error)
    assert message in error.detail


def test_cr_only_line_ends_and_endless_lines_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mac = write(tmp_path / "mac.fq", b"@r\rACGT\r+\rIIII\r")
    error = raises_input_error(str(mac))
    assert (error.record, error.detail) == (
        1,
        "lines end in CR only (classic Mac); FASTQ needs LF or CRLF",
    )
    monkeypatch.setattr(fastqrecords, "_MAX_LINE", 1000)  # a runaway line must not fill memory
    big = write(tmp_path / "big.fq", fastq_text([GOOD] * 3) + b"@r4\r" + b"ACGT\r" * 2000)
    error = raises_input_error(str(big))
    assert error.record == 4 and error.detail.startswith("no line feed in")


def test_error_in_mate_file_names_that_file(tmp_path: Path) -> None:
    records = random_records(300, seed=14)
    r1 = write(tmp_path / "R1.fq", fastq_text(records))
    bad = list(records)
    bad[207] = (bad[207][0], bad[207][1] + "A", bad[207][2])
    r2 = write(tmp_path / "R2.fq", fastq_text(bad))
    error = raises_input_error(str(r1), str(r2), batch_size=50)
    assert (error.path, error.record) == (str(r2), 208)
    assert "!= sequence length" in error.detail


@functools.cache
def _reads_text(n: int, seed: int = 0) -> bytes:
    """FASTQ text of `n` random reads up to 150 bp."""
    return fastq_text(random_records(n, seed=seed, max_len=150))


@pytest.mark.parametrize("fraction", [0.0005, 0.31, 0.77, 0.999])
def test_truncated_gzip_says_so_and_where(tmp_path: Path, fraction: float) -> None:
    data = gz(_reads_text(20_000, seed=15))
    cut = int(len(data) * fraction)
    done = zlib.decompressobj(31).decompress(data[:cut]).count(b"\n") // 4
    path = write(tmp_path / "cut.fq.gz", data[:cut])
    error = raises_input_error(str(path), batch_size=3000)
    assert error.detail == f"truncated gzip stream after record {done}"
    assert error.record == done + 1
    assert error.path == str(path)


def test_truncated_gzip_exactly_at_a_record_boundary(tmp_path: Path) -> None:
    text = _reads_text(3000, seed=25)
    boundary = [m.start() for m in re.finditer(b"\n@r", text)][1000] + 1  # after record 1001
    head = zlib.compressobj(6, zlib.DEFLATED, 31)
    data = head.compress(text[:boundary]) + head.flush(zlib.Z_SYNC_FLUSH)
    path = write(tmp_path / "cut.fq.gz", data)
    error = raises_input_error(str(path))
    assert (error.detail, error.record) == ("truncated gzip stream after record 1001", 1002)


def test_gzip_trailer_cut_or_corrupt(tmp_path: Path) -> None:
    data = gz(_reads_text(500, seed=16))
    cut = write(tmp_path / "cut.fq.gz", data[:-4])
    error = raises_input_error(str(cut))
    assert (error.detail, error.record) == ("truncated gzip stream after record 500", 501)
    bad_crc = bytearray(data)
    bad_crc[-8] ^= 0xFF
    corrupt = write(tmp_path / "crc.fq.gz", bytes(bad_crc))
    error = raises_input_error(str(corrupt))
    assert (error.detail, error.record) == (
        "corrupt gzip stream (CRC check failed) after record 500",
        501,
    )
    for junk in (b"not gzip", b"x"):
        garbage = write(tmp_path / "garbage.fq.gz", data + junk)
        error = raises_input_error(str(garbage))
        assert (
            error.detail == "corrupt gzip stream (data after the last gzip member) after record 500"
        )


def test_open_fastq_reports_truncated_gzip(tmp_path: Path) -> None:
    data = gz(_reads_text(2000, seed=17))
    path = write(tmp_path / "cut.fq.gz", data[: len(data) // 2])
    with open_fastq(str(path)) as f, pytest.raises(InputError, match="truncated gzip stream"):
        f.read()


def test_truncated_gzip_in_mate_file(tmp_path: Path) -> None:
    text = _reads_text(4000, seed=18)
    r1 = write(tmp_path / "R1.fq.gz", gz(text))
    data = gz(text)
    r2 = write(tmp_path / "R2.fq.gz", data[: len(data) // 2])
    error = raises_input_error(str(r1), str(r2))
    assert error.path == str(r2)
    assert error.detail.startswith("truncated gzip stream after record")


@pytest.mark.parametrize(
    ("n1", "n2", "batch_size"), [(10, 12, 4), (12, 10, 4), (8, 9, 4), (9, 8, 100)]
)
def test_mate_files_with_different_record_counts(
    tmp_path: Path, n1: int, n2: int, batch_size: int
) -> None:
    records = random_records(max(n1, n2), seed=19)
    r1 = write(tmp_path / "R1.fq", fastq_text(records[:n1]))
    r2 = write(tmp_path / "R2.fq", fastq_text(records[:n2]))
    error = raises_input_error(str(r1), str(r2), batch_size=batch_size)
    short = r1 if n1 < n2 else r2
    other = r2 if n1 < n2 else r1
    assert (error.path, error.record) == (str(short), min(n1, n2) + 1)
    assert error.detail == (
        f"file ends after record {min(n1, n2)} but its mate file {other.name} has more records"
    )


def test_mate_name_mismatch(tmp_path: Path) -> None:
    records = random_records(40, seed=20, suffix="/1")
    mates = [(h.replace("/1", "/2"), s, q) for h, s, q in records]
    mates[33] = ("other/2", "A", "I")
    r1 = write(tmp_path / "R1.fq", fastq_text(records))
    r2 = write(tmp_path / "R2.fq", fastq_text(mates))
    error = raises_input_error(str(r1), str(r2), batch_size=16)
    assert (error.path, error.record) == (str(r2), 34)
    assert error.detail == "read name 'other' does not match its mate R1.fq record 34"


def test_interleaved_errors(tmp_path: Path) -> None:
    odd = write(
        tmp_path / "odd.fq", fastq_text([("a/1", "A", "I"), ("a/2", "C", "I"), ("b/1", "G", "I")])
    )
    error = raises_input_error(str(odd), interleaved=True)
    assert (error.record, error.detail) == (3, "interleaved file ends with an unpaired record")
    swapped = write(tmp_path / "sw.fq", fastq_text([("a/1", "A", "I"), ("b/2", "C", "I")]))
    error = raises_input_error(str(swapped), interleaved=True)
    assert (error.record, error.detail) == (
        2,
        "read name 'b' does not match its mate sw.fq record 1",
    )


def test_missing_inputs(tmp_path: Path, no_thread_leak: None) -> None:
    missing = str(tmp_path / "nope.fq.gz")
    with pytest.raises(InputError, match="no such file") as info:
        open_fastq(missing)
    assert info.value.path == missing and info.value.record is None
    with pytest.raises(InputError, match="no such file"):
        collect(missing)
    good = write(tmp_path / "ok.fq", fastq_text([GOOD]))
    with pytest.raises(InputError, match="no such file") as info:
        collect(str(good), missing)
    assert info.value.path == missing
    with pytest.raises(InputError, match="is a directory"):
        collect(str(tmp_path))


def test_other_compressions_are_refused_clearly(tmp_path: Path) -> None:
    import bz2

    path = write(tmp_path / "r.fq.bz2", bz2.compress(fastq_text([GOOD])))
    with pytest.raises(InputError, match="bzip2-compressed input is not supported") as info:
        collect(str(path))
    assert info.value.hint and "gzip" in info.value.hint


def test_bad_arguments(tmp_path: Path) -> None:
    path = str(write(tmp_path / "r.fq", fastq_text([GOOD])))
    with pytest.raises(ValueError, match="interleaved"):
        iter_read_batches(path, path + "2", interleaved=True)
    with pytest.raises(ValueError, match="batch_size"):
        iter_read_batches(path, batch_size=0)
    with pytest.raises(ValueError, match="same file"):
        iter_read_batches(path, path)


# --------------------------------------------------------------------------------------
# Real files (shared data)


def test_shared_ecoli_1k_pairs(shared_data: Path) -> None:
    reads = shared_data / "reads"
    r1, r2 = reads / "ecoli_mg1655_1k_R1.fq.gz", reads / "ecoli_mg1655_1k_R2.fq.gz"
    table = collect(str(r1), str(r2), batch_size=500)
    assert table.num_rows == 2 * 2054
    assert rows(table, 1) == reference_parse(r1)
    assert rows(table, 2) == reference_parse(r2)
    stats = batch_stats(table).to_dict()
    assert (stats["1"]["bases"], stats["1"]["min_length"], stats["1"]["max_length"]) == (
        178211,
        30,
        100,
    )
    assert stats["2"]["bases"] == 175739


def test_shared_ecoli_10k_pairs(shared_data: Path) -> None:
    reads = shared_data / "reads"
    table = collect(
        str(reads / "ecoli_mg1655_10k_R1.fastq.gz"), str(reads / "ecoli_mg1655_10k_R2.fastq.gz")
    )
    assert table.num_rows == 2 * 28_160


def test_shared_lambda_simulated(shared_data: Path) -> None:
    reads = shared_data / "reads"
    r1, r2 = reads / "lambda_simulated_R1.fq", reads / "lambda_simulated_R2.fq"
    table = collect(str(r1), str(r2), batch_size=3000)
    assert table.num_rows == 20_000
    assert rows(table, 1) == reference_parse(r1)
    assert rows(table, 2) == reference_parse(r2)
    stats = batch_stats(table).to_dict()
    assert min(s["min_length"] for s in stats.values()) == 40
    assert max(s["max_length"] for s in stats.values()) == 366


def test_shared_cutadapt_single_end(shared_data: Path) -> None:
    path = shared_data / "reads" / "cutadapt_illumina_adapters.fastq.gz"
    table = collect(str(path))
    assert table.num_rows == 100
    assert set(table["mate"].to_pylist()) == {0}
    assert rows(table, 0) == reference_parse(path)
    assert table["read_id"][0].as_py() == "SEQ:1:1101:9010:3891#0"  # /1 and comment gone
    assert set(pc.binary_length(table["sequence"]).to_pylist()) == {101}


def test_shared_fastp_pairs_with_empty_read_and_no_final_newline(shared_data: Path) -> None:
    reads = shared_data / "reads"
    r1, r2 = reads / "fastp_R1.fq", reads / "fastp_R2.fq"
    assert not r1.read_bytes().endswith(b"\n")
    table = collect(str(r1), str(r2))
    assert table.num_rows == 18
    first = table.slice(0, 1).to_pylist()[0]
    assert (first["mate"], first["sequence"], first["is_empty"]) == (1, "", True)
    assert table["is_empty"].to_pylist().count(True) == 1
    assert rows(table, 1) == reference_parse(r1)


def test_shared_cheese_metagenome_mix(shared_data: Path) -> None:
    reads = shared_data / "reads"
    table = collect(
        str(reads / "cheese_metagenome_plus_ecoli_R1.fq.gz"),
        str(reads / "cheese_metagenome_plus_ecoli_R2.fq.gz"),
    )
    assert table.num_rows == 40_000
    ids = table.filter(pc.equal(table["mate"], 1))["read_id"]
    assert pc.sum(pc.starts_with(ids, "SRR3927310.")).as_py() == 10_000
