"""Benchmark: peak memory of the embedding steps at 1x and 10x input (shards of reads).

Question (embeddings issue): do hashing, training input and inference stream shard by
shard, so that peak RSS does not grow with the number of shards?

Input: 10 (the largest --scales) read shards of --reads reads each (default 50,000; at
100,000 lshvec-embed alone peaks near 11 GB), 150 bp single-end reads in READS_SCHEMA
written with `tasks.reads.write_read_shard`, sampled at seeded random positions and
strands of the shared genomes (random sequence if they are missing) with 0.5 %
substitutions and 0.1 % N. Scale s uses shards 0..s-1. DNABERT on a CPU is much slower
than the other steps, so it gets its own shards of --dnabert-reads reads (the first
reads of each main shard), still 1 vs 10 shards.

Every (step, scale) runs in a FRESH Python subprocess (OMP/MKL/torch at one thread), so
its peak RSS is its own. Peak = VmHWM of /proc/self/status, which equals
`getrusage(RUSAGE_SELF).ru_maxrss` here (both are recorded; ru_maxrss would start at the
driver's peak if the driver were big, so inputs and models are made in subprocesses too);
RUSAGE_CHILDREN is recorded before and after the kernel (it only sees helpers run at
import time). The worker also records the high-water mark after imports ("base", torch,
pyarrow and the task modules loaded) and after every shard, to show whether the peak
keeps rising shard after shard, and pyarrow's memory-pool peak. Wall time is the
kernel's time over all shards (imports excluded).

Steps, each run as the pipeline's task runs it (but in process, without Prefect or Ray):
- kmer: `embed_kmer_spectra` -- per shard, `iter_read_sequences` batches (65,536 rows)
  -> `canonical_kmer_spectra` (k = 5) -> `EmbeddingWriter`.
- lsh-tokenize: `tokenize_shard` -- per shard, batches -> `tokenize` -> Parquet token shard
  (hash fitted once beforehand on 20,000 reads of the first shards, as `fit_lsh_hash`).
- lshvec-train-input: what one `_RayWorker` actor of `train_lshvec` does, in process, with
  `TokenSource`s of the token shards (here one worker gets them all, i.e.
  lshvec_workers = 1): `counts` (streamed, a vocabulary-sized table), `setup` (the model;
  one streaming pass counts the in-vocabulary tokens) and the first `train_round`, which
  streams the sources in a random order through the bounded read-shuffle buffer and
  trains --train-tokens tokens. Nothing is loaded whole (the pipeline no longer puts
  token shards in the Ray object store), so what may still grow with the shards is the
  model: its vocabulary. Full training time is not measured; "hwm_after_each_MB" is the
  high-water mark after counts, setup and the round.
- lshvec-embed: `embed_lshvec_shard` -- per token shard, load the model, then
  `write_lshvec_embeddings` (50k-read batches, SIF), `EmbeddingWriter` (model trained once
  beforehand, 1 epoch on the first 20,000 reads).
- dnabert: `embed_dnabert_shard` without Ray Data -- per shard, `iter_read_sequences`
  batches of 200,000 rows -> `embed` (model loaded once per shard, as a fresh actor pool
  does, torch threads = 1, batch 64) -> two `EmbeddingWriter`s (mean, cls). The model is
  a tiny DNABERT-6 pretrained once with `tasks.dnabert_train.pretrain` (flow defaults:
  2 layers, hidden 64, 160 positions; --pretrain-steps steps).

Output: a table (step, 1x and 10x peak RSS MB, ratio, wall 1x / 10x) and JSON in
bench/out/embed_memory/ (results.json; scratch shards under bench/out/embed_memory/work).

Run (inputs and models are cached under bench/out/embed_memory/work; --fresh remakes):
    .venv/bin/python bench/embed_memory.py                       # 50k reads/shard, 1x, 10x
    .venv/bin/python bench/embed_memory.py --reads 20000 --steps kmer,lsh-tokenize
    .venv/bin/python bench/embed_memory.py --worker kmer --scale 1   # one measurement
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "embed_memory"
WORK = OUT / "work"
sys.path.insert(0, str(REPO))

STEPS = ("kmer", "lsh-tokenize", "lshvec-train-input", "lshvec-embed", "dnabert")
READ_LENGTH = 150
KMER_K = 5  # EmbedParams.kmer_k
LSH_K, LSH_HASH_SIZE = 15, 20  # EmbedParams.lshvec_k, lshvec_hash_size
LSH_DIM = 100  # EmbedParams.lshvec_dim
DNABERT_BATCH_ROWS = 200_000  # embed_dnabert_shard's iter_read_sequences batch
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "TOKENIZERS_PARALLELISM": "false"}


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def shared_genomes() -> Path:
    shared = Path(os.environ.get("HELIXFLOW_SHARED_DATA") or REPO.parent / "shared" / "data")
    return shared / "genomes"


# --------------------------------------------------------------------------------------
# Memory probes


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hwm_mb() -> float:
    """Peak RSS of this process so far, MB: VmHWM, the high-water mark of this process's
    own address space (ru_maxrss can start at the parent's peak: see `worker`)."""
    return _status_mb("VmHWM")


def rss_mb() -> float:
    """Current RSS of this process (VmRSS), MB."""
    return _status_mb("VmRSS")


def maxrss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """getrusage(who).ru_maxrss in MB (Linux reports KiB)."""
    return resource.getrusage(who).ru_maxrss / 1024


# --------------------------------------------------------------------------------------
# Inputs


def _genome_codes(rng: np.random.Generator) -> np.ndarray:
    """ACGT bytes of the shared genomes concatenated (random 5 Mbp if they are missing)."""
    folder = shared_genomes()
    parts = []
    for fasta in sorted(folder.glob("*.fa")) if folder.is_dir() else []:
        seq = b"".join(line.strip() for line in fasta.read_bytes().splitlines()
                       if not line.startswith(b">"))
        parts.append(np.frombuffer(seq.upper(), np.uint8))
    if not parts:
        return np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, 5_000_000)]
    return np.concatenate(parts)


def _reads_table(genome: np.ndarray, n: int, first: int, rng: np.random.Generator) -> pa.Table:
    """n single-end reads in READS_SCHEMA (seeded positions, strands, errors, Ns)."""
    from helixflow.tasks.reads import READS_SCHEMA

    comp = np.arange(256, dtype=np.uint8)
    for a, b in (b"AT", b"TA", b"CG", b"GC"):
        comp[a] = b
    starts = rng.integers(0, len(genome) - READ_LENGTH, n)
    reads = genome[starts[:, None] + np.arange(READ_LENGTH)]
    flip = rng.random(n) < 0.5
    reads[flip] = comp[reads[flip, ::-1]]
    subs = rng.random(reads.shape) < 0.005
    reads[subs] = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, int(subs.sum()))]
    reads[rng.random(reads.shape) < 0.001] = ord("N")
    offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32) * READ_LENGTH)
    seqs = pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(reads.tobytes())])
    qual = pa.Array.from_buffers(pa.string(), n, [None, offsets,
                                                  pa.py_buffer(b"I" * (n * READ_LENGTH))])
    index = np.arange(first, first + n, dtype=np.int64)
    ids = pa.array([f"read{i}" for i in index], pa.string())
    return pa.Table.from_arrays(
        [ids, pa.array(np.zeros(n, np.uint8)), pa.array(index), pa.array(index + 1), seqs,
         qual, pa.array(np.zeros(n, bool))], schema=READS_SCHEMA)


def make_shards(n_shards: int, reads: int, dnabert_reads: int) -> None:
    """Read shards (and the smaller DNABERT ones) under WORK, reused when present."""
    from helixflow.tasks.reads import write_read_shard

    spec = {"shards": n_shards, "reads": reads, "dnabert_reads": dnabert_reads, "v": 1}
    marker = WORK / "reads.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return
    if WORK.exists():  # other sizes: shards, hash, models and token shards are stale
        import shutil

        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    rng = np.random.default_rng(7)
    genome = _genome_codes(rng)
    for i in range(n_shards):
        table = _reads_table(genome, reads, i * reads, rng)
        write_read_shard(table, read_shard(i))
        write_read_shard(table.slice(0, dnabert_reads), dnabert_shard(i))
    marker.write_text(json.dumps(spec))


def read_shard(i: int) -> Path:
    return WORK / "reads" / f"bench.reads.{i:05d}.parquet"


def dnabert_shard(i: int) -> Path:
    return WORK / "reads-dnabert" / f"bench.reads.{i:05d}.parquet"


def token_shard(scale: int, i: int) -> Path:
    return WORK / f"tokens-{scale}x" / f"bench.reads.{i:05d}.tokens.parquet"


LSH_PATH = WORK / "models" / "lsh.npz"
LSHVEC_MODEL = WORK / "models" / "lshvec.npz"
DNABERT_MODEL = WORK / "models" / "dnabert"


def prepare_lsh() -> None:
    """The hash, as fit_lsh_hash: 20,000 reads sampled from the first two shards."""
    from helixflow.tasks.lsh import fit_lsh

    if LSH_PATH.exists():
        return
    seqs = pq.read_table(read_shard(0), columns=["sequence"]).column("sequence")
    fit_lsh(seqs.slice(0, 20_000), k=LSH_K, hash_size=LSH_HASH_SIZE, seed=0).save(LSH_PATH)


def prepare_lshvec_model() -> None:
    """A skip-gram model for the embedding step (1 epoch on 20,000 reads of shard 0)."""
    from helixflow.tasks.lsh import LshFunction, tokenize
    from helixflow.tasks.skipgram import SkipGramConfig, train_skipgram

    if LSHVEC_MODEL.exists():
        return
    lsh = LshFunction.load(LSH_PATH)
    seqs = pq.read_table(read_shard(0), columns=["sequence"]).column("sequence")
    toks = tokenize(seqs.slice(0, 20_000), lsh)
    model = train_skipgram(toks, SkipGramConfig(dim=LSH_DIM, epochs=1))
    model.save(LSHVEC_MODEL, lsh_digest=lsh.digest())


def prepare_dnabert(steps: int) -> None:
    """A tiny DNABERT-6 pretrained with the project's `pretrain` (flow's default shape)."""
    from helixflow.tasks.dnabert_train import PretrainConfig, pretrain

    if (DNABERT_MODEL / "config.json").exists():
        return
    config = PretrainConfig(k=6, layers=2, hidden=64, heads=2, intermediate=256,
                            max_tokens=160, steps=steps, batch_size=16,
                            max_sequences=5_000, threads=1)
    seqs = pq.read_table(dnabert_shard(0), columns=["sequence"]).column("sequence")
    pretrain(seqs, config, DNABERT_MODEL)


# --------------------------------------------------------------------------------------
# Steps (run in the worker subprocess). Each returns extra facts for the report.


def step_kmer(scale: int, marks: list[float], args: argparse.Namespace) -> dict[str, Any]:
    from helixflow.tasks.embeddings import EmbeddingWriter, iter_read_sequences
    from helixflow.tasks.kmers import canonical_kmer_count, canonical_kmer_spectra

    out = WORK / f"kmer-{scale}x"
    rows = 0
    for i in range(scale):
        source = pq.ParquetFile(read_shard(i), memory_map=True)
        with EmbeddingWriter(out / f"{i}.kmer{KMER_K}.parquet", canonical_kmer_count(KMER_K),
                             method=f"kmer{KMER_K}", source_shard=str(read_shard(i))) as writer:
            for ids, sequences, row in iter_read_sequences(source):
                writer.write(ids, canonical_kmer_spectra(sequences, KMER_K, ids=ids), row)
        rows += writer.rows
        marks.append(hwm_mb())
    return {"rows": rows}


def step_tokenize(scale: int, marks: list[float], args: argparse.Namespace) -> dict[str, Any]:
    from helixflow.tasks.lsh import LshFunction, write_token_shard

    rows = tokens = 0
    for i in range(scale):
        lsh = LshFunction.load(LSH_PATH)  # load_lsh, once per task
        source = pq.ParquetFile(read_shard(i), memory_map=True)
        path = token_shard(scale, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        shard_rows, shard_tokens = write_token_shard(source, lsh, path)
        rows += shard_rows
        tokens += shard_tokens
        marks.append(hwm_mb())
    return {"rows": rows, "tokens": tokens}


def step_train_input(scale: int, marks: list[float],
                     args: argparse.Namespace) -> dict[str, Any]:
    from helixflow.tasks.skipgram import SkipGramConfig
    from helixflow.tasks.skipgram_ray import _RayWorker
    from helixflow.tasks.token_stream import TokenSource, build_vocab

    # what train_lshvec hands an actor: TokenSources of the token shards (parts = 1 when
    # workers <= shards), here local paths (a local store's artifacts are the same files)
    sources = [TokenSource(str(token_shard(scale, i))) for i in range(scale)]
    config = SkipGramConfig(dim=LSH_DIM, epochs=1)
    worker = _RayWorker(config, 0, *sources)  # the actor's __init__
    vocab = build_vocab([worker.counts()], config.min_count)  # streamed
    marks.append(hwm_mb())
    size = worker.setup(vocab.buckets, vocab.counts)  # model; in-vocab total from the counts
    marks.append(hwm_mb())
    t = time.perf_counter()
    worker.train_round(0, min(size, args.train_tokens), 0.0, float(size), 1.0)
    marks.append(hwm_mb())
    return {"corpus_tokens": int(size), "vocab": len(vocab),
            "model_MB": round(2 * len(vocab) * LSH_DIM * 4 / 2**20, 1),
            "first_round_s": round(time.perf_counter() - t, 2)}


def step_lshvec_embed(scale: int, marks: list[float],
                      args: argparse.Namespace) -> dict[str, Any]:
    from helixflow.tasks.embeddings import EmbeddingWriter
    from helixflow.tasks.lshvec import write_lshvec_embeddings
    from helixflow.tasks.skipgram import SkipGramModel

    rows = 0
    for i in range(scale):
        model = SkipGramModel.load(LSHVEC_MODEL)  # load_model, once per task
        path = token_shard(scale, i)
        with EmbeddingWriter(WORK / f"lshvec-{scale}x" / f"{i}.lshvec.parquet",
                             int(model.vectors.shape[1]), method="lshvec",
                             source_shard=str(path), model_id="bench") as writer:
            write_lshvec_embeddings(pq.ParquetFile(path, memory_map=True), model, "sif",
                                    writer)
        rows += writer.rows
        del model
        marks.append(hwm_mb())
    return {"rows": rows}


def step_dnabert(scale: int, marks: list[float], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from helixflow.tasks.dnabert import POOLINGS, embed
    from helixflow.tasks.dnabert_checkpoint import load_model
    from helixflow.tasks.embeddings import EmbeddingWriter, iter_read_sequences

    torch.set_num_threads(1)
    rows = 0
    for i in range(scale):
        bert, tokenizer = load_model(DNABERT_MODEL)  # an actor pool per shard task
        dim = int(bert.config.hidden_size)
        source = pq.ParquetFile(dnabert_shard(i), memory_map=True)
        writers = {pool: EmbeddingWriter(WORK / f"dnabert-{scale}x" / f"{i}.{pool}.parquet",
                                         dim, method=f"dnabert-{pool}",
                                         source_shard=str(dnabert_shard(i)), model_id="bench")
                   for pool in POOLINGS}
        for ids, sequences, row in iter_read_sequences(source, batch_rows=DNABERT_BATCH_ROWS):
            vectors = embed(sequences, (bert, tokenizer), batch_size=64, threads=1)
            for pool in POOLINGS:
                writers[pool].write(ids, vectors[pool], row)
        rows += sum(w.close() for w in writers.values()) // len(POOLINGS)
        del bert, tokenizer
        marks.append(hwm_mb())
    return {"rows": rows}


STEP_FUNCS: dict[str, Callable[[int, list[float], argparse.Namespace], dict[str, Any]]] = {
    "kmer": step_kmer,
    "lsh-tokenize": step_tokenize,
    "lshvec-train-input": step_train_input,
    "lshvec-embed": step_lshvec_embed,
    "dnabert": step_dnabert,
}


def worker(args: argparse.Namespace) -> None:
    """One (step, scale) measurement in this (fresh) process; prints one JSON line."""
    import torch  # imported up front by every step's module: part of the base

    import helixflow.tasks.dnabert
    import helixflow.tasks.embeddings
    import helixflow.tasks.kmers
    import helixflow.tasks.lshvec  # noqa: F401 (imported for the base, as the tasks import them)

    torch.set_num_threads(1)
    base = hwm_mb()
    children_base = maxrss_mb(resource.RUSAGE_CHILDREN)
    marks: list[float] = []
    t0 = time.perf_counter()
    extra = STEP_FUNCS[args.worker](args.scale, marks, args)
    wall = time.perf_counter() - t0
    # ru_maxrss survives exec (Linux keeps the larger of the parent's and the child's
    # peak), so it equals VmHWM only while the driver stays small -- it does: all heavy
    # preparation runs in subprocesses too. RUSAGE_CHILDREN covers helper processes run
    # during imports (e.g. by platform/ctypes), none run by the kernels (children_base).
    print(json.dumps({"step": args.worker, "scale": args.scale, "wall_s": round(wall, 2),
                      "base_MB": round(base, 1), "peak_MB": round(hwm_mb(), 1),
                      "ru_maxrss_MB": round(maxrss_mb(), 1),
                      "children_maxrss_MB": round(maxrss_mb(resource.RUSAGE_CHILDREN), 1),
                      "children_base_MB": round(children_base, 1),
                      "rss_end_MB": round(rss_mb(), 1),
                      "arrow_pool_max_MB": round(pa.default_memory_pool().max_memory() / 2**20,
                                                 1),
                      "hwm_after_each_MB": [round(m, 1) for m in marks], **extra}))


# --------------------------------------------------------------------------------------
# Driver


PREPARE = ("inputs", "lshvec-embed", "dnabert")


def prepare(args: argparse.Namespace) -> None:
    """Inputs and models, made in a subprocess so that the driver stays small."""
    if args.prepare == "inputs":
        make_shards(args.scale, args.reads, args.dnabert_reads)
        prepare_lsh()
    elif args.prepare == "lshvec-embed":
        prepare_lshvec_model()
    else:
        prepare_dnabert(args.pretrain_steps)


def run_prepare(what: str, args: argparse.Namespace, shards: int) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--prepare", what, "--scale",
           str(shards), "--reads", str(args.reads), "--dnabert-reads", str(args.dnabert_reads),
           "--pretrain-steps", str(args.pretrain_steps)]
    subprocess.run(cmd, env={**os.environ, **THREAD_ENV}, check=True)


def run_one(step: str, scale: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", step, "--scale",
           str(scale), "--train-tokens", str(args.train_tokens)]
    env = {**os.environ, **THREAD_ENV}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        return {"step": step, "scale": scale, "error": f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: list[dict[str, Any]], scales: list[int]) -> str:
    lo, hi = scales[0], scales[-1]
    head = (f"{'step':<20} {f'{lo}x peak MB':>11} {f'{hi}x peak MB':>11} {'ratio':>6} "
            f"{f'{lo}x dMB':>8} {f'{hi}x dMB':>8} {'dratio':>6} "
            f"{f'wall {lo}x s':>10} {f'wall {hi}x s':>10}")
    lines = [head, "-" * len(head)]
    for step in dict.fromkeys(r["step"] for r in results):
        got = {r["scale"]: r for r in results if r["step"] == step}
        a, b = got.get(lo, {}), got.get(hi, {})
        if "peak_MB" not in a or "peak_MB" not in b:
            lines.append(f"{step:<20} {a.get('error', '?')} / {b.get('error', '?')}")
            continue
        da, db = a["peak_MB"] - a["base_MB"], b["peak_MB"] - b["base_MB"]
        lines.append(
            f"{step:<20} {a['peak_MB']:>11.0f} {b['peak_MB']:>11.0f} "
            f"{b['peak_MB'] / a['peak_MB']:>6.2f} {da:>8.0f} {db:>8.0f} "
            f"{db / max(da, 1):>6.2f} {a['wall_s']:>10.1f} {b['wall_s']:>10.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=50_000, help="reads per shard")
    parser.add_argument("--dnabert-reads", type=int, default=3_000,
                        help="reads per DNABERT shard (CPU inference is slow)")
    parser.add_argument("--scales", default="1,10", help="numbers of shards, e.g. 1,10")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"subset of {STEPS}")
    parser.add_argument("--train-tokens", type=int, default=200_000,
                        help="tokens trained in lshvec-train-input's first round")
    parser.add_argument("--pretrain-steps", type=int, default=30,
                        help="masked-LM steps of the tiny DNABERT")
    parser.add_argument("--fresh", action="store_true", help="rebuild shards and models")
    parser.add_argument("--worker", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", choices=PREPARE, help=argparse.SUPPRESS)
    parser.add_argument("--scale", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.prepare:
        prepare(args)
        return

    scales = sorted(int(s) for s in args.scales.split(","))
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {STEPS}")
    if args.fresh and (WORK / "reads.json").exists():
        (WORK / "reads.json").unlink()
    load_before = load()
    print(load_before, file=sys.stderr)
    t0 = time.perf_counter()
    run_prepare("inputs", args, max(scales))
    print(f"inputs ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    results: list[dict[str, Any]] = []
    for step in steps:
        if step in ("lshvec-embed", "dnabert"):
            run_prepare(step, args, max(scales))
        for scale in scales:
            if step in ("lshvec-train-input", "lshvec-embed") and not token_shard(
                    scale, scale - 1).exists():
                results.append(run_one("lsh-tokenize", scale, args) | {"note": "prereq"})
            r = run_one(step, scale, args)
            print(json.dumps(r), file=sys.stderr)
            results.append(r)
    load_after = load()
    measured = [r for r in results if r.get("note") != "prereq"]
    print(f"\nreads/shard {args.reads} (DNABERT {args.dnabert_reads}), scales {scales}; "
          f"peak = VmHWM (= ru_maxrss) of a fresh process, imports included; dMB = peak - base "
          f"(base = HWM after imports); {load_before} -> {load_after}")
    print(table(measured, scales))
    ok = [r for r in measured if "peak_MB" in r]
    if ok:
        gap = max(abs(r["ru_maxrss_MB"] - r["peak_MB"]) for r in ok)
        print(f"ru_maxrss vs VmHWM: max difference {gap:.1f} MB; RUSAGE_CHILDREN grew in "
              f"{sum(r['children_maxrss_MB'] > r['children_base_MB'] for r in ok)} runs")
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"reads_per_shard": args.reads, "dnabert_reads_per_shard": args.dnabert_reads,
              "scales": scales, "load_before": load_before, "load_after": load_after,
              "train_tokens": args.train_tokens, "results": measured}
    (OUT / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
