"""Sanity checks of a finished peptide simulation, read from GROMACS' own outputs.

Four checks, each a figure and a pass/fail (`MdChecks`):

- **em**: energy minimisation converged: the final "Maximum force" of em.log (what
  mdrun prints after "Steepest Descents converged to Fmax < …") is below the `emtol` of
  em.mdp.
- **temperature**: the production run's mean temperature (md.log's "A V E R A G E S"
  section, over every energy step) is within `t_tolerance` K of the `ref-t` of md.mdp.
  (The NVT equilibration's mean is not used: starting from a minimised structure, half of
  the kinetic energy goes into potential energy in the first steps, so a short NVT
  averages several K below target by design.)
- **lincs**: no "LINCS WARNING" from the NVT, NPT or production mdrun. GROMACS 2022
  writes them to mdrun's stderr only (1014 of them on stderr and none in nvt.log before
  "Too many LINCS warnings" ended a run here), so the job saves it as `<stage>.stderr`;
  per stage the larger count of the .stderr and the .log is taken.
- **pbc**: the peptide in the trajectory the user gets (the NetCDF) is whole in every
  frame (no bond longer than `max_bond`) and its centre of mass never moves more than
  `jump_fraction` of the shortest box edge between frames (a jump across a periodic
  boundary moves it by a whole box edge).

A failed check is a finding to report, never an exception: the flow turns each failure
into one warning line naming the simulation and the check.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from helixflow.errors import HelixflowError

TEMPERATURE_TOLERANCE_K = 5.0
JUMP_FRACTION = 0.25
MAX_BOND_ANGSTROM = 3.0
"""Longer than any covalent bond (S-S is 2.05 Å): a longer one is a broken molecule."""

ENERGY_FIELD = 15
"""GROMACS prints energy names and values in fields 15 characters wide."""

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def read_mdp(text: str) -> dict[str, str]:
    """Parameters of an .mdp file: key (lower case, '_' as '-') -> value (comments cut).

    Args:
        text: the .mdp file's text.

    Returns:
        {key: value}, both stripped; a repeated key keeps its last value.

    Example:
        >>> read_mdp("emtol = 1000.0 ; kJ/mol/nm\\nref_t = 300 300")["ref-t"]
        '300 300'
    """
    params: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split(";", 1)[0]
        key, sep, value = line.partition("=")
        if sep and key.strip():
            params[key.strip().lower().replace("_", "-")] = value.strip()
    return params


def mdp_number(params: dict[str, str], key: str, name: str) -> float:
    """One numeric .mdp value (the mean when there are several, as ref-t has per group).

    Raises HelixflowError naming the file when the key is missing or not a number.

    Args:
        params: .mdp parameters as `read_mdp` returns them.
        key: the normalised key, e.g. "ref-t".
        name: the file's name, for error messages.

    Returns:
        The value, or the mean of its values.

    Raises:
        HelixflowError: the key is missing, empty or not numeric.
    """
    try:
        values = [float(v) for v in params[key].split()]
    except (KeyError, ValueError):
        raise HelixflowError(f"{name}: no numeric {key!r} in the .mdp") from None
    if not values:
        raise HelixflowError(f"{name}: {key!r} has no value in the .mdp")
    return float(np.mean(values))


def em_max_force(log: str) -> float | None:
    """The final maximum force (kJ/mol/nm) of an energy minimisation's log, as mdrun
    prints it ("Maximum force     =  9.8592456e+02 on atom 116"); None if absent.

    Args:
        log: the text of em.log.

    Returns:
        The last "Maximum force" value in kJ/mol/nm, or None.
    """
    found = re.findall(rf"^Maximum force\s*=\s*({_NUMBER})", log, flags=re.MULTILINE)
    return float(found[-1]) if found else None


def log_averages(log: str) -> dict[str, float]:
    """The energy terms of an mdrun log's "A V E R A G E S" section: name -> mean.

    GROMACS prints names and values in rows of fields 15 characters wide (names may hold
    spaces: "Pressure (bar)"). Empty when the log has no averages (the run did not end).

    Args:
        log: the text of an mdrun log.

    Returns:
        {term name: mean}; {} when there is no averages section.
    """
    marker = log.rfind("A V E R A G E S")
    if marker < 0:
        return {}
    lines = log[marker:].splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Energies (kJ/mol)")
    except StopIteration:
        return {}
    averages: dict[str, float] = {}
    rows = lines[start + 1 :]
    for names_line, values_line in zip(rows[::2], rows[1::2], strict=False):
        if not names_line.strip() or not values_line.strip():
            break
        names = [names_line[i : i + ENERGY_FIELD].strip()
                 for i in range(0, len(names_line), ENERGY_FIELD)]
        values = values_line.split()
        if len(names) != len(values):
            break
        try:
            averages.update(zip(names, (float(v) for v in values), strict=True))
        except ValueError:
            break
    return averages


def lincs_warnings(log: str) -> int:
    """How many LINCS warnings an mdrun log holds ("Step 12, time 0.024 (ps)  LINCS
    WARNING", one per step with a constraint deviating or rotating too far).

    Args:
        log: the text of an mdrun log or stderr.

    Returns:
        The number of "LINCS WARNING" occurrences.
    """
    return len(re.findall(r"LINCS WARNING", log))


def peptide_pbc_figures(
    coordinates: np.ndarray,
    masses: np.ndarray,
    bonds: np.ndarray,
    cell_lengths: np.ndarray | None,
) -> tuple[float, float, float]:
    """(largest centre-of-mass move between frames, longest bond, shortest box edge).

    Args:
        coordinates: frames x atoms x 3 positions of the peptide's atoms (Å)
        masses: the atoms' masses
        bonds: bonds x 2 indices into the atoms
        cell_lengths: frames x 3 box edges (Å), or None (no box: edge = inf)

    Returns:
        Å, Å, Å; a single frame moves 0.
    """
    xyz = np.asarray(coordinates, dtype=np.float64)
    m = np.asarray(masses, dtype=np.float64)
    com = (xyz * m[None, :, None]).sum(axis=1) / m.sum()
    moves = np.linalg.norm(np.diff(com, axis=0), axis=1)
    pairs = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    lengths = np.linalg.norm(xyz[:, pairs[:, 0]] - xyz[:, pairs[:, 1]], axis=-1)
    edge = float(np.min(cell_lengths)) if cell_lengths is not None and len(cell_lengths) \
        else float("inf")
    return (float(moves.max()) if moves.size else 0.0,
            float(lengths.max()) if lengths.size else 0.0, edge)


class MdChecks(BaseModel):
    """The sanity record of one simulation: the figures, the limits and a verdict each.

    Example:
        >>> c = evaluate_checks(fmax=985.9, emtol=1000.0, mean_t=298.9, ref_t=300.0,
        ...                     lincs=0, com_jump=0.01, max_bond=1.6, box_edge=35.0)
        >>> c.passed, c.failures()
        (True, [])
    """

    fmax: float | None
    """Final maximum force of the minimisation (kJ/mol/nm); None: not in em.log."""
    emtol: float
    mean_t: float | None
    """Production mean temperature (K) from md.log's averages; None: no averages."""
    ref_t: float
    t_tolerance: float
    lincs_warnings: int
    max_com_jump: float
    """Largest frame-to-frame move of the peptide's centre of mass in the NetCDF (Å)."""
    jump_limit: float
    max_bond: float
    """Longest peptide bond length in any frame of the NetCDF (Å)."""
    bond_limit: float
    em_ok: bool
    temperature_ok: bool
    lincs_ok: bool
    pbc_ok: bool

    @property
    def passed(self) -> bool:
        return self.em_ok and self.temperature_ok and self.lincs_ok and self.pbc_ok

    def failed(self) -> list[str]:
        """Names of the failed checks (em, temperature, lincs, pbc)."""
        verdicts = {"em": self.em_ok, "temperature": self.temperature_ok,
                    "lincs": self.lincs_ok, "pbc": self.pbc_ok}
        return [name for name, ok in verdicts.items() if not ok]

    def failures(self) -> list[str]:
        """One phrase per failed check, naming it and its figures."""
        out: list[str] = []
        if not self.em_ok:
            out.append("em: " + ("no final maximum force in em.log" if self.fmax is None else
                                 f"Fmax {self.fmax:.1f} ≥ emtol {self.emtol:g} kJ/mol/nm "
                                 "(minimisation did not converge)"))
        if not self.temperature_ok:
            out.append("temperature: " + (
                "no averages in md.log" if self.mean_t is None else
                f"mean {self.mean_t:.1f} K, target {self.ref_t:g} ± {self.t_tolerance:g} K"))
        if not self.lincs_ok:
            out.append(f"lincs: {self.lincs_warnings} LINCS warning(s)")
        if not self.pbc_ok:
            out.append(f"pbc: peptide centre-of-mass jump {self.max_com_jump:.2f} Å (limit "
                       f"{self.jump_limit:.2f}), longest bond {self.max_bond:.2f} Å (limit "
                       f"{self.bond_limit:g})")
        return out

    def row(self) -> dict[str, object]:
        """The figures and verdicts as table columns (rounded for reading)."""
        def r(x: float | None, n: int) -> float | None:
            return None if x is None else round(x, n)
        return {"em_fmax": r(self.fmax, 1), "emtol": self.emtol, "mean_t": r(self.mean_t, 2),
                "ref_t": self.ref_t, "lincs_warnings": self.lincs_warnings,
                "max_com_jump_A": r(self.max_com_jump, 3), "max_bond_A": r(self.max_bond, 3),
                "em_ok": self.em_ok, "temperature_ok": self.temperature_ok,
                "lincs_ok": self.lincs_ok, "pbc_ok": self.pbc_ok, "checks_passed": self.passed}


def evaluate_checks(
    *,
    fmax: float | None,
    emtol: float,
    mean_t: float | None,
    ref_t: float,
    lincs: int,
    com_jump: float,
    max_bond: float,
    box_edge: float,
    t_tolerance: float = TEMPERATURE_TOLERANCE_K,
    jump_fraction: float = JUMP_FRACTION,
    bond_limit: float = MAX_BOND_ANGSTROM,
) -> MdChecks:
    """The verdicts for a simulation's figures (see the module docstring).

    Args:
        fmax: final maximum force of the minimisation (kJ/mol/nm); None: not found (fails).
        emtol: the minimisation's force tolerance (kJ/mol/nm); em_ok needs fmax < emtol.
        mean_t: production mean temperature (K); None: not found (fails).
        ref_t: the thermostat's reference temperature (K).
        lincs: LINCS warnings over the dynamics stages; lincs_ok needs 0.
        com_jump: largest frame-to-frame move of the solute's centre of mass (Å).
        max_bond: longest solute bond in any frame (Å).
        box_edge: the shortest box edge (Å); the jump limit is a fraction of it.
        t_tolerance: allowed |mean_t - ref_t| (K).
        jump_fraction: jump limit as a fraction of `box_edge`.
        bond_limit: longest allowed bond (Å).

    Returns:
        MdChecks with the figures, limits and em_ok, temperature_ok, lincs_ok, pbc_ok.
    """
    jump_limit = jump_fraction * box_edge
    return MdChecks(
        fmax=fmax, emtol=emtol, mean_t=mean_t, ref_t=ref_t, t_tolerance=t_tolerance,
        lincs_warnings=lincs, max_com_jump=com_jump, jump_limit=jump_limit,
        max_bond=max_bond, bond_limit=bond_limit,
        em_ok=fmax is not None and fmax < emtol,
        temperature_ok=mean_t is not None and abs(mean_t - ref_t) <= t_tolerance,
        lincs_ok=lincs == 0,
        pbc_ok=com_jump < jump_limit and max_bond < bond_limit,
    )


def peptide_topology(tpr: str | Path, solute: str = "protein"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atom indices, masses, bonds as local index pairs) of the solute in a .tpr.

    Args:
        tpr: the run input file.
        solute: MDAnalysis selection of the solute.

    Returns:
        (global atom indices, masses as float64, N x 2 int64 bonds between selected atoms,
        indexed within the selection).

    Raises:
        HelixflowError: no atom matches `solute`.
    """
    import MDAnalysis as mda

    u = mda.Universe(str(tpr))
    atoms = u.select_atoms(solute)
    if len(atoms) == 0:
        raise HelixflowError(f"{tpr}: no atoms match the solute selection {solute!r}")
    local = {int(i): n for n, i in enumerate(atoms.indices)}
    pairs = [(local[a], local[b]) for a, b in atoms.bonds.indices
             if int(a) in local and int(b) in local]
    return atoms.indices.copy(), atoms.masses.astype(np.float64), np.asarray(
        pairs, dtype=np.int64).reshape(-1, 2)


def check_simulation(
    workdir: str | Path,
    netcdf: str | Path,
    *,
    dynamics: Sequence[str] = ("nvt", "npt", "md"),
) -> MdChecks:
    """Every check of one finished job, from its directory and its NetCDF trajectory.

    `workdir` holds em.log, md.log, em.mdp, md.mdp, md.tpr and, per dynamics stage,
    `<stage>.log` and `<stage>.stderr`; missing ones (npt.* without NPT) are skipped.

    Args:
        workdir: the finished job's directory.
        netcdf: its trajectory as `md_outputs_to_netcdf` writes it.
        dynamics: stages whose logs are searched for LINCS warnings.

    Returns:
        MdChecks of the simulation (see `evaluate_checks`).

    Raises:
        HelixflowError: a required file is missing, or an .mdp lacks emtol or ref-t.
    """
    from netCDF4 import Dataset

    work = Path(workdir)
    for name in ("em.log", "md.log", "em.mdp", "md.mdp", "md.tpr"):
        if not (work / name).is_file():
            raise HelixflowError(f"{work}: {name} is missing for the MD checks",
                                 hint="did the job finish and keep its logs?")
    emtol = mdp_number(read_mdp((work / "em.mdp").read_text()), "emtol", "em.mdp")
    ref_t = mdp_number(read_mdp((work / "md.mdp").read_text()), "ref-t", "md.mdp")
    fmax = em_max_force((work / "em.log").read_text(errors="replace"))
    md_log = (work / "md.log").read_text(errors="replace")
    mean_t = log_averages(md_log).get("Temperature")
    lincs = sum(max((lincs_warnings((work / f"{stage}{ext}").read_text(errors="replace"))
                     for ext in (".log", ".stderr") if (work / f"{stage}{ext}").is_file()),
                    default=0)
                for stage in dynamics)
    indices, masses, bonds = peptide_topology(work / "md.tpr")
    with Dataset(str(netcdf)) as ds:
        lo, hi = int(indices.min()), int(indices.max()) + 1
        coords = np.asarray(ds["coordinates"][:, lo:hi, :])[:, indices - lo, :]
        cells = np.asarray(ds["cell_lengths"][:]) if "cell_lengths" in ds.variables else None
    jump, bond, edge = peptide_pbc_figures(coords, masses, bonds, cells)
    return evaluate_checks(fmax=fmax, emtol=emtol, mean_t=mean_t, ref_t=ref_t, lincs=lincs,
                           com_jump=jump, max_bond=bond, box_edge=edge)
