"""Tests for the MEGAHIT step (tasks/assemble.py): statistics, FASTQ inputs, errors, runs.

Statistics and input writing are checked on hand-made data; real MEGAHIT runs
(integration) assemble the demo community and check that the contigs cover its genomes
by k-mer containment.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.errors import HelixflowError, InputError
from helixflow.tasks.assemble import (
    AssemblyParams,
    assemble,
    contig_stats,
    fasta_stats,
    megahit_command,
    write_fastq_inputs,
)
from helixflow.tasks.fastq import iter_read_batches
from helixflow.tasks.orfs import iter_fasta
from helixflow.tasks.reads import READS_SCHEMA, write_read_shard
from tests.conftest import require_tool

K = 31
COMPLEMENT = str.maketrans("ACGT", "TGCA")


def kmers(seq: str, k: int = K) -> set[str]:
    """Canonical k-mers (the smaller of a k-mer and its reverse complement)."""
    out = set()
    rc = seq.translate(COMPLEMENT)[::-1]
    n = len(seq)
    for i in range(n - k + 1):
        fwd = seq[i : i + k]
        rev = rc[n - i - k : n - i]
        out.add(min(fwd, rev))
    return out


def reads_batch(rows: list[tuple[str, int, str]]) -> pa.RecordBatch:
    """A READS_SCHEMA batch of (read_id, mate, sequence) rows."""
    return pa.RecordBatch.from_pydict(
        {
            "read_id": [r[0] for r in rows],
            "mate": [r[1] for r in rows],
            "fragment": list(range(len(rows))),
            "record": list(range(1, len(rows) + 1)),
            "sequence": [r[2] for r in rows],
            "quality": ["I" * len(r[2]) for r in rows],
            "is_empty": [not r[2] for r in rows],
        },
        schema=READS_SCHEMA,
    )


def read_fastq(path: Path) -> list[tuple[str, str, str]]:
    lines = path.read_text().splitlines()
    assert len(lines) % 4 == 0
    return [(lines[i][1:], lines[i + 1], lines[i + 3]) for i in range(0, len(lines), 4)]


# --------------------------------------------------------------------------------------
# Statistics


def test_stats_on_a_hand_made_fasta(tmp_path: Path) -> None:
    fasta = tmp_path / "contigs.fa"
    contigs = {"c1": "A" * 100, "c2": "GC" * 200, "c3": "AT" * 150, "c4": "ACGT" * 50}
    fasta.write_text("".join(f">{k} len={len(v)}\n{v[:70]}\n{v[70:]}\n" for k, v in
                             contigs.items()))
    stats = fasta_stats(fasta)
    # Sorted: 400, 300, 200, 100 (total 1000); 400 + 300 >= 500 -> N50 300, L50 2.
    assert stats == {
        "contigs": 4, "total_length": 1000, "longest": 400, "shortest": 100,
        "n50": 300, "l50": 2, "gc": round((400 + 100) / 1000, 4),
    }


@pytest.mark.parametrize(
    ("lengths", "n50", "l50"),
    [([10], 10, 1), ([5, 5], 5, 1), ([2, 3, 5], 5, 1), ([1, 1, 1, 1, 6], 6, 1),
     ([4, 3, 3], 3, 2), ([1] * 10, 1, 5)],
)
def test_n50_definition(lengths: list[int], n50: int, l50: int) -> None:
    stats = contig_stats(lengths)
    assert (stats["n50"], stats["l50"], stats["total_length"]) == (n50, l50, sum(lengths))


def test_stats_of_an_empty_assembly(tmp_path: Path) -> None:
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    assert fasta_stats(empty)["contigs"] == 0 and fasta_stats(empty)["n50"] == 0


# --------------------------------------------------------------------------------------
# FASTQ inputs and arguments


def test_fastq_inputs_split_pairs_singles_and_empty_reads(tmp_path: Path) -> None:
    paired = reads_batch([
        ("p1", 1, "ACGT"), ("p2", 1, ""), ("p3", 1, "GGGG"), ("p4", 1, ""),
        ("p1", 2, "TTTT"), ("p2", 2, "CCCC"), ("p3", 2, ""), ("p4", 2, ""),
    ])
    single = reads_batch([("s1", 0, "AAAA"), ("s2", 0, "")])
    shard = tmp_path / "shard.parquet"
    write_read_shard(single, shard)
    r1, r2, se = tmp_path / "R1.fq", tmp_path / "R2.fq", tmp_path / "se.fq"
    counts = write_fastq_inputs([paired, shard], r1, r2, se)
    assert counts == {"pairs": 1, "single": 3, "dropped_empty": 5}
    assert read_fastq(r1) == [("p1", "ACGT", "IIII")]
    assert read_fastq(r2) == [("p1", "TTTT", "IIII")]
    assert [r[:2] for r in read_fastq(se)] == [("p3", "GGGG"), ("p2", "CCCC"), ("s1", "AAAA")]


def test_fastq_inputs_refuse_unpaired_batches(tmp_path: Path) -> None:
    bad = reads_batch([("a", 1, "ACGT"), ("b", 2, "ACGT")])
    with pytest.raises(HelixflowError, match="do not pair up"):
        write_fastq_inputs([bad], tmp_path / "1", tmp_path / "2", tmp_path / "s")
    with pytest.raises(InputError, match="no such read shard"):
        write_fastq_inputs([tmp_path / "nope.parquet"], tmp_path / "1", tmp_path / "2",
                           tmp_path / "s")


def test_command_is_an_argument_list() -> None:
    params = AssemblyParams(min_contig_len=300, threads=2, k_list=(21, 41, 61), memory=0.5)
    cmd = megahit_command("megahit", Path("out"), params, Path("R1"), Path("R2"), Path("S"))
    assert cmd == ["megahit", "-1", "R1", "-2", "R2", "-r", "S", "-o", "out", "-t", "2",
                   "--min-contig-len", "300", "--k-list", "21,41,61", "-m", "0.5"]
    preset = megahit_command("megahit", Path("o"), AssemblyParams(preset="meta-sensitive"),
                             None, None, Path("S"))
    assert preset[-2:] == ["--presets", "meta-sensitive"] and "-1" not in preset


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_list": (20, 40)}, "odd"),
        ({"k_list": (21, 99)}, "at most 28"),
        ({"k_list": (41, 21)}, "increasing"),
        ({"k_list": (21,), "preset": "meta-large"}, "not both"),
        ({"preset": "fast"}, "preset must be one of"),
        ({"threads": 0}, "threads"),
        ({"min_contig_len": 0}, "min_contig_len"),
        ({"extra_args": "--no-mercy"}, "tuple"),
    ],
)
def test_bad_parameters_say_what_is_allowed(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AssemblyParams(**kwargs)  # type: ignore[arg-type]


def test_missing_megahit_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HelixflowError) as info:
        assemble([reads_batch([("s", 0, "ACGT")])], tmp_path / "w", AssemblyParams())
    assert "megahit" in str(info.value)
    assert info.value.hint is not None and "apt-get install megahit" in info.value.hint


# --------------------------------------------------------------------------------------
# Real MEGAHIT runs


@pytest.fixture(scope="module")
def demo_reads(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[pa.RecordBatch]]:
    """Two 20 kb genomes with 3,000 pairs each (about 45x), as read batches."""
    demo = write_demo(
        tmp_path_factory.mktemp("demo-assemble"),
        DemoSpec(n_genomes=2, genome_length=20_000, n_pairs=6_000, n_variants=0),
    )
    batches = list(iter_read_batches(str(demo.r1), str(demo.r2), batch_size=2_000))
    return demo.genomes, batches


@pytest.mark.integration
def test_assembly_covers_the_demo_genomes(
    demo_reads: tuple[Path, list[pa.RecordBatch]], tmp_path: Path
) -> None:
    require_tool("megahit")
    genomes, batches = demo_reads
    shard = tmp_path / "shard-0.parquet"
    write_read_shard(batches[0], shard)  # a Parquet shard and in-memory batches together
    result = assemble([shard, *batches[1:]], tmp_path / "work",
                      AssemblyParams(min_contig_len=500, threads=2))
    assert result.contigs == tmp_path / "work" / "contigs.fa"
    assert result.megahit_version[0].isdigit()
    assert result.reads["pairs"] > 5_900
    assert not list((tmp_path / "work").glob("megahit-run.*"))  # intermediates removed
    assert result.stats == fasta_stats(result.contigs)
    assert 0.95 * 40_000 <= result.stats["total_length"] <= 1.05 * 40_000
    assert result.stats["n50"] >= 10_000

    contig_kmers = set().union(*(kmers(s) for _, s in iter_fasta(result.contigs)))
    genome_kmers = set()
    for name, seq in iter_fasta(genomes):
        mine = kmers(seq)
        genome_kmers |= mine
        containment = len(mine & contig_kmers) / len(mine)
        assert containment >= 0.95, f"{name}: only {containment:.3f} of its k-mers assembled"
    precision = len(contig_kmers & genome_kmers) / len(contig_kmers)
    assert precision >= 0.95, f"only {precision:.3f} of contig k-mers are in the genomes"


@pytest.mark.integration
def test_megahit_failure_shows_the_log_tail(
    demo_reads: tuple[Path, list[pa.RecordBatch]], tmp_path: Path
) -> None:
    require_tool("megahit")
    _, batches = demo_reads
    params = AssemblyParams(extra_args=("--no-such-option",))
    with pytest.raises(HelixflowError, match="megahit failed") as info:
        assemble(batches[:1], tmp_path / "work", params)
    assert "no-such-option" in str(info.value)
    assert info.value.hint is not None and "megahit.log" in info.value.hint


def test_no_reads_is_a_clear_error(tmp_path: Path) -> None:
    require_tool("megahit")
    with pytest.raises(HelixflowError, match="no non-empty reads"):
        assemble([reads_batch([("e", 0, "")])], tmp_path / "work", AssemblyParams())
