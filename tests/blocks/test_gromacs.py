"""Tests for the GromacsSettings block: validation, .mdp rendering, installed force fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from helixflow.blocks.gromacs import STAGES, GromacsSettings
from helixflow.errors import HelixflowError


def parse_mdp(text: str) -> dict[str, str]:
    """key -> value of an .mdp text; fails on a key given twice (grompp rejects those)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split(";", 1)[0].strip()
        if not line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().replace("_", "-")
        assert key not in out, f"{key} appears twice"
        out[key] = value.strip()
    return out


def test_defaults_render_every_stage() -> None:
    s = GromacsSettings()
    mdps = {stage: parse_mdp(s.mdp(stage)) for stage in STAGES}
    assert mdps["em"]["integrator"] == "steep"
    assert mdps["em"]["emtol"] == "1000.0"
    assert mdps["em"]["nsteps"] == "5000"
    assert mdps["ions"]["integrator"] == "steep"
    nvt = mdps["nvt"]
    assert (nvt["integrator"], nvt["dt"], nvt["nsteps"]) == ("md", "0.002", "50000")
    assert nvt["tcoupl"] == "V-rescale"
    assert nvt["tc-grps"] == "Protein Non-Protein"
    assert nvt["tau-t"] == "0.1 0.1" and nvt["ref-t"] == "300.0 300.0"
    assert (nvt["gen-vel"], nvt["continuation"], nvt["pcoupl"]) == ("yes", "no", "no")
    assert nvt["define"] == "-DPOSRES"
    assert nvt["constraints"] == "h-bonds"
    npt = mdps["npt"]
    assert (npt["pcoupl"], npt["ref-p"], npt["gen-vel"]) == ("C-rescale", "1.0", "no")
    assert npt["continuation"] == "yes" and npt["refcoord-scaling"] == "com"
    md = mdps["md"]
    assert "define" not in md and md["pcoupl"] == "no" and md["continuation"] == "yes"
    assert (md["nstxout-compressed"], md["nstenergy"], md["nsteps"]) == ("5000", "5000", "500000")
    for stage in STAGES:
        m = mdps[stage]
        assert (m["coulombtype"], m["rcoulomb"], m["rvdw"]) == ("PME", "1.0", "1.0")
        assert m["cutoff-scheme"] == "Verlet"


def test_settings_reach_the_mdp() -> None:
    s = GromacsSettings(
        md_nsteps=1000, nstxout_compressed=100, nstxout=500, nstenergy=50, dt=0.001,
        ref_t=310.0, tc_grps="System", posres=False, md_pcoupl=True, pcoupl="Berendsen",
        ref_p=2.5, gen_seed=7,
    )
    nvt, md = parse_mdp(s.mdp("nvt")), parse_mdp(s.mdp("md"))
    assert nvt["ref-t"] == "310.0" and nvt["tau-t"] == "0.1" and nvt["gen-seed"] == "7"
    assert "define" not in nvt
    assert md["dt"] == "0.001" and md["nstxout"] == "500" and md["nstenergy"] == "50"
    assert (md["pcoupl"], md["ref-p"]) == ("Berendsen", "2.5")


def test_extra_mdp_overrides_instead_of_duplicating() -> None:
    s = GromacsSettings(extra_mdp={"nstlist": "20", "comm_mode": "Linear"})
    md = parse_mdp(s.mdp("md"))  # parse_mdp fails on duplicates
    assert md["nstlist"] == "20" and md["comm-mode"] == "Linear"


@pytest.mark.parametrize(
    "fields",
    [
        {"dt": 0.005},
        {"dt": 0.0},
        {"md_nsteps": 0},
        {"nvt_nsteps": -5},
        {"em_nsteps": 0},
        {"box_nm": 0},
        {"water": "tip9p"},
        {"force_field": "../etc/passwd"},
        {"force_field": "-ff"},
        {"gmx": "gmx; rm -rf /"},
        {"rcoulomb": 1.2, "rvdw": 1.0},
        {"nstxout_compressed": 10_000, "md_nsteps": 5000},
        {"dt": 0.004, "constraints": "none"},
        {"extra_mdp": {"define": "-DX\nintegrator = sd"}},
        {"tc_grps": "  "},
        {"box_type": "sphere"},
        {"ntomp": 0},
    ],
)
def test_invalid_settings_are_rejected(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GromacsSettings(**fields)


def test_unknown_stage() -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        GromacsSettings().mdp("heat")


def test_md_parameters_are_json() -> None:
    params = GromacsSettings(npt_enabled=True).md_parameters()
    assert json.loads(json.dumps(params)) == params
    assert params["force_field"] == "amber99sb-ildn" and params["npt_enabled"] is True


def fake_top(tmp_path: Path) -> Path:
    top = tmp_path / "top"
    for ff, waters in {"amber99sb-ildn": ("tip3p", "spce"), "charmm27": ("tip3p",)}.items():
        (top / f"{ff}.ff").mkdir(parents=True)
        for water in waters:
            (top / f"{ff}.ff" / f"{water}.itp").write_text("")
    return top


def test_check_installed_finds_the_force_field(tmp_path: Path) -> None:
    top = fake_top(tmp_path)
    assert GromacsSettings().check_installed(top) == top / "amber99sb-ildn.ff"


def test_missing_force_field_lists_the_available_ones(tmp_path: Path) -> None:
    top = fake_top(tmp_path)
    with pytest.raises(HelixflowError, match="force field 'oplsaa' is not installed") as info:
        GromacsSettings(force_field="oplsaa").check_installed(top)
    assert info.value.hint == "available: amber99sb-ildn, charmm27"


def test_missing_water_model(tmp_path: Path) -> None:
    top = fake_top(tmp_path)
    with pytest.raises(HelixflowError, match="water model 'spce'") as info:
        GromacsSettings(force_field="charmm27", water="spce").check_installed(top)
    assert info.value.hint == "available: tip3p"


def test_gmxdata_environment_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = fake_top(tmp_path)
    monkeypatch.setenv("GMXDATA", str(tmp_path))
    assert GromacsSettings().check_installed() == top / "amber99sb-ildn.ff"
