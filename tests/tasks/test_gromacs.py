"""Tests for tasks/gromacs.py: peptides, start structures, the job's argv commands, the
local runner's errors, and (integration) a real short GROMACS run to an AMBER NetCDF."""

from __future__ import annotations

import math
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import MDAnalysis as mda
import netCDF4
import numpy as np
import pytest
from Bio.PDB import PDBParser

from helixflow.blocks.gromacs import GromacsSettings
from helixflow.errors import HelixflowError, InputError
from helixflow.flows.simulate import DEMO_MD
from helixflow.tasks.gromacs import (
    ENERGY_TERMS,
    MD_OUTPUTS,
    STDERR_WRAPPER,
    STDIN_WRAPPER,
    WHOLE_TRAJECTORY,
    add_checks_attribute,
    build_peptide_pdb,
    describe_command,
    gromacs_error,
    md_commands,
    md_input_files,
    md_job,
    md_outputs,
    md_outputs_to_netcdf,
    peptide_from_protein,
    peptides_from_orfs,
    read_xvg,
    run_md_locally,
    with_stderr_file,
    with_stdin,
)
from helixflow.tasks.md_checks import MdChecks, check_simulation, peptide_topology
from helixflow.tasks.orfs import OrfParams, find_orfs
from tests.conftest import require_tool

# --------------------------------------------------------------------------------------
# Peptides


@pytest.mark.parametrize(
    ("protein", "kwargs", "expected"),
    [
        ("MKFGW*", {}, "MKFGW"),
        ("*MKFGW**", {}, "MKFGW"),
        ("mkf gw\n", {}, "MKFGW"),
        ("MKXXFGW", {}, "MKFGW"),
        ("MKXXFGW", {"unknown": "A"}, "MKAAFGW"),
        ("MBZJUO", {}, "MNQLCK"),
        ("MK-F.GW", {}, "MKFGW"),
        ("MKFGW*AAAAAAAA", {}, "MKFGW"),  # read up to the first internal stop
        ("ACDEFGHIKLMNPQRSTVWY", {"max_len": 6}, "ACDEFG"),
        ("ACDEFGHIKLMNPQRSTVWY", {"max_len": 6, "window": "center"}, "IKLMNP"),
        ("ACDEFGHIKLMNPQRSTVWY", {"max_len": 5, "window": "center"}, "IKLMN"),
        ("ACDEF", {"min_len": 5, "max_len": 5}, "ACDEF"),
    ],
)
def test_peptide_from_protein(protein: str, kwargs: dict, expected: str) -> None:
    assert peptide_from_protein(protein, **kwargs) == expected


def test_too_short_peptide_is_a_clear_input_error() -> None:
    with pytest.raises(InputError, match=r"contig_7: peptide has 3 standard residues") as info:
        peptide_from_protein("MXKXF*", min_len=5, name="contig_7")
    assert info.value.hint and "longer ORF" in info.value.hint
    with pytest.raises(InputError, match="fewer than min_len=1"):
        peptide_from_protein("***", min_len=1)


def test_non_residue_characters_and_bad_arguments() -> None:
    with pytest.raises(InputError, match="'1' is not an amino-acid letter"):
        peptide_from_protein("MK1FGW")
    with pytest.raises(ValueError, match="min_len"):
        peptide_from_protein("MKFGW", min_len=8, max_len=5)
    with pytest.raises(ValueError, match="unknown"):
        peptide_from_protein("MKFGW", unknown="X")
    with pytest.raises(ValueError, match="window"):
        peptide_from_protein("ACDEFGHIKL", max_len=5, window="end")  # type: ignore[arg-type]


def test_peptides_from_longest_orfs() -> None:
    seqs = [
        ("a", "ATGAAATTTGGGTGGTAA" + "CC" + "ATGAAATTTGGGTGGCATCATCATTAA"),
        ("b", "ATGAAATAA"),  # longest ORF gives a 2-residue peptide: left out
    ]
    orfs = find_orfs(seqs, OrfParams(min_length_nt=9))
    assert peptides_from_orfs(orfs) == {"a": "MKFGWHHH"}
    assert peptides_from_orfs(orfs, ["b"]) == {}
    assert peptides_from_orfs(orfs, max_len=5) == {"a": "MKFGW"}


def test_build_peptide_pdb(tmp_path: Path) -> None:
    path = build_peptide_pdb("MKFGW", tmp_path / "pep.pdb")
    structure = PDBParser(QUIET=True).get_structure("p", path)
    residues = list(structure.get_residues())
    assert [r.get_resname() for r in residues] == ["MET", "LYS", "PHE", "GLY", "TRP"]
    assert "OXT" in residues[-1]
    assert not any(a.element == "H" for a in structure.get_atoms())  # pdb2gmx adds them
    ca = [r["CA"].coord for r in residues]
    assert np.linalg.norm(ca[-1] - ca[0]) > 12.0  # extended: ~3.3-3.8 Å per residue
    with pytest.raises(InputError):
        build_peptide_pdb("MKXGW", tmp_path / "bad.pdb")


# --------------------------------------------------------------------------------------
# The job


def tiny_settings(**fields: object) -> GromacsSettings:
    """A few hundred steps: seconds of mdrun for a 5-residue peptide."""
    base: dict[str, object] = {
        "em_nsteps": 200, "nvt_nsteps": 200, "npt_nsteps": 200, "md_nsteps": 500,
        "nstxout_compressed": 100, "nstenergy": 100, "nstlog": 100, "ntomp": 1,
    }
    return GromacsSettings(**{**base, **fields})


def subcommand(argv: list[str]) -> str:
    return describe_command(argv).split()[1]


def test_md_commands_default_sequence() -> None:
    cmds = md_commands(GromacsSettings(ntomp=3))
    assert all(isinstance(c, list) and all(isinstance(a, str) for a in c) for c in cmds)
    assert [subcommand(c) for c in cmds] == [
        "pdb2gmx", "editconf", "solvate", "grompp", "genion",
        "grompp", "mdrun", "grompp", "mdrun", "grompp", "mdrun", "energy", "trjconv",
    ]
    pdb2gmx = cmds[0]
    for flag, value in (("-ff", "amber99sb-ildn"), ("-water", "tip3p"), ("-f", "peptide.pdb")):
        assert pdb2gmx[pdb2gmx.index(flag) + 1] == value
    assert "-ignh" in pdb2gmx
    editconf = cmds[1]
    assert editconf[editconf.index("-d") + 1] == "1.0"
    assert editconf[editconf.index("-bt") + 1] == "cubic"
    assert cmds[2][cmds[2].index("-cs") + 1] == "spc216.gro"
    genion = cmds[4]
    assert genion[:5] == ["sh", "-c", STDIN_WRAPPER, "helixflow-stdin", "SOL"]
    assert genion[5:] == [
        "gmx", "-quiet", "-nobackup", "genion", "-s", "ions.tpr", "-o", "ionized.gro",
        "-p", "topol.top", "-pname", "NA", "-nname", "CL", "-neutral",
    ]
    for mdrun in (c for c in cmds if subcommand(c) == "mdrun"):
        assert mdrun[-6:] == ["-ntmpi", "1", "-ntomp", "3", "-nb", "cpu"]
    em_run, nvt_run, md_run = (c for c in cmds if subcommand(c) == "mdrun")
    assert em_run[0] == "gmx"  # dynamics save their stderr (LINCS warnings) to a file
    assert nvt_run[:5] == ["sh", "-c", STDERR_WRAPPER, "helixflow-stderr", "nvt.stderr"]
    assert md_run[4] == "md.stderr" and {"nvt.stderr", "md.stderr"} <= set(MD_OUTPUTS)
    nvt_grompp, md_grompp = cmds[7], cmds[9]
    assert nvt_grompp[nvt_grompp.index("-r") + 1] == "em.gro"
    assert md_grompp[md_grompp.index("-t") + 1] == "nvt.cpt"
    assert "-r" not in md_grompp
    energy = cmds[-2]
    assert energy[4] == "\n".join(ENERGY_TERMS) + "\n"
    assert energy[-4:] == ["-f", "md.edr", "-o", "energy.xvg"]
    trjconv = cmds[-1]  # centre on the peptide, write the whole system, molecules whole
    assert trjconv[4] == "Protein\nSystem"
    assert trjconv[5:] == ["gmx", "-quiet", "-nobackup", "trjconv", "-s", "md.tpr", "-f",
                           "md.xtc", "-o", WHOLE_TRAJECTORY, "-pbc", "mol", "-center"]
    assert WHOLE_TRAJECTORY in MD_OUTPUTS and {"em.log", "nvt.log"} <= set(MD_OUTPUTS)


def test_md_commands_with_npt_salt_and_no_posres() -> None:
    cmds = md_commands(GromacsSettings(npt_enabled=True, ion_concentration=0.15, posres=False))
    names = [describe_command(c) for c in cmds]
    assert "gmx mdrun -deffnm npt" in names
    assert md_outputs(GromacsSettings(npt_enabled=True)) == (*MD_OUTPUTS, "npt.log",
                                                              "npt.stderr")
    assert md_outputs(GromacsSettings()) == MD_OUTPUTS
    npt_grompp = cmds[names.index("gmx grompp -o npt.tpr")]
    assert npt_grompp[npt_grompp.index("-t") + 1] == "nvt.cpt" and "-r" not in npt_grompp
    md_grompp = cmds[names.index("gmx grompp -o md.tpr")]
    assert md_grompp[md_grompp.index("-c") + 1] == "npt.gro"
    genion = cmds[names.index("gmx genion -o ionized.gro")]
    assert genion[genion.index("-conc") + 1] == "0.15"


def test_md_commands_without_ions() -> None:
    cmds = md_commands(GromacsSettings(neutralise=False))
    assert "genion" not in [subcommand(c) for c in cmds]
    em = cmds[3]
    assert em[em.index("-c") + 1] == "solvated.gro" and em[em.index("-f") + 1] == "em.mdp"


def test_md_job_writes_its_inputs(tmp_path: Path) -> None:
    job = md_job(tiny_settings(), "MKFGW", check_installed=False)
    paths = job.write_inputs(tmp_path / "stage")
    assert sorted(paths) == sorted(job.files) and all(p.is_file() for p in paths.values())
    assert paths["md.mdp"].read_text() == tiny_settings().mdp("md")
    assert job.outputs == MD_OUTPUTS and job.commands == md_commands(tiny_settings())
    assert job.parameters["md_nsteps"] == 500 and job.sequence == "MKFGW"


def test_md_input_files() -> None:
    files = md_input_files(tiny_settings(npt_enabled=True), "MKFGW")
    assert sorted(files) == ["em.mdp", "ions.mdp", "md.mdp", "npt.mdp", "nvt.mdp", "peptide.pdb"]
    assert "nsteps                   = 500" in files["md.mdp"]
    assert files["peptide.pdb"].startswith("ATOM")


def test_stderr_wrapper_saves_stderr_and_keeps_the_exit_status(tmp_path: Path) -> None:
    nasty = "err; $(touch pwned) 'x"
    code = f"import sys; print('out'); print({nasty!r}, file=sys.stderr); sys.exit(3)"
    argv = with_stderr_file("my stage.stderr", [sys.executable, "-c", code])
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (3, "out\n", nasty + "\n")
    assert (tmp_path / "my stage.stderr").read_text() == nasty + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my stage.stderr"]
    assert describe_command(with_stderr_file("md.stderr", ["gmx", "mdrun", "-deffnm", "md"])
                            ) == "gmx mdrun -deffnm md"


def test_stdin_wrapper_passes_values_literally(tmp_path: Path) -> None:
    """The selection and the command are data, never shell syntax."""
    nasty = "SOL; touch pwned $(touch pwned2) `touch pwned3` 'x\" \\"
    argv = with_stdin(nasty, [sys.executable, "-c", "import sys; print(sys.stdin.read(), end='')"])
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout == nasty + "\n"
    assert list(tmp_path.iterdir()) == []
    failing = with_stdin("x", [sys.executable, "-c", "import sys; sys.exit(7)"])
    assert subprocess.run(failing, check=False).returncode == 7  # the command's status


GROMPP_LOG = """\
Ignoring obsolete mdp entry 'title'

ERROR 1 [file ions.mdp, line 18]:
  Invalid enum 'bogus' for variable integrator, using 'md'

-------------------------------------------------------
Program:     gmx grompp, version 2022.5-Debian_2022.5_2
Source file: src/gromacs/gmxpreprocess/grompp.cpp (line 2413)

Fatal error:
There was 1 error in input file(s)

For more information and tips for troubleshooting, please check the GROMACS
website at http://www.gromacs.org/Documentation/Errors
-------------------------------------------------------
"""


def test_gromacs_error_text() -> None:
    assert gromacs_error(GROMPP_LOG) == (
        "ERROR 1 [file ions.mdp, line 18]: Invalid enum 'bogus' for variable integrator, "
        "using 'md' Fatal error: There was 1 error in input file(s)"
    )
    assert gromacs_error("a\nb\nsegfault\n") == "a | b | segfault"


def test_run_md_locally_names_the_failing_step(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "gmx"  # a stand-in gmx that fails like grompp does
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stderr.write({GROMPP_LOG!r})\nsys.exit(1)\n"
    )
    fake.chmod(0o755)
    ok = [sys.executable, "-c", "print('fine')"]
    bad = [str(fake), "-quiet", "grompp", "-f", "nvt.mdp", "-o", "nvt.tpr"]
    workdir = tmp_path / "job"
    with pytest.raises(HelixflowError) as info:
        run_md_locally([ok, bad, ok], workdir)
    message = str(info.value)
    assert message.startswith("gmx grompp -o nvt.tpr failed (exit 1): ERROR 1 [file ions.mdp")
    assert "Invalid enum 'bogus'" in message and "\n" not in message
    assert info.value.hint == f"full output in {workdir / 'logs' / '02-grompp.log'}"
    logs = sorted(p.name for p in (workdir / "logs").iterdir())
    assert logs == [f"01-{Path(sys.executable).name}.log", "02-grompp.log"]


def test_run_md_locally_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(HelixflowError, match="'gmx-not-here' not found") as info:
        run_md_locally([["gmx-not-here", "grompp"]], tmp_path)
    assert info.value.hint and "apt-get install gromacs" in info.value.hint


def test_describe_command() -> None:
    assert describe_command(["gmx", "-quiet", "mdrun", "-deffnm", "md"]) == "gmx mdrun -deffnm md"
    wrapped = with_stdin("SOL", ["/usr/bin/gmx_mpi", "genion", "-s", "x.tpr", "-o", "y.gro"])
    assert describe_command(wrapped) == "gmx_mpi genion -o y.gro"


def test_read_xvg(tmp_path: Path) -> None:
    path = tmp_path / "energy.xvg"
    path.write_text(
        '# comment\n@    title "GROMACS Energies"\n@ s0 legend "Potential"\n'
        '@ s1 legend "Kinetic En."\n    0.0  -10.5  3.0\n    0.2  -11.0  3.5\n'
    )
    t, cols = read_xvg(path)
    np.testing.assert_array_equal(t, [0.0, 0.2])
    assert list(cols) == ["Potential", "Kinetic En."]
    np.testing.assert_array_equal(cols["Kinetic En."], [3.0, 3.5])


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
