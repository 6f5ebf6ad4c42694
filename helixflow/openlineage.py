"""OpenLineage events of helixflow's lineage, for Marquez, DataHub, OpenMetadata & co.

Off unless the standard OpenLineage client configuration is present: `OPENLINEAGE_URL`
(HTTP transport; `OPENLINEAGE_API_KEY` for a bearer token), `OPENLINEAGE_CONFIG` (a YAML
file), or `OPENLINEAGE__TRANSPORT__…` variables; `OPENLINEAGE_DISABLED=true` turns it off
again. `OPENLINEAGE_NAMESPACE` names the jobs' namespace (default `helixflow`).

Every task run that published artifacts is one OpenLineage run of the job
`helixflow.<producer>`: a START and a COMPLETE event whose input datasets are the
artifact's upstream files and whose outputs are the artifacts, named by store URI
(namespace `file` + absolute path, or `s3://bucket` + key, as OpenLineage names files).
Facets carry what helixflow records: sha256 (`version`), size and rows
(`outputStatistics`), and a `helixflow` run facet with parameters, code and tool
versions, the Prefect flow and task run ids and whether the result came from the cache;
the flow run is the `parent`. Cached tasks emit events for the run that reused them. A
task that fails for good emits FAIL with its error (a Prefect `on_failure` hook).
Events are built from lineage records, so `helixflow lineage URI --format openlineage`
prints the same events for any artifact's history.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import attr
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    RunFacet,
    dataset_version_dataset,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
)

import helixflow
from helixflow.artifacts import FileRef
from helixflow.lineage import LineageGraph, LineageNode, LineageRecord

log = logging.getLogger(__name__)
PRODUCER = "https://github.com/helixflow/helixflow"
#: The job of a pipeline flow run: the parent of its tasks' runs.
FLOW_JOB = "helixflow.flow"
_CONFIG_ENV = ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG")


@attr.define
class HelixflowRunFacet(RunFacet):
    """What helixflow records about a task run beyond OpenLineage's standard facets."""

    parameters: dict[str, Any] = attr.field(factory=dict)
    codeVersion: dict[str, Any] = attr.field(factory=dict)
    tools: dict[str, str] = attr.field(factory=dict)
    prefectFlowRunId: str | None = attr.field(default=None)
    prefectTaskRunId: str | None = attr.field(default=None)
    helixflowRunId: str | None = attr.field(default=None)
    cached: bool = attr.field(default=False)
    executedOn: str | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return f"{PRODUCER}/blob/main/docs/openlineage/HelixflowRunFacet.json"


def enabled() -> bool:
    """Whether OpenLineage is configured (and not disabled) in this process's env."""
    if os.environ.get("OPENLINEAGE_DISABLED", "").lower() in ("1", "true", "yes"):
        return False
    return any(os.environ.get(k) for k in _CONFIG_ENV) or any(
        k.startswith("OPENLINEAGE__TRANSPORT__") for k in os.environ)


def namespace() -> str:
    return os.environ.get("OPENLINEAGE_NAMESPACE") or "helixflow"


def run_uuid(prefect_id: str | None, fallback: str) -> str:
    """An OpenLineage runId (a UUID): the Prefect run id when it is one, else a stable
    UUID derived from `fallback`."""
    try:
        return str(uuid.UUID(str(prefect_id)))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"helixflow:{fallback}"))


def dataset_name(uri: str) -> tuple[str, str]:
    """(namespace, name) of a store URI, as OpenLineage's naming spec names files."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return "file", parts.path or uri
    if parts.netloc:
        return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")
    return parts.scheme, parts.path


def _input(ref: FileRef) -> InputDataset:
    ns, name = dataset_name(ref.uri)
    facets = {}
    if ref.sha256:
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=ref.sha256)
    return InputDataset(namespace=ns, name=name, facets=facets)


def _output(record: LineageRecord) -> OutputDataset:
    ns, name = dataset_name(record.uri)
    stats = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
        rowCount=record.rows, size=record.size)
    return OutputDataset(
        namespace=ns, name=name,
        facets={"version": dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=record.sha256)},
        outputFacets={"outputStatistics": stats})


def _job(name: str) -> Job:
    kind = job_type_job.JobTypeJobFacet(processingType="BATCH", integration="HELIXFLOW",
                                        jobType="TASK" if name != FLOW_JOB else "FLOW")
    return Job(namespace=namespace(), name=name, facets={"jobType": kind})


def _parent(flow_run_id: str | None, run_id: str) -> dict[str, Any]:
    if not flow_run_id:
        return {}
    return {"parent": parent_run.ParentRunFacet(
        run=parent_run.Run(runId=run_uuid(flow_run_id, run_id)),
        job=parent_run.Job(namespace=namespace(), name=FLOW_JOB))}


def _engine() -> processing_engine_run.ProcessingEngineRunFacet:
    return processing_engine_run.ProcessingEngineRunFacet(
        version=helixflow.__version__, name="helixflow")


def task_events(records: Iterable[LineageRecord]) -> list[RunEvent]:
    """START and COMPLETE events for each task run among `records` (grouped by task run;
    records without one are grouped by producer and helixflow run)."""
    groups: dict[tuple[str, str], list[LineageRecord]] = {}
    for rec in records:
        key = (rec.task_run_id or f"{rec.run_id}:{rec.task_name}", rec.run_id)
        groups.setdefault(key, []).append(rec)
    events = []
    for (task_key, helix_run), recs in groups.items():
        first = recs[0]
        inputs: dict[str, FileRef] = {}
        for rec in recs:
            inputs.update({u.uri: u for u in rec.upstream})
        facets: dict[str, Any] = {
            **_parent(first.flow_run_id, helix_run),
            "processing_engine": _engine(),
            "helixflow": HelixflowRunFacet(
                parameters=first.parameters, codeVersion=dict(first.code_version),
                tools=first.tools, prefectFlowRunId=first.flow_run_id,
                prefectTaskRunId=first.task_run_id, helixflowRunId=helix_run,
                cached=first.cached, executedOn=first.executed_on),
        }
        run = Run(runId=run_uuid(first.task_run_id, f"{helix_run}:{task_key}"), facets=facets)
        job = _job(f"helixflow.{first.task_name}")
        start = min(r.created_at for r in recs)
        end = max(r.recorded_at for r in recs)
        ins = [_input(ref) for ref in inputs.values()]
        outs = [_output(r) for r in recs]
        events.append(RunEvent(eventType=RunState.START, eventTime=start.isoformat(), run=run,
                               job=job, producer=PRODUCER, inputs=ins, outputs=[]))
        events.append(RunEvent(eventType=RunState.COMPLETE, eventTime=end.isoformat(),
                               run=run, job=job, producer=PRODUCER, inputs=ins, outputs=outs))
    return events


def flow_event(state: str, flow_run_id: str, run_id: str, message: str | None = None
               ) -> RunEvent:
    """A START/COMPLETE/FAIL event of a pipeline flow run (the parent of its tasks)."""
    facets: dict[str, Any] = {"processing_engine": _engine()}
    if message:
        facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=message, programmingLanguage="python")
    return RunEvent(eventType=RunState[state], eventTime=datetime.now(UTC).isoformat(),
                    run=Run(runId=run_uuid(flow_run_id, run_id), facets=facets),
                    job=_job(FLOW_JOB), producer=PRODUCER)


def failed_task_event(task_name: str, task_run_id: str, flow_run_id: str | None,
                      message: str) -> RunEvent:
    """FAIL of a task run (no outputs: nothing was published)."""
    facets: dict[str, Any] = {
        **_parent(flow_run_id, flow_run_id or ""), "processing_engine": _engine(),
        "errorMessage": error_message_run.ErrorMessageRunFacet(
            message=message[:2000], programmingLanguage="python")}
    return RunEvent(eventType=RunState.FAIL, eventTime=datetime.now(UTC).isoformat(),
                    run=Run(runId=run_uuid(task_run_id, task_name), facets=facets),
                    job=_job(f"helixflow.{task_name}"), producer=PRODUCER)


def emit(events: Iterable[RunEvent]) -> int:
    """Send `events` with the OpenLineage client configured by the environment; returns
    how many were sent. Lineage export never fails a run: a failed send is a warning."""
    events = list(events)
    if not events or not enabled():
        return 0
    from openlineage.client import OpenLineageClient

    try:
        client = OpenLineageClient()
        if client.transport.kind == "console" and os.environ.get(
                "OPENLINEAGE__TRANSPORT__TYPE", "").lower() != "console":
            # no transport could be built from the configuration: the client's fallback
            # would print every event to this run's console
            log.warning("OpenLineage: no transport in the configuration; %d event(s) not "
                        "sent", len(events))
            return 0
        for event in events:
            client.emit(event)
    except Exception as exc:  # any transport error: the run's own lineage is intact
        log.warning("OpenLineage: %d event(s) not sent: %s", len(events), exc)
        return 0
    return len(events)


def on_task_failure(task: Any, task_run: Any, state: Any) -> None:
    """Prefect `on_failure` hook of every helixflow task: a FAIL event when enabled."""
    if enabled():
        emit([failed_task_event(task.name, str(task_run.id), str(task_run.flow_run_id or "")
                                or None, str(state.message or state.name))])


def history_events(graph: LineageGraph, node: LineageNode) -> list[RunEvent]:
    """The events of every task run in a lineage tree (`LineageGraph.upstream` or
    `.downstream`), oldest first: an artifact's history as OpenLineage tells it."""
    runs: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        stack.extend(n.children)
        rec = graph.by_uri.get(n.uri)
        if rec is not None:
            runs.add(rec.task_run_id or f"{rec.run_id}:{rec.task_name}")
    records = [r for r in graph.records
               if (r.task_run_id or f"{r.run_id}:{r.task_name}") in runs]
    return sorted(task_events(records), key=lambda e: (e.eventTime, e.eventType != "START"))


def to_json(event: RunEvent) -> str:
    """One event as OpenLineage JSON."""
    from openlineage.client.serde import Serde

    return str(Serde.to_json(event))
