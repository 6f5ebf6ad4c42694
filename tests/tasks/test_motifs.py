"""Tests for motif search (tasks/motifs.py): consensus and PWM scans, p-values, parsers.

Planted sites pin positions on both strands; p-values are checked against hand values
and against enumerating every word of small matrices; parsers run on hand-written
JASPAR and MEME text.
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helixflow.errors import InputError
from helixflow.tasks.motifs import (
    HITS_SCHEMA,
    PWM,
    CountMatrix,
    find_consensus,
    parse_jaspar,
    parse_meme,
    pwm_from_counts,
    scan_pwms,
)
from helixflow.tasks.orfs import iter_fasta
from helixflow.tasks.reads import READS_SCHEMA

COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def revcomp(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


def random_dna(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


def hits_of(table: pa.Table) -> list[tuple[object, ...]]:
    return [(r["seq_id"], r["start"], r["end"], r["strand"], r["matched"])
            for r in table.to_pylist()]


JASPAR_TEXT = """\
>MA0004.1 Arnt
A  [ 4 19  0  0  0  0 ]
C  [16  0 20  0  0  0 ]
G  [ 0  1  0 20  0 20 ]
T  [ 0  0  0  0 20  0 ]
>MA0006.1 Ahr::Arnt
A  [ 3  0  0  0  0  0 ]
C  [ 8  0 23  0  0  0 ]
G  [ 2 23  0 23  0 24 ]
T  [11  1  1  1 24  0 ]
"""

MEME_TEXT = """\
MEME version 4

ALPHABET= ACGT

strands: + -

Background letter frequencies (from uniform background):
A 0.30000 C 0.20000 G 0.20000
T 0.30000

MOTIF crp CAP
letter-probability matrix: alength= 4 w= 3 nsites= 10 E= 1.2e-5
 0.8  0.1  0.1  0.0
 0.0  1.0  0.0  0.0
 0.25 0.25 0.25 0.25

URL http://example.org/crp

MOTIF lexA
letter-probability matrix: alength= 4 w= 2
 1.0 0.0 0.0 0.0
 0.0 0.0 0.0 1.0
"""


# --------------------------------------------------------------------------------------
# Consensus motifs


def test_planted_consensus_sites_on_both_strands() -> None:
    motif = "GATTACAG"
    seq = list(random_dna(300, 1).replace("GATTACA", "GCTTACA"))
    seq[40:48] = motif
    seq[200:208] = revcomp(motif)
    seq = "".join(seq)
    table = find_consensus([("chr", seq)], motif)
    assert table.schema == HITS_SCHEMA
    assert hits_of(table) == [("chr", 40, 48, "+", motif), ("chr", 200, 208, "-", motif)]
    assert table.column("score").to_pylist() == [8.0, 8.0]
    assert table.column("p_value").null_count == 2
    forward_only = find_consensus([("chr", seq)], motif, both_strands=False)
    assert hits_of(forward_only) == [("chr", 40, 48, "+", motif)]


def test_iupac_letters_and_mismatches() -> None:
    seq = "TTTGGATCCTTTGGTTCCTTTGCATCCTTT"
    exact = find_consensus([("s", seq)], "GGWTCC", both_strands=False)
    assert [h[1] for h in hits_of(exact)] == [3, 12]
    one_off = find_consensus([("s", seq)], "GGWTCC", max_mismatches=1, both_strands=False)
    assert [(h[1], h[4]) for h in hits_of(one_off)] == [(3, "GGATCC"), (12, "GGTTCC"),
                                                       (21, "GCATCC")]
    assert one_off.column("score").to_pylist() == [6.0, 6.0, 5.0]


def test_ambiguous_sequence_bases_only_match_n() -> None:
    assert find_consensus([("s", "AANCC")], "AAACC").num_rows == 0
    assert find_consensus([("s", "AANCC")], "AANCC", both_strands=False).num_rows == 1
    assert find_consensus([("s", "AANCC")], "AAACC", max_mismatches=1,
                          both_strands=False).num_rows == 1


def test_sites_never_span_two_sequences() -> None:
    records = [("a", "TTTGAT"), ("b", "TACATTT")]
    assert find_consensus(records, "GATTACA", max_mismatches=2).num_rows == 0
    table = find_consensus([("a", "CCC"), ("b", "xGATTACAx".upper())], "GATTACA",
                           both_strands=False)
    assert hits_of(table) == [("b", 1, 8, "+", "GATTACA")]


def test_consensus_on_a_reads_table() -> None:
    seqs = ["ACGTGATTACA", "TGTAATCAAA", "", "GATTAC"]
    batch = pa.RecordBatch.from_pydict(
        {
            "read_id": ["r1", "r2", "r1", "r2"],
            "mate": [1, 1, 2, 2],
            "fragment": [0, 1, 0, 1],
            "record": [1, 2, 1, 2],
            "sequence": seqs,
            "quality": ["I" * len(s) for s in seqs],
            "is_empty": [not s for s in seqs],
        },
        schema=READS_SCHEMA,
    )
    table = find_consensus(batch, "GATTACA")
    assert hits_of(table) == [("r1/1", 4, 11, "+", "GATTACA"), ("r2/1", 0, 7, "-", "GATTACA")]


def test_chi_sites_in_ecoli(shared_data: Path) -> None:
    """E. coli's recombination hotspot Chi (GCTGGTGG): about 1,000 sites on both strands
    (Blattner et al. 1997 counted 1,009 on the first assembly), the same as a regex."""
    fasta = shared_data / "genomes" / "ecoli_k12_mg1655.fa"
    ((_, genome),) = list(iter_fasta(fasta))
    hits = find_consensus(fasta, "GCTGGTGG", name="chi")
    plus = {m.start() for m in re.finditer("(?=GCTGGTGG)", genome)}
    minus = {m.start() for m in re.finditer("(?=CCACCAGC)", genome)}
    got = hits.to_pylist()
    assert {r["start"] for r in got if r["strand"] == "+"} == plus
    assert {r["start"] for r in got if r["strand"] == "-"} == minus
    assert 950 <= len(got) <= 1050
    assert {r["matched"] for r in got} == {"GCTGGTGG"}


def test_consensus_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="IUPAC"):
        find_consensus([("s", "ACGT")], "ACXT")
    with pytest.raises(ValueError, match="max_mismatches"):
        find_consensus([("s", "ACGT")], "ACG", max_mismatches=3)


# --------------------------------------------------------------------------------------
# P-values


def brute_force_p(pwm: PWM, score: float | np.ndarray) -> float | np.ndarray:
    """P(score >= `score`) by enumerating all 4**width words (vectorised over words)."""
    words = np.array(list(itertools.product(range(4), repeat=pwm.width)))
    scores = pwm.scores[np.arange(pwm.width), words].sum(axis=1)
    probs = pwm.background[words].prod(axis=1)
    order = np.argsort(scores)
    tail = np.cumsum(probs[order][::-1])[::-1]  # tail[i] = P(score >= sorted[i])
    tail = np.append(tail, 0.0)
    at = np.searchsorted(scores[order], np.asarray(score) - 1e-9, side="left")
    result = tail[at]
    return float(result) if np.ndim(result) == 0 else result


def test_known_p_values_on_tiny_matrices() -> None:
    one = PWM("one", np.array([[1.0, 0, 0, 0]]))
    assert one.p_value(1.0) == pytest.approx(0.25)
    assert one.p_value(0.0) == pytest.approx(1.0)
    assert one.p_value(1.5) == 0.0
    two = PWM("two", np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0]]))
    assert two.p_value(2.0) == pytest.approx(1 / 16)
    assert two.p_value(1.0) == pytest.approx(7 / 16)
    assert two.p_value(-5.0) == pytest.approx(1.0)
    assert two.score_for_p_value(0.1) == pytest.approx(2.0)
    skewed = PWM("skew", np.array([[2.0, -1, -1, 0]]), background=np.array([0.1, 0.2, 0.3, 0.4]))
    assert skewed.p_value(2.0) == pytest.approx(0.1)
    assert skewed.p_value(0.0) == pytest.approx(0.5)
    assert skewed.p_value(-1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_p_values_match_enumeration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(0, 2, size=(5, 4)), 3)  # exact at resolution 0.001
    background = rng.dirichlet(np.ones(4))
    pwm = PWM("r", scores, background=background)
    words = list(itertools.product(range(4), repeat=5))
    for word in words[:: 97]:
        s = float(sum(scores[j, b] for j, b in enumerate(word)))
        assert pwm.p_value(s) == pytest.approx(brute_force_p(pwm, s), rel=1e-9)
    _, dist = pwm.score_distribution()
    assert dist.sum() == pytest.approx(1.0)


def test_scan_reports_exactly_the_windows_below_the_p_threshold() -> None:
    rng = np.random.default_rng(5)
    pwm = PWM("r", np.round(rng.normal(0, 1.5, size=(6, 4)), 3))
    rc = pwm.reverse_complement()
    seq = random_dna(3000, 9)
    codes = ["ACGT".index(c) for c in seq]
    starts = np.arange(len(seq) - 5)
    want = set()
    for strand, mat in (("+", pwm), ("-", rc)):
        window_scores = mat.scores[np.arange(6), np.array(codes)[starts[:, None] + np.arange(6)]]
        p = brute_force_p(pwm, window_scores.sum(axis=1))
        want |= {(int(i), strand) for i in starts[p <= 1e-3]}
    table = scan_pwms([("s", seq)], [pwm], p_threshold=1e-3)
    got = {(r["start"], r["strand"]) for r in table.to_pylist()}
    assert got == want and len(got) > 0
    for r in table.to_pylist():
        assert r["p_value"] == pytest.approx(brute_force_p(pwm, r["score"]), rel=1e-9)
        site = r["matched"] if r["strand"] == "+" else revcomp(r["matched"])
        assert site == seq[r["start"] : r["end"]]


# --------------------------------------------------------------------------------------
# PWM scanning


def test_planted_pwm_sites_on_both_strands() -> None:
    (arnt, _) = parse_jaspar(JASPAR_TEXT)
    pwm = pwm_from_counts(arnt)
    site = "CACGTG"  # the Arnt consensus; palindromic, so it hits both strands
    other = "AACGTG"  # one substitution from the consensus: not palindromic
    seq = list(random_dna(2000, 3).replace("CACG", "CAAG").replace("ACGC", "AAGC"))
    seq[100:106] = site
    seq[900:906] = revcomp(other)
    seq = "".join(seq)
    table = scan_pwms([("chr1", seq)], [pwm], p_threshold=1e-3)
    found = {(r["start"], r["strand"], r["matched"]) for r in table.to_pylist()}
    assert {(100, "+", site), (100, "-", site), (900, "-", other)} <= found
    best = max(table.to_pylist(), key=lambda r: r["score"])
    assert best["start"] == 100 and best["p_value"] == pytest.approx(pwm.p_value(best["score"]))
    assert table.column("name").to_pylist()[0] == "MA0004.1"


def test_score_threshold_and_windows_with_n() -> None:
    pwm = PWM("ac", np.array([[2.0, -2, -2, -2], [-2, 2, -2, -2]]))
    table = scan_pwms([("s", "ACNACGT")], [pwm], p_threshold=None, score_threshold=4.0)
    assert [(r["start"], r["strand"], r["score"]) for r in table.to_pylist()] == [
        (0, "+", 4.0), (3, "+", 4.0), (5, "-", 4.0)  # GT is AC on the other strand
    ]
    assert scan_pwms([("s", "NN")], [pwm], p_threshold=None, score_threshold=-10).num_rows == 0
    with pytest.raises(ValueError, match="p_threshold"):
        scan_pwms([("s", "AC")], [pwm], p_threshold=None)


def test_large_scan_is_vectorised_and_calibrated() -> None:
    """1 Mb of random sequence: fast, and the number of hits is what the p-values predict."""
    rng = np.random.default_rng(1)
    n = 1_000_000
    seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, n)].tobytes().decode()
    pwms = [pwm_from_counts(m) for m in parse_jaspar(JASPAR_TEXT)]
    table = scan_pwms([("big", seq)], pwms, p_threshold=1e-3)
    expected = 0.0
    for pwm in pwms:
        _, sf = pwm.survival
        expected += 2 * (n - pwm.width + 1) * sf[sf <= 1e-3].max()  # both strands
    assert 0.9 * expected < table.num_rows < 1.1 * expected
    assert max(table.column("p_value").to_pylist()) <= 1e-3


# --------------------------------------------------------------------------------------
# Matrices and parsers


def test_log_odds_with_pseudocounts_and_background() -> None:
    m = CountMatrix("m", np.array([[3.0, 1, 0, 0]]))
    uniform = pwm_from_counts(m, pseudocount=4.0)
    assert uniform.scores.tolist() == [[1.0, 0.0, -1.0, -1.0]]
    bg = np.array([0.4, 0.1, 0.1, 0.4])
    skewed = pwm_from_counts(m, background=bg, pseudocount=1.0)
    probs = (np.array([3.0, 1, 0, 0]) + bg) / 5
    assert skewed.scores[0] == pytest.approx(np.log2(probs / bg))
    with pytest.raises(ValueError, match="pseudocount"):
        pwm_from_counts(m, pseudocount=0.0)


def test_parse_jaspar_labelled_and_bare() -> None:
    arnt, ahr = parse_jaspar(JASPAR_TEXT)
    assert (arnt.name, arnt.alt_name, ahr.name, ahr.alt_name) == (
        "MA0004.1", "Arnt", "MA0006.1", "Ahr::Arnt"
    )
    assert arnt.counts.shape == (6, 4)
    assert arnt.counts[0].tolist() == [4, 16, 0, 0]
    assert ahr.counts[:, 3].tolist() == [11, 1, 1, 1, 24, 0]
    (bare,) = parse_jaspar("1 0 2\n0 3 0\n0 0 0\n4 1 2\n")
    assert bare.counts.tolist() == [[1, 0, 0, 4], [0, 3, 0, 1], [2, 0, 0, 2]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (">m\nA [1 2]\nC [1 2]\nG [1 2]\n", "needs rows A, C, G and T"),
        (">m\nA [1 2]\nC [1]\nG [1 2]\nT [1 2]\n", "differ in length"),
        (">m\nA [1 x]\nC [1 2]\nG [1 2]\nT [1 2]\n", "line 2: expected numbers"),
        (">m\nA [1 2]\nC [1 2]\nG [1 2]\nT [1 -2]\n", "negative"),
        ("", "no motif found"),
    ],
)
def test_parse_jaspar_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_jaspar(text, source="motifs.jaspar")


def test_parse_meme_minimal_format() -> None:
    crp, lexa = parse_meme(MEME_TEXT)
    assert (crp.name, crp.alt_name, lexa.name) == ("crp", "CAP", "lexA")
    assert np.allclose(crp.counts, [[8, 1, 1, 0], [0, 10, 0, 0], [2.5] * 4])
    assert lexa.counts.tolist() == [[20, 0, 0, 0], [0, 0, 0, 20]]  # nsites defaults to 20
    assert crp.background is not None
    assert crp.background.tolist() == pytest.approx([0.3, 0.2, 0.2, 0.3])
    pwm = pwm_from_counts(crp)  # uses the file's background
    assert pwm.background.tolist() == pytest.approx([0.3, 0.2, 0.2, 0.3])
    assert pwm.scores[2] == pytest.approx(np.log2((2.5 + crp.background) / 11 / crp.background))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MOTIF x\n", "MEME version"),
        ("MEME version 4\nALPHABET= ACDEFGHIKLMNPQRSTVWY\n", "DNA alphabet"),
        ("MEME version 4\nMOTIF x\nletter-probability matrix: w= 2\n0.5 0.5 0 0\n\n",
         "has 1 rows, w=2"),
        ("MEME version 4\nMOTIF x\nletter-probability matrix: w= 1\n0.5 0.5 0\n", "4 numbers"),
        ("MEME version 4\n", "no letter-probability matrix"),
    ],
)
def test_parse_meme_errors(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_meme(text, source="motifs.meme")


def test_bad_pwm_is_rejected() -> None:
    with pytest.raises(ValueError, match="width x 4"):
        PWM("x", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        PWM("x", np.array([[-np.inf, 0, 0, 0]]))
    with pytest.raises(ValueError, match="background"):
        PWM("x", np.zeros((1, 4)), background=np.array([0.5, 0.5, 0, 0]))
