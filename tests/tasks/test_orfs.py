"""Tests for the six-frame ORF kernel (tasks/orfs.py).

Hand-made sequences pin coordinates, frames, tables and edge cases; a codon-by-codon
reference implementation checks the vectorised scan on random sequences; the demo's
genes.tsv and prodigal's calls on real genomes check it against known genes.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.tasks.orfs import (
    BACTERIAL_STARTS,
    GENETIC_CODES,
    ORFS_SCHEMA,
    OrfParams,
    find_orfs,
    iter_fasta,
    longest_orf_per_sequence,
)
from helixflow.tasks.reads import READS_SCHEMA
from tests.conftest import require_tool

COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def revcomp(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


def rows(table: pa.Table) -> list[dict[str, object]]:
    return table.to_pylist()


# --------------------------------------------------------------------------------------
# A slow, obvious reference: walk every codon of every frame.


def translate(codon: str, table: int) -> str:
    if any(b not in "ACGT" for b in codon):
        return "X"
    k = sum("TCAG".index(b) * w for b, w in zip(codon, (16, 4, 1), strict=True))
    return GENETIC_CODES[table][k]


def reference_orfs(seq_id: str, seq: str, params: OrfParams) -> set[tuple[object, ...]]:
    """(seq_id, start, end, strand, protein) of complete ORFs, codon by codon."""
    out = set()
    n = len(seq)
    for strand, s in (("+", seq), ("-", revcomp(seq))):
        for frame in range(3):
            begin: int | None = None if params.start_codons else frame
            for i in range(frame, n - 2, 3):
                codon = s[i : i + 3]
                aa = translate(codon, params.table)
                if begin is None and codon in params.start_codons:
                    begin = i
                if aa == "*":
                    if begin is not None:
                        length = i + 3 - begin
                        prot = "".join(
                            translate(s[j : j + 3], params.table) for j in range(begin, i, 3)
                        )
                        if params.start_codons and prot:
                            prot = "M" + prot[1:]
                        upstream_stop = any(
                            translate(s[j : j + 3], params.table) == "*"
                            for j in range(frame, begin, 3)
                        )
                        complete = bool(params.start_codons) or upstream_stop
                        if (
                            complete
                            and length >= params.min_length_nt
                            and len(prot) >= params.min_length_aa
                        ):
                            start = begin if strand == "+" else n - i - 3
                            out.add((seq_id, start, start + length, strand, prot))
                    begin = None if params.start_codons else i + 3
    return out


def as_set(table: pa.Table) -> set[tuple[object, ...]]:
    return {(r["seq_id"], r["start"], r["end"], r["strand"], r["protein"]) for r in rows(table)}


# --------------------------------------------------------------------------------------
# Hand-made sequences


def test_forward_orf_coordinates_and_protein() -> None:
    table = find_orfs([("s1", "CCATGAAATTTGGGTAACC")], OrfParams(min_length_nt=9))
    assert table.schema == ORFS_SCHEMA
    (row,) = [r for r in rows(table) if r["strand"] == "+"]
    assert row == {
        "seq_id": "s1", "start": 2, "end": 17, "strand": "+", "frame": 2,
        "start_codon": "ATG", "length_nt": 15, "protein": "MKFG", "partial": False,
    }


def test_reverse_orf_coordinates_are_on_the_forward_strand() -> None:
    orf = "ATGAAATTTGGGTAA"
    seq = "GG" + revcomp(orf) + "CCCC"  # length 21
    (row,) = [r for r in rows(find_orfs([("s", seq)], OrfParams(min_length_nt=9)))
              if r["strand"] == "-"]
    assert (row["start"], row["end"]) == (2, 17)
    assert revcomp(seq[row["start"] : row["end"]]) == orf
    assert row["frame"] == (len(seq) - row["end"]) % 3 == 1
    assert row["protein"] == "MKFG"


def test_longest_orf_per_stop_starts_at_first_start_codon() -> None:
    seq = "ATGAAAATGCCCTAG"  # two in-frame ATGs share one stop
    (row,) = rows(find_orfs([("s", seq)], OrfParams(min_length_nt=3)))
    assert (row["start"], row["end"], row["protein"]) == (0, 15, "MKMP")


def test_alternative_start_codons_translate_to_methionine() -> None:
    seq = "GTGAAATTTTAA"
    assert find_orfs([("s", seq)], OrfParams(min_length_nt=3)).num_rows == 0
    params = OrfParams(min_length_nt=3, start_codons=BACTERIAL_STARTS)
    (row,) = rows(find_orfs([("s", seq)], params))
    assert (row["start_codon"], row["protein"]) == ("GTG", "MKF")


def test_translation_tables_differ_on_tga() -> None:
    seq = "ATGAAATGACCCTAA"  # TGA is a stop in table 11, tryptophan in table 4
    in_11 = rows(find_orfs([("s", seq)], OrfParams(min_length_nt=3, table=11)))
    in_4 = rows(find_orfs([("s", seq)], OrfParams(min_length_nt=3, table=4)))
    in_1 = rows(find_orfs([("s", seq)], OrfParams(min_length_nt=3, table=1)))
    assert [(r["end"], r["protein"]) for r in in_11 if r["strand"] == "+"] == [(9, "MK")]
    assert [(r["end"], r["protein"]) for r in in_4 if r["strand"] == "+"] == [(15, "MKWP")]
    assert in_1 == in_11


def test_min_length_in_nt_and_aa() -> None:
    seq = "ATGAAATTTGGGTAA"  # 15 nt, 4 residues
    assert find_orfs([("s", seq)], OrfParams(min_length_nt=15)).num_rows == 1
    assert find_orfs([("s", seq)], OrfParams(min_length_nt=18)).num_rows == 0
    assert find_orfs([("s", seq)], OrfParams(min_length_nt=3, min_length_aa=4)).num_rows == 1
    assert find_orfs([("s", seq)], OrfParams(min_length_nt=3, min_length_aa=5)).num_rows == 0


def test_ambiguous_bases_translate_to_x_and_do_not_stop() -> None:
    seq = "ATGAANTTTTAA"
    (row,) = rows(find_orfs([("s", seq)], OrfParams(min_length_nt=3)))
    assert row["protein"] == "MXF"


def test_circular_orf_spans_the_origin() -> None:
    orf = "ATGAAACCCGGGTTTTAA"  # 18 nt, split across the origin
    seq = orf[7:] + "CTCTCTCTCT" + orf[:7]  # contains no other ORF of >= 18 nt
    linear = [r for r in rows(find_orfs([("c", seq)], OrfParams(min_length_nt=18)))
              if r["protein"].startswith("MKPG")]
    assert linear == []
    (row,) = [r for r in rows(find_orfs([("c", seq)], OrfParams(min_length_nt=18, circular=True)))
              if r["strand"] == "+"]
    n = len(seq)
    assert (row["start"], row["end"], row["protein"]) == (n - 7, n - 7 + 18, "MKPGF")
    assert (seq + seq)[row["start"] : row["end"]] == orf
    # The same ORF on the reverse strand of the reverse-complemented circle.
    (rrow,) = [r for r in rows(find_orfs([("c", revcomp(seq))],
                                         OrfParams(min_length_nt=18, circular=True)))
               if r["strand"] == "-"]
    assert rrow["protein"] == "MKPGF"
    rc = revcomp(seq)
    assert revcomp((rc + rc)[rrow["start"] : rrow["end"]]) == orf
    assert 0 <= rrow["start"] < n


def test_partial_and_stop_to_stop_orfs_for_reads() -> None:
    seq = "AAACCCGGGTAGATGTTTCCC"  # stop at 9..12; open ATG ORF at 12..21
    complete = rows(find_orfs([("r", seq)], OrfParams(min_length_nt=3)))
    assert [r for r in complete if r["strand"] == "+"] == []
    part = [r for r in rows(find_orfs([("r", seq)], OrfParams(min_length_nt=3, partial=True)))
            if r["strand"] == "+"]
    assert [(r["start"], r["end"], r["protein"], r["partial"]) for r in part] == [
        (12, 21, "MFP", True)
    ]
    s2s = [r for r in rows(find_orfs([("r", seq)],
                                     OrfParams(min_length_nt=3, start_codons=(), partial=True)))
           if r["strand"] == "+" and r["frame"] == 0]
    assert [(r["start"], r["end"], r["protein"], r["partial"]) for r in s2s] == [
        (0, 12, "KPG", True),
        (12, 21, "MFP", True),
    ]


def test_reads_table_longest_orf_per_read() -> None:
    rng = random.Random(3)
    seqs = ["".join(rng.choice("ACGT") for _ in range(rng.randint(0, 150))) for _ in range(40)]
    n = len(seqs) // 2
    batch = pa.RecordBatch.from_pydict(
        {
            "read_id": [f"p{i}" for i in range(n)] * 2,
            "mate": [1] * n + [2] * n,
            "fragment": list(range(n)) * 2,
            "record": list(range(1, n + 1)) * 2,
            "sequence": seqs,
            "quality": ["I" * len(s) for s in seqs],
            "is_empty": [len(s) == 0 for s in seqs],
        },
        schema=READS_SCHEMA,
    )
    params = OrfParams(min_length_nt=30, start_codons=(), partial=True)
    table = find_orfs(batch, params)
    longest = longest_orf_per_sequence(table)
    ids = longest.column("seq_id").to_pylist()
    assert len(ids) == len(set(ids))
    for i, seq in enumerate(seqs):
        name = f"p{i % n}/{1 + i // n}"
        alone = find_orfs([(name, seq)], params)
        best = max(alone.column("length_nt").to_pylist(), default=None)
        got = [r["length_nt"] for r in rows(longest) if r["seq_id"] == name]
        assert got == ([] if best is None else [best])
        # Every ORF is the same whether the read is scanned alone or in the batch.
        assert as_set(alone) == {x for x in as_set(table) if x[0] == name}
    # A slice of a batch shares the batch's buffers: only its own reads are scanned.
    part = batch.slice(5, 10)
    want = set().union(*(as_set(find_orfs([(f"p{i % n}/{1 + i // n}", seqs[i])], params))
                         for i in range(5, 15)))
    assert as_set(find_orfs(part, params)) == want


@pytest.mark.parametrize("table_id", [1, 4, 11])
@pytest.mark.parametrize("starts", [("ATG",), BACTERIAL_STARTS, ()])
def test_matches_codon_by_codon_reference(table_id: int, starts: tuple[str, ...]) -> None:
    rng = random.Random(table_id * 7 + len(starts))
    records = [
        (f"s{i}", "".join(rng.choice("ACGT") for _ in range(rng.randint(0, 400))))
        for i in range(30)
    ]
    params = OrfParams(min_length_nt=30, start_codons=starts, table=table_id)
    got = as_set(find_orfs(records, params))
    want = set().union(*(reference_orfs(i, s, params) for i, s in records))
    assert got == want


def test_invalid_parameters_say_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        OrfParams(table=7)
    with pytest.raises(ValueError, match="start codon"):
        OrfParams(start_codons=("AT",))
    with pytest.raises(ValueError, match="tuple"):
        OrfParams(start_codons="ATG")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 3"):
        OrfParams(min_length_nt=0)


def test_fasta_reader(tmp_path: Path) -> None:
    path = tmp_path / "x.fa"
    path.write_text(">a desc\nacg\nTT\n>b\n\n>c\nGGG\n")
    assert list(iter_fasta(path)) == [("a", "ACGTT"), ("b", ""), ("c", "GGG")]


# --------------------------------------------------------------------------------------
# Known genes


def test_demo_genes_are_found(tmp_path_factory: pytest.TempPathFactory) -> None:
    demo = write_demo(
        tmp_path_factory.mktemp("demo-orfs"),
        DemoSpec(n_genomes=3, genome_length=20_000, n_pairs=100, n_variants=0),
    )
    genes = [line.split("\t") for line in demo.genes.read_text().splitlines()[1:]]
    table = find_orfs(demo.genomes, OrfParams(min_length_nt=300))
    ours = {(r["seq_id"], r["strand"], r["start"] if r["strand"] == "-" else r["end"]): r
            for r in rows(table)}
    exact = 0
    for genome, start, end, strand in genes:
        key = (genome, strand, int(start) if strand == "-" else int(end))
        assert key in ours, f"no ORF ends at the stop of gene {genome}:{start}-{end}{strand}"
        orf = ours[key]
        assert orf["start"] <= int(start) and orf["end"] >= int(end)  # may start upstream
        exact += (orf["start"], orf["end"]) == (int(start), int(end))
    assert exact >= 0.5 * len(genes)


def prodigal_agreement(fasta: Path, mode: str, tmp: Path) -> tuple[float, int]:
    """Share of prodigal genes whose stop codon ends one of our ORFs, and their number.

    Also checks each protein: prodigal's (without the stop '*') must be a suffix of
    ours, since our ORF starts at the first start codon and prodigal may pick a later one.
    """
    require_tool("prodigal")
    gff, faa = tmp / f"{fasta.stem}.gff", tmp / f"{fasta.stem}.faa"
    subprocess.run(
        ["prodigal", "-q", "-p", mode, "-f", "gff", "-i", str(fasta), "-o", str(gff),
         "-a", str(faa)],
        check=True, capture_output=True,
    )
    ((_, genome),) = list(iter_fasta(fasta))
    table = find_orfs(fasta, OrfParams(min_length_nt=60, start_codons=BACTERIAL_STARTS,
                                       partial=True))
    ours = {(r["strand"], r["end"] if r["strand"] == "+" else r["start"]): r["protein"]
            for r in rows(table)}
    proteins = dict(iter_fasta(faa))
    calls = [line.split("\t") for line in gff.read_text().splitlines()
             if line and not line.startswith("#")]
    hits = 0
    for number, f in enumerate(calls, start=1):
        strand, start, end = f[6], int(f[3]), int(f[4])
        key = (strand, end if strand == "+" else start - 1)
        if key in ours:
            hits += 1
            theirs = proteins[f"{fasta.stem.split('.')[0]}_{number}"].rstrip("*")
            if "partial=00" in f[8] and len(theirs) > 1:
                assert ours[key].endswith(theirs[1:]), (fasta.name, f)
    assert len(genome) > 0
    return hits / len(calls), len(calls)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("genome", "mode"),
    [("lambda", "single"), ("t7", "single"), ("phix174", "meta"), ("ypestis_pPCP1", "meta")],
)
def test_stops_agree_with_prodigal(
    shared_data: Path, tmp_path: Path, genome: str, mode: str
) -> None:
    fasta = shared_data / "genomes" / f"{genome}.fa"
    share, n = prodigal_agreement(fasta, mode, tmp_path)
    assert n > 0
    assert share >= 0.95, f"{genome}: {share:.3f} of {n} prodigal stops agree"


@pytest.mark.integration
@pytest.mark.slow
def test_stops_agree_with_prodigal_on_ecoli(shared_data: Path, tmp_path: Path) -> None:
    fasta = shared_data / "genomes" / "ecoli_k12_mg1655.fa"
    share, n = prodigal_agreement(fasta, "single", tmp_path)
    assert n > 4000
    assert share >= 0.95, f"E. coli: {share:.3f} of {n} prodigal stops agree"


def test_large_batch_is_vectorised() -> None:
    """A 2 Mb sequence takes well under a few seconds (no per-codon Python work)."""
    rng = np.random.default_rng(0)
    seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, 2_000_000)].tobytes().decode()
    table = find_orfs([("big", seq)], OrfParams(min_length_nt=150))
    assert table.num_rows > 100
