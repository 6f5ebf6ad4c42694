"""helixflow.files: the one atomic-write rule."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from helixflow.files import atomic_dir, atomic_path, atomic_write


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.npz"
    atomic_write(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_the_written_file_gets_the_mode_open_would_give(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", b"x")
        with atomic_path(tmp_path / "b", mode=0o777) as tmp:
            tmp.write_bytes(b"#!/bin/sh\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640  # not mkstemp's 0o600
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o750


def test_the_temporary_is_next_to_the_target_and_replaces_it(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.nc"
    target.parent.mkdir()
    target.write_bytes(b"before")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".x.nc.")
        assert target.read_bytes() == b"before"  # not visible until the block ends
        tmp.write_bytes(b"after")
    assert target.read_bytes() == b"after"


def test_a_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
    old = os.umask(0o022)
    try:
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_bytes(b"new")
    finally:
        os.umask(old)
    assert sorted(p.name for p in target.iterdir()) == ["weights"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # not mkdtemp's 0o700
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_bytes(b"half")
        raise RuntimeError("writer died")
    assert (target / "weights").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left


def test_the_temporary_name_can_end_in_the_format_a_tool_expects(tmp_path: Path) -> None:
    target = tmp_path / "S1.vcf.gz"
    with atomic_path(target, suffix=".vcf.gz") as tmp:
        assert tmp.name.startswith(".S1.vcf.gz.") and tmp.name.endswith(".tmp.vcf.gz")
        tmp.write_bytes(b"x")
    assert target.read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S1.vcf.gz"]
