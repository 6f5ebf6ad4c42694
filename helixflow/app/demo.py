"""A deterministic synthetic mock community to demonstrate and test every pipeline stage.

`write_demo(DIR, DemoSpec(...))` writes, for one seed, byte-identical files:

- ``genomes.fa``: `n_genomes` reference genomes (``g01``, ``g02``, ...) of distinct
  composition. Genome *i* has its own GC target (evenly spread over 0.30-0.68), its own
  codon usage and its own intergenic 4-mer bias, so k-mer spectra cluster by genome.
  Each genome is a run of genes (ATG ... stop ORFs, on both strands) separated by
  intergenic spacers.
- ``genes.tsv``: ``genome  start  end  strand``, 0-based half-open (BED-like); for a
  ``-`` gene the ORF is the reverse complement of ``genome[start:end]``.
- ``variants.tsv``: ``genome  pos  ref  alt``, planted SNVs with **1-based** ``pos`` as in
  a VCF. They are clonal (every read comes from the mutated genome), at least 6 bp
  apart, about two thirds transitions; ``genomes.fa`` holds the unmutated reference.
- ``R1.fastq.gz`` / ``R2.fastq.gz``: Illumina-like 2 x `read_length` pairs with
  Casava 1.8 names (``@A00123:8:HDEMODSXY:1:<tile>:<x>:<y> 1:N:0:ATCACG``; the ``A0``
  NovaSeq prefix makes fastp switch on its two-colour polyG trimming). Fragments have a
  normal size distribution (clipped at 35 bp); an insert shorter than the read runs into
  the TruSeq adapter, then the rest of the library construct, then polyG (no signal on a
  two-colour instrument). Qualities are Phred+33 in 2..41 and decline towards 3';
  substitution errors are drawn with P(error) = 10^(-Q/10); a few bases are ``N`` with
  quality 2. Mate 2 is the reverse complement of the fragment's other end.
  A `duplicate_fraction` of pairs are PCR duplicates: exact copies of another pair's
  sequences (both mates, errors included) with half of them given freshly drawn
  qualities. `empty_reads` pairs have both mates of length 0.
- ``truth.tsv.gz``: one row per pair, in file order: ``name genome start insert strand
  is_duplicate has_adapter is_empty has_polyg duplicate_of``. ``start`` is 0-based;
  strand ``+`` means R1 reads the genome's forward strand from ``start``, ``-`` means R1
  reads the reverse strand from ``start + insert - 1``. ``has_adapter`` is
  ``insert < read_length`` (non-empty pairs); ``has_polyg`` says at least one mate reads
  past the whole adapter construct into polyG; ``duplicate_of`` names the copied pair.
- ``manifest.json``: generator version, spec, counts, adapter sequences and sha256 of
  every other file. It is written last and the directory is renamed into place, so a
  directory with a manifest is complete.

Randomness comes from independent `numpy.random.SeedSequence` streams for genomes,
variants and each block of read pairs, so changing `n_pairs` leaves the genomes alone.
Reads are simulated in blocks of `CHUNK_PAIRS` pairs (duplicates are copies within their
block) to bound memory.

This module holds the spec, the directory handling and the manifest; the genomes are made
in `helixflow.app.demo_genomes`, the reads in `helixflow.app.demo_reads`, and the files
written by `helixflow.app.demo_files`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from helixflow import __version__
from helixflow.app.demo_files import file_identity, open_out, sha256, sibling_dir
from helixflow.app.demo_genomes import fasta, gc_targets, make_genome, plant_variants
from helixflow.app.demo_reads import (
    ADAPTER_R1,
    ADAPTER_R2,
    CHUNK_PAIRS,
    MAX_Q,
    MIN_INSERT,
    MIN_Q,
    READTHROUGH_R1,
    READTHROUGH_R2,
    write_reads,
)
from helixflow.errors import HelixflowError
from helixflow.files import fsync_dir

DEMO_VERSION = 1
"""Bump when the output for a given spec changes: existing demos are then rewritten."""
GENERATOR = "helixflow.app.demo"

FILES = ("genomes.fa", "genes.tsv", "variants.tsv", "R1.fastq.gz", "R2.fastq.gz", "truth.tsv.gz")
MANIFEST = "manifest.json"


def _check_int(name: str, value: object, low: int, high: int) -> None:
    """Raise ValueError unless `value` is an int (not a bool) in low..high."""
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise ValueError(f"DemoSpec.{name} must be an integer in {low}..{high}, got {value!r}")


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of a demo; the same spec (seed included) always gives the same bytes.

    Raises ValueError on construction if a value is outside what is allowed.
    """

    seed: int = 7
    n_genomes: int = 4
    genome_length: int = 40_000
    n_pairs: int = 20_000
    read_length: int = 150
    insert_mean: int = 300
    insert_sd: int = 80
    duplicate_fraction: float = 0.05
    empty_reads: int = 3
    n_variants: int = 20

    def __post_init__(self) -> None:
        """Check every field so a bad value fails here, not halfway through writing."""
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("n_genomes", self.n_genomes, 1, 16)
        _check_int("genome_length", self.genome_length, 5_000, 20_000_000)
        _check_int("n_pairs", self.n_pairs, 1, 10_000_000)
        _check_int("read_length", self.read_length, 30, 500)
        _check_int("insert_mean", self.insert_mean, MIN_INSERT, self.genome_length // 2)
        _check_int("insert_sd", self.insert_sd, 0, self.insert_mean)
        frac = self.duplicate_fraction
        if (
            isinstance(frac, bool)
            or not isinstance(frac, int | float)
            or not (math.isfinite(frac) and 0.0 <= frac <= 0.5)
        ):
            raise ValueError(
                f"DemoSpec.duplicate_fraction must be a number in 0..0.5, got {frac!r}"
            )
        _check_int("empty_reads", self.empty_reads, 0, self.n_pairs // 10)
        _check_int("n_variants", self.n_variants, 0, self.n_genomes * self.genome_length // 100)


@dataclass(frozen=True)
class Demo:
    """A complete demo directory: paths of its files and its parsed manifest."""

    dir: Path
    genomes: Path
    r1: Path
    r2: Path
    truth: Path
    genes: Path
    variants: Path
    manifest: dict[str, Any]


def write_demo(out_dir: Path | str, spec: DemoSpec = DemoSpec()) -> Demo:
    """Write the mock community for `spec` into `out_dir` and return its paths.

    The demo is built in a hidden temporary sibling of `out_dir` and renamed into place,
    so `out_dir` is either absent, the previous content, or complete. If `out_dir`
    already holds a complete demo of the same spec and generator version (every sha256
    checked), it is returned untouched. A demo of another spec is replaced; a directory
    holding anything else is refused.

    Args:
        out_dir: directory to create (its parents are created too).
        spec: what to generate.

    Returns:
        The `Demo` with paths to all files and the manifest.

    Raises:
        HelixflowError: `out_dir` is a file, or a non-empty directory that is not a demo.

    Example:
        >>> demo = write_demo(tmp / "demo", DemoSpec(n_pairs=1_000))  # doctest: +SKIP
        >>> demo.manifest["counts"]["pairs"]  # doctest: +SKIP
        1000
    """
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    existing = _matching_demo(out, spec)
    if existing is not None:
        return existing
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_dir(out, "tmp")
    try:
        manifest = _generate(tmp, spec)
        fsync_dir(tmp)
        return _install(tmp, out, spec, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- validation and directory handling -------------------------------------------------


def _demo_paths(out: Path, manifest: dict[str, Any]) -> Demo:
    """The `Demo` for directory `out`."""
    return Demo(
        dir=out,
        genomes=out / "genomes.fa",
        r1=out / "R1.fastq.gz",
        r2=out / "R2.fastq.gz",
        truth=out / "truth.tsv.gz",
        genes=out / "genes.tsv",
        variants=out / "variants.tsv",
        manifest=manifest,
    )


def _read_manifest(out: Path) -> dict[str, Any] | None:
    """The demo manifest in `out`, or None if there is none (or it is not ours)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        return None
    return manifest


def _matching_demo(out: Path, spec: DemoSpec) -> Demo | None:
    """The demo in `out` if it is complete, intact and made from `spec`; else None."""
    manifest = _read_manifest(out)
    if (
        manifest is None
        or manifest.get("version") != DEMO_VERSION
        or manifest.get("spec") != asdict(spec)
        or sorted(manifest.get("files", {})) != sorted(FILES)
    ):
        return None
    for name, meta in manifest["files"].items():
        path = out / name
        if not path.is_file() or path.stat().st_size != meta.get("bytes"):
            return None
        if sha256(path) != meta.get("sha256"):
            return None
    return _demo_paths(out, manifest)


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but nothing, an empty directory or an earlier demo."""
    hint = f"choose a new directory, or remove {out} if you no longer need it"
    if out.exists() and not out.is_dir():
        raise HelixflowError(f"{out} exists and is not a directory", hint=hint)
    if not out.is_dir() or not any(out.iterdir()):
        return
    demo_names = {*FILES, MANIFEST}
    if _read_manifest(out) is None or any(p.name not in demo_names for p in out.iterdir()):
        raise HelixflowError(
            f"{out} is not empty and does not hold a helixflow demo; refusing to replace it",
            hint=hint,
        )


def _install(tmp: Path, out: Path, spec: DemoSpec, manifest: dict[str, Any]) -> Demo:
    """Rename the finished `tmp` to `out`, replacing an earlier demo there."""
    try:
        os.rename(tmp, out)  # succeeds if `out` is absent or an empty directory
    except OSError:
        # Another writer may have finished the same demo meanwhile: use theirs.
        existing = _matching_demo(out, spec)
        if existing is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return existing
        _check_replaceable(out)
        old = sibling_dir(out, "old")
        os.rename(out, old / "demo")
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old / "demo", out)  # put the earlier demo back
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out.parent)
    return _demo_paths(out, manifest)



def _generate(dest: Path, spec: DemoSpec) -> dict[str, Any]:
    """Write every demo file into `dest` (manifest last) and return the manifest."""
    genome_seed, variant_seed, read_seed = np.random.SeedSequence(spec.seed).spawn(3)
    genomes = [
        make_genome(f"g{i + 1:02d}", spec.genome_length, gc, np.random.default_rng(child))
        for i, (gc, child) in enumerate(
            zip(gc_targets(spec.n_genomes), genome_seed.spawn(spec.n_genomes), strict=True)
        )
    ]
    mutated, variants = plant_variants(
        genomes, spec.n_variants, np.random.default_rng(variant_seed)
    )
    with open_out(dest / "genomes.fa", compress=False) as fh:
        fh.write(fasta(genomes))
    with open_out(dest / "genes.tsv", compress=False) as fh:
        rows = [f"{g.name}\t{s}\t{e}\t{strand}\n" for g in genomes for s, e, strand in g.genes]
        fh.write(("genome\tstart\tend\tstrand\n" + "".join(rows)).encode())
    with open_out(dest / "variants.tsv", compress=False) as fh:
        rows = [f"{g}\t{p}\t{r}\t{a}\n" for g, p, r, a in variants]
        fh.write(("genome\tpos\tref\talt\n" + "".join(rows)).encode())
    counts = write_reads(dest, spec, genomes, mutated, read_seed)
    counts["genes"] = sum(len(g.genes) for g in genomes)
    counts["variants"] = len(variants)
    manifest: dict[str, Any] = {
        "generator": GENERATOR,
        "version": DEMO_VERSION,
        "helixflow": __version__,
        "numpy": np.__version__,
        "seed": spec.seed,
        "spec": asdict(spec),
        "counts": counts,
        "genomes": [
            {
                "name": g.name,
                "length": len(g.codes),
                "gc_target": g.gc_target,
                "gc": round(float(np.isin(g.codes, (1, 2)).mean()), 4),
                "genes": len(g.genes),
            }
            for g in genomes
        ],
        "adapters": {
            "r1": ADAPTER_R1,
            "r2": ADAPTER_R2,
            "r1_readthrough": READTHROUGH_R1,
            "r2_readthrough": READTHROUGH_R2,
            "after_readthrough": "G",
        },
        "conventions": {
            "genes.tsv": "0-based half-open start/end (BED-like); '-' genes are reverse "
            "complemented",
            "variants.tsv": "1-based pos (VCF-like); clonal SNVs present in every read",
            "truth.tsv.gz": "one row per pair in file order; start 0-based; strand '+': "
            "R1 reads the forward strand from start, '-': R1 reads the reverse strand "
            "from start + insert - 1",
            "qualities": f"Phred+33, Q{MIN_Q}..Q{MAX_Q}, P(error) = 10^(-Q/10); N has Q{MIN_Q}",
            "duplicates": "exact sequence copies of another pair in the same block of "
            f"{CHUNK_PAIRS} pairs; half keep the original's qualities",
        },
        "files": {name: file_identity(dest / name) for name in FILES},
    }
    with open_out(dest / MANIFEST, compress=False) as fh:
        fh.write((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest
