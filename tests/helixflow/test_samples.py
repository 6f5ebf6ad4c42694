from __future__ import annotations

import pytest

from helixflow.errors import HelixflowError
from helixflow.samples import plan_samples, sample_name


def test_pairs_by_name_and_singles() -> None:
    samples = plan_samples(
        ["d/a_R1.fastq.gz", "s3://b/c_1.fq", "d/a_R2.fastq.gz", "s3://b/c_2.fq", "x.fq"]
    )
    assert [(s.name, s.layout) for s in samples] == [
        ("a", "paired"), ("c", "paired"), ("x", "single")
    ]
    assert samples[0].r1 == "d/a_R1.fastq.gz" and samples[0].r2 == "d/a_R2.fastq.gz"


def test_two_unnamed_files_are_a_pair_and_interleaved_flag() -> None:
    assert plan_samples(["left.fq", "right.fq"])[0].layout == "paired"
    assert plan_samples(["il.fq"], interleaved=True)[0].layout == "interleaved"


def test_illumina_lane_names() -> None:
    assert sample_name("S1_L001_R1_001.fastq.gz") == "S1_L001"
    samples = plan_samples(["S1_L001_R1_001.fastq.gz", "S1_L001_R2_001.fastq.gz"])
    assert len(samples) == 1 and samples[0].layout == "paired"


def test_errors() -> None:
    with pytest.raises(HelixflowError):
        plan_samples([])
    with pytest.raises(HelixflowError, match="two R1"):
        plan_samples(["a_R1.fq", "x/../a_R1.fq".replace("x/../", "")])


def test_bare_r1_r2_take_the_folder_name() -> None:
    samples = plan_samples(["/d/demo/R1.fastq.gz", "/d/demo/R2.fastq.gz", "/e/other/R1.fq",
                            "/e/other/R2.fq"])
    assert [(s.name, s.layout) for s in samples] == [("demo", "paired"), ("other", "paired")]
