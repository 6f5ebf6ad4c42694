"""Tests of the synthetic mock community (`helixflow.app.demo`), checked against its own truth."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import itertools
import json
import math
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helixflow.app import demo as demo_mod
from helixflow.app.demo import ADAPTER_R1, ADAPTER_R2, Demo, DemoSpec, write_demo
from helixflow.errors import HelixflowError
from tests.conftest import require_tool

SMALL = DemoSpec(seed=11, n_genomes=3, genome_length=8_000, n_pairs=2_000, n_variants=5)
_COMP = str.maketrans("ACGTN", "TGCAN")
_STOPS = {"TAA", "TAG", "TGA"}


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
    return seq.translate(_COMP)[::-1]


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


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The default demo (the one users get), written once for the module."""
    return write_demo(tmp_path_factory.mktemp("default") / "demo")


@pytest.fixture(scope="module")
def reads(default_demo: Demo) -> Reads:
    """Parsed reads of the default demo."""
    return parse_reads(default_demo)


@pytest.fixture(scope="module")
def truth(default_demo: Demo) -> list[dict[str, str]]:
    """Truth rows of the default demo."""
    return read_tsv(default_demo.truth)


# --- determinism and files -------------------------------------------------------------


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    """Determinism: a seed fixes every byte, gzip headers included."""
    a = write_demo(tmp_path / "a", SMALL)
    b = write_demo(tmp_path / "b", SMALL)
    c = write_demo(tmp_path / "c", DemoSpec(**{**SMALL.__dict__, "seed": 12}))
    names = [*demo_mod.FILES, demo_mod.MANIFEST]
    for name in names:
        assert (a.dir / name).read_bytes() == (b.dir / name).read_bytes(), name
    for name in demo_mod.FILES:
        assert a.manifest["files"][name]["sha256"] != c.manifest["files"][name]["sha256"], name
    # gzip headers carry no timestamp and no file name
    for path in (a.r1, a.r2, a.truth):
        header = path.read_bytes()[:10]
        assert header[:3] == b"\x1f\x8b\x08" and header[3] == 0 and header[4:8] == b"\0\0\0\0"


def test_manifest_hashes_match_files(default_demo: Demo) -> None:
    """The manifest on disk is the one returned and its hashes are the files'."""
    on_disk = json.loads((default_demo.dir / "manifest.json").read_text())
    assert on_disk == default_demo.manifest
    for name, meta in on_disk["files"].items():
        data = (default_demo.dir / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
        assert len(data) == meta["bytes"]
        if name.endswith(".gz"):
            assert hashlib.sha256(gzip.decompress(data)).hexdigest() == meta["content_sha256"]
    assert on_disk["spec"] == DemoSpec().__dict__


def test_genomes_do_not_depend_on_read_parameters(tmp_path: Path) -> None:
    """Separate random streams: more or fewer reads keep the same references."""
    a = write_demo(tmp_path / "a", SMALL)
    b = write_demo(tmp_path / "b", DemoSpec(**{**SMALL.__dict__, "n_pairs": 500}))
    assert a.genomes.read_bytes() == b.genomes.read_bytes()
    assert a.genes.read_bytes() == b.genes.read_bytes()
    assert a.variants.read_bytes() == b.variants.read_bytes()


def test_rerun_with_same_spec_returns_existing_demo_untouched(tmp_path: Path) -> None:
    """A complete demo of the same spec is reused, not rewritten."""
    first = write_demo(tmp_path / "d", SMALL)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.dir.iterdir()}
    second = write_demo(tmp_path / "d", SMALL)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in second.dir.iterdir()} == stamps


def test_corrupted_demo_is_rewritten(tmp_path: Path) -> None:
    """A file that no longer matches its sha256 makes the demo incomplete."""
    first = write_demo(tmp_path / "d", SMALL)
    good = first.r1.read_bytes()
    first.r1.write_bytes(good[: len(good) // 2])
    again = write_demo(tmp_path / "d", SMALL)
    assert again.r1.read_bytes() == good


def test_other_spec_replaces_a_demo_without_leftovers(tmp_path: Path) -> None:
    """An earlier demo is swapped out and no hidden siblings remain."""
    write_demo(tmp_path / "d", SMALL)
    other = DemoSpec(**{**SMALL.__dict__, "seed": 99})
    demo = write_demo(tmp_path / "d", other)
    assert demo.manifest["seed"] == 99
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["seed"] == 99
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_crash_leaves_no_partial_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure mid-write leaves nothing, or the earlier demo, behind."""

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(demo_mod, "_write_reads", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_demo(tmp_path / "new", SMALL)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    old = write_demo(tmp_path / "old", SMALL)
    before = {p.name: p.read_bytes() for p in old.dir.iterdir()}
    monkeypatch.setattr(demo_mod, "_write_reads", boom)
    with pytest.raises(RuntimeError):
        write_demo(tmp_path / "old", DemoSpec(**{**SMALL.__dict__, "seed": 5}))
    assert {p.name: p.read_bytes() for p in old.dir.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_concurrent_writers_of_one_demo_agree(tmp_path: Path) -> None:
    """Two writers racing for one directory both end with the same demo."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        demos = list(pool.map(lambda _: write_demo(tmp_path / "d", SMALL), range(2)))
    assert demos[0].manifest == demos[1].manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_refuses_to_replace_foreign_content(tmp_path: Path) -> None:
    """Only an empty directory or an earlier demo may be replaced."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(HelixflowError, match="not empty"):
        write_demo(tmp_path / "mine", SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"

    demo = write_demo(tmp_path / "demo", SMALL)
    (demo.dir / "results.parquet").write_bytes(b"work")
    with pytest.raises(HelixflowError, match="not empty"):
        write_demo(tmp_path / "demo", DemoSpec(**{**SMALL.__dict__, "seed": 3}))

    (tmp_path / "file").write_text("x")
    with pytest.raises(HelixflowError, match="not a directory"):
        write_demo(tmp_path / "file", SMALL)


def test_writes_into_an_existing_empty_directory(tmp_path: Path) -> None:
    """An empty directory made by the user is filled in place."""
    (tmp_path / "d").mkdir()
    demo = write_demo(tmp_path / "d", SMALL)
    assert demo.dir == tmp_path / "d"
    assert (tmp_path / "d" / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1),
        ("n_genomes", 0),
        ("n_genomes", 17),
        ("genome_length", 100),
        ("n_pairs", 0),
        ("n_pairs", True),
        ("n_pairs", 1.5),
        ("read_length", 10),
        ("insert_mean", 10),
        ("insert_sd", -1),
        ("duplicate_fraction", 0.9),
        ("duplicate_fraction", math.nan),
        ("empty_reads", -1),
        ("empty_reads", 5_000),
        ("n_variants", 10**9),
    ],
)
def test_invalid_spec_says_what_is_allowed(field: str, value: object) -> None:
    """Bad values fail at construction with the allowed range."""
    with pytest.raises(ValueError, match=rf"DemoSpec\.{field} must be .* in "):
        DemoSpec(**{field: value})  # type: ignore[arg-type]


# --- reads ------------------------------------------------------------------------------


def test_counts_match_truth_files_and_manifest(
    default_demo: Demo, reads: Reads, truth: list[dict[str, str]]
) -> None:
    """Pairs, duplicates, empties, adapters, Ns agree in files, truth and manifest."""
    spec, counts = DemoSpec(), default_demo.manifest["counts"]
    n_dup = round(spec.duplicate_fraction * spec.n_pairs)
    assert len(reads.seq1) == len(reads.seq2) == len(truth) == spec.n_pairs == counts["pairs"]
    assert sum(r["is_duplicate"] == "1" for r in truth) == n_dup == counts["duplicate_pairs"]
    empty = [r["is_empty"] == "1" for r in truth]
    assert sum(empty) == spec.empty_reads == counts["empty_pairs"]
    assert [s == "" for s in reads.seq1] == empty
    assert [s == "" for s in reads.seq2] == empty
    assert sum(r["has_adapter"] == "1" for r in truth) == counts["adapter_pairs"] > 100
    assert sum(r["has_polyg"] == "1" for r in truth) == counts["polyg_pairs"] > 10
    assert sum(s.count("N") for s in reads.seq1 + reads.seq2) == counts["ambiguous_bases"] > 0
    per_genome = {g: sum(r["genome"] == g for r in truth) for g in counts["pairs_per_genome"]}
    assert per_genome == counts["pairs_per_genome"]
    assert len(read_tsv(default_demo.genes)) == counts["genes"]
    assert len(read_tsv(default_demo.variants)) == counts["variants"] == spec.n_variants


def test_reads_are_valid_fastq_and_mates_pair(reads: Reads, truth: list[dict[str, str]]) -> None:
    """Every record is valid Phred+33 FASTQ and R1/R2 ids pair in file order."""
    rl = DemoSpec().read_length
    for seqs, quals in ((reads.seq1, reads.qual1), (reads.seq2, reads.qual2)):
        for seq, qual in zip(seqs, quals, strict=True):
            assert len(seq) == len(qual) and len(seq) in (0, rl)
        assert set("".join(seqs)) <= set("ACGTN")
        q = as_array([q for q in quals if q]) - 33
        assert q.min() >= 2 and q.max() <= 41
        s = as_array([s for s in seqs if s])
        assert np.all(q[s == ord("N")] == 2)
    assert reads.ids1 == reads.ids2 == [r["name"] for r in truth]
    assert len(set(reads.ids1)) == len(reads.ids1)
    assert all(re.fullmatch(r"1:N:0:[ACGT]+", c) for c in reads.comments1)
    assert all(re.fullmatch(r"2:N:0:[ACGT]+", c) for c in reads.comments2)


def test_qualities_decline_towards_three_prime(reads: Reads) -> None:
    """Qualities follow the usual Illumina shape."""
    for quals in (reads.qual1, reads.qual2):
        mean = (as_array([q for q in quals if q]) - 33).mean(axis=0)
        assert 30 < mean[5:25].mean() < 40
        assert mean[-10:].mean() < mean[5:25].mean() - 4


def test_errors_match_truth_and_qualities(
    default_demo: Demo, reads: Reads, truth: list[dict[str, str]]
) -> None:
    """Reads equal their truth locus up to errors, at the rate qualities say."""
    genomes = mutated_genomes(default_demo)
    rows = [i for i, r in enumerate(truth) if r["is_duplicate"] == "0" and r["is_empty"] == "0"]
    mates = [expected_mates(truth[i], genomes, default_demo.manifest) for i in rows]
    expected = np.vstack([as_array([m[0] for m in mates]), as_array([m[1] for m in mates])])
    observed = np.vstack(
        [as_array([reads.seq1[i] for i in rows]), as_array([reads.seq2[i] for i in rows])]
    )
    quals = np.vstack(
        [as_array([reads.qual1[i] for i in rows]), as_array([reads.qual2[i] for i in rows])]
    )
    phred = quals.astype(int) - 33
    called = observed != ord("N")
    wrong = (observed != expected) & called
    # Exact: every difference from the truth locus is a recorded substitution.
    assert int(wrong.sum()) == default_demo.manifest["counts"]["substitution_errors"]
    # Statistical: errors occur at the rate the qualities promise, overall and per band.
    p_error = 10.0 ** (-phred / 10.0)
    expect = p_error[called].sum()
    assert abs(wrong.sum() - expect) < 0.05 * expect, (wrong.sum(), expect)
    for low, high in ((2, 12), (13, 22), (23, 32), (33, 41)):
        band = called & (phred >= low) & (phred <= high)
        e = p_error[band].sum()
        if e > 200:
            assert abs(wrong[band].sum() - e) < 0.15 * e, (low, high, wrong[band].sum(), e)


def test_adapter_reads_carry_the_adapter_at_the_insert_end(
    reads: Reads, truth: list[dict[str, str]]
) -> None:
    """Inserts shorter than a read run into the TruSeq adapter right after the insert."""
    rl = DemoSpec().read_length
    checked = exact = mismatches = 0
    expected_errors = 0.0
    for i, row in enumerate(truth):
        insert = int(row["insert"])
        if row["is_empty"] == "1":
            continue
        assert (row["has_adapter"] == "1") == (insert < rl)
        if row["has_adapter"] == "0":
            continue
        mates = (
            (reads.seq1[i], reads.qual1[i], ADAPTER_R1),
            (reads.seq2[i], reads.qual2[i], ADAPTER_R2),
        )
        for seq, qual, adapter in mates:
            n = min(len(adapter), rl - insert)
            found, phred = seq[insert : insert + n], qual[insert : insert + n]
            wrong = sum(a not in (b, "N") for a, b in zip(found, adapter[:n], strict=True))
            mismatches += wrong
            expected_errors += sum(10 ** (-(ord(q) - 33) / 10) for q in phred)
            checked += 1
            exact += wrong == 0
    # Mismatches in the adapter are sequencing errors, as frequent as the qualities say.
    assert checked > 200 and exact > 0.9 * checked
    assert abs(mismatches - expected_errors) < 0.3 * expected_errors + 10, (
        mismatches,
        expected_errors,
    )


def test_polyg_follows_the_adapter_construct(
    default_demo: Demo, reads: Reads, truth: list[dict[str, str]]
) -> None:
    """Past the adapter construct a two-colour instrument reads G."""
    construct = len(default_demo.manifest["adapters"]["r1_readthrough"])
    tails = [
        reads.seq1[i][int(r["insert"]) + construct :]
        for i, r in enumerate(truth)
        if r["has_polyg"] == "1" and r["is_duplicate"] == "0"
    ]
    assert len(tails) > 10
    tail = "".join(tails)
    assert tail.count("G") > 0.95 * len(tail)


def test_duplicates_are_exact_copies_of_another_pair(
    reads: Reads, truth: list[dict[str, str]]
) -> None:
    """PCR duplicates copy both mates exactly; some qualities differ."""
    index = {r["name"]: i for i, r in enumerate(truth)}
    same_quality = 0
    dups = [i for i, r in enumerate(truth) if r["is_duplicate"] == "1"]
    for i in dups:
        j = index[truth[i]["duplicate_of"]]
        assert truth[j]["is_duplicate"] == "0" and truth[j]["is_empty"] == "0"
        assert (reads.seq1[i], reads.seq2[i]) == (reads.seq1[j], reads.seq2[j])
        for key in ("genome", "start", "insert", "strand"):
            assert truth[i][key] == truth[j][key]
        same_quality += (reads.qual1[i], reads.qual2[i]) == (reads.qual1[j], reads.qual2[j])
    assert 0 < same_quality < len(dups)
    assert all(r["duplicate_of"] == "" for r in truth if r["is_duplicate"] == "0")


def test_mate_two_is_the_other_end_of_the_fragment(
    default_demo: Demo, reads: Reads, truth: list[dict[str, str]]
) -> None:
    """R2 is the reverse complement of the fragment's far end."""
    genomes = mutated_genomes(default_demo)
    i = next(
        k
        for k, r in enumerate(truth)
        if r["strand"] == "+" and r["is_duplicate"] == "0" and int(r["insert"]) > 400
    )
    row = truth[i]
    start, insert = int(row["start"]), int(row["insert"])
    end_of_fragment = genomes[row["genome"]][start + insert - 30 : start + insert]
    matches = sum(a == b for a, b in zip(revcomp(end_of_fragment), reads.seq2[i][:30], strict=True))
    assert matches >= 28


def test_blocks_keep_counts_and_unique_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block-wise simulation (large n_pairs) keeps counts, names and duplicates right."""
    monkeypatch.setattr(demo_mod, "CHUNK_PAIRS", 700)
    spec = DemoSpec(**{**SMALL.__dict__, "empty_reads": 4})
    demo = write_demo(tmp_path / "d", spec)
    rows = read_tsv(demo.truth)
    parsed = parse_reads(demo)
    assert len(rows) == len(set(parsed.ids1)) == spec.n_pairs
    assert sum(r["is_duplicate"] == "1" for r in rows) == round(spec.n_pairs * 0.05)
    assert sum(r["is_empty"] == "1" for r in rows) == 4
    index = {r["name"]: i for i, r in enumerate(rows)}
    for i, r in enumerate(rows):
        if r["duplicate_of"]:
            assert parsed.seq1[i] == parsed.seq1[index[r["duplicate_of"]]]


# --- genomes, genes, variants -----------------------------------------------------------


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
        assert codons[0] == "ATG" and codons[-1] in _STOPS
        assert not _STOPS & set(codons[1:-1]), g


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
                bases.append(bottom[start + insert - 1 - p].translate(_COMP))
        assert len(bases) >= 5, v
        assert bases.count(v["alt"]) >= 0.9 * len(bases), (v, bases)


# --- external tools ----------------------------------------------------------------------


@pytest.mark.integration
def test_fastp_accepts_reads_and_detects_adapters(default_demo: Demo, tmp_path: Path) -> None:
    """fastp reads the files, finds both TruSeq adapters, duplicates and polyG."""
    report = tmp_path / "fastp.json"
    done = subprocess.run(
        [
            require_tool("fastp"),
            "-i", str(default_demo.r1),
            "-I", str(default_demo.r2),
            "-o", str(tmp_path / "o1.fq.gz"),
            "-O", str(tmp_path / "o2.fq.gz"),
            "--detect_adapter_for_pe",
            "-j", str(report),
            "-h", str(tmp_path / "fastp.html"),
            "-w", "2",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert result["summary"]["before_filtering"]["total_reads"] == 2 * DemoSpec().n_pairs
    cutting = result["adapter_cutting"]
    assert cutting["read1_adapter_sequence"] == ADAPTER_R1
    assert cutting["read2_adapter_sequence"] == ADAPTER_R2
    assert cutting["adapter_trimmed_reads"] >= default_demo.manifest["counts"]["adapter_pairs"]
    assert abs(result["duplication"]["rate"] - DemoSpec().duplicate_fraction) < 0.02
    # The NovaSeq-style names (@A0...) make fastp trim polyG tails.
    trimmed = [r[1] for r in read_fastq(tmp_path / "o1.fq.gz")]
    assert not any(re.search("G{10,}$", s) for s in trimmed)
