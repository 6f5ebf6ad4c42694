"""Phase 2 end to end: embeddings → spectral clusters → representatives → GROMACS MD
submitted to the real local Slurm cluster → AMBER NetCDF trajectories read back with
MDAnalysis, with lineage from each trajectory back to the FASTQ."""

from __future__ import annotations

import uuid
from pathlib import Path

import MDAnalysis as mda
import numpy as np
import pytest
from netCDF4 import Dataset

from helixflow.app.demo import Demo, DemoSpec, write_demo
from helixflow.app.launch import launch_pipeline
from helixflow.blocks.slurm import SlurmCluster
from helixflow.lineage import LineageGraph, load_records
from helixflow.store import Store, local_path
from helixflow.tasks.md_checks import MdChecks
from tests.conftest import require_tool

pytestmark = pytest.mark.integration


def _leaves(node) -> set[str]:
    found, stack = set(), [node]
    while stack:
        n = stack.pop()
        if not n.children and n.task_name is None:
            found.add(n.uri)
        stack.extend(n.children)
    return found


def slurm_md_inputs(tmp_path: Path, prefix: str) -> tuple[str, Demo]:
    """A saved local-cli SlurmCluster block (polling fast, scratch in `tmp_path`) and a
    2-genome demo small enough for MD through Slurm in a test; -> (block name, demo)."""
    require_tool("gmx")
    block = f"{prefix}-{uuid.uuid4().hex[:8]}"
    SlurmCluster(mode="local-cli", scratch_dir=str(tmp_path / "scratch"), poll_interval=0.5,
                 poll_max_interval=2.0, default_time_limit=10).save(block)
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=1500, n_genomes=2,
                                                  genome_length=20_000))
    return block, demo


def test_md_of_representatives_through_slurm(
    prefect_api: str, slurm_cluster: str, tmp_path: Path
) -> None:
    block, demo = slurm_md_inputs(tmp_path, "test-slurm")
    store_dir = tmp_path / "store"
    launched = launch_pipeline(
        [str(demo.r1), str(demo.r2)], store=str(store_dir), reference=str(demo.genomes),
        embed_methods=["kmer"], truth=str(demo.truth),
        simulate_options={"max_representatives": 2, "md_steps": 200, "peptide_max": 6,
                          "cluster_block": block},
    )
    assert launched.error is None, launched.error
    summary = launched.summary
    assert summary.analysis["n_clusters"] >= 2 and summary.analysis["ari_spectral"] >= 0.8
    assert len(summary.trajectories) == 2
    rows = {r["trajectory"]: r for r in summary.md_checks}
    assert sorted(rows) == sorted(summary.trajectories) and summary.warnings == []
    for row in rows.values():
        assert row["checks_passed"] is True and row["failed_checks"] == "", row
        assert row["em_fmax"] < row["emtol"] and abs(row["mean_t"] - row["ref_t"]) <= 5.0
        assert row["lincs_warnings"] == 0 and row["max_bond_A"] < 3.0
        assert row["max_com_jump_A"] < 5.0  # a jump would be a box edge, ~30-45 Å
    graph = LineageGraph(load_records(Store(str(store_dir))))
    for uri in summary.trajectories:
        path = local_path(uri)
        with Dataset(path) as nc:
            assert nc.Conventions == "AMBER" and nc.ConventionVersion == "1.0"
            assert nc.variables["coordinates"].units == "angstrom"
            assert nc.variables["time"].units == "picosecond"
            temperature = np.asarray(nc.variables["temperature"][:])
            assert len(temperature) > 1 and np.isfinite(temperature).all()
        gro = store_dir / "runs" / summary.run_id / "md-jobs" / path.stem / "md.gro"
        u = mda.Universe(str(gro), str(path), format="NCDF")
        assert len(u.trajectory) >= 2 and u.atoms.n_atoms > 100
        u.trajectory[-1]
        ref = mda.Universe(str(gro))  # the final frame, in nm in the .gro, Å here
        # The NetCDF is centred on the peptide (trjconv -pbc mol -center): the same frame
        # up to one shift of the whole system and whole box vectors per molecule.
        offset = u.atoms.positions - ref.atoms.positions
        offset -= offset[0]
        box = ref.dimensions[:3]
        offset -= box * np.round(offset / box)
        assert np.abs(offset).max() < 0.2
        records = [r for r in load_records(Store(str(store_dir))) if r.uri == uri]
        assert records and records[0].stage == "md"
        # The sanity checks, in lineage, in the NetCDF and in the run summary: all passed.
        checks = MdChecks.model_validate(records[0].metadata["md_checks"])
        with Dataset(path) as nc:
            assert MdChecks.model_validate_json(nc.md_checks) == checks
        assert checks.passed, checks.failures()
        print(f"\n{path.stem}: {checks.row()}")
        leaves = _leaves(graph.upstream(graph.resolve(uri)))
        assert any(leaf.endswith("R1.fastq.gz") for leaf in leaves), leaves
    # The jobs went through Slurm: their outputs record the Slurm job id and state.
    jobs = [r for r in load_records(Store(str(store_dir))) if r.task_name == "flows.slurm"]
    assert jobs and all(r.metadata.get("slurm_state") == "COMPLETED" for r in jobs)
