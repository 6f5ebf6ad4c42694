"""Neighbour graphs over embedding tables: kNN graph, components, Leiden communities, medoids.

Pure functions on NumPy / SciPy objects (no Prefect); tasks/spectral.py clusters the same
graphs spectrally. The input is an N x D float32 matrix, e.g. from
`tasks.embeddings.read_embedding_matrix`.

kNN graph (`knn_graph`):
- Neighbours are exact (scikit-learn NearestNeighbors, brute force for cosine and tree or
  brute force for Euclidean as it sees fit) for N <= `exact_threshold` (default
  EXACT_THRESHOLD = 20k), and approximate
  (hnswlib HNSW index: M=16, ef_construction=200, query ef=max(128, 4k), fixed random
  seed) above it. An HNSW index built with one thread is deterministic for a seed; with
  several threads the insertion order, and so a few neighbours, can change run to run.
- "cosine" distance is 1 - cos(x, y) (rows are L2-normalised first; an all-zero row is at
  distance 1 from everything); "euclidean" is the L2 distance.
- Edge weights ("self_tuning", the default) are the self-tuning Gaussian kernel of
  Zelnik-Manor & Perona (2004): w_ij = exp(-d_ij^2 / (s_i s_j)), s_i the distance from i to
  its min(7, k)-th neighbour, so dense and sparse clusters get comparable affinities with no
  global bandwidth to tune. "cosine" weights are the cosine similarity clipped at >= 0.
- The directed kNN relation is symmetrised by union, W = max(W, W^T): an edge exists if
  either end has the other among its k nearest. No self loops. Weights are float64 (the
  eigensolvers work in float64).

Communities: `leiden` runs leidenalg (RBConfigurationVertexPartition, i.e. modularity with
a resolution parameter) on the weighted graph through python-igraph. `leiden_k` chooses
the resolution whose community count is closest to a given k (the analysis passes the
spectral k), so the count follows the structure the spectral step found rather than
plain modularity, which on kNN graphs keeps splitting smooth clouds (20 communities for
the demo's 4 genomes at resolution 1). `conductance` (the fraction of a cluster's edge
weight that leaves it) scores partitions for `tasks.spectral.choose_k`.

Representatives: `medoids` returns, per cluster, the member with the smallest summed
distance to the other members; `representatives` turns that into an Arrow table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from scipy.sparse import csgraph

Metric = Literal["cosine", "euclidean"]
Weighting = Literal["self_tuning", "cosine"]

EXACT_THRESHOLD = 20_000
"""Default largest N searched exactly. Brute force is O(N^2 D) but runs in BLAS: on 2 cores
at D=100 it took 2.4 s at N=10k and 24 s at 50k against 8 s and 68 s for building and
querying the HNSW index (bench/spectral.py), so the index pays off only well above this."""
HNSW_M = 16
"""Links per node of the HNSW graph: 16 is hnswlib's recommended value for dim ~100."""
HNSW_EF_CONSTRUCTION = 200
"""Candidate list size while building: high enough for recall >= 0.95 on dim-100 data."""
SELF_TUNING_NEIGHBOUR = 7
"""The local scale s_i is the distance to this neighbour (Zelnik-Manor & Perona use 7)."""
LEIDEN_LOW = 1e-3
"""Smallest resolution `leiden_k` tries: modularity at 1e-3 keeps a connected kNN graph whole."""
LEIDEN_HIGH = 4.0
"""Largest resolution `leiden_k` tries (hundreds of communities on a 30-NN graph)."""
LEIDEN_STEPS = 14
"""Bisection steps of `leiden_k`: 14 halvings of the range (a factor 4000) end 0.05 % apart
in resolution."""
MEDOID_EXACT = 2000
"""Clusters up to this size get the exact medoid (an n x n distance matrix, <= 32 MB)."""


def _check_matrix(X: np.ndarray) -> np.ndarray:
    """X as a C-contiguous float32 N x D matrix, or a clear error."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D N x D matrix, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise TypeError(f"X must be numeric, got {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise ValueError("X has NaN or infinite values")
    return X


def _check_metric(metric: str) -> None:
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def _unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)


def _drop_self(indices: np.ndarray, distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 neighbours per row (self usually among them) keep the k that are not self.

    With duplicate points the query itself may be missing from its own list (a duplicate
    took its place): then the farthest neighbour is dropped instead.
    """
    n = len(indices)
    drop = indices == np.arange(n)[:, None]  # an index appears at most once per row
    drop[~drop.any(axis=1), -1] = True
    keep = ~drop
    return indices[keep].reshape(n, k), distances[keep].reshape(n, k)


def knn_indices(
    X: np.ndarray,
    k: int = 15,
    metric: Metric = "cosine",
    *,
    exact_threshold: int = EXACT_THRESHOLD,
    seed: int = 0,
    n_threads: int = -1,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every row of X, itself excluded.

    Exact for N <= exact_threshold, HNSW (hnswlib) above; see the module docstring.

    Args:
        X: N x D matrix (converted to float32).
        k: neighbours per point, 1 <= k < N.
        metric: "cosine" (1 - cosine similarity) or "euclidean".
        exact_threshold: largest N searched exactly; 0 forces the approximate path.
        seed: random seed of the HNSW index (level assignment).
        n_threads: threads for the search (-1: all cores). One thread makes the HNSW
            index, hence the neighbours, reproducible.

    Returns:
        (indices N x k int64, distances N x k float32), nearest first.
    """
    X = _check_matrix(X)
    _check_metric(metric)
    n = len(X)
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in 1..N-1 = {n - 1}, got {k!r}")
    k = int(k)
    data = _unit_rows(X) if metric == "cosine" else X
    if n <= exact_threshold:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(
            n_neighbors=k + 1,
            metric="cosine" if metric == "cosine" else "euclidean",
            algorithm="brute" if metric == "cosine" else "auto",
            n_jobs=n_threads,
        ).fit(data)
        distances, indices = nn.kneighbors(data)
    else:
        import hnswlib

        index = hnswlib.Index(space="ip" if metric == "cosine" else "l2", dim=data.shape[1])
        index.init_index(
            max_elements=n, M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, random_seed=seed
        )
        index.add_items(data, np.arange(n), num_threads=n_threads)
        index.set_ef(max(128, 4 * (k + 1)))
        indices, distances = index.knn_query(data, k=k + 1, num_threads=n_threads)
        if metric == "euclidean":  # hnswlib's l2 space gives squared distances
            distances = np.sqrt(np.maximum(distances, 0.0))
    distances = np.maximum(np.asarray(distances, dtype=np.float32), 0.0)
    return _drop_self(np.asarray(indices, dtype=np.int64), distances, k)


def knn_graph(
    X: np.ndarray,
    k: int = 15,
    metric: Metric = "cosine",
    *,
    exact_threshold: int = EXACT_THRESHOLD,
    weighting: Weighting = "self_tuning",
    seed: int = 0,
    n_threads: int = -1,
) -> sp.csr_matrix:
    """Symmetric weighted kNN graph of the rows of X (N x N CSR, float64, no self loops).

    See the module docstring for the search (exact / HNSW), the weights and the union
    symmetrisation. Arguments as in `knn_indices`; `weighting` is "self_tuning" (Gaussian
    kernel with per-node scale) or "cosine" (similarity clipped at 0; any metric).

    Args:
        X: N x D matrix (converted to float32).
        k: neighbours per point, 1 <= k < N.
        metric: "cosine" or "euclidean".
        exact_threshold: largest N searched exactly; 0 forces HNSW.
        weighting: "self_tuning" or "cosine".
        seed: random seed of the HNSW index.
        n_threads: threads for the search (-1: all cores; 1 makes HNSW reproducible).

    Returns:
        The N x N CSR adjacency with edge weights in (0, 1].

    Raises:
        ValueError: bad k, metric, weighting or matrix.
    """
    if weighting not in ("self_tuning", "cosine"):
        raise ValueError(f"weighting must be 'self_tuning' or 'cosine', got {weighting!r}")
    indices, distances = knn_indices(
        X, k, metric, exact_threshold=exact_threshold, seed=seed, n_threads=n_threads
    )
    return neighbour_graph(indices, distances, weighting, metric=metric, X=X)


def neighbour_graph(
    indices: np.ndarray,
    distances: np.ndarray,
    weighting: Weighting = "self_tuning",
    *,
    metric: Metric = "cosine",
    X: np.ndarray | None = None,
) -> sp.csr_matrix:
    """The symmetric weighted graph of given kNN lists (as returned by `knn_indices`).

    Split from `knn_graph` so one neighbour search can feed several graphs (or be timed
    on its own). "cosine" weighting with metric="euclidean" needs the vectors X.

    Args:
        indices: N x k neighbour rows.
        distances: N x k distances matching `indices`.
        weighting: "self_tuning" (Gaussian with per-node scale, the distance to the 7th
            neighbour) or "cosine" (similarity clipped at 0).
        metric: the metric the distances are in.
        X: the N x D vectors; needed only for "cosine" weighting of euclidean distances.

    Returns:
        The N x N symmetric CSR adjacency (float64, union of the kNN lists, max weight, no
        self loops, sorted indices).

    Raises:
        ValueError: unknown weighting, mismatched shapes, or missing X.
    """
    if weighting not in ("self_tuning", "cosine"):
        raise ValueError(f"weighting must be 'self_tuning' or 'cosine', got {weighting!r}")
    indices = np.asarray(indices, dtype=np.int64)
    n, k = indices.shape
    d = np.asarray(distances, dtype=np.float64)
    if d.shape != (n, k):
        raise ValueError(f"distances {d.shape} do not match indices {indices.shape}")
    if weighting == "self_tuning":
        scale = d[:, min(SELF_TUNING_NEIGHBOUR, k) - 1]
        positive = scale[scale > 0]
        floor = positive.min() if len(positive) else 1.0
        scale = np.maximum(scale, floor * 1e-3)  # duplicates: no zero scale
        w = np.exp(-(d**2) / (scale[:, None] * scale[indices]))
    elif metric == "cosine":
        w = np.clip(1.0 - d, 0.0, 1.0)
    else:
        if X is None:
            raise ValueError("cosine weights on a euclidean kNN graph need the vectors X")
        unit = _unit_rows(_check_matrix(X)).astype(np.float64)
        w = np.clip(np.einsum("ij,ikj->ik", unit, unit[indices]), 0.0, 1.0)
    rows = np.repeat(np.arange(n), k)
    W = sp.csr_matrix((w.ravel(), (rows, indices.ravel())), shape=(n, n))
    W = W.maximum(W.T).tocsr()
    W.setdiag(0)
    W.eliminate_zeros()
    W.sort_indices()
    return W


def _check_adjacency(A: sp.spmatrix | sp.sparray | np.ndarray) -> sp.csr_matrix:
    A = sp.csr_matrix(A)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"adjacency must be square, got shape {A.shape}")
    return A


def connected_components(A: sp.spmatrix | sp.sparray | np.ndarray) -> tuple[int, np.ndarray]:
    """(number of components, component label per node) of an undirected graph.

    Labels are 0..n-1 numbered by each component's first node; an edge counts in either
    direction (weak connectivity), so a not quite symmetric ANN graph is handled too.

    Args:
        A: a square adjacency (sparse or dense).

    Returns:
        (number of components, int64 label per node).

    Raises:
        ValueError: `A` is not square.
    """
    A = _check_adjacency(A)
    n, labels = csgraph.connected_components(A, directed=True, connection="weak")
    return int(n), labels.astype(np.int64)


def leiden(
    A: sp.spmatrix | sp.sparray | np.ndarray,
    resolution: float = 1.0,
    seed: int = 0,
    n_iterations: int = -1,
) -> np.ndarray:
    """Leiden communities (leidenalg, RBConfigurationVertexPartition) of a weighted graph.

    Modularity with a resolution parameter: higher `resolution` gives more, smaller
    communities (1.0 is plain modularity). The graph is taken as undirected (the upper
    triangle of A + A^T, so pass a symmetric A). `n_iterations=-1` iterates until no
    improvement; the seed makes the result reproducible.

    Args:
        A: a square weighted adjacency (sparse or dense), symmetric.
        resolution: the RBConfiguration resolution, > 0.
        seed: leidenalg's random seed.
        n_iterations: iterations; -1 until no improvement.

    Returns:
        int64 community label per node, 0 for the largest community, 1 for the next...

    Raises:
        ValueError: `A` is not square.
    """
    import igraph as ig
    import leidenalg

    A = _check_adjacency(A)
    n = A.shape[0]
    upper = sp.triu((A + A.T) * 0.5, k=1).tocoo()
    graph = ig.Graph(n=n, edges=np.column_stack([upper.row, upper.col]).tolist(), directed=False)
    partition = leidenalg.find_partition(
        graph,
        leidenalg.RBConfigurationVertexPartition,
        weights=upper.data.tolist(),
        resolution_parameter=float(resolution),
        n_iterations=n_iterations,
        seed=int(seed),
    )
    return np.asarray(partition.membership, dtype=np.int64)


def conductance(A: sp.spmatrix | sp.sparray | np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per cluster (index = label), the fraction of its members' edge weight that leaves it.

    0 for a cluster with no edge out (a connected component), near 1 for an arbitrary cut
    of a dense region. A cluster without edges at all (isolated nodes) counts as 0.

    Args:
        A: symmetric non-negative adjacency matrix (N x N).
        labels: int cluster per node, 0..k-1.

    Returns:
        float64 array of length max(labels) + 1.
    """
    A = _check_adjacency(A).tocoo()
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (A.shape[0],) or (labels < 0).any():
        raise ValueError(f"need one label >= 0 per node ({A.shape[0]}), got {labels.shape}")
    size = int(labels.max(initial=-1)) + 1
    source = labels[A.row]
    total = np.bincount(source, weights=A.data, minlength=size)
    inside = np.bincount(source, weights=A.data * (source == labels[A.col]), minlength=size)
    out = np.zeros(size)
    np.divide(total - inside, total, out=out, where=total > 0)
    return out


def leiden_k(
    A: sp.spmatrix | sp.sparray | np.ndarray,
    k: int,
    seed: int = 0,
    low: float = LEIDEN_LOW,
    high: float = LEIDEN_HIGH,
    steps: int = LEIDEN_STEPS,
) -> tuple[np.ndarray, float]:
    """Leiden communities at the resolution whose community count is closest to k.

    The count grows with the resolution (1 community at 0 for a connected graph, every
    node its own at large values), so a bisection on log(resolution) between `low` and
    `high` finds it in `steps` Leiden runs at most; it stops at the first exact hit.
    Ties in |count - k| go to the smaller resolution.

    Args:
        A: symmetric non-negative adjacency matrix.
        k: the wanted number of communities (e.g. the spectral k), >= 1.
        seed: Leiden's seed.
        low, high: the resolution range searched, 0 < low < high.
        steps: largest number of Leiden runs, >= 1.

    Returns:
        (community label per node as `leiden` numbers them, the resolution used).

    Raises:
        ValueError: bad k, range or steps.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not 0 < low < high or steps < 1:
        raise ValueError(f"need 0 < low < high and steps >= 1, got {low}, {high}, {steps}")
    lo, hi = np.log(low), np.log(high)
    best: tuple[int, float, np.ndarray] | None = None
    for _ in range(int(steps)):
        resolution = float(np.exp((lo + hi) / 2))
        labels = leiden(A, resolution, seed)
        count = int(labels.max(initial=-1)) + 1
        if best is None or (abs(count - k), resolution) < (best[0], best[1]):
            best = (abs(count - k), resolution, labels)
        if count == k:
            break
        if count < k:
            lo = np.log(resolution)
        else:
            hi = np.log(resolution)
    assert best is not None
    return best[2], best[1]


def _cluster_distances(Y: np.ndarray, Z: np.ndarray, metric: Metric) -> np.ndarray:
    """Distance matrix between the rows of Y and Z (float64; cosine rows pre-normalised)."""
    if metric == "cosine":
        return np.clip(1.0 - Y @ Z.T, 0.0, 2.0)
    sq = (Y * Y).sum(axis=1)[:, None] + (Z * Z).sum(axis=1)[None, :] - 2.0 * (Y @ Z.T)
    return np.sqrt(np.maximum(sq, 0.0))


def medoids(
    X: np.ndarray,
    labels: np.ndarray,
    metric: Metric = "cosine",
    *,
    max_exact: int = MEDOID_EXACT,
    seed: int = 0,
) -> dict[int, int]:
    """Row index of each cluster's medoid: the member with the least summed distance to
    the cluster's members (a representative that is a real sequence, unlike a centroid).

    Clusters of up to `max_exact` members are solved exactly (all pairwise distances).
    For a larger cluster the candidates are its `max_exact` members closest to the
    centroid (the medoid sits near the centre) and the sum is estimated against a
    uniform random sample of `max_exact` members (seeded): O(max_exact^2) per cluster
    instead of O(n^2). Ties go to the lowest row. Negative labels (noise) are ignored.

    Args:
        X: N x D matrix (converted to float32).
        labels: one cluster label per row of X; negative labels are ignored.
        metric: "cosine" or "euclidean".
        max_exact: largest cluster solved exactly; also the candidate and sample size above.
        seed: seed of the sample for large clusters.

    Returns:
        {cluster label: row of its medoid in X}.

    Raises:
        ValueError: `labels` does not match X, or an unknown metric.
    """
    X = _check_matrix(X)
    _check_metric(metric)
    labels = np.asarray(labels)
    if labels.shape != (len(X),):
        raise ValueError(f"labels must have one entry per row of X ({len(X)}), got {labels.shape}")
    data = _unit_rows(X) if metric == "cosine" else X  # float32; float64 per cluster
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    values, starts = np.unique(sorted_labels, return_index=True)
    ends = np.append(starts[1:], len(order))
    result: dict[int, int] = {}
    for label, a, b in zip(values.tolist(), starts.tolist(), ends.tolist(), strict=True):
        if label < 0:
            continue
        members = order[a:b]  # ascending rows (stable sort)
        points = data[members].astype(np.float64)
        if len(members) <= max_exact:
            candidates, reference = members, points
            cand_points = points
        else:
            centre = points.mean(axis=0, keepdims=True)
            near = np.argsort(_cluster_distances(points, centre, metric)[:, 0], kind="stable")
            pick = np.sort(near[:max_exact])
            candidates, cand_points = members[pick], points[pick]
            reference = points[rng.choice(len(members), max_exact, replace=False)]
        totals = _cluster_distances(cand_points, reference, metric).sum(axis=1)
        result[int(label)] = int(candidates[int(np.argmin(totals))])
    return result


def representatives(
    ids: pa.Array | pa.ChunkedArray | Sequence[str],
    X: np.ndarray,
    labels: np.ndarray,
    metric: Metric = "cosine",
    *,
    max_exact: int = MEDOID_EXACT,
    seed: int = 0,
) -> pa.Table:
    """One row per cluster: cluster, size, medoid_row (row in X) and its sequence_id.

    Sorted by cluster label; see `medoids` for how the medoid is chosen.

    Args:
        ids: one sequence id per row of X.
        X: N x D matrix.
        labels: one cluster label per row; negative labels are ignored.
        metric: "cosine" or "euclidean".
        max_exact: see `medoids`.
        seed: see `medoids`.

    Returns:
        Table with int64 cluster, size, medoid_row and string sequence_id.

    Raises:
        ValueError: `ids` and `labels` differ in length, or as `medoids`.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        ids = pa.array(list(ids), pa.string())
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids for {len(labels)} labels")
    chosen = medoids(X, labels, metric, max_exact=max_exact, seed=seed)
    clusters = np.array(sorted(chosen), dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels[labels >= 0], minlength=int(clusters.max(initial=-1)) + 1)
    sizes = counts[clusters].astype(np.int64)
    rows = np.array([chosen[c] for c in clusters.tolist()], dtype=np.int64)
    return pa.table(
        {
            "cluster": pa.array(clusters),
            "size": pa.array(sizes),
            "medoid_row": pa.array(rows),
            "sequence_id": ids.take(pa.array(rows)).cast(pa.string()),
        }
    )
