"""`md-campaign`: molecular dynamics of an earlier analysis' representatives, with more
peptides or longer runs than a pipeline run's short default, on the Slurm cluster.

The representatives table is found by URI (or as the newest one in the store); the MD goes
through the same staged-input, Slurm sub-flow and content-reuse path as `helixflow run`,
so a campaign never repeats a simulation the store already holds.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from helixflow.blocks.store import resolve_store
from helixflow.errors import HelixflowError
from helixflow.flows.preprocess import stage_params
from helixflow.flows.simulate import (
    SimulateParams,
    md_check_rows,
    simulate_representatives,
)
from helixflow.lineage import LineageGraph, LineageRecord, load_records
from helixflow.recorder import RunRecorder
from helixflow.runner import DeferredRayTaskRunner


class CampaignSummary(BaseModel):
    run_id: str
    representatives: str
    method: str
    trajectories: list[str]
    md_checks: list[dict[str, Any]] = []
    """Per simulation: the sanity checks' figures and verdicts (`md_check_rows`)."""
    warnings: list[str] = []
    """Failed MD checks, one line each (also warnings in the run's log)."""


def find_representatives(records: list[LineageRecord], uri: str | None) -> LineageRecord:
    """The representatives table named by `uri`, else the store's newest one."""
    if uri:
        found = LineageGraph(records).resolve(uri)
        if not isinstance(found, LineageRecord) or found.stage != "analysis":
            raise HelixflowError(f"{uri} is not an analysis artifact in this store",
                                 hint="give a runs/<run>/analysis/…representatives.parquet URI")
        return found
    reps = [r for r in records if r.stage == "analysis" and "representatives" in r.uri]
    if not reps:
        raise HelixflowError("no representatives in this store",
                             hint="run `helixflow run` (phase 2) first, or give one by URI")
    return max(reps, key=lambda r: r.created_at)


@flow(name="md-campaign", flow_run_name="{run_label}", log_prints=True,
      task_runner=DeferredRayTaskRunner())
def md_campaign(
    representatives: str | None = None,
    store: str | None = None,
    store_block: str | None = None,
    simulate_options: dict[str, Any] | None = None,
    run_label: str = "md-campaign",
) -> CampaignSummary:
    """Simulate the peptides of a representatives table (default: the store's newest).

    Args:
        representatives: URI of an analysis' representatives table
        store: store URL (default `$HELIXFLOW_STORE` or the local store)
        store_block: a saved `HelixflowStore` block
        simulate_options: fields of `flows.simulate.SimulateParams` (max_representatives,
            md_steps, gromacs_block, cluster_block, peptide_min, peptide_max)
        run_label: the flow run's display name
    """
    logger = get_run_logger()
    st = resolve_store(store, store_block)
    run_id = str(runtime.flow_run.id)
    recorder = RunRecorder(st, run_id)
    params = stage_params(SimulateParams, simulate_options, "simulate")
    record = find_representatives(load_records(st), representatives)
    method = record.uri.rsplit("/", 1)[-1].split(".representatives", 1)[0]
    (reps,) = recorder.record_outputs([record.artifact()], None, cached=True)
    recorder.flush()
    logger.info("campaign over %s (%s)", record.uri, method)
    trajectories = simulate_representatives(method, reps, params, st, run_id, recorder,
                                            store_block)
    rows = md_check_rows(trajectories)
    create_table_artifact(
        key="md-campaign", description=f"MD campaign over {record.uri}, with each "
        "simulation's sanity checks", table=rows)
    return CampaignSummary(run_id=run_id, representatives=record.uri, method=method,
                           trajectories=[t.uri for t in trajectories], md_checks=rows,
                           warnings=recorder.warnings)
