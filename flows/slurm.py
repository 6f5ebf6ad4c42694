"""The Slurm sub-flow: stage inputs, submit (arrays for many similar jobs), poll with one
batched `squeue` per cycle, resubmit NODE_FAIL/PREEMPTED (and OUT_OF_MEMORY with twice the
memory), surface failures with the job's stderr, publish outputs to the store, and
`scancel` everything if the flow run is cancelled.

With no Slurm (`mode="none"` or no block) the very same job scripts run here with bash.

Example:
    ```python
    from helixflow.flows.slurm import run_slurm_jobs
    from helixflow.slurm import JobSpec

    results = run_slurm_jobs(
        [JobSpec(name=f"md-{i}", commands=[["gmx", "mdrun", "-deffnm", "md"]],
                 inputs={"md.tpr": tpr_ref}, outputs=["md.xtc", "md.log"], cpus=2)
         for i, tpr_ref in enumerate(tprs)],
        cluster_block="hpc", store=store.url, run_id=run_id, stage="md",
    )
    results[0].outputs["md.xtc"].uri   # the published artifact
    ```

The job machinery (backends, staging, polling, collection) is in the core:
`helixflow.slurm_jobs.run_jobs` is this flow's body, callable alone.
"""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Cancelled

from helixflow.blocks.slurm import SlurmCluster
from helixflow.retries import transient_reason
from helixflow.slurm import JobResult, JobSpec
from helixflow.slurm_jobs import REGISTRY, RunCancelled, run_jobs

# -- cancellation --------------------------------------------------------------------------


def _ancestor_flow_runs(flow_run_id: UUID) -> list[UUID]:
    """This flow run and its parents: cancelling any of them cancels the jobs."""
    from prefect.client.orchestration import get_client

    ids = [flow_run_id]
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run_id)
        while current.parent_task_run_id is not None and len(ids) < 16:
            parent_task = client.read_task_run(current.parent_task_run_id)
            if parent_task.flow_run_id is None:
                break
            current = client.read_flow_run(parent_task.flow_run_id)
            ids.append(current.id)
    return ids


def _scancel_on_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_cancellation` hook (runner/worker cancellation): scancel this run's jobs."""
    ids = REGISTRY.cancel(str(flow_run.id))
    if ids:
        get_run_logger().warning(f"flow run cancelled: scancel {' '.join(ids)}")


# -- entry points --------------------------------------------------------------------------


def resolve_cluster(cluster_block: str | None, cluster: SlurmCluster | None) -> SlurmCluster:
    """The cluster: an explicit block, a saved block by name, or none (run jobs here)."""
    if cluster is not None:
        return cluster
    if cluster_block:
        return SlurmCluster.load(cluster_block)
    return SlurmCluster(mode="none")



@flow(name="slurm-jobs", log_prints=True, on_cancellation=[_scancel_on_cancellation])
def run_slurm_jobs(
    jobs: list[JobSpec],
    cluster_block: str | None = None,
    cluster: SlurmCluster | None = None,
    store: str | None = None,
    store_block: str | None = None,
    run_id: str | None = None,
    stage: str = "slurm",
    as_array: bool = True,
) -> list[JobResult]:
    """Run batch jobs on Slurm (or locally with no cluster) and publish their outputs.

    Args:
        jobs: the jobs (`helixflow.slurm.JobSpec`); similar ones go as one job array
        cluster_block: name of a saved `SlurmCluster` block (default: none, run here)
        cluster: a `SlurmCluster` given directly (wins over `cluster_block`)
        store: store URL for inputs and outputs (default: the default store)
        store_block: name of a saved `HelixflowStore` block
        run_id: the run the outputs belong to (default: this flow run's id)
        stage: store stage; outputs land at runs/<run_id>/<stage>/<job name>/<file>
        as_array: submit jobs with equal resources as one array (throttled by max_concurrent)
    """
    from helixflow.blocks.store import resolve_store

    logger = get_run_logger()
    ctx = FlowRunContext.get()
    flow_run_ids: list[UUID] = []
    if ctx is not None and ctx.flow_run is not None:
        try:
            flow_run_ids = _ancestor_flow_runs(ctx.flow_run.id)
        except Exception as exc:
            if transient_reason(exc) is None:
                raise
            logger.warning("could not read the parent flow runs (%s): cancelling a parent "
                           "will not cancel these jobs, cancelling this flow run will", exc)
            flow_run_ids = [ctx.flow_run.id]
    rid = run_id or (str(flow_run_ids[-1]) if flow_run_ids else uuid.uuid4().hex)
    st = resolve_store(store, store_block)
    try:
        return run_jobs(jobs, resolve_cluster(cluster_block, cluster), st, rid, stage=stage,
                        as_array=as_array, logger=logger, flow_run_ids=flow_run_ids)
    except RunCancelled as exc:
        logger.warning(str(exc))
        return Cancelled(message=str(exc))  # type: ignore[return-value]
