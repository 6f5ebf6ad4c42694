"""Tests of the fastp-grade QC kernel: one hand-built case per operation with exact counts,
and agreement with fastp 0.23.2 on real reads from the shared data (integration)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helixflow.flows.preprocess import qc_totals
from helixflow.store import Store
from helixflow.tables import as_batch, read_table
from helixflow.tasks.fastq import iter_read_batches
from helixflow.tasks.qc import (
    QcCounts,
    QcParams,
    detect_adapter,
    detect_sample_adapters,
    filter_batch,
    filter_reads,
    is_two_color,
    match_known_adapter,
    resolved_for,
)
from helixflow.tasks.reads import READS_SCHEMA, write_read_shard
from tests.conftest import require_tool

TRUSEQ_R1 = "AGATCGGAAGAGCACACGTCTGAACTCCAGTCA"
TRUSEQ_R2 = "AGATCGGAAGAGCGTCGTGTAGGGAAAGAGTGT"
_COMP = str.maketrans("ACGTN", "TGCAN")
HIGH, LOW = "I", "#"  # Phred 40 and 2


def revcomp(seq: str) -> str:
    return seq.translate(_COMP)[::-1]


def random_seq(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


def make_batch(
    mate1: list[tuple[str, str]], mate2: list[tuple[str, str]] | None = None
) -> pa.RecordBatch:
    """A READS_SCHEMA batch of (sequence, quality) reads: single-end, or pairs laid out as
    iter_read_batches does (mate-1 rows, then mate-2 rows)."""
    rows = []
    for mate, reads in ((1 if mate2 else 0, mate1), (2, mate2 or [])):
        for i, (seq, qual) in enumerate(reads):
            assert len(seq) == len(qual)
            rows.append((f"r{i}", mate, i, i + 1, seq, qual, not seq))
    columns = list(zip(*rows, strict=True))
    return pa.RecordBatch.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, READS_SCHEMA, strict=True)],
        schema=READS_SCHEMA,
    )


def good(seq: str) -> tuple[str, str]:
    return seq, HIGH * len(seq)


def sequences(batch: pa.RecordBatch) -> list[str]:
    return batch.column("sequence").to_pylist()


def check_totals(counts: QcCounts) -> None:
    """Every read and base in is accounted for exactly once."""
    c = counts.to_dict()
    reasons = ("too_short", "too_long", "too_many_n", "low_quality", "low_complexity")
    trims = ("front_tail_trimmed", "quality_cut", "polyg_trimmed", "adapter_trimmed",
             "polyx_trimmed")
    assert c["reads_in"] == c["reads_out"] + sum(c[f"{r}_reads"] for r in reasons)
    assert c["bases_in"] == (
        c["bases_out"]
        + sum(c[f"{t}_bases"] for t in trims)
        + sum(c[f"{r}_bases"] for r in reasons)
    )


# --------------------------------------------------------------------------------------
# Reads carrying an adapter (for adapter detection)

NOVEL_ADAPTER = "CCGTCGTTGAGTGTATGGCAAGGCAGAGCGGAG"  # random: in no adapter table
UPSTREAM = "GTTCAAGAACAAGAATGGCCTTTGTGTAAT"  # random: the constant 5' part of an amplicon
DOWNSTREAM = "AAGTATGTTTCAATAGGTGACTAAAGACAGGCAACGC"  # ...and its constant 3' part


@dataclass(frozen=True)
class AdapterCase:
    """12,000 random 100 bp reads, `carriers` of them (a share, or a count when >= 1)
    holding `adapter` after an insert of 20-99 bases (or, when `upstream` is given, the
    amplicon upstream + adapter + DOWNSTREAM); `check` judges the adapter fastp detects
    ("" = none)."""

    adapter: str
    carriers: float
    check: Callable[[str], bool]
    upstream: str = ""


ADAPTER_CASES = {
    # extended both ways to the adapter's ends, then found in fastp's table
    "known": AdapterCase(TRUSEQ_R1, 0.2, lambda a: a == TRUSEQ_R1),
    # extended, but the walk back runs into the inserts: fastp rejects it
    "novel_common": AdapterCase(NOVEL_ADAPTER, 0.5, lambda a: a == ""),
    # in < 50 reads: the trees are too thin to extend, the 10-mer seed is kept
    "novel_rare": AdapterCase(NOVEL_ADAPTER, 40, lambda a: len(a) == 10 and a in NOVEL_ADAPTER),
    # constant up to the read's start and end: kept, cut to 60 bases
    "novel_after_constant": AdapterCase(NOVEL_ADAPTER, 0.3,
                                        lambda a: a == (UPSTREAM + NOVEL_ADAPTER)[:60], UPSTREAM),
}


def write_adapter_reads(path: Path, case: str, n: int = 12_000, seed: int = 5) -> None:
    """The FASTQ of one ADAPTER_CASES case (names r0, r1, ...; all bases Phred 40)."""
    spec = ADAPTER_CASES[case]
    rng = np.random.default_rng(seed)
    reads = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, (n, 100))]
    count = int(spec.carriers if spec.carriers >= 1 else spec.carriers * n)
    amplicon = spec.upstream + spec.adapter + DOWNSTREAM
    tail = np.frombuffer((amplicon[:100] if spec.upstream else spec.adapter).encode(), np.uint8)
    for row in rng.choice(n, count, replace=False):
        start = 0 if spec.upstream else int(rng.integers(20, 100))
        piece = tail[: 100 - start]
        reads[row, start : start + len(piece)] = piece
    with path.open("w") as out:
        for i, seq in enumerate(reads):
            out.write(f"@r{i}\n{seq.tobytes().decode()}\n+\n{HIGH * 100}\n")


def adapter_read_batch(case: str, n: int = 12_000) -> pa.RecordBatch:
    """An ADAPTER_CASES case as one single-end batch (via a temporary FASTQ)."""
    with tempfile.TemporaryDirectory() as tmp:
        fq = Path(tmp) / "reads.fq"
        write_adapter_reads(fq, case, n)
        return next(iter_read_batches(str(fq), batch_size=n))


def test_adapter_detection_kernel() -> None:
    for case in ("known", "novel_common", "novel_rare", "novel_after_constant"):
        found = detect_adapter(adapter_read_batch(case).column("sequence"))
        assert ADAPTER_CASES[case].check(found), (case, found)
    # fastp needs 10,000 reads: fewer (here the known adapter in 20 % of 9,999) give nothing
    assert detect_adapter(adapter_read_batch("known", 9_999).column("sequence")) == ""
    assert match_known_adapter(TRUSEQ_R1 + "ACGT") == TRUSEQ_R1
    assert match_known_adapter(TRUSEQ_R1[:-1]) == ""


def test_detected_adapter_is_trimmed_and_reported() -> None:
    batch = adapter_read_batch("known")
    kept, _, counts = filter_batch(batch, QcParams())
    assert counts.adapter_trimmed_reads > 2000
    assert TRUSEQ_R1[:12] not in "".join(sequences(kept))
    used = resolved_for(batch, QcParams())
    assert used.detected_adapter_r1 == TRUSEQ_R1
    assert used.adapter_report(False) == {"read1_adapter_sequence": TRUSEQ_R1}
    # settled once (per sample): a batch without the adapter keeps the sample's adapter
    assert resolved_for(make_batch([good(random_seq(50, 30))]), used) == used
    kept, _, counts = filter_batch(batch, QcParams(trim_adapters=False))
    assert counts.adapter_trimmed_reads == 0


def test_which_mates_are_detected_follows_fastp() -> None:
    se, pe, pe_detect = QcParams(), QcParams(), QcParams(detect_adapter_for_pe=True)
    assert se.detects(0, paired=False) and se.detects(1, paired=False)
    assert not pe.detects(1, paired=True) and not pe.detects(2, paired=True)
    assert pe_detect.detects(1, paired=True) and pe_detect.detects(2, paired=True)
    given = QcParams(adapter_r1=TRUSEQ_R1, detect_adapter_for_pe=True)
    assert not given.detects(1, paired=True) and given.detects(2, paired=True)
    assert QcParams(adapter_r1=TRUSEQ_R1).adapter(2, paired=True) == TRUSEQ_R1
    assert not QcParams(trim_adapters=False).detects(0, paired=False)
    found = dataclasses.replace(pe_detect, detected_adapter_r1="", detected_adapter_r2="ACGTACGTAC")
    assert found.adapter_report(True) == {"read1_adapter_sequence": "none",
                                          "read2_adapter_sequence": "ACGTACGTAC"}
    assert pe.adapter_report(True) == {"read1_adapter_sequence": "none",
                                       "read2_adapter_sequence": "none"}
    with pytest.raises(ValueError, match="detected_adapter_r1"):
        QcParams(detected_adapter_r1="ACGU")


# --------------------------------------------------------------------------------------
# One operation at a time


def test_adapter_found_at_its_position_with_mismatches() -> None:
    insert = random_seq(60, 1) + "C"
    clean = insert + TRUSEQ_R1[:30]
    noisy = list(clean)
    for pos in (63, 70, 80):  # 3 mismatches in 30 compared bases: 30 // 8 = 3 allowed
        noisy[pos] = "T" if noisy[pos] != "T" else "G"
    params = QcParams(adapter_r1=TRUSEQ_R1)
    kept, orphans, counts = filter_batch(make_batch([good(clean), good("".join(noisy))]), params)
    assert sequences(kept) == [insert, insert]
    assert orphans is None
    assert (counts.adapter_trimmed_reads, counts.adapter_trimmed_bases) == (2, 60)
    check_totals(counts)


def test_adapter_with_too_many_mismatches_is_kept() -> None:
    read = list(random_seq(60, 2) + "C" + TRUSEQ_R1[:16])
    for pos in (61, 66, 71):  # 3 mismatches in 16 bases: only 2 allowed
        read[pos] = "T" if read[pos] != "T" else "G"
    batch = make_batch([good("".join(read))])
    kept, _, counts = filter_batch(batch, QcParams(adapter_r1=TRUSEQ_R1))
    assert sequences(kept) == ["".join(read)]
    assert counts.adapter_trimmed_reads == 0


def test_read_through_pair_is_cut_to_the_insert_by_overlap() -> None:
    fragment = random_seq(80, 3)
    r1 = fragment + TRUSEQ_R1 + "A" * 7
    r2 = revcomp(fragment) + TRUSEQ_R2 + "C" * 7
    distant = random_seq(120, 4), random_seq(120, 5)  # no overlap: untouched
    batch = make_batch([good(r1), good(distant[0])], [good(r2), good(distant[1])])
    kept, _, counts = filter_batch(batch, QcParams())
    assert sequences(kept) == [fragment, distant[0], revcomp(fragment), distant[1]]
    assert counts.overlap_trimmed_pairs == 1
    assert (counts.adapter_trimmed_reads, counts.adapter_trimmed_bases) == (2, 80)
    assert kept.column("mate").to_pylist() == [1, 1, 2, 2]
    check_totals(counts)


def test_overlap_tolerates_sequencing_errors() -> None:
    fragment = random_seq(90, 6)
    r2 = list(revcomp(fragment) + TRUSEQ_R2[:30])
    for pos in (5, 20, 33, 47, 60):  # 5 mismatches: fastp's overlap_diff_limit
        r2[pos] = "A" if r2[pos] != "A" else "C"
    batch = make_batch([good(fragment + TRUSEQ_R1[:30])], [good("".join(r2))])
    kept, _, counts = filter_batch(batch, QcParams())
    assert [len(s) for s in sequences(kept)] == [90, 90]
    assert counts.overlap_trimmed_pairs == 1


def test_overlap_of_each_pair_does_not_depend_on_the_others() -> None:
    """Pairs are screened together, shifts in blocks, found pairs leaving the working
    set: a pair must get the same result in a mixed batch as on its own (forward and
    read-through overlaps, mixed read lengths, a second later shift that also fits)."""
    pairs = []
    for i in range(60):
        rng = random.Random(100 + i)
        insert = rng.randint(40, 260)
        fragment = random_seq(insert, 200 + i)
        n1, n2 = rng.randint(60, 150), rng.randint(60, 150)
        r1 = (fragment + TRUSEQ_R1 + random_seq(150, 400 + i))[:n1]
        r2 = (revcomp(fragment) + TRUSEQ_R2 + random_seq(150, 600 + i))[:n2]
        if i % 7 == 0:  # a tandem repeat: several shifts pass, the first must win
            unit = random_seq(10, 800 + i)
            r1, r2 = (unit * 15)[:n1], revcomp(unit * 15)[:n2]
        pairs.append((good(r1), good(r2)))
    together, _, counts = filter_batch(make_batch(*map(list, zip(*pairs, strict=True))))
    alone = [filter_batch(make_batch([a], [b]))[0] for a, b in pairs]
    n = len(pairs)
    got = sequences(together)
    assert got[:n] == [sequences(k)[0] for k in alone]
    assert got[n:] == [sequences(k)[1] for k in alone]
    assert 0 < counts.overlap_trimmed_pairs < n
    check_totals(counts)


def test_poly_g_tail() -> None:
    body = random_seq(72, 7) + "ACATTCAA"  # no G near the run: the walk stops in it
    read = body + "G" * 25 + "T" + "G" * 4  # one mismatch per 8 bases is tolerated
    kept, _, counts = filter_batch(make_batch([good(read)]), QcParams(trim_poly_g=True))
    assert sequences(kept) == [body]
    assert (counts.polyg_trimmed_reads, counts.polyg_trimmed_bases) == (1, 30)
    kept, _, _ = filter_batch(make_batch([good(read)]), QcParams(trim_poly_g=False))
    assert sequences(kept) == [read]


def test_poly_g_auto_follows_the_instrument_in_the_read_name() -> None:
    assert is_two_color("A00742:412:HN2W7DSX3:1:1650:27218:28745")
    assert is_two_color("NB501234:1:X:1:1:1:1")
    assert not is_two_color("SRR3927310.1")
    assert QcParams().resolved("A00123:8:H:1:1:1:1").trim_poly_g is True
    assert QcParams(trim_poly_g=False).resolved("A00123:8:H:1:1:1:1").trim_poly_g is False


def test_poly_x_tail() -> None:
    body = random_seq(70, 8) + "G"
    read = body + "A" * 20
    kept, _, counts = filter_batch(make_batch([good(read)]), QcParams(trim_poly_x=True))
    assert sequences(kept) == [body]
    assert (counts.polyx_trimmed_reads, counts.polyx_trimmed_bases) == (1, 20)


def test_sliding_window_cut_tail_and_front() -> None:
    seq = random_seq(80, 9)
    qual = HIGH * 60 + LOW * 20
    kept, _, counts = filter_batch(make_batch([(seq, qual)]), QcParams(cut_tail=True))
    # fastp: the last window reaching Q20 is [58, 61]; it keeps up to that window's start.
    assert sequences(kept) == [seq[:59]]
    assert (counts.quality_cut_reads, counts.quality_cut_bases) == (1, 21)
    qual = LOW * 10 + HIGH * 70
    kept, _, counts = filter_batch(make_batch([(seq, qual)]), QcParams(cut_front=True))
    # the first window reaching Q20 starts at 8; fastp cuts to that window's end (8 + 4 - 1)
    assert sequences(kept) == [seq[11:]]
    assert counts.quality_cut_bases == 11
    check_totals(counts)


def test_fixed_front_and_tail_trimming() -> None:
    seq = random_seq(50, 10)
    params = QcParams(trim_front1=3, trim_tail1=5)
    kept, _, counts = filter_batch(make_batch([good(seq)]), params)
    assert sequences(kept) == [seq[3:45]]
    assert (counts.front_tail_trimmed_reads, counts.front_tail_trimmed_bases) == (1, 8)


def test_n_limit() -> None:
    five = "N" * 5 + random_seq(45, 11)
    six = "N" * 6 + random_seq(44, 12)
    kept, _, counts = filter_batch(make_batch([good(five), good(six)]), QcParams())
    assert sequences(kept) == [five]
    assert (counts.too_many_n_reads, counts.too_many_n_bases) == (1, 50)
    check_totals(counts)


def test_unqualified_percent_limit() -> None:
    seq = random_seq(100, 13)
    at_limit = (seq, LOW * 40 + HIGH * 60)  # 40% unqualified: allowed
    over = (seq, LOW * 41 + HIGH * 59)
    kept, _, counts = filter_batch(make_batch([at_limit, over]), QcParams())
    assert len(sequences(kept)) == 1
    assert (counts.low_quality_reads, counts.low_quality_bases) == (1, 100)


def test_length_filters() -> None:
    reads = [good(random_seq(n, 14 + n)) for n in (14, 15, 100, 101)]
    kept, _, counts = filter_batch(make_batch(reads), QcParams(length_limit=100))
    assert [len(s) for s in sequences(kept)] == [15, 100]
    assert (counts.too_short_reads, counts.too_short_bases) == (1, 14)
    assert (counts.too_long_reads, counts.too_long_bases) == (1, 101)


def test_low_complexity() -> None:
    simple = "A" * 40 + "C" * 10  # 1 change in 49 neighbours
    varied = random_seq(50, 15)
    batch = make_batch([good(simple), good(varied)])
    kept, _, counts = filter_batch(batch, QcParams(low_complexity_filter=True))
    assert sequences(kept) == [varied]
    assert (counts.low_complexity_reads, counts.low_complexity_bases) == (1, 50)
    kept, _, counts = filter_batch(batch, QcParams())
    assert len(sequences(kept)) == 2


def test_empty_reads_are_too_short() -> None:
    kept, _, counts = filter_batch(make_batch([("", ""), good(random_seq(30, 16))]), QcParams())
    assert len(sequences(kept)) == 1
    assert (counts.too_short_reads, counts.too_short_bases) == (1, 0)
    assert counts.reads_in == 2


def test_pair_fails_with_its_worse_mate_and_orphans_are_kept() -> None:
    ok1, ok2 = good(random_seq(60, 17)), good(random_seq(60, 18))
    many_n = good("N" * 6 + random_seq(54, 19))
    short = good(random_seq(10, 20))
    low = (random_seq(60, 21), LOW * 60)
    batch = make_batch([ok1, short, ok1], [ok2, low, many_n])
    kept, orphans, counts = filter_batch(batch, QcParams(keep_orphans=True))
    assert kept.column("read_id").to_pylist() == ["r0", "r0"]
    # pair r1: too short (20) and low quality (24): both reads count as low quality
    assert counts.low_quality_reads == 2 and counts.too_short_reads == 0
    assert counts.too_many_n_reads == 2
    assert (counts.orphaned_reads, counts.orphaned_bases) == (1, 60)
    assert orphans is not None
    assert orphans.column("read_id").to_pylist() == ["r2"]
    assert orphans.column("mate").to_pylist() == [1]
    check_totals(counts)
    _, no_orphans, _ = filter_batch(batch, QcParams())
    assert no_orphans is None


def test_output_keeps_schema_and_counts_merge() -> None:
    batch = make_batch([good(random_seq(40, 22))], [good(random_seq(40, 23))])
    kept, _, counts = filter_batch(batch, QcParams())
    assert kept.schema == READS_SCHEMA
    assert counts.merge(counts).reads_in == 4
    assert set(counts.to_dict()) >= {"reads_in", "adapter_trimmed_reads", "orphaned_reads"}


def test_bad_layout_and_params_are_rejected() -> None:
    batch = make_batch([good("ACGT" * 5)], [good("ACGT" * 5)])
    swapped = pa.RecordBatch.from_arrays(
        [batch.column(i).take(pa.array([1, 0])) for i in range(batch.num_columns)],
        schema=READS_SCHEMA,
    )
    with pytest.raises(ValueError, match="mate-1 rows"):
        filter_batch(swapped, QcParams())
    with pytest.raises(ValueError, match="adapter_r1"):
        QcParams(adapter_r1="ACGX")
    with pytest.raises(ValueError, match="cut_window_size"):
        QcParams(cut_window_size=0)


# --------------------------------------------------------------------------------------
# Agreement with fastp 0.23.2 on real reads


def _names_and_lengths(path: Path) -> dict[str, list[int]]:
    opener = gzip.open if path.suffix == ".gz" else open
    out: dict[str, list[int]] = {}
    with opener(path, "rt") as handle:
        lines = handle.read().split("\n")
    for i in range(0, len(lines) - 1, 4):
        name = lines[i][1:].split()[0] if lines[i].strip() else ""
        if not name:
            continue
        if name.endswith(("/1", "/2")):
            name = name[:-2]
        out.setdefault(name, []).append(len(lines[i + 1]))
    return out


def _run_fastp(
    tmp_path: Path, in1: Path, in2: Path | None, *args: str
) -> tuple[dict[int, dict[str, list[int]]], dict]:
    """fastp 0.23.2 on the files: (survivor lengths by mate and read name, JSON report)."""
    fastp = require_tool("fastp")
    outs = {1: tmp_path / "o1.fq", 2: tmp_path / "o2.fq"}
    argv = [fastp, "-i", str(in1), "-o", str(outs[1]), "-w", "2", "-j", str(tmp_path / "f.json"),
            "-h", str(tmp_path / "f.html"), *args]
    if in2 is not None:
        argv += ["-I", str(in2), "-O", str(outs[2])]
    subprocess.run(argv, check=True, capture_output=True)
    mates = (1, 2) if in2 is not None else (1,)
    return ({m: _names_and_lengths(outs[m]) for m in mates},
            json.loads((tmp_path / "f.json").read_text()))


def _run_ours(
    in1: Path, in2: Path | None, params: QcParams
) -> tuple[dict[int, dict[str, list[int]]], QcCounts, QcParams]:
    """helixflow's QC as the flow runs it: what fastp decides from the file (polyG, adapters)
    decided once from its first reads, then batches of 4096 filtered with those settings.
    Returns (survivor lengths by mate and read name, counts, the settings used)."""
    r2 = str(in2) if in2 is not None else None
    first = next(iter_read_batches(str(in1), r2, batch_size=256 * 1024))
    params = resolved_for(first, params)
    ours: dict[int, dict[str, list[int]]] = {}
    counts = QcCounts()
    for batch in iter_read_batches(str(in1), r2, batch_size=4096):
        kept, _, c = filter_batch(batch, params)
        counts = counts.merge(c)
        for name, mate, seq in zip(*(kept.column(k).to_pylist() for k in
                                      ("read_id", "mate", "sequence")), strict=True):
            ours.setdefault(max(mate, 1), {}).setdefault(name, []).append(len(seq))
    return ours, counts, params


def _assert_same_as_fastp(
    tmp_path: Path, in1: Path, in2: Path | None, params: QcParams, *args: str
) -> QcParams:
    """fastp and helixflow keep the same reads with the same trimmed lengths, report the same
    adapters (fastp's JSON: the sequence; no adapter section or "unspecified" = "none") and
    the same counts. Returns the settings helixflow used."""
    theirs, report = _run_fastp(tmp_path, in1, in2, *args)
    ours, counts, used = _run_ours(in1, in2, params)
    for mate, survivors in theirs.items():
        assert len(survivors) > 0
        assert survivors == ours.get(mate, {}), f"mate {mate}: survivors or lengths differ"
    cutting = report.get("adapter_cutting", {})
    named = {k: "none" if v == "unspecified" else v for k, v in cutting.items()
             if k.endswith("_adapter_sequence")}
    assert used.adapter_report(in2 is not None) == (named or {"read1_adapter_sequence": "none"})
    assert counts.reads_out == report["filtering_result"]["passed_filter_reads"]
    assert counts.adapter_trimmed_reads == cutting.get("adapter_trimmed_reads", 0)
    return used


@pytest.mark.integration
@pytest.mark.parametrize(
    ("r1", "r2", "polyg"),
    [
        ("ecoli_dsm30083_SRR3927310_R1.fq.gz", "ecoli_dsm30083_SRR3927310_R2.fq.gz", False),
        ("cheese_metagenome_plus_ecoli_R1.fq.gz", "cheese_metagenome_plus_ecoli_R2.fq.gz", True),
        ("fastp_R1.fq", "fastp_R2.fq", False),
    ],
)
def test_agrees_with_fastp_at_defaults(
    shared_data: Path, tmp_path: Path, r1: str, r2: str, polyg: bool
) -> None:
    """Pairs at defaults: overlap analysis, no adapter detection (fastp's default)."""
    in1, in2 = shared_data / "reads" / r1, shared_data / "reads" / r2
    used = _assert_same_as_fastp(tmp_path, in1, in2, QcParams())
    assert used.trim_poly_g is polyg
    assert used.detected_adapter_r1 is None and used.detected_adapter_r2 is None


@pytest.mark.integration
@pytest.mark.parametrize(
    ("r1", "r2", "adapters"),
    [
        # 100 reads: fastp needs 10,000 to detect, so it neither detects nor trims
        ("cutadapt_illumina_adapters.fastq.gz", None, ("none",)),
        # a genomic 10-mer: a seed seen 10-49 times is kept without extension
        ("ecoli_dsm30083_SRR3927310_R1.fq.gz", None, ("GCATCCGGCA",)),
        ("lambda_simulated_R1.fq", None, ("CTCACCACGG",)),
        ("ecoli_dsm30083_SRR3927310_R1.fq.gz", "ecoli_dsm30083_SRR3927310_R2.fq.gz",
         ("GCATCCGGCA", "GGCGCTGGAA")),
        ("lambda_simulated_R1.fq", "lambda_simulated_R2.fq", ("CTCACCACGG", "TTTTCATAAA")),
        ("cheese_metagenome_plus_ecoli_R1.fq.gz", "cheese_metagenome_plus_ecoli_R2.fq.gz",
         ("none", "none")),
    ],
)
def test_adapter_detection_agrees_with_fastp_on_real_reads(
    shared_data: Path, tmp_path: Path, r1: str, r2: str | None, adapters: tuple[str, ...]
) -> None:
    """Single-end reads at defaults; pairs with --detect_adapter_for_pe."""
    in1 = shared_data / "reads" / r1
    in2 = shared_data / "reads" / r2 if r2 else None
    args = ("--detect_adapter_for_pe",) if r2 else ()
    used = _assert_same_as_fastp(tmp_path, in1, in2, QcParams(detect_adapter_for_pe=True), *args)
    assert tuple(used.adapter_report(r2 is not None).values()) == adapters


@pytest.mark.integration
@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_adapter_detection_agrees_with_fastp_on_generated_reads(tmp_path: Path, case: str) -> None:
    """A random 33-mer adapter in neither fastp's table nor helixflow's, after inserts of
    varied length (TruSeq read 1 for comparison): the same adapter and survivors as fastp."""
    fq = tmp_path / "reads.fq"
    write_adapter_reads(fq, case)
    used = _assert_same_as_fastp(tmp_path, fq, None, QcParams())
    found = used.detected_adapter_r1
    assert found is not None and ADAPTER_CASES[case].check(found), found


@pytest.mark.integration
def test_adapter_is_detected_once_per_sample_for_all_its_shards(
    shared_data: Path, tmp_path: Path
) -> None:
    """The shard tasks of a sample trim the adapter detected in the sample's first reads
    (a shard alone, 2,500 reads, is too small for fastp's detection), carry it in their
    parameters (cache key, lineage) and results, and together keep what fastp keeps."""
    in1 = shared_data / "reads" / "ecoli_dsm30083_SRR3927310_R1.fq.gz"
    theirs, report = _run_fastp(tmp_path, in1, None)
    adapter = report["adapter_cutting"]["read1_adapter_sequence"]
    store = Store(str(tmp_path / "store"))
    shards = []
    for i, batch in enumerate(iter_read_batches(str(in1), batch_size=2500)):
        path = tmp_path / f"ecoli.reads.{i:05d}.parquet"
        write_read_shard(pa.Table.from_batches([batch]), path)
        shards.append(store.publish(path, run_id="r", stage="ingest", rows=batch.num_rows,
                                    media_type="application/vnd.apache.parquet",
                                    producer="test"))
    assert len(shards) == 4
    alone = resolved_for(as_batch(read_table(store, shards[0])), QcParams())
    assert alone.detected_adapter_r1 == ""
    params = detect_sample_adapters.fn("ecoli", shards, QcParams().resolved("SRR3927310.1"),
                                       store)
    assert params.detected_adapter_r1 == adapter == "GCATCCGGCA"
    results = [filter_reads.fn(s, params, store, "r") for s in shards]
    ours: dict[str, list[int]] = {}
    for result in results:
        assert result.adapters == {"read1_adapter_sequence": adapter}
        assert result.shard.params["detected_adapter_r1"] == adapter
        kept = read_table(store, result.shard, columns=["read_id", "sequence"])
        for name, seq in zip(*(kept.column(k).to_pylist() for k in ("read_id", "sequence")),
                             strict=True):
            ours.setdefault(name, []).append(len(seq))
    assert ours == theirs[1]
    totals = qc_totals(results)
    assert totals["read1_adapter_sequence"] == adapter
    assert totals["adapter_trimmed_reads"] == report["adapter_cutting"]["adapter_trimmed_reads"]


@pytest.mark.integration
def test_pipeline_detects_the_adapter_once_per_sample(
    prefect_api: str, shared_data: Path, tmp_path: Path
) -> None:
    """The flow's wiring: a single-end sample in 4 shards; the adapter fastp detects in the
    whole file is in every QC shard's lineage parameters and in the QC report, the QC shards
    keep what fastp keeps, and a second run takes detection and QC from the cache."""
    from helixflow.app.launch import launch_pipeline
    from helixflow.lineage import load_records
    from helixflow.store import local_path

    in1 = shared_data / "reads" / "ecoli_dsm30083_SRR3927310_R1.fq.gz"
    theirs, report = _run_fastp(tmp_path, in1, None)
    adapter = report["adapter_cutting"]["read1_adapter_sequence"]
    store_dir = tmp_path / "store"
    options = {"store": str(store_dir), "shard_size": 2500, "embed_methods": [],
               "simulate": False}
    first = launch_pipeline([str(in1)], **options)
    assert first.error is None, first.error
    qc = [r for r in load_records(Store(str(store_dir))) if r.stage == "qc"]
    assert len(qc) == 4
    assert {r.parameters["detected_adapter_r1"] for r in qc} == {adapter}
    assert adapter in local_path(first.summary.report_uri).read_text()
    kept = pq.read_table(sorted((store_dir / "runs" / first.summary.run_id / "qc").glob(
        "*.parquet")), columns=["read_id", "sequence"])
    ours: dict[str, list[int]] = {}
    for name, seq in zip(*(kept.column(k).to_pylist() for k in ("read_id", "sequence")),
                         strict=True):
        ours.setdefault(name, []).append(len(seq))
    assert ours == theirs[1]
    second = launch_pipeline([str(in1)], **options)
    assert second.error is None, second.error
    assert second.summary.by_task["filter-reads"] == {"executed": 0, "cached": 4}
