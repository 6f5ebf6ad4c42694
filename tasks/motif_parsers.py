"""Motif files read into count matrices: JASPAR (`parse_jaspar`, with or without the
`A [ ... ]` labels) and MEME minimal format (`parse_meme`, probabilities times nsites).
A malformed file is an InputError naming the line. Pure functions, no Prefect.
"""

from __future__ import annotations

import re

import numpy as np

from helixflow.errors import InputError
from helixflow.tasks.motif_matrices import CountMatrix

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
def _numbers(text: str, source: str, line_no: int) -> list[float]:
    """The numbers on one matrix line, or an InputError naming the line."""
    tokens = text.split()
    try:
        return [float(t) for t in tokens]
    except ValueError:
        message = f"line {line_no}: expected numbers, got {text.strip()!r}"
        raise InputError(source, message) from None


def _check_counts(counts: np.ndarray, name: str, source: str, line_no: int) -> None:
    """Counts must be finite, non-negative and have at least one position."""
    if counts.shape[0] == 0:
        raise InputError(source, f"line {line_no}: motif {name!r} has no positions")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise InputError(source, f"line {line_no}: motif {name!r} has negative or invalid values")


def parse_jaspar(text: str, source: str = "<jaspar>") -> list[CountMatrix]:
    """Count matrices from JASPAR text: '>ID name' headers, then rows `A [ 1 2 ... ]`
    (labels and brackets optional; unlabelled rows are A, C, G, T in that order).

    Raises InputError (naming `source` and the line) for anything else.

    Args:
        text: the file's text; blank lines and '#' comments are skipped.
        source: the file's name, for error messages.

    Returns:
        One CountMatrix (N x 4 counts, A C G T) per motif, in file order; a bare .pfm
        without header gives one named "motif".

    Raises:
        InputError: a malformed header or row, missing or unequal A/C/G/T rows, bad counts,
            or no motif at all.

    Example:
        >>> text = ">MA0001.1 X\\nA [ 1 0 ]\\nC [ 0 1 ]\\nG [ 0 0 ]\\nT [ 0 0 ]\\n"
        >>> m, = parse_jaspar(text)
        >>> m.name, m.alt_name, m.counts.tolist()
        ('MA0001.1', 'X', [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    """
    motifs: list[CountMatrix] = []
    header: tuple[str, str, int] | None = None
    rows: dict[str, list[float]] = {}
    order = "ACGT"

    def finish(line_no: int) -> None:
        if header is None:
            return
        name, alt, at = header
        if sorted(rows) != sorted(order):
            raise InputError(source, f"line {at}: motif {name!r} needs rows A, C, G and T")
        widths = {len(v) for v in rows.values()}
        if len(widths) != 1:
            raise InputError(source, f"line {at}: motif {name!r} rows differ in length")
        counts = np.array([rows[b] for b in order], dtype=np.float64).T
        _check_counts(counts, name, source, at)
        motifs.append(CountMatrix(name, counts, alt))

    line_no = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith(">"):
            finish(line_no)
            fields = stripped[1:].split(None, 1)
            if not fields:
                raise InputError(source, f"line {line_no}: motif header without an id")
            header = (fields[0], fields[1].strip() if len(fields) > 1 else "", line_no)
            rows = {}
            continue
        if header is None:  # a bare .pfm file: four unlabelled rows, no header
            header = ("motif", "", line_no)
        match = re.fullmatch(r"([ACGTacgt])?\s*[\[|]?\s*(.*?)\s*\]?", stripped)
        assert match is not None  # the pattern matches any text
        letter = (match.group(1) or order[len(rows)] if len(rows) < 4 else "").upper()
        if not letter or letter in rows:
            raise InputError(source, f"line {line_no}: unexpected row {stripped[:40]!r}")
        rows[letter] = _numbers(match.group(2), source, line_no)
    finish(line_no)
    if not motifs:
        raise InputError(source, "no motif found", hint="is this a JASPAR matrix file?")
    return motifs


def parse_meme(text: str, source: str = "<meme>") -> list[CountMatrix]:
    """Count matrices from MEME minimal motif format (letter-probability matrices).

    Counts are probabilities times `nsites` (20 when absent, as MEME assumes); the file's
    background letter frequencies, if given, travel with each matrix.

    Args:
        text: the file's text.
        source: the file's name, for error messages.

    Returns:
        One CountMatrix per letter-probability matrix, in file order.

    Raises:
        InputError: no "MEME version" line, a non-DNA alphabet, a malformed background or
            matrix, or no matrix at all.

    Example:
        >>> text = "MEME version 4\\n\\nALPHABET= ACGT\\n\\nMOTIF m1\\n" \\
        ...        "letter-probability matrix: alength= 4 w= 1 nsites= 10\\n0.5 0.5 0 0\\n"
        >>> parse_meme(text)[0].counts.tolist()
        [[5.0, 5.0, 0.0, 0.0]]
    """
    lines = text.splitlines()
    if not any(line.startswith("MEME version") for line in lines):
        raise InputError(source, "no 'MEME version' line", hint="is this a MEME motif file?")
    background: np.ndarray | None = None
    motifs: list[CountMatrix] = []
    name, alt = "", ""
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line.startswith("ALPHABET"):
            alphabet = line.split("=", 1)[1].strip() if "=" in line else ""
            if alphabet.split()[0:1] != ["ACGT"]:
                raise InputError(source, f"line {i}: only the DNA alphabet ACGT is supported")
        elif line.startswith("Background letter frequencies"):
            freqs: dict[str, float] = {}
            while i < len(lines) and lines[i].strip():
                tokens = lines[i].split()
                for letter, value in zip(tokens[::2], tokens[1::2], strict=False):
                    freqs[letter.upper()] = float(value)
                i += 1
            if sorted(freqs) != list("ACGT"):
                raise InputError(source, f"line {i}: background must give A, C, G and T")
            background = np.array([freqs[b] for b in "ACGT"])
            background = background / background.sum()
        elif line.startswith("MOTIF"):
            fields = line.split()
            if len(fields) < 2:
                raise InputError(source, f"line {i}: MOTIF without an id")
            name, alt = fields[1], " ".join(fields[2:])
        elif line.startswith("letter-probability matrix"):
            if not name:
                raise InputError(source, f"line {i}: matrix before any MOTIF line")
            at = i
            keys = dict(re.findall(r"(\w+)\s*=\s*(" + _NUMBER + ")", line))
            width = int(float(keys.get("w", "0")))
            nsites = float(keys.get("nsites", "20"))
            rows: list[list[float]] = []
            while i < len(lines) and (width == 0 or len(rows) < width):
                row_text = lines[i].strip()
                if not row_text:
                    if width == 0 and rows:
                        break
                    i += 1
                    continue
                if not re.match(_NUMBER, row_text):
                    break
                rows.append(_numbers(row_text, source, i + 1))
                i += 1
            if not rows or any(len(r) != 4 for r in rows):
                raise InputError(source, f"line {at}: motif {name!r} needs rows of 4 numbers")
            if width and len(rows) != width:
                message = f"line {at}: motif {name!r} has {len(rows)} rows, w={width}"
                raise InputError(source, message)
            probs = np.array(rows, dtype=np.float64)
            _check_counts(probs, name, source, at)
            motifs.append(CountMatrix(name, probs * nsites, alt, background))
            name = ""
    if not motifs:
        raise InputError(source, "no letter-probability matrix found")
    return motifs
