"""Tests for tasks/peptides.py: peptides from proteins and ORFs, start structures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from Bio.PDB import PDBParser

from helixflow.errors import InputError
from helixflow.tasks.orfs import OrfParams, find_orfs
from helixflow.tasks.peptides import build_peptide_pdb, peptide_from_protein, peptides_from_orfs

# --------------------------------------------------------------------------------------
# Peptides


@pytest.mark.parametrize(
    ("protein", "kwargs", "expected"),
    [
        ("MKFGW*", {}, "MKFGW"),
        ("*MKFGW**", {}, "MKFGW"),
        ("mkf gw\n", {}, "MKFGW"),
        ("MKXXFGW", {}, "MKFGW"),
        ("MKXXFGW", {"unknown": "A"}, "MKAAFGW"),
        ("MBZJUO", {}, "MNQLCK"),
        ("MK-F.GW", {}, "MKFGW"),
        ("MKFGW*AAAAAAAA", {}, "MKFGW"),  # read up to the first internal stop
        ("ACDEFGHIKLMNPQRSTVWY", {"max_len": 6}, "ACDEFG"),
        ("ACDEFGHIKLMNPQRSTVWY", {"max_len": 6, "window": "center"}, "IKLMNP"),
        ("ACDEFGHIKLMNPQRSTVWY", {"max_len": 5, "window": "center"}, "IKLMN"),
        ("ACDEF", {"min_len": 5, "max_len": 5}, "ACDEF"),
    ],
)
def test_peptide_from_protein(protein: str, kwargs: dict, expected: str) -> None:
    assert peptide_from_protein(protein, **kwargs) == expected


def test_too_short_peptide_is_a_clear_input_error() -> None:
    with pytest.raises(InputError, match=r"contig_7: peptide has 3 standard residues") as info:
        peptide_from_protein("MXKXF*", min_len=5, name="contig_7")
    assert info.value.hint and "longer ORF" in info.value.hint
    with pytest.raises(InputError, match="fewer than min_len=1"):
        peptide_from_protein("***", min_len=1)


def test_non_residue_characters_and_bad_arguments() -> None:
    with pytest.raises(InputError, match="'1' is not an amino-acid letter"):
        peptide_from_protein("MK1FGW")
    with pytest.raises(ValueError, match="min_len"):
        peptide_from_protein("MKFGW", min_len=8, max_len=5)
    with pytest.raises(ValueError, match="unknown"):
        peptide_from_protein("MKFGW", unknown="X")
    with pytest.raises(ValueError, match="window"):
        peptide_from_protein("ACDEFGHIKL", max_len=5, window="end")  # type: ignore[arg-type]


def test_peptides_from_longest_orfs() -> None:
    seqs = [
        ("a", "ATGAAATTTGGGTGGTAA" + "CC" + "ATGAAATTTGGGTGGCATCATCATTAA"),
        ("b", "ATGAAATAA"),  # longest ORF gives a 2-residue peptide: left out
    ]
    orfs = find_orfs(seqs, OrfParams(min_length_nt=9))
    assert peptides_from_orfs(orfs) == {"a": "MKFGWHHH"}
    assert peptides_from_orfs(orfs, ["b"]) == {}
    assert peptides_from_orfs(orfs, max_len=5) == {"a": "MKFGW"}


def test_build_peptide_pdb(tmp_path: Path) -> None:
    path = build_peptide_pdb("MKFGW", tmp_path / "pep.pdb")
    structure = PDBParser(QUIET=True).get_structure("p", path)
    residues = list(structure.get_residues())
    assert [r.get_resname() for r in residues] == ["MET", "LYS", "PHE", "GLY", "TRP"]
    assert "OXT" in residues[-1]
    assert not any(a.element == "H" for a in structure.get_atoms())  # pdb2gmx adds them
    ca = [r["CA"].coord for r in residues]
    assert np.linalg.norm(ca[-1] - ca[0]) > 12.0  # extended: ~3.3-3.8 Å per residue
    with pytest.raises(InputError):
        build_peptide_pdb("MKXGW", tmp_path / "bad.pdb")
