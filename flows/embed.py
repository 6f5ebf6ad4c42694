"""Embeddings stage: read shards (and ORF tables) → N×D float32 embedding shards.

Methods (selectable): `kmer` (canonical DNA k-mer spectra of reads), `protein`
(reduced-alphabet k-mer spectra of the ORFs' proteins), `lshvec` (LSH tokens + skip-gram
trained across Ray workers), `dnabert` (a BERT over k-mer tokens, pretrained on the run's
reads unless a checkpoint is given, inferred on a Ray Data actor pool). Every embedding shard
links back to its input shard and, for trained methods, to the model artifact.
Functions here submit tasks and record lineage; they do no heavy work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from helixflow.artifacts import Artifact, Skipped
from helixflow.flows.preprocess import reads_in
from helixflow.recorder import RunRecorder
from helixflow.resources import profile
from helixflow.store import Store
from helixflow.tasks.dnabert import (
    Precision,
    embed_dnabert_shard,
    import_dnabert_checkpoint,
    pretrain_dnabert,
)
from helixflow.tasks.dnabert_train import PretrainConfig
from helixflow.tasks.kmer_spectra import REDUCED_ALPHABETS
from helixflow.tasks.kmers import embed_kmer_spectra, embed_protein_kmers

Method = Literal["kmer", "protein", "lshvec", "dnabert"]
DEFAULT_METHODS: tuple[Method, ...] = ("kmer", "protein", "lshvec", "dnabert")


class EmbedParams(BaseModel):
    """Which embeddings to compute, with each method's main settings.

    Example:
        >>> EmbedParams(methods=["kmer", "lshvec"], kmer_k=4, lshvec_epochs=3)  # doctest: +SKIP
    """

    methods: list[Method] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    kmer_k: int = Field(5, ge=3, le=7)
    """k of the canonical DNA k-mer spectra (D = 512 for k = 5)."""
    protein_k: int = Field(3, ge=1, le=6)
    protein_alphabet: str = "murphy10"
    """A reduced amino-acid alphabet of `tasks.kmers.REDUCED_ALPHABETS`."""
    lshvec_k: int = Field(15, ge=5, le=31)
    lshvec_hash_size: int = Field(20, ge=4, le=30)
    lshvec_dim: int = Field(100, ge=2)
    lshvec_epochs: int = Field(2, ge=1)
    lshvec_levels: list[int] = Field(default_factory=lambda: [14, 8])
    """Coarser token resolutions (bits, each below lshvec_hash_size) averaged into every
    token's vector (`tasks.skipgram.level_rows`); [] = LSHVec's plain model."""
    lshvec_smooth_rounds: int = Field(8, ge=0)
    """Rounds of read-token smoothing after training (`tasks.read_vectors.smooth_model`): each
    token's vector becomes the mean of its reads' vectors; 0 = none."""
    lshvec_workers: int = Field(2, ge=1)
    """Ray actors training one model together (synchronised every round)."""
    lshvec_weighting: Literal["sif", "mean"] = "sif"
    lshvec_sif_a: float = Field(1e-6, gt=0)
    """SIF weight a / (a + p(token)) of read vectors, in smoothing and embedding."""
    dnabert_model: str | None = None
    """A BERT checkpoint directory in DNABERT's layout (e.g. a DNABERT-6 download); None:
    pretrain a small one on the run's reads (the embedded default)."""
    dnabert_k: int = Field(6, ge=3, le=6)
    dnabert_layers: int = Field(2, ge=1)
    dnabert_hidden: int = Field(64, ge=8)
    dnabert_steps: int = Field(200, ge=1)
    """Masked-LM steps of the default model (batch `dnabert_batch` windows each)."""
    dnabert_batch: int = Field(16, ge=1)
    dnabert_actors: int = Field(0, ge=0)
    """Ray Data actors for inference (model loaded once per actor); 0: one per CPU of the
    Ray cluster, at most `tasks.dnabert.MAX_AUTO_ACTORS` (the vectors do not depend on it)."""
    dnabert_precision: Precision = "float32"
    """Inference matmuls: bfloat16 autocast is about 1.5x faster a thread on a CPU with
    AVX512-BF16/AMX (vectors differ from float32 by ~1e-2; recorded in the lineage)."""

    @model_validator(mode="after")
    def _levels_below_hash_size(self) -> EmbedParams:
        """lshvec_levels are checked when the parameters are read, not at training."""
        from helixflow.tasks.skipgram import SkipGramConfig

        SkipGramConfig(levels=tuple(self.lshvec_levels), hash_size=self.lshvec_hash_size)
        return self

    def pretrain_config(self) -> PretrainConfig:
        heads = 2 if self.dnabert_hidden % 2 == 0 else 1
        return PretrainConfig(k=self.dnabert_k, layers=self.dnabert_layers,
                              hidden=self.dnabert_hidden, heads=heads,
                              intermediate=4 * self.dnabert_hidden, max_tokens=160,
                              steps=self.dnabert_steps, batch_size=self.dnabert_batch,
                              max_sequences=50_000, threads=1)

    def model_post_init(self, _context: object) -> None:
        if self.protein_alphabet not in REDUCED_ALPHABETS:
            raise ValueError(f"protein_alphabet must be one of {sorted(REDUCED_ALPHABETS)}, "
                             f"got {self.protein_alphabet!r}")


def run_kmer_embeddings(
    shards_by_sample: dict[str, list[Artifact]], k: int, store: Store, run_id: str,
    recorder: RunRecorder,
) -> dict[str, list[Artifact]]:
    """k-mer spectra of every read shard, one task per shard."""
    with profile("shard"):
        futures = {
            sample: [embed_kmer_spectra.with_options(
                assets=[store.asset_uri(run_id, "embed", f"{sample}.kmer{k}")]
            ).submit(s, k, store, run_id) for s in shards]
            for sample, shards in shards_by_sample.items()
        }
    out = {sample: [recorder.record(f, [f.result()])[0] for f in fs]
           for sample, fs in futures.items()}
    recorder.flush()
    return out


def run_protein_embeddings(
    orf_tables: dict[str, Artifact], k: int, alphabet: str, store: Store, run_id: str,
    recorder: RunRecorder,
) -> dict[str, Artifact]:
    """Reduced-alphabet protein k-mer spectra of each ORF table (reference or contigs)."""
    with profile("shard"):
        futures = {
            label: embed_protein_kmers.with_options(
                assets=[store.asset_uri(run_id, "embed", f"{label}.protein")]
            ).submit(orfs, k, alphabet, store, run_id)
            for label, orfs in orf_tables.items()
        }
    out = {label: recorder.record(f, [f.result()])[0] for label, f in futures.items()}
    recorder.flush()
    return out


def run_lshvec(
    shards_by_sample: dict[str, list[Artifact]], params: EmbedParams, store: Store,
    run_id: str, recorder: RunRecorder, pinned: tuple[Artifact, Artifact] | None = None,
) -> list[Artifact]:
    """LSH hash fitted on the reads → token shards → one skip-gram model trained across Ray
    workers → SIF-weighted read vectors, one embedding shard per read shard. `pinned`
    (LSH hash, model) from an earlier run skips fitting and training. Reads without an
    N-free k-mer to fit the hash on: skipped (recorded), no shards."""
    # torch comes with these: imported here, not with the flow module, which every Ray
    # worker imports (the flow run's context names the flow) before its first task
    from helixflow.tasks.lshvec import (
        embed_lshvec_shard,
        fit_lsh_hash,
        tokenize_shard,
        train_lshvec,
    )
    from helixflow.tasks.skipgram import SkipGramConfig

    shards = [s for parts in shards_by_sample.values() for s in parts]
    if pinned is not None:
        (lsh,) = recorder.record_outputs([pinned[0]], None, cached=True)
        (model,) = recorder.record_outputs([pinned[1]], None, cached=True)
    else:
        with profile("stream"):
            lsh_future = fit_lsh_hash.submit([s for s in shards if s.rows][:2],
                                             params.lshvec_k, params.lshvec_hash_size, 0,
                                             store, run_id)
        fitted = lsh_future.result()
        if isinstance(fitted, Skipped):
            recorder.skip(fitted.stage, fitted.sample, fitted.reason)
            return []
        (lsh,) = recorder.record(lsh_future, [fitted])
    with profile("shard"):
        token_futures = [tokenize_shard.submit(s, lsh, store, run_id) for s in shards]
    tokens = [recorder.record(f, [f.result()])[0] for f in token_futures]
    if pinned is None:
        config = SkipGramConfig(dim=params.lshvec_dim, epochs=params.lshvec_epochs,
                                levels=tuple(params.lshvec_levels),
                                hash_size=params.lshvec_hash_size,
                                smooth_rounds=params.lshvec_smooth_rounds,
                                sif_a=params.lshvec_sif_a)
        with profile("light", num_cpus=0):  # coordinates; the training actors hold the CPUs
            model_future = train_lshvec.with_options(
                assets=[store.asset_uri(run_id, "models", "lshvec")]
            ).submit(tokens, lsh, config, params.lshvec_workers, store, run_id)
        (model,) = recorder.record(model_future, [model_future.result()])
    with profile("shard"):
        futures = [embed_lshvec_shard.with_options(
            assets=[store.asset_uri(run_id, "embed", "lshvec")]
        ).submit(t, model, params.lshvec_weighting, store, run_id) for t in tokens]
    out = [recorder.record(f, [f.result()])[0] for f in futures]
    recorder.flush()
    return out


def run_dnabert(
    shards_by_sample: dict[str, list[Artifact]], params: EmbedParams, store: Store,
    run_id: str, recorder: RunRecorder,
) -> tuple[Artifact | None, dict[str, list[Artifact]]]:
    """One DNABERT model per run (the user's checkpoint, or pretrained on the run's reads),
    then mean-pooled and [CLS] embeddings of every read shard: (model, method → shards).
    No read long enough to pretrain on: skipped (recorded), (None, {})."""
    shards = [s for parts in shards_by_sample.values() for s in parts]
    with profile("shard"):
        if params.dnabert_model:
            model_future = import_dnabert_checkpoint.submit(params.dnabert_model, store, run_id)
        else:
            model_future = pretrain_dnabert.with_options(
                assets=[store.asset_uri(run_id, "models", "dnabert")]
            ).submit("run", shards, params.pretrain_config(), store, run_id)
    trained = model_future.result()
    if isinstance(trained, Skipped):
        recorder.skip(trained.stage, trained.sample, trained.reason)
        return None, {}
    (model,) = recorder.record(model_future, [trained])
    # The task only coordinates: Ray Data's actors hold the CPUs.
    with profile("light", num_cpus=0):
        futures = [embed_dnabert_shard.with_options(
            assets=[store.asset_uri(run_id, "embed", "dnabert")]
        ).submit(s, model, params.dnabert_actors, 64, store, run_id,
                 precision=params.dnabert_precision) for s in shards]
    out: dict[str, list[Artifact]] = {"dnabert-mean": [], "dnabert-cls": []}
    for future in futures:
        for art in recorder.record(future, future.result()):
            out[art.metadata["method"]].append(art)
    recorder.flush()
    return model, out


def run_embeddings(
    shards_by_sample: dict[str, list[Artifact]],
    orf_tables: dict[str, Artifact],
    params: EmbedParams,
    store: Store,
    run_id: str,
    recorder: RunRecorder,
) -> dict[str, list[Artifact]]:
    """Every selected method over the run's final read shards (and ORF tables): method →
    embedding shards. A method with nothing to embed is skipped (recorded in `recorder`)."""
    out: dict[str, list[Artifact]] = {}
    read_methods = [m for m in params.methods if m != "protein"]
    if read_methods and not sum(map(reads_in, shards_by_sample.values())):
        for method in read_methods:
            recorder.skip("embedding", method, "no reads left after QC")
        read_methods = []
    if "protein" in params.methods:
        empty = [label for label, orfs in orf_tables.items() if orfs.rows == 0]
        for label in empty:
            recorder.skip("embedding", f"protein of {label}", "no ORFs in it")
        orf_tables = {k: v for k, v in orf_tables.items() if k not in empty}
        if not orf_tables and not empty:
            recorder.skip("embedding", "protein", "no ORF table (give --reference or "
                                                  "--assemble)")
    if "kmer" in read_methods:
        by_sample = run_kmer_embeddings(shards_by_sample, params.kmer_k, store, run_id,
                                        recorder)
        out[f"kmer{params.kmer_k}"] = [a for arts in by_sample.values() for a in arts]
    if "protein" in params.methods and orf_tables:
        tables = run_protein_embeddings(orf_tables, params.protein_k, params.protein_alphabet,
                                        store, run_id, recorder)
        out[f"protein-{params.protein_alphabet}-k{params.protein_k}"] = list(tables.values())
    if "lshvec" in read_methods and (lsh := run_lshvec(shards_by_sample, params, store, run_id,
                                                        recorder)):
        out["lshvec"] = lsh
    if "dnabert" in read_methods:
        _model, by_method = run_dnabert(shards_by_sample, params, store, run_id, recorder)
        out.update(by_method)
    return out
