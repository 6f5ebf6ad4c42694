"""Tests for the neighbour-graph functions (tasks/graph.py).

References are brute force: NumPy distance matrices for neighbours and medoids, and
known structure (separated Gaussian blobs, disconnected groups) for components and Leiden.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from helixflow.tasks.graph import (
    connected_components,
    knn_graph,
    knn_indices,
    leiden,
    medoids,
    representatives,
)
from helixflow.tasks.spectral import adjusted_rand


@pytest.fixture(autouse=True)
def one_blas_thread() -> Iterator[None]:
    """Small problems only: BLAS/OpenMP threads add spin-waits on a shared machine."""
    with threadpool_limits(limits=1):
        yield


def blobs(
    n_per: int = 150, n_centres: int = 4, dim: int = 12, spread: float = 1.0, seed: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Well separated isotropic Gaussian blobs (centres ~10 sd apart) and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 8.0, (n_centres, dim))
    truth = np.repeat(np.arange(n_centres), n_per)
    X = centres[truth] + rng.normal(0.0, spread, (len(truth), dim))
    return X.astype(np.float32), truth


def brute_neighbours(X: np.ndarray, k: int, metric: str) -> np.ndarray:
    """k nearest neighbours (self excluded) from a full float64 distance matrix."""
    X = X.astype(np.float64)
    if metric == "cosine":
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        D = 1.0 - U @ U.T
    else:
        D = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=2)
    np.fill_diagonal(D, np.inf)
    return np.argsort(D, axis=1, kind="stable")[:, :k]


def brute_medoid(X: np.ndarray, members: np.ndarray, metric: str) -> int:
    P = X[members].astype(np.float64)
    if metric == "cosine":
        U = P / np.linalg.norm(P, axis=1, keepdims=True)
        D = 1.0 - U @ U.T
    else:
        D = np.linalg.norm(P[:, None, :] - P[None, :, :], axis=2)
    return int(members[np.argmin(D.sum(axis=1))])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_neighbours_match_brute_force(metric: str) -> None:
    X, _ = blobs(n_per=60, seed=1)
    indices, distances = knn_indices(X, 8, metric)
    expected = brute_neighbours(X, 8, metric)
    overlap = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(indices, expected, strict=True)])
    assert overlap > 0.99  # float32 ties aside, the same sets
    assert indices.shape == (len(X), 8) and distances.dtype == np.float32
    assert not (indices == np.arange(len(X))[:, None]).any()  # never itself
    assert (np.diff(distances, axis=1) >= -1e-6).all()  # nearest first


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_hnsw_neighbours_overlap_exact(metric: str) -> None:
    # Random directions in 32-D: no cluster structure to make the search easy.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 32)).astype(np.float32)
    exact, exact_d = knn_indices(X, 15, metric)
    approx, approx_d = knn_indices(X, 15, metric, exact_threshold=100, n_threads=1)
    recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.9, recall
    assert not (approx == np.arange(len(X))[:, None]).any()
    # Distances are on the same scale as the exact ones (sqrt of hnswlib's squared l2).
    np.testing.assert_allclose(np.median(approx_d[:, 0]), np.median(exact_d[:, 0]), rtol=0.05)
    # One thread and a fixed seed: the index, hence the neighbours, are reproducible.
    again, _ = knn_indices(X, 15, metric, exact_threshold=100, n_threads=1)
    np.testing.assert_array_equal(approx, again)


def test_duplicates_do_not_break_self_removal() -> None:
    X = np.repeat(np.eye(4, dtype=np.float32), 5, axis=0)  # 4 groups of 5 identical rows
    indices, distances = knn_indices(X, 4, "euclidean")
    assert not (indices == np.arange(20)[:, None]).any()
    assert (distances == 0).all()  # each row's neighbours are its 4 copies
    A = knn_graph(X, 4, "euclidean")
    assert np.isfinite(A.data).all() and connected_components(A)[0] == 4


@pytest.mark.parametrize("weighting", ["self_tuning", "cosine"])
def test_graph_is_symmetric_weighted_without_self_loops(weighting: str) -> None:
    X, _ = blobs(n_per=50, seed=2)
    A = knn_graph(X, 10, "euclidean", weighting=weighting)
    assert isinstance(A, sp.csr_matrix) and A.dtype == np.float64
    assert abs(A - A.T).max() < 1e-12
    assert A.diagonal().max() == 0
    assert ((A.data > 0) & (A.data <= 1)).all()
    # Union symmetrisation: every node keeps at least its own k neighbours.
    assert np.diff(A.indptr).min() >= 10


def test_self_tuning_weights_follow_the_formula() -> None:
    X, _ = blobs(n_per=40, seed=4)
    k = 9
    A = knn_graph(X, k, "euclidean")
    idx, dist = knn_indices(X, k, "euclidean")
    scale = dist[:, 6].astype(np.float64)  # the 7th neighbour
    i, j = 5, int(idx[5, 2])
    d = float(np.linalg.norm(X[i].astype(np.float64) - X[j]))
    np.testing.assert_allclose(A[i, j], np.exp(-(d**2) / (scale[i] * scale[j])), rtol=1e-4)


def test_two_disconnected_groups_are_two_components() -> None:
    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(0, 1, (80, 5)), rng.normal(100, 1, (70, 5))]).astype(np.float32)
    A = knn_graph(X, 10, "euclidean")
    n, labels = connected_components(A)
    assert n == 2
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.r_[np.zeros(80), np.ones(70)])


def test_components_of_a_directed_edge_list_are_weak() -> None:
    A = sp.csr_matrix(([1.0, 1.0], ([0, 2], [1, 3])), shape=(5, 5))  # one-way edges
    n, labels = connected_components(A)
    assert n == 3
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[4] not in labels[:4]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_leiden_recovers_blobs(metric: str) -> None:
    X, truth = blobs(n_per=150, n_centres=4, seed=6)
    labels = leiden(knn_graph(X, 15, metric), seed=0)
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    assert adjusted_rand(labels, truth) >= 0.99
    assert np.bincount(labels).tolist() == sorted(np.bincount(labels).tolist(), reverse=True)


def test_leiden_resolution_and_seed() -> None:
    X, _ = blobs(n_per=150, n_centres=3, seed=7)
    A = knn_graph(X, 15, "euclidean")
    np.testing.assert_array_equal(leiden(A, seed=1), leiden(A, seed=1))
    assert len(np.unique(leiden(A, resolution=5.0))) > len(np.unique(leiden(A, resolution=1.0)))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_medoids_equal_brute_force(metric: str) -> None:
    X, truth = blobs(n_per=70, n_centres=3, seed=8)
    X += 20.0  # keep cosine geometry non-degenerate
    labels = truth.copy()
    labels[:5] = -1  # noise is ignored
    result = medoids(X, labels, metric)
    assert sorted(result) == [0, 1, 2]
    for cluster, row in result.items():
        assert labels[row] == cluster
        assert row == brute_medoid(X, np.flatnonzero(labels == cluster), metric)


def test_large_cluster_medoid_is_close_to_the_exact_one() -> None:
    rng = np.random.default_rng(9)
    X = rng.normal(size=(1500, 6)).astype(np.float32)
    labels = np.zeros(1500, dtype=np.int64)
    exact = medoids(X, labels, "euclidean")[0]
    sampled = medoids(X, labels, "euclidean", max_exact=300, seed=0)[0]
    D = np.linalg.norm(X[:, None, :].astype(np.float64) - X[None, :, :], axis=2).sum(axis=1)
    # The sampled medoid's true total distance is within 1% of the optimum.
    assert D[sampled] <= D[exact] * 1.01


def test_representatives_table() -> None:
    X, truth = blobs(n_per=30, n_centres=3, seed=10)
    ids = pa.array([f"read{i}" for i in range(len(X))])
    table = representatives(ids, X, truth, "euclidean")
    assert table.column_names == ["cluster", "size", "medoid_row", "sequence_id"]
    assert table["cluster"].to_pylist() == [0, 1, 2]
    assert table["size"].to_pylist() == [30, 30, 30]
    rows = table["medoid_row"].to_pylist()
    assert table["sequence_id"].to_pylist() == [f"read{r}" for r in rows]
    assert [truth[r] for r in rows] == [0, 1, 2]


def test_bad_arguments() -> None:
    X, _ = blobs(n_per=10, n_centres=2)
    with pytest.raises(ValueError, match="k must be"):
        knn_indices(X, len(X))
    with pytest.raises(ValueError, match="metric"):
        knn_indices(X, 3, "manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        knn_indices(np.full((5, 2), np.nan, np.float32), 2)
    with pytest.raises(ValueError, match="one entry per row"):
        medoids(X, np.zeros(3))
