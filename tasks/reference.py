"""Reference FASTA validation, run once per reference before any read is processed.

A bad reference should fail a run in seconds, naming the file and the record, not after
QC and correction have run, and not deep inside minimap2 or the variant caller.
`check_fasta` is the streaming kernel (memory bounded by the longest line); the task
`validate_reference` is its content-cached wrapper.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from helixflow.artifacts import FileRef
from helixflow.caching import stage_options
from helixflow.errors import InputError, naming_sources
from helixflow.store import Store
from helixflow.tables import fetch
from helixflow.uris import display_name

REFERENCE_VERSION = "1"

# IUPAC nucleotide codes (either case), plus '*' and '-' which some FASTA writers emit.
_ALLOWED = b"ACGTURYSWKMBDHVNacgturyswkmbdhvn*-"


class ReferenceInfo(BaseModel):
    """What the reference holds: enough for the report and for a mismatch message."""

    ref: FileRef
    contigs: int
    length: int
    longest: str


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(path, "rb") as fh:  # type: ignore[operator]
        yield from fh


def check_fasta(path: Path, label: str | None = None) -> tuple[int, int, str]:
    """Validate a (gzipped) FASTA file; return (contigs, total length, longest contig).

    Raises `InputError` naming `label` (default the path) and the record for: a missing
    file, a first line that is not a header, a header without a name, a duplicate name,
    a record without sequence, a letter outside the IUPAC nucleotide codes, a corrupt or
    truncated gzip stream, or a file with no record at all.

    Args:
        path: a plain or gzipped FASTA file.
        label: the name to show in errors; None for the path.

    Returns:
        (number of contigs, total bases, name of the longest contig; the first on a tie).

    Raises:
        InputError: any of the problems listed above.

    Example:
        >>> check_fasta(Path("lambda.fa"))  # doctest: +SKIP
        (1, 48502, 'NC_001416.1')
    """
    name_of = label or str(path)
    if not Path(path).is_file():
        raise InputError(name_of, "reference FASTA not found", hint="check the path")
    names: set[str] = set()
    record = 0
    current: str | None = None
    current_len = 0
    total = 0
    longest = ("", -1)

    def close() -> None:
        nonlocal longest
        if current is None:
            return
        if current_len == 0:
            raise InputError(name_of, f"sequence {current!r} is empty", record=record)
        if current_len > longest[1]:
            longest = (current, current_len)

    try:
        for line_no, raw in enumerate(_lines(Path(path)), start=1):
            line = raw.rstrip(b"\r\n")
            if line.startswith(b">"):
                close()
                record += 1
                header = line[1:].decode("utf-8", "replace").split()
                if not header:
                    raise InputError(name_of, "header without a name", record=record)
                current, current_len = header[0], 0
                if current in names:
                    raise InputError(name_of, f"duplicate sequence name {current!r}",
                                     record=record)
                names.add(current)
            elif current is None:
                if line.strip():
                    raise InputError(
                        name_of, f"not a FASTA file: line {line_no} comes before any '>' header",
                        hint="pass the reference genome as FASTA (.fa or .fa.gz)",
                    )
            else:
                seq = line.strip()
                bad = seq.translate(None, _ALLOWED)
                if bad:
                    letter = chr(bad[0])
                    col = seq.index(bad[:1]) + 1
                    raise InputError(
                        name_of,
                        f"sequence {current!r}, line {line_no}, column {col}: {letter!r} is "
                        "not an IUPAC nucleotide code", record=record,
                    )
                current_len += len(seq)
                total += len(seq)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(name_of, f"corrupt or truncated gzip ({exc})") from None
    close()
    if record == 0:
        raise InputError(name_of, "reference FASTA holds no sequence")
    return record, total, longest[0]


@task(name="validate-reference", task_run_name="validate-{ref.name}",
      **stage_options(REFERENCE_VERSION))
def validate_reference(ref: FileRef, store: Store) -> ReferenceInfo:
    """Check the reference once, before the reads are processed (cached by content).

    Args:
        ref: the reference FASTA (plain or gzipped).
        store: the store to fetch it from.

    Returns:
        ReferenceInfo with `ref`, the number of contigs, total length and longest contig.

    Raises:
        InputError: the FASTA is malformed (see `check_fasta`).
    """
    with store.scratch() as scratch:
        path = fetch(store, ref, scratch, name="reference.fa")
        shown = display_name(ref.uri)
        with naming_sources({path: shown}):
            contigs, length, longest = check_fasta(path, shown)
    return ReferenceInfo(ref=ref, contigs=contigs, length=length, longest=longest)
