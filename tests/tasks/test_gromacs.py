"""Tests for tasks/gromacs.py and the GROMACS modules together (integration): a real short
GROMACS run to an AMBER NetCDF, its sanity checks, errors from grompp, NPT with salt."""

from __future__ import annotations

import math
import shlex
import time
import warnings
from pathlib import Path

import MDAnalysis as mda
import netCDF4
import numpy as np
import pytest

from helixflow.blocks.gromacs import GromacsSettings
from helixflow.errors import HelixflowError
from helixflow.flows.simulate import DEMO_MD
from helixflow.tasks.gromacs import add_checks_attribute
from helixflow.tasks.gromacs_job import MD_OUTPUTS, WHOLE_TRAJECTORY, md_job
from helixflow.tasks.gromacs_local import run_md_locally
from helixflow.tasks.gromacs_outputs import md_outputs_to_netcdf
from helixflow.tasks.md_checks import MdChecks, check_simulation, peptide_topology
from tests.conftest import require_tool
from tests.tasks.test_gromacs_job import tiny_settings

# --------------------------------------------------------------------------------------
# Integration: a real short simulation


@pytest.fixture(scope="module")
def md_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float], float]:
    require_tool("gmx")
    workdir = tmp_path_factory.mktemp("md")
    job = md_job(tiny_settings(), "MKFGW")
    job.write_inputs(workdir)
    began = time.perf_counter()
    seconds = run_md_locally(job.commands, workdir, timeout=600)
    return workdir, seconds, time.perf_counter() - began


@pytest.mark.integration
def test_short_md_to_amber_netcdf(md_run: tuple[Path, list[float], float]) -> None:
    workdir, seconds, wall = md_run
    print(f"\nMD job wall time {wall:.1f} s; per command {[round(s, 1) for s in seconds]}")
    for name in MD_OUTPUTS:
        assert (workdir / name).is_file(), name
    out = md_outputs_to_netcdf(workdir, workdir / "md.nc", {"run_id": "test", "peptide": "MKFGW"})
    # The NetCDF is made from md-whole.xtc (trjconv -pbc mol -center), frame for frame.
    reference = mda.Universe(str(workdir / "md.tpr"), str(workdir / WHOLE_TRAJECTORY))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the file must satisfy the reader
        u = mda.Universe(str(workdir / "md.tpr"), str(out))
    assert u.atoms.n_atoms == reference.atoms.n_atoms > 1000  # peptide + water + ions
    assert len(u.trajectory) == len(reference.trajectory) == 6  # steps 0, 100, ..., 500
    for ts, ref in zip(u.trajectory, reference.trajectory, strict=True):
        assert ts.time == pytest.approx(ref.time, abs=1e-4)  # 0.2 ps apart
        np.testing.assert_allclose(ts.dimensions, ref.dimensions, rtol=1e-6)
        water = u.select_atoms("resname SOL")
        np.testing.assert_allclose(water.positions, reference.select_atoms("resname SOL")
                                   .positions, atol=1e-4)  # angstrom, like MDAnalysis' own
    with netCDF4.Dataset(out) as ds:
        assert (ds.Conventions, ds.ConventionVersion, ds.application) == ("AMBER", "1.0", "GROMACS")
        assert ds.peptide == "MKFGW" and ds.gromacs_version.startswith("2022")
        n = ds.dimensions["time_series"].size
        assert n == 6
        for name in ("potential_energy", "kinetic_energy", "total_energy", "temperature",
                     "pressure", "rmsd", "radius_of_gyration"):
            values = ds[name][:]
            assert len(values) > 0 and np.all(np.isfinite(values)), name
        assert np.all(ds["potential_energy"][:] < 0)
        assert 200 < float(np.mean(ds["temperature"][1:])) < 400
        assert ds["rmsd"][0] == pytest.approx(0.0, abs=1e-3) and np.all(ds["rmsd"][:] < 5)
        assert np.all((ds["radius_of_gyration"][:] > 3) & (ds["radius_of_gyration"][:] < 15))
        assert not math.isnan(float(ds["series_time"][-1]))


@pytest.mark.integration
def test_sanity_checks_of_a_real_run(tmp_path: Path) -> None:
    """Every check passes on a real run of the pipeline's demo length (500 EM, 500 NVT,
    1000 MD steps); the same file with the peptide moved by one box edge in the last
    frame (what a jump across the boundary looks like) fails the pbc check, and only it."""
    require_tool("gmx")
    job = md_job(GromacsSettings(**DEMO_MD), "MKFGW")
    job.write_inputs(tmp_path)
    run_md_locally(job.commands, tmp_path, timeout=600)
    workdir = tmp_path
    out = md_outputs_to_netcdf(workdir, workdir / "checked.nc")
    checks = check_simulation(workdir, out)
    print(f"\nchecks: {checks.row()}")
    assert checks.passed, checks.failures()
    assert checks.fmax is not None and checks.fmax < checks.emtol == 1000.0
    assert checks.mean_t is not None and abs(checks.mean_t - 300.0) <= 5.0
    assert checks.lincs_warnings == 0 and 0.8 < checks.max_bond < 2.0  # C-S is 1.81 Å
    assert checks.max_com_jump < checks.jump_limit
    add_checks_attribute(out, checks)
    with netCDF4.Dataset(out) as ds:
        assert MdChecks.model_validate_json(ds.md_checks) == checks
        edge = float(ds["cell_lengths"][-1, 0])
    indices, _, _ = peptide_topology(workdir / "md.tpr")
    peptide = slice(int(indices.min()), int(indices.max()) + 1)
    with netCDF4.Dataset(out, "a") as ds:
        ds["coordinates"][-1, peptide, 0] = ds["coordinates"][-1, peptide, 0] + edge
    jumped = check_simulation(workdir, out)
    assert not jumped.pbc_ok and jumped.max_com_jump > 0.9 * edge
    assert (jumped.em_ok, jumped.temperature_ok, jumped.lincs_ok) == (True, True, True)
    assert jumped.failures()[0].startswith("pbc: peptide centre-of-mass jump")
    # mdrun's saved stderr is where LINCS warnings are counted (GROMACS 2022's md.log has none).
    captured = Path(__file__).parent / "data" / "gromacs" / "nvt-lincs.stderr"
    with open(workdir / "md.stderr", "a") as err:
        err.write(captured.read_text())
    lincs = check_simulation(workdir, out)
    assert lincs.lincs_warnings == 4 and not lincs.lincs_ok


@pytest.mark.integration
def test_bad_mdp_value_fails_in_grompp_with_gromacs_text(tmp_path: Path) -> None:
    require_tool("gmx")
    job = md_job(tiny_settings(extra_mdp={"integrator": "bogus"}), "MKFGW")
    job.write_inputs(tmp_path)
    with pytest.raises(HelixflowError) as info:
        run_md_locally(job.commands, tmp_path, timeout=300)
    message = str(info.value)
    assert message.startswith("gmx grompp -o ions.tpr failed (exit 1)")
    assert "Invalid enum 'bogus' for variable integrator" in message
    assert info.value.hint and (tmp_path / "logs").is_dir()
    assert not (tmp_path / "em.gro").exists()
    print(shlex.join(job.commands[3]))


@pytest.mark.integration
def test_npt_with_salt_and_another_force_field(tmp_path: Path) -> None:
    """NPT equilibration, NPT production and 0.15 M NaCl with charmm27: grompp accepts
    every rendered .mdp and the box breathes in the NetCDF cell lengths."""
    require_tool("gmx")
    settings = tiny_settings(
        force_field="charmm27", npt_enabled=True, md_pcoupl=True, ion_concentration=0.15,
        nvt_nsteps=100, npt_nsteps=100, md_nsteps=200,
    )
    job = md_job(settings, "GGSGG")
    job.write_inputs(tmp_path)
    run_md_locally(job.commands, tmp_path, timeout=600)
    out = md_outputs_to_netcdf(tmp_path, tmp_path / "md.nc")
    u = mda.Universe(str(tmp_path / "md.tpr"), str(out))
    assert len(u.select_atoms("resname NA")) == len(u.select_atoms("resname CL")) > 0
    with netCDF4.Dataset(out) as ds:
        lengths = ds["cell_lengths"][:]
        assert lengths.shape == (3, 3) and not np.allclose(lengths[0], lengths[-1], atol=1e-6)
        assert np.all(np.isfinite(ds["pressure"][:]))
