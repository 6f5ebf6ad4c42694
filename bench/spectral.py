"""Benchmark: kNN graph (exact vs hnswlib), eigensolvers, k-means and Leiden at scale.

For each N (default 10k, 50k, 100k) a fresh subprocess (so peak RSS is per size) draws
N vectors of dim 100 from `--clusters` Gaussian clusters of unequal sizes (centres
N(0, sep^2 I), unit noise: nearest neighbours mostly share a cluster, but no coordinate
separates them) and times, with tasks.graph / tasks.spectral:

- exact kNN (scikit-learn brute force, `--k` neighbours, Euclidean) and hnswlib kNN
  (M=16, ef_construction=200, ef=max(128, 4k), all cores), with the hnswlib recall
  against the exact lists (skipped above `--exact-max`);
- the self-tuning weighted graph and its normalised Laplacian;
- the 11 smallest eigenpairs by eigsh (Lanczos on 2I - L) and by LOBPCG;
- eigengap k and k-means (n_init=10) on the row-normalised eigenvectors;
- Leiden (resolution 1) on the same graph;

and prints wall seconds (t_*) and process CPU seconds (cpu_*, all threads) per stage,
peak RSS, the k found and the adjusted Rand index of the
spectral labels and of Leiden's against the generating clusters.

Run:
    .venv/bin/python bench/spectral.py                    # N = 10k, 50k, 100k
    .venv/bin/python bench/spectral.py --sizes 20000 --exact-max 0
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
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    from helixflow.tasks.graph import knn_indices, leiden, neighbour_graph
    from helixflow.tasks.spectral import (
        KMEANS_THREADED_MIN,
        adjusted_rand,
        eigengap_k,
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
    k = eigengap_k(values, 10)
    out["k"] = k
    Z = vectors[:, :k] / np.linalg.norm(vectors[:, :k], axis=1, keepdims=True)
    with threadpool_limits(limits=1 if n < KMEANS_THREADED_MIN else None):
        labels = timed("kmeans", lambda: KMeans(k, n_init=10, random_state=0).fit_predict(Z))
    out["ari_spectral"] = round(adjusted_rand(labels, truth), 4)
    communities = timed("leiden", lambda: leiden(A, seed=0))
    out["leiden_communities"] = len(np.unique(communities))
    out["ari_leiden"] = round(adjusted_rand(communities, truth), 4)
    out["t_spectral_total"] = round(
        sum(float(out[f"t_{s}"]) for s in ("knn_hnsw", "graph", "laplacian", "eigsh", "kmeans")),
        2,
    )
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


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
    args = parser.parse_args()
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
