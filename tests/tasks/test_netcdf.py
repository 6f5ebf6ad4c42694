"""Tests for tasks/netcdf.py: the MD inputs file (read back with xarray) and AMBER NetCDF
trajectories (read back with MDAnalysis and netCDF4), from synthetic arrays."""

from __future__ import annotations

import warnings
from pathlib import Path

import MDAnalysis as mda
import netCDF4
import numpy as np
import pytest
from MDAnalysis.lib.transformations import rotation_matrix

from helixflow.tasks.netcdf import (
    md_parameters,
    read_md_inputs,
    trajectory_from_gromacs,
    write_amber_trajectory,
    write_md_inputs,
)
from helixflow.tasks.peptides import build_peptide_pdb

# --------------------------------------------------------------------------------------
# Inputs


def inputs_kwargs() -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "sequence_ids": ["contig_1", "read/2", "ctg-ü"],
        "sequences": ["MKFGW", "ACDEFGHIKL", "WWPPG"],
        "embeddings": rng.normal(size=(3, 16)).astype(np.float32),
        "cluster_ids": [4, 0, 4],
        "md_params": {"force_field": "amber99sb-ildn", "dt": 0.002, "md_nsteps": 500,
                      "npt_enabled": False, "extra_mdp": {"nstlist": "20"}},
        "provenance": {"run_id": "run-42", "helixflow_version": "0.1.0", "seed": 3,
                       "inputs": ["a.fq", "b.fq"]},
    }


def test_md_inputs_round_trip_with_xarray(tmp_path: Path) -> None:
    kw = inputs_kwargs()
    path = write_md_inputs(tmp_path / "inputs.nc", **kw)  # type: ignore[arg-type]
    ds = read_md_inputs(path)
    assert dict(ds.sizes) == {"sequence": 3, "embedding_dim": 16}
    assert ds["sequence_id"].values.tolist() == kw["sequence_ids"]
    assert ds["peptide"].values.tolist() == kw["sequences"]
    assert ds["cluster_id"].dtype == np.int64
    assert ds["cluster_id"].values.tolist() == [4, 0, 4]
    assert ds["embedding"].dtype == np.float32
    np.testing.assert_array_equal(ds["embedding"].values, kw["embeddings"])
    assert md_parameters(ds) == kw["md_params"]
    attrs = ds["md_parameters"].attrs
    assert attrs["force_field"] == "amber99sb-ildn" and attrs["dt"] == 0.002
    assert attrs["npt_enabled"] == 0 and attrs["md_nsteps"] == 500
    assert ds.attrs["run_id"] == "run-42" and ds.attrs["seed"] == 3
    assert ds.attrs["inputs"] == '["a.fq", "b.fq"]'
    assert [p.name for p in tmp_path.iterdir()] == ["inputs.nc"]  # no temp file left


def test_md_inputs_overwrite_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = inputs_kwargs()
    path = write_md_inputs(tmp_path / "inputs.nc", **kw)  # type: ignore[arg-type]
    before = path.read_bytes()
    bad = {**kw, "cluster_ids": [1, 2]}
    with pytest.raises(ValueError, match="inputs disagree"):
        write_md_inputs(path, **bad)  # type: ignore[arg-type]
    assert path.read_bytes() == before

    def broken(value: object) -> object:
        raise RuntimeError("disk full")

    monkeypatch.setattr("helixflow.tasks.netcdf._attr_value", broken)
    with pytest.raises(RuntimeError):  # fails half-way through the write: the old file stays
        write_md_inputs(path, **kw)  # type: ignore[arg-type]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["inputs.nc"]


def test_md_inputs_with_no_sequences(tmp_path: Path) -> None:
    path = write_md_inputs(
        tmp_path / "empty.nc", sequence_ids=[], sequences=[],
        embeddings=np.zeros((0, 8), np.float32), cluster_ids=[], md_params={}, provenance={},
    )
    ds = read_md_inputs(path)
    assert ds.sizes["sequence"] == 0 and ds.sizes["embedding_dim"] == 8


# --------------------------------------------------------------------------------------
# AMBER trajectories


def synthetic(n_frames: int = 4, n_atoms: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "coordinates": rng.uniform(0, 30, size=(n_frames, n_atoms, 3)).astype(np.float32),
        "time_ps": np.arange(n_frames, dtype=np.float32) * 2.5,
        "cell_lengths": np.tile([30.0, 31.0, 32.5], (n_frames, 1)),
        "cell_angles": np.tile([90.0, 90.0, 60.0], (n_frames, 1)),
    }


def read_with_mdanalysis(path: Path, n_atoms: int) -> mda.Universe:
    u = mda.Universe.empty(n_atoms, trajectory=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a missing program/programVersion warns
        u.load_new(str(path), format="NCDF")
    return u


def test_amber_trajectory_read_back_by_mdanalysis(tmp_path: Path) -> None:
    data = synthetic()
    path = write_amber_trajectory(tmp_path / "traj.nc", **data, title="synthetic")
    u = read_with_mdanalysis(path, 7)
    assert len(u.trajectory) == 4
    for i, ts in enumerate(u.trajectory):
        np.testing.assert_array_equal(ts.positions, data["coordinates"][i])  # angstrom
        assert ts.time == pytest.approx(2.5 * i)  # picoseconds
        np.testing.assert_allclose(ts.dimensions, [30.0, 31.0, 32.5, 90.0, 90.0, 60.0])


def test_amber_convention_layout(tmp_path: Path) -> None:
    series_time = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5])
    path = write_amber_trajectory(
        tmp_path / "traj.nc", **synthetic(), title="t", program_version="9.9",
        frame_series={"rmsd": np.array([0.0, 0.5, 0.7, 0.9])},
        series_time_ps=series_time,
        series={"temperature": np.linspace(290, 310, 8), "pressure": np.zeros(8)},
        units={"rmsd": "angstrom", "temperature": "K", "pressure": "bar"},
        attributes={"run_id": "r1", "Conventions": "CF-1.8", "flag": True, "cfg": {"a": 1}},
    )
    with netCDF4.Dataset(path) as ds:
        assert ds.data_model == "NETCDF3_64BIT_OFFSET"
        assert (ds.Conventions, ds.ConventionVersion) == ("AMBER", "1.0")
        assert (ds.program, ds.programVersion, ds.application) == ("helixflow", "9.9", "GROMACS")
        assert ds.title == "t" and ds.run_id == "r1" and ds.flag == 1 and ds.cfg == '{"a": 1}'
        dims = {name: (len(d), d.isunlimited()) for name, d in ds.dimensions.items()}
        assert dims == {
            "frame": (4, True), "spatial": (3, False), "atom": (7, False), "label": (5, False),
            "cell_spatial": (3, False), "cell_angular": (3, False), "time_series": (8, False),
        }
        v = ds.variables
        assert v["coordinates"].dimensions == ("frame", "atom", "spatial")
        assert v["coordinates"].dtype == np.float32 and v["coordinates"].units == "angstrom"
        assert v["time"].dimensions == ("frame",) and v["time"].units == "picosecond"
        assert v["time"].dtype == np.float32
        assert v["cell_lengths"].dimensions == ("frame", "cell_spatial")
        assert v["cell_lengths"].dtype == np.float64 and v["cell_lengths"].units == "angstrom"
        assert v["cell_angles"].dimensions == ("frame", "cell_angular")
        assert v["cell_angles"].units == "degree"
        assert b"".join(v["spatial"][:].tolist()) == b"xyz"
        assert b"".join(v["cell_spatial"][:].tolist()) == b"abc"
        labels = [b"".join(row).decode().strip() for row in v["cell_angular"][:].tolist()]
        assert labels == ["alpha", "beta", "gamma"]
        assert v["rmsd"].dimensions == ("frame",) and v["rmsd"].units == "angstrom"
        np.testing.assert_array_equal(v["series_time"][:], series_time)
        assert v["series_time"].units == "picosecond"
        np.testing.assert_array_equal(v["temperature"][:], np.linspace(290, 310, 8))
        assert v["temperature"].dimensions == ("time_series",) and v["temperature"].units == "K"


def test_trajectory_without_box(tmp_path: Path) -> None:
    data = synthetic()
    path = write_amber_trajectory(
        tmp_path / "nobox.nc", data["coordinates"], data["time_ps"], program_version="1"
    )
    u = read_with_mdanalysis(path, 7)
    assert u.trajectory.ts.dimensions is None
    with netCDF4.Dataset(path) as ds:
        assert "cell_lengths" not in ds.variables


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"coordinates": np.zeros((4, 7, 2), np.float32)}, "frames x atoms x 3"),
        ({"time_ps": np.zeros(3)}, "time_ps"),
        ({"cell_angles": None}, "both cell_lengths and cell_angles"),
        ({"cell_lengths": np.zeros((3, 3))}, "cell_lengths has shape"),
        ({"frame_series": {"rmsd": np.zeros(5)}}, "frame series 'rmsd'"),
        ({"series": {"temperature": np.zeros(5)}}, "need series_time_ps"),
        ({"frame_series": {"time": np.zeros(4)}}, "clash"),
    ],
)
def test_bad_trajectory_arguments(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_amber_trajectory(tmp_path / "bad.nc", **{**synthetic(), **change})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------
# From a GROMACS-like run: a peptide moved rigidly, then perturbed


def test_trajectory_from_structure_and_xtc(tmp_path: Path) -> None:
    pdb = build_peptide_pdb("MKFGW", tmp_path / "pep.pdb")
    u = mda.Universe(str(pdb))
    protein = u.select_atoms("protein")
    start = protein.positions.copy()
    rgyr0 = protein.radius_of_gyration()
    backbone = u.select_atoms("backbone")
    shift = np.zeros_like(start)
    shift[backbone.indices[0]] = [3.0, 0.0, 0.0]  # one backbone atom off by 3 Å
    frames = [
        start,
        start @ rotation_matrix(0.7, [1, 2, 3])[:3, :3].T + [5.0, -2.0, 1.0],  # rigid move
        start + shift,
    ]
    with mda.Writer(str(tmp_path / "pep.xtc"), n_atoms=u.atoms.n_atoms) as writer:
        for i, positions in enumerate(frames):
            u.atoms.positions = positions
            u.trajectory.ts.time = 10.0 * i
            writer.write(u.atoms)
    traj = trajectory_from_gromacs(pdb, tmp_path / "pep.xtc")
    assert traj.n_frames == 3 and traj.n_atoms == u.atoms.n_atoms
    np.testing.assert_allclose(traj.time_ps, [0.0, 10.0, 20.0])
    np.testing.assert_allclose(traj.coordinates[1], frames[1], atol=0.01)  # xtc: 0.001 nm
    assert traj.rmsd[0] == pytest.approx(0.0, abs=1e-6)
    assert traj.rmsd[1] == pytest.approx(0.0, abs=0.02)
    # 1 of n backbone atoms 3 Å off: RMSD without fit is 3/sqrt(n); the fit lowers it a bit
    assert 0.5 * 3 / np.sqrt(len(backbone)) < traj.rmsd[2] < 3 / np.sqrt(len(backbone)) + 0.02
    assert traj.radius_of_gyration[:2] == pytest.approx([rgyr0, rgyr0], abs=0.01)
    assert traj.atom_names[:2] == ["N", "CA"]
    out = write_amber_trajectory(
        tmp_path / "pep.nc", traj.coordinates, traj.time_ps, program_version="1",
        frame_series={"rmsd": traj.rmsd},
    )
    back = mda.Universe(str(pdb), str(out))
    assert len(back.trajectory) == 3
    back.trajectory[1]
    np.testing.assert_array_equal(back.atoms.positions, traj.coordinates[1])
