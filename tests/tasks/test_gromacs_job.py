"""Tests for tasks/gromacs_job.py: the job's argv commands, inputs and shell wrappers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helixflow.blocks.gromacs import GromacsSettings
from helixflow.tasks.gromacs_job import (
    ENERGY_TERMS,
    MD_OUTPUTS,
    STDERR_WRAPPER,
    STDIN_WRAPPER,
    WHOLE_TRAJECTORY,
    md_commands,
    md_input_files,
    md_job,
    md_outputs,
    with_stderr_file,
    with_stdin,
)
from helixflow.tasks.gromacs_local import describe_command

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
