"""Tests for spectral clustering (tasks/spectral.py).

Synthetic structure with a known answer (separated Gaussian blobs, disconnected groups),
dense eigh as the reference eigensolver, and real sequences: canonical 4-mer spectra of
150 bp reads cut from three genomes of the shared data, and of helixflow.app.demo reads scored
against the demo's truth.tsv.gz. The adjusted Rand indices measured are printed (run
with -s to see them); the asserted bars sit about 0.1 below them.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.tasks.embeddings import embedding_table, read_embedding_matrix, write_embedding_shard
from helixflow.tasks.graph import (
    conductance,
    connected_components,
    knn_graph,
    leiden,
    leiden_k,
    representatives,
)
from helixflow.tasks.kmers import canonical_kmer_spectra
from helixflow.tasks.spectral import (
    SpectralResult,
    adjusted_rand,
    choose_k,
    cluster_table,
    conductance_k,
    eigengap_k,
    normalized_laplacian,
    plot_projection,
    projection_2d,
    smallest_eigenvectors,
    spectral_clusters,
    spectral_projection,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GENOMES = ("ecoli_k12_mg1655", "saureus_nctc8325", "hiv1")  # GC 51%, 33%, 42%


@pytest.fixture(autouse=True)
def one_blas_thread() -> Iterator[None]:
    """Small problems only: BLAS/OpenMP threads add spin-waits on a shared machine."""
    with threadpool_limits(limits=1):
        yield


def blobs(
    n_per: int = 150, n_centres: int = 4, dim: int = 12, spread: float = 1.0, seed: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Well separated isotropic Gaussian blobs and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 8.0, (n_centres, dim))
    truth = np.repeat(np.arange(n_centres), n_per)
    X = centres[truth] + rng.normal(0.0, spread, (len(truth), dim))
    return X.astype(np.float32), truth


def ring_of_cliques(n_cliques: int, size: int, bridge: float = 0.05) -> sp.csr_matrix:
    """Cliques of unit edges joined in a ring by weak edges: connected, k obvious groups."""
    n = n_cliques * size
    A = np.zeros((n, n))
    for c in range(n_cliques):
        A[c * size : (c + 1) * size, c * size : (c + 1) * size] = 1.0
        a, b = c * size, ((c + 1) % n_cliques) * size + 1
        A[a, b] = A[b, a] = bridge
    np.fill_diagonal(A, 0.0)
    return sp.csr_matrix(A)


# --- Laplacian and eigensolvers ---------------------------------------------------------


def test_normalized_laplacian_matches_definition() -> None:
    rng = np.random.default_rng(0)
    W = rng.uniform(0, 1, (30, 30))
    W = np.triu(W * (W > 0.6), 1)
    W = W + W.T
    W[7, :] = W[:, 7] = 0.0  # an isolated node
    L = normalized_laplacian(sp.csr_matrix(W))
    d = W.sum(axis=1)
    inv = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    expected = np.diag((d > 0).astype(float)) - inv[:, None] * W * inv[None, :]
    np.testing.assert_allclose(L.toarray(), expected, atol=1e-12)
    assert L[7, 7] == 0.0
    values = np.linalg.eigvalsh(L.toarray())
    assert values.min() > -1e-10 and values.max() < 2 + 1e-10


def test_disconnected_graph_has_one_zero_eigenvalue_per_component() -> None:
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(0, 1, (200, 4)), rng.normal(60, 1, (250, 4))]).astype(np.float32)
    A = knn_graph(X, 10, "euclidean")
    assert connected_components(A)[0] == 2
    for method in ("eigsh", "lobpcg"):
        values, _ = smallest_eigenvectors(normalized_laplacian(A), 4, method, seed=0)
        assert np.all(np.abs(values[:2]) < 1e-6), (method, values)
        assert values[2] > 1e-3, (method, values)
    result = spectral_clusters(A)
    assert result.n_clusters == 2
    assert adjusted_rand(result.labels, np.r_[np.zeros(200), np.ones(250)]) == 1.0


@pytest.mark.parametrize("method", ["eigsh", "lobpcg"])
def test_sparse_eigensolvers_agree_with_dense(method: str) -> None:
    A = ring_of_cliques(5, 80)  # 400 nodes: above DENSE_MAX, so the sparse paths run
    L = normalized_laplacian(A)
    expected = np.linalg.eigvalsh(L.toarray())[:8]
    values, vectors = smallest_eigenvectors(L, 8, method, seed=0)
    np.testing.assert_allclose(values, expected, atol=1e-5)
    assert vectors.shape == (400, 8)
    residual = L @ vectors - vectors * values
    assert np.abs(residual).max() < 1e-3
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=0), 1.0, atol=1e-9)


def test_eigsh_and_lobpcg_agree_on_a_knn_graph() -> None:
    X, _ = blobs(n_per=120, n_centres=3, spread=3.0, seed=2)  # overlapping: connected graph
    L = normalized_laplacian(knn_graph(X, 12, "euclidean"))
    a, va = smallest_eigenvectors(L, 6, "eigsh", seed=0)
    b, vb = smallest_eigenvectors(L, 6, "lobpcg", seed=1)
    np.testing.assert_allclose(a, b, atol=1e-4)
    # Same invariant subspace (signs and rotations within it aside).
    overlap = np.linalg.svd(va[:, :3].T @ vb[:, :3], compute_uv=False)
    assert overlap.min() > 0.99


def test_eigengap_k() -> None:
    assert eigengap_k(np.array([0, 0, 0, 0.4, 0.45, 0.5]), 5) == 3
    assert eigengap_k(np.array([0.5, 0.0, 0.01, 0.6]), 3) == 2  # sorted first
    assert eigengap_k(np.array([0.0, 0.9, 0.95]), 10) == 1  # k_max shrinks to fit
    assert eigengap_k(np.array([0.0]), 5) == 1


# --- Spectral clustering ------------------------------------------------------------------


@pytest.mark.parametrize("n_centres", [3, 4])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_blobs_eigengap_and_ari(n_centres: int, metric: str) -> None:
    X, truth = blobs(n_per=150, n_centres=n_centres, seed=n_centres)
    result = spectral_clusters(X, metric=metric, seed=0)
    assert isinstance(result, SpectralResult)
    assert result.n_clusters == n_centres
    assert adjusted_rand(result.labels, truth) >= 0.99
    assert result.labels.dtype == np.int64
    assert set(result.labels.tolist()) == set(range(n_centres))
    assert result.eigenvalues.shape == (12,) and result.embedding.shape == (len(X), 12)
    assert adjusted_rand(leiden(knn_graph(X, 15, metric)), truth) >= 0.99


def test_connected_clusters_from_a_graph_and_given_k() -> None:
    A = ring_of_cliques(4, 90)  # one component: eigenvalues small but not 0
    truth = np.repeat(np.arange(4), 90)
    assert connected_components(A)[0] == 1
    result = spectral_clusters(A)
    assert result.n_clusters == 4
    assert adjusted_rand(result.labels, truth) == 1.0
    # LOBPCG breaks down on the cliques' exactly repeated eigenvalues (scipy returns an
    # unconverged iterate): the residual check catches it and eigsh answers.
    with pytest.warns(RuntimeWarning, match="falling back to eigsh"):
        fallback = spectral_clusters(A, method="lobpcg")
    np.testing.assert_allclose(fallback.eigenvalues, result.eigenvalues, atol=1e-8)
    np.testing.assert_array_equal(fallback.labels, result.labels)
    forced = spectral_clusters(A, n_clusters=2)
    assert forced.n_clusters == 2 and len(np.unique(forced.labels)) == 2


def test_hnsw_path_clusters_blobs_too() -> None:
    X, truth = blobs(n_per=300, n_centres=3, seed=5)
    result = spectral_clusters(X, exact_threshold=100, seed=0)
    assert result.n_clusters == 3
    assert adjusted_rand(result.labels, truth) >= 0.99


def test_labels_are_numbered_by_size_and_reproducible() -> None:
    rng = np.random.default_rng(4)
    sizes = [60, 200, 120]
    X = np.vstack([rng.normal(c * 30, 1, (s, 6)) for c, s in enumerate(sizes)]).astype(np.float32)
    first = spectral_clusters(X, metric="euclidean", seed=3)
    assert np.bincount(first.labels).tolist() == [200, 120, 60]
    again = spectral_clusters(X, metric="euclidean", seed=3)
    np.testing.assert_array_equal(first.labels, again.labels)


def test_single_cluster() -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    result = spectral_clusters(X, n_clusters=1, metric="euclidean")
    assert result.n_clusters == 1 and not result.labels.any()


def touching_pair(d: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two big blobs (600 points) far apart and two small ones (100) d apart, in 6-D: the
    small pair's border eigenvalue sits among the big blobs' own, so there is no jump
    after the 4th eigenvalue; each blob still keeps > 90 % of its edge weight inside."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((4, 6))
    centres[1, 0], centres[2:, 1], centres[3, 0] = 12.0, 12.0, d
    truth = np.repeat(np.arange(4), [600, 600, 100, 100])
    return (centres[truth] + rng.normal(0.0, 1.0, (len(truth), 6))).astype(np.float32), truth


@pytest.mark.parametrize(("d", "seed"), [(3.0, 1), (3.0, 2), (3.2, 1)])
def test_conductance_counts_touching_groups_the_eigengap_merges(d: float, seed: int) -> None:
    X, truth = touching_pair(d, seed)
    A = knn_graph(X, 15, "euclidean")
    result = spectral_clusters(A)
    assert eigengap_k(result.eigenvalues, 10) == 3  # the old criterion: the pair as one
    assert result.n_clusters == 4
    assert adjusted_rand(result.labels, truth) >= 0.98
    # Candidates 2..11: up to 4 clusters every border loses <= 15 %, a 5th cuts a blob.
    assert max(result.conductance[:3]) <= 0.15 < min(result.conductance[3:])
    assert conductance_k(result.conductance) == 4
    k, labels, worst = choose_k(A, result.embedding, 10, values=result.eigenvalues)
    assert (k, worst) == (4, result.conductance)
    np.testing.assert_array_equal(labels, result.labels)


def paired_blobs(k: int, d: float, seed: int, dim: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """k unit Gaussian blobs of uneven sizes (80 to 400 points) in 6-D: blob 2i sits on
    an axis 14 or 28 from the origin, blob 2i + 1 beside it, d away along the next axis;
    so the groups come in touching pairs."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(80, 400, k)
    centres = np.zeros((k, dim))
    for i in range(k):
        centres[i, (i // 2) % dim] += 14.0 * (1 + i // (2 * dim))
        if i % 2:
            centres[i, (i // 2 + 1) % dim] += d
    truth = np.repeat(np.arange(k), sizes)
    return (centres[truth] + rng.normal(0.0, 1.0, (len(truth), dim))).astype(np.float32), truth


@pytest.mark.parametrize(("k", "d", "seed"), [
    (3, 3.5, 1), (4, 3.5, 2), (5, 3.5, 3), (6, 3.5, 1), (7, 3.5, 2), (7, 3.5, 3)])
def test_k_of_uneven_touching_blobs(k: int, d: float, seed: int) -> None:
    X, truth = paired_blobs(k, d, seed)
    result = spectral_clusters(knn_graph(X, 15, "euclidean"), k_max=10)
    assert result.n_clusters == k
    assert adjusted_rand(result.labels, truth) >= 0.85
    if k == 7:  # three pairs and a single: the spectrum's jump comes one early
        assert eigengap_k(result.eigenvalues, 10) == 6


@pytest.mark.parametrize(("k", "seed"), [(3, 3), (4, 2)])
def test_eigengap_keeps_the_k_the_conductance_misses(k: int, seed: int) -> None:
    # Pairs 3 apart: the cut rises in small steps and its largest rise comes early.
    X, truth = paired_blobs(k, 3.0, seed)
    result = spectral_clusters(knn_graph(X, 15, "euclidean"), k_max=10)
    assert conductance_k(result.conductance) < k == eigengap_k(result.eigenvalues, 10)
    assert result.n_clusters == k
    assert adjusted_rand(result.labels, truth) >= 0.7


def test_conductance_k() -> None:
    assert conductance_k([0.02, 0.03, 0.04, 0.25, 0.27]) == 4
    assert conductance_k([0.1, 0.05, 0.3]) == 3  # running maximum: the dip at 3 is luck
    assert conductance_k([0.4]) == 1
    assert conductance_k([]) == 1


def test_conductance_of_clusters() -> None:
    A = ring_of_cliques(2, 5, bridge=1.0)  # two K5 (20 weights in their rows) + 2 bridges
    halves = np.repeat([0, 1], 5)
    np.testing.assert_allclose(conductance(A, halves), [2 / 22, 2 / 22])
    assert conductance(A, np.zeros(10, dtype=np.int64)).tolist() == [0.0]
    isolated = sp.csr_matrix((3, 3))
    assert conductance(isolated, np.array([0, 1, 1])).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="one label"):
        conductance(A, np.zeros(3, dtype=np.int64))


def test_leiden_k_finds_the_resolution_of_k_communities() -> None:
    # 4 blobs of 500 points: modularity at resolution 1 splits each smooth blob further.
    X, truth = blobs(n_per=500, n_centres=4, dim=4, seed=11)
    A = knn_graph(X, 15, "euclidean")
    assert leiden(A, 1.0).max() + 1 > 4
    communities, resolution = leiden_k(A, spectral_clusters(A).n_clusters)
    assert communities.max() + 1 == 4 and 0 < resolution < 1.0
    assert adjusted_rand(communities, truth) >= 0.99
    fewest, _ = leiden_k(A, 1)  # as few as the graph allows: one per component
    assert fewest.max() + 1 == connected_components(A)[0] == 4
    many, high = leiden_k(A, 12)
    assert abs(many.max() + 1 - 12) <= 1 and high > resolution
    with pytest.raises(ValueError, match="k must be"):
        leiden_k(A, 0)
    with pytest.raises(ValueError, match="low < high"):
        leiden_k(A, 4, low=1.0, high=0.5)


# --- Real sequences -----------------------------------------------------------------------


def read_genome(path: Path) -> str:
    return "".join(line.strip() for line in path.open() if not line.startswith(">")).upper()


def hellinger(spectra: np.ndarray) -> np.ndarray:
    """Square root of k-mer frequencies: variance-stabilising for composition counts."""
    return np.sqrt(spectra)


def test_reads_of_three_genomes(shared_data: Path) -> None:
    rng = np.random.default_rng(0)
    reads: list[str] = []
    truth: list[str] = []
    for name in GENOMES:
        genome = read_genome(shared_data / "genomes" / f"{name}.fa")
        for start in rng.integers(0, len(genome) - 150, 700).tolist():
            reads.append(genome[start : start + 150])
            truth.append(name)
    X = hellinger(canonical_kmer_spectra(reads, 4))
    result = spectral_clusters(X, pca=10, k_neighbors=30, metric="euclidean", seed=0)
    ari = adjusted_rand(result.labels, truth)
    print(f"\n3 genomes, 2100 x 150 bp reads, 4-mers: k={result.n_clusters} ARI={ari:.3f}; "
          f"conductance per k from 2: {np.round(result.conductance, 3).tolist()}")
    assert result.n_clusters == 3
    assert ari >= 0.65  # measured 0.76-0.79 over three read samples


@pytest.fixture(scope="module")
def demo_reads(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str], list[str]]:
    """(read ids, R1 sequences, true genome) of a 4-genome helixflow demo, 2000 pairs."""
    spec = DemoSpec(
        n_genomes=4, genome_length=20_000, n_pairs=2000, duplicate_fraction=0.0, empty_reads=0
    )
    demo = write_demo(tmp_path_factory.mktemp("demo") / "community", spec)
    with gzip.open(demo.r1, "rt") as handle:
        lines = handle.read().splitlines()
    names = [line[1:].split()[0] for line in lines[0::4]]
    with gzip.open(demo.truth, "rt") as handle:
        rows = [line.split("\t") for line in handle.read().splitlines()[1:]]
    genome = {row[0]: row[1] for row in rows}
    return names, lines[1::4], [genome[name] for name in names]


def test_demo_community_ari_against_truth(
    demo_reads: tuple[list[str], list[str], list[str]], tmp_path: Path
) -> None:
    names, seqs, truth = demo_reads
    # Through an embedding shard, as the pipeline would: write, read back, cluster.
    shard = tmp_path / "kmer4.parquet"
    spectra = canonical_kmer_spectra(seqs, 4)
    write_embedding_shard(
        embedding_table(names, spectra, source_shard="demo/R1.fastq.gz", method="kmer4"), shard
    )
    ids, matrix = read_embedding_matrix(shard)
    assert ids.to_pylist() == names
    X = hellinger(matrix)
    result = spectral_clusters(X, pca=10, k_neighbors=30, metric="euclidean", seed=0)
    ari = adjusted_rand(result.labels, truth)
    community = leiden(knn_graph(X, 30, "euclidean"), seed=0)
    leiden_ari = adjusted_rand(community, truth)
    print(
        f"\ndemo 4 genomes, 2000 R1 reads: spectral k={result.n_clusters} ARI={ari:.3f}; "
        f"Leiden {len(np.unique(community))} communities ARI={leiden_ari:.3f}; "
        f"conductance per k from 2: {np.round(result.conductance, 3).tolist()}"
    )
    assert result.n_clusters == 4
    assert ari >= 0.75  # measured 0.84-0.86 over demo seeds 7-9
    assert leiden_ari >= 0.7  # measured 0.86

    reps = representatives(ids, X, result.labels, "euclidean")
    assert reps["size"].to_pylist() == np.bincount(result.labels).tolist()
    for row, cluster in zip(
        reps["medoid_row"].to_pylist(), reps["cluster"].to_pylist(), strict=True
    ):
        assert result.labels[row] == cluster

    table = cluster_table(names, result.labels, truth)
    assert table.column_names == ["sequence_id", "cluster", "truth"]
    assert table.num_rows == len(names)
    assert adjusted_rand(table["cluster"].to_numpy(), table["truth"].to_numpy(False)) == ari

    png = plot_projection(
        projection_2d(result.embedding),
        result.labels,
        tmp_path / "plots" / "demo.png",
        f"demo ARI {ari:.2f}",
    )
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000


# --- Tables, projection, plot -------------------------------------------------------------


def test_cluster_table_without_truth() -> None:
    table = cluster_table(pa.chunked_array([["a", "b"], ["c"]]), np.array([1, 0, 1]))
    assert table.to_pydict() == {"sequence_id": ["a", "b", "c"], "cluster": [1, 0, 1]}
    assert table.schema.field("cluster").type == pa.int64()
    with pytest.raises(ValueError, match="labels"):
        cluster_table(["a"], np.array([0, 1]))
    with pytest.raises(ValueError, match="truth"):
        cluster_table(["a", "b"], np.array([0, 1]), truth=["x"])


def test_adjusted_rand() -> None:
    assert adjusted_rand([0, 0, 1, 1], ["x", "x", "y", "y"]) == 1.0
    assert adjusted_rand([1, 1, 0, 0], ["x", "x", "y", "y"]) == 1.0  # label names are free
    assert adjusted_rand([0, 1, 0, 1], ["x", "x", "y", "y"]) < 0.0 + 1e-9
    with pytest.raises(ValueError, match="shape"):
        adjusted_rand([0, 1], ["x"])


def test_projection_2d_and_plot(tmp_path: Path) -> None:
    X, truth = blobs(n_per=100, n_centres=3, dim=20, seed=9)
    xy = projection_2d(X)
    assert xy.shape == (300, 2) and xy.dtype == np.float32
    # The first component spans the largest spread: centroids are far apart on it.
    centroids = np.array([xy[truth == c].mean(axis=0) for c in range(3)])
    assert np.ptp(centroids[:, 0]) > 5 * xy[truth == 0, 0].std()
    assert projection_2d(np.arange(4.0)[:, None]).shape == (4, 2)  # 1-D input padded
    path = plot_projection(xy, truth, tmp_path / "blobs.png", "blobs")
    assert path.read_bytes()[:8] == PNG_MAGIC
    many = plot_projection(xy, np.arange(300) % 25, tmp_path / "many.png")  # no legend
    assert many.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="N x 2"):
        plot_projection(X, truth, tmp_path / "bad.png")


def _png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big")  # IHDR width


def test_spectral_projection_separates_clusters_and_truth_adds_a_panel(tmp_path: Path) -> None:
    from sklearn.metrics import silhouette_score

    X, truth = touching_pair(3.0, 2)
    result = spectral_clusters(knn_graph(X, 15, "euclidean"))
    xy = spectral_projection(result)
    assert xy.shape == (len(X), 2) and xy.dtype == np.float32
    # The old plot (PCA of all 11 eigenvectors) mixed them: silhouette 0.05 here.
    assert silhouette_score(projection_2d(result.embedding), result.labels) < 0.3
    assert silhouette_score(xy, result.labels) > 0.7
    one = plot_projection(xy, result.labels, tmp_path / "one.png")
    two = plot_projection(xy, result.labels, tmp_path / "two.png", truth=truth.astype(str))
    assert _png_width(two) == 2 * _png_width(one)
    with pytest.raises(ValueError, match="truth"):
        plot_projection(xy, result.labels, tmp_path / "bad.png", truth=truth[:5])
    single = SpectralResult(labels=np.zeros(len(X), dtype=np.int64), n_clusters=1,
                            eigenvalues=result.eigenvalues, embedding=result.embedding)
    assert spectral_projection(single).shape == (len(X), 2)


def test_bad_arguments() -> None:
    A = ring_of_cliques(2, 10)
    with pytest.raises(ValueError, match="n must be"):
        smallest_eigenvectors(normalized_laplacian(A), 0)
    with pytest.raises(ValueError, match="method"):
        smallest_eigenvectors(normalized_laplacian(A), 2, "arpack")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        normalized_laplacian(sp.csr_matrix(-np.ones((3, 3))))
    with pytest.raises(ValueError, match="square"):
        normalized_laplacian(sp.csr_matrix(np.ones((3, 2))))
    with pytest.raises(ValueError, match="n_clusters"):
        spectral_clusters(A, n_clusters=50)
