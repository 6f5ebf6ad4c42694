"""Tests for tasks/align_sam.py: SAM fields of mappy hits (the records themselves are
checked through align_batch in test_align_map.py)."""

from __future__ import annotations

from helixflow.tasks.align_sam import md_tag


def test_md_tag_with_mismatch_deletion_and_insertion() -> None:
    # ref ACGTAC-GT vs query ACCTACTGT: mismatch at 3, insertion of T (not in MD)
    assert md_tag("ACGTACGT", "ACCTACTGT", [[6, 0], [1, 1], [2, 0]]) == "2G5"
    assert md_tag("ACGTACGT", "ACGCGT", [[3, 0], [2, 2], [3, 0]]) == "3^TA3"

