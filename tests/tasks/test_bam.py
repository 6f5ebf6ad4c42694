"""Tests for BAM writing (tasks/bam.py): unaligned BAM, sort, merge + index, byte identity.

Aligned parts come from tasks/align.py on the simulated genome of tests/tasks/test_align.py
(its helpers; the fixtures are in tests/tasks/conftest.py). The samtools test is an
integration test: it skips when the tool is absent, except under CI=true, where it fails.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pysam
import pytest

from helixflow.errors import HelixflowError, InputError
from helixflow.tasks.align import align_batch, build_index
from helixflow.tasks.bam import merge_bams, unaligned_bam
from tests.conftest import require_tool
from tests.tasks.test_align import RG, reads_batch, records, simulate_pairs, write_fasta

# --------------------------------------------------------------------------------------
# Unaligned BAM


def test_unaligned_bam_pairs_single_end_and_read_group(tmp_path: Path) -> None:
    rows = [("a", "ACGTN", "IIII#", "TTGCA", "FFFFF"), ("b", "", "", "GGG", "III")]
    out = tmp_path / "u.bam"
    assert unaligned_bam(reads_batch(rows), out, RG) == 4
    recs = records(out)
    assert [(r.query_name, r.flag) for r in recs] == [("a", 77), ("a", 141), ("b", 77),
                                                        ("b", 141)]
    assert recs[0].query_sequence == "ACGTN"
    assert pysam.qualities_to_qualitystring(recs[0].query_qualities) == "IIII#"
    assert recs[2].query_sequence is None  # an empty read is kept, SEQ "*"
    assert all(r.get_tag("RG") == "S1.L1" for r in recs)
    with pysam.AlignmentFile(str(out), "rb", check_sq=False) as fh:
        assert fh.header.to_dict()["RG"] == [RG]
    single = tmp_path / "s.bam"
    assert unaligned_bam(reads_batch([("x", "ACGT", "IIII"), ("y", "TT", "II")]), single,
                         RG) == 2
    assert [r.flag for r in records(single)] == [4, 4]


def test_unaligned_bam_requires_a_full_read_group(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing"):
        unaligned_bam(reads_batch([("x", "ACGT", "IIII")]), tmp_path / "u.bam",
                      {"ID": "x", "SM": "s"})


# --------------------------------------------------------------------------------------
# Merge


def test_merge_bams_sorts_indexes_and_checks_references(tmp_path: Path, genome: str,
                                                        index: Path) -> None:
    rng = np.random.default_rng(9)
    parts = []
    for i in range(2):
        rows, _ = simulate_pairs(genome, 200, rng, prefix=f"s{i}_")
        parts.append(tmp_path / f"part{i}.bam")
        align_batch(reads_batch(rows), index, parts[-1], RG, threads=1)
    merged = merge_bams(parts, tmp_path / "merged.bam")
    assert Path(f"{merged}.bai").exists()
    with pysam.AlignmentFile(str(merged), "rb") as fh:
        assert fh.header.to_dict()["HD"]["SO"] == "coordinate"
        assert fh.header.to_dict()["RG"] == [RG]  # combined, not duplicated
        assert fh.count("chrA", 0, len(genome)) == 800  # the index answers region queries
    other_ref = write_fasta(tmp_path / "other.fa", {"chrB": genome[:10_000]})
    other = tmp_path / "other.bam"
    align_batch(reads_batch([("x", genome[100:250], "F" * 150)]),
                build_index(other_ref, "sr", tmp_path / "mmi"), other, RG)
    with pytest.raises(HelixflowError, match="another reference"):
        merge_bams([parts[0], other], tmp_path / "bad.bam")
    with pytest.raises(InputError, match="BAM not found"):
        merge_bams([tmp_path / "missing.bam"], tmp_path / "bad.bam")


def test_merge_of_one_part_copies_it_and_indexes_it(tmp_path: Path, aligned) -> None:
    """One part is copied, not merged; its index is what `samtools index in out` gives."""
    part = aligned[0]
    merged = merge_bams([part], tmp_path / "one.bam")
    assert merged.read_bytes() == part.read_bytes()
    reference_copy = tmp_path / "ref.bam"
    reference_copy.write_bytes(part.read_bytes())
    pysam.index(str(reference_copy), str(tmp_path / "ref.bam.bai"), catch_stdout=False)
    assert Path(f"{merged}.bai").read_bytes() == (tmp_path / "ref.bam.bai").read_bytes()
    with pysam.AlignmentFile(str(merged), "rb") as fh:
        assert fh.count("chrA", 0, 20_000) > 1_500
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_pysam_fallback_writes_the_same_records(tmp_path: Path, genome: str, index: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the samtools command (HELIXFLOW_SAMTOOLS=pysam) sort and merge use pysam."""
    rows, _ = simulate_pairs(genome, 300, np.random.default_rng(4))
    batches = [reads_batch(rows[:150]), reads_batch(rows[150:])]
    outputs = {}
    for mode in ("auto", "pysam"):
        monkeypatch.setenv("HELIXFLOW_SAMTOOLS", mode)
        parts = [tmp_path / f"{mode}{i}.bam" for i in range(2)]
        for batch, part in zip(batches, parts, strict=True):
            align_batch(batch, index, part, RG)
        merged = merge_bams(parts, tmp_path / f"{mode}.bam")
        outputs[mode] = [r.to_string() for r in records(merged)]
    assert len(outputs["pysam"]) == 600
    assert outputs["pysam"] == outputs["auto"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_same_reads_give_the_same_bytes_in_any_folder(tmp_path: Path, genome: str,
                                                     reference: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No path (scratch, index, run folder) reaches a header: the same reads aligned and
    merged in two folders, with indexes built in two caches, give identical files."""
    rows, _ = simulate_pairs(genome, 200, np.random.default_rng(8))
    batches = [reads_batch(rows[:100]), reads_batch(rows[100:])]
    for mode in ("auto", "pysam"):
        monkeypatch.setenv("HELIXFLOW_SAMTOOLS", mode)
        digests = []
        for where in ("one", "two"):
            folder = tmp_path / mode / where
            mmi = build_index(reference, "sr", folder / "mmi")
            parts = [folder / f"p{i}.bam" for i in range(2)]
            for batch, part in zip(batches, parts, strict=True):
                align_batch(batch, mmi, part, RG)
            merged = merge_bams(parts, folder / "merged.bam")
            ubam = folder / "u.bam"
            unaligned_bam(batches[0], ubam, RG)
            digests.append([hashlib.sha256(p.read_bytes()).hexdigest()
                            for p in (*parts, merged, Path(f"{merged}.bai"), ubam)])
            header = pysam.AlignmentFile(str(merged), "rb").header.to_dict()
            assert str(tmp_path) not in str(header)
            assert [pg["ID"] for pg in header["PG"]] == ["mappy"], header["PG"]
        assert digests[0] == digests[1], mode


@pytest.mark.integration
def test_samtools_quickcheck_passes_on_every_output(tmp_path: Path, aligned, genome: str) -> None:
    samtools = require_tool("samtools")
    bam = aligned[0]
    ubam = tmp_path / "u.bam"
    unaligned_bam(reads_batch([("a", "ACGT", "IIII", "TTGC", "IIII")]), ubam, RG)
    merged = merge_bams([bam], tmp_path / "merged.bam")
    # -u: an unaligned BAM has no @SQ lines, which quickcheck otherwise requires
    for path, args in ((ubam, ["-u"]), (bam, []), (merged, [])):
        proc = subprocess.run([samtools, "quickcheck", "-v", *args, str(path)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    view = subprocess.run([samtools, "view", "-c", str(merged), "chrA:1-20000"],
                          capture_output=True, text=True, check=True)
    assert int(view.stdout) > 1_500
