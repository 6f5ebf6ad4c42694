"""The variant caller's inputs checked before calling: the reference FASTA read (and
validated record by record) and an indexed BAM whose contigs are the reference's.
Pure functions on local paths, no Prefect; the caller is `tasks.variant_caller`.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pysam

from helixflow.errors import HelixflowError, InputError


def read_fasta(path: Path) -> dict[str, str]:
    """Contig name -> upper-case sequence of a (gzipped) FASTA file, in file order.

    Raises InputError for a missing file, text that is not FASTA, or a duplicate name.

    Args:
        path: a plain or gzipped FASTA file (ASCII).

    Returns:
        {contig name (first word of the header): sequence}.

    Raises:
        InputError: a missing or unreadable file, not FASTA, a header without a name, a
            duplicate name, or no record.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "reference FASTA not found", hint="check the path")
    with path.open("rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    contigs: dict[str, list[str]] = {}
    current: list[str] | None = None
    try:
        with opener(path, "rt", encoding="ascii") as fh:
            for number, line in enumerate(fh, 1):
                if line.startswith(">"):
                    name = line[1:].split(maxsplit=1)[0] if line[1:].strip() else ""
                    if not name:
                        raise InputError(str(path), "FASTA header without a name", record=number)
                    if name in contigs:
                        raise InputError(str(path), f"duplicate contig name {name!r}",
                                         record=number)
                    current = contigs[name] = []
                elif current is None:
                    if line.strip():
                        raise InputError(str(path), "not a FASTA file (no '>' header first)",
                                         hint="pass the reference genome as FASTA")
                else:
                    current.append(line.strip())
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise InputError(str(path), f"unreadable reference ({exc})") from None
    if not contigs:
        raise InputError(str(path), "reference FASTA holds no sequence")
    return {name: "".join(parts).upper() for name, parts in contigs.items()}


def check_bam(bam: Path, reference: dict[str, str], reference_path: Path) -> None:
    """Raise unless the BAM is indexed and its contigs are the reference's (names, lengths)."""
    if not Path(bam).is_file():
        raise InputError(str(bam), "BAM not found")
    with pysam.AlignmentFile(str(bam), "rb") as fh:
        if not fh.has_index():
            raise InputError(str(bam), "BAM has no index (.bai)",
                             hint=f"run `samtools index {bam}` (merge_bams writes it)")
        for name, length in zip(fh.references, fh.lengths, strict=True):
            if name not in reference:
                raise HelixflowError(
                    f"reference {reference_path} does not match {bam}: contig {name!r} "
                    "of the BAM is not in the reference",
                    hint="call variants with the FASTA the reads were aligned to",
                )
            if len(reference[name]) != length:
                raise HelixflowError(
                    f"reference {reference_path} does not match {bam}: contig {name!r} is "
                    f"{length} bp in the BAM but {len(reference[name])} bp in the reference",
                    hint="call variants with the FASTA the reads were aligned to",
                )
