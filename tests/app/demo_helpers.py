"""Readers of a demo's files, independent of the generator, shared by the demo tests."""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helixflow.app.demo import Demo, DemoSpec

SMALL = DemoSpec(seed=11, n_genomes=3, genome_length=8_000, n_pairs=2_000, n_variants=5)
COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
STOPS = {"TAA", "TAG", "TGA"}


@dataclass(frozen=True)
class Reads:
    """Both FASTQ files of a demo, parsed: ids, comments, sequences and qualities."""

    ids1: list[str]
    ids2: list[str]
    comments1: list[str]
    comments2: list[str]
    seq1: list[str]
    seq2: list[str]
    qual1: list[str]
    qual2: list[str]


def revcomp(seq: str) -> str:
    """Reverse complement of an ACGTN string."""
    return seq.translate(COMPLEMENT)[::-1]


def read_fastq(path: Path) -> list[tuple[str, str, str, str]]:
    """Records (header, sequence, plus line, quality), checking the 4-line layout."""
    lines = gzip.decompress(path.read_bytes()).decode("ascii").split("\n")
    assert lines[-1] == "", "file must end with a newline"
    lines = lines[:-1]
    assert len(lines) % 4 == 0
    return [tuple(lines[i : i + 4]) for i in range(0, len(lines), 4)]  # type: ignore[misc]


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a (possibly gzipped) TSV with a header line."""
    data = path.read_bytes()
    text = gzip.decompress(data).decode() if path.suffix == ".gz" else data.decode()
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


def read_fasta(path: Path) -> dict[str, str]:
    """Sequences of a FASTA file by record name."""
    seqs: dict[str, list[str]] = {}
    name = ""
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:].split()[0]
            seqs[name] = []
        else:
            seqs[name].append(line)
    return {k: "".join(v) for k, v in seqs.items()}


def mutated_genomes(demo: Demo) -> dict[str, str]:
    """The genomes the reads were drawn from: the reference with the planted SNVs."""
    genomes = {k: list(v) for k, v in read_fasta(demo.genomes).items()}
    for v in read_tsv(demo.variants):
        pos = int(v["pos"]) - 1
        assert genomes[v["genome"]][pos] == v["ref"]
        genomes[v["genome"]][pos] = v["alt"]
    return {k: "".join(v) for k, v in genomes.items()}


def parse_reads(demo: Demo) -> Reads:
    """Parse R1 and R2 of a demo."""
    cols = []
    for path in (demo.r1, demo.r2):
        records = read_fastq(path)
        headers = [r[0] for r in records]
        cols.append(
            (
                [h[1:].split(" ", 1)[0] for h in headers],
                [h.split(" ", 1)[1] if " " in h else "" for h in headers],
                [r[1] for r in records],
                [r[3] for r in records],
                records,
            )
        )
    for _, _, _, _, records in cols:
        assert all(r[0].startswith("@") and r[2] == "+" for r in records)
    (i1, c1, s1, q1, _), (i2, c2, s2, q2, _) = cols
    return Reads(i1, i2, c1, c2, s1, s2, q1, q2)


def expected_mates(row: dict[str, str], genomes: dict[str, str], manifest: dict) -> tuple[str, str]:
    """Error-free R1 and R2 of a truth row, reconstructed independently of the generator."""
    rl = manifest["spec"]["read_length"]
    start, insert = int(row["start"]), int(row["insert"])
    fragment = genomes[row["genome"]][start : start + insert]
    top, bottom = (fragment, revcomp(fragment))
    if row["strand"] == "-":
        top, bottom = bottom, top
    ad = manifest["adapters"]
    r1 = (top + ad["r1_readthrough"] + "G" * rl)[:rl]
    r2 = (bottom + ad["r2_readthrough"] + "G" * rl)[:rl]
    return r1, r2


def as_array(strings: list[str]) -> np.ndarray:
    """Equal-length strings as a 2-D uint8 array."""
    return np.frombuffer("".join(strings).encode("ascii"), dtype=np.uint8).reshape(len(strings), -1)

