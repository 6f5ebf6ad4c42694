"""LSHvec: k-mer embeddings through locality-sensitive hashing (after Shi et al., LSHVec).

Why: raw 15-mers are far too many to embed (4^15 words, most seen once). LSHVec hashes each
k-mer with a random-hyperplane LSH into 2^hash_size buckets, so similar k-mers share a
bucket ("token"), then learns token vectors with skip-gram and describes a read by the mean
of its token vectors. This module is the store edge: the Prefect tasks that publish the
hash, the token shards, the model and the embeddings as artifacts. The kernels are pure
(NumPy / torch / Ray), one idea per module:

- `tasks.lsh`: the hash (`fit_lsh`, `LshFunction`, `tokenize`) and token shards;
- `tasks.token_stream`: vocabulary and token sources streamed an epoch at a time;
- `tasks.skipgram`: the skip-gram model (levels, backoff, save/load) and the local trainer;
- `tasks.skipgram_ray`: the same model trained by Ray actors, synchronised every round;
- `tasks.read_vectors`: read vectors (mean / SIF) and read-token smoothing.
"""

from __future__ import annotations

from dataclasses import asdict

import pyarrow.parquet as pq
from prefect.assets import materialize

from helixflow.artifacts import Artifact, Skipped
from helixflow.caching import stage_options
from helixflow.errors import HelixflowError, TooLittleInput
from helixflow.store import Store
from helixflow.tables import PARQUET, pack_files, parquet_file, publish_file, unpack_cached
from helixflow.tasks.embeddings import EmbeddingWriter
from helixflow.tasks.lsh import (
    LSH_VERSION,
    LshFunction,
    fit_lsh,
    meta_path,
    token_arrays,
    write_token_shard,
)
from helixflow.tasks.read_vectors import sequence_vectors
from helixflow.tasks.sampling import sample_shard_sequences
from helixflow.tasks.skipgram import SkipGramConfig, SkipGramModel
from helixflow.tasks.skipgram_ray import train_skipgram_ray
from helixflow.tasks.token_stream import TokenSource

LSHVEC_TASKS_VERSION = "5"  # 5: source_shard is the shard's label, not its URI
_EMBED_BATCH = 50_000  # reads per batch of embed_lshvec_shard: memory set by this, not the shard
_HASH_SAMPLE = 20_000  # reads whose k-mers the hash is fitted on (the first ones)


def load_lsh(store: Store, art: Artifact) -> LshFunction:
    """The hash of a `fit_lsh_hash` artifact, unpacked once per node.

    Args:
        store: the store holding the artifact.
        art: the hash tar artifact.

    Returns:
        The LshFunction.
    """
    return LshFunction.load(unpack_cached(store, art, "lshvec") / "lsh.npz")


def load_model(store: Store, art: Artifact) -> SkipGramModel:
    """The model of a `train_lshvec` artifact, unpacked once per node.

    Args:
        store: the store holding the artifact.
        art: the model tar artifact.

    Returns:
        The SkipGramModel.
    """
    return SkipGramModel.load(unpack_cached(store, art, "lshvec") / "model.npz")


def write_lshvec_embeddings(source: pq.ParquetFile, model: SkipGramModel, weighting: str,
                            writer: EmbeddingWriter) -> None:
    """Read vectors of a token shard, `_EMBED_BATCH` reads at a time, into `writer`.

    Memory is set by the batch, not the shard.

    Args:
        source: the token shard (TOKENS_SCHEMA), opened for streaming.
        model: the trained token vectors (out-of-vocabulary tokens use its backoff).
        weighting: "sif" (weights a / (a + p), a = the model's `sif_a`) or "mean".
        writer: the embedding shard being written.

    Returns:
        None; the vectors are written to `writer`.
    """
    for batch in source.iter_batches(batch_size=_EMBED_BATCH,
                                     columns=["sequence_id", "row", "tokens"]):
        flat, offsets = token_arrays(batch.column("tokens"))
        vectors = sequence_vectors(flat, offsets, model.vectors, model.vocab,
                                   weighting=weighting, a=model.config.sif_a,
                                   backoff=model.backoff)
        writer.write(batch.column("sequence_id"), vectors, batch.column("row").to_numpy())


@materialize("helixflow://embed/lshvec-hash", name="fit-lsh", task_run_name="fit-lsh-k{k}",
             **stage_options(LSHVEC_TASKS_VERSION))
def fit_lsh_hash(shards: list[Artifact], k: int, hash_size: int, seed: int, store: Store,
                 run_id: str) -> Artifact | Skipped:
    """The LSH function (hyperplanes through k-mers sampled from the reads) as an artifact.

    The hash is fitted on the first `_HASH_SAMPLE` reads and reused by tokenisation,
    training and later inference.

    Args:
        shards: read shards to sample k-mers from, in order.
        k: k-mer length.
        hash_size: bits per token (2^hash_size buckets).
        seed: seed of the k-mer and hyperplane draws.
        store: where the artifact is published.
        run_id: the run it belongs to.

    Returns:
        The versioned hash (a tar of npz + JSON; metadata `lsh_digest`), or `Skipped` when
        the reads hold too few k-mers to fit it (none left, or all shorter than k).
    """
    sample = sample_shard_sequences(store, shards, _HASH_SAMPLE)
    try:
        if len(sample) == 0:
            raise TooLittleInput("no reads to sample k-mers from for the LSH hash")
        lsh = fit_lsh(sample, k=k, hash_size=hash_size, seed=seed)
    except TooLittleInput as exc:
        return Skipped(stage="embedding", sample="lshvec", reason=str(exc))
    with store.scratch() as scratch:
        path = lsh.save(scratch / "lsh.npz")
        tar = pack_files([path, meta_path(path)], scratch / f"lsh-k{k}-h{hash_size}.tar")
        return publish_file(store, tar, run_id=run_id, stage="models",
                            media_type="application/x-tar", producer="fit-lsh",
                            params={"k": k, "hash_size": hash_size, "seed": seed},
                            upstream=[s.ref() for s in shards],
                            metadata={"lsh_digest": lsh.digest(), "version": LSH_VERSION})


@materialize("helixflow://embed/lshvec-tokens", name="lsh-tokenize",
             task_run_name="tokens-{shard.name}", **stage_options(LSHVEC_TASKS_VERSION))
def tokenize_shard(shard: Artifact, lsh_art: Artifact, store: Store, run_id: str) -> Artifact:
    """Every read of a shard as its LSH token sequence.

    Args:
        shard: a read shard.
        lsh_art: the hash (`fit_lsh_hash`).
        store: where the token shard is published.
        run_id: the run it belongs to.

    Returns:
        The token shard (Parquet, TOKENS_SCHEMA, one row per read).
    """
    lsh = load_lsh(store, lsh_art)
    name = shard.name.replace(".parquet", ".tokens.parquet")
    with store.scratch() as scratch, parquet_file(store, shard) as source:
        path = scratch / name
        rows, _tokens = write_token_shard(source, lsh, path)
        return publish_file(store, path, run_id=run_id, stage="embed", media_type=PARQUET,
                            producer="lsh-tokenize", rows=rows,
                            upstream=[shard.ref(), lsh_art.ref()],
                            metadata={"lsh_digest": lsh_art.metadata.get("lsh_digest")})


@materialize("helixflow://embed/lshvec-model", name="train-lshvec",
             task_run_name="train-lshvec", **stage_options(LSHVEC_TASKS_VERSION))
def train_lshvec(token_shards: list[Artifact], lsh_art: Artifact, config: SkipGramConfig,
                 workers: int, store: Store, run_id: str) -> Artifact:
    """Skip-gram over the token shards on Ray actors: one model, synchronised every round.

    Each actor streams its token shards (or parts of them) from the store every epoch:
    neither this coordinator, the object store nor the actors hold the corpus, so memory
    does not grow with the number of shards.

    Args:
        token_shards: the token shards (`tokenize_shard`).
        lsh_art: the hash they were made with (its hash_size must match `config`'s levels).
        config: skip-gram settings.
        workers: Ray actors to train on.
        store: where the model is published.
        run_id: the run it belongs to.

    Returns:
        The model artifact (a tar of npz + JSON; metadata: vocabulary size, dim, stats).
    """
    bits = lsh_art.params.get("hash_size")
    if config.levels and bits is not None and int(bits) != config.hash_size:
        raise HelixflowError(f"LSHvec levels {list(config.levels)} are prefixes of "
                             f"{config.hash_size}-bit tokens, but the hash {lsh_art.uri} "
                             f"has hash_size {bits}")
    parts = -(-workers // max(len(token_shards), 1))  # every worker gets some reads
    sources = [TokenSource(art, store, i, parts) for art in token_shards for i in range(parts)]
    model = train_skipgram_ray(sources, config, num_workers=workers,
                               worker_options={"scheduling_strategy": "SPREAD"})
    with store.scratch() as scratch:
        path = model.save(scratch / "model.npz", lsh_digest=lsh_art.metadata.get("lsh_digest",
                                                                                   ""))
        tar = pack_files([path, meta_path(path)], scratch / "lshvec-model.tar")
        return publish_file(store, tar, run_id=run_id, stage="models",
                            media_type="application/x-tar", producer="train-lshvec",
                            params={**asdict(config), "workers": workers},
                            upstream=[lsh_art.ref(), *(t.ref() for t in token_shards)],
                            metadata={"vocab": len(model.vocab), "dim": config.dim,
                                      "stats": model.stats})


@materialize("helixflow://embed/lshvec", name="lshvec-embed",
             task_run_name="lshvec-{tokens.name}", **stage_options(LSHVEC_TASKS_VERSION))
def embed_lshvec_shard(tokens: Artifact, model_art: Artifact, weighting: str, store: Store,
                       run_id: str) -> Artifact:
    """SIF-weighted (or plain) mean token vectors of every read of a token shard.

    Args:
        tokens: a token shard (`tokenize_shard`).
        model_art: the model (`train_lshvec`).
        weighting: "sif" or "mean" (see `write_lshvec_embeddings`).
        store: where the embedding shard is published.
        run_id: the run it belongs to.

    Returns:
        An embedding shard (method `lshvec`, model id = the model artifact's sha256).
    """
    model = load_model(store, model_art)
    dim = int(model.vectors.shape[1])
    source = next((u for u in tokens.upstream if u.uri.endswith(".parquet")), tokens).label
    with store.scratch() as scratch, parquet_file(store, tokens) as pf:
        path = scratch / tokens.name.replace(".tokens.parquet", ".lshvec.parquet")
        with EmbeddingWriter(path, dim, method="lshvec", source_shard=source,
                             model_id=str(model_art.sha256)) as writer:
            write_lshvec_embeddings(pf, model, weighting, writer)
        return publish_file(store, path, run_id=run_id, stage="embed", media_type=PARQUET,
                            producer="lshvec-embed", rows=writer.rows,
                            params={"weighting": weighting},
                            upstream=[tokens.ref(), model_art.ref()],
                            metadata={"method": "lshvec", "dim": dim,
                                      "model_id": model_art.sha256})
