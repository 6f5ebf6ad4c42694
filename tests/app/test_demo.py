"""The demo data set: the same spec gives the same bytes; the directory is written atomically."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helixflow.app import demo as demo_mod
from helixflow.app.demo import Demo, DemoSpec, write_demo
from helixflow.errors import HelixflowError
from tests.app.demo_helpers import SMALL


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

    monkeypatch.setattr(demo_mod, "write_reads", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_demo(tmp_path / "new", SMALL)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    old = write_demo(tmp_path / "old", SMALL)
    before = {p.name: p.read_bytes() for p in old.dir.iterdir()}
    monkeypatch.setattr(demo_mod, "write_reads", boom)
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

