"""Fixtures shared by the alignment and BAM tests (tests/tasks/test_align.py, test_bam.py):
a random genome, its FASTA and minimap2 index, and a shard of simulated pairs aligned to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helixflow.tasks.align import AlignCounts, align_batch, build_index
from tests.tasks.test_align import (
    RG,
    random_genome,
    reads_batch,
    revcomp,
    simulate_pairs,
    write_fasta,
)


@pytest.fixture(scope="module")
def genome() -> str:
    return random_genome(np.random.default_rng(11), 20_000)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, genome: str) -> Path:
    return write_fasta(tmp_path_factory.mktemp("ref") / "ref.fa", {"chrA": genome})


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, reference: Path) -> Path:
    return build_index(reference, "sr", tmp_path_factory.mktemp("mmi"))


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory, genome: str, index: Path
            ) -> tuple[Path, AlignCounts, dict[str, tuple[int, int]], dict[str, tuple[str, str]]]:
    """800 simulated pairs plus special cases, aligned; returns BAM, counts, truth, inputs."""
    rng = np.random.default_rng(5)
    rows, truth = simulate_pairs(genome, 800, rng)
    junk = random_genome(rng, 150)
    # mate 2 with 25 foreign bases at its 3' end: clipped on one side only
    fragment = genome[5_000:5_300]
    clipped_fwd = ("clip_fwd", fragment[:150], "F" * 150,
                   revcomp(fragment[-125:]) + junk[:25], "F" * 150)
    fragment = genome[9_000:9_300]
    clipped_rev = ("clip_rev", revcomp(fragment[-150:]), "F" * 150,
                   fragment[:125] + junk[:25], "F" * 150)
    rows += [
        clipped_fwd, clipped_rev,
        ("junk_pair", junk, "F" * 150, revcomp(junk), "F" * 150),
        ("half_pair", genome[12_000:12_150], "F" * 150, junk, "F" * 150),
        ("empty_mate", genome[15_000:15_150], "F" * 150, "", ""),
    ]
    truth["clip_fwd"] = (5_000, 5_175)
    truth["clip_rev"] = (9_150, 9_025)
    out = tmp_path_factory.mktemp("aligned") / "shard.bam"
    counts = align_batch(reads_batch(rows), index, out, RG, preset="sr", threads=2)
    inputs = {row[0]: (row[1], row[3]) for row in rows}
    return out, counts, truth, inputs
