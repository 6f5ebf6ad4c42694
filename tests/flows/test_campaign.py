"""`md-campaign` on the real server, Ray and GROMACS: MD of an earlier analysis'
representatives, and the same campaign again reusing the finished simulation."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from netCDF4 import Dataset

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.app.launch import launch_flow, launch_pipeline
from helixflow.errors import HelixflowError
from helixflow.flows.campaign import md_campaign
from helixflow.lineage import load_records
from helixflow.store import Store
from helixflow.uris import local_path
from tests.conftest import require_tool

pytestmark = pytest.mark.integration


def _slurm_flow_runs(api: str) -> int:
    body = {"flows": {"name": {"any_": ["slurm-jobs"]}}}
    resp = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30)
    resp.raise_for_status()
    return len(resp.json())


def test_campaign_simulates_representatives_and_reuses_finished_md(
    prefect_api: str, tmp_path: Path
) -> None:
    require_tool("gmx")
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=1500, n_genomes=2,
                                                  genome_length=20_000))
    store_dir = tmp_path / "store"
    analysed = launch_pipeline(
        [str(demo.r1), str(demo.r2)], store=str(store_dir), embed_methods=["kmer"],
        simulate_options={"max_representatives": 0})  # analysis only, no MD
    assert analysed.error is None, analysed.error
    assert analysed.summary.trajectories == []

    options = {"max_representatives": 1, "md_steps": 200, "peptide_max": 6}
    before = _slurm_flow_runs(prefect_api)
    first = launch_flow(md_campaign, {"simulate_options": options}, store=str(store_dir))
    assert first.error is None, first.error
    (trajectory,) = first.summary.trajectories
    assert first.summary.representatives.endswith("kmer5.representatives.parquet")
    assert f"/runs/{first.flow_run_id}/md/" in trajectory
    with Dataset(local_path(trajectory)) as nc:
        assert nc.Conventions == "AMBER" and nc.dimensions["frame"].size >= 2
    assert _slurm_flow_runs(prefect_api) == before + 1

    second = launch_flow(md_campaign, {"simulate_options": options}, store=str(store_dir))
    assert second.error is None, second.error
    assert _slurm_flow_runs(prefect_api) == before + 1  # no job submitted again
    records = [r for r in load_records(Store(store_dir.as_uri()))
               if r.run_id == second.flow_run_id]
    md_outputs = [r for r in records if r.stage.startswith("md-jobs")]
    assert md_outputs and all(r.cached for r in md_outputs)
    (again,) = [r for r in records if r.stage == "md"]
    (made,) = [r for r in load_records(Store(store_dir.as_uri()))
               if r.run_id == first.flow_run_id and r.stage == "md"]
    assert again.sha256 == made.sha256


def test_campaign_names_a_missing_representatives_table(prefect_api: str,
                                                        tmp_path: Path) -> None:
    launched = launch_flow(md_campaign, {"representatives": "file:///nowhere/x.parquet"},
                           store=str(tmp_path / "empty-store"))
    assert isinstance(launched.error, HelixflowError)
    assert "x.parquet is not an analysis artifact" in str(launched.error)
