"""Tests for tasks/gromacs_local.py: the local runner's errors and command labels."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helixflow.errors import HelixflowError
from helixflow.tasks.gromacs_job import with_stdin
from helixflow.tasks.gromacs_local import describe_command, gromacs_error, run_md_locally

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
