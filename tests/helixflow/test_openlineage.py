"""OpenLineage export: events built from lineage records, sent to a real HTTP receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from helixflow import openlineage
from helixflow.artifacts import FileRef
from helixflow.lineage import LineageLog, LineageRecord
from helixflow.store import Store

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
FQ = FileRef(uri="file:///data/in/R1.fastq.gz", sha256="a" * 64, size=10)


def _record(name: str, task_run: str | None, upstream: list[FileRef], *, cached: bool = False,
            uri: str | None = None, sha: str = "b") -> LineageRecord:
    return LineageRecord(
        uri=uri or f"s3://bucket/hf/runs/r1/{name}/x.parquet", cas_uri=f"s3://bucket/hf/o/{sha}",
        sha256=sha * 64, size=123, rows=7, media_type="application/vnd.apache.parquet",
        stage=name, run_id="r1", flow_run_id=str(uuid.UUID(int=1)), task_run_id=task_run,
        task_name=name, cached=cached, parameters={"k": 5}, tools={"samtools": "1.21"},
        upstream=upstream, created_at=T0, recorded_at=T0 + timedelta(seconds=3))


def test_a_task_run_is_a_start_and_a_complete_event() -> None:
    task_run = str(uuid.UUID(int=7))
    a = _record("ingest-fastq", task_run, [FQ])
    b = _record("ingest-fastq", task_run, [FQ], uri="s3://bucket/hf/runs/r1/ingest/y.parquet",
                sha="c", cached=True)
    start, complete = openlineage.task_events([a, b])
    assert (start.eventType, complete.eventType) == (openlineage.RunState.START,
                                                     openlineage.RunState.COMPLETE)
    assert start.run.runId == complete.run.runId == task_run  # Prefect's task run id
    assert complete.job.name == "helixflow.ingest-fastq"
    assert [(i.namespace, i.name) for i in complete.inputs] == [("file", "/data/in/R1.fastq.gz")]
    assert [(o.namespace, o.name) for o in complete.outputs] == [
        ("s3://bucket", "hf/runs/r1/ingest-fastq/x.parquet"),
        ("s3://bucket", "hf/runs/r1/ingest/y.parquet")]
    assert start.outputs == [] and start.eventTime < complete.eventTime
    body = json.loads(openlineage.to_json(complete))
    out = body["outputs"][0]
    assert out["facets"]["version"]["datasetVersion"] == "b" * 64
    stats = out["outputFacets"]["outputStatistics"]
    assert (stats["rowCount"], stats["size"]) == (7, 123)
    facet = body["run"]["facets"]["helixflow"]
    assert facet["parameters"] == {"k": 5} and facet["tools"] == {"samtools": "1.21"}
    assert facet["prefectTaskRunId"] == task_run and facet["cached"] is False
    assert body["run"]["facets"]["parent"]["run"]["runId"] == str(uuid.UUID(int=1))
    assert body["inputs"][0]["facets"]["version"]["datasetVersion"] == "a" * 64


def test_runs_without_a_prefect_task_run_get_a_stable_uuid() -> None:
    a = _record("slurm-job", "not-a-uuid", [FQ])
    (first, _), (again, _) = openlineage.task_events([a]), openlineage.task_events([a])
    assert first.run.runId == again.run.runId and str(uuid.UUID(first.run.runId))


def test_off_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(key)
    assert not openlineage.enabled()
    assert openlineage.emit(openlineage.task_events([_record("x", None, [FQ])])) == 0
    monkeypatch.setenv("OPENLINEAGE_URL", "http://127.0.0.1:9")
    assert openlineage.enabled()
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    assert not openlineage.enabled()


def test_events_reach_an_http_receiver_and_a_dead_one_is_a_warning(
        openlineage_receiver, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    events = openlineage.task_events([_record("qc", str(uuid.UUID(int=9)), [FQ])])
    assert openlineage.emit(events) == 2
    got = openlineage_receiver.events
    assert [e["eventType"] for e in got] == ["START", "COMPLETE"]
    assert got[1]["outputs"][0]["name"] == "hf/runs/r1/qc/x.parquet"
    monkeypatch.setenv("OPENLINEAGE_URL", "http://127.0.0.1:9")  # nothing listens there
    assert openlineage.emit(events) == 0
    assert "not sent" in caplog.text


def test_lineage_cli_prints_an_artifacts_history_as_events(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    first = _record("ingest-fastq", str(uuid.UUID(int=2)), [FQ],
                    uri=store.join("runs", "r1", "ingest", "x.parquet"), sha="b")
    shard = FileRef(uri=first.uri, sha256=first.sha256, size=first.size)
    second = _record("kmer-spectra", str(uuid.UUID(int=3)), [shard],
                     uri=store.join("runs", "r1", "embed", "x.kmer5.parquet"), sha="d")
    unrelated = _record("other", str(uuid.UUID(int=4)), [FQ],
                        uri=store.join("runs", "r1", "other", "z"), sha="e")
    log = LineageLog(store, "r1")
    for rec in (first, second, unrelated):
        log.add(rec)
    log.flush()
    # a subprocess, as a user runs it (CliRunner's swapped streams would stay bound to
    # Prefect's console log handler after it returns)
    proc = subprocess.run([sys.executable, "-m", "helixflow", "lineage", second.uri,
                           "--format", "openlineage", "--store", store.url],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(e["eventType"], e["job"]["name"]) for e in events] == [
        ("START", "helixflow.ingest-fastq"), ("START", "helixflow.kmer-spectra"),
        ("COMPLETE", "helixflow.ingest-fastq"), ("COMPLETE", "helixflow.kmer-spectra")]
    assert events[3]["inputs"][0]["name"] == events[2]["outputs"][0]["name"]


@pytest.mark.integration
def test_a_task_that_fails_for_good_sends_fail(prefect_api: str, openlineage_receiver) -> None:
    from prefect import flow, task

    from helixflow.retries import retry_options

    @task(name="broken-stage", **retry_options())
    def broken() -> None:
        raise ValueError("a bug in a kernel")

    @flow
    def run() -> None:
        broken()

    with pytest.raises(ValueError):
        run()
    (fail,) = [e for e in openlineage_receiver.events if e["eventType"] == "FAIL"]
    assert fail["job"]["name"] == "helixflow.broken-stage"
    assert "a bug in a kernel" in fail["run"]["facets"]["errorMessage"]["message"]
    assert fail["run"]["facets"]["parent"]["job"]["name"] == "helixflow.flow"


def test_a_configuration_without_a_transport_prints_no_events(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The client's fallback is to print every event to the console: not in a run's."""
    from openlineage.client.transport.console import ConsoleTransport

    printed: list[object] = []
    monkeypatch.setattr(ConsoleTransport, "emit", lambda self, event: printed.append(event))
    for key in [k for k in __import__("os").environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TIMEOUT", "5")  # configured, but no type
    assert openlineage.enabled()
    assert openlineage.emit(openlineage.task_events([_record("x", None, [FQ])])) == 0
    assert "no transport in the configuration" in caplog.text
    assert printed == []
