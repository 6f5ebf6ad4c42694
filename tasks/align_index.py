"""Reference and minimap2 index for alignment: read type → preset, the reference checked,
its .mmi built once per content and preset (cached), and loaded once per worker process.
Pure functions on local paths, no Prefect; the aligner is `tasks.align_map`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path

import mappy

from helixflow.errors import InputError
from helixflow.files import atomic_path

PRESETS: dict[str, str] = {
    "illumina": "sr",
    "short": "sr",
    "ont": "map-ont",
    "nanopore": "map-ont",
    "pacbio": "map-pb",
    "clr": "map-pb",
    "hifi": "map-hifi",
}
"""minimap2 preset for each read type."""
_KNOWN_PRESETS = frozenset({"sr", "map-ont", "map-pb", "map-hifi"})


def preset_for(read_type: str) -> str:
    """minimap2 preset for a read type ("illumina", "ont", "pacbio", "hifi") or a preset name.

    Args:
        read_type: a read type ("illumina", "ont", "pacbio", "hifi"; any case) or a
            minimap2 preset name ("sr", "map-ont", "map-pb", "map-hifi"), passed through.

    Returns:
        The minimap2 preset name.

    Raises:
        ValueError: an unknown read type (the message lists the allowed names).
    """
    if read_type in _KNOWN_PRESETS:
        return read_type
    try:
        return PRESETS[read_type.lower()]
    except KeyError:
        allowed = ", ".join(sorted({*PRESETS, *_KNOWN_PRESETS}))
        raise ValueError(f"unknown read type {read_type!r}; allowed: {allowed}") from None

def _check_reference(reference_fa: Path) -> None:
    """Raise InputError unless the reference exists and starts like a FASTA file."""
    path = Path(reference_fa)
    if not path.is_file():
        raise InputError(str(path), "reference FASTA not found", hint="check the path")
    with path.open("rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        with gzip.open(path, "rb") as fh:
            try:
                head = fh.read(1)
            except (OSError, EOFError) as exc:
                raise InputError(str(path), f"corrupt gzip reference ({exc})") from None
    if not head.startswith(b">"):
        raise InputError(
            str(path), "not a FASTA file (it does not start with '>')",
            hint="pass the reference genome as FASTA (.fa or .fa.gz)",
        )


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks.

    Args:
        path: the file to hash.

    Returns:
        The sha256 digest as 64 lower-case hex characters.
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def build_index(reference_fa: Path, preset: str, cache_dir: Path) -> Path:
    """The minimap2 index (.mmi) of a reference for a preset, built once and cached.

    The file is named by the sha256 of the reference's bytes and the preset, so a changed
    reference gets a new index and an unchanged one (under any path) reuses it. It is
    written beside its final name and renamed, so concurrent builders never see half.

    Args:
        reference_fa: local FASTA (plain or gzip).
        preset: minimap2 preset ("sr", "map-ont", "map-pb", "map-hifi").
        cache_dir: where indexes live; created if needed.

    Returns:
        Path of the .mmi.

    Raises:
        InputError: the reference is missing, not FASTA, or holds no sequence.

    Example:
        >>> build_index(Path("lambda.fa"), "sr", Path("~/.cache/helixflow/mmi"))  # doctest: +SKIP
        PosixPath('.../lambda.3f1c...-sr.mmi')
    """
    preset = preset_for(preset)
    reference_fa = Path(reference_fa)
    _check_reference(reference_fa)
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = reference_fa.name.split(".")[0] or "reference"
    out = cache_dir / f"{stem}.{file_sha256(reference_fa)[:20]}-{preset}.mmi"
    if out.exists():
        return out
    with atomic_path(out) as tmp:
        aligner = mappy.Aligner(str(reference_fa), preset=preset, fn_idx_out=str(tmp))
        if not aligner or aligner.n_seq == 0 or not tmp.stat().st_size:
            raise InputError(str(reference_fa), "minimap2 found no sequence in the reference")
    return out


@functools.lru_cache(maxsize=2)
def _load_aligner(index: str, preset: str, mtime_ns: int) -> mappy.Aligner:
    """A loaded index, kept for the next batch in the same worker process."""
    aligner = mappy.Aligner(index, preset=preset)
    if not aligner:
        raise InputError(index, "not a minimap2 index or FASTA file",
                         hint="rebuild it with build_index(reference, preset, cache_dir)")
    return aligner


def load_aligner(index: Path, preset: str) -> mappy.Aligner:
    """mappy.Aligner over an .mmi (or FASTA) with the preset's mapping options, cached.

    Args:
        index: a minimap2 index (.mmi) or a FASTA to index on load.
        preset: a read type or minimap2 preset name (see `preset_for`).

    Returns:
        The loaded aligner, cached per worker process on (path, preset, mtime).

    Raises:
        InputError: `index` is not a file.
    """
    path = Path(index)
    if not path.is_file():
        raise InputError(str(path), "minimap2 index not found",
                         hint="build it with build_index(reference, preset, cache_dir)")
    return _load_aligner(str(path), preset_for(preset), path.stat().st_mtime_ns)
