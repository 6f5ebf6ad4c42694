"""A run's recorder: lineage for every task result, executed or served from the cache.

Prefect emits asset events only for tasks that ran; the recorder writes a lineage record
for every artifact a run uses, and shows cache hits in the run's own folder.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, runtime
from prefect.futures import PrefectFuture

from helixflow import openlineage
from helixflow.artifacts import Artifact, Skipped
from helixflow.lineage import LineageLog, LineageRecord
from helixflow.store import Store


def was_cached(future: PrefectFuture[Any]) -> bool:
    return bool(future.state.name == "Cached")


class RunRecorder:
    """Collects the run's lineage (flushed to the store after every stage) and task counts."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.log = LineageLog(store, run_id)
        self.flow_run_id = str(runtime.flow_run.id)
        self.executed = 0
        self.cached = 0
        self.by_task: dict[str, dict[str, int]] = {}
        self.skipped: list[Skipped] = []
        self.warnings: list[str] = []
        self._unsent: list[LineageRecord] = []  # not yet exported to OpenLineage
        openlineage.emit([openlineage.flow_event("START", self.flow_run_id, run_id)])

    def record(self, future: PrefectFuture[Any], artifacts: list[Artifact]) -> list[Artifact]:
        """Lineage for one task's artifacts; returns them as seen from this run's folder."""
        cached = was_cached(future)
        name = artifacts[0].producer if artifacts else "unknown"
        tally = self.by_task.setdefault(name, {"executed": 0, "cached": 0})
        tally["cached" if cached else "executed"] += 1
        if cached:
            self.cached += 1
            artifacts = [self.store.link_into_run(a, self.run_id) for a in artifacts]
        else:
            self.executed += 1
        for artifact in artifacts:
            self._add(LineageRecord.of(
                artifact, run_id=self.run_id, flow_run_id=self.flow_run_id,
                task_run_id=str(future.task_run_id), cached=cached))
        return artifacts

    def record_outputs(self, artifacts: list[Artifact], producer_run_id: str | None,
                       *, cached: bool = False) -> list[Artifact]:
        """Lineage for artifacts made outside a task future (a sub-flow such as the Slurm
        jobs, identified by its flow run id); cached ones are linked into this run."""
        if not artifacts:
            return artifacts
        tally = self.by_task.setdefault(artifacts[0].producer, {"executed": 0, "cached": 0})
        tally["cached" if cached else "executed"] += 1
        if cached:
            artifacts = [self.store.link_into_run(a, self.run_id) for a in artifacts]
        for artifact in artifacts:
            self._add(LineageRecord.of(artifact, run_id=self.run_id,
                                       flow_run_id=self.flow_run_id,
                                       task_run_id=producer_run_id, cached=cached))
        return artifacts

    def _add(self, record: LineageRecord) -> None:
        self.log.add(record)
        if openlineage.enabled():
            self._unsent.append(record)

    def skip(self, stage: str, sample: str, reason: str) -> Skipped:
        """A stage left out for want of input: one warning in the run's log and one entry
        in the run summary (recorded once, however often it is reported)."""
        outcome = Skipped(stage=stage, sample=sample, reason=reason)
        if outcome not in self.skipped:
            self.skipped.append(outcome)
            get_run_logger().warning("%s", outcome.line, extra={"skipped_stage": True})
        return outcome

    def warn(self, line: str) -> str:
        """A finding the run goes on from (a failed MD sanity check): one warning in the
        run's log and one entry in the run summary (recorded once, however often it is
        reported)."""
        if line not in self.warnings:
            self.warnings.append(line)
            get_run_logger().warning("%s", line, extra={"summary_warning": True})
        return line

    def flush(self) -> None:
        """Write the new lineage records to the store (and send them to OpenLineage)."""
        self.log.flush()
        unsent, self._unsent = self._unsent, []
        openlineage.emit(openlineage.task_events(unsent))

    def finish(self) -> None:
        """The run's last flush, and its COMPLETE event for OpenLineage."""
        self.flush()
        openlineage.emit([openlineage.flow_event("COMPLETE", self.flow_run_id, self.run_id)])
