"""DNABERT embeddings: inference in process or on a Ray Data actor pool, and the tasks.

Pooling: `mean` = mean of the last hidden states of the k-mer tokens ([CLS], [SEP] and
padding excluded; a sequence shorter than k falls back to its [CLS] and [SEP]); `cls` =
the last hidden state of [CLS] (not BERT's tanh pooler, which DNABERT never trained for
embedding).

Inference: `embed` in process, or `embed_dataset` / `DnabertEmbedder` through Ray Data
`map_batches` on an actor pool, each actor loading the model once.

The rest of DNABERT, one idea per module: `tasks.dnabert_tokens` (the k-mer tokenizer and
its windows), `tasks.dnabert_checkpoint` (checkpoint files, id, loading),
`tasks.dnabert_train` (masked-LM pretraining). The Prefect tasks at the end of this
module are their store edge: pretraining, importing a user's checkpoint, embedding shards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import pyarrow as pa
from prefect import task
from prefect.assets import materialize

from helixflow.artifacts import Artifact, Skipped
from helixflow.caching import stage_options
from helixflow.errors import InputError, TooLittleInput
from helixflow.retries import retry_options
from helixflow.store import Store
from helixflow.tables import PARQUET, parquet_file, publish_file, unpack_cached
from helixflow.tasks.dnabert_checkpoint import (
    load_model,
    max_tokens_of,
    model_digest,
    pack_checkpoint,
)
from helixflow.tasks.dnabert_tokens import Encoded, KmerTokenizer, SequenceInput
from helixflow.tasks.dnabert_train import PretrainConfig, pretrain
from helixflow.tasks.embeddings import EmbeddingWriter, iter_read_sequences
from helixflow.tasks.sampling import sample_shard_sequences

if TYPE_CHECKING:  # heavy imports stay lazy: Prefect tasks import this module cheaply
    import ray.data
    import torch
    from transformers import BertModel

POOLINGS = ("mean", "cls")
EMBED_CHUNK = 16_384  # sequences tokenised at a time by `embed`
Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
"""bfloat16 = autocast matmuls (about 2x on a CPU with AVX512-BF16/AMX; vectors differ
from float32 by about 1e-2): opt-in, float32 is the reference."""


@dataclass
class _Pooled:
    """Per-window sums, to be pooled per sequence."""

    token_sum: np.ndarray  # [R, H] sum of k-mer token vectors (or [CLS]/[SEP] if none)
    token_count: np.ndarray  # [R] tokens summed
    cls: np.ndarray  # [R, H]


def _run_windows(
    model: BertModel,
    enc: Encoded,
    batch_size: int,
    device: torch.device,
    precision: str = "float32",
) -> _Pooled:
    """Forward all windows, longest first so that batches carry little padding."""
    import torch

    _check_precision(precision)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=precision == "bfloat16")

    n_kmers = enc.windows.n_kmers
    rows = len(n_kmers)
    hidden = int(model.config.hidden_size)
    token_sum = np.zeros((rows, hidden), np.float32)
    cls = np.zeros((rows, hidden), np.float32)
    count = np.where(n_kmers > 0, n_kmers, 2).astype(np.float32)
    order = np.argsort(-n_kmers, kind="stable")
    with torch.inference_mode(), autocast:
        for lo in range(0, rows, batch_size):
            idx = order[lo : lo + batch_size]
            n = n_kmers[idx]
            width = int(n.max()) + 2
            ids = torch.from_numpy(np.ascontiguousarray(enc.input_ids[idx, :width])).to(device)
            # No mask when nothing is padded: the attention kernels take a faster path.
            mask = None
            if int(n.min()) + 2 < width:
                mask = torch.from_numpy(np.ascontiguousarray(enc.attention_mask[idx, :width])).to(
                    device
                )
            states = model(input_ids=ids, attention_mask=mask).last_hidden_state
            cols = torch.arange(width, device=device)
            n_t = torch.from_numpy(n).to(device)
            pool = (cols[None, :] >= 1) & (cols[None, :] <= n_t[:, None])
            empty = n_t == 0  # shorter than k: pool [CLS] and [SEP]
            pool = torch.where(empty[:, None], cols[None, :] <= 1, pool)
            summed = torch.bmm(pool.to(states.dtype)[:, None, :], states)[:, 0]
            token_sum[idx] = summed.float().cpu().numpy()
            cls[idx] = states[:, 0].float().cpu().numpy()
    return _Pooled(token_sum, count, cls)


def _pool_sequences(
    pooled: _Pooled, owner: np.ndarray, n_sequences: int, pooling: Sequence[str]
) -> dict[str, np.ndarray]:
    """Windows -> sequences: token-weighted means (one window: its own vectors)."""
    hidden = pooled.cls.shape[1]
    weight = np.zeros(n_sequences, np.float32)
    np.add.at(weight, owner, pooled.token_count)
    weight = np.maximum(weight, 1e-12)
    out: dict[str, np.ndarray] = {}
    if "mean" in pooling:
        total = np.zeros((n_sequences, hidden), np.float32)
        np.add.at(total, owner, pooled.token_sum)
        out["mean"] = total / weight[:, None]
    if "cls" in pooling:
        total = np.zeros((n_sequences, hidden), np.float32)
        np.add.at(total, owner, pooled.cls * pooled.token_count[:, None])
        out["cls"] = total / weight[:, None]
    return out


def _check_pooling(pooling: Sequence[str] | str) -> tuple[str, ...]:
    pooling = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    unknown = [p for p in pooling if p not in POOLINGS]
    if unknown or not pooling:
        raise ValueError(f"pooling must be a subset of {POOLINGS}, got {pooling}")
    return pooling


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def embed(
    sequences: SequenceInput,
    model: str | Path | tuple[BertModel, KmerTokenizer],
    batch_size: int = 64,
    pooling: Sequence[str] | str = POOLINGS,
    *,
    max_tokens: int | None = None,
    stride: int | None = None,
    threads: int | None = None,
    precision: str = "float32",
) -> dict[str, np.ndarray]:
    """Embeddings of sequences in this process: {"mean": N x H, "cls": N x H} float32.

    `model` is a checkpoint directory or a (model, tokenizer) pair from `load_model`.
    Sequences longer than the model's maximum (or `max_tokens`) are embedded in windows
    overlapping by `stride` k-mers and pooled (see the module docstring). `threads` sets
    torch's intra-op threads for this process; `precision` is one of PRECISIONS.

    Args:
        sequences: DNA sequences (strings, an Arrow string/binary array or a NumPy str array).
        model: a checkpoint directory, or a (model, tokenizer) pair from `load_model`.
        batch_size: token windows per forward pass.
        pooling: "mean", "cls" or both; the keys of the result.
        max_tokens: window length in tokens, [CLS]/[SEP] included; None or larger than the
            model's maximum: the model's maximum.
        stride: k-mers between window starts; None: half the window's k-mers.
        threads: torch intra-op threads for this process; None or 0 leaves torch's setting.
        precision: "float32" (reference) or "bfloat16" (autocast).

    Returns:
        One N x H float32 matrix per pooling name, rows in input order.

    Raises:
        ValueError: an unknown pooling name.
        InputError: `model` is a directory that is not a DNABERT checkpoint.
    """
    import torch

    pooling = _check_pooling(pooling)
    if threads:
        torch.set_num_threads(threads)
    bert, tokenizer = load_model(model) if isinstance(model, str | Path) else model
    limit = min(max_tokens or max_tokens_of(bert), max_tokens_of(bert))
    device = next(bert.parameters()).device
    if not isinstance(sequences, pa.Array | pa.ChunkedArray | np.ndarray):
        sequences = sequences if isinstance(sequences, list) else list(sequences)
    parts: list[dict[str, np.ndarray]] = []
    for lo in range(0, max(len(sequences), 1), EMBED_CHUNK):  # bounded token matrices
        enc = tokenizer.encode_windows(sequences[lo : lo + EMBED_CHUNK], limit, stride)
        n_sequences = int(enc.windows.owner[-1]) + 1 if len(enc.windows.owner) else 0
        pooled = _run_windows(bert, enc, batch_size, device, precision)
        parts.append(_pool_sequences(pooled, enc.windows.owner, n_sequences, pooling))
    return {name: np.concatenate([p[name] for p in parts]) for name in pooling}


def _vector_column(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """float32 N x H -> Arrow fixed_size_list<float32>[H] (no copy)."""
    matrix = np.ascontiguousarray(matrix, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


class DnabertEmbedder:
    """Callable class for Ray Data `map_batches` on an actor pool: loads the model once
    per actor (in __init__), sets the actor's torch threads, and adds `mean` / `cls`
    vector columns to each batch (fixed-size float32 lists for a pyarrow batch, 2-D
    arrays for a numpy batch)."""

    def __init__(
        self,
        model_dir: str,
        column: str = "sequence",
        batch_size: int = 64,
        threads: int | None = 1,
        pooling: Sequence[str] | str = POOLINGS,
        max_tokens: int | None = None,
        stride: int | None = None,
        precision: str = "float32",
    ) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.column = column
        self.batch_size = batch_size
        self.pooling = _check_pooling(pooling)
        self.max_tokens = max_tokens
        self.stride = stride
        self.precision = precision
        self.model, self.tokenizer = load_model(model_dir)
        self.model.to(_device())

    def embed(self, sequences: SequenceInput) -> dict[str, np.ndarray]:
        """Vectors of a batch of sequences (as `embed`, with the actor's model)."""
        return embed(
            sequences,
            (self.model, self.tokenizer),
            self.batch_size,
            self.pooling,
            max_tokens=self.max_tokens,
            stride=self.stride,
            precision=self.precision,
        )

    def __call__(self, batch: pa.Table | dict[str, np.ndarray]) -> pa.Table | dict[str, np.ndarray]:
        if isinstance(batch, pa.Table):
            vectors = self.embed(batch.column(self.column))
            for name, matrix in vectors.items():
                batch = batch.append_column(name, _vector_column(matrix))
            return batch
        vectors = self.embed(np.asarray(batch[self.column]))
        return {**batch, **vectors}


def embed_dataset(
    ds: ray.data.Dataset,
    model_dir: str | Path,
    *,
    column: str = "sequence",
    actors: int = 1,
    rows_per_batch: int = 512,
    batch_size: int = 64,
    threads: int = 1,
    pooling: Sequence[str] | str = POOLINGS,
    max_tokens: int | None = None,
    stride: int | None = None,
    precision: str = "float32",
) -> ray.data.Dataset:
    """Ray Data pipeline adding `mean` / `cls` vector columns to a dataset of sequences.

    `actors` DnabertEmbedder actors, each loading the model once and running `threads`
    torch threads (and reserving that many CPUs), one GPU each when CUDA is present;
    `rows_per_batch` rows go to an actor at a time, `batch_size` windows per forward.

    Args:
        ds: the Ray dataset to embed.
        model_dir: the checkpoint directory, readable on every worker.
        column: the column holding the sequences.
        actors: the size of the actor pool.
        rows_per_batch: rows handed to an actor at a time.
        batch_size: token windows per forward pass.
        threads: torch threads (and reserved CPUs) per actor.
        pooling: "mean", "cls" or both; the columns added.
        max_tokens: window length in tokens; None: the model's maximum.
        stride: k-mers between window starts; None: half the window's k-mers.
        precision: "float32" or "bfloat16".

    Returns:
        The lazy dataset with the vector columns added (nothing runs until it is consumed).

    Raises:
        ValueError: an unknown pooling name.
    """
    import torch
    from ray.data import ActorPoolStrategy

    return ds.map_batches(
        DnabertEmbedder,
        fn_constructor_kwargs={
            "model_dir": str(model_dir),
            "column": column,
            "batch_size": batch_size,
            "threads": threads,
            "pooling": _check_pooling(pooling),
            "max_tokens": max_tokens,
            "stride": stride,
            "precision": precision,
        },
        batch_size=rows_per_batch,
        batch_format="pyarrow",
        # grows to `actors` as CPUs free up: a pool bigger than the cluster still runs
        compute=ActorPoolStrategy(min_size=1, max_size=actors),
        num_cpus=threads,
        num_gpus=1 if torch.cuda.is_available() else 0,
    )


# --- Prefect tasks: the store edge ---------------------------------------------------------

DNABERT_VERSION = "2"  # 2: source_shard is the shard's label, not its URI
#: The inference pool's size when a run asks for one actor per CPU (`actors=0`).
MAX_AUTO_ACTORS = 4


def pool_size(actors: int) -> int:
    """`actors`, or for 0 one per CPU of the connected Ray cluster (1..MAX_AUTO_ACTORS).

    Args:
        actors: the size asked for; 0 for the cluster's CPU count.

    Returns:
        The actor pool's size.
    """
    if actors:
        return actors
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
    return max(1, min(MAX_AUTO_ACTORS, cpus))
MODEL_MEDIA_TYPE = "application/x-tar"


def materialize_checkpoint(store: Store, model: Artifact) -> Path:
    """The model artifact unpacked in this node's cache (once per sha256), for loading.

    Args:
        store: the store holding the model.
        model: a checkpoint tar artifact (as `pack_checkpoint` makes it).

    Returns:
        The local checkpoint directory.
    """
    return unpack_cached(store, model, "dnabert")


@materialize("helixflow://embed/dnabert-model", name="pretrain-dnabert",
              task_run_name="pretrain-dnabert-{sample}", **stage_options(DNABERT_VERSION))
def pretrain_dnabert(sample: str, shards: list[Artifact], config: PretrainConfig, store: Store,
                     run_id: str) -> Artifact | Skipped:
    """Masked-LM pretraining of a small DNABERT on a sample's reads.

    Args:
        sample: the sample the reads belong to (names the model file).
        shards: its read shards; the first `config.max_sequences` reads are trained on.
        config: model size and training settings.
        store: where the model is published.
        run_id: the run it belongs to.

    Returns:
        The model artifact (a tar of the checkpoint in DNABERT's layout; its sha256 is the
        model id), or `Skipped` when no read is long enough to train on.
    """
    sequences = sample_shard_sequences(store, shards, config.max_sequences)
    with store.scratch() as scratch:
        try:
            if len(sequences) == 0:
                raise TooLittleInput("no reads left to pretrain DNABERT on")
            model_dir = pretrain(sequences, config, scratch / "model")
        except TooLittleInput as exc:
            return Skipped(stage="embedding", sample="dnabert", reason=str(exc))
        tar = pack_checkpoint(model_dir, scratch / f"dnabert{config.k}-{sample}.tar")
        meta = json.loads((model_dir / "helixflow.json").read_text())
        losses = meta.get("losses") or [None]
        return publish_file(
            store, tar, run_id=run_id, stage="models", media_type=MODEL_MEDIA_TYPE,
            producer="pretrain-dnabert", params=asdict(config),
            upstream=[s.ref() for s in shards],
            metadata={"model_digest": model_digest(model_dir), "sequences": len(sequences),
                      "final_loss": losses[-1], "first_loss": losses[0]},
        )


@materialize("helixflow://embed/dnabert", name="dnabert-embed",
              task_run_name="dnabert-{shard.name}", **stage_options(DNABERT_VERSION))
def embed_dnabert_shard(shard: Artifact, model: Artifact, actors: int, batch_size: int,
                        store: Store, run_id: str,
                        precision: str = "float32") -> list[Artifact]:
    """DNABERT embeddings (mean-pooled and [CLS]) of one read shard, via Ray Data.

    The reads go through an actor pool (the model loaded once per actor) and the vectors
    are streamed back into the two embedding shards.

    Args:
        shard: a read shard.
        model: the checkpoint artifact (`pretrain_dnabert` or `import_dnabert_checkpoint`).
        actors: size of the actor pool; 0: one per CPU of the cluster (`pool_size`).
        batch_size: windows per forward pass.
        store: where the embedding shards are published.
        run_id: the run they belong to.
        precision: one of PRECISIONS.

    Returns:
        Two embedding shards, `dnabert-mean` and `dnabert-cls` (in POOLINGS order).
    """
    import ray.data

    _check_precision(precision)
    model_dir = materialize_checkpoint(store, model)
    dim = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    with store.scratch() as scratch, parquet_file(store, shard) as source:
        writers = {
            pool: EmbeddingWriter(scratch / shard.name.replace(".parquet", f".dnabert-{pool}"
                                                              ".parquet"),
                                  dim, method=f"dnabert-{pool}", source_shard=shard.label,
                                  model_id=model.sha256)
            for pool in POOLINGS
        }
        try:
            for ids, sequences, rows in iter_read_sequences(source, batch_rows=200_000):
                ds = ray.data.from_arrow(pa.table({"sequence": sequences}))
                out = embed_dataset(ds, model_dir, actors=pool_size(actors),
                                    batch_size=batch_size,
                                    rows_per_batch=1024, precision=precision)
                start = 0
                for batch in out.iter_batches(batch_size=4096, batch_format="pyarrow"):
                    n = batch.num_rows
                    for pool in POOLINGS:
                        flat = batch.column(pool).combine_chunks().flatten()
                        vectors = flat.to_numpy(zero_copy_only=False).reshape(n, dim)
                        writers[pool].write(ids.slice(start, n),
                                            np.ascontiguousarray(vectors, dtype=np.float32),
                                            rows[start:start + n])
                    start += n
            for writer in writers.values():
                writer.close()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        return [
            publish_file(store, w.path, run_id=run_id, stage="embed", media_type=PARQUET,
                         producer="dnabert-embed", rows=w.rows,
                         params={"pooling": pool, "batch_size": batch_size,
                                 "precision": precision},
                         upstream=[shard.ref(), model.ref()],
                         metadata={"method": f"dnabert-{pool}", "dim": dim,
                                   "model_id": model.sha256})
            for pool, w in writers.items()
        ]


@task(name="import-dnabert", task_run_name="import-dnabert", **retry_options())
def import_dnabert_checkpoint(model_dir: str, store: Store, run_id: str) -> Artifact:
    """A checkpoint directory given by the user (e.g. a DNABERT-6 download), into the store.

    The checkpoint is checked by loading it, then packed so workers and lineage see one
    artifact.

    Args:
        model_dir: the checkpoint directory (config.json, vocab.txt, weights).
        store: where the artifact is published.
        run_id: the run it belongs to.

    Returns:
        The model artifact (a tar of the checkpoint; metadata `model_digest`).
    """
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise InputError(str(path), "not a checkpoint directory",
                         hint="give the directory holding config.json, vocab.txt and weights")
    load_model(path)  # raises InputError naming what is missing or inconsistent
    with store.scratch() as scratch:
        tar = pack_checkpoint(path, scratch / f"{path.name or 'dnabert'}.tar")
        return publish_file(store, tar, run_id=run_id, stage="models",
                            media_type=MODEL_MEDIA_TYPE, producer="import-dnabert",
                            metadata={"model_digest": model_digest(path),
                                      "source": str(path.resolve())})
