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
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from helixflow import __version__
from helixflow.errors import HelixflowError
from helixflow.files import fsync_dir
from helixflow.tasks.reads import base_codes

DEMO_VERSION = 1
"""Bump when the output for a given spec changes: existing demos are then rewritten."""
GENERATOR = "helixflow.app.demo"

ADAPTER_R1 = "AGATCGGAAGAGCACACGTCTGAACTCCAGTCA"
ADAPTER_R2 = "AGATCGGAAGAGCGTCGTGTAGGGAAAGAGTGT"
INDEX_I7 = "ATCACG"
INDEX_I5 = "AGATCTCG"
READTHROUGH_R1 = ADAPTER_R1 + "C" + INDEX_I7 + "ATCTCGTATGCCGTCTTCTGCTTG"
"""What R1 reads after the insert: adapter, i7 index, P7; polyG follows."""
READTHROUGH_R2 = ADAPTER_R2 + INDEX_I5 + "GTGTAGATCTCGGTGGTCGCCGTATCATT"
"""What R2 reads after the insert: adapter, i5 index, P5; polyG follows."""

INSTRUMENT, RUN, FLOWCELL, LANE = "A00123", 8, "HDEMODSXY", 1
FILES = ("genomes.fa", "genes.tsv", "variants.tsv", "R1.fastq.gz", "R2.fastq.gz", "truth.tsv.gz")
MANIFEST = "manifest.json"
TRUTH_COLUMNS = (
    "name",
    "genome",
    "start",
    "insert",
    "strand",
    "is_duplicate",
    "has_adapter",
    "is_empty",
    "has_polyg",
    "duplicate_of",
)

CHUNK_PAIRS = 50_000
MIN_INSERT = 35
GC_LOW, GC_HIGH = 0.30, 0.68
GENE_CODONS = (100, 600)
INTERGENIC = (40, 300)
VARIANT_SPACING = 10
MIN_Q, MAX_Q = 2, 41
N_RATE = 2e-5
FASTA_WIDTH = 60
GZIP_LEVEL = 4  # 3x faster than 6 for 3% more bytes

_BASES = np.frombuffer(b"ACGTN", dtype=np.uint8)
_N = 4
_CODE = base_codes(b"ACGTN", invalid=255, lower_case=False)
_STOPS = ("TAA", "TAG", "TGA")
_P_ERROR = (10.0 ** (-np.arange(MAX_Q + 1) / 10.0)).astype(np.float32)


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
    tmp = _sibling_dir(out, "tmp")
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
        if _sha256(path) != meta.get("sha256"):
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
        old = _sibling_dir(out, "old")
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


def _sibling_dir(out: Path, role: str) -> Path:
    """A new hidden directory next to `out` (same file system, so renames are atomic).

    Made with `os.mkdir` so it gets the usual umask permissions (mkdtemp would give 0700).
    """
    while True:
        path = out.parent / f".{out.name}.{role}-{secrets.token_hex(6)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


def _sha256(path: Path, *, decompress: bool = False) -> str:
    """Hex sha256 of a file's bytes (or of its gunzipped content)."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") if decompress else path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_identity(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file; for .gz also of the content, which does not depend on
    the zlib build (compressed bytes can differ between zlib implementations)."""
    identity: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    if path.suffix == ".gz":
        identity["content_sha256"] = _sha256(path, decompress=True)
    return identity


@contextmanager
def _open_out(path: Path, *, compress: bool) -> Iterator[IO[bytes]]:
    """A binary writer, gzip with mtime 0 and no file name so bytes depend on content only."""
    with path.open("wb") as raw:
        if compress:
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
            ) as gz:
                yield gz
        else:
            yield raw
        raw.flush()
        os.fsync(raw.fileno())


# --- genomes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Genome:
    """One synthetic genome: base codes (0..3 = ACGT), genes and its design GC."""

    name: str
    codes: np.ndarray
    genes: list[tuple[int, int, str]]
    gc_target: float


def _gc_targets(n_genomes: int) -> list[float]:
    """Design GC content of each genome, evenly spread so compositions differ."""
    if n_genomes == 1:
        return [0.5]
    return [round(float(x), 4) for x in np.linspace(GC_LOW, GC_HIGH, n_genomes)]


def _kmers(k: int) -> np.ndarray:
    """All 4**k k-mers as rows of base codes, in lexicographic ACGT order."""
    return np.array(list(itertools.product(range(4), repeat=k)), dtype=np.uint8)


def _composition_weights(kmers: np.ndarray, gc: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities of k-mers: a genome-specific random bias, tilted to expected GC `gc`.

    The bias (log-normal per k-mer) gives each genome its own codon usage and 4-mer
    spectrum; the tilt exp(t * #GC) is solved by bisection so composition is as designed.
    """
    bias = rng.lognormal(0.0, 0.6, len(kmers))
    n_gc = np.isin(kmers, (1, 2)).sum(axis=1)
    low, high = -20.0, 20.0
    for _ in range(60):
        t = (low + high) / 2
        p = bias * np.exp(t * (n_gc - kmers.shape[1] / 2))
        p /= p.sum()
        if (p * n_gc).sum() / kmers.shape[1] < gc:
            low = t
        else:
            high = t
    return p


def _encode(seq: str) -> np.ndarray:
    """Base codes of an ACGTN string."""
    return _CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


def _decode(codes: np.ndarray) -> str:
    """The ACGTN string of base codes."""
    return _BASES[codes].tobytes().decode("ascii")


def _revcomp(codes: np.ndarray) -> np.ndarray:
    """Reverse complement of ACGT base codes."""
    return (3 - codes)[::-1]


def _make_genome(name: str, length: int, gc: float, rng: np.random.Generator) -> _Genome:
    """A genome of ORFs (both strands) and spacers with its own codon and 4-mer bias."""
    codons = _kmers(3)
    codon_str = ["".join("ACGT"[b] for b in c) for c in codons]
    sense = np.array([c not in _STOPS for c in codon_str])
    sense_idx = np.flatnonzero(sense)
    codon_p = np.zeros(len(codons))
    codon_p[sense_idx] = _composition_weights(codons[sense_idx], gc, rng)
    stop_idx = np.flatnonzero(~sense)
    stop_p = _composition_weights(codons[stop_idx], gc, rng)
    tetra = _kmers(4)
    tetra_p = _composition_weights(tetra, gc, rng)

    # Layout: spacer, gene, spacer, gene, ..., final spacer up to `length`.
    genes: list[tuple[int, int, str]] = []
    cursor = 0
    while True:
        gap = int(rng.integers(INTERGENIC[0], INTERGENIC[1] + 1))
        gene_len = 3 * int(rng.integers(GENE_CODONS[0], GENE_CODONS[1] + 1))
        if cursor + gap + gene_len + INTERGENIC[0] > length:
            break
        strand = "+" if rng.random() < 0.5 else "-"
        genes.append((cursor + gap, cursor + gap + gene_len, strand))
        cursor += gap + gene_len
    if len(genes) >= 2 and len({s for _, _, s in genes}) == 1:
        start, end, strand = genes[-1]
        genes[-1] = (start, end, "-" if strand == "+" else "+")

    genome = np.empty(length, dtype=np.uint8)
    coding = np.zeros(length, dtype=bool)
    n_inner = sum((end - start) // 3 - 2 for start, end, _ in genes)
    inner = codons[rng.choice(len(codons), size=n_inner, p=codon_p)]
    stops = codons[stop_idx[rng.choice(len(stop_idx), size=len(genes), p=stop_p)]]
    atg = np.array([0, 3, 2], dtype=np.uint8)
    used = 0
    for i, (start, end, strand) in enumerate(genes):
        k = (end - start) // 3 - 2
        orf = np.concatenate([atg, inner[used : used + k].ravel(), stops[i]])
        used += k
        genome[start:end] = orf if strand == "+" else _revcomp(orf)
        coding[start:end] = True
    n_spacer = int(length - coding.sum())
    spacer = tetra[rng.choice(len(tetra), size=-(-n_spacer // 4), p=tetra_p)].ravel()
    genome[~coding] = spacer[:n_spacer]
    return _Genome(name=name, codes=genome, genes=genes, gc_target=gc)


def _plant_variants(
    genomes: list[_Genome], n_variants: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[tuple[str, int, str, str]]]:
    """Mutated copies of the genomes and the SNVs planted (genome, 1-based pos, ref, alt)."""
    mutated = [g.codes.copy() for g in genomes]
    if n_variants == 0:
        return mutated, []
    lengths = np.array([len(g.codes) for g in genomes])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    slots = rng.choice(int(offsets[-1]) // VARIANT_SPACING, size=n_variants, replace=False)
    where = np.sort(slots * VARIANT_SPACING + rng.integers(0, VARIANT_SPACING // 2, n_variants))
    which = np.searchsorted(offsets, where, side="right") - 1
    pos = where - offsets[which]
    ref = np.array([mutated[g][p] for g, p in zip(which, pos, strict=True)], dtype=np.uint8)
    transition = rng.random(n_variants) < 2 / 3
    transversion = np.where(rng.random(n_variants) < 0.5, 1, 3).astype(np.uint8)
    alt = np.where(transition, (ref + 2) % 4, (ref + transversion) % 4).astype(np.uint8)
    rows = []
    for g, p, r, a in zip(which, pos, ref, alt, strict=True):
        mutated[g][p] = a
        rows.append((genomes[g].name, int(p) + 1, "ACGT"[r], "ACGT"[a]))
    return mutated, rows


# --- reads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    """One block of simulated pairs in file order (codes 0..4 = ACGTN, Phred scores)."""

    genome: np.ndarray
    start: np.ndarray
    insert: np.ndarray
    reverse: np.ndarray
    duplicate_of: np.ndarray  # index within the block, -1 if not a duplicate
    empty: np.ndarray
    r1: np.ndarray
    r2: np.ndarray
    q1: np.ndarray
    q2: np.ndarray
    substitutions: int  # in non-empty, non-duplicate reads; Ns not counted


def _allocate(total: int, sizes: list[int]) -> list[int]:
    """Split `total` over blocks proportionally to `sizes`, summing exactly to `total`."""
    cum = np.cumsum(sizes)
    marks = np.floor(total * cum / cum[-1] + 0.5).astype(int)
    return np.diff(np.concatenate([[0], marks])).tolist()


def _block_sizes(n_pairs: int) -> list[int]:
    """Near-equal block sizes of at most `CHUNK_PAIRS` pairs."""
    n_blocks = -(-n_pairs // CHUNK_PAIRS)
    base, extra = divmod(n_pairs, n_blocks)
    return [base + (i < extra) for i in range(n_blocks)]


def _readthrough(seq: str, read_length: int) -> np.ndarray:
    """Codes a mate reads past the insert: the adapter construct, then polyG."""
    tail = (seq + "G" * read_length)[:read_length]
    return _encode(tail)


def _true_mates(
    fwd: np.ndarray,
    start: np.ndarray,
    insert: np.ndarray,
    seq: np.ndarray,
    tail: np.ndarray,
    read_length: int,
) -> np.ndarray:
    """Error-free mates: the insert read from one end (complemented if reverse), then tail.

    `start` is an index into the concatenated genomes `seq`; `fwd` says whether the mate
    reads the forward strand from `start` or the reverse strand from the fragment's end.
    """
    j = np.arange(read_length)
    last = (start + insert - 1)[:, None]
    pos = np.where(fwd[:, None], start[:, None] + j, last - j)
    inside = j < insert[:, None]
    pos = np.clip(pos, start[:, None], last)
    codes = seq[pos]
    codes = np.where(fwd[:, None], codes, 3 - codes)
    tail_at = np.clip(j - insert[:, None], 0, read_length - 1)
    return np.where(inside, codes, tail[tail_at]).astype(np.uint8)


def _qualities(rng: np.random.Generator, n: int, read_length: int, mate: int) -> np.ndarray:
    """Phred scores that rise over the first cycles, then decline towards 3'.

    R2 is a little worse than R1; each read has its own offset, 3% of reads degrade
    steeply, and 0.4% of bases dip to Q2-15 (bubbles, focus).
    """
    j = np.arange(read_length, dtype=np.float32)
    x = j / max(read_length - 1, 1)
    decline = 8.0 if mate == 1 else 11.0
    profile = 33.0 + 4.0 * np.minimum(j, 4) / 4 - decline * x**2 - (mate - 1)
    q = profile + rng.normal(0.0, 1.5, (n, 1)).astype(np.float32)
    bad = rng.random((n, 1), dtype=np.float32) < 0.03
    q = q - bad * (18.0 * x**1.5)
    q = q + rng.standard_normal((n, read_length), dtype=np.float32) * 2.5
    dip = rng.random((n, read_length), dtype=np.float32) < 0.004
    q = np.where(dip, rng.uniform(MIN_Q, 15.0, (n, read_length)).astype(np.float32), q)
    return np.clip(np.rint(q), MIN_Q, MAX_Q).astype(np.uint8)


def _sequence(
    rng: np.random.Generator, true: np.ndarray, q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply substitutions with P = 10^(-Q/10) and a few Ns (Q2) to error-free codes.

    Returns the observed codes and the qualities (set to Q2 at Ns).
    """
    err = rng.random(true.shape, dtype=np.float32) < _P_ERROR[q]
    shift = rng.integers(1, 4, true.shape, dtype=np.uint8)
    codes = np.where(err, (true + shift) % 4, true).astype(np.uint8)
    n_mask = rng.random(true.shape, dtype=np.float32) < N_RATE
    codes[n_mask] = _N
    return codes, np.where(n_mask, MIN_Q, q).astype(np.uint8)


def _substitutions(true: np.ndarray, observed: np.ndarray) -> int:
    """Bases that differ from the truth, Ns not counted."""
    return int(((observed != true) & (observed != _N)).sum())


def _simulate_block(
    rng: np.random.Generator,
    size: int,
    n_dup: int,
    n_empty: int,
    seq: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    spec: DemoSpec,
) -> _Batch:
    """Simulate `size` pairs: `size - n_dup` sampled fragments plus `n_dup` exact copies."""
    rl = spec.read_length
    n_uniq = size - n_dup
    genome = rng.choice(len(lengths), size=n_uniq, p=lengths / lengths.sum())
    insert = np.rint(rng.normal(spec.insert_mean, spec.insert_sd, n_uniq)).astype(np.int64)
    insert = np.clip(insert, MIN_INSERT, lengths[genome])
    start = rng.integers(0, lengths[genome] - insert + 1)
    reverse = rng.random(n_uniq) < 0.5
    empty = np.zeros(n_uniq, dtype=bool)
    empty[rng.choice(n_uniq, size=n_empty, replace=False)] = True

    at = offsets[genome] + start
    t1 = _true_mates(~reverse, at, insert, seq, _readthrough(READTHROUGH_R1, rl), rl)
    t2 = _true_mates(reverse, at, insert, seq, _readthrough(READTHROUGH_R2, rl), rl)
    r1, q1 = _sequence(rng, t1, _qualities(rng, n_uniq, rl, 1))
    r2, q2 = _sequence(rng, t2, _qualities(rng, n_uniq, rl, 2))
    full = ~empty
    substitutions = _substitutions(t1[full], r1[full]) + _substitutions(t2[full], r2[full])

    candidates = np.flatnonzero(~empty)
    if n_dup and not len(candidates):
        raise ValueError("no non-empty pair to duplicate; lower empty_reads")
    orig = rng.choice(candidates, size=n_dup) if n_dup else np.zeros(0, dtype=np.int64)
    keep_q = rng.random(n_dup) < 0.5
    dq1 = np.where(keep_q[:, None], q1[orig], _qualities(rng, n_dup, rl, 1))
    dq2 = np.where(keep_q[:, None], q2[orig], _qualities(rng, n_dup, rl, 2))
    dq1[r1[orig] == _N] = MIN_Q
    dq2[r2[orig] == _N] = MIN_Q

    order = rng.permutation(size)
    source = np.concatenate([np.arange(n_uniq), orig])
    dup_of = np.concatenate([np.full(n_uniq, -1), orig])
    position = np.empty(size, dtype=np.int64)
    position[order] = np.arange(size)  # where each pre-shuffle pair lands
    dup_of = np.where(dup_of >= 0, position[np.maximum(dup_of, 0)], -1)
    return _Batch(
        genome=genome[source][order],
        start=start[source][order],
        insert=insert[source][order],
        reverse=reverse[source][order],
        duplicate_of=dup_of[order],
        empty=np.concatenate([empty, np.zeros(n_dup, dtype=bool)])[order],
        r1=np.concatenate([r1, r1[orig]])[order],
        r2=np.concatenate([r2, r2[orig]])[order],
        q1=np.concatenate([q1, dq1])[order],
        q2=np.concatenate([q2, dq2])[order],
        substitutions=substitutions,
    )


def _read_names(first: int, n: int) -> list[str]:
    """Unique Casava 1.8 read ids for pairs `first` .. `first + n - 1` (file order)."""
    names = []
    for i in range(first, first + n):
        tile = 1101 + i // 10_000
        x = 1000 + 37 * ((i % 10_000) // 100)
        y = 1000 + 23 * (i % 100)
        names.append(f"{INSTRUMENT}:{RUN}:{FLOWCELL}:{LANE}:{tile}:{x}:{y}")
    return names


def _fastq(
    names: list[str], mate: int, codes: np.ndarray, q: np.ndarray, empty: np.ndarray
) -> bytes:
    """FASTQ records; empty reads get an empty sequence and quality line."""
    n, rl = codes.shape
    width = 2 * rl + 4
    body = np.empty((n, width), dtype=np.uint8)
    body[:, :rl] = _BASES[codes]
    body[:, rl : rl + 3] = np.frombuffer(b"\n+\n", dtype=np.uint8)
    body[:, rl + 3 : 2 * rl + 3] = q + 33
    body[:, -1] = ord("\n")
    flat = body.tobytes()
    comment = f" {mate}:N:0:{INDEX_I7}\n"
    parts = []
    for i, name in enumerate(names):
        parts.append(f"@{name}{comment}".encode())
        parts.append(b"\n+\n\n" if empty[i] else flat[i * width : (i + 1) * width])
    return b"".join(parts)


def _flags(batch: _Batch, read_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: reads into the adapter; reads past the whole construct into polyG."""
    polyg_from = read_length - min(len(READTHROUGH_R1), len(READTHROUGH_R2))
    full = ~batch.empty
    return (batch.insert < read_length) & full, (batch.insert < polyg_from) & full


def _truth(names: list[str], batch: _Batch, genome_names: list[str], read_length: int) -> bytes:
    """Truth rows (one per pair, file order) as TSV bytes."""
    adapter, polyg = _flags(batch, read_length)
    columns = zip(
        names,
        [genome_names[g] for g in batch.genome.tolist()],
        batch.start.tolist(),
        batch.insert.tolist(),
        ["-" if r else "+" for r in batch.reverse.tolist()],
        [names[d] if d >= 0 else "" for d in batch.duplicate_of.tolist()],
        adapter.tolist(),
        batch.empty.tolist(),
        polyg.tolist(),
        strict=True,
    )
    lines = [
        f"{name}\t{genome}\t{start}\t{insert}\t{strand}\t{int(bool(dup_of))}\t"
        f"{int(has_adapter)}\t{int(is_empty)}\t{int(has_polyg)}\t{dup_of}\n"
        for name, genome, start, insert, strand, dup_of, has_adapter, is_empty, has_polyg in columns
    ]
    return "".join(lines).encode()


def _write_reads(
    dest: Path,
    spec: DemoSpec,
    genomes: list[_Genome],
    mutated: list[np.ndarray],
    seed: np.random.SeedSequence,
) -> dict[str, Any]:
    """Simulate all pairs block by block into R1/R2/truth; return the counts."""
    sizes = _block_sizes(spec.n_pairs)
    n_dup = math.floor(spec.duplicate_fraction * spec.n_pairs + 0.5)
    dups = _allocate(n_dup, sizes)
    empties = _allocate(spec.empty_reads, sizes)
    seq = np.concatenate(mutated)
    lengths = np.array([len(m) for m in mutated], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    genome_names = [g.name for g in genomes]
    counts: dict[str, Any] = dict.fromkeys(
        (
            "pairs",
            "duplicate_pairs",
            "empty_pairs",
            "adapter_pairs",
            "polyg_pairs",
            "bases",
            "ambiguous_bases",
            "substitution_errors",
        ),
        0,
    )
    per_genome = np.zeros(len(genomes), dtype=np.int64)
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=2) as pool:
        f1 = stack.enter_context(_open_out(dest / "R1.fastq.gz", compress=True))
        f2 = stack.enter_context(_open_out(dest / "R2.fastq.gz", compress=True))
        ft = stack.enter_context(_open_out(dest / "truth.tsv.gz", compress=True))
        ft.write(("\t".join(TRUTH_COLUMNS) + "\n").encode())
        first = 0
        children = seed.spawn(len(sizes))
        for size, k_dup, k_empty, child in zip(sizes, dups, empties, children, strict=True):
            rng = np.random.default_rng(child)
            b = _simulate_block(rng, size, k_dup, k_empty, seq, offsets, lengths, spec)
            names = _read_names(first, size)
            # zlib releases the GIL: compress both mates side by side.
            w1 = pool.submit(f1.write, _fastq(names, 1, b.r1, b.q1, b.empty))
            w2 = pool.submit(f2.write, _fastq(names, 2, b.r2, b.q2, b.empty))
            ft.write(_truth(names, b, genome_names, spec.read_length))
            w1.result()
            w2.result()
            full = ~b.empty
            counts["pairs"] += size
            counts["duplicate_pairs"] += int((b.duplicate_of >= 0).sum())
            counts["empty_pairs"] += int(b.empty.sum())
            adapter, polyg = _flags(b, spec.read_length)
            counts["adapter_pairs"] += int(adapter.sum())
            counts["polyg_pairs"] += int(polyg.sum())
            counts["bases"] += 2 * spec.read_length * int(full.sum())
            counts["ambiguous_bases"] += int((b.r1[full] == _N).sum() + (b.r2[full] == _N).sum())
            counts["substitution_errors"] += b.substitutions
            per_genome += np.bincount(b.genome, minlength=len(genomes))
            first += size
    counts["pairs_per_genome"] = dict(zip(genome_names, per_genome.tolist(), strict=True))
    return counts


# --- files -----------------------------------------------------------------------------


def _fasta(genomes: list[_Genome]) -> bytes:
    """FASTA of the reference genomes, 60 bases per line."""
    out = []
    for g in genomes:
        s = _decode(g.codes)
        out.append(
            f">{g.name} length={len(s)} gc_target={g.gc_target:.3f} genes={len(g.genes)}"
            " synthetic helixflow demo\n"
        )
        out.extend(s[i : i + FASTA_WIDTH] + "\n" for i in range(0, len(s), FASTA_WIDTH))
    return "".join(out).encode()


def _generate(dest: Path, spec: DemoSpec) -> dict[str, Any]:
    """Write every demo file into `dest` (manifest last) and return the manifest."""
    genome_seed, variant_seed, read_seed = np.random.SeedSequence(spec.seed).spawn(3)
    genomes = [
        _make_genome(f"g{i + 1:02d}", spec.genome_length, gc, np.random.default_rng(child))
        for i, (gc, child) in enumerate(
            zip(_gc_targets(spec.n_genomes), genome_seed.spawn(spec.n_genomes), strict=True)
        )
    ]
    mutated, variants = _plant_variants(
        genomes, spec.n_variants, np.random.default_rng(variant_seed)
    )
    with _open_out(dest / "genomes.fa", compress=False) as fh:
        fh.write(_fasta(genomes))
    with _open_out(dest / "genes.tsv", compress=False) as fh:
        rows = [f"{g.name}\t{s}\t{e}\t{strand}\n" for g in genomes for s, e, strand in g.genes]
        fh.write(("genome\tstart\tend\tstrand\n" + "".join(rows)).encode())
    with _open_out(dest / "variants.tsv", compress=False) as fh:
        rows = [f"{g}\t{p}\t{r}\t{a}\n" for g, p, r, a in variants]
        fh.write(("genome\tpos\tref\talt\n" + "".join(rows)).encode())
    counts = _write_reads(dest, spec, genomes, mutated, read_seed)
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
        "files": {name: _file_identity(dest / name) for name in FILES},
    }
    with _open_out(dest / MANIFEST, compress=False) as fh:
        fh.write((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest
