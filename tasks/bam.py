"""Writing BAM: SAM header and read group, coordinate sort, merge + index, unaligned BAM.

Pure functions on local paths (no Prefect); the unaligned-BAM task at the end wraps one.
`tasks.align` formats aligned records and streams them through `SortedBamSink`, then
merges a sample's sorted parts with `merge_bams`. Every file is written atomically
(`helixflow.files.atomic_path`). samtools runs with --no-PG, so the same records give
the same bytes wherever they are written.

Example:
    >>> rg = {"ID": "S1", "SM": "S1", "LB": "lib1", "PL": "ILLUMINA"}
    >>> unaligned_bam(batch, Path("S1.unaligned.bam"), rg)  # doctest: +SKIP
    500000
    >>> merge_bams([Path("shard-0.bam"), Path("shard-1.bam")], Path("S1.bam"))  # doctest: +SKIP
    PosixPath('S1.bam')
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
import pysam
from prefect.assets import materialize

from helixflow.artifacts import Artifact
from helixflow.caching import stage_options
from helixflow.errors import HelixflowError, InputError
from helixflow.files import atomic_path
from helixflow.store import Store
from helixflow.tables import as_batch, publish_file, read_table

UNALIGNED_VERSION = "3"
"""Bump when the unaligned BAM's bytes change for the same input (goes into cache keys)."""
READ_GROUP_KEYS = ("ID", "SM", "LB", "PL")
BAM_MEDIA_TYPE = "application/vnd.sam.bam"
_SAM_SAFE = str.maketrans({"U": "T", "u": "t"})  # SAM SEQ has no U


# --------------------------------------------------------------------------------------
# Batches and headers


@dataclass(frozen=True)
class ReadLists:
    """A batch as Python lists, mates split: names[i], seq1[i], qual1[i] (+ seq2, qual2)."""

    names: list[str]
    seq1: list[str]
    qual1: list[str]
    seq2: list[str] | None
    qual2: list[str] | None

    @property
    def paired(self) -> bool:
        return self.seq2 is not None

    @property
    def n_reads(self) -> int:
        return len(self.names) * (2 if self.paired else 1)


def split_batch(batch: pa.RecordBatch | pa.Table) -> ReadLists:
    """Check the batch layout (single-end, or mate 1 rows then mate 2 rows) and split it.

    SAM has no U: U/u become T/t on the way (the shard keeps them).

    Args:
        batch: reads in READS_SCHEMA.

    Returns:
        ReadLists: names and per-mate sequences and qualities as Python lists.

    Raises:
        ValueError: a column is missing or the rows are not in that layout.
    """
    for name in ("read_id", "mate", "sequence", "quality"):
        if name not in batch.schema.names:
            raise ValueError(f"batch lacks column {name!r}; expected tasks.reads.READS_SCHEMA")
    mate = batch.column("mate").to_pylist()
    names = batch.column("read_id").to_pylist()
    sequence = batch.column("sequence")
    seqs = sequence.to_pylist()
    if pc.any(pc.match_substring_regex(sequence, "[Uu]")).as_py():  # rare: skip the loop
        seqs = [s.translate(_SAM_SAFE) for s in seqs]
    quals = batch.column("quality").to_pylist()
    n = len(mate)
    if not n or not any(mate):
        if any(mate):
            raise ValueError("batch mixes single-end (mate 0) and paired rows")
        return ReadLists(names, seqs, quals, None, None)
    half = n // 2
    if n % 2 or any(m != 1 for m in mate[:half]) or any(m != 2 for m in mate[half:]):
        raise ValueError("a paired batch must hold all mate-1 rows, then the mate-2 rows")
    if names[:half] != names[half:]:
        raise ValueError("mate-1 and mate-2 rows are not in the same fragment order")
    return ReadLists(names[:half], seqs[:half], quals[:half], seqs[half:], quals[half:])


def _check_read_group(read_group: dict[str, str]) -> str:
    """The @RG header line; raises ValueError unless ID, SM, LB, PL are given."""
    lacking = [key for key in READ_GROUP_KEYS if not read_group.get(key)]
    if lacking:
        raise ValueError(f"read_group needs {', '.join(READ_GROUP_KEYS)}; missing {lacking}")
    for key, value in read_group.items():
        if len(key) != 2 or any(c in str(value) for c in "\t\n\r"):
            raise ValueError(f"read group field {key}={value!r} is not a valid SAM @RG tag")
    return "@RG\t" + "\t".join(f"{k}:{v}" for k, v in read_group.items())


def sam_header(sq: list[tuple[str, int]], read_group: dict[str, str], program: str) -> str:
    """SAM header text: @HD, one @SQ per contig, @RG and a @PG line.

    Args:
        sq: (name, length) of each reference contig, in order ([] for unaligned BAM).
        read_group: @RG fields; ID, SM, LB and PL are required.
        program: the whole @PG line.

    Returns:
        The header, one line per record, ending in a newline.
    """
    lines = ["@HD\tVN:1.6\tSO:unsorted"]
    lines += [f"@SQ\tSN:{name}\tLN:{length}" for name, length in sq]
    lines.append(_check_read_group(read_group))
    lines.append(program)
    return "\n".join(lines) + "\n"


def _sam_to_bam(sam: Path, out: Path, threads: int) -> None:
    """Convert a SAM file to BAM, atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pysam.view("--no-PG", "-@", str(max(1, threads)), "-b", "-o", str(tmp), str(sam),
                   catch_stdout=False)


@dataclass
class _TempSam:
    """A temporary SAM file beside the output (same file system), removed on exit."""

    out: Path

    def __enter__(self) -> tuple[Path, IO[str]]:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=".sam",
                                    dir=self.out.parent)
        self.path = Path(name)
        self.fh = os.fdopen(fd, "w", buffering=1 << 20)
        return self.path, self.fh

    def __exit__(self, *exc: object) -> None:
        if not self.fh.closed:
            self.fh.close()
        self.path.unlink(missing_ok=True)


def samtools_cli() -> str | None:
    """Path of the samtools command to use for sort/merge, or None to use pysam's copy.

    Debian's samtools compresses with libdeflate, pysam's bundled htslib with zlib, which
    costs 60% more CPU for the same BAM (measured: 3.1 s vs 5.0 s to write 300 k pairs).
    Set HELIXFLOW_SAMTOOLS=pysam to always use pysam.

    Returns:
        The samtools path found on PATH, or None when HELIXFLOW_SAMTOOLS=pysam or samtools
        is not installed.
    """
    if os.environ.get("HELIXFLOW_SAMTOOLS", "").lower() == "pysam":
        return None
    return shutil.which("samtools")


class SortedBamSink:
    """SAM text in, coordinate-sorted BAM out at `out` once `finish` returns.

    With the samtools command, the text streams into `samtools sort` on a pipe, which
    parses and sorts while the mappers work (as `minimap2 | samtools sort` does). Without
    it, the text goes to a temporary SAM file beside the output, sorted by `pysam.sort`.
    `out` is written in place: give it the temporary path of `atomic_path`.

    Example:
        >>> with atomic_path(bam) as tmp, SortedBamSink(tmp, 2, 1) as sink:  # doctest: +SKIP
        ...     sink.write(header + records)
        ...     sink.finish()
    """

    def __init__(self, out: Path, threads: int, level: int) -> None:
        self.out = out
        self.args = ["sort", "--no-PG", "-@", str(max(1, threads)), "-m", "256M",
                     "-l", str(level),
                     "-T", f"{out}.sort", "-O", "bam", "-o", str(out)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.sam: Path | None = None
        exe = samtools_cli()
        if exe is not None:
            self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
            self.proc = subprocess.Popen([exe, *self.args, "-"], stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=self.errors)
            assert self.proc.stdin is not None
            self.fh: IO[bytes] = self.proc.stdin
        else:
            fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".sam", dir=out.parent)
            self.sam = Path(name)
            self.fh = os.fdopen(fd, "wb", buffering=1 << 20)

    def write(self, text: str) -> None:
        try:
            self.fh.write(text.encode())
        except BrokenPipeError:
            self._failed()

    def _failed(self) -> None:
        assert self.proc is not None
        self.proc.wait()
        self.errors.seek(0)
        message = self.errors.read().decode(errors="replace").strip()
        raise RuntimeError(f"samtools sort failed ({self.proc.returncode}): {message}")

    def finish(self) -> None:
        """Close the input and wait for the sort to write the BAM."""
        try:
            self.fh.close()
        except BrokenPipeError:
            self._failed()
        if self.proc is not None:
            if self.proc.wait() != 0:
                self._failed()
        else:
            pysam.sort(*self.args[1:], str(self.sam), catch_stdout=False)

    def __enter__(self) -> SortedBamSink:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.errors.close()
        if not self.fh.closed:
            self.fh.close()
        if self.sam is not None:
            self.sam.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# Unaligned BAM


def unaligned_bam(batch: pa.RecordBatch | pa.Table, out: Path, read_group: dict[str, str]) -> int:
    """Write a batch as an unaligned BAM (mates adjacent, flags 77/141; 4 single-end).

    Keeps reads lossless before alignment, the GATK/Picard way: names, bases, qualities
    and the read group (ID, SM, LB, PL) travel together. It has no @SQ lines, so check
    it with `samtools quickcheck -u`.

    Args:
        batch: reads in READS_SCHEMA.
        out: BAM path to write (atomically).
        read_group: @RG fields; ID, SM, LB and PL are required.

    Returns:
        The number of records written.

    Example:
        >>> unaligned_bam(batch, Path("S1.unaligned.bam"), {"ID": "S1", "SM": "S1",
        ...     "LB": "lib1", "PL": "ILLUMINA"})  # doctest: +SKIP
        500000
    """
    reads = split_batch(batch)
    rg = f"\tRG:Z:{read_group.get('ID', '')}\n"
    header = sam_header([], read_group, "@PG\tID:helixflow-ubam\tPN:helixflow")
    header = header.replace("SO:unsorted", "SO:unsorted\tGO:query")
    with _TempSam(Path(out)) as (sam, fh):
        fh.write(header)
        if reads.paired:
            assert reads.seq2 is not None and reads.qual2 is not None
            for name, s1, q1, s2, q2 in zip(reads.names, reads.seq1, reads.qual1,
                                            reads.seq2, reads.qual2, strict=True):
                fh.write(f"{name}\t77\t*\t0\t0\t*\t*\t0\t0\t{s1 or '*'}\t{q1 or '*'}{rg}")
                fh.write(f"{name}\t141\t*\t0\t0\t*\t*\t0\t0\t{s2 or '*'}\t{q2 or '*'}{rg}")
        else:
            for name, s, q in zip(reads.names, reads.seq1, reads.qual1, strict=True):
                fh.write(f"{name}\t4\t*\t0\t0\t*\t*\t0\t0\t{s or '*'}\t{q or '*'}{rg}")
        fh.close()
        _sam_to_bam(sam, Path(out), threads=1)
    return reads.n_reads


# --------------------------------------------------------------------------------------
# Merging


def _sq_lines(path: Path) -> list[tuple[str, int]]:
    with pysam.AlignmentFile(str(path), "rb", check_sq=False) as bam:
        return [(sq["SN"], int(sq["LN"])) for sq in bam.header.to_dict().get("SQ", [])]


def merge_bams(parts: list[Path], out: Path, threads: int = 2, level: int = 6) -> Path:
    """Merge coordinate-sorted shard BAMs into one sorted BAM and index it (.bai).

    Read groups and program lines of the shards are combined (`samtools merge -c -p`);
    samtools adds no @PG line of its own (`--no-PG`: it would hold temporary paths), so
    the same parts give the same bytes wherever they are merged.

    Args:
        parts: sorted BAMs from align_batch, all against the same reference.
        out: merged BAM (written atomically); `out` + ".bai" is written too.
        threads: compression threads.
        level: BGZF compression level of the merged BAM (samtools' default 6). Level 1
            takes about a third of the CPU for a ~10% bigger file (E. coli 30x: 77 vs 70 MB).

    Returns:
        `out`.

    Raises:
        InputError: a part is missing.
        HelixflowError: parts were aligned to different references.

    Example:
        >>> merge_bams(sorted(Path("shards").glob("*.bam")), Path("S1.bam"))  # doctest: +SKIP
        PosixPath('S1.bam')
    """
    parts = [Path(p) for p in parts]
    if not parts:
        raise ValueError("merge_bams needs at least one BAM")
    for part in parts:
        if not part.is_file():
            raise InputError(str(part), "BAM not found")
    reference = _sq_lines(parts[0])
    for part in parts[1:]:
        if _sq_lines(part) != reference:
            raise HelixflowError(
                f"{part} was aligned to another reference than {parts[0]} (different @SQ lines)",
                hint="align every shard against the same reference index",
            )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Named .bam/.bai: samtools picks formats by name. The index lands first, as before.
    with atomic_path(out, suffix=".bam") as tmp, \
            atomic_path(f"{out}.bai", suffix=".bai") as tmp_bai:
        if len(parts) == 1:
            shutil.copyfile(parts[0], tmp)
            # -o: given as a second argument, an existing file is taken for a second BAM.
            pysam.index("-@", str(max(1, threads)), "-o", str(tmp_bai), str(tmp),
                        catch_stdout=False)
        else:
            # The index is built while merging (--write-index), not by re-reading the BAM.
            args = ["merge", "--no-PG", "-f", "-c", "-p", "-l", str(level),
                    "-@", str(max(1, threads)),
                    "--write-index", "-o", f"{tmp}##idx##{tmp_bai}", *map(str, parts)]
            exe = samtools_cli()
            if exe is None:
                pysam.merge(*args[1:], catch_stdout=False)
            else:
                proc = subprocess.run([exe, *args], capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"samtools merge failed: {proc.stderr.strip()}")
    return out


# --- Prefect task: one shard as an unaligned BAM ---------------------------------------


def read_group_for(sample: str) -> dict[str, str]:
    """The @RG fields helixflow gives a sample's reads: ID and SM the sample, LB, PL.

    Args:
        sample: the sample name.

    Returns:
        The @RG fields: ID and SM `sample`, LB "<sample>-lib", PL "ILLUMINA".
    """
    return {"ID": sample, "SM": sample, "LB": f"{sample}-lib", "PL": "ILLUMINA"}


@materialize("helixflow://unaligned", name="unaligned-bam", task_run_name="ubam-{shard.name}",
             **stage_options(UNALIGNED_VERSION))
def write_unaligned_bam(shard: Artifact, sample: str, store: Store, run_id: str) -> Artifact:
    """One shard as an unaligned BAM with its read group (flags 77/141, or 4 single-end).

    Args:
        shard: a read shard (READS_SCHEMA Parquet) in the store.
        sample: sample name; gives the read group (`read_group_for`).
        store: where the BAM is published.
        run_id: the run whose `unaligned` folder shows it.

    Returns:
        The published BAM's Artifact (rows = records written).
    """
    with store.scratch() as scratch:
        out = scratch / shard.name.replace(".parquet", ".unaligned.bam")
        records = unaligned_bam(as_batch(read_table(store, shard)), out, read_group_for(sample))
        return publish_file(store, out, run_id=run_id, stage="unaligned", rows=records,
                            media_type=BAM_MEDIA_TYPE, producer="unaligned-bam",
                            upstream=[shard.ref()], tools={"pysam": pysam.__version__})
