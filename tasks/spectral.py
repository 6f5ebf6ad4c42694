"""Spectral clustering of embedding tables: Laplacian, eigenvectors, eigengap, k-means.

Pure functions (no Prefect). The pipeline in `spectral_clusters`:

1. a symmetric kNN graph W of the vectors (`tasks.graph.knn_graph`: exact or HNSW);
2. the symmetric normalised Laplacian L = I - D^-1/2 W D^-1/2 (`normalized_laplacian`);
3. its smallest eigenpairs (`smallest_eigenvectors`): ARPACK (eigsh) for the *largest*
   eigenvalues of M = 2I - L = I + D^-1/2 W D^-1/2, whose spectrum is L's mirrored about
   1 (Lanczos converges fast at the top of the spectrum and needs no factorisation,
   unlike shift-invert at sigma=0, where L is singular), or LOBPCG on L started from a
   constant column (near the null vector D^1/2 1) plus seeded random columns;
4. k-means (scikit-learn, n_init=10, seeded) on the first k eigenvectors with rows scaled
   to unit length (Ng, Jordan & Weiss 2001), which makes the clusters tight points on the
   sphere whatever the node degrees;
5. unless k is given, it is chosen (`choose_k`) as the larger of two estimates:
   - the conductance k (`conductance_k`): the k before the largest rise of the worst
     cluster conductance (`tasks.graph.conductance`, the fraction of a cluster's edge
     weight that leaves it) from k to k + 1 clusters. Separate groups lose a few per cent
     across their borders, a cut through one smooth cloud a fifth or more, so the rise
     marks the first split that cuts a group;
   - the eigengap k (`eigengap_k`): the k before the largest jump of the spectrum.
   The eigengap alone merges groups that touch (3 for the demo's 4 genomes, 1 for
   benchmark C's 13); the conductance alone stops early where groups overlap in many
   small steps (3 for the 7-genome demo, where the eigengap finds 5). Too few clusters
   cost more than one too many (merged genomes against a genome in two parts), so the
   larger k is kept.

Outputs: `SpectralResult`, `cluster_table` (sequence_id, cluster[, truth]),
`adjusted_rand` against known labels (e.g. helixflow.app.demo's truth.tsv.gz),
`spectral_projection` (the row-normalised eigenvectors k-means saw, in 2-D),
`projection_2d` (PCA of any vectors) and `plot_projection` (a PNG written with matplotlib's
Agg canvas, no pyplot global state; a second panel coloured by truth when given).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from scipy.sparse import linalg as spla

from helixflow.tasks.graph import (
    EXACT_THRESHOLD,
    Metric,
    _check_adjacency,
    _unit_rows,
    conductance,
    knn_graph,
)

Eigensolver = Literal["eigsh", "lobpcg"]

KMEANS_THREADED_MIN = 20_000
"""k-means runs single-threaded below this many rows (see spectral_clusters)."""
LOBPCG_RESIDUAL = 1e-3
"""Largest accepted ||L v - lambda v|| of a unit LOBPCG eigenvector (||L|| <= 2)."""
DENSE_MAX = 300
"""Graphs up to this many nodes are solved densely (numpy eigh): exact and fast there."""


@dataclass(frozen=True)
class SpectralResult:
    """Outcome of `spectral_clusters`.

    Attributes:
        labels: int64 cluster per row, 0..n_clusters-1 (0 the largest cluster).
        n_clusters: k, chosen by `choose_k` or as given.
        eigenvalues: the m smallest eigenvalues of the normalised Laplacian, ascending.
        embedding: N x m float64 matching eigenvectors (columns in the same order); k-means
            saw the first k columns with rows scaled to unit length.
        conductance: per candidate k tried (2..k_max + 1, index k - 2), the largest
            cluster conductance of its k-means partition; empty when k was given.
    """

    labels: np.ndarray
    n_clusters: int
    eigenvalues: np.ndarray
    embedding: np.ndarray
    conductance: tuple[float, ...] = ()


def normalized_laplacian(A: sp.spmatrix | sp.sparray | np.ndarray) -> sp.csr_matrix:
    """Symmetric normalised Laplacian L = I - D^-1/2 A D^-1/2 of a symmetric weighted graph.

    D is the weighted degree. An isolated node (degree 0) gets L_ii = 0 (scipy's
    convention), so it is a component of its own with eigenvalue 0 and the multiplicity of
    0 stays the number of connected components. Eigenvalues lie in [0, 2].

    Args:
        A: a square symmetric adjacency with weights >= 0 (sparse or dense).

    Returns:
        L as an N x N float64 CSR matrix.

    Raises:
        ValueError: `A` is not square or has a negative weight.
    """
    A = _check_adjacency(A).astype(np.float64)
    if (A.data < 0).any():
        raise ValueError("adjacency weights must be >= 0")
    degree = np.asarray(A.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    scale = sp.diags_array(inv_sqrt)
    identity = sp.diags_array((degree > 0).astype(np.float64))
    return sp.csr_matrix(identity - scale @ A @ scale)


def smallest_eigenvectors(
    L: sp.spmatrix | sp.sparray | np.ndarray,
    n: int,
    method: Eigensolver = "eigsh",
    seed: int = 0,
    tol: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """The n smallest eigenvalues (ascending) and unit eigenvectors (N x n) of a normalised
    Laplacian (symmetric, spectrum in [0, 2]).

    "eigsh": ARPACK Lanczos on 2I - L for the largest eigenvalues, v0 seeded; `tol` is
    ARPACK's relative accuracy of the eigenvalues (1e-6: errors ~1e-9 on kNN graphs).
    "lobpcg": LOBPCG on L with a block of n + 4 vectors (a wider block converges faster)
    started from a constant and seeded random columns; for large sparse graphs. If its
    residuals show it failed (it can on exactly repeated eigenvalues, e.g. cliques), a
    RuntimeWarning is issued and eigsh answers instead.
    Graphs of <= DENSE_MAX nodes use dense eigh whichever method is asked.
    Eigenvector signs (and bases of repeated eigenvalues) are arbitrary.

    Args:
        L: a normalised Laplacian (sparse or dense).
        n: eigenpairs wanted, 1..N.
        method: "eigsh" or "lobpcg".
        seed: seeds the solver's start vectors.
        tol: the solver's tolerance.

    Returns:
        (n eigenvalues ascending, N x n eigenvectors in the same order).

    Raises:
        ValueError: `L` is not square, or bad n or method.
    """
    L = _check_adjacency(L).astype(np.float64)
    size = L.shape[0]
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= size:
        raise ValueError(f"n must be an integer in 1..{size}, got {n!r}")
    if method not in ("eigsh", "lobpcg"):
        raise ValueError(f"method must be 'eigsh' or 'lobpcg', got {method!r}")
    rng = np.random.default_rng(seed)
    if size <= DENSE_MAX or n >= size - 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):  # tiny: BLAS threads would only spin-wait
            values, vectors = np.linalg.eigh(L.toarray())
        return _ascending(values, vectors, n)
    if method == "lobpcg":
        found = _lobpcg(L, n, rng, tol)
        if found is not None:
            return found
        warnings.warn(
            "LOBPCG did not converge (eigenvalues clustered inside its block?); "
            "falling back to eigsh",
            RuntimeWarning,
            stacklevel=2,
        )
    M = sp.csr_matrix(2.0 * sp.eye_array(size) - L)
    v0 = rng.uniform(-1.0, 1.0, size)
    values, vectors = spla.eigsh(
        M,
        k=n,
        which="LA",
        v0=v0,
        tol=tol,
        ncv=min(size, max(3 * n + 1, 40)),  # a wider Krylov space: 2x faster at 50k
        maxiter=size * 10,
    )
    return _ascending(2.0 - values, vectors, n)


def _ascending(values: np.ndarray, vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n smallest eigenpairs, ascending, values clipped to [0, 2], unit vectors."""
    order = np.argsort(values, kind="stable")[:n]
    values = np.clip(values[order], 0.0, 2.0)
    vectors = vectors[:, order]
    return values, vectors / np.linalg.norm(vectors, axis=0, keepdims=True)


def _lobpcg(
    L: sp.csr_matrix, n: int, rng: np.random.Generator, tol: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """LOBPCG's n smallest eigenpairs of L, or None if they are not accurate.

    scipy's lobpcg can stop early and return its best iterate (or raise) when the Gram
    matrices become singular, which happens when exactly repeated eigenvalues straddle
    the block's edge; the residuals ||L v - lambda v|| tell.
    """
    size = L.shape[0]
    block = max(n, min(n + 4, size // 5))
    X0 = rng.standard_normal((size, block))
    X0[:, 0] = 1.0  # close to the null vector D^1/2 1 of a near-regular kNN graph
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not reaching tol": checked below
            values, vectors = spla.lobpcg(L, X0, largest=False, tol=max(tol, 1e-6), maxiter=1000)
    except (ValueError, np.linalg.LinAlgError):
        return None
    values, vectors = _ascending(values, vectors, n)
    residual = np.linalg.norm(L @ vectors - vectors * values, axis=0)
    return (values, vectors) if residual.max() <= LOBPCG_RESIDUAL else None


def eigengap_k(values: np.ndarray, k_max: int = 10) -> int:
    """Number of clusters: the k in 1..k_max with the largest gap values[k] - values[k-1].

    `values` are the smallest Laplacian eigenvalues, ascending; at least k_max + 1 of them
    are used if present (fewer: k_max shrinks to len(values) - 1).

    Args:
        values: the smallest Laplacian eigenvalues (sorted here).
        k_max: the largest k considered.

    Returns:
        k >= 1; 1 when fewer than 2 values are given.
    """
    values = np.sort(np.asarray(values, dtype=np.float64))
    k_max = min(int(k_max), len(values) - 1)
    if k_max < 1:
        return 1
    gaps = np.diff(values[: k_max + 1])
    return int(np.argmax(gaps)) + 1


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k-1 by decreasing cluster size (ties: first appearance)."""
    values, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    mapping = np.empty(len(values), dtype=np.int64)
    mapping[order] = np.arange(len(values))
    return mapping[np.searchsorted(values, labels)]


def _kmeans(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means labels (by decreasing size) of the first k eigenvectors, rows unit length."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    if k == 1:
        return np.zeros(len(vectors), dtype=np.int64)
    # OpenMP threads only pay off on big inputs; on small ones their spin-waits make
    # k-means 10-50x slower on a loaded machine.
    with threadpool_limits(limits=1 if len(vectors) < KMEANS_THREADED_MIN else None):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(
            _unit_rows(vectors[:, :k]))
    return _relabel_by_size(labels)


def conductance_k(worst: Sequence[float]) -> int:
    """The k before the largest rise of the worst cluster conductance.

    Args:
        worst: c(2), c(3), … : per candidate k (from 2), the largest `tasks.graph.conductance`
            of its partition. C(k) = max(c(1..k)) with c(1) = 0, since k-means partitions
            are not nested and one k can find a cleaner partition than a smaller one by luck.

    Returns:
        The k (1 ≤ k ≤ len(worst)) with the largest C(k + 1) - C(k); 1 when `worst` is empty.

    Example:
        >>> conductance_k([0.02, 0.03, 0.04, 0.25, 0.27])
        4
    """
    if not len(worst):
        return 1
    running = np.maximum.accumulate(np.array((0.0, *worst), dtype=np.float64))
    return int(np.argmax(np.diff(running))) + 1


def choose_k(
    A: sp.spmatrix | sp.sparray | np.ndarray,
    vectors: np.ndarray,
    k_max: int = 10,
    seed: int = 0,
    values: np.ndarray | None = None,
) -> tuple[int, np.ndarray, tuple[float, ...]]:
    """The number of spectral clusters, with its labels: the larger of the conductance k
    and the eigengap k.

    For each k in 2..k_max + 1, k-means on the first k eigenvectors (rows unit length)
    and c(k) = the largest `tasks.graph.conductance` of its clusters. The conductance k
    (`conductance_k`) is the k before the largest rise of the running maximum of c: up to
    the true count each cluster loses little weight across its border, the next k must
    cut through a group and many of its edges. The eigengap k (`eigengap_k` of `values`)
    is the k before the largest jump of the spectrum.

    Each detects one kind of evidence and misses the other: the eigengap merges groups
    that touch (their border eigenvalue sits among the others', no jump), the cut rise is
    flat where groups overlap in many small steps. Taking the larger k keeps whichever
    found more structure: on reads, too few clusters merge genomes (ARI falls steeply
    below the true k) while one or two too many split a genome in parts (ARI falls
    slowly), measured in bench/spectral.py --reads.

    Args:
        A: the graph the eigenvectors come from.
        vectors: N x m eigenvectors of its normalised Laplacian, ascending (k_max
            shrinks to m - 1 if needed: the last k tried must have a successor).
        k_max: largest k that may be chosen (k_max + 1 partitions are tried).
        seed: k-means seed.
        values: the matching eigenvalues; None uses the conductance k alone.

    Returns:
        (k, int64 labels numbered by decreasing size, (c(2), c(3), … c(k_max + 1))).
    """
    top = min(int(k_max) + 1, vectors.shape[1], len(vectors))
    partitions = [np.zeros(len(vectors), dtype=np.int64)]
    worst: list[float] = []
    for k in range(2, top + 1):
        partitions.append(_kmeans(vectors, k, seed))
        worst.append(float(conductance(A, partitions[-1]).max()))
    if not worst:
        return 1, partitions[0], ()
    k = conductance_k(worst)
    if values is not None:
        k = max(k, min(eigengap_k(values, k_max), top - 1))
    return k, partitions[k - 1], tuple(worst)


def spectral_clusters(
    data: np.ndarray | sp.spmatrix | sp.sparray,
    n_clusters: int | None = None,
    *,
    k_max: int = 10,
    k_neighbors: int = 15,
    metric: Metric = "cosine",
    method: Eigensolver = "eigsh",
    exact_threshold: int = EXACT_THRESHOLD,
    pca: int | None = None,
    seed: int = 0,
) -> SpectralResult:
    """Spectral clustering of vectors (N x D dense array) or of a graph (sparse N x N).

    Args:
        data: a dense N x D matrix of vectors, from which a kNN graph is built
            (`knn_graph(data, k_neighbors, metric, exact_threshold=...)`), or a sparse
            symmetric non-negative adjacency matrix used as is.
        n_clusters: k; None chooses it (`choose_k`: the larger of the conductance and
            the eigengap k) up to k_max.
        k_max: largest k `choose_k` may choose.
        k_neighbors, metric, exact_threshold: the kNN graph (dense input only).
        method: eigensolver, "eigsh" or "lobpcg" (see `smallest_eigenvectors`).
        pca: project the vectors on their first `pca` principal components before the
            kNN search (dense input only). Denoises short-read k-mer spectra (the 136
            4-mer frequencies of a 150 bp read are mostly counting noise) and speeds up
            the search; None keeps the vectors as they are.
        seed: seeds the HNSW index, the eigensolver start and k-means.

    Returns:
        SpectralResult with labels (0 the largest cluster), n_clusters, the eigenvalues,
        the spectral embedding and the conductance per candidate k.

    Raises:
        ValueError: n_clusters out of 1..N, or bad graph or kNN arguments.
    """
    if sp.issparse(data):
        A = _check_adjacency(data)
    else:
        X = np.asarray(data)
        if pca is not None:
            X = _pca(X, pca, seed)
        A = knn_graph(X, k_neighbors, metric, exact_threshold=exact_threshold, seed=seed)
    size = A.shape[0]
    if n_clusters is not None and not 1 <= n_clusters <= size:
        raise ValueError(f"n_clusters must be in 1..{size}, got {n_clusters!r}")
    m = min(size, max(k_max + 2, n_clusters or 0, 2))
    values, vectors = smallest_eigenvectors(normalized_laplacian(A), m, method, seed)
    if n_clusters is None:
        k, labels, worst = choose_k(A, vectors, k_max, seed, values)
    else:
        k, labels, worst = int(n_clusters), _kmeans(vectors, int(n_clusters), seed), ()
    return SpectralResult(labels=labels, n_clusters=k, eigenvalues=values, embedding=vectors,
                          conductance=worst)


def _pca(X: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """X projected on its first n_components principal components (float32)."""
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    n_components = min(int(n_components), *X.shape)
    if n_components < 1:
        raise ValueError(f"pca must be >= 1, got {n_components}")
    solver = "randomized" if X.shape[0] > 10_000 else "full"
    model = PCA(n_components=n_components, svd_solver=solver, random_state=seed)
    return model.fit_transform(X).astype(np.float32)


def projection_2d(data: np.ndarray, seed: int = 0) -> np.ndarray:
    """N x 2 float32 coordinates for a scatter plot: the first two principal components.

    Pass `SpectralResult.embedding` (the spectral embedding: PCA picks out the
    non-trivial eigenvector directions, the near-constant first one has little variance)
    or the raw vectors. Randomised SVD (seeded) above 10k rows.

    Args:
        data: an N x D matrix; with D < 2 or N < 2 its columns are copied, zero-padded.
        seed: seeds the randomised SVD.

    Returns:
        N x 2 float32 coordinates.

    Raises:
        ValueError: `data` is not 2-D.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"data must be 2-D, got shape {data.shape}")
    if data.shape[1] < 2 or data.shape[0] < 2:
        out = np.zeros((data.shape[0], 2), dtype=np.float32)
        out[:, : min(data.shape[1], 2)] = data[:, :2]
        return out
    return _pca(data, 2, seed)


def spectral_projection(result: SpectralResult, seed: int = 0) -> np.ndarray:
    """N x 2 float32 coordinates in which the spectral clusters separate: the first
    `n_clusters` eigenvectors with rows scaled to unit length (the points k-means saw,
    each cluster a tight cap on the sphere), projected on their two principal axes.

    With k = 1 (or 2) there is no second direction in that space: the first three
    eigenvectors are used instead.
    """
    k = max(result.n_clusters, min(3, result.embedding.shape[1]))
    return projection_2d(_unit_rows(result.embedding[:, :k]), seed)


def plot_projection(
    xy: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    title: str = "",
    truth: Sequence[str] | np.ndarray | None = None,
) -> Path:
    """Scatter plot of 2-D points coloured by cluster, written as a PNG at `path`.

    With `truth` (one label per point), a second panel beside it shows the same points
    coloured by the true labels. Uses matplotlib's Figure + Agg canvas directly (no
    pyplot, safe in worker threads). Up to 20 groups get a legend; points are rasterised
    so large N stays small.

    Args:
        xy: N x 2 coordinates (e.g. `spectral_projection`).
        labels: cluster per point.
        path: PNG to write (parent folders are created).
        title: title of the cluster panel (default: counts).
        truth: true label per point, or None for one panel.

    Returns:
        `path` as a Path.

    Raises:
        ValueError: `xy` is not N x 2 or `labels` (or `truth`) has another length.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xy = np.asarray(xy)
    labels = np.asarray(labels)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(labels) != len(xy):
        raise ValueError(f"need N x 2 points and N labels, got {xy.shape} and {labels.shape}")
    panels = [(labels, title or f"{len(xy)} points, {len(np.unique(labels))} clusters",
               "cluster (size)")]
    if truth is not None:
        truth = np.asarray(truth).astype(str)
        if len(truth) != len(xy):
            raise ValueError(f"{len(xy)} points for {len(truth)} truth labels")
        panels.append((truth, f"coloured by truth: {len(np.unique(truth))} groups",
                       "truth (size)"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7 * len(panels), 6), dpi=110)
    FigureCanvasAgg(fig)
    size = float(np.clip(4000.0 / max(len(xy), 1), 0.5, 12.0))
    for i, (groups, panel_title, legend) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        names = np.unique(groups)
        for colour, name in zip(_colours(len(names)), names, strict=True):
            mask = groups == name
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colour,
                       label=f"{name} ({mask.sum()})", linewidths=0, rasterized=True)
        if len(names) <= 20:
            ax.legend(title=legend, markerscale=max(1.0, 20.0 / size) ** 0.5,
                      fontsize="small", loc="best")
        ax.set_title(panel_title)
        ax.set_xlabel("component 1")
        ax.set_ylabel("component 2")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _colours(n: int) -> list[tuple[float, float, float, float]]:
    """n distinct colours: tab10 / tab20, then evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["hsv"](i / n) for i in range(n)]


def cluster_table(
    ids: pa.Array | pa.ChunkedArray | Sequence[str],
    labels: np.ndarray,
    truth: Sequence[str] | np.ndarray | pa.Array | None = None,
) -> pa.Table:
    """(sequence_id, cluster[, truth]) per row: the labels joined back to the sequences.

    Args:
        ids: one sequence id per label.
        labels: int cluster labels.
        truth: true labels, one per id, stored as strings; None for no `truth` column.

    Returns:
        The table: sequence_id (string), cluster (int64)[, truth (string)].

    Raises:
        ValueError: `labels` or `truth` differs in length from `ids`.
    """
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        ids = pa.array(list(ids), pa.string())
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(ids):
        raise ValueError(f"{len(ids)} ids for {len(labels)} labels")
    columns: dict[str, pa.Array] = {
        "sequence_id": ids.cast(pa.string()),
        "cluster": pa.array(labels),
    }
    if truth is not None:
        truth_array = (
            truth
            if isinstance(truth, pa.Array)
            else pa.array([str(t) for t in np.asarray(truth).tolist()], pa.string())
        )
        if len(truth_array) != len(ids):
            raise ValueError(f"{len(ids)} ids for {len(truth_array)} truth labels")
        columns["truth"] = truth_array.cast(pa.string())
    return pa.table(columns)


def adjusted_rand(labels: np.ndarray | Sequence[int], truth: np.ndarray | Sequence[str]) -> float:
    """Adjusted Rand index of a clustering against true labels (1 perfect, ~0 random).

    Args:
        labels: the cluster labels.
        truth: the true labels, same shape.

    Returns:
        The ARI, at most 1.

    Raises:
        ValueError: the shapes differ.
    """
    from sklearn.metrics import adjusted_rand_score

    labels = np.asarray(labels)
    truth = np.asarray(truth)
    if labels.shape != truth.shape:
        raise ValueError(f"labels {labels.shape} and truth {truth.shape} differ in shape")
    return float(adjusted_rand_score(truth, labels))
