"""Benchmark: DNABERT embedding throughput, helixflow against a plain Hugging Face loop.

Model: a small DNABERT-6 pretrained by `tasks.dnabert_train.pretrain` on reads sampled from the
shared genomes (2 layers, hidden 128, 256 positions), cached under bench/out/dnabert/model
(delete it, or pass --retrain, to train again). Pass --model DIR to time any checkpoint in
DNABERT's layout instead (a DNABERT-6 download works).

Input: --n reads of --length bp at seeded random positions of the shared genomes (so a
few carry N), one window each.

Timed, each in this one process unless said otherwise, vectors pooled the same way
(mean over the k-mer tokens, and the [CLS] vector):

- hf-legacy: what DNABERT's own scripts do: k-mers joined by spaces in Python, Hugging
  Face's Python BertTokenizer (BertTokenizerLegacy in transformers 5, do_lower_case=False),
  padding to the batch's longest, BertModel.from_pretrained under torch.no_grad, batches
  of --batch;
- hf-fast: the same with transformers 5's default BertTokenizer (Rust `tokenizers`);
- helixflow: `embed` in process (NumPy k-mer tokenizer, inference_mode, no pooler,
  length-sorted batches without a mask when nothing is padded), torch threads = cores;
- ray-1 / ray-2: Ray Data `map_batches(DnabertEmbedder)` on an actor pool of 1 or 2
  actors, one torch thread each, from an Arrow table in 8 blocks to the collected
  vectors; the time includes starting the actors and loading the model in each (Ray
  itself is started before the clock).

Times are the best of --reps runs. Vectors are compared with hf-legacy's (max abs diff).

Run:
    .venv/bin/python bench/dnabert.py                 # 4000 reads of 150 bp
    .venv/bin/python bench/dnabert.py --n 1000 --reps 1
    .venv/bin/python bench/dnabert.py --model /path/to/DNA_bert_6 --n 500
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "dnabert"
sys.path.insert(0, str(REPO))

from helixflow.tasks.dnabert import embed, embed_dataset  # noqa: E402
from helixflow.tasks.dnabert_checkpoint import load_model, model_digest  # noqa: E402
from helixflow.tasks.dnabert_train import PretrainConfig, pretrain  # noqa: E402
from helixflow.tasks.orfs import iter_fasta  # noqa: E402

GENOMES = ("ecoli_k12_mg1655", "saureus_nctc8325", "lambda", "t7", "human_mito", "sarscov2")
BENCH_MODEL = PretrainConfig(k=6, layers=2, hidden=128, heads=2, intermediate=512,
                             max_tokens=256, steps=300, batch_size=32, lr=1e-3, seed=0)  # fmt: skip


def shared_genomes() -> Path:
    shared = Path(os.environ.get("HELIXFLOW_SHARED_DATA") or REPO.parent / "shared" / "data")
    return shared / "genomes"


def sample_reads(n: int, length: int, seed: int) -> list[str]:
    """n reads of `length` bp at random positions of the shared genomes (seeded)."""
    rng = np.random.default_rng(seed)
    genomes = [seq for name in GENOMES for _, seq in iter_fasta(shared_genomes() / f"{name}.fa")]
    sizes = np.array([len(g) for g in genomes], float)
    which = rng.choice(len(genomes), size=n, p=sizes / sizes.sum())
    reads = []
    for g in which:
        start = int(rng.integers(0, len(genomes[g]) - length))
        reads.append(genomes[g][start : start + length])
    return reads


def load() -> str:
    return os.getloadavg().__repr__()


def hf_loop(model_dir: Path, reads: list[str], batch: int, legacy: bool) -> dict[str, np.ndarray]:
    """Plain Hugging Face: space-separated k-mers, BertTokenizer, BertModel, batched."""
    import torch
    from transformers import BertModel, BertTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    if legacy:
        tok = BertTokenizerLegacy(str(model_dir / "vocab.txt"), do_lower_case=False)
    else:
        tok = BertTokenizer.from_pretrained(model_dir, do_lower_case=False, local_files_only=True)
    model = BertModel.from_pretrained(model_dir, local_files_only=True).eval()
    k = len(tok.convert_ids_to_tokens(10))
    means, clss = [], []
    with torch.no_grad():
        for lo in range(0, len(reads), batch):
            texts = [
                " ".join(r[i : i + k] for i in range(len(r) - k + 1))
                for r in reads[lo : lo + batch]
            ]
            enc = tok(texts, padding=True, return_tensors="pt")
            states = model(**enc).last_hidden_state
            kmer = enc["attention_mask"].clone()
            kmer[:, 0] = 0
            kmer[torch.arange(len(texts)), enc["attention_mask"].sum(1) - 1] = 0
            means.append(((states * kmer[..., None]).sum(1) / kmer.sum(1, keepdim=True)).numpy())
            clss.append(states[:, 0].numpy())
    return {"mean": np.concatenate(means), "cls": np.concatenate(clss)}


STEADY: dict[str, float] = {}
"""Ray rows: seqs/s after the first output batch (actors started, model loaded)."""


def ray_embed(
    model_dir: Path, reads: list[str], actors: int, batch: int, precision: str, label: str
) -> dict[str, np.ndarray]:
    """Ray Data actor pool; also records the steady rate (after the first batch) in STEADY."""
    import ray

    table = pa.table({"i": np.arange(len(reads)), "sequence": reads})
    step = -(-len(reads) // 8)
    ds = ray.data.from_arrow([table.slice(lo, step) for lo in range(0, len(reads), step)])
    out = embed_dataset(
        ds, model_dir, actors=actors, rows_per_batch=256, batch_size=batch, threads=1,
        precision=precision,
    )  # fmt: skip
    parts, first_at, first_rows = [], None, 0
    for part in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        parts.append(part)
        if first_at is None:
            first_at, first_rows = time.perf_counter(), part.num_rows
    steady = (len(reads) - first_rows) / max(time.perf_counter() - (first_at or 0), 1e-9)
    STEADY[label] = max(STEADY.get(label, 0.0), steady)
    result = pa.concat_tables(parts).sort_by("i")
    width = result.schema.field("mean").type.list_size
    return {
        name: result.column(name).combine_chunks().values.to_numpy().reshape(-1, width)
        for name in ("mean", "cls")
    }


def timed(
    fn: Callable[[], dict[str, np.ndarray]], reps: int
) -> tuple[float, dict[str, np.ndarray], str]:
    best, result, loads = float("inf"), {}, []
    for _ in range(reps):
        loads.append(f"{os.getloadavg()[0]:.1f}")
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result, "/".join(loads)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--length", type=int, default=150)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated methods to skip")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    model_dir = args.model
    if model_dir is None:
        model_dir = OUT / "model"
        if args.retrain or not (model_dir / "helixflow.json").exists():
            t0 = time.perf_counter()
            pretrain(sample_reads(20_000, args.length, seed=1), BENCH_MODEL, model_dir)
            meta = json.loads((model_dir / "helixflow.json").read_text())
            print(f"pretrained {model_dir} in {time.perf_counter() - t0:.1f} s, "
                  f"loss {meta['losses'][0]:.3f} -> {meta['final_loss']:.3f}")  # fmt: skip
    model, tok = load_model(model_dir)
    print(f"model {model_dir} k={tok.k} layers={model.config.num_hidden_layers} "
          f"hidden={model.config.hidden_size} digest={model_digest(model_dir)[:12]}")  # fmt: skip
    reads = sample_reads(args.n, args.length, seed=2)
    print(f"{len(reads)} reads of {args.length} bp, batch {args.batch}, {cores} cores, "
          f"torch {torch.__version__}, load before {load()}")  # fmt: skip

    methods: dict[str, Callable[[], dict[str, np.ndarray]]] = {
        "hf-legacy": lambda: hf_loop(model_dir, reads, args.batch, legacy=True),
        "hf-fast": lambda: hf_loop(model_dir, reads, args.batch, legacy=False),
        "helixflow": lambda: embed(reads, model_dir, args.batch, threads=cores),
        "helixflow-1t": lambda: embed(reads, model_dir, args.batch, threads=1),
        "helixflow-bf16": lambda: embed(
            reads, model_dir, args.batch, threads=1, precision="bfloat16"
        ),
    }
    ray_methods = {
        "ray-1": lambda: ray_embed(model_dir, reads, 1, args.batch, "float32", "ray-1"),
        "ray-2": lambda: ray_embed(model_dir, reads, 2, args.batch, "float32", "ray-2"),
        "ray-2-bf16": lambda: ray_embed(model_dir, reads, 2, args.batch, "bfloat16", "ray-2-bf16"),
    }
    results: dict[str, tuple[float, dict[str, np.ndarray], str]] = {}
    for name, fn in methods.items():
        if name not in skip:
            results[name] = timed(fn, args.reps)
            print(f"  {name:10s} {results[name][0]:7.2f} s", flush=True)
    if not set(ray_methods) <= skip:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            for name, fn in ray_methods.items():
                if name not in skip:
                    results[name] = timed(fn, args.reps)
                    print(f"  {name:10s} {results[name][0]:7.2f} s", flush=True)
        finally:
            ray.shutdown()

    reference = results.get("hf-legacy", results.get("hf-fast", (0, {}, "")))[1]
    base = {b: results[b][0] for b in ("hf-legacy", "hf-fast") if b in results}
    print("\n| method | seconds | seqs/s | vs hf-legacy | vs hf-fast | steady seqs/s "
          "| max abs diff | load |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, (sec, vec, loads) in results.items():
        diff = (
            max(float(np.abs(vec[p] - reference[p]).max()) for p in ("mean", "cls"))
            if reference
            else 0
        )
        ratios = [f"{base[b] / sec:.2f}x" if b in base else "-" for b in ("hf-legacy", "hf-fast")]
        steady = f"{STEADY[name]:.0f}" if name in STEADY else "-"
        print(f"| {name} | {sec:.2f} | {len(reads) / sec:.0f} | {ratios[0]} | {ratios[1]} | "
              f"{steady} | {diff:.1e} | {loads} |")  # fmt: skip
    if "ray-1" in results and "ray-2" in results:
        e2e = results["ray-1"][0] / results["ray-2"][0]
        print(f"\nscaling 1 -> 2 actors: {e2e:.2f}x end to end, "
              f"{STEADY['ray-2'] / STEADY['ray-1']:.2f}x steady")  # fmt: skip
    print(f"load after {load()}")


if __name__ == "__main__":
    main()
