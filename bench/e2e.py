"""Benchmark E: a whole Phase-1 run against a plain script of the peer tools, side by side.

Input: ANCHORS' A2 (ART HS25 2x150 from E. coli K-12 at 30x, 464,160 pairs, seed 42),
gzipped with `gzip -1`; `--fold` makes it smaller for a quick look. Both sides start
from the gzipped pairs and a fresh output folder:

- peers, one after another: `fastp -D -w 2` → `lighter -k 21 <genome size> 0.1 -t 2` →
  `minimap2 -ax sr -t 2 | samtools sort -@1` → `samtools index` →
  `bcftools mpileup -f ref | bcftools call -mv -Oz`;
- helixflow: `helixflow run R1 R2 --reference ref --embed none --no-simulate` on a fresh
  store (the local Prefect server is started beforehand and not counted; Ray's start is).

Prints the wall times and the ratio (goal <= 1.0), then helixflow's breakdown read from
the flow run's task runs: per stage its task runs, the summed time inside tasks (kernel
plus the task's own store I/O) and its wall span; and for the whole run the time in
which no task ran at all (the flow's own work: Prefect submission and state calls, Ray
scheduling, lineage records; goal <= 10 % of wall). With `--shards N` a second
helixflow run cuts the input into N shards per sample to show the stages in parallel.
With `--mixed` the input is instead 8 samples of uneven size (a split of A2) run in one
helixflow run: its wall and core use (task seconds / wall / cores), the figure that
barriers between stages cost.

Run:
    .venv/bin/python bench/e2e.py                 # A2, default shards
    .venv/bin/python bench/e2e.py --shards 8      # and again with 8 shards per sample
    .venv/bin/python bench/e2e.py --fold 3        # a small input, for a quick look
    .venv/bin/python bench/e2e.py --mixed         # 8 samples, 10k-200k pairs
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from align import simulate  # noqa: E402  (the same cached ART pairs as bench/align.py)

OUT = REPO / "bench" / "out" / "e2e"
HELIXFLOW = str(Path(sys.executable).with_name("helixflow"))
CORES = os.cpu_count() or 1
PEERS = ("fastp", "lighter", "minimap2", "samtools", "bcftools")


def gzipped(fastq: Path) -> Path:
    """`<fastq>.gz` at gzip -1 (cached), as sequencers' files come."""
    out = OUT / f"{fastq.name}.gz"
    if not out.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        with fastq.open("rb") as src, gzip.open(f"{out}.tmp", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(f"{out}.tmp", out)
    return out


def genome_size(fasta: Path) -> int:
    return sum(len(line.strip()) for line in fasta.open() if not line.startswith(">"))


def run_peers(ref: Path, r1: Path, r2: Path, work: Path) -> dict[str, float]:
    """The peers' script, one command after another; wall seconds per step."""
    size = genome_size(ref)
    steps = {
        "fastp -D": ["fastp", "-i", r1, "-I", r2, "-o", "q1.fq.gz", "-O", "q2.fq.gz", "-D",
                     "-w", "2", "-j", "fastp.json", "-h", "fastp.html"],
        "lighter": ["lighter", "-r", "q1.fq.gz", "-r", "q2.fq.gz", "-k", "21", str(size),
                    "0.1", "-t", "2", "-od", "."],
        "minimap2 | samtools sort": ["bash", "-o", "pipefail", "-c",
                                     f"minimap2 -ax sr -t 2 {ref} q1.cor.fq.gz q2.cor.fq.gz "
                                     "2>/dev/null | samtools sort -@1 -o peers.bam - "
                                     "2>/dev/null"],
        "samtools index": ["samtools", "index", "peers.bam"],
        "bcftools mpileup | call": ["bash", "-o", "pipefail", "-c",
                                    f"bcftools mpileup -f {ref} peers.bam 2>/dev/null | "
                                    "bcftools call -mv -Oz -o peers.vcf.gz 2>/dev/null"],
    }
    times = {}
    for name, cmd in steps.items():
        start = time.perf_counter()
        subprocess.run([str(c) for c in cmd], cwd=work, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        times[name] = time.perf_counter() - start
    return times


def run_helixflow(inputs: list[Path], ref: Path, work: Path, api_url: str,
                  shard_size: int | None) -> dict[str, Any]:
    """`helixflow run` on a fresh store; its wall time and flow run id."""
    cmd = [HELIXFLOW, "run", *map(str, inputs), "--reference", str(ref), "--embed", "none",
           "--no-simulate", "--store", str(work / "store")]
    if shard_size:
        cmd += ["--shard-size", str(shard_size)]
    env = {**os.environ, "PREFECT_API_URL": api_url, "COLUMNS": "200"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"helixflow run failed:\n{proc.stdout}\n{proc.stderr}")
    found = re.search(r"/runs/flow-run/([0-9a-f-]{36})", proc.stdout)
    if found is None:
        sys.exit(f"no flow run id in helixflow's output:\n{proc.stdout}")
    run_id = found.group(1)
    reads = re.search(r"✓ \S+ ingest \S+ s\): ([\d,]+) reads", proc.stdout)
    return {"wall": wall, "flow_run_id": run_id, "stdout": proc.stdout,
            "bytes": stage_bytes(work / "store", run_id),
            "reads": int(reads.group(1).replace(",", "")) if reads else 0}


def breakdown(api_url: str, flow_run_id: str) -> dict[str, Any]:
    """Per stage and for the whole run, from the flow run's task runs."""
    os.environ["PREFECT_API_URL"] = api_url
    from prefect.client.orchestration import get_client

    from helixflow.app.progress import read_task_runs, tally

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        runs = read_task_runs(client, flow_run_id)
    intervals = sorted((r.start_time, r.end_time) for r in runs if r.start_time and r.end_time)
    busy, cursor = 0.0, None
    for start, end in intervals:  # the union of the task runs' intervals
        if cursor is None or start > cursor:
            busy += (end - start).total_seconds()
            cursor = end
        elif end > cursor:
            busy += (end - cursor).total_seconds()
            cursor = end
    wall = (flow_run.end_time - flow_run.start_time).total_seconds()
    stages = tally(runs)
    return {"flow_wall": wall, "busy": busy, "idle": max(0.0, wall - busy), "stages": stages,
            "task_runs": len(runs), "task_seconds": sum(t.task_seconds for t in stages.values())}


def stage_bytes(store: Path, run_id: str) -> dict[str, int]:
    """Bytes each stage published in the run (its manifest), for the scaling plan."""
    manifest = json.loads((store / "runs" / run_id / "manifest.json").read_text())
    out: dict[str, int] = {}
    for artifact in manifest["artifacts"]:
        out[artifact["stage"]] = out.get(artifact["stage"], 0) + int(artifact["size"] or 0)
    return out


def print_breakdown(label: str, run: dict[str, Any], parts: dict[str, Any]) -> None:
    print(f"\n{label}: {run['wall']:.1f} s wall for `helixflow run` "
          f"({parts['flow_wall']:.1f} s of flow run; the rest is the process, Ray's start "
          "and the reference check before the flow)")
    print(f"  {'stage':<10} {'tasks':>6} {'in tasks s':>11} {'span s':>8}")
    for t in parts["stages"].values():
        print(f"  {t.stage:<10} {t.total:>6} {t.task_seconds:>11.1f} {t.span_seconds:>8.1f}")
    wall = parts["flow_wall"]
    if run.get("bytes") and run.get("reads"):
        reads = run["reads"]
        print("  bytes published per input read: " + ", ".join(
            f"{stage} {size / reads:.1f}" for stage, size in run["bytes"].items()))
    print(f"  {parts['task_runs']} task runs; {parts['task_seconds']:.1f} s in tasks; no task "
          f"running for {parts['idle']:.1f} s = {100 * parts['idle'] / wall:.1f} % of the flow "
          f"run (goal <= 10 %); cores used {parts['task_seconds'] / wall / CORES:.0%} of "
          f"{CORES}")


def mixed_samples(r1: Path, r2: Path, sizes: list[int]) -> list[Path]:
    """8 samples cut from A2's pairs, in the given sizes (pairs), gzipped (cached)."""
    out: list[Path] = []
    with r1.open() as h1, r2.open() as h2:
        for i, pairs in enumerate(sizes):
            names = [OUT / f"mixed{i}_{pairs}_R{m}.fq.gz" for m in (1, 2)]
            if all(n.exists() for n in names):
                for _ in range(4 * pairs):
                    h1.readline()
                    h2.readline()
            else:
                OUT.mkdir(parents=True, exist_ok=True)
                for name, handle in zip(names, (h1, h2), strict=True):
                    with gzip.open(f"{name}.tmp", "wt", compresslevel=1) as dst:
                        for _ in range(4 * pairs):
                            dst.write(handle.readline())
                    os.replace(f"{name}.tmp", name)
            out += names
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fold", type=float, default=30.0, help="ART fold (A2: 30)")
    parser.add_argument("--shards", type=int, default=0,
                        help="also run helixflow with this many shards per sample")
    parser.add_argument("--mixed", action="store_true",
                        help="8 samples of uneven size in one run instead of peers vs helixflow")
    args = parser.parse_args()
    missing = [t for t in PEERS if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing peer tools: {', '.join(missing)} (make system-deps)")
    ref, fq1, fq2 = simulate("ecoli_k12_mg1655", args.fold)
    r1, r2 = gzipped(fq1), gzipped(fq2)
    pairs = sum(1 for _ in fq1.open()) // 4
    from helixflow.app.server import ensure_server

    api_url = ensure_server().api_url
    load_before = os.getloadavg()
    print(f"input: {r1.name}, {r2.name}: {pairs:,} pairs; reference {ref.name}; "
          f"Prefect server {api_url}")
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        work = Path(tmp)
        if args.mixed:
            sizes = [10_000, 200_000, 20_000, 100_000, 40_000, 15_000, 60_000, 19_160]
            inputs = mixed_samples(fq1, fq2, sizes)
            run = run_helixflow(inputs, ref, work / "mixed", api_url, None)
            print_breakdown(f"8 samples of {', '.join(f'{s // 1000}k' for s in sizes)} pairs",
                            run, breakdown(api_url, run["flow_run_id"]))
        else:
            (work / "peers").mkdir()
            peers = run_peers(ref, r1, r2, work / "peers")
            run = run_helixflow([r1, r2], ref, work / "hf", api_url, None)
            peer_wall = sum(peers.values())
            print("peers' script: " + ", ".join(f"{k} {v:.1f} s" for k, v in peers.items())
                  + f"; total {peer_wall:.1f} s")
            print_breakdown("helixflow", run, breakdown(api_url, run["flow_run_id"]))
            print(f"\nwall ratio helixflow / peers: {run['wall'] / peer_wall:.2f} (goal <= 1.0)")
            if args.shards:
                size = -(-pairs // args.shards)
                sharded = run_helixflow([r1, r2], ref, work / "hf-sharded", api_url, size)
                print_breakdown(f"helixflow, {args.shards} shards of {size:,} pairs", sharded,
                                breakdown(api_url, sharded["flow_run_id"]))
                print(f"\nwall ratio helixflow ({args.shards} shards) / peers: "
                      f"{sharded['wall'] / peer_wall:.2f}")
    print("load average (1, 5, 15 min): before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f} "
          f"({CORES} cores)".format(*load_before, *os.getloadavg()))


if __name__ == "__main__":
    main()
