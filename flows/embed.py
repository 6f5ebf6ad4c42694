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

from pydantic import BaseModel, Field

from helixflow.artifacts import Artifact
from helixflow.recorder import RunRecorder
from helixflow.resources import profile
from helixflow.store import Store
from tasks.kmers import REDUCED_ALPHABETS, embed_kmer_spectra, embed_protein_kmers

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
                assets=[store.run_uri(run_id, "embed", f"{sample}.kmer{k}")]
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
                assets=[store.run_uri(run_id, "embed", f"{label}.protein")]
            ).submit(orfs, k, alphabet, store, run_id)
            for label, orfs in orf_tables.items()
        }
    out = {label: recorder.record(f, [f.result()])[0] for label, f in futures.items()}
    recorder.flush()
    return out


def run_embeddings(
    shards_by_sample: dict[str, list[Artifact]],
    orf_tables: dict[str, Artifact],
    params: EmbedParams,
    store: Store,
    run_id: str,
    recorder: RunRecorder,
) -> dict[str, list[Artifact]]:
    """Every selected method over the run's final read shards (and ORF tables): method →
    embedding shards."""
    out: dict[str, list[Artifact]] = {}
    if "kmer" in params.methods:
        by_sample = run_kmer_embeddings(shards_by_sample, params.kmer_k, store, run_id,
                                        recorder)
        out[f"kmer{params.kmer_k}"] = [a for arts in by_sample.values() for a in arts]
    if "protein" in params.methods and orf_tables:
        tables = run_protein_embeddings(orf_tables, params.protein_k, params.protein_alphabet,
                                        store, run_id, recorder)
        out[f"protein-{params.protein_alphabet}-k{params.protein_k}"] = list(tables.values())
    return out
