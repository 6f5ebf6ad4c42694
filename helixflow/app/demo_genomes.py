"""The demo's reference genomes: distinct compositions, genes on both strands, planted SNVs.

Genome *i* has its own GC target (evenly spread over `GC_LOW`..`GC_HIGH`), its own codon
usage and its own intergenic 4-mer bias, so k-mer spectra cluster by genome. Each genome is
a run of genes (ATG ... stop ORFs, on both strands) separated by intergenic spacers.
Bases are held as codes 0..3 = ACGT (4 = N, in reads). Part of `helixflow.app.demo`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from helixflow.tasks.reads import base_codes

GC_LOW, GC_HIGH = 0.30, 0.68
GENE_CODONS = (100, 600)
INTERGENIC = (40, 300)
VARIANT_SPACING = 10
FASTA_WIDTH = 60

BASES = np.frombuffer(b"ACGTN", dtype=np.uint8)
_CODE = base_codes(b"ACGTN", invalid=255, lower_case=False)
_STOPS = ("TAA", "TAG", "TGA")


@dataclass(frozen=True)
class Genome:
    """One synthetic genome: base codes (0..3 = ACGT), genes and its design GC."""

    name: str
    codes: np.ndarray
    genes: list[tuple[int, int, str]]
    gc_target: float


def gc_targets(n_genomes: int) -> list[float]:
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


def encode(seq: str) -> np.ndarray:
    """Base codes of an ACGTN string."""
    return _CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


def decode(codes: np.ndarray) -> str:
    """The ACGTN string of base codes."""
    return BASES[codes].tobytes().decode("ascii")


def revcomp(codes: np.ndarray) -> np.ndarray:
    """Reverse complement of ACGT base codes."""
    return (3 - codes)[::-1]


def make_genome(name: str, length: int, gc: float, rng: np.random.Generator) -> Genome:
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
        genome[start:end] = orf if strand == "+" else revcomp(orf)
        coding[start:end] = True
    n_spacer = int(length - coding.sum())
    spacer = tetra[rng.choice(len(tetra), size=-(-n_spacer // 4), p=tetra_p)].ravel()
    genome[~coding] = spacer[:n_spacer]
    return Genome(name=name, codes=genome, genes=genes, gc_target=gc)


def plant_variants(
    genomes: list[Genome], n_variants: int, rng: np.random.Generator
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



def fasta(genomes: list[Genome]) -> bytes:
    """FASTA of the reference genomes, 60 bases per line."""
    out = []
    for g in genomes:
        s = decode(g.codes)
        out.append(
            f">{g.name} length={len(s)} gc_target={g.gc_target:.3f} genes={len(g.genes)}"
            " synthetic helixflow demo\n"
        )
        out.extend(s[i : i + FASTA_WIDTH] + "\n" for i in range(0, len(s), FASTA_WIDTH))
    return "".join(out).encode()
