"""Tests for tasks/align_index.py: read type to preset, the reference check, the minimap2
index cached by content and preset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helixflow.errors import InputError
from helixflow.tasks.align_index import build_index, preset_for
from tests.tasks.test_align_map import write_fasta

# --------------------------------------------------------------------------------------
# Index


def test_build_index_is_cached_by_content_and_preset(tmp_path: Path, genome: str) -> None:
    ref = write_fasta(tmp_path / "a.fa", {"chrA": genome[:8_000]})
    cache = tmp_path / "cache"
    first = build_index(ref, "sr", cache)
    assert first.suffix == ".mmi" and first.parent == cache
    stamp = first.stat().st_mtime_ns
    assert build_index(ref, "sr", cache) == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    copy = tmp_path / "sub" / "a.fa"
    copy.parent.mkdir()
    shutil.copy(ref, copy)
    assert build_index(copy, "sr", cache) == first  # same bytes elsewhere: same index
    assert build_index(ref, "map-ont", cache) != first
    write_fasta(ref, {"chrA": genome[:8_000].replace("A", "C", 1)})
    assert build_index(ref, "sr", cache) != first  # changed content: new index
    assert not list(cache.glob(".*tmp"))


def test_build_index_rejects_missing_or_non_fasta_reference(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="reference FASTA not found"):
        build_index(tmp_path / "nope.fa", "sr", tmp_path)
    bad = tmp_path / "reads.fq"
    bad.write_text("@r1\nACGT\n+\nIIII\n")
    with pytest.raises(InputError, match="not a FASTA file") as info:
        build_index(bad, "sr", tmp_path)
    assert "\n" not in str(info.value)


def test_preset_for_read_types() -> None:
    assert preset_for("illumina") == "sr"
    assert preset_for("ONT") == "map-ont"
    assert preset_for("pacbio") == "map-pb"
    assert preset_for("sr") == "sr"
    with pytest.raises(ValueError, match="unknown read type"):
        preset_for("sanger")

