"""Benchmark: kNN graph (exact vs hnswlib), eigensolvers, k-means and Leiden at scale;
and the cluster count and ARI of the pipeline's analysis on real read sets.

Part 1, `--reads` (the cluster count, issue 17): the analysis kernel of the pipeline
(`tasks.analysis.cluster_vectors`, default `AnalysisParams`: Hellinger for k-mer spectra,
PCA 10, 30-NN Euclidean self-tuning graph, at most 20,000 vectors sampled) on

- the demo of `make run` (`helixflow.app.demo`, DemoSpec(n_genomes=--genomes, seed=
  --demo-seed): both mates of every pair, labels from truth.tsv.gz);
- benchmark C of ANCHORS.md (13 genomes, ART -rs --art-seed; reads and LSHvec training
  as bench/lshvec.py: k=15, hash 20 bits, dim 100, 2 epochs, levels 14,8, 8 smoothing
  rounds, one process, SIF read vectors);

with canonical 5-mer spectra (kmer5) and LSHvec vectors. Per data set and vector type it
prints k and the ARI of the spectral clusters and of Leiden: "now" with k the larger of
the conductance k and the eigengap k (`tasks.spectral.choose_k`; both printed) and the
Leiden resolution giving k communities (`tasks.graph.leiden_k`), "before" (main) with the
eigengap alone (k_max 12) and Leiden at resolution 1 on the same graph. Read vectors are
cached under bench/out/spectral/ (LSHvec training takes minutes).

Part 2 (default): synthetic data at scale.

For each N (default 10k, 50k, 100k) a fresh subprocess (so peak RSS is per size) draws
N vectors of dim 100 from `--clusters` Gaussian clusters of unequal sizes (centres
N(0, sep^2 I), unit noise: nearest neighbours mostly share a cluster, but no coordinate
separates them) and times, with tasks.graph / tasks.spectral:

- exact kNN (scikit-learn brute force, `--k` neighbours, Euclidean) and hnswlib kNN
  (M=16, ef_construction=200, ef=max(128, 4k), all cores), with the hnswlib recall
  against the exact lists (skipped above `--exact-max`);
- the self-tuning weighted graph and its normalised Laplacian;
- the 11 smallest eigenpairs by eigsh (Lanczos on 2I - L) and by LOBPCG;
- k (`choose_k`: the larger of the conductance and the eigengap k) and k-means (n_init=10)
  on the row-normalised eigenvectors;
- Leiden at the resolution giving k communities (`leiden_k`) on the same graph;

and prints wall seconds (t_*) and process CPU seconds (cpu_*, all threads) per stage,
peak RSS, the k found and the adjusted Rand index of the
spectral labels and of Leiden's against the generating clusters.

Run:
    .venv/bin/python bench/spectral.py                    # N = 10k, 50k, 100k
    .venv/bin/python bench/spectral.py --sizes 20000 --exact-max 0
    .venv/bin/python bench/spectral.py --reads            # demo + benchmark C, k and ARI
    .venv/bin/python bench/spectral.py --reads --genomes 7 --demo-seed 11 --art-seed 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def clustered_data(
    n: int, dim: int, clusters: int, sep: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """N x dim float32 vectors from unequal Gaussian clusters, and the cluster of each."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, clusters)
    truth = rng.choice(clusters, size=n, p=weights / weights.sum())
    centres = rng.normal(0.0, sep, (clusters, dim))
    X = centres[truth] + rng.normal(0.0, 1.0, (n, dim))
    return X.astype(np.float32), truth


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(args: argparse.Namespace, n: int) -> dict[str, object]:
    """All stages for one N in this process; returns the figures."""

    from helixflow.tasks.graph import knn_indices, leiden_k, neighbour_graph
    from helixflow.tasks.spectral import (
        adjusted_rand,
        choose_k,
        normalized_laplacian,
        smallest_eigenvectors,
    )

    out: dict[str, object] = {"n": n, "dim": args.dim}
    X, truth = clustered_data(n, args.dim, args.clusters, args.sep, args.seed)
    out["rss_data_mb"] = round(peak_rss_mb(), 1)

    def timed(name: str, fn):
        start, cpu = time.perf_counter(), time.process_time()
        value = fn()
        out[f"t_{name}"] = round(time.perf_counter() - start, 2)
        out[f"cpu_{name}"] = round(time.process_time() - cpu, 2)
        return value

    approx, approx_d = timed(
        "knn_hnsw", lambda: knn_indices(X, args.k, "euclidean", exact_threshold=0, seed=0)
    )
    if n <= args.exact_max:
        exact, _ = timed(
            "knn_exact", lambda: knn_indices(X, args.k, "euclidean", exact_threshold=n)
        )
        hits = (exact[:, :, None] == approx[:, None, :]).any(axis=2).sum()
        out["hnsw_recall"] = round(float(hits) / exact.size, 4)
        del exact
    A = timed("graph", lambda: neighbour_graph(approx, approx_d, "self_tuning", metric="euclidean"))
    out["edges"] = int(A.nnz // 2)
    L = timed("laplacian", lambda: normalized_laplacian(A))
    values, vectors = timed("eigsh", lambda: smallest_eigenvectors(L, 11, "eigsh", seed=0))
    if not args.no_lobpcg:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            lob_values, _ = timed("lobpcg", lambda: smallest_eigenvectors(L, 11, "lobpcg", seed=0))
        out["lobpcg_fell_back"] = any("falling back" in str(w.message) for w in caught)
        out["eig_max_diff"] = float(np.abs(values - lob_values).max())
    k, labels, _ = timed("kmeans", lambda: choose_k(A, vectors, 9, seed=0, values=values))
    out["k"] = k
    out["ari_spectral"] = round(adjusted_rand(labels, truth), 4)
    communities, out["resolution"] = timed("leiden", lambda: leiden_k(A, k, seed=0))
    out["leiden_communities"] = len(np.unique(communities))
    out["ari_leiden"] = round(adjusted_rand(communities, truth), 4)
    out["t_spectral_total"] = round(
        sum(float(out[f"t_{s}"]) for s in ("knn_hnsw", "graph", "laplacian", "eigsh", "kmeans")),
        2,
    )
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


SPECTRAL_OUT = REPO / "bench" / "out" / "spectral"


def demo_vectors(genomes: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Both mates' sequences of the `make run` demo (DemoSpec with `genomes`, `seed`) and
    each read's genome."""
    import gzip

    from helixflow.app.demo import DemoSpec, write_demo

    demo = write_demo(SPECTRAL_OUT / f"demo_g{genomes}_s{seed}", DemoSpec(n_genomes=genomes,
                                                                         seed=seed))
    with gzip.open(demo.truth, "rt") as fh:
        fh.readline()
        genome = dict(line.split("\t")[:2] for line in fh)
    seqs, labels = [], []
    for path in (demo.r1, demo.r2):
        with gzip.open(path, "rt") as fh:
            lines = fh.read().splitlines()
        for name, seq in zip(lines[0::4], lines[1::4], strict=True):
            if seq:
                seqs.append(seq)
                labels.append(genome[name[1:].split()[0]])
    return seqs, np.unique(labels, return_inverse=True)[1]


def lshvec_vectors(seqs: list[str]) -> np.ndarray:
    """bench/lshvec.py's one-process LSHvec (its defaults) read vectors of `seqs`."""
    sys.path.insert(0, str(REPO / "bench"))
    import lshvec as bench_lshvec

    from helixflow.tasks.lshvec import (
        SkipGramConfig,
        fit_lsh,
        sequence_vectors,
        smooth_model,
        tokenize,
        train_skipgram,
    )

    cfg = SkipGramConfig(dim=100, window=5, negatives=5, epochs=2, lr=0.05, subsample=1e-5,
                         min_count=1, threads=1, levels=(14, 8), hash_size=20, sif_a=1e-6)
    tok, off = tokenize(seqs, fit_lsh(seqs, k=15, hash_size=20, seed=0))
    order = np.random.default_rng(0).permutation(len(seqs))
    train = bench_lshvec.take_reads(tok, off, order)
    model = smooth_model(train_skipgram(train, cfg), [train], 8)
    return sequence_vectors(tok, off, model.vectors, model.vocab, weighting="sif",
                            a=model.config.sif_a, backoff=model.backoff)


def read_sets(args: argparse.Namespace) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(data set, method, vectors, labels) for the demo and benchmark C, cached."""
    sys.path.insert(0, str(REPO / "bench"))
    import lshvec as bench_lshvec

    SPECTRAL_OUT.mkdir(parents=True, exist_ok=True)
    names = sorted(p.stem for p in bench_lshvec.shared_genomes().glob("*.fa"))
    sources = {
        f"demo {args.genomes} genomes (seed {args.demo_seed})":
            (f"demo_g{args.genomes}_s{args.demo_seed}",
             lambda: demo_vectors(args.genomes, args.demo_seed)),
        f"bench C 13 genomes (ART -rs {args.art_seed})":
            (f"benchc_rs{args.art_seed}", lambda: bench_lshvec.simulate(names, args.art_seed)),
    }
    out = []
    for title, (tag, reads) in sources.items():
        loaded: tuple[list[str], np.ndarray] | None = None
        for method in args.methods:
            path = SPECTRAL_OUT / f"{tag}_{method}.npz"
            if not path.exists():
                loaded = loaded or reads()
                seqs, labels = loaded
                print(f"computing {method} vectors of {title} ({len(seqs)} reads)",
                      file=sys.stderr, flush=True)
                X = (bench_lshvec.kmer_spectra(seqs, 5) if method == "kmer5"
                     else lshvec_vectors(seqs))
                np.savez(path, X=X.astype(np.float32), y=np.asarray(labels))
            data = np.load(path)
            out.append((title, method, data["X"], data["y"]))
    return out


def reads_bench(args: argparse.Namespace) -> None:
    """k and ARI of the analysis on the demo and benchmark C, now and before."""
    from helixflow.tasks.analysis import AnalysisParams, cluster_vectors
    from helixflow.tasks.graph import leiden
    from helixflow.tasks.spectral import _kmeans, adjusted_rand, conductance_k, eigengap_k

    params = AnalysisParams()
    print(f"| {'data set':38s} | vectors | true | before (eigengap): k ARI, Leiden res 1 n ARI"
          f" | now: k (cond, gap) ARI, Leiden res n ARI | s |")
    for title, method, X, y in read_sets(args):
        keep = np.sort(np.random.default_rng(params.seed).choice(
            len(X), min(len(X), params.max_points), replace=False))
        X, y = X[keep], y[keep]
        start = time.perf_counter()
        found = cluster_vectors(X, method, params)
        seconds = time.perf_counter() - start
        spectral = found.spectral
        old_k = eigengap_k(spectral.eigenvalues, params.k_max)
        old_labels = _kmeans(spectral.embedding, old_k, params.seed)
        old_leiden = leiden(found.graph, 1.0, params.seed)
        print(f"| {title:38s} | {method:7s} | {len(np.unique(y)):4d} "
              f"| k {old_k:2d} ARI {adjusted_rand(old_labels, y):.3f}, "
              f"Leiden {old_leiden.max() + 1:3d} ARI {adjusted_rand(old_leiden, y):.3f} "
              f"| k {spectral.n_clusters:2d} ({conductance_k(spectral.conductance)}, {old_k}) "
              f"ARI {adjusted_rand(spectral.labels, y):.3f}, "
              f"Leiden {found.resolution:.3g} {found.communities.max() + 1:3d} "
              f"ARI {adjusted_rand(found.communities, y):.3f} | {seconds:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--sep", type=float, default=0.5, help="sd of the cluster centres")
    parser.add_argument("--k", type=int, default=15, help="neighbours per point")
    parser.add_argument(
        "--exact-max",
        type=int,
        default=100_000,
        help="largest N given the exact (brute force) search too",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-lobpcg", action="store_true", help="skip the LOBPCG timing")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reads", action="store_true",
                        help="k and ARI on the demo and benchmark C instead")
    parser.add_argument("--genomes", type=int, default=4, help="--reads: demo genomes")
    parser.add_argument("--demo-seed", type=int, default=7, help="--reads: demo seed")
    parser.add_argument("--art-seed", type=int, default=7, help="--reads: bench C ART -rs")
    parser.add_argument("--methods", nargs="+", default=["kmer5", "lshvec"],
                        choices=["kmer5", "lshvec"], help="--reads: vector types")
    args = parser.parse_args()
    if args.reads:
        print(f"cores {os.cpu_count()}, load average at start {os.getloadavg()}", flush=True)
        reads_bench(args)
        return
    if args.one is not None:
        print(json.dumps(run_one(args, args.one)))
        return
    print(f"cores {os.cpu_count()}, load average at start {os.getloadavg()}", flush=True)
    for n in args.sizes:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", str(n)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
