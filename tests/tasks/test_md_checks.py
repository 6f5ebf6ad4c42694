"""Tests for tasks/md_checks.py: the parsers on outputs captured from real GROMACS 2022.5
runs (tests/tasks/data/gromacs: a converged and a non-converged steepest descent, the
averages of a production run at 299 K and of one started after a too-short NVT, the
stderr of an NVT with LINCS warnings), the
periodic-boundary figures on generated coordinates, and a passing and a failing case of
every check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helixflow.blocks.gromacs import GromacsSettings
from helixflow.errors import HelixflowError
from helixflow.tasks.md_checks import (
    MdChecks,
    em_max_force,
    evaluate_checks,
    lincs_warnings,
    log_averages,
    mdp_number,
    peptide_pbc_figures,
    read_mdp,
)

DATA = Path(__file__).parent / "data" / "gromacs"



def read(name: str) -> str:
    return (DATA / name).read_text()


def good(**overrides: object) -> MdChecks:
    """The figures of the captured passing run, with `overrides`."""
    figures: dict[str, object] = dict(fmax=985.92456, emtol=1000.0, mean_t=298.924,
                                      ref_t=300.0, lincs=0, com_jump=0.465, max_bond=1.863,
                                      box_edge=44.83)
    return evaluate_checks(**{**figures, **overrides})  # type: ignore[arg-type]


def test_read_mdp_of_rendered_settings() -> None:
    settings = GromacsSettings(em_tol=250.0, ref_t=310.0)
    em = read_mdp(settings.mdp("em"))
    md = read_mdp(settings.mdp("md"))
    assert mdp_number(em, "emtol", "em.mdp") == 250.0
    assert md["ref-t"] == "310.0 310.0" and mdp_number(md, "ref-t", "md.mdp") == 310.0
    assert read_mdp("ref_t = 300 ; two groups\n; emtol = 5\n") == {"ref-t": "300"}
    with pytest.raises(HelixflowError, match=r"em\.mdp: no numeric 'emtol'"):
        mdp_number(md, "emtol", "em.mdp")


def test_em_max_force_converged_and_not() -> None:
    assert em_max_force(read("em-converged.log")) == pytest.approx(985.92456)
    assert em_max_force(read("em-not-converged.log")) == pytest.approx(8473.9463)
    assert em_max_force("Steepest Descents:\n   Tolerance (Fmax)   =  1.00000e+03\n") is None


def test_log_averages_of_a_production_run() -> None:
    averages = log_averages(read("md-averages.log"))
    assert averages["Temperature"] == pytest.approx(298.924)
    assert averages["Pressure (bar)"] == pytest.approx(-161.802)
    assert averages["Pres. DC (bar)"] == pytest.approx(-187.028)
    assert averages["Potential"] == pytest.approx(-116240.0)
    assert "T-Protein" not in averages  # a later block, not the energies
    assert log_averages(read("md-averages-cold.log"))["Temperature"] == pytest.approx(292.148)
    assert log_averages("Step Time\n 0 0.0\n") == {}  # a run that never ended


def test_lincs_warnings_counted() -> None:
    """nvt-lincs.stderr: the start of a real NVT's stderr with lincs-warnangle = 2."""
    assert lincs_warnings(read("md-averages.log")) == 0
    assert lincs_warnings(read("nvt-lincs.stderr")) == 4  # steps 0, 1, 2, 3


def chain_frames(n_frames: int = 4, step: float = 0.3) -> np.ndarray:
    """A 4-atom chain (1.5 Å bonds) drifting `step` Å along x per frame."""
    atoms = np.array([[10.0, 10.0, 10.0], [11.5, 10.0, 10.0], [11.5, 11.5, 10.0],
                      [13.0, 11.5, 10.0]])
    return np.stack([atoms + np.array([i * step, 0.0, 0.0]) for i in range(n_frames)])


BONDS = np.array([[0, 1], [1, 2], [2, 3]])
MASSES = np.array([14.0, 12.0, 12.0, 16.0])
CELLS = np.full((4, 3), 30.0)


def test_pbc_figures_of_a_drifting_whole_chain() -> None:
    jump, bond, edge = peptide_pbc_figures(chain_frames(), MASSES, BONDS, CELLS)
    assert jump == pytest.approx(0.3) and bond == pytest.approx(1.5) and edge == 30.0
    one = peptide_pbc_figures(chain_frames(1), MASSES, BONDS, None)
    assert one == (0.0, pytest.approx(1.5), float("inf"))


def test_pbc_figures_see_a_jump_and_a_broken_molecule() -> None:
    jumped = chain_frames()
    jumped[2:] += [30.0, 0, 0]  # the whole chain crosses the boundary at frame 2
    jump, bond, _ = peptide_pbc_figures(jumped, MASSES, BONDS, CELLS)
    assert jump == pytest.approx(30.3) and bond == pytest.approx(1.5)
    broken = chain_frames()
    broken[1, 3] -= [30.0, 0, 0]  # one atom wrapped to the other side
    jump, bond, _ = peptide_pbc_figures(broken, MASSES, BONDS, CELLS)
    assert bond == pytest.approx(28.5) and jump > 5  # 13.0 - 30 vs 11.5


def test_every_check_passes_on_the_captured_run() -> None:
    checks = good()
    assert checks.passed and checks.failures() == []
    assert checks.jump_limit == pytest.approx(0.25 * 44.83)
    row = checks.row()
    assert row["em_fmax"] == 985.9 and row["mean_t"] == 298.92 and row["checks_passed"] is True


@pytest.mark.parametrize(
    ("overrides", "check", "phrase"),
    [
        ({"fmax": 8473.9463, "emtol": 10.0}, "em_ok",
         "em: Fmax 8473.9 ≥ emtol 10 kJ/mol/nm (minimisation did not converge)"),
        ({"fmax": None}, "em_ok", "em: no final maximum force in em.log"),
        ({"mean_t": 292.148}, "temperature_ok", "temperature: mean 292.1 K, target 300 ± 5 K"),
        ({"mean_t": 306.0}, "temperature_ok", "temperature: mean 306.0 K"),
        ({"mean_t": None}, "temperature_ok", "temperature: no averages in md.log"),
        ({"lincs": 2}, "lincs_ok", "lincs: 2 LINCS warning(s)"),
        ({"com_jump": 30.3}, "pbc_ok", "pbc: peptide centre-of-mass jump 30.30 Å"),
        ({"max_bond": 28.5}, "pbc_ok", "longest bond 28.50 Å (limit 3)"),
    ],
)
def test_each_check_fails_alone(overrides: dict, check: str, phrase: str) -> None:
    checks = good(**overrides)
    verdicts = {k: getattr(checks, k) for k in ("em_ok", "temperature_ok", "lincs_ok", "pbc_ok")}
    assert verdicts == {k: k != check for k in verdicts}
    assert not checks.passed and checks.row()["checks_passed"] is False
    (failure,) = checks.failures()
    assert phrase in failure and checks.failed() == [failure.split(":", 1)[0]]


def test_check_limits_are_parameters() -> None:
    assert good(mean_t=294.0, t_tolerance=8.0).temperature_ok
    assert not good(com_jump=2.0, box_edge=10.0, jump_fraction=0.1).pbc_ok
    assert good(fmax=999.99).em_ok and not good(fmax=1000.0).em_ok  # strictly below emtol
    round_trip = MdChecks.model_validate(good(lincs=3).model_dump(mode="json"))
    assert round_trip == good(lincs=3)
