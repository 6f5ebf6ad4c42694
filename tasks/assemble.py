"""De novo assembly with MEGAHIT: read shards in, contigs FASTA and assembly statistics out.

One external-tool step (nf-core style): the reads of the given Arrow batches or Parquet
shards (READS_SCHEMA) are written to FASTQ in the work directory, `megahit` runs once
with an argument list (never a shell string), its output is captured to a log, and the
contigs are moved to `<work_dir>/contigs.fa`. Statistics (N50 and friends) are computed
here in Python, not parsed from MEGAHIT's log, so they mean the same for any assembler.

How reads are written: pairs whose two mates both hold bases go to R1/R2 (`-1/-2`);
single-end reads, and the one non-empty mate of a pair whose other mate is empty, go to
`-r`; empty reads are dropped (MEGAHIT cannot use them). FASTQ text is built with Arrow
string kernels per batch, so there is no Python object per read.

Pure function (no Prefect); the Prefect/Ray task wraps `assemble` and puts
`AssemblyResult.megahit_version` and `command` into its cache key and lineage.

Example:
    >>> params = AssemblyParams(threads=2)
    >>> result = assemble(["shard-0.parquet"], Path("work"), params)  # doctest: +SKIP
    >>> result.stats["n50"]  # doctest: +SKIP
    20068
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect.assets import materialize
from pydantic import BaseModel

from helixflow.artifacts import Artifact
from helixflow.caching import stage_options
from helixflow.errors import HelixflowError, InputError
from helixflow.store import Store
from helixflow.tables import fetch, publish_file
from helixflow.tasks.orfs import iter_fasta
from helixflow.tasks.reads import string_parts
from helixflow.tools import require_tool, tool_version

PRESETS = ("meta-sensitive", "meta-large")
"""MEGAHIT's --presets: meta-sensitive (more k values, slower), meta-large (complex
metagenomes). Without a preset or k list MEGAHIT uses its default 21..141 step 20."""
ReadSource = pa.RecordBatch | pa.Table | str | Path
"""A batch or table of reads in READS_SCHEMA, or the path of a Parquet read shard."""
LOG_TAIL_LINES = 20
CONTIGS_NAME = "contigs.fa"
LOG_NAME = "megahit.log"


@dataclass(frozen=True)
class AssemblyParams:
    """How to run MEGAHIT.

    Args:
        min_contig_len: shortest contig kept (MEGAHIT --min-contig-len, >= 1).
        threads: CPU threads (-t); size it from the resource profile, not the host.
        k_list: odd k-mer sizes in 15..255, increasing (--k-list); None for MEGAHIT's.
        preset: one of PRESETS (--presets); exclusive with k_list.
        memory: memory cap, a fraction of the machine (< 1) or bytes (-m).
        extra_args: further MEGAHIT arguments, passed through as given.
        keep_intermediate: keep the FASTQ inputs and MEGAHIT's output directory.
    """

    min_contig_len: int = 500
    threads: int = 1
    k_list: tuple[int, ...] | None = None
    preset: str | None = None
    memory: float | None = None
    extra_args: tuple[str, ...] = ()
    keep_intermediate: bool = False

    def __post_init__(self) -> None:
        """Check arguments first, with what is allowed (MEGAHIT's own limits)."""
        n = self.min_contig_len
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"min_contig_len must be a positive integer, got {n!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")
        if self.k_list is not None:
            ks = list(self.k_list)
            if not ks or any(
                isinstance(k, bool) or not isinstance(k, int) or k % 2 == 0 or not 15 <= k <= 255
                for k in ks
            ):
                raise ValueError(f"k_list must hold odd integers in 15..255, got {self.k_list!r}")
            if ks != sorted(set(ks)):
                raise ValueError(f"k_list must be strictly increasing, got {self.k_list!r}")
            if any(b - a > 28 for a, b in itertools.pairwise(ks)):
                raise ValueError(f"k_list steps must be at most 28 (MEGAHIT), got {self.k_list!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.preset is not None and self.k_list is not None:
            raise ValueError("give k_list or preset, not both")
        if self.memory is not None and not self.memory > 0:
            raise ValueError(
                f"memory must be a positive fraction or byte count, got {self.memory!r}"
            )
        if isinstance(self.extra_args, str):
            raise ValueError("extra_args must be a tuple of separate arguments, not one string")


@dataclass(frozen=True)
class AssemblyResult:
    """What an assembly produced (named outputs, for lineage).

    `stats` holds contigs, total_length, longest, shortest, n50, l50 and gc;
    `command` is the MEGAHIT argument list as run (paths relative to the work dir).
    """

    contigs: Path
    stats: dict[str, float]
    megahit_version: str
    log: Path
    command: list[str] = field(default_factory=list)
    reads: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Statistics


def contig_stats(lengths: Iterable[int], gc_bases: int = 0) -> dict[str, float]:
    """Assembly statistics of contig lengths: count, total, longest, shortest, N50, L50, GC.

    N50 is the length of the contig that, with all longer ones, first covers half of the
    total (sorted longest first); L50 is how many contigs that takes. All are 0 for an
    empty assembly.

    Args:
        lengths: contig lengths in bases.
        gc_bases: G + C bases over all contigs; 0 leaves "gc" at 0.0.

    Returns:
        contigs, total_length, longest, shortest, n50, l50 (ints) and gc (fraction of
        total_length, 4 decimals).

    Example:
        >>> s = contig_stats([100, 400, 300, 200])
        >>> s["n50"], s["l50"], s["total_length"]
        (300, 2, 1000)
    """
    arr = np.sort(np.fromiter(lengths, dtype=np.int64))[::-1]
    total = int(arr.sum())
    if len(arr) == 0:
        return {"contigs": 0, "total_length": 0, "longest": 0, "shortest": 0, "n50": 0,
                "l50": 0, "gc": 0.0}
    cumulative = np.cumsum(arr)
    l50 = int(np.searchsorted(cumulative, total / 2, side="left")) + 1
    return {
        "contigs": len(arr),
        "total_length": total,
        "longest": int(arr[0]),
        "shortest": int(arr[-1]),
        "n50": int(arr[l50 - 1]),
        "l50": l50,
        "gc": round(gc_bases / total, 4),
    }


def fasta_stats(path: Path) -> dict[str, float]:
    """contig_stats of a FASTA file (GC over A/C/G/T bases only).

    Args:
        path: a FASTA file of contigs.

    Returns:
        The `contig_stats` of its sequences, GC included.
    """
    lengths: list[int] = []
    gc = 0
    for _, seq in iter_fasta(path):
        lengths.append(len(seq))
        gc += seq.count("G") + seq.count("C")
    return contig_stats(lengths, gc)


# --------------------------------------------------------------------------------------
# Reads to FASTQ


def _write_records(fh: BinaryIO, table: pa.Table) -> int:
    """Append rows as FASTQ records ('@id\\nSEQ\\n+\\nQUAL\\n'); returns the row count.

    Arrow joins the columns into one string array whose data buffer is the FASTQ text,
    written in one call: no Python object per read.
    """
    if table.num_rows == 0:
        return 0
    cols = [pc.cast(table.column(c), pa.large_string()) for c in ("read_id", "sequence", "quality")]
    at, plus, empty, newline = (pa.scalar(t, pa.large_string()) for t in ("@", "+", "", "\n"))
    head = pc.binary_join_element_wise(at, cols[0], empty)
    records = pc.binary_join_element_wise(head, cols[1], plus, cols[2], empty, newline)
    if isinstance(records, pa.ChunkedArray):
        records = records.combine_chunks()
    offsets, data = string_parts(records)
    fh.write(data[int(offsets[0]) : int(offsets[-1])])
    return table.num_rows


def _as_tables(sources: Iterable[ReadSource]) -> Iterator[pa.Table]:
    """Each source as Arrow tables (Parquet shards read batch by batch, bounded memory)."""
    for source in sources:
        if isinstance(source, pa.RecordBatch):
            yield pa.Table.from_batches([source])
        elif isinstance(source, pa.Table):
            yield source
        else:
            path = Path(source)
            if not path.is_file():
                raise InputError(str(path), "no such read shard", hint="check the path")
            try:
                parquet = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(str(path), f"not a Parquet read shard ({exc})") from None
            missing = {"read_id", "mate", "sequence", "quality"} - set(parquet.schema_arrow.names)
            if missing:
                raise InputError(str(path), f"not a read shard: no column(s) {sorted(missing)}")
            for batch in parquet.iter_batches(batch_size=200_000):
                yield pa.Table.from_batches([batch])


def write_fastq_inputs(
    sources: Iterable[ReadSource], r1: Path, r2: Path, single: Path
) -> dict[str, int]:
    """Write reads as MEGAHIT inputs: complete pairs to r1/r2, the rest to `single`.

    A paired batch holds its mate-1 rows first, then the mate-2 rows in the same order
    (READS_SCHEMA); that order is checked, not assumed.

    Args:
        sources: Arrow batches/tables or Parquet read shards in READS_SCHEMA.
        r1: the FASTQ to write mate-1 reads of complete pairs to (overwritten).
        r2: the FASTQ to write their mate-2 reads to (overwritten).
        single: the FASTQ for single-end reads and mates whose partner is empty.

    Returns:
        Counts: pairs, single (reads written to `single`), dropped_empty (reads).

    Raises:
        HelixflowError: a batch whose mate-1 and mate-2 rows do not pair up.
    """
    counts = {"pairs": 0, "single": 0, "dropped_empty": 0}
    with r1.open("wb") as f1, r2.open("wb") as f2, single.open("wb") as fs:
        for number, table in enumerate(_as_tables(sources), start=1):
            mate = table.column("mate")
            nonempty = pc.greater(pc.binary_length(table.column("sequence")), 0)
            m1 = table.filter(pc.equal(mate, 1))
            m2 = table.filter(pc.equal(mate, 2))
            m0 = table.filter(pc.equal(mate, 0))
            if m1.num_rows != m2.num_rows or pc.all(
                pc.equal(m1.column("read_id"), m2.column("read_id"))
            ).as_py() not in (True, None):
                raise HelixflowError(
                    f"read batch {number}: its mate-1 and mate-2 rows do not pair up",
                    hint="pass batches as iter_read_batches writes them: mate-1 rows, "
                    "then mate-2 rows in the same order",
                )
            ne1 = pc.greater(pc.binary_length(m1.column("sequence")), 0)
            ne2 = pc.greater(pc.binary_length(m2.column("sequence")), 0)
            both = pc.and_(ne1, ne2)
            counts["pairs"] += _write_records(f1, m1.filter(both))
            _write_records(f2, m2.filter(both))
            counts["single"] += _write_records(fs, m1.filter(pc.and_(ne1, pc.invert(ne2))))
            counts["single"] += _write_records(fs, m2.filter(pc.and_(ne2, pc.invert(ne1))))
            counts["single"] += _write_records(
                fs, m0.filter(pc.greater(pc.binary_length(m0.column("sequence")), 0))
            )
            counts["dropped_empty"] += table.num_rows - int(pc.sum(nonempty).as_py() or 0)
    return counts


# --------------------------------------------------------------------------------------
# Running MEGAHIT


def _log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file (for error messages)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def megahit_command(
    exe: str, out_dir: Path, params: AssemblyParams, r1: Path | None, r2: Path | None,
    single: Path | None,
) -> list[str]:
    """The MEGAHIT argument list (no shell) for these inputs and parameters.

    Args:
        exe: the megahit executable.
        out_dir: MEGAHIT's output folder (`-o`).
        params: MEGAHIT settings; None fields are left to MEGAHIT's defaults.
        r1: mate-1 FASTQ; used only together with `r2`.
        r2: mate-2 FASTQ; used only together with `r1`.
        single: FASTQ of single-end reads, or None.

    Returns:
        The argv list.
    """
    cmd = [exe]
    if r1 is not None and r2 is not None:
        cmd += ["-1", str(r1), "-2", str(r2)]
    if single is not None:
        cmd += ["-r", str(single)]
    cmd += ["-o", str(out_dir), "-t", str(params.threads),
            "--min-contig-len", str(params.min_contig_len)]
    if params.k_list is not None:
        cmd += ["--k-list", ",".join(str(k) for k in params.k_list)]
    if params.preset is not None:
        cmd += ["--presets", params.preset]
    if params.memory is not None:
        cmd += ["-m", f"{params.memory:g}"]
    cmd += list(params.extra_args)
    return cmd


_SHELL_PLAIN = re.compile(r"[A-Za-z0-9_./-]+")


def megahit_safe_dir(preferred: Path) -> Path:
    """Where MEGAHIT may run: `preferred` if its absolute path is plain (letters, digits,
    `_ . / -`), else the system temp folder.

    MEGAHIT pastes its absolute paths unquoted into shell commands (`gzip -cd … > fifo`,
    `cat <dir>/*.fa | …`) and splits them at commas, so a folder named with a space, a
    quote, `$()` or `,` would break the run or execute part of the name.

    Args:
        preferred: the folder to use when its absolute path is plain.

    Returns:
        The resolved absolute folder.

    Raises:
        HelixflowError: neither `preferred` nor the temp folder has a plain path.
    """
    for candidate in (preferred.resolve(), Path(tempfile.gettempdir()).resolve()):
        if _SHELL_PLAIN.fullmatch(str(candidate)):
            return candidate
    raise HelixflowError(
        f"no folder to run MEGAHIT in whose path its shell commands can take: {preferred}",
        hint="set TMPDIR to a path of letters, digits and _ . / - only",
    )


def assemble(
    batches_or_paths: Iterable[ReadSource], work_dir: Path, params: AssemblyParams
) -> AssemblyResult:
    """Assemble reads with MEGAHIT into `<work_dir>/contigs.fa`, with statistics.

    Args:
        batches_or_paths: Arrow batches/tables or Parquet read shards in READS_SCHEMA.
        work_dir: this step's directory (created); receives contigs.fa and megahit.log.
            Inputs and MEGAHIT's output go to a fresh `megahit-run.*` subdirectory,
            removed after success unless `params.keep_intermediate`.
        params: MEGAHIT settings.

    Returns:
        AssemblyResult with the contigs path, stats, MEGAHIT version and command.

    Raises:
        HelixflowError: megahit is not installed, there are no non-empty reads, or
            megahit failed (the message holds the tail of its log).
        InputError: a shard path that is missing or not a read shard.

    Example:
        >>> res = assemble([batch], Path("asm"), AssemblyParams(threads=2))  # doctest: +SKIP
        >>> res.contigs.name, res.megahit_version  # doctest: +SKIP
        ('contigs.fa', '1.2.9')
    """
    exe = require_tool("megahit", package="megahit")
    version = tool_version("megahit")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="megahit-run.", dir=megahit_safe_dir(work_dir)))
    r1, r2, single = run_dir / "R1.fastq", run_dir / "R2.fastq", run_dir / "single.fastq"
    try:
        reads = write_fastq_inputs(batches_or_paths, r1, r2, single)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if reads["pairs"] == 0 and reads["single"] == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise HelixflowError(
            "no non-empty reads to assemble",
            hint="check that the shards hold reads (e.g. after trimming and filtering)",
        )
    out_dir = run_dir / "out"  # megahit refuses an existing output directory
    cmd = megahit_command(
        exe, out_dir, params,
        r1 if reads["pairs"] else None, r2 if reads["pairs"] else None,
        single if reads["single"] else None,
    )
    log = work_dir / LOG_NAME
    with log.open("wb") as fh:
        fh.write(("# " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=run_dir, check=False)
    final = out_dir / "final.contigs.fa"
    if proc.returncode != 0 or not final.is_file():
        what = f"exit code {proc.returncode}" if proc.returncode else "no final.contigs.fa"
        raise HelixflowError(
            f"megahit failed ({what}); last lines of its log:\n{_log_tail(log)}",
            hint=f"full log: {log}; inputs and partial output kept in {run_dir}",
        )
    contigs = work_dir / CONTIGS_NAME
    os.replace(final, contigs)
    if not params.keep_intermediate:
        shutil.rmtree(run_dir, ignore_errors=True)
    return AssemblyResult(
        contigs=contigs,
        stats=fasta_stats(contigs),
        megahit_version=version,
        log=log,
        command=cmd,
        reads=reads,
    )


# --- Prefect task: the I/O edge around assemble ----------------------------------------

ASSEMBLE_VERSION = "1"


class AssemblyOutput(BaseModel):
    """Published contigs of one sample plus their statistics."""

    contigs: Artifact
    stats: dict[str, float]
    megahit_version: str


@materialize(
    "helixflow://assemble",
    name="assemble-reads",
    task_run_name="assemble-{sample}",
    **stage_options(ASSEMBLE_VERSION, tools=("megahit",)),
)
def assemble_reads(
    sample: str, shards: list[Artifact], params: AssemblyParams, store: Store, run_id: str
) -> AssemblyOutput:
    """Assemble one sample's read shards with MEGAHIT and publish `<sample>.contigs.fa`.

    Args:
        sample: the sample name; names the contigs file and the task run.
        shards: the sample's Parquet read shards.
        params: MEGAHIT settings.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        AssemblyOutput with the contigs artifact, the assembly stats and MEGAHIT's version.

    Raises:
        HelixflowError: megahit is missing or failed, or there are no non-empty reads.
        InputError: a shard that is not a read shard.
    """
    with store.scratch() as scratch:
        paths = [fetch(store, shard, scratch) for shard in shards]
        result = assemble(paths, scratch / "megahit", params)
        contigs = publish_file(
            store, result.contigs, run_id=run_id, stage="assemble",
            name=f"{sample}.contigs.fa", media_type="text/x-fasta", producer="assemble-reads",
            rows=int(result.stats.get("contigs", 0)),
            params=dataclasses.asdict(params), upstream=[s.ref() for s in shards],
            metadata={"stats": result.stats}, tools={"megahit": result.megahit_version},
        )
    return AssemblyOutput(contigs=contigs, stats=result.stats,
                          megahit_version=result.megahit_version)
