"""Annotation options: motif parameters, PWM files in both formats, the task body."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from helixflow.errors import InputError
from helixflow.store import Store, identify
from helixflow.tasks.annotate import DEFAULT_MOTIFS, MotifParams, annotate_sequences, load_pwms
from helixflow.tasks.orfs import OrfParams
from tests.tasks.test_motifs import JASPAR_TEXT, MEME_TEXT


def test_motif_params_defaults_and_validation() -> None:
    assert MotifParams().consensus == DEFAULT_MOTIFS
    with pytest.raises(ValidationError, match="not IUPAC"):
        MotifParams(consensus={"bad": "GAJTC"})
    with pytest.raises(ValidationError):
        MotifParams(p_value=0)


def test_load_pwms_tells_formats_apart(tmp_path: Path) -> None:
    jaspar, meme = tmp_path / "m.jaspar", tmp_path / "m.meme"
    jaspar.write_text(JASPAR_TEXT)
    meme.write_text(MEME_TEXT)
    assert [p.name for p in load_pwms(jaspar, "m.jaspar")] == ["MA0004.1", "MA0006.1"]
    assert [p.name for p in load_pwms(meme, "m.meme")] == ["crp", "lexA"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(InputError, match=r"empty\.txt: no motif"):
        load_pwms(empty, "empty.txt")
    broken = tmp_path / "broken.jaspar"
    broken.write_text(">M1 x\nA [ 1 2 ]\nC [ 1 ]\nG [ 0 0 ]\nT [ 0 0 ]\n")
    with pytest.raises(InputError, match=r"broken\.jaspar"):
        load_pwms(broken, "broken.jaspar")


def test_annotate_with_pwm_files_and_orf_options(tmp_path: Path) -> None:
    # CACGTG (Arnt's consensus) planted twice, once per strand; a GTG-started ORF.
    seq = "TTTT" + "CACGTG" + "A" * 30 + "GTG" + "GCT" * 40 + "TAA" + "CCCC"
    fasta = tmp_path / "ref.fa"
    fasta.write_text(f">chr\n{seq}\n")
    motif_file = tmp_path / "arnt.jaspar"
    motif_file.write_text(JASPAR_TEXT)
    store = Store(str(tmp_path / "store"))
    params = MotifParams(consensus={"EcoRI": "GAATTC"},
                         pwm_files=[identify(str(motif_file))], p_value=1e-3)
    gtg = OrfParams(start_codons=("ATG", "GTG"), min_length_nt=90)
    result = annotate_sequences.fn(identify(str(fasta)), gtg, params, store, "run1")
    sites = pq.read_table(store._path(result.motifs.uri)).to_pylist()
    arnt = [s for s in sites if s["name"] == "MA0004.1"]
    assert {(s["start"], s["strand"]) for s in arnt} == {(4, "+"), (4, "-")}
    assert all(s["p_value"] is not None and s["p_value"] <= 1e-3 for s in arnt)
    assert result.motif_counts["EcoRI"] == 0 and result.motif_counts["MA0004.1"] == 2
    assert result.orf_count >= 1
    assert motif_file.resolve().as_uri() in {u.uri for u in result.motifs.upstream}
    atg_only = annotate_sequences.fn(identify(str(fasta)), OrfParams(), params, store, "run1")
    assert atg_only.orf_count < result.orf_count
