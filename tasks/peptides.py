"""Peptides for molecular dynamics: a representative's longest ORF becomes a peptide
(`peptide_from_protein`, `peptides_from_orfs`), the peptide an extended start structure
(`peptide_pdb_text`, `build_peptide_pdb`, PeptideBuilder). Pure functions, no Prefect;
the simulation job is `tasks.gromacs_job`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pyarrow as pa

from helixflow.errors import InputError

STANDARD_AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWY")
# Ambiguity codes and rare residues -> the closest standard residue PeptideBuilder builds.
NEAREST_STANDARD: dict[str, str] = {"B": "N", "Z": "Q", "J": "L", "U": "C", "O": "K"}
def peptide_from_protein(
    protein: str,
    min_len: int = 5,
    max_len: int = 20,
    window: Literal["start", "center"] = "start",
    *,
    unknown: str = "drop",
    name: str = "protein",
) -> str:
    """A simulable peptide from an ORF's protein: standard residues, min_len..max_len long.

    The protein is read up to its first stop ('*'; leading and trailing ones are
    stripped), upper-cased, gaps ('-', '.') and whitespace removed, B/Z/J/U/O mapped to
    the nearest standard residue, and X dropped (``unknown="drop"``) or replaced by
    `unknown` (a standard residue letter). A longer result is cut to a window of max_len
    residues at its start or centre.

    Raises InputError (located at `name`) when fewer than min_len residues remain or the
    protein holds characters that are not residues.

    Args:
        protein: one-letter amino-acid sequence, any case.
        min_len: fewest residues accepted, >= 1.
        max_len: most residues kept, >= min_len.
        window: where the max_len window is taken from a longer peptide: "start" or "center".
        unknown: "drop" to remove X, or a standard residue letter to put in its place.
        name: where the protein comes from (e.g. its seq_id), for error messages.

    Returns:
        The peptide, min_len..max_len standard residues, upper case.

    Raises:
        InputError: too few residues remain, or a character is not an amino-acid letter.
        ValueError: bad min_len/max_len, window or unknown.

    Example:
        >>> peptide_from_protein("MKXFGbz*", min_len=3)
        'MKFGNQ'
    """
    if min_len < 1 or max_len < min_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}..{max_len}")
    if window not in ("start", "center"):
        raise ValueError(f"window must be 'start' or 'center', got {window!r}")
    if unknown != "drop" and unknown not in STANDARD_AMINO_ACIDS:
        raise ValueError(f"unknown must be 'drop' or a standard residue letter, got {unknown!r}")
    text = "".join(protein.split()).upper().strip("*")
    text = text.split("*", 1)[0].replace("-", "").replace(".", "")
    residues: list[str] = []
    for char in text:
        if char in STANDARD_AMINO_ACIDS:
            residues.append(char)
        elif char in NEAREST_STANDARD:
            residues.append(NEAREST_STANDARD[char])
        elif char == "X":
            if unknown != "drop":
                residues.append(unknown)
        else:
            raise InputError(name, f"{char!r} is not an amino-acid letter")
    peptide = "".join(residues)
    if len(peptide) < min_len:
        raise InputError(
            name,
            f"peptide has {len(peptide)} standard residues, fewer than min_len={min_len}",
            hint="pick a longer ORF or lower the minimum peptide length",
        )
    if len(peptide) > max_len:
        begin = 0 if window == "start" else (len(peptide) - max_len) // 2
        peptide = peptide[begin : begin + max_len]
    return peptide


def peptides_from_orfs(
    orfs: pa.Table,
    seq_ids: Sequence[str] | None = None,
    **kwargs: object,
) -> dict[str, str]:
    """seq_id -> peptide of the longest ORF of each (selected) sequence.

    `orfs` is a `find_orfs` table; sequences whose longest ORF gives too short a peptide
    are left out (they raise InputError in `peptide_from_protein`). kwargs go to
    `peptide_from_protein`.

    Args:
        orfs: a `find_orfs` table (ORFS_SCHEMA).
        seq_ids: only these sequences; None for all.
        **kwargs: min_len, max_len, window, unknown of `peptide_from_protein`.

    Returns:
        {seq_id: peptide}, for the sequences whose longest ORF gives a valid peptide.
    """
    from helixflow.tasks.orfs import longest_orf_per_sequence

    longest = longest_orf_per_sequence(orfs)
    wanted = set(seq_ids) if seq_ids is not None else None
    out: dict[str, str] = {}
    for seq_id, protein in zip(
        longest.column("seq_id").to_pylist(), longest.column("protein").to_pylist(),
        strict=True,
    ):
        if wanted is not None and seq_id not in wanted:
            continue
        try:
            out[seq_id] = peptide_from_protein(protein, name=seq_id, **kwargs)  # type: ignore[arg-type]
        except InputError:
            continue
    return out


def peptide_pdb_text(sequence: str) -> str:
    """PDB text of `sequence` in an extended conformation (PeptideBuilder), with OXT.

    The C-terminal OXT lets pdb2gmx build a charged carboxylate terminus; hydrogens are
    left to pdb2gmx (-ignh).

    Args:
        sequence: the peptide, standard one-letter residues only.

    Returns:
        The PDB file's text.

    Raises:
        InputError: an empty sequence or a non-standard residue.
    """
    from Bio.PDB import PDBIO
    from PeptideBuilder import PeptideBuilder as pb

    bad = sorted(set(sequence) - STANDARD_AMINO_ACIDS)
    if not sequence or bad:
        raise InputError("peptide", f"{sequence!r} is not a sequence of standard residues")
    structure = pb.make_extended_structure(sequence)
    pb.add_terminal_OXT(structure)
    pdbio = PDBIO()
    pdbio.set_structure(structure)
    buffer = io.StringIO()
    pdbio.save(buffer)
    return buffer.getvalue()


def build_peptide_pdb(sequence: str, path: str | Path) -> Path:
    """Write the extended start structure of `sequence` to `path` (PDB).

    Args:
        sequence: the peptide, standard one-letter residues only.
        path: the PDB file to write (overwritten).

    Returns:
        `path` as a Path.

    Raises:
        InputError: an empty sequence or a non-standard residue.
    """
    path = Path(path)
    path.write_text(peptide_pdb_text(sequence))
    return path
