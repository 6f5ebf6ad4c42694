"""The MD sanity checks as the flows show them: rows of the `md` table and run summary,
one warning line per failed check, the CLI's line (no Prefect server needed)."""

from __future__ import annotations

from helixflow.app.cli import _md_checks_line
from helixflow.artifacts import Artifact
from helixflow.flows.simulate import md_check_rows, warn_failed_checks
from helixflow.tasks.md_checks import evaluate_checks

FIGURES: dict = dict(fmax=985.9, emtol=1000.0, mean_t=298.9, ref_t=300.0, lincs=0,
                     com_jump=0.47, max_bond=1.86, box_edge=44.8)


def trajectory(name: str, checks: dict | None) -> Artifact:
    return Artifact(
        uri=f"file:///store/runs/r1/md/{name}.nc", cas_uri=f"file:///store/objects/{name}",
        sha256="0" * 64, size=1, media_type="application/x-netcdf", stage="md",
        producer="md-trajectory", params={"sequence_id": "s1", "peptide": "MKFGW"},
        metadata={} if checks is None else {
            "md_checks": evaluate_checks(**{**FIGURES, **checks}).model_dump(mode="json")})


class FakeRecorder:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, line: str) -> str:
        self.warnings.append(line)
        return line


def test_rows_and_one_warning_per_failed_check() -> None:
    trajs = [trajectory("md-c0-0", {}),
             trajectory("md-c1-1", {"fmax": 1200.0, "lincs": 3}),
             trajectory("md-c2-2", None)]
    rows = md_check_rows(trajs)
    assert [r["simulation"] for r in rows] == ["md-c0-0", "md-c1-1", "md-c2-2"]
    assert rows[0]["checks_passed"] is True and rows[0]["failed_checks"] == ""
    assert rows[0]["em_fmax"] == 985.9 and rows[0]["mean_t"] == 298.9
    assert rows[0]["peptide"] == "MKFGW" and rows[0]["trajectory"].endswith("md-c0-0.nc")
    assert rows[1]["checks_passed"] is False and rows[1]["failed_checks"] == "em, lincs"
    assert "checks_passed" not in rows[2]  # made before the checks existed
    recorder = FakeRecorder()
    lines = warn_failed_checks(trajs, recorder)  # type: ignore[arg-type]
    assert lines == recorder.warnings == [
        "md check failed for md-c1-1: em: Fmax 1200.0 ≥ emtol 1000 kJ/mol/nm "
        "(minimisation did not converge)",
        "md check failed for md-c1-1: lincs: 3 LINCS warning(s)",
    ]


def test_cli_line() -> None:
    ok, bad = md_check_rows([trajectory("a", {}), trajectory("b", {"mean_t": 290.0})])
    assert _md_checks_line(ok) == (
        "EM Fmax 985.9 (emtol 1000), mean T 298.9 K (target 300), 0 LINCS warning(s), "
        "max COM jump 0.47 Å, longest bond 1.86 Å: all passed")
    assert _md_checks_line(bad).endswith(": FAILED temperature")
    assert _md_checks_line({"simulation": "c"}) == "none recorded"
