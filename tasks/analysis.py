"""Graph and spectral analysis of one embedding method's shards: the task at the I/O edge.

Kernels are `tasks.graph` (kNN graph, components, Leiden, medoids) and `tasks.spectral`
(normalised Laplacian, eigenvectors, eigengap, k-means, projection). This module reads the
embedding shards (at most `max_points` vectors, sampled evenly, so memory is bounded
whatever the input size), runs them, joins representatives back to their reads' sequences,
and publishes the tables and the projection plot.
"""

from __future__ import annotations

import gzip
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from prefect.assets import materialize
from pydantic import BaseModel, Field

from helixflow.artifacts import Artifact, FileRef, Skipped
from helixflow.caching import stage_options
from helixflow.errors import InputError
from helixflow.store import Store
from helixflow.tables import fetch, parquet_file, publish_file, publish_table
from helixflow.tasks.graph import (
    connected_components,
    knn_graph,
    leiden,
    leiden_k,
    representatives,
)
from helixflow.tasks.spectral import (
    SpectralResult,
    adjusted_rand,
    plot_projection,
    spectral_clusters,
    spectral_projection,
)
from helixflow.uris import display_name

ANALYSIS_VERSION = "4"
"""2: k_neighbors clamped to N-1 (and reported) on small inputs; 3: k and the Leiden
resolution chosen by conductance, the plot in the spectral embedding with a truth panel;
4: k the larger of the conductance and the eigengap k, the Leiden resolution the one
giving k communities."""
MIN_VECTORS = 3
"""Fewer vectors make no kNN graph worth clustering: the analysis is skipped."""


class AnalysisParams(BaseModel):
    """Settings of the graph/spectral analysis.

    Example:
        >>> AnalysisParams(n_clusters=4, k_neighbors=10)  # doctest: +SKIP
    """

    n_clusters: int | None = Field(None, ge=1)
    """Spectral clusters; None: chosen up to `k_max`, the larger of the conductance k (the k
    before the largest rise of the worst cluster's conductance) and the eigengap k
    (`tasks.spectral.choose_k`)."""
    k_max: int = Field(12, ge=2)
    k_neighbors: int = Field(30, ge=2)
    metric: str = "euclidean"
    pca: int | None = Field(10, ge=2)
    """Reduce to this many principal components before the kNN search (None: off). 10
    separated the tests' 3-genome demo (ARI 0.99) where 50 did not (0.0–0.75); 20 or more
    let spectral k-means isolate small groups of overlapping reads of benchmark C's
    smallest genomes (ARI 0.01)."""
    hellinger: bool = True
    """Square-root transform of k-mer spectra (Hellinger distance) before the PCA."""
    max_points: int = Field(20_000, ge=10)
    """At most this many vectors are analysed (evenly sampled, seeded)."""
    resolution: float | None = Field(None, gt=0)
    """Leiden resolution; None: the one whose community count is closest to the spectral
    k (`tasks.graph.leiden_k`)."""
    seed: int = 0


class AnalysisResult(BaseModel):
    clusters: Artifact
    representatives: Artifact
    projection: Artifact
    metrics: dict[str, float | int | None]


@dataclass(frozen=True)
class Clustering:
    """What `cluster_vectors` found.

    Attributes:
        vectors: the N x d matrix the graph was built on (transformed, reduced).
        graph: the symmetric kNN graph.
        spectral: spectral clusters (k chosen or given).
        communities: Leiden community per row.
        resolution: the Leiden resolution used.
        n_components, components: connected components of the graph.
    """

    vectors: np.ndarray
    graph: sp.csr_matrix
    spectral: SpectralResult
    communities: np.ndarray
    resolution: float
    n_components: int
    components: np.ndarray


def cluster_vectors(X: np.ndarray, method: str, params: AnalysisParams) -> Clustering:
    """The analysis kernel: transform, reduce, kNN graph, spectral clusters, Leiden.

    Args:
        X: N x D embedding vectors (N > `params.k_neighbors`).
        method: embedding method name; k-mer spectra ("kmer…", "protein…") get the
            Hellinger transform when `params.hellinger`.
        params: the analysis settings.

    Returns:
        A `Clustering`.
    """
    if params.hellinger and method.startswith(("kmer", "protein")):
        X = np.sqrt(np.maximum(X, 0))
    if params.pca and X.shape[1] > params.pca and X.shape[0] > params.pca:
        from sklearn.decomposition import PCA

        X = PCA(params.pca, random_state=params.seed).fit_transform(X).astype(np.float32)
    graph = knn_graph(X, params.k_neighbors, params.metric, seed=params.seed)  # type: ignore[arg-type]
    spectral = spectral_clusters(graph, params.n_clusters, k_max=params.k_max, seed=params.seed)
    n_components, components = connected_components(graph)
    if params.resolution is None:
        communities, resolution = leiden_k(graph, spectral.n_clusters, seed=params.seed)
    else:
        resolution = params.resolution
        communities = leiden(graph, resolution, seed=params.seed)
    return Clustering(vectors=X, graph=graph, spectral=spectral, communities=communities,
                      resolution=resolution, n_components=n_components, components=components)


def _load(store: Store, shards: list[Artifact], max_points: int, seed: int
          ) -> tuple[pa.Table, np.ndarray]:
    """(sequence_id, source_shard, row) and the N×D matrix of an even sample of the shards."""
    sizes = [s.rows or 0 for s in shards]
    total = sum(sizes)
    keep = np.sort(np.random.default_rng(seed).choice(total, min(total, max_points),
                                                      replace=False))
    tables, mats, start = [], [], 0
    for shard, size in zip(shards, sizes, strict=True):
        local = keep[(keep >= start) & (keep < start + size)] - start
        start += size
        if not len(local):
            continue
        with parquet_file(store, shard) as pf:
            table = pf.read(columns=["sequence_id", "source_shard", "row", "vector"]).take(local)
        vectors = table.column("vector").combine_chunks()
        dim = vectors.type.list_size
        mats.append(vectors.flatten().to_numpy().reshape(len(vectors), dim))
        tables.append(table.drop_columns(["vector"]))
    if not tables:
        return pa.table({"sequence_id": pa.array([], pa.string())}), np.zeros((0, 0), np.float32)
    return pa.concat_tables(tables), np.vstack(mats).astype(np.float32, copy=False)


def small_input_params(params: AnalysisParams, n: int) -> AnalysisParams | str:
    """The analysis settings adapted to n vectors (k_neighbors at most n - 1, n_clusters at
    most n), or why n vectors are too few to analyse.

    Args:
        params: the requested analysis settings.
        n: the number of vectors to analyse.

    Returns:
        A copy of `params` with `k_neighbors` and `n_clusters` clamped, or, when `n` is
        below MIN_VECTORS (3), the reason as a string.

    Example:
        >>> small_input_params(AnalysisParams(k_neighbors=30), 10).k_neighbors
        9
        >>> small_input_params(AnalysisParams(), 2)
        '2 vectors, need at least 3 for a kNN graph'
    """
    if n < MIN_VECTORS:
        return f"{n} vector{'' if n == 1 else 's'}, need at least {MIN_VECTORS} for a kNN graph"
    clusters = None if params.n_clusters is None else min(params.n_clusters, n)
    return params.model_copy(update={"k_neighbors": min(params.k_neighbors, n - 1),
                                     "n_clusters": clusters})


def _truth_labels(store: Store, truth: FileRef | None, ids: pa.Array, column: str
                  ) -> np.ndarray | None:
    """Labels of the sequences from a TSV (`name` + `column`), mates sharing their pair's."""
    if truth is None:
        return None
    with store.scratch() as scratch:
        path = fetch(store, truth, scratch)
        opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
        with opener(path, "rt") as fh:  # type: ignore[operator]
            header = fh.readline().rstrip("\n").split("\t")
            if "name" not in header or column not in header:
                raise InputError(display_name(truth.uri),
                                 f"truth table needs columns 'name' and {column!r}")
            i, j = header.index("name"), header.index(column)
            labels = {f[i]: f[j] for f in (line.rstrip("\n").split("\t") for line in fh)}
    names = pc.replace_substring_regex(ids, r"/[12]$", "").to_pylist()
    return np.array([labels.get(n, "?") for n in names])


def _sequences(store: Store, table: pa.Table) -> list[str]:
    """The read sequence of each row (source_shard, row) of a representatives table; the
    shards are read from the store's objects by their labels."""
    wanted: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, (src, row) in enumerate(zip(table.column("source_shard").to_pylist(),
                                       table.column("row").to_pylist(), strict=True)):
        wanted[src].append((i, row))
    out = [""] * table.num_rows
    for src, items in wanted.items():
        with parquet_file(store, store.label_uri(src)) as pf:
            seqs = pf.read(columns=["sequence"]).column("sequence").take(
                [row for _, row in items]).to_pylist()
        for (i, _), seq in zip(items, seqs, strict=True):
            out[i] = seq
    return out


@materialize("helixflow://analysis", name="analyze-embeddings",
             task_run_name="analyze-{method}", **stage_options(ANALYSIS_VERSION))
def analyze_embeddings(
    method: str, shards: list[Artifact], params: AnalysisParams, truth: FileRef | None,
    truth_column: str, store: Store, run_id: str,
) -> AnalysisResult | Skipped:
    """kNN graph → spectral clusters (k chosen, see `cluster_vectors`), connected
    components and Leiden communities → per-cluster medoids as representatives, plus a
    plot of the spectral embedding (a second panel coloured by truth) and the adjusted
    Rand index against the truth when one is given. On few vectors the kNN k is clamped
    to N-1; fewer than MIN_VECTORS: `Skipped`.

    Args:
        method: the embedding method's name; names the outputs. With `params.hellinger`,
            "kmer*" and "protein*" vectors get the Hellinger (square-root) transform.
        shards: the method's embedding shards (Parquet with a `vector` column).
        params: analysis settings; at most `params.max_points` vectors are sampled.
        truth: a TSV (optionally gzipped) of true labels by sequence name, or None for no ARI.
        truth_column: the label column of `truth`.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifacts belong to.

    Returns:
        AnalysisResult with the clusters table, the representatives table, the projection
        PNG and the metrics (vectors, k_neighbors, n_clusters, components, communities,
        resolution, ari_spectral, ari_leiden; the ARIs None without `truth`); or
        `Skipped` when there are fewer than MIN_VECTORS vectors.
    """
    meta, X = _load(store, shards, params.max_points, params.seed)
    adapted = small_input_params(params, X.shape[0])
    if isinstance(adapted, str):
        return Skipped(stage="analysis", sample=method, reason=adapted)
    params = adapted  # metrics report the k used
    ids = meta.column("sequence_id").combine_chunks()
    found = cluster_vectors(X, method, params)
    spectral, communities = found.spectral, found.communities
    labels = _truth_labels(store, truth, ids, truth_column)
    metrics: dict[str, float | int | None] = {
        "vectors": int(X.shape[0]), "k_neighbors": params.k_neighbors,
        "n_clusters": spectral.n_clusters,
        "components": found.n_components, "communities": int(communities.max()) + 1,
        "resolution": found.resolution,
        "ari_spectral": None if labels is None else adjusted_rand(spectral.labels, labels),
        "ari_leiden": None if labels is None else adjusted_rand(communities, labels),
    }
    table = pa.table({
        "sequence_id": ids, "source_shard": meta.column("source_shard"),
        "row": meta.column("row"), "cluster": spectral.labels, "community": communities,
        "component": found.components,
        **({"truth": pa.array(labels)} if labels is not None else {}),
    })
    reps = representatives(ids, found.vectors, spectral.labels, params.metric)  # type: ignore[arg-type]
    at = reps.column("medoid_row").to_numpy()
    reps = reps.append_column("source_shard", table.column("source_shard").take(at))
    reps = reps.append_column("row", table.column("row").take(at))
    reps = reps.append_column("sequence", pa.array(_sequences(store, reps), pa.string()))
    chosen = np.ascontiguousarray(X[at], dtype=np.float32)
    reps = reps.append_column("vector", pa.FixedSizeListArray.from_arrays(
        pa.array(chosen.ravel()), chosen.shape[1]))
    common = {"run_id": run_id, "stage": "analysis", "producer": "analyze-embeddings",
              "params": {"method": method, **params.model_dump()},
              "upstream": [s.ref() for s in shards] + ([truth] if truth else [])}
    with store.scratch() as scratch:
        clusters = publish_table(store, table, scratch, name=f"{method}.clusters.parquet",
                                 metadata=metrics, **common)
        rep_art = publish_table(store, reps, scratch, name=f"{method}.representatives.parquet",
                                **common)
        png = plot_projection(spectral_projection(spectral, params.seed), spectral.labels,
                              scratch / f"{method}.projection.png",
                              title=f"{method}: {spectral.n_clusters} spectral clusters",
                              truth=labels)
        plot = publish_file(store, png, media_type="image/png", **common)
    return AnalysisResult(clusters=clusters, representatives=rep_art, projection=plot,
                          metrics=metrics)


def read_representatives(store: Store, art: Artifact) -> list[dict[str, object]]:
    """The representatives table as rows (cluster, size, sequence_id, sequence, …).

    Args:
        store: the store holding the artifact.
        art: a representatives table published by `analyze_embeddings`.

    Returns:
        One dict per row, keyed by column name.
    """
    with parquet_file(store, art) as pf:
        return pf.read().to_pylist()

