"""Reference FASTA validation: every kind of bad reference names the file and the record."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from helixflow.errors import InputError
from helixflow.tasks.reference import check_fasta


def _write(tmp_path: Path, text: str, name: str = "ref.fa") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_fasta_counts(tmp_path: Path) -> None:
    path = _write(tmp_path, ">a desc\nACGTN\nacgt\n>b\nRYKM\n>c\nA\n")
    assert check_fasta(path) == (3, 14, "a")


def test_gzip_fasta(tmp_path: Path) -> None:
    path = tmp_path / "ref.fa.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(">x\n" + "ACGT" * 100 + "\n")
    assert check_fasta(path) == (1, 400, "x")


def test_real_genome(shared_data: Path) -> None:
    assert check_fasta(shared_data / "genomes" / "lambda.fa")[:2] == (1, 48502)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ACGT\n>a\nACGT\n", "line 1 comes before any '>' header"),
        (">a\nACGT\n>\nACGT\n", "record 2: header without a name"),
        (">a\nACGT\n>a\nACGT\n", "record 2: duplicate sequence name 'a'"),
        (">a\n>b\nACGT\n", "record 1: sequence 'a' is empty"),
        (">a\nACGT\n>b\n", "record 2: sequence 'b' is empty"),
        (">a\nACGT\n>b\nACJT\n", "record 2: sequence 'b', line 4, column 3: 'J'"),
        ("", "holds no sequence"),
    ],
)
def test_bad_fasta_is_located(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as info:
        check_fasta(path, label="user/ref.fa")
    assert str(info.value).startswith("user/ref.fa: ")
    assert needle in str(info.value)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "ref.fa.gz"
    data = gzip.compress((">x\n" + "ACGT" * 5000 + "\n").encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated gzip"):
        check_fasta(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        check_fasta(tmp_path / "nope.fa")
