"""Tests for the k-mer spectrum kernels (tasks/kmers.py).

A naive pure-Python counter (one dict per sequence) is the reference for the vectorised
kernels on random sequences, on a real genome chunk (lambda) and on real ORF proteins;
hand-made sequences pin the conventions (canonical columns, N handling, alphabets).
"""

from __future__ import annotations

import itertools
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helixflow.errors import InputError
from helixflow.tasks import kmers
from helixflow.tasks.kmers import (
    REDUCED_ALPHABETS,
    STANDARD_AMINO_ACIDS,
    canonical_kmer_count,
    canonical_kmer_spectra,
    kmer_names,
    protein_kmer_names,
    protein_kmer_spectra,
)
from helixflow.tasks.orfs import OrfParams, find_orfs, iter_fasta

COMPLEMENT = str.maketrans("ACGTUNRYacgtun", "TGCAANYRtgcaan")


def revcomp(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


def naive_dna(seqs: list[str], k: int, normalise: bool = True) -> np.ndarray:
    """Reference: count canonical k-mers with a dict, one window at a time."""
    names = kmer_names(k)
    column = {name: i for i, name in enumerate(names)}
    out = np.zeros((len(seqs), len(names)), np.float64)
    for r, seq in enumerate(seqs):
        seq = seq.upper().replace("U", "T")
        counts = Counter(
            min(w, revcomp(w))
            for w in (seq[i : i + k] for i in range(len(seq) - k + 1))
            if set(w) <= set("ACGT")
        )
        for word, n in counts.items():
            out[r, column[word]] = n
        if normalise and out[r].sum():
            out[r] /= out[r].sum()
    return out


def naive_protein(seqs: list[str], k: int, alphabet: str, normalise: bool = True) -> np.ndarray:
    groups = REDUCED_ALPHABETS[alphabet]
    rep = {aa: g[0] for g in groups for aa in g}
    names = protein_kmer_names(k, alphabet)
    column = {name: i for i, name in enumerate(names)}
    out = np.zeros((len(seqs), len(names)), np.float64)
    for r, seq in enumerate(seqs):
        seq = seq.upper()
        for i in range(len(seq) - k + 1):
            word = seq[i : i + k]
            if all(c in rep for c in word):
                out[r, column["".join(rep[c] for c in word)]] += 1
        if normalise and out[r].sum():
            out[r] /= out[r].sum()
    return out


def random_dna(rng: random.Random, n: int, max_len: int = 60) -> list[str]:
    """Mixed-case sequences with N, IUPAC codes, U and lengths from 0 up."""
    letters = "ACGT" * 6 + "acgt" * 2 + "NRYu-"
    return ["".join(rng.choices(letters, k=rng.randint(0, max_len))) for _ in range(n)]


@pytest.fixture(scope="module")
def lambda_chunk(shared_data: Path) -> str:
    """The first 20 kb of phage lambda."""
    return next(iter_fasta(shared_data / "genomes" / "lambda.fa"))[1][:20_000]


# --------------------------------------------------------------------------------------
# DNA: layout


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7])
def test_number_of_columns_matches_formula_and_enumeration(k: int) -> None:
    formula = 4**k // 2 if k % 2 else (4**k + 4 ** (k // 2)) // 2
    brute = {min(w, revcomp(w)) for w in map("".join, itertools.product("ACGT", repeat=k))}
    assert canonical_kmer_count(k) == formula == len(brute)
    assert kmer_names(k) == sorted(brute)
    assert canonical_kmer_spectra(["A" * 10], k).shape == (1, formula)


def test_column_counts_by_k() -> None:
    assert [canonical_kmer_count(k) for k in range(3, 8)] == [32, 136, 512, 2080, 8192]


@pytest.mark.parametrize("k", [2, 8, 0, -1, True, 3.0, "5"])
def test_k_outside_3_to_7_is_rejected(k: object) -> None:
    with pytest.raises(ValueError, match=r"3\.\.7"):
        canonical_kmer_spectra(["ACGTACGT"], k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"3\.\.7"):
        kmer_names(k)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# DNA: hand-computed cases


def spectrum_dict(matrix: np.ndarray, k: int) -> list[dict[str, float]]:
    names = kmer_names(k)
    return [{names[c]: float(row[c]) for c in np.flatnonzero(row)} for row in matrix]


def test_acgt_k3_is_one_canonical_kmer_twice() -> None:
    # ACG and CGT are reverse complements of each other: one column, counted twice.
    counts = canonical_kmer_spectra(["ACGT"], 3, normalise=False)
    assert spectrum_dict(counts, 3) == [{"ACG": 2.0}]
    assert spectrum_dict(canonical_kmer_spectra(["ACGT"], 3), 3) == [{"ACG": 1.0}]


def test_hand_cases() -> None:
    seqs = ["AAAA", "TTT", "GATTACA", "acgt", "ACGU"]
    got = spectrum_dict(canonical_kmer_spectra(seqs, 3, normalise=False), 3)
    assert got == [
        {"AAA": 2.0},
        {"AAA": 1.0},
        # GAT, ATT->AAT, TTA->TAA, TAC->GTA, ACA
        {"ATC": 1.0, "AAT": 1.0, "TAA": 1.0, "GTA": 1.0, "ACA": 1.0},
        {"ACG": 2.0},
        {"ACG": 2.0},  # U is T
    ]


def test_kmers_with_n_or_other_letters_are_skipped() -> None:
    seqs = ["ACGNACG", "NNNNN", "ACRTACG", "AC-GT", "ACG.TTT"]
    got = spectrum_dict(canonical_kmer_spectra(seqs, 3, normalise=False), 3)
    assert got == [{"ACG": 2.0}, {}, {"ACG": 1.0, "GTA": 1.0}, {}, {"ACG": 1.0, "AAA": 1.0}]


def test_short_empty_and_all_n_rows_stay_zero() -> None:
    spectra = canonical_kmer_spectra(["", "AC", "NNNNNNNN", "ACGTA"], 5)
    assert spectra.dtype == np.float32
    assert not spectra[:3].any()
    assert spectra[3].sum() == pytest.approx(1.0)


def test_kmers_never_span_two_sequences() -> None:
    # "AC" + "GT" concatenated would hold ACG and CGT.
    assert not canonical_kmer_spectra(["AC", "GT", "A", "CG"], 3).any()


def test_no_sequences_gives_an_empty_matrix() -> None:
    assert canonical_kmer_spectra([], 4).shape == (0, 136)
    assert canonical_kmer_spectra(pa.array([], pa.string()), 4).shape == (0, 136)


# --------------------------------------------------------------------------------------
# DNA: against the reference


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7])
def test_random_sequences_match_naive_counter(k: int) -> None:
    seqs = random_dna(random.Random(k), 300)
    np.testing.assert_array_equal(
        canonical_kmer_spectra(seqs, k, normalise=False), naive_dna(seqs, k, normalise=False)
    )
    np.testing.assert_allclose(canonical_kmer_spectra(seqs, k), naive_dna(seqs, k), rtol=1e-6)


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7])
def test_lambda_chunk_matches_naive_counter(lambda_chunk: str, k: int) -> None:
    pieces = [lambda_chunk] + [lambda_chunk[i : i + 1000] for i in range(0, 20_000, 1000)]
    got = canonical_kmer_spectra(pieces, k, normalise=False)
    np.testing.assert_array_equal(got, naive_dna(pieces, k, normalise=False))
    assert got[0].sum() == len(lambda_chunk) - k + 1  # the genome chunk has no N
    np.testing.assert_allclose(canonical_kmer_spectra(pieces, k).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("k", [3, 4, 5, 6, 7])
def test_spectrum_is_reverse_complement_invariant(lambda_chunk: str, k: int) -> None:
    seqs = [*random_dna(random.Random(100 + k), 50), lambda_chunk]
    np.testing.assert_array_equal(
        canonical_kmer_spectra(seqs, k), canonical_kmer_spectra([revcomp(s) for s in seqs], k)
    )


def test_rows_are_normalised_to_one() -> None:
    spectra = canonical_kmer_spectra(random_dna(random.Random(7), 200, 300), 4)
    sums = spectra.sum(axis=1)
    assert np.all((np.abs(sums - 1) < 1e-5) | (sums == 0))


def test_small_blocks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    seqs = random_dna(random.Random(3), 200, 200)
    expected = canonical_kmer_spectra(seqs, 5)
    monkeypatch.setattr(kmers, "_BLOCK_CELLS", 1500)  # 2 rows per block at k=5
    monkeypatch.setattr(kmers, "_BLOCK_BYTES", 100)  # and at most ~100 bases
    np.testing.assert_array_equal(canonical_kmer_spectra(seqs, 5), expected)


# --------------------------------------------------------------------------------------
# DNA: Arrow input


def test_arrow_inputs_match_list_input() -> None:
    seqs = random_dna(random.Random(11), 100)
    expected = canonical_kmer_spectra(seqs, 4)
    chunked = pa.chunked_array([pa.array(seqs[:30]), pa.array(seqs[30:])])
    sliced = pa.array(["GGGGGG", *seqs, "CCCCCC"]).slice(1, len(seqs))
    for arrow in (pa.array(seqs), pa.array(seqs, pa.large_string()), chunked, sliced):
        np.testing.assert_array_equal(canonical_kmer_spectra(arrow, 4), expected)


def test_reads_column_from_genome_slices(lambda_chunk: str) -> None:
    starts = range(0, 19_850, 50)
    reads = pa.array([lambda_chunk[s : s + 150] for s in starts])
    got = canonical_kmer_spectra(reads, 5, normalise=False)
    assert got.shape == (len(starts), 512)
    np.testing.assert_array_equal(got.sum(axis=1), 146)


# --------------------------------------------------------------------------------------
# DNA: bad input


def test_bad_byte_names_the_sequence_id() -> None:
    with pytest.raises(InputError, match=r"reads\.parquet: sequence r2: invalid character '3'"):
        canonical_kmer_spectra(
            ["ACGT", "AC3GT"], 3, ids=["r1", "r2"], source="reads.parquet"
        )
    with pytest.raises(InputError, match=r"sequence #1: invalid character ' ' at position 3"):
        canonical_kmer_spectra(["ACGT", "AC GT"], 3)
    with pytest.raises(InputError, match="sequence r1: invalid character"):
        canonical_kmer_spectra(pa.array(["ACGTé"]), 3, ids=pa.array(["r1"]))


def test_null_sequence_is_an_input_error() -> None:
    with pytest.raises(InputError, match="sequence b: sequence is missing"):
        canonical_kmer_spectra(pa.array(["ACGT", None]), 3, ids=["a", "b"])


def test_wrong_input_types() -> None:
    with pytest.raises(TypeError, match="not one string"):
        canonical_kmer_spectra("ACGT", 3)
    with pytest.raises(TypeError, match="strings"):
        canonical_kmer_spectra(pa.array([1, 2]), 3)
    with pytest.raises(ValueError, match="2 ids for 1 sequences"):
        canonical_kmer_spectra(["ACGT"], 3, ids=["a", "b"])


# --------------------------------------------------------------------------------------
# Proteins


@pytest.mark.parametrize("name", sorted(REDUCED_ALPHABETS))
def test_alphabets_partition_the_twenty_amino_acids(name: str) -> None:
    letters = "".join(REDUCED_ALPHABETS[name])
    assert sorted(letters) == sorted(STANDARD_AMINO_ACIDS)
    size = int("".join(c for c in name if c.isdigit()))
    assert len(REDUCED_ALPHABETS[name]) == size  # the name says how many groups


def test_published_groups() -> None:
    assert REDUCED_ALPHABETS["murphy10"] == (
        "LVIM", "C", "A", "G", "ST", "P", "FYW", "EDNQ", "KR", "H",
    )
    assert REDUCED_ALPHABETS["murphy4"] == ("LVIMC", "AGSTP", "FYW", "EDNQKRH")
    assert {frozenset(g) for g in REDUCED_ALPHABETS["dayhoff6"]} == {
        frozenset(g) for g in ("AGPST", "C", "DENQ", "FWY", "HKR", "ILMV")
    }


def test_protein_names() -> None:
    names = protein_kmer_names(2, "murphy4")
    assert len(names) == 16
    assert names[:5] == ["LL", "LA", "LF", "LE", "AL"]
    assert len(protein_kmer_names(3)) == 1000
    assert len(set(protein_kmer_names(3, "dayhoff6"))) == 216


def test_protein_hand_case() -> None:
    # murphy4: M,V->L  K->E; '*' breaks: MK, KV and LL only.
    counts = protein_kmer_spectra(["MKV*LL", "mkv"], 2, "murphy4", normalise=False)
    names = protein_kmer_names(2, "murphy4")
    assert {names[c]: counts[0, c] for c in np.flatnonzero(counts[0])} == {
        "LE": 1, "EL": 1, "LL": 1,
    }
    np.testing.assert_array_equal(counts[1], counts[0] - np.eye(16)[names.index("LL")])


def test_unknown_residues_break_kmers() -> None:
    counts = protein_kmer_spectra(["AXA", "ABA", "AUA", "A-A", "AAA"], 2, normalise=False)
    assert not counts[:4].any()
    assert counts[4].sum() == 2


@pytest.mark.parametrize(("alphabet", "k"), [("murphy10", 3), ("murphy4", 5), ("dayhoff6", 2),
                                             ("murphy15", 2), ("murphy8", 4), ("murphy10", 1)])
def test_random_proteins_match_naive_counter(alphabet: str, k: int) -> None:
    rng = random.Random(k)
    letters = STANDARD_AMINO_ACIDS * 3 + STANDARD_AMINO_ACIDS.lower() + "X*B"
    seqs = ["".join(rng.choices(letters, k=rng.randint(0, 80))) for _ in range(200)]
    np.testing.assert_array_equal(
        protein_kmer_spectra(seqs, k, alphabet, normalise=False),
        naive_protein(seqs, k, alphabet, normalise=False),
    )
    np.testing.assert_allclose(
        protein_kmer_spectra(seqs, k, alphabet), naive_protein(seqs, k, alphabet), rtol=1e-6
    )


def test_lambda_orf_proteins_match_naive_counter(lambda_chunk: str) -> None:
    orfs = find_orfs([("lambda", lambda_chunk)], OrfParams(min_length_nt=150))
    proteins = orfs.column("protein")
    assert orfs.num_rows > 10
    got = protein_kmer_spectra(proteins, 3)
    np.testing.assert_allclose(got, naive_protein(proteins.to_pylist(), 3, "murphy10"), rtol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_protein_argument_errors() -> None:
    with pytest.raises(ValueError, match="unknown reduced alphabet 'blosum'"):
        protein_kmer_spectra(["MK"], 2, "blosum")
    with pytest.raises(ValueError, match="columns"):
        protein_kmer_spectra(["MK"], 7, "murphy10")
    with pytest.raises(ValueError, match="positive"):
        protein_kmer_names(0)
    with pytest.raises(InputError, match="sequence p1: invalid character '1'"):
        protein_kmer_spectra(["MK1"], 2, ids=["p1"])


def test_embed_kmer_spectra_task_writes_a_readable_shard(tmp_path: Path) -> None:
    import duckdb
    import pyarrow.parquet as pq

    from helixflow.store import Store
    from helixflow.tasks.embeddings import read_embedding_matrix
    from helixflow.tasks.kmers import embed_kmer_spectra
    from helixflow.tasks.reads import READS_SCHEMA, write_read_shard

    seqs = ["ACGTACGTAC", "TTTTTGGGGG", "ACGTACGTAC", "NNNNNNNNNN"]
    table = pa.table({
        "read_id": ["a", "a", "b", "c"], "mate": pa.array([1, 2, 0, 0], pa.uint8()),
        "fragment": pa.array([0, 0, 1, 2], pa.int64()), "record": pa.array([1, 1, 2, 3]),
        "sequence": seqs, "quality": ["I" * 10] * 4, "is_empty": [False] * 4,
    }, schema=READS_SCHEMA)
    write_read_shard(table, tmp_path / "part-0.parquet")
    store = Store(str(tmp_path / "store"))
    shard = store.publish(tmp_path / "part-0.parquet", run_id="r", stage="correct",
                          media_type="application/vnd.apache.parquet", rows=4,
                          producer="test")
    art = embed_kmer_spectra.fn(shard, 3, store, "r")
    assert art.rows == 4 and art.upstream[0].sha256 == shard.sha256
    ids, matrix = read_embedding_matrix(store._path(art.uri))
    assert ids.to_pylist() == ["a/1", "a/2", "b", "c"]
    np.testing.assert_array_equal(matrix, canonical_kmer_spectra(seqs, 3))
    assert matrix[3].sum() == 0 and abs(matrix[0].sum() - 1) < 1e-6
    rows = duckdb.sql(f"select sequence_id, row, method, len(vector) from "
                      f"read_parquet('{store._path(art.uri)}') order by row").fetchall()
    assert rows[1] == ("a/2", 1, "kmer3", 32)
    assert pq.read_schema(store._path(art.uri)).metadata[b"embedding.method"] == b"kmer3"
    # The same shard embedded in another store and run gives the same bytes: the shard is
    # named by its label (name@sha256), not by a store- or run-specific URI.
    other = Store(str(tmp_path / "elsewhere" / "store"))
    (tmp_path / "copy").mkdir()
    copy = Path(shutil.copy(store._path(shard.uri), tmp_path / "copy" / "part-0.parquet"))
    moved = other.publish(copy, run_id="r2", stage="correct",
                          media_type="application/vnd.apache.parquet", rows=4, producer="test")
    again = embed_kmer_spectra.fn(moved, 3, other, "r2")
    assert again.sha256 == art.sha256 and again.uri != art.uri
    source = pq.read_table(store._path(art.uri), columns=["source_shard"]).column(0)
    assert set(source.to_pylist()) == {f"part-0.parquet@sha256:{shard.sha256}"}


def test_embed_protein_kmers_task_one_vector_per_orf(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from helixflow.store import Store
    from helixflow.tasks.embeddings import read_embedding_matrix
    from helixflow.tasks.kmers import embed_protein_kmers
    from helixflow.tasks.orfs import OrfParams, find_orfs

    seq = "ATG" + "GCTAAACTG" * 20 + "TAA" + "CCC" + "ATG" + "TTTGGG" * 25 + "TGA"
    orfs = find_orfs([("chr", seq)], OrfParams(min_length_nt=60))
    pq.write_table(orfs, tmp_path / "ref.orfs.parquet")
    store = Store(str(tmp_path / "store"))
    art = store.publish(tmp_path / "ref.orfs.parquet", run_id="r", stage="annotate",
                        media_type="application/vnd.apache.parquet", rows=orfs.num_rows,
                        producer="test")
    out = embed_protein_kmers.fn(art, 2, "murphy10", store, "r")
    ids, matrix = read_embedding_matrix(store._path(out.uri))
    assert matrix.shape == (orfs.num_rows, 100) and orfs.num_rows >= 2
    first = orfs.slice(0, 1).to_pylist()[0]
    assert ids[0].as_py() == f"chr:{first['start']}-{first['end']}({first['strand']})"
    np.testing.assert_allclose(
        matrix, protein_kmer_spectra(orfs.column("protein"), 2, "murphy10"), rtol=1e-6)
