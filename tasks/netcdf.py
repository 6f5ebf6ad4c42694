"""NetCDF files of the simulation stage: what goes in, and the trajectories that come out.

Inputs (`write_md_inputs`, netCDF-4): the selected sequences with their embeddings,
cluster ids and peptides, the MD parameters and provenance, written before a job is
submitted so the run is described by one self-contained file. Layout:

    dimensions  sequence = N, embedding_dim = D
    sequence_id(sequence) string      peptide(sequence) string
    cluster_id(sequence) int64        embedding(sequence, embedding_dim) float32
    md_parameters (scalar int8): one attribute per parameter; global attribute
    md_parameters_json holds them exactly (`md_parameters(ds)` decodes it); provenance
    entries are global attributes (non-scalars as JSON), also kept whole in
    provenance_json.

Outputs (`write_amber_trajectory`): the AMBER NetCDF trajectory convention 1.0
(https://ambermd.org/netcdf/nctraj.xhtml), a netCDF-3 64-bit-offset file that
MDAnalysis, mdtraj, cpptraj and VMD read: dimensions frame (unlimited), spatial = 3,
atom, cell_spatial = 3, cell_angular = 3, label = 5; `coordinates(frame, atom, spatial)`
float in angstrom, `time(frame)` float in picosecond, `cell_lengths` (angstrom) and
`cell_angles` (degree) as double, the label variables, and global attributes
Conventions = "AMBER", ConventionVersion = "1.0", program, programVersion, application,
title. helixflow adds, which readers of the convention ignore: per-frame series
(`rmsd`, `radius_of_gyration`, ...) on the frame dimension, and series sampled at other
times (energies, temperature, pressure from the .edr) on their own `time_series`
dimension with `series_time(time_series)` in picosecond. Every variable has `units`.

Both writers are atomic (`helixflow.files.atomic_path`: a temporary file in the target's
directory, fsync, then rename).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from helixflow.errors import HelixflowError
from helixflow.files import atomic_path

if TYPE_CHECKING:
    import xarray as xr

AMBER_CONVENTIONS = "AMBER"
AMBER_CONVENTION_VERSION = "1.0"


def _program_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("helixflow")
    except PackageNotFoundError:  # not installed as a distribution (e.g. a bare checkout)
        return "unknown"


def _attr_value(value: Any) -> str | int | float | np.ndarray:
    """A NetCDF attribute value: numbers and strings as they are, the rest as JSON."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | float | str | np.integer | np.floating):
        return value  # type: ignore[return-value]
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "if":
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _attr_name(key: str) -> str:
    name = "".join(c if c.isalnum() or c in "_.-+@" else "_" for c in str(key))
    return name if name and name[0].isalpha() else f"a_{name}"


# --------------------------------------------------------------------------------------
# Inputs


def write_md_inputs(
    path: str | Path,
    *,
    sequence_ids: Sequence[str],
    sequences: Sequence[str],
    embeddings: np.ndarray,
    cluster_ids: Sequence[int] | np.ndarray,
    md_params: Mapping[str, Any],
    provenance: Mapping[str, Any],
) -> Path:
    """Write the inputs of a simulation batch (layout in the module docstring).

    `sequences` are the peptides simulated, one per sequence id; `embeddings` is N x D.

    Args:
        path: the NetCDF-4 file to write, atomically (parent folders are created).
        sequence_ids: the N representative sequence ids.
        sequences: the N peptides, one-letter residues.
        embeddings: N x D vectors (stored float32).
        cluster_ids: the N cluster ids.
        md_params: MD parameters, stored as attributes of `md_parameters` and as JSON.
        provenance: global attributes (run id, method, code version…), also as JSON.

    Returns:
        `path` as a Path.

    Raises:
        ValueError: the inputs' lengths or shapes disagree.
    """
    import netCDF4

    path = Path(path)
    emb = np.asarray(embeddings, dtype=np.float32)
    clusters = np.asarray(cluster_ids, dtype=np.int64)
    n = len(sequence_ids)
    if emb.ndim != 2 or emb.shape[0] != n or len(sequences) != n or clusters.shape != (n,):
        raise ValueError(
            f"inputs disagree: {n} ids, {len(sequences)} sequences, embeddings "
            f"{emb.shape}, cluster ids {clusters.shape}"
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.createDimension("sequence", n)
        ds.createDimension("embedding_dim", emb.shape[1])
        ids = ds.createVariable("sequence_id", str, ("sequence",))
        ids.long_name = "representative sequence id"
        ids[:] = np.array(list(sequence_ids), dtype=object)
        pep = ds.createVariable("peptide", str, ("sequence",))
        pep.long_name = "peptide simulated (one-letter residues)"
        pep[:] = np.array(list(sequences), dtype=object)
        cid = ds.createVariable("cluster_id", "i8", ("sequence",))
        cid.long_name = "cluster of the sequence"
        cid[:] = clusters
        var = ds.createVariable(
            "embedding", "f4", ("sequence", "embedding_dim"), zlib=True, complevel=4,
            chunksizes=(max(1, min(n, 1024)), max(1, emb.shape[1])) if n else None,
        )
        var.long_name = "sequence embedding"
        var[:] = emb
        params = ds.createVariable("md_parameters", "i1", ())
        params.long_name = "molecular-dynamics parameters (see md_parameters_json)"
        for key, value in md_params.items():
            params.setncattr(_attr_name(key), _attr_value(value))
        ds.title = "helixflow molecular-dynamics inputs"
        ds.md_parameters_json = json.dumps(dict(md_params), sort_keys=True, default=str)
        for key, value in provenance.items():
            ds.setncattr(_attr_name(key), _attr_value(value))
        ds.provenance_json = json.dumps(dict(provenance), sort_keys=True, default=str)
    return path


def read_md_inputs(path: str | Path) -> xr.Dataset:
    """The inputs file as an in-memory xarray Dataset (the file is closed again).

    Args:
        path: a file written by `write_md_inputs`.

    Returns:
        The Dataset: sequence_id, peptide, cluster_id, embedding, md_parameters and the
        global attributes.

    Raises:
        HelixflowError: no such file.
    """
    import xarray as xr

    try:
        return xr.load_dataset(path, engine="netcdf4")
    except FileNotFoundError:
        raise HelixflowError(f"{path}: no such MD inputs file") from None


def md_parameters(ds: xr.Dataset) -> dict[str, Any]:
    """The MD parameters of an inputs Dataset, exactly as written.

    Args:
        ds: a Dataset from `read_md_inputs`.

    Returns:
        The parameters decoded from the `md_parameters_json` attribute.
    """
    return json.loads(ds.attrs["md_parameters_json"])


# --------------------------------------------------------------------------------------
# AMBER trajectories


def _char_array(words: Sequence[str], width: int) -> np.ndarray:
    return np.array([list(w.ljust(width)[:width]) for w in words], dtype="S1")


def write_amber_trajectory(
    path: str | Path,
    coordinates: np.ndarray,
    time_ps: np.ndarray,
    *,
    cell_lengths: np.ndarray | None = None,
    cell_angles: np.ndarray | None = None,
    title: str = "",
    program: str = "helixflow",
    program_version: str | None = None,
    application: str = "GROMACS",
    frame_series: Mapping[str, np.ndarray] | None = None,
    series_time_ps: np.ndarray | None = None,
    series: Mapping[str, np.ndarray] | None = None,
    units: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Path:
    """Write an AMBER-convention NetCDF trajectory (see the module docstring).

    Args:
        path: the NetCDF-3 (64-bit offset) file to write, atomically.
        coordinates: frames x atoms x 3, in angstrom.
        time_ps: one time per frame, in picoseconds.
        cell_lengths, cell_angles: frames x 3 (angstrom, degrees), or None for no box.
        title: the global `title` attribute.
        program: the global `program` attribute.
        program_version: the `programVersion` attribute; None: helixflow's version.
        application: the global `application` attribute.
        frame_series: extra per-frame series (name -> array of n_frames).
        series_time_ps, series: series on their own time axis (e.g. energies), each as
            long as series_time_ps.
        units: unit of each series (name -> unit string).
        attributes: extra global attributes (provenance); non-scalars become JSON.

    Returns:
        `path` as a Path.

    Raises:
        ValueError: shapes that do not match the frames, only one of the cell arrays,
            series without series_time_ps, or series names that clash.
    """
    import netCDF4

    path = Path(path)
    xyz = np.asarray(coordinates, dtype=np.float32)
    times = np.asarray(time_ps, dtype=np.float32)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"coordinates must be frames x atoms x 3, got {xyz.shape}")
    n_frames, n_atoms = xyz.shape[:2]
    if times.shape != (n_frames,):
        raise ValueError(f"time_ps has shape {times.shape}, expected ({n_frames},)")
    if (cell_lengths is None) != (cell_angles is None):
        raise ValueError("give both cell_lengths and cell_angles, or neither")
    for name, cell in (("cell_lengths", cell_lengths), ("cell_angles", cell_angles)):
        if cell is not None and np.shape(cell) != (n_frames, 3):
            raise ValueError(f"{name} has shape {np.shape(cell)}, expected ({n_frames}, 3)")
    frame_series = dict(frame_series or {})
    series = dict(series or {})
    units = dict(units or {})
    for name, values in frame_series.items():
        if np.shape(values) != (n_frames,):
            raise ValueError(
                f"frame series {name!r} has shape {np.shape(values)}, not ({n_frames},)"
            )
    if series:
        if series_time_ps is None:
            raise ValueError("series need series_time_ps")
        n_series = len(series_time_ps)
        for name, values in series.items():
            if np.shape(values) != (n_series,):
                raise ValueError(f"series {name!r} has shape {np.shape(values)}, not ({n_series},)")
    reserved = {"spatial", "cell_spatial", "cell_angular", "time", "coordinates",
                "cell_lengths", "cell_angles", "series_time"}
    clash = reserved & (set(frame_series) | set(series))
    if clash or set(frame_series) & set(series):
        raise ValueError(f"series names clash with other variables: {sorted(clash)}")

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, netCDF4.Dataset(
        tmp, "w", format="NETCDF3_64BIT_OFFSET"
    ) as ds:
        ds.title = title
        ds.application = application
        ds.program = program
        ds.programVersion = program_version or _program_version()
        ds.Conventions = AMBER_CONVENTIONS
        ds.ConventionVersion = AMBER_CONVENTION_VERSION
        for key, value in (attributes or {}).items():
            name = _attr_name(key)
            if name in ("Conventions", "ConventionVersion"):
                continue  # the convention's attributes are not negotiable
            ds.setncattr(name, _attr_value(value))

        # Define everything first, then write: netCDF-3 rewrites the file on redefinition.
        writes: list[tuple[Any, np.ndarray]] = []
        ds.createDimension("frame", None)
        ds.createDimension("spatial", 3)
        ds.createDimension("atom", n_atoms)
        ds.createDimension("label", 5)
        spatial = ds.createVariable("spatial", "S1", ("spatial",))
        writes.append((spatial, np.array(list("xyz"), dtype="S1")))
        time = ds.createVariable("time", "f4", ("frame",))
        time.units = "picosecond"
        writes.append((time, times))
        coords = ds.createVariable("coordinates", "f4", ("frame", "atom", "spatial"))
        coords.units = "angstrom"
        writes.append((coords, xyz))
        if cell_lengths is not None and cell_angles is not None:
            ds.createDimension("cell_spatial", 3)
            ds.createDimension("cell_angular", 3)
            cs = ds.createVariable("cell_spatial", "S1", ("cell_spatial",))
            writes.append((cs, np.array(list("abc"), dtype="S1")))
            ca = ds.createVariable("cell_angular", "S1", ("cell_angular", "label"))
            writes.append((ca, _char_array(["alpha", "beta", "gamma"], 5)))
            lengths = ds.createVariable("cell_lengths", "f8", ("frame", "cell_spatial"))
            lengths.units = "angstrom"
            writes.append((lengths, np.asarray(cell_lengths, dtype=np.float64).reshape(-1, 3)))
            angles = ds.createVariable("cell_angles", "f8", ("frame", "cell_angular"))
            angles.units = "degree"
            writes.append((angles, np.asarray(cell_angles, dtype=np.float64).reshape(-1, 3)))
        for name, values in frame_series.items():
            var = ds.createVariable(name, "f8", ("frame",))
            var.units = units.get(name, "")
            writes.append((var, np.asarray(values, dtype=np.float64)))
        if series:
            assert series_time_ps is not None
            ds.createDimension("time_series", len(series_time_ps))
            st = ds.createVariable("series_time", "f8", ("time_series",))
            st.units = "picosecond"
            writes.append((st, np.asarray(series_time_ps, dtype=np.float64)))
            for name, values in series.items():
                var = ds.createVariable(name, "f8", ("time_series",))
                var.units = units.get(name, "")
                writes.append((var, np.asarray(values, dtype=np.float64)))
        for var, data in writes:
            var[: len(data)] = data
    return path


# --------------------------------------------------------------------------------------
# From GROMACS


@dataclass(frozen=True)
class Trajectory:
    """A trajectory in AMBER units, with the solute's RMSD and radius of gyration."""

    coordinates: np.ndarray  # frames x atoms x 3, float32, angstrom
    time_ps: np.ndarray  # frames
    cell_lengths: np.ndarray | None  # frames x 3, angstrom
    cell_angles: np.ndarray | None  # frames x 3, degrees
    rmsd: np.ndarray  # frames, angstrom: solute backbone vs frame 0, after superposition
    radius_of_gyration: np.ndarray  # frames, angstrom (mass weighted)
    atom_names: list[str]

    @property
    def n_frames(self) -> int:
        return int(self.coordinates.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.coordinates.shape[1])


def trajectory_from_gromacs(
    topology: str | Path,
    trajectory: str | Path,
    *,
    selection: str = "all",
    solute: str = "protein",
) -> Trajectory:
    """Read a GROMACS run (md.tpr or .gro + .xtc/.trr) with MDAnalysis (nm -> angstrom).

    The solute is made whole across periodic boundaries first (bonds from the .tpr, or
    guessed for a .gro), so its RMSD (backbone, after superposition on frame 0) and
    radius of gyration are not broken by molecules wrapped around the box.

    Args:
        topology: md.tpr (bonds known) or a .gro file (bonds guessed).
        trajectory: the .xtc or .trr file.
        selection: MDAnalysis selection of the atoms whose coordinates are kept.
        solute: MDAnalysis selection of the solute for RMSD and radius of gyration.

    Returns:
        Trajectory with coordinates (Å), times (ps), box (None without one), backbone RMSD
        and radius of gyration (Å) per frame, and atom names.

    Raises:
        HelixflowError: the files cannot be read, or no atom matches `solute`.
    """
    import MDAnalysis as mda
    from MDAnalysis.analysis import rms
    from MDAnalysis.transformations import unwrap

    try:
        u = mda.Universe(str(topology), str(trajectory))
    except (OSError, ValueError) as exc:
        raise HelixflowError(f"cannot read {topology} + {trajectory}: {exc}") from None
    atoms = u.select_atoms(selection)
    solute_atoms = u.select_atoms(solute)
    if len(solute_atoms) == 0:
        raise HelixflowError(f"{topology}: no atoms match the solute selection {solute!r}")
    backbone = solute_atoms.select_atoms("backbone")
    if len(backbone) < 3:
        backbone = solute_atoms
    if not hasattr(u.atoms, "bonds"):
        solute_atoms.guess_bonds()
    if u.dimensions is not None:
        u.trajectory.add_transformations(unwrap(solute_atoms))
    coords, times, lengths, angles, rmsd, rgyr = [], [], [], [], [], []
    reference: np.ndarray | None = None
    for ts in u.trajectory:
        coords.append(atoms.positions.astype(np.float32, copy=True))
        times.append(ts.time)
        if ts.dimensions is not None:
            lengths.append(ts.dimensions[:3].astype(np.float64))
            angles.append(ts.dimensions[3:].astype(np.float64))
        current = backbone.positions.astype(np.float64)
        if reference is None:
            reference = current.copy()
        rmsd.append(rms.rmsd(current, reference, center=True, superposition=True))
        rgyr.append(solute_atoms.radius_of_gyration())
    has_box = len(lengths) == len(coords) and len(coords) > 0
    return Trajectory(
        coordinates=np.asarray(coords, dtype=np.float32).reshape(len(coords), len(atoms), 3),
        time_ps=np.asarray(times, dtype=np.float64),
        cell_lengths=np.asarray(lengths) if has_box else None,
        cell_angles=np.asarray(angles) if has_box else None,
        rmsd=np.asarray(rmsd, dtype=np.float64),
        radius_of_gyration=np.asarray(rgyr, dtype=np.float64),
        atom_names=[str(n) for n in atoms.names],
    )
