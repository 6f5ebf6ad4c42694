"""A GROMACS simulation of a peptide in water, described as a job: input files (the
structure and one .mdp per stage, rendered from a `GromacsSettings` block), a list of argv
commands and the output names (`md_job`). The job runs anywhere that runs argv lists in a
directory: the Slurm sub-flow, or `tasks.gromacs_local.run_md_locally`;
`tasks.gromacs_outputs.md_outputs_to_netcdf` turns the finished job directory into an
AMBER-convention NetCDF trajectory. Pure functions, no Prefect (the tasks are
`tasks.gromacs`).

The commands, run in order in the job directory (all paths relative to it):

    gmx pdb2gmx   peptide.pdb -> processed.gro, topol.top, posre.itp (-ff, -water, -ignh)
    gmx editconf  -> boxed.gro (-c -d box_nm -bt box_type)
    gmx solvate   -> solvated.gro (topol.top gains the waters)
    gmx grompp    ions.mdp -> ions.tpr;  genion (SOL group) -> ionized.gro
    gmx grompp/mdrun em  -> em.gro;   nvt (-r em.gro) -> nvt.gro/.cpt
    [gmx grompp/mdrun npt] -> npt.gro/.cpt;   md -> md.tpr, md.xtc, md.edr, md.log, md.gro
    gmx energy    md.edr -> energy.xvg (potential, kinetic, total, temperature, pressure)
    gmx trjconv   md.xtc -> md-whole.xtc (-pbc mol -center: every molecule whole, the
                  peptide centred in the box in every frame, so it never jumps across a
                  periodic boundary; this is the trajectory the NetCDF is made from)

No command goes through a shell string. `genion`, `energy` and `trjconv` read their
group selections from stdin; an argv list cannot pipe, so those run under a constant
wrapper, ``sh -c 'sel=$1; shift; printf "%s\\n" "$sel" | "$@"' helixflow-stdin
<selection> gmx ...``: the selection and the gmx command are positional arguments, never
parsed by the shell, so no value from a block or a sequence can inject shell syntax.
The NVT, NPT and production `mdrun`s run under a second constant wrapper that also saves
their stderr to `<stage>.stderr` (where GROMACS 2022 writes LINCS warnings; see
`STDERR_WRAPPER`), the file name again a positional argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from helixflow.blocks.gromacs import GromacsSettings
from helixflow.tasks.peptides import peptide_pdb_text

STDIN_WRAPPER = 'sel=$1; shift; printf "%s\\n" "$sel" | "$@"'
"""The one shell script helixflow runs: pipe $1 (a selection) into the command "$@"."""
STDIN_WRAPPER_NAME = "helixflow-stdin"

STDERR_WRAPPER = 'out=$1; shift; "$@" 2>"$out"; rc=$?; cat "$out" >&2; exit $rc'
"""The other one: run "$@" with its stderr saved to the file $1 (then copied to stderr,
the exit status kept). GROMACS 2022 writes LINCS warnings to mdrun's stderr only, not to
the .log, so the checks read the saved `<stage>.stderr`."""
STDERR_WRAPPER_NAME = "helixflow-stderr"

ENERGY_TERMS: tuple[str, ...] = (
    "Potential", "Kinetic-En.", "Total-Energy", "Temperature", "Pressure",
)
"""`gmx energy` terms extracted from md.edr into energy.xvg."""

WHOLE_TRAJECTORY = "md-whole.xtc"
"""md.xtc with molecules whole and the peptide centred (`gmx trjconv -pbc mol -center`)."""

MD_OUTPUTS: tuple[str, ...] = (
    "topol.top", "md.tpr", "md.gro", "md.xtc", "md.edr", "md.log", "energy.xvg",
    WHOLE_TRAJECTORY, "em.log", "nvt.log", "nvt.stderr", "md.stderr",
)
"""What a finished job leaves that `md_outputs_to_netcdf`, the sanity checks
(tasks/md_checks.py: EM, NVT and MD logs, mdrun's stderr) and provenance need;
`md_outputs` adds npt.log and npt.stderr when NPT runs."""

def with_stdin(selection: str, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` with `selection` (plus a newline) on its stdin; no quoting.

    Args:
        selection: the text fed to stdin (e.g. a gmx group name).
        argv: the command to run.

    Returns:
        ["sh", "-c", STDIN_WRAPPER, …, selection, *argv].
    """
    return ["sh", "-c", STDIN_WRAPPER, STDIN_WRAPPER_NAME, selection, *argv]


def with_stderr_file(path: str, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` with its stderr also saved to `path`; no quoting.

    Args:
        path: the file, relative to the working directory, that receives a copy of stderr.
        argv: the command to run.

    Returns:
        ["sh", "-c", STDERR_WRAPPER, …, path, *argv].
    """
    return ["sh", "-c", STDERR_WRAPPER, STDERR_WRAPPER_NAME, path, *argv]


def md_commands(settings: GromacsSettings, structure: str = "peptide.pdb") -> list[list[str]]:
    """The job's argv commands, in order, with paths relative to the job directory.

    Expects `structure` and the .mdp files of `md_input_files` in the directory.

    Args:
        settings: GROMACS settings (executable, force field, box, ions, stages, threads).
        structure: the start structure's file name in the job directory.

    Returns:
        One argv per step: pdb2gmx, editconf, solvate, (grompp + genion), grompp + mdrun per
        stage (em, nvt, npt if enabled, md), gmx energy, trjconv.
    """
    s = settings
    gmx = [s.gmx, "-quiet", "-nobackup"]
    maxwarn = ["-maxwarn", str(s.maxwarn)]
    cmds: list[list[str]] = [
        [*gmx, "pdb2gmx", "-f", structure, "-o", "processed.gro", "-p", "topol.top",
         "-i", "posre.itp", "-ff", s.force_field, "-water", s.water, "-ignh"],
        [*gmx, "editconf", "-f", "processed.gro", "-o", "boxed.gro", "-c",
         "-d", repr(s.box_nm), "-bt", s.box_type],
        [*gmx, "solvate", "-cp", "boxed.gro", "-cs", s.solvent_box, "-p", "topol.top",
         "-o", "solvated.gro"],
    ]
    start = "solvated.gro"
    if s.neutralise or s.ion_concentration > 0:
        genion = [*gmx, "genion", "-s", "ions.tpr", "-o", "ionized.gro", "-p", "topol.top",
                  "-pname", s.positive_ion, "-nname", s.negative_ion]
        if s.neutralise:
            genion.append("-neutral")
        if s.ion_concentration > 0:
            genion += ["-conc", repr(s.ion_concentration)]
        cmds += [
            # Before genion the system is charged: grompp's one net-charge warning is
            # expected here (genion fixes it), so this grompp alone allows it.
            [*gmx, "grompp", "-f", "ions.mdp", "-c", "solvated.gro", "-p", "topol.top",
             "-o", "ions.tpr", "-maxwarn", str(s.maxwarn + 1)],
            with_stdin("SOL", genion),
        ]
        start = "ionized.gro"
    mdrun = ["-ntmpi", "1", "-ntomp", str(s.ntomp), "-nb", "cpu"]
    stages = ["em", "nvt", *(["npt"] if s.npt_enabled else []), "md"]
    previous: str | None = None
    for stage in stages:
        grompp = [*gmx, "grompp", "-f", f"{stage}.mdp", "-p", "topol.top", "-o", f"{stage}.tpr"]
        if previous is None:
            grompp += ["-c", start]
        else:
            grompp += ["-c", f"{previous}.gro"]
            if previous != "em":
                grompp += ["-t", f"{previous}.cpt"]
            if stage in ("nvt", "npt") and s.posres:
                grompp += ["-r", f"{previous}.gro"]
        run = [*gmx, "mdrun", "-deffnm", stage, *mdrun]
        cmds += [[*grompp, *maxwarn],
                 run if stage == "em" else with_stderr_file(f"{stage}.stderr", run)]
        previous = stage
    cmds.append(with_stdin(
        "\n".join(ENERGY_TERMS) + "\n",
        [*gmx, "energy", "-f", "md.edr", "-o", "energy.xvg"],
    ))
    # Centre on the peptide, write every atom; -pbc mol makes molecules whole first.
    cmds.append(with_stdin("Protein\nSystem", [
        *gmx, "trjconv", "-s", "md.tpr", "-f", "md.xtc", "-o", WHOLE_TRAJECTORY,
        "-pbc", "mol", "-center"]))
    return cmds


def md_outputs(settings: GromacsSettings) -> tuple[str, ...]:
    """The outputs a job with these settings leaves (npt.* only when NPT runs).

    Args:
        settings: GROMACS settings; `npt_enabled` adds npt.log and npt.stderr.

    Returns:
        File names, relative to the job directory.
    """
    return (*MD_OUTPUTS, "npt.log", "npt.stderr") if settings.npt_enabled else MD_OUTPUTS


def md_input_files(
    settings: GromacsSettings, sequence: str, structure: str = "peptide.pdb"
) -> dict[str, str]:
    """File name -> text of every input the commands need: the structure and the .mdp's.

    Args:
        settings: GROMACS settings; they write the .mdp texts.
        sequence: the peptide, standard one-letter residues only.
        structure: the structure's file name.

    Returns:
        {file name: text}: the structure (PDB) and em/ions/nvt/(npt)/md .mdp files.

    Raises:
        InputError: an empty sequence or a non-standard residue.
    """
    files = {structure: peptide_pdb_text(sequence)}
    for stage in ("em", "ions", "nvt", *(["npt"] if settings.npt_enabled else []), "md"):
        files[f"{stage}.mdp"] = settings.mdp(stage)
    return files


@dataclass(frozen=True)
class MdJob:
    """A simulation as a job: files to place, argv commands to run there, outputs to keep."""

    sequence: str
    files: dict[str, str]
    commands: list[list[str]]
    outputs: tuple[str, ...] = MD_OUTPUTS
    parameters: dict[str, object] = field(default_factory=dict)

    def write_inputs(self, directory: str | Path) -> dict[str, Path]:
        """Write the input files into `directory` (created); name -> path.

        The mapping is what a batch job's `inputs` takes (e.g. helixflow.slurm.JobSpec),
        and `directory` itself can serve as the job directory of `run_md_locally`.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Path] = {}
        for name, text in self.files.items():
            paths[name] = directory / name
            paths[name].write_text(text)
        return paths


def md_job(settings: GromacsSettings, sequence: str, *, check_installed: bool = True) -> MdJob:
    """The complete job for one peptide; checks the force field here unless told not to
    (a job built on a submit host without GROMACS may skip it).

    Args:
        settings: GROMACS settings.
        sequence: the peptide, standard one-letter residues only.
        check_installed: check here that GROMACS and the force field are installed.

    Returns:
        The MdJob: input files, commands, outputs and MD parameters.

    Raises:
        InputError: an empty sequence or a non-standard residue.
    """
    if check_installed:
        settings.check_installed()
    return MdJob(
        sequence=sequence,
        files=md_input_files(settings, sequence),
        commands=md_commands(settings),
        outputs=md_outputs(settings),
        parameters=settings.md_parameters(),
    )
