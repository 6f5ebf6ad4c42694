"""From representative sequences to GROMACS simulations of peptides in water.

Pure functions (no Prefect): a representative's longest ORF becomes a peptide
(`peptide_from_protein`), the peptide an extended start structure (`build_peptide_pdb`,
PeptideBuilder), and `md_job` describes the whole simulation as a job: input files (the
structure and one .mdp per stage, rendered from a `GromacsSettings` block), a list of
argv commands and the output names. The job runs anywhere that runs argv lists in a
directory: the Slurm sub-flow, or `run_md_locally` here. `md_outputs_to_netcdf` turns
the job directory into an AMBER-convention NetCDF trajectory with energy, temperature,
pressure, RMSD and radius-of-gyration series (tasks/netcdf.py).

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

import io
import os
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from prefect import task
from pydantic import BaseModel

from helixflow.artifacts import Artifact
from helixflow.blocks.gromacs import GromacsSettings
from helixflow.caching import stage_options
from helixflow.errors import HelixflowError, InputError
from helixflow.store import Store
from helixflow.tables import publish_file
from helixflow.tasks.md_checks import MdChecks, check_simulation
from helixflow.tools import tool_version

STANDARD_AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWY")
# Ambiguity codes and rare residues -> the closest standard residue PeptideBuilder builds.
NEAREST_STANDARD: dict[str, str] = {"B": "N", "Z": "Q", "J": "L", "U": "C", "O": "K"}

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


# --------------------------------------------------------------------------------------
# Peptides


def peptide_from_protein(
    protein: str,
    min_len: int = 5,
    max_len: int = 20,
    window: Literal["start", "center"] = "start",
    *,
    unknown: str = "drop",
    name: str = "protein",
) -> str:
    """A simulable peptide from an ORF's protein: standard residues, min_len..max_len long.

    The protein is read up to its first stop ('*'; leading and trailing ones are
    stripped), upper-cased, gaps ('-', '.') and whitespace removed, B/Z/J/U/O mapped to
    the nearest standard residue, and X dropped (``unknown="drop"``) or replaced by
    `unknown` (a standard residue letter). A longer result is cut to a window of max_len
    residues at its start or centre.

    Raises InputError (located at `name`) when fewer than min_len residues remain or the
    protein holds characters that are not residues.

    Args:
        protein: one-letter amino-acid sequence, any case.
        min_len: fewest residues accepted, >= 1.
        max_len: most residues kept, >= min_len.
        window: where the max_len window is taken from a longer peptide: "start" or "center".
        unknown: "drop" to remove X, or a standard residue letter to put in its place.
        name: where the protein comes from (e.g. its seq_id), for error messages.

    Returns:
        The peptide, min_len..max_len standard residues, upper case.

    Raises:
        InputError: too few residues remain, or a character is not an amino-acid letter.
        ValueError: bad min_len/max_len, window or unknown.

    Example:
        >>> peptide_from_protein("MKXFGbz*", min_len=3)
        'MKFGNQ'
    """
    if min_len < 1 or max_len < min_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}..{max_len}")
    if window not in ("start", "center"):
        raise ValueError(f"window must be 'start' or 'center', got {window!r}")
    if unknown != "drop" and unknown not in STANDARD_AMINO_ACIDS:
        raise ValueError(f"unknown must be 'drop' or a standard residue letter, got {unknown!r}")
    text = "".join(protein.split()).upper().strip("*")
    text = text.split("*", 1)[0].replace("-", "").replace(".", "")
    residues: list[str] = []
    for char in text:
        if char in STANDARD_AMINO_ACIDS:
            residues.append(char)
        elif char in NEAREST_STANDARD:
            residues.append(NEAREST_STANDARD[char])
        elif char == "X":
            if unknown != "drop":
                residues.append(unknown)
        else:
            raise InputError(name, f"{char!r} is not an amino-acid letter")
    peptide = "".join(residues)
    if len(peptide) < min_len:
        raise InputError(
            name,
            f"peptide has {len(peptide)} standard residues, fewer than min_len={min_len}",
            hint="pick a longer ORF or lower the minimum peptide length",
        )
    if len(peptide) > max_len:
        begin = 0 if window == "start" else (len(peptide) - max_len) // 2
        peptide = peptide[begin : begin + max_len]
    return peptide


def peptides_from_orfs(
    orfs: pa.Table,
    seq_ids: Sequence[str] | None = None,
    **kwargs: object,
) -> dict[str, str]:
    """seq_id -> peptide of the longest ORF of each (selected) sequence.

    `orfs` is a `find_orfs` table; sequences whose longest ORF gives too short a peptide
    are left out (they raise InputError in `peptide_from_protein`). kwargs go to
    `peptide_from_protein`.

    Args:
        orfs: a `find_orfs` table (ORFS_SCHEMA).
        seq_ids: only these sequences; None for all.
        **kwargs: min_len, max_len, window, unknown of `peptide_from_protein`.

    Returns:
        {seq_id: peptide}, for the sequences whose longest ORF gives a valid peptide.
    """
    from helixflow.tasks.orfs import longest_orf_per_sequence

    longest = longest_orf_per_sequence(orfs)
    wanted = set(seq_ids) if seq_ids is not None else None
    out: dict[str, str] = {}
    for seq_id, protein in zip(
        longest.column("seq_id").to_pylist(), longest.column("protein").to_pylist(),
        strict=True,
    ):
        if wanted is not None and seq_id not in wanted:
            continue
        try:
            out[seq_id] = peptide_from_protein(protein, name=seq_id, **kwargs)  # type: ignore[arg-type]
        except InputError:
            continue
    return out


def peptide_pdb_text(sequence: str) -> str:
    """PDB text of `sequence` in an extended conformation (PeptideBuilder), with OXT.

    The C-terminal OXT lets pdb2gmx build a charged carboxylate terminus; hydrogens are
    left to pdb2gmx (-ignh).

    Args:
        sequence: the peptide, standard one-letter residues only.

    Returns:
        The PDB file's text.

    Raises:
        InputError: an empty sequence or a non-standard residue.
    """
    from Bio.PDB import PDBIO
    from PeptideBuilder import PeptideBuilder as pb

    bad = sorted(set(sequence) - STANDARD_AMINO_ACIDS)
    if not sequence or bad:
        raise InputError("peptide", f"{sequence!r} is not a sequence of standard residues")
    structure = pb.make_extended_structure(sequence)
    pb.add_terminal_OXT(structure)
    pdbio = PDBIO()
    pdbio.set_structure(structure)
    buffer = io.StringIO()
    pdbio.save(buffer)
    return buffer.getvalue()


def build_peptide_pdb(sequence: str, path: str | Path) -> Path:
    """Write the extended start structure of `sequence` to `path` (PDB).

    Args:
        sequence: the peptide, standard one-letter residues only.
        path: the PDB file to write (overwritten).

    Returns:
        `path` as a Path.

    Raises:
        InputError: an empty sequence or a non-standard residue.
    """
    path = Path(path)
    path.write_text(peptide_pdb_text(sequence))
    return path


# --------------------------------------------------------------------------------------
# The job


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


# --------------------------------------------------------------------------------------
# Running locally


def describe_command(argv: Sequence[str]) -> str:
    """'gmx grompp -o nvt.tpr'-style label of a job command for messages.

    Args:
        argv: a job command, possibly wrapped by `with_stdin` / `with_stderr_file`.

    Returns:
        The program name, its gmx subcommand and its -deffnm or -o value; "empty command"
        for an empty argv.
    """
    args = list(argv)
    if args[:3] in (["sh", "-c", STDIN_WRAPPER], ["sh", "-c", STDERR_WRAPPER]):
        args = args[5:]
    if not args:
        return "empty command"
    label = [Path(args[0]).name]
    rest = args[1:]
    sub = next((a for a in rest if not a.startswith("-")), None)
    if sub is not None and label[0].startswith("gmx"):
        label.append(sub)
    for flag in ("-deffnm", "-o"):
        if flag in rest and rest.index(flag) + 1 < len(rest):
            label += [flag, rest[rest.index(flag) + 1]]
            break
    return " ".join(label)


def gromacs_error(text: str) -> str:
    """GROMACS' own error message from a log, on one line.

    That is the fatal-error block between dashed rules, preceded by grompp's WARNING and
    ERROR paragraphs (which say what is actually wrong when the block only says 'Too
    many warnings'); else the last lines.

    Args:
        text: a GROMACS tool's output.

    Returns:
        The message; the last 5 non-blank lines joined by " | " when there is no error
        block, or "no output".
    """
    lines = text.splitlines()
    problems: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith(("WARNING", "ERROR")) and "[" in line:
            para = [line.strip()]
            for nxt in lines[i + 1 :]:
                if not nxt.strip():
                    break
                para.append(nxt.strip())
            problems.append(" ".join(para))
    rules = [i for i, line in enumerate(lines) if line.startswith("-----")]
    fatal = ""
    for a, b in zip(rules[-2::-1], rules[:0:-1], strict=False):  # last block first
        block = [ln.strip() for ln in lines[a + 1 : b] if ln.strip()]
        if any(ln.startswith("Program:") for ln in block):
            skip = ("Program:", "Source file:", "Function:", "For more information",
                    "website at", "MPI rank:")
            fatal = " ".join(ln for ln in block if not ln.startswith(skip))
            break
    message = " ".join([*problems[-3:], fatal]).strip()
    if message:
        return message
    return " | ".join(ln.strip() for ln in lines[-5:] if ln.strip()) or "no output"


def run_md_locally(
    commands: Sequence[Sequence[str]],
    workdir: str | Path,
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> list[float]:
    """Run the job's commands in order in `workdir`; the seconds each took.

    Each command's stdout and stderr go to `workdir/logs/NN-<tool>.log`. A failing
    command raises HelixflowError naming the step (e.g. 'gmx grompp -o nvt.tpr') with
    GROMACS' error text, and the log path in the hint.

    Args:
        commands: argv lists, run without a shell, stdin closed.
        workdir: the job directory, holding the inputs; receives the outputs and logs/.
        timeout: seconds each command may take; None for no limit.
        env: variables added to the environment (GMX_MAXBACKUP=-1 is set unless overridden).

    Returns:
        Wall seconds per command, in order.

    Raises:
        HelixflowError: a command is not found, times out or exits non-zero.
    """
    workdir = Path(workdir)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_env = {**os.environ, "GMX_MAXBACKUP": "-1", **(env or {})}
    seconds: list[float] = []
    for number, argv in enumerate(commands, start=1):
        label = describe_command(argv)
        words = label.split()
        tool = words[1] if len(words) > 1 and not words[1].startswith("-") else words[0]
        log = logs / f"{number:02d}-{re.sub(r'[^A-Za-z0-9_.+-]', '_', tool)}.log"
        began = time.perf_counter()
        try:
            with open(log, "wb") as out:
                proc = subprocess.run(
                    list(argv), cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, env=run_env, timeout=timeout, check=False,
                )
        except FileNotFoundError:
            raise HelixflowError(
                f"{label}: {argv[0]!r} not found",
                hint="install GROMACS (`apt-get install gromacs`) or set GromacsSettings.gmx",
            ) from None
        except subprocess.TimeoutExpired:
            raise HelixflowError(
                f"{label} timed out after {timeout} s", hint=f"see {log}"
            ) from None
        seconds.append(time.perf_counter() - began)
        if proc.returncode != 0:
            text = log.read_text(errors="replace")
            raise HelixflowError(
                f"{label} failed (exit {proc.returncode}): {gromacs_error(text)}",
                hint=f"full output in {log}",
            )
    return seconds


# --------------------------------------------------------------------------------------
# Outputs


def read_xvg(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Time (ps) and named columns of a GROMACS .xvg file (legends name the columns).

    Args:
        path: the .xvg file.

    Returns:
        (time in ps, {legend or "columnN": values}) as float64 arrays; (empty, {}) when the
        file has no data.
    """
    legends: dict[int, str] = {}
    rows: list[list[float]] = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("@"):
            parts = line[1:].split(None, 2)
            if len(parts) == 3 and parts[0].startswith("s") and parts[1] == "legend":
                legends[int(parts[0][1:])] = parts[2].strip().strip('"')
        elif line.strip() and not line.startswith("#"):
            rows.append([float(x) for x in line.split()])
    data = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    if data.shape[1] == 0:
        return np.zeros(0), {}
    columns = {legends.get(i, f"column{i + 1}"): data[:, i + 1] for i in range(data.shape[1] - 1)}
    return data[:, 0], columns


SERIES_NAMES: dict[str, tuple[str, str]] = {
    "Potential": ("potential_energy", "kJ/mol"),
    "Kinetic En.": ("kinetic_energy", "kJ/mol"),
    "Total Energy": ("total_energy", "kJ/mol"),
    "Temperature": ("temperature", "K"),
    "Pressure": ("pressure", "bar"),
}
"""`gmx energy` legend -> NetCDF variable name and unit."""


def md_outputs_to_netcdf(
    workdir: str | Path,
    out_path: str | Path,
    provenance: Mapping[str, object] | None = None,
    *,
    selection: str = "all",
    trajectory: str = WHOLE_TRAJECTORY,
) -> Path:
    """The job directory's md.tpr, `trajectory` and energy.xvg as an AMBER NetCDF.

    Coordinates of `selection` atoms (MDAnalysis syntax; default all, water included)
    from `trajectory` (default md-whole.xtc: molecules whole, the peptide centred; "md.xtc"
    for mdrun's own output) with per-frame solute backbone RMSD and radius of gyration,
    and the energy series on their own time axis. `provenance` entries become global
    attributes.

    Args:
        workdir: the finished job's directory.
        out_path: the NetCDF file to write.
        provenance: global attributes to add (with gromacs_version); None for none.
        selection: MDAnalysis selection of the atoms to store.
        trajectory: the trajectory's file name in `workdir`.

    Returns:
        The path written, as `write_amber_trajectory` returns it.

    Raises:
        HelixflowError: md.tpr, the trajectory or energy.xvg is missing.
    """
    from helixflow.tasks.netcdf import trajectory_from_gromacs, write_amber_trajectory

    workdir = Path(workdir)
    for name in ("md.tpr", trajectory, "energy.xvg"):
        if not (workdir / name).is_file():
            raise HelixflowError(
                f"{workdir}: MD output {name} is missing", hint="did the job finish?"
            )
    traj = trajectory_from_gromacs(workdir / "md.tpr", workdir / trajectory, selection=selection)
    energy_time, columns = read_xvg(workdir / "energy.xvg")
    series: dict[str, np.ndarray] = {}
    units: dict[str, str] = {"rmsd": "angstrom", "radius_of_gyration": "angstrom"}
    for legend, values in columns.items():
        name, unit = SERIES_NAMES.get(legend, (legend.lower().replace(" ", "_"), ""))
        series[name] = values
        units[name] = unit
    attrs = {"gromacs_version": tool_version("gmx"), **dict(provenance or {})}
    return write_amber_trajectory(
        out_path,
        traj.coordinates,
        traj.time_ps,
        cell_lengths=traj.cell_lengths,
        cell_angles=traj.cell_angles,
        title="helixflow peptide MD",
        application="GROMACS",
        frame_series={"rmsd": traj.rmsd, "radius_of_gyration": traj.radius_of_gyration},
        series_time_ps=energy_time,
        series=series,
        units=units,
        attributes=attrs,
    )


# --- Prefect tasks: the store edge -------------------------------------------------------

GROMACS_VERSION = "2"  # 2: md-whole.xtc, em/nvt logs kept, MD checks


class MdPlan(BaseModel):
    """One simulation, ready to submit: its peptide and its staged input artifacts."""

    name: str
    sequence_id: str
    cluster: int
    peptide: str
    inputs: dict[str, Artifact]
    commands: list[list[str]]
    outputs: list[str]


def _peptides(reps: list[dict[str, object]], min_len: int, max_len: int) -> dict[str, str]:
    """Peptide of the longest stop-to-stop ORF of each representative read (six frames)."""
    from helixflow.tasks.orfs import OrfParams, find_orfs

    pairs = [(str(r["sequence_id"]), str(r["sequence"])) for r in reps if r.get("sequence")]
    if not pairs:
        return {}
    orfs = find_orfs(pairs, OrfParams(min_length_nt=3 * (min_len + 1), start_codons=(),
                                      partial=True))
    return peptides_from_orfs(orfs, min_len=min_len, max_len=max_len)


@task(name="prepare-md", task_run_name="prepare-md-{method}", **stage_options(GROMACS_VERSION))
def prepare_md(
    method: str, representatives: Artifact, settings: GromacsSettings, max_jobs: int,
    peptide_min: int, peptide_max: int, check_installed: bool, store: Store, run_id: str,
) -> tuple[list[MdPlan], Artifact | None]:
    """Peptides of the largest clusters' representatives → per-simulation input files
    (structure, .mdp's) and one NetCDF of the batch's inputs (embeddings, sequences,
    cluster ids, MD parameters, provenance), all published before submission.

    Representatives are taken by cluster size, largest first; those without a peptide of
    `peptide_min` residues are passed over.

    Args:
        method: the embedding method; names the NetCDF and the task run.
        representatives: the `analyze_embeddings` representatives table (with vectors).
        settings: GROMACS settings.
        max_jobs: the most simulations to plan.
        peptide_min: fewest residues of a peptide.
        peptide_max: most residues of a peptide (longer ones are cut).
        check_installed: check here that GROMACS and the force field are installed (set
            when the jobs run on this host).
        store: the artifact store to read from and publish to.
        run_id: the run the published artifacts belong to.

    Returns:
        (one MdPlan per simulation, the md-inputs NetCDF artifact); ([], None) when no
        representative yields a peptide.
    """
    from helixflow.lineage import code_version
    from helixflow.tables import parquet_file
    from helixflow.tasks.netcdf import write_md_inputs

    with parquet_file(store, representatives) as pf:
        reps = sorted(pf.read().to_pylist(), key=lambda r: -int(r["size"]))
    peptides = _peptides(reps, peptide_min, peptide_max)
    chosen = [r for r in reps if r["sequence_id"] in peptides][:max_jobs]
    if not chosen:
        return [], None
    if check_installed:  # jobs run here: the force field must exist here
        settings.check_installed()
    up = [representatives.ref()]
    plans: list[MdPlan] = []
    with store.scratch() as scratch:
        nc = write_md_inputs(
            scratch / f"{method}.md-inputs.nc",
            sequence_ids=[str(r["sequence_id"]) for r in chosen],
            sequences=[peptides[str(r["sequence_id"])] for r in chosen],
            embeddings=np.array([r["vector"] for r in chosen], dtype=np.float32),
            cluster_ids=[int(r["cluster"]) for r in chosen],
            md_params=settings.md_parameters(),
            provenance={"run_id": run_id, "method": method,
                        "representatives": representatives.uri, **{
                            f"code_{k}": v or "" for k, v in code_version().items()}},
        )
        inputs_nc = publish_file(store, nc, run_id=run_id, stage="md-inputs",
                                 media_type="application/x-netcdf", producer="prepare-md",
                                 rows=len(chosen), upstream=up,
                                 params=settings.md_parameters())
        for i, rep in enumerate(chosen):
            name = f"md-c{int(rep['cluster'])}-{i}"
            job = md_job(settings, peptides[str(rep["sequence_id"])], check_installed=False)
            files = job.write_inputs(scratch / name)
            arts = {fname: publish_file(store, path, run_id=run_id, stage=f"md-inputs/{name}",
                                        name=fname, media_type="text/plain",
                                        producer="prepare-md", upstream=[inputs_nc.ref()])
                    for fname, path in files.items()}
            arts["inputs.nc"] = inputs_nc
            plans.append(MdPlan(name=name, sequence_id=str(rep["sequence_id"]),
                                cluster=int(rep["cluster"]), peptide=job.sequence,
                                inputs=arts, commands=job.commands, outputs=list(job.outputs)))
    return plans, inputs_nc


CHECK_INPUTS: tuple[str, ...] = ("em.mdp", "md.mdp")
"""Staged inputs the sanity checks read (emtol, ref-t)."""


def add_checks_attribute(netcdf: str | Path, checks: MdChecks) -> None:
    """Store the check record in the NetCDF as the global attribute `md_checks` (JSON).

    Args:
        netcdf: the trajectory file, modified in place.
        checks: the check record, as `check_simulation` returns it.

    Returns:
        None.
    """
    from netCDF4 import Dataset

    with Dataset(str(netcdf), "a") as ds:
        ds.setncattr("md_checks", checks.model_dump_json())


@task(name="md-trajectory", task_run_name="trajectory-{plan.name}",
      **stage_options(GROMACS_VERSION))
def md_trajectory(plan: MdPlan, outputs: dict[str, Artifact], store: Store,
                  run_id: str) -> Artifact:
    """A finished simulation's outputs → AMBER-convention NetCDF trajectory (Å, ps) with
    energy, temperature, pressure, RMSD and radius-of-gyration series, made from
    md-whole.xtc (molecules whole, the peptide centred), and its sanity checks
    (tasks/md_checks.py) in the NetCDF (attribute `md_checks`) and in the artifact's
    metadata (`md_checks`, hence in lineage).

    Args:
        plan: the simulation (its staged inputs hold em.mdp and md.mdp)
        outputs: the job's outputs by name (`md_outputs`)
        store: where to publish
        run_id: the run

    Returns:
        The trajectory artifact; a failed check is recorded, never raised.
    """
    from helixflow.tables import fetch

    with store.scratch() as scratch:
        work = scratch / plan.name
        work.mkdir()
        wanted = {**{n: outputs[n] for n in ("md.tpr", WHOLE_TRAJECTORY, "energy.xvg",
                                             "md.gro", "em.log", "nvt.log", "md.log",
                                             "nvt.stderr", "md.stderr")},
                  **{n: outputs[n] for n in ("npt.log", "npt.stderr") if n in outputs},
                  **{n: plan.inputs[n] for n in CHECK_INPUTS}}
        for name, art in wanted.items():
            local = fetch(store, art, work, name=name)
            if local.parent != work:
                (work / name).symlink_to(local)
        nc = md_outputs_to_netcdf(work, scratch / f"{plan.name}.nc", {
            "run_id": run_id, "sequence_id": plan.sequence_id, "cluster": plan.cluster,
            "peptide": plan.peptide})
        checks = check_simulation(work, nc)
        add_checks_attribute(nc, checks)
        return publish_file(store, nc, run_id=run_id, stage="md", media_type="application/x-netcdf",
                            producer="md-trajectory", upstream=[a.ref() for a in outputs.values()],
                            params={"sequence_id": plan.sequence_id, "peptide": plan.peptide},
                            metadata={"md_checks": checks.model_dump(mode="json")})
