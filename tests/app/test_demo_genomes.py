"""The demo's genomes, genes and planted variants: composition, ORFs, SNVs in the reads."""

from __future__ import annotations

import itertools

import numpy as np

from helixflow.app.demo import Demo, DemoSpec
from tests.app.demo_helpers import COMPLEMENT, STOPS, Reads, read_fasta, read_tsv, revcomp


def test_genomes_differ_in_gc_as_designed(default_demo: Demo) -> None:
    """Genome GC is on target and far enough apart to tell genomes apart."""
    genomes = read_fasta(default_demo.genomes)
    design = {g["name"]: g["gc_target"] for g in default_demo.manifest["genomes"]}
    assert list(genomes) == list(design) and len(genomes) == DemoSpec().n_genomes
    gc = {}
    for name, seq in genomes.items():
        assert len(seq) == DemoSpec().genome_length and set(seq) <= set("ACGT")
        gc[name] = (seq.count("G") + seq.count("C")) / len(seq)
        assert abs(gc[name] - design[name]) < 0.015, (name, gc[name], design[name])
    values = [gc[n] for n in sorted(gc)]
    assert all(b - a > 0.08 for a, b in itertools.pairwise(values))


def test_kmer_spectra_cluster_by_genome(default_demo: Demo) -> None:
    """2-kb windows land nearest their own genome's 4-mer spectrum."""
    genomes = read_fasta(default_demo.genomes)
    code = np.zeros(256, dtype=np.int64)
    code[np.frombuffer(b"ACGT", dtype=np.uint8)] = np.arange(4)

    def spectrum(seq: str) -> np.ndarray:
        c = code[np.frombuffer(seq.encode(), dtype=np.uint8)]
        idx = c[:-3] * 64 + c[1:-2] * 16 + c[2:-1] * 4 + c[3:]
        counts = np.bincount(idx, minlength=256).astype(float)
        return counts / counts.sum()

    centroids = np.array([spectrum(s) for s in genomes.values()])
    hits = total = 0
    for label, seq in enumerate(genomes.values()):
        for w in range(0, len(seq) - 2_000 + 1, 2_000):
            d = np.abs(centroids - spectrum(seq[w : w + 2_000])).sum(axis=1)
            hits += int(d.argmin() == label)
            total += 1
    assert hits / total > 0.95


def test_genes_are_orfs_on_both_strands(default_demo: Demo) -> None:
    """Truth genes are ATG...stop ORFs without in-frame stops, on both strands."""
    genomes = read_fasta(default_demo.genomes)
    genes = read_tsv(default_demo.genes)
    assert list(genes[0]) == ["genome", "start", "end", "strand"]
    for name in genomes:
        mine = [g for g in genes if g["genome"] == name]
        assert len(mine) > 10 and {g["strand"] for g in mine} == {"+", "-"}
        spans = sorted((int(g["start"]), int(g["end"])) for g in mine)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    for g in genes:
        start, end = int(g["start"]), int(g["end"])
        seq = genomes[g["genome"]]
        assert 0 <= start < end <= len(seq) and (end - start) % 3 == 0
        orf = seq[start:end] if g["strand"] == "+" else revcomp(seq[start:end])
        codons = [orf[i : i + 3] for i in range(0, len(orf), 3)]
        assert codons[0] == "ATG" and codons[-1] in STOPS
        assert not STOPS & set(codons[1:-1]), g


def test_planted_variants_are_in_the_reads(
    default_demo: Demo, reads: Reads, truth: list[dict[str, str]]
) -> None:
    """Reads covering a planted SNV show the alt allele."""
    reference = read_fasta(default_demo.genomes)
    variants = read_tsv(default_demo.variants)
    rl = DemoSpec().read_length
    assert len({(v["genome"], v["pos"]) for v in variants}) == len(variants) == 20
    for v in variants:
        p = int(v["pos"]) - 1
        assert reference[v["genome"]][p] == v["ref"] != v["alt"]
        bases = []
        for i, r in enumerate(truth):
            start, insert = int(r["start"]), int(r["insert"])
            if r["genome"] != v["genome"] or not start <= p < start + insert:
                continue
            if r["is_empty"] == "1" or r["is_duplicate"] == "1":
                continue
            top, bottom = (reads.seq1[i], reads.seq2[i])
            if r["strand"] == "-":
                top, bottom = bottom, top
            if p - start < rl:
                bases.append(top[p - start])
            if start + insert - 1 - p < rl:
                bases.append(bottom[start + insert - 1 - p].translate(COMPLEMENT))
        assert len(bases) >= 5, v
        assert bases.count(v["alt"]) >= 0.9 * len(bases), (v, bases)

