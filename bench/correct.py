"""Benchmark: helixflow k-mer error correction against Lighter on ART-simulated pairs.

Simulates (once, cached under bench/out/correct/) 2x150 bp HiSeq 2500 pairs with ART,
`art_illumina -ss HS25 -p -l 150 -f FOLD -m 300 -s 20 -rs 42 -na -ef`, keeping the
error-free truth (`<prefix>_errFree.sam`). Then, alternating, runs each corrector as its
own whole process on both cores:

- helixflow: parse the pairs into batches, count canonical k-mers (2-process pool), merge,
  pick the solid threshold from the histogram, correct every batch (2-process pool) and
  write the corrected shards as Parquet;
- Lighter: `lighter -r R1 -r R2 -k K GENOME_SIZE 0.1 -t 2` (writes corrected FASTQ).

Scoring counts bases against the truth, as ANCHORS.md scores Lighter: TP = input base
wrong and output right, FP = input right and output wrong, FN = input wrong and output
wrong; gain = (TP - FP) / (TP + FN), sensitivity = TP / (TP + FN). Scores are given for
R1 alone (what ANCHORS reports) and for both mates. Times are medians of --reps runs.

Run:
    .venv/bin/python bench/correct.py                       # lambda at 30x, 3 repetitions
    .venv/bin/python bench/correct.py --genome t7
    .venv/bin/python bench/correct.py --ecoli --reps 1      # ANCHORS benchmark A2
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "correct"
sys.path.insert(0, str(REPO))

_COMPLEMENT = np.zeros(256, np.uint8)
_COMPLEMENT[np.frombuffer(b"ACGTN", np.uint8)] = np.frombuffer(b"TGCAN", np.uint8)


def shared_genomes() -> Path:
    shared = Path(os.environ.get("HELIXFLOW_SHARED_DATA") or REPO.parent / "shared" / "data")
    return shared / "genomes"


def genome_size(fasta: Path) -> int:
    """Bases in a one-record FASTA."""
    return sum(len(line.strip()) for line in fasta.read_text().splitlines() if line[:1] != ">")


def simulate(fasta: Path, fold: float) -> tuple[Path, Path, Path]:
    """ART pairs and error-free SAM for `fasta` at `fold`, cached under bench/out/correct."""
    OUT.mkdir(parents=True, exist_ok=True)
    prefix = OUT / f"{fasta.stem}_f{fold:g}_"
    r1, r2, truth = Path(f"{prefix}1.fq"), Path(f"{prefix}2.fq"), Path(f"{prefix}_errFree.sam")
    if not (r1.exists() and r2.exists() and truth.exists()):
        art = shutil.which("art_illumina")
        if art is None:
            sys.exit("art_illumina not found: apt-get install -y art-nextgen-simulation-tools")
        cmd = [art, "-ss", "HS25", "-p", "-l", "150", "-f", f"{fold:g}", "-m", "300", "-s",
               "20", "-rs", "42", "-na", "-ef", "-i", str(fasta), "-o", str(prefix)]
        print("simulating:", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        Path(f"{prefix}.sam").unlink(missing_ok=True)  # the noisy-read alignment: unused
    return r1, r2, truth


# --------------------------------------------------------------------------------------
# helixflow's side (runs in its own process: `bench/correct.py _helixflow ...`)

# Worker inputs are set in the parent before the pool forks, so they are inherited
# instead of pickled: the batches, the per-batch count tables, the solid k-mer set.
_BATCHES: list = []
_TABLES: list = []
_SOLID = None
_WORKERS = 2
SMALL_INPUT = 40_000  # reads; below this one process is faster than forking pools


def _count(i: int, k: int) -> object:
    from helixflow.tasks.correct import count_kmers

    return count_kmers(_BATCHES[i], k)


def _merge(j: int, k: int) -> object:
    """Merge k-mer range j of every batch's table (the reduce of a partitioned merge)."""
    from helixflow.tasks.correct import merge_counts, partition_counts

    return merge_counts(partition_counts(t, _WORKERS, k)[j] for t in _TABLES)


def _correct(i: int, k: int, path: str) -> object:
    from helixflow.tasks.correct import correct_batch
    from helixflow.tasks.reads import write_read_shard

    fixed, counts = correct_batch(_BATCHES[i], _SOLID, k)  # type: ignore[arg-type]
    write_read_shard(fixed, path)
    return counts


def _starmap(fn: object, jobs: list[tuple], workers: int) -> list:
    """fn over jobs: in a fresh forked pool of `workers` (inheriting the globals), or in
    this process when workers == 1 (small inputs, where forking costs more than it saves)."""
    if workers == 1:
        return [fn(*job) for job in jobs]  # type: ignore[operator]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.starmap(fn, jobs, chunksize=1)  # type: ignore[arg-type]


def run_helixflow(r1: str, r2: str, out: str, k: int, batch_size: int) -> None:
    """Count, merge, threshold, correct, on 2 cores; shards to `out`; prints a summary."""
    global _BATCHES, _TABLES, _SOLID, _WORKERS
    import numpy as np
    import pyarrow as pa

    from helixflow.tasks.correct import (
        CorrectionCounts,
        SolidKmers,
        kmer_histogram,
        solid_threshold,
    )
    from helixflow.tasks.fastq import iter_read_batches

    clock = [time.perf_counter()]

    def lap() -> str:
        clock.append(time.perf_counter())
        return f"{clock[-1] - clock[-2]:.2f}"

    _BATCHES = list(iter_read_batches(r1, r2, batch_size=batch_size))
    n = len(_BATCHES)
    reads = sum(b.num_rows for b in _BATCHES)
    _WORKERS = 1 if reads < SMALL_INPUT else 2
    steps = [f"parse {lap()}"]
    _TABLES = _starmap(_count, [(i, k) for i in range(n)], _WORKERS)
    steps.append(f"count {lap()}")
    parts = _starmap(_merge, [(j, k) for j in range(_WORKERS)], _WORKERS)
    _TABLES = []
    counts = pa.concat_tables(parts)
    steps.append(f"merge {lap()}")
    hist = kmer_histogram(counts)
    threshold = solid_threshold(hist)
    keep = counts.column("count").to_numpy() >= threshold
    _SOLID = SolidKmers.from_kmers(counts.column("kmer").to_numpy()[keep], k)
    distinct = counts.num_rows
    del counts, parts, keep
    steps.append(f"solid {lap()}")
    jobs = [(i, k, f"{out}/part-{i:05d}.parquet") for i in range(n)]
    results = _starmap(_correct, jobs, _WORKERS)
    steps.append(f"correct {lap()}")
    total = CorrectionCounts()
    for c in results:
        total = total.merge(c)
    low = " ".join(str(int(x)) for x in np.asarray(hist)[1 : threshold + 2])
    print(f"threshold={threshold} (hist 1..{threshold + 1}: {low}) distinct={distinct} "
          f"solid={len(_SOLID)}; {_WORKERS} process(es): {', '.join(steps)} s; corrected "
          f"{total.corrected_bases} bases in {total.corrected_reads} reads, "
          f"{total.unfixable_reads} unfixable")


# --------------------------------------------------------------------------------------
# Scoring


def truth_by_name(sam: Path) -> dict[tuple[str, int], bytes]:
    """Error-free read sequences from ART's SAM, in read orientation, by (name, mate)."""
    table: dict[tuple[str, int], bytes] = {}
    with open(sam, "rb") as fh:
        for line in fh:
            if line[:1] == b"@":
                continue
            name, flag_s, _, _, _, _, _, _, _, seq = line.split(b"\t", 10)[:10]
            flag = int(flag_s)
            if flag & 16:
                seq = _COMPLEMENT[np.frombuffer(seq, np.uint8)[::-1]].tobytes()
            table[(name.decode(), 1 if flag & 64 else 2)] = seq
    return table


def fastq_records(path: Path) -> tuple[list[str], list[bytes]]:
    """(names without /1 /2, sequences) of a FASTQ file."""
    lines = path.read_bytes().rstrip(b"\n").split(b"\n")
    names = [h[1:].split()[0].decode().removesuffix("/1").removesuffix("/2") for h in lines[0::4]]
    return names, lines[1::4]


def score(inp: list[bytes], out: list[bytes], truth: list[bytes]) -> dict[str, float]:
    """TP / FP / FN over bases (reads of equal length, as ART makes them)."""
    a = np.frombuffer(b"".join(inp), np.uint8)
    b = np.frombuffer(b"".join(out), np.uint8)
    t = np.frombuffer(b"".join(truth), np.uint8)
    if not (len(a) == len(b) == len(t)):
        raise ValueError("input, output and truth differ in total length")
    wrong_in, wrong_out = a != t, b != t
    tp = int((wrong_in & ~wrong_out).sum())
    fp = int((~wrong_in & wrong_out).sum())
    fn = int((wrong_in & wrong_out).sum())
    errors = tp + fn
    return {
        "TP": tp, "FP": fp, "FN": fn,
        "gain": (tp - fp) / errors if errors else 0.0,
        "sensitivity": tp / errors if errors else 0.0,
    }


def helixflow_output(out: Path) -> tuple[list[bytes], list[bytes]]:
    """Corrected R1 and R2 sequences from the shards, in input order."""
    import pyarrow.parquet as pq

    r1: list[bytes] = []
    r2: list[bytes] = []
    for shard in sorted(out.glob("part-*.parquet")):
        t = pq.read_table(shard, columns=["mate", "sequence"])
        mate = t.column("mate").to_numpy()
        seqs = [s.encode() for s in t.column("sequence").to_pylist()]
        r1 += [s for s, m in zip(seqs, mate, strict=True) if m == 1]
        r2 += [s for s, m in zip(seqs, mate, strict=True) if m == 2]
    return r1, r2


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, str]:
    """Wall seconds of a whole process, and its stdout."""
    start = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd)
    return time.perf_counter() - start, done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--genome", default="lambda", help="name in the shared genomes/")
    parser.add_argument("--ecoli", action="store_true", help="E. coli K-12 (ANCHORS A2)")
    parser.add_argument("--fold", type=float, default=30.0, help="ART coverage fold")
    parser.add_argument("-k", type=int, default=21)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=0,
                        help="pairs per batch (default: an even split, 8 or more batches)")
    args = parser.parse_args()
    lighter = shutil.which("lighter")
    if lighter is None:
        sys.exit("lighter not found: apt-get install -y lighter")
    fasta = shared_genomes() / ("ecoli_k12_mg1655.fa" if args.ecoli else f"{args.genome}.fa")
    if not fasta.exists():
        sys.exit(f"{fasta} not found (set HELIXFLOW_SHARED_DATA to the shared data folder)")
    r1, r2, sam = simulate(fasta, args.fold)
    size = genome_size(fasta)
    pairs = r1.stat().st_size // 340  # about 340 bytes per ART 150 bp record
    # An even number of batches (at least 8) keeps both workers busy to the end.
    n_batches = 2 * max(4, -(-pairs // 200_000))
    batch_size = args.batch_size or max(5000, -(-pairs // n_batches))

    times: dict[str, list[float]] = {"helixflow": [], "lighter": []}
    with tempfile.TemporaryDirectory(prefix="bench-correct-") as tmp:
        hf_out, li_out = Path(tmp, "helixflow"), Path(tmp, "lighter")
        note = ""
        for rep in range(args.reps + 1):  # the first round warms caches and is not counted
            shutil.rmtree(hf_out, ignore_errors=True)
            shutil.rmtree(li_out, ignore_errors=True)
            hf_out.mkdir()
            li_out.mkdir()
            hf_cmd = [sys.executable, __file__, "_helixflow", str(r1), str(r2), str(hf_out),
                      str(args.k), str(batch_size)]
            li_cmd = [lighter, "-r", str(r1), "-r", str(r2), "-k", str(args.k), str(size),
                      "0.1", "-t", "2", "-od", str(li_out)]
            t_hf, note = timed(hf_cmd)
            t_li, _ = timed(li_cmd)
            if rep:
                times["helixflow"].append(t_hf)
                times["lighter"].append(t_li)
            print(f"run {rep}: helixflow {t_hf:.2f} s, lighter {t_li:.2f} s"
                  + (" (warm-up)" if not rep else ""), file=sys.stderr)

        truth = truth_by_name(sam)
        names1, in1 = fastq_records(r1)
        names2, in2 = fastq_records(r2)
        t1 = [truth[(n, 1)] for n in names1]
        t2 = [truth[(n, 2)] for n in names2]
        hf1, hf2 = helixflow_output(hf_out)
        _, li1 = fastq_records(li_out / (r1.stem + ".cor.fq"))
        _, li2 = fastq_records(li_out / (r2.stem + ".cor.fq"))

    print(f"input: {r1.name} + {r2.name}: {len(in1)} pairs from {fasta.name} ({size} bp), "
          f"k={args.k}, median of {args.reps} runs after a warm-up")
    print(f"helixflow: {note}")
    header = f"{'tool':<10} {'mates':<6} {'TP':>8} {'FP':>6} {'FN':>7} {'gain':>6} {'sens':>6}"
    print(header + f" {'wall s':>7}")
    wall = {tool: statistics.median(t) for tool, t in times.items()}
    for tool, o1, o2 in (("helixflow", hf1, hf2), ("lighter", li1, li2)):
        for label, s in (("R1", score(in1, o1, t1)), ("R1+R2", score(in1 + in2, o1 + o2, t1 + t2))):
            print(f"{tool:<10} {label:<6} {s['TP']:>8} {s['FP']:>6} {s['FN']:>7} "
                  f"{s['gain']:>6.3f} {s['sensitivity']:>6.3f} {wall[tool]:>7.2f}")
    print(f"time ratio helixflow / lighter: {wall['helixflow'] / wall['lighter']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_helixflow":
        run_helixflow(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
