"""The k-mer embedding tasks: one embedding shard of canonical DNA k-mer spectra per read
shard, of reduced-alphabet protein k-mer spectra per ORF table (the kernels are
`tasks.kmer_spectra`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect.assets import materialize

from helixflow.artifacts import Artifact
from helixflow.caching import stage_options
from helixflow.store import Store
from helixflow.tables import PARQUET, parquet_file, publish_file
from helixflow.tasks.embeddings import EmbeddingWriter, iter_read_sequences
from helixflow.tasks.kmer_spectra import (
    alphabet_groups,
    canonical_kmer_count,
    canonical_kmer_spectra,
    protein_kmer_spectra,
)

KMERS_VERSION = "2"  # 2: source_shard is the shard's label, not its URI


@materialize("helixflow://embed/kmer", name="kmer-spectra",
             task_run_name="kmer{k}-{shard.name}", **stage_options(KMERS_VERSION))
def embed_kmer_spectra(shard: Artifact, k: int, store: Store, run_id: str) -> Artifact:
    """Canonical k-mer spectra of every read of a shard → an embedding shard (`kmer<k>`).

    Args:
        shard: a Parquet read shard (READS_SCHEMA).
        k: the k-mer length, 3..7.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        The embedding shard artifact, `<shard>.kmer<k>.parquet`, one row per read.

    Raises:
        InputError: a read with a byte that is not a letter, '-', '.' or '*'.
    """
    method = f"kmer{k}"
    name = shard.name.replace(".parquet", f".{method}.parquet")
    with store.scratch() as scratch, parquet_file(store, shard) as source:
        path = scratch / name
        with EmbeddingWriter(path, canonical_kmer_count(k), method=method,
                             source_shard=shard.label) as writer:
            for ids, sequences, rows in iter_read_sequences(source):
                vectors = canonical_kmer_spectra(sequences, k, ids=ids, source=shard.name)
                writer.write(ids, vectors, rows)
        return publish_file(store, path, run_id=run_id, stage="embed", media_type=PARQUET,
                            producer="kmer-spectra", rows=writer.rows, params={"k": k},
                            upstream=[shard.ref()],
                            metadata={"method": method, "dim": canonical_kmer_count(k)})


@materialize("helixflow://embed/protein", name="protein-kmers",
             task_run_name="protein-{alphabet}-k{k}-{orfs.name}", **stage_options(KMERS_VERSION))
def embed_protein_kmers(orfs: Artifact, k: int, alphabet: str, store: Store,
                        run_id: str) -> Artifact:
    """Reduced-alphabet k-mer spectra of the proteins of an ORF table (one vector per ORF,
    id `seq:start-end(strand)`) → an embedding shard (`protein-<alphabet>-k<k>`).

    Args:
        orfs: an ORF table (ORFS_SCHEMA, as `find_orfs` makes it).
        k: the k-mer length.
        alphabet: a key of REDUCED_ALPHABETS.
        store: the artifact store to read from and publish to.
        run_id: the run the published artifact belongs to.

    Returns:
        The embedding shard artifact, `<orfs>.protein-<alphabet>-k<k>.parquet`.

    Raises:
        ValueError: unknown alphabet or k too large.
    """
    method = f"protein-{alphabet}-k{k}"
    dim = len(alphabet_groups(alphabet)) ** k
    name = orfs.name.replace(".parquet", f".{method}.parquet")
    with store.scratch() as scratch, parquet_file(store, orfs) as source:
        path = scratch / name
        with EmbeddingWriter(path, dim, method=method, source_shard=orfs.label) as writer:
            start = 0
            for batch in source.iter_batches(batch_size=32_768, columns=[
                    "seq_id", "start", "end", "strand", "protein"]):
                ids = pc.binary_join_element_wise(
                    batch.column("seq_id"), ":", pc.cast(batch.column("start"), pa.string()),
                    "-", pc.cast(batch.column("end"), pa.string()), "(",
                    batch.column("strand"), ")", "")
                vectors = protein_kmer_spectra(batch.column("protein"), k, alphabet, ids=ids,
                                               source=orfs.name)
                writer.write(ids, vectors, np.arange(start, start + batch.num_rows))
                start += batch.num_rows
        return publish_file(store, path, run_id=run_id, stage="embed", media_type=PARQUET,
                            producer="protein-kmers", rows=writer.rows,
                            params={"k": k, "alphabet": alphabet}, upstream=[orfs.ref()],
                            metadata={"method": method, "dim": dim})
