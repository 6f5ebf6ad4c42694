"""Tests for tasks/motif_parsers.py: JASPAR and MEME files to count matrices, and errors
that name the line."""

from __future__ import annotations

import numpy as np
import pytest

from helixflow.errors import InputError
from helixflow.tasks.motif_matrices import pwm_from_counts
from helixflow.tasks.motif_parsers import parse_jaspar, parse_meme
from tests.tasks.test_motifs import JASPAR_TEXT, MEME_TEXT


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
