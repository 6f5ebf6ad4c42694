"""Benchmark: helixflow alignment (mappy) against `minimap2 -ax sr | samtools sort`.

Simulates (once, cached under bench/out/align/) ART HS25 2x150 pairs from a genome in the
shared data: by default phage T7 at 100x (13 k pairs, seconds; no long repeats, so
placements are unambiguous); with `--ecoli`, ANCHORS' input A2 (E. coli K-12 at 30x,
464 k pairs). Then, alternating, each in
its own process:

- peer: `minimap2 -ax sr -t 2 ref R1 R2 | samtools sort -@1 -o peer.bam`
- helixflow: iter_read_batches -> align_batch per shard (mappy, 2 threads, sorted BAM)
  -> merge_bams (merged, indexed). align_batch gets the "/1" that ART's read names end
  in (name_suffix_of R1), which READS_SCHEMA's read_id drops but minimap2 hashes to break
  ties between equal repeat copies, so both pick the same copy. The minimap2 index is
  built in the warm-up run and reused from the cache afterwards, as the pipeline does;
  its build time is printed.

Prints the wall times, the ratio helixflow / peer (goal <= 1.15), CPU times (steadier on
a shared machine) and the agreement of
primary placements: a read agrees when both leave it unmapped, or both place it on the
same contig and strand within 5 bp (goal >= 99.5%).

Run:
    .venv/bin/python bench/align.py                  # T7, 3 repetitions
    .venv/bin/python bench/align.py --ecoli --reps 1  # ANCHORS input A2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "align"
SHARED = Path(os.environ.get("HELIXFLOW_SHARED_DATA") or REPO.parent / "shared" / "data")
GOAL_RATIO, GOAL_AGREEMENT, SLACK_BP = 1.15, 0.995, 5
READ_GROUP = {"ID": "bench", "SM": "bench", "LB": "lib1", "PL": "ILLUMINA"}


def simulate(genome: str, fold: float) -> tuple[Path, Path, Path]:
    """Reference and ART pairs (cached): HS25 2x150, mean fragment 300 (sd 20), seed 42."""
    ref = SHARED / "genomes" / f"{genome}.fa"
    if not ref.exists():
        sys.exit(f"{ref} not found (set HELIXFLOW_SHARED_DATA)")
    prefix = OUT / f"{genome}_f{fold:g}_"
    r1, r2 = Path(f"{prefix}1.fq"), Path(f"{prefix}2.fq")
    if not (r1.exists() and r2.exists()):
        if shutil.which("art_illumina") is None:
            sys.exit("art_illumina is missing: apt-get install art-nextgen-simulation-tools")
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["art_illumina", "-ss", "HS25", "-p", "-l", "150", "-f", f"{fold:g}", "-m", "300",
             "-s", "20", "-rs", "42", "-na", "-q", "-i", str(ref), "-o", str(prefix)],
            check=True, stdout=subprocess.DEVNULL,
        )
    return ref, r1, r2


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_peer(ref: Path, r1: Path, r2: Path, out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of minimap2 | samtools sort."""
    cmd = (f"minimap2 -ax sr -t 2 {ref} {r1} {r2} 2>/dev/null "
           f"| samtools sort -@1 -o {out} - 2>/dev/null")
    start, cpu = time.perf_counter(), _children_cpu()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    return time.perf_counter() - start, _children_cpu() - cpu


def run_helixflow(ref: Path, r1: Path, r2: Path, out: Path, batch_size: int,
                  shard_level: int, merge_level: int) -> dict:
    """Wall and CPU seconds of helixflow's alignment in a fresh process, and its counts."""
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", str(ref), str(r1), str(r2), str(out),
         str(batch_size), str(shard_level), str(merge_level)],
        check=True, capture_output=True, text=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = time.perf_counter() - start
    result["cpu"] = _children_cpu() - cpu
    return result


def worker(ref: str, r1: str, r2: str, out: str, batch_size: int, shard_level: int,
           merge_level: int) -> None:
    """The helixflow side: index (cached), align each shard, merge and index."""
    sys.path.insert(0, str(REPO))
    from helixflow.tasks.align import AlignCounts, align_batch, build_index, name_suffix_of
    from helixflow.tasks.bam import merge_bams
    from helixflow.tasks.fastq import iter_read_batches

    t0 = time.perf_counter()
    mmi = build_index(Path(ref), "sr", OUT / "mmi")
    t_index = time.perf_counter() - t0
    suffix = name_suffix_of(r1)  # ART names end in /1: minimap2 hashes them so
    total, parts = AlignCounts(), []
    for i, batch in enumerate(iter_read_batches(r1, r2, batch_size=batch_size)):
        part = Path(f"{out}.shard{i}.bam")
        total = total.merge(align_batch(batch, mmi, part, READ_GROUP, preset="sr", threads=2,
                                        shard_level=shard_level, name_suffix=suffix))
        parts.append(part)
    t_align = time.perf_counter() - t0
    merge_bams(parts, Path(out), level=merge_level)
    for part in parts:
        part.unlink()
    print(json.dumps({"index_s": t_index, "align_s": t_align,
                      "merge_s": time.perf_counter() - t0 - t_align, **total.as_dict()}))


def placements(bam: Path) -> dict[tuple[str, int], tuple[str, int, bool, int] | None]:
    """(name, mate) -> (contig, pos, reverse, MAPQ) of each primary record; None: unmapped."""
    import pysam

    found: dict[tuple[str, int], tuple[str, int, bool, int] | None] = {}
    with pysam.AlignmentFile(str(bam), "rb") as fh:
        for rec in fh.fetch(until_eof=True):
            if rec.is_secondary or rec.is_supplementary:
                continue
            key = (rec.query_name, 1 if rec.is_read1 else 2 if rec.is_read2 else 0)
            found[key] = None if rec.is_unmapped else (
                rec.reference_name, rec.reference_start, rec.is_reverse, rec.mapping_quality)
    return found


def agreement(peer: Path, ours: Path) -> tuple[float, float, dict[str, int]]:
    """Share of reads placed alike (both unmapped, or same contig/strand within 5 bp), over
    all reads and over the reads minimap2 places uniquely (MAPQ > 0)."""
    a, b = placements(peer), placements(ours)
    tally = {"reads": len(a), "agree": 0, "peer_mapped": 0, "ours_mapped": 0, "missing": 0,
             "peer_unique": 0, "agree_unique": 0}
    for key, pa in a.items():
        pb = b.get(key, "missing")
        if pb == "missing":
            tally["missing"] += 1
            continue
        tally["peer_mapped"] += pa is not None
        tally["ours_mapped"] += pb is not None
        unique = pa is not None and pa[3] > 0
        tally["peer_unique"] += unique
        if pa is None or pb is None:
            same = pa is None and pb is None
        else:
            same = pa[0] == pb[0] and pa[2] == pb[2] and abs(pa[1] - pb[1]) <= SLACK_BP
        tally["agree"] += same
        tally["agree_unique"] += same and unique
    return (tally["agree"] / max(1, tally["reads"]),
            tally["agree_unique"] / max(1, tally["peer_unique"]), tally)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genome", default="t7",
                        help="genome name in the shared data's genomes/ (default %(default)s)")
    parser.add_argument("--fold", type=float, default=100.0,
                        help="ART fold coverage (default %(default)s)")
    parser.add_argument("--ecoli", action="store_true",
                        help="ANCHORS input A2: ecoli_k12_mg1655 at 30x")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions after a warm-up")
    parser.add_argument("--batch-size", type=int, default=250_000, help="pairs per shard")
    parser.add_argument("--shard-level", type=int, default=1,
                        help="BGZF level of shard BAMs (default %(default)s; a single shard is "
                             "the final BAM, so use 6 there to compare like with like)")
    parser.add_argument("--merge-level", type=int, default=6,
                        help="BGZF level of the merged BAM (default %(default)s, as samtools)")
    parser.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        ref, r1, r2, out, batch, level, merge_level = args.worker
        worker(ref, r1, r2, out, int(batch), int(level), int(merge_level))
        return
    for tool in ("minimap2", "samtools"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install minimap2 samtools")
    genome = "ecoli_k12_mg1655" if args.ecoli else args.genome
    ref, r1, r2 = simulate(genome, 30.0 if args.ecoli else args.fold)
    peer_bam, our_bam = OUT / f"{genome}.minimap2.bam", OUT / f"{genome}.helixflow.bam"
    print(f"input: {r1.name} {r2.name} ({sum(1 for _ in r1.open()) // 4:,} pairs)")
    load_before = os.getloadavg()
    run_peer(ref, r1, r2, peer_bam)  # warm-up (page cache), and the index for helixflow
    levels = (args.shard_level, args.merge_level)
    first = run_helixflow(ref, r1, r2, our_bam, args.batch_size, *levels)
    print(f"warm-up: helixflow built/loaded the index in {first['index_s']:.2f} s")
    peer_t, ours_t, peer_cpu, ours_cpu, last = [], [], [], [], first
    for _ in range(args.reps):
        wall, cpu = run_peer(ref, r1, r2, peer_bam)
        peer_t.append(wall)
        peer_cpu.append(cpu)
        last = run_helixflow(ref, r1, r2, our_bam, args.batch_size, *levels)
        ours_t.append(last["wall"])
        ours_cpu.append(last["cpu"])
    load_after = os.getloadavg()
    check = subprocess.run(["samtools", "quickcheck", str(our_bam)], check=False)
    share, share_unique, tally = agreement(peer_bam, our_bam)
    peer_m, ours_m = statistics.median(peer_t), statistics.median(ours_t)
    ratio = ours_m / peer_m
    print(f"minimap2 | samtools sort: {peer_m:.2f} s (median of {args.reps}: "
          f"{', '.join(f'{t:.2f}' for t in peer_t)})")
    print(f"helixflow align+sort+merge+index: {ours_m:.2f} s "
          f"({', '.join(f'{t:.2f}' for t in ours_t)}); last run: index {last['index_s']:.2f} s, "
          f"align {last['align_s']:.2f} s, merge+index {last['merge_s']:.2f} s")
    print(f"CPU s (user+sys, less sensitive to other load): peer "
          f"{statistics.median(peer_cpu):.2f}, helixflow {statistics.median(ours_cpu):.2f}, "
          f"ratio {statistics.median(ours_cpu) / statistics.median(peer_cpu):.3f}")
    counts = {k: v for k, v in last.items() if not k.endswith("_s") and k not in ("wall", "cpu")}
    print(f"counts: {json.dumps(counts)}")
    sizes = f"peer {peer_bam.stat().st_size / 1e6:.1f}, ours {our_bam.stat().st_size / 1e6:.1f}"
    status = "ok" if check.returncode == 0 else "FAILED"
    print(f"samtools quickcheck: {status}; BAM sizes (MB): {sizes}")
    print(f"agreement of primary placements: {share:.4%} ({tally}) goal >= {GOAL_AGREEMENT:.1%}: "
          f"{'met' if share >= GOAL_AGREEMENT else 'NOT met'}")
    print(f"  among reads minimap2 places uniquely (MAPQ > 0): {share_unique:.4%}; the rest "
          "sit in repeats, where both pick one of equal placements by their own tie-break")
    print("load average (1, 5, 15 min): before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f} "
          "(2 cores)".format(*load_before, *load_after))
    print(f"time ratio helixflow / peer: {ratio:.3f} goal <= {GOAL_RATIO}: "
          f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}")


if __name__ == "__main__":
    main()
