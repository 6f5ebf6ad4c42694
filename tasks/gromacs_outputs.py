"""What a finished GROMACS job leaves, read back: .xvg series (`read_xvg`) and the job
directory as an AMBER-convention NetCDF trajectory with energy, temperature, pressure,
RMSD and radius-of-gyration series (`md_outputs_to_netcdf`, via tasks/netcdf.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from helixflow.errors import HelixflowError
from helixflow.tasks.gromacs_job import WHOLE_TRAJECTORY
from helixflow.tools import tool_version


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
