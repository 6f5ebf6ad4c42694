"""Deployments on the real Prefect server: `helixflow deploy`, then flow runs picked up by a
real process worker, with parameters given as the UI gives them.

This module's server keeps its state in PostgreSQL (as Prefect recommends beyond one user,
and as an operator runs deployments); the rest of the suite's server runs on SQLite."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential
from typer.testing import CliRunner

from helixflow.app.cli import app
from helixflow.app.demo import DemoSpec, write_demo
from helixflow.lineage import LineageGraph, LineageNode, load_records
from helixflow.store import Store
from tests.conftest import stop_process

if TYPE_CHECKING:
    from deployments.postgres import LocalPostgres
    from helixflow.app.server import ServerInfo

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _busy(exc: BaseException) -> bool:
    """The server said "try again" (its SQLite is busy under load) or dropped the call."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in (429, 503)
    return isinstance(exc, httpx.TransportError)


@retry(retry=retry_if_exception(_busy), wait=wait_exponential(max=8), stop=stop_after_attempt(8),
       reraise=True)
def _api(method: str, url: str, body: dict | None = None) -> Any:
    """One call to the Prefect REST API, retried while the server is busy (as Prefect's own
    client does); the decoded JSON."""
    resp = httpx.request(method, url, json=body, timeout=30)
    resp.raise_for_status()
    return resp.json() if resp.content else None


def _post(api: str, path: str, body: dict) -> list[dict]:
    return _api("POST", f"{api}{path}", body)


def deployment_runs(api: str, deployment_id: str, name_prefix: str = "") -> list[dict]:
    """The deployment's flow runs (those whose name starts with `name_prefix`)."""
    runs = _post(api, "/flow_runs/filter",
                 {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})
    return [r for r in runs if r["name"].startswith(name_prefix)]


def wait_for_runs(api: str, deployment_id: str, count: int, timeout: float,
                  states: tuple[str, ...] = ("COMPLETED",), name_prefix: str = "") -> list[dict]:
    """The deployment's flow runs (named `name_prefix…`) once `count` of them are in
    `states` (or fail early on a failed or crashed one)."""
    deadline = time.monotonic() + timeout
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = deployment_runs(api, deployment_id, name_prefix)
        bad = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
        assert not bad, [(r["name"], r["state"]["message"]) for r in bad]
        if sum(r["state_type"] in states for r in runs) >= count:
            return runs
        time.sleep(2)
    pytest.fail(f"{count} run(s) not {states} after {timeout} s: "
                f"{[(r['name'], r['state_type']) for r in runs]}")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`helixflow worker` as its own process, the way an operator starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "helixflow", "worker", "--limit", "2"], cwd=REPO,
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


DATABASE = "hf_test_deployments"


@pytest.fixture(scope="module")
def pg_server(postgres: LocalPostgres, tmp_path_factory: pytest.TempPathFactory,
              helixflow_home: Path) -> Iterator[ServerInfo]:
    """This module's server: a fresh one on PostgreSQL (in place of the session's SQLite
    one, which is given back afterwards); this process and its workers point at it."""
    from prefect.context import refresh_global_settings_context
    from pydantic import SecretStr

    from helixflow.app.server import ensure_server, flush_prefect_workers, stop_server, use_server

    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    database = postgres.create_database(DATABASE)
    home = tmp_path_factory.mktemp("postgres-server")
    info = ensure_server(home, database=SecretStr(postgres.url(database, password=True)))
    use_server(info)  # flushes the event and log workers bound to the session's server
    yield info
    flush_prefect_workers()
    stop_server(home)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    refresh_global_settings_context()
    postgres.drop_database(database)


@pytest.fixture(scope="module")
def prefect_api(pg_server: ServerInfo) -> str:
    return pg_server.api_url


def retryable_errors(info: ServerInfo) -> int:
    """503s the server answered so far ("try again": its database was busy), from its log."""
    return info.log_path.read_text().count("Encountered retryable exception in request")


@pytest.fixture(scope="module")
def deployed(prefect_api: str) -> dict[str, dict]:
    """`helixflow deploy` once for the module: deployment name → deployment."""
    result = CliRunner().invoke(app, ["deploy", "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    deployments = _post(prefect_api, "/deployments/filter", {})
    return {d["name"]: d for d in deployments}


def test_deploy_creates_deployments_schedule_trigger_pool_and_blocks(
    prefect_api: str, deployed: dict[str, dict], postgres: LocalPostgres
) -> None:
    assert {"genomics-pipeline", "embed-refresh", "md-campaign"} <= set(deployed)
    # They are in PostgreSQL.
    rows = postgres.fetch("select name from deployment", DATABASE)
    assert {r["name"] for r in rows} == set(deployed)
    assert all(d["work_pool_name"] == "helixflow-process" for d in deployed.values())
    (schedule,) = deployed["embed-refresh"]["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["active"]
    pool = _api("GET", f"{prefect_api}/work_pools/helixflow-process")
    assert pool["type"] == "process" and pool["concurrency_limit"] == 2

    automations = _post(prefect_api, "/automations/filter", {})
    pipeline_id = deployed["genomics-pipeline"]["id"]
    (trigger,) = [a for a in automations
                  if any(x.get("deployment_id") == pipeline_id for x in a["actions"])]
    assert trigger["trigger"]["expect"] == ["helixflow.s3.object.created"]
    assert trigger["actions"][0]["parameters"]["inputs"] == "{{ event.payload.inputs }}"

    docs = _post(prefect_api, "/block_documents/filter", {})
    slugs = {(d["block_type"]["slug"], d["name"]) for d in docs}
    assert {("helixflow-store", "default"), ("helixflow-gromacs-settings", "default"),
            ("helixflow-model-registry", "default")} <= slugs

    # Registering again keeps the documents (a UI edit is not reverted by a redeploy).
    again = CliRunner().invoke(app, ["blocks", "register"])
    assert again.exit_code == 0, again.output
    assert "kept" in again.output and "created" not in again.output


def test_deployment_run_with_custom_parameters_on_a_worker(
    prefect_api: str, deployed: dict[str, dict], tmp_path: Path
) -> None:
    """A run created as the UI's "Custom run" does (parameters on the API) is executed by a
    process worker: tasks on Ray, artifacts and lineage in the chosen store."""
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=1500, n_genomes=2,
                                                  genome_length=15_000))
    store_dir = tmp_path / "store"
    dep = deployed["genomics-pipeline"]
    body = {"parameters": {"inputs": [str(demo.r1), str(demo.r2)], "store": str(store_dir),
                           "embed_methods": ["kmer"], "simulate": False, "shard_size": 1000}}
    run_id = _api("POST", f"{prefect_api}/deployments/{dep['id']}/create_flow_run", body)["id"]

    worker = start_worker(dict(os.environ), tmp_path / "worker.log")
    try:
        runs = wait_for_runs(prefect_api, dep["id"], 1, timeout=300)
    finally:
        stop_process(worker, timeout=30)
    (run,) = [r for r in runs if r["id"] == run_id]
    assert run["name"] == "pipeline demo"
    assert {"helixflow", "pipeline"} <= set(run["tags"])
    tasks = _post(prefect_api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    assert {"ingest-demo", "qc-report"} <= {t["name"] for t in tasks}
    assert all(t["state_type"] == "COMPLETED" for t in tasks)
    artifacts = _post(prefect_api, "/artifacts/filter",
                      {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    assert {"run-summary", "qc-report", "lineage"} <= {a["key"] for a in artifacts}

    records = load_records(Store(store_dir.as_uri()))
    graph = LineageGraph(records)
    kmers = [r for r in records if r.run_id == run_id and r.task_name == "kmer-spectra"]
    assert len(kmers) == 2  # 1500 pairs, 1000 per shard
    assert 2500 < sum(r.rows or 0 for r in kmers) <= 3000  # reads left after QC and dedup
    roots = {leaf for r in kmers for leaf in _leaves(graph.upstream(r))}
    assert roots == {demo.r1.as_uri(), demo.r2.as_uri()}


def _leaves(node: LineageNode) -> set[str]:
    """URIs at the top of a lineage tree: the inputs everything came from."""
    if not node.children:
        return {node.uri}
    return {uri for child in node.children for uri in _leaves(child)}


def test_s3_uploads_start_runs_exactly_once(
    prefect_api: str, deployed: dict[str, dict], moto_endpoint: str, tmp_path: Path
) -> None:
    """moto (S3 + SQS over HTTP), the real server, a process worker and the watcher: 3
    uploaded pairs → 3 completed runs with outputs and lineage in S3; the same
    notifications again → no run; a new version of an object → one more run."""
    import boto3

    from helixflow.app.watch import WatchConfig, open_watcher
    from helixflow.app.watch_sources import connect_bucket_to_queue

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint)
    for bucket in ("incoming", "results"):
        s3.create_bucket(Bucket=bucket)
    queue_url = connect_bucket_to_queue("incoming", "uploads", s3=s3, sqs=sqs)

    dep = deployed["genomics-pipeline"]
    defaults = {**dep["parameters"], "store": "s3://results/hf", "embed_methods": ["kmer"],
                "simulate": False, "shard_size": 1000}
    _api("PATCH", f"{prefect_api}/deployments/{dep['id']}", {"parameters": defaults})

    uploads: dict[str, tuple[Path, Path]] = {}
    for i in range(3):
        demo = write_demo(tmp_path / f"demo{i}", DemoSpec(seed=100 + i, n_pairs=800,
                                                          n_genomes=2, genome_length=10_000))
        uploads[f"s{i}"] = (demo.r1, demo.r2)
        for mate, path in (("R1", demo.r1), ("R2", demo.r2)):
            s3.upload_file(str(path), "incoming", f"run 7/s{i}_{mate}.fastq.gz")
    # Keep the notification bodies to send them again later (visibility 0: still queued).
    bodies = [m["Body"] for m in sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0)["Messages"]]
    assert len(bodies) == 7  # the s3:TestEvent and 6 uploads

    config = WatchConfig(queue_url=queue_url, wait_time=1, ledger=tmp_path / "ledger.sqlite")
    watcher = open_watcher(config)
    worker = start_worker(dict(os.environ), tmp_path / "worker.log")
    try:
        stats = watcher.run(until_idle=True)
        assert (stats.announced, stats.duplicates, stats.errors) == (3, 0, 0), stats
        runs = wait_for_runs(prefect_api, dep["id"], 3, timeout=600, name_prefix="s3 ")
        assert len(runs) == 3
        by_sample = {r["parameters"]["inputs"][0].split("/")[-1].split("_")[0]: r
                     for r in runs}
        assert set(by_sample) == set(uploads)
        for sample, run in by_sample.items():
            assert run["parameters"]["inputs"] == [
                f"s3://incoming/run 7/{sample}_R1.fastq.gz",
                f"s3://incoming/run 7/{sample}_R2.fastq.gz"]
            keys = [o["Key"] for o in s3.list_objects_v2(
                Bucket="results", Prefix=f"hf/runs/{run['id']}/")["Contents"]]
            assert any("/embed/" in k for k in keys) and any(k.endswith(".html") for k in keys)
            lineage = s3.get_object(Bucket="results", Key=f"hf/lineage/runs/{run['id']}.jsonl")
            upstream = {u["uri"] for line in lineage["Body"].read().decode().splitlines()
                        for u in json.loads(line)["upstream"]}
            assert f"s3://incoming/run 7/{sample}_R1.fastq.gz" in upstream

        # The same notifications again: every object version is known, no event, no run.
        for body in bodies:
            sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        again = watcher.run(until_idle=True)
        assert (again.announced, again.duplicates) == (0, 6), again

        # A new version of one object (new ETag) is a new announcement: one more run, and
        # only one; it also shows the replay above started nothing (events keep their order).
        r1 = uploads["s0"][0]
        newer = tmp_path / "s0_R1.fastq.gz"
        newer.write_bytes(gzip.compress(gzip.decompress(r1.read_bytes())[:-1] + b"\n"))
        s3.upload_file(str(newer), "incoming", "run 7/s0_R1.fastq.gz")
        assert watcher.run(until_idle=True).announced == 1
        runs = wait_for_runs(prefect_api, dep["id"], 4, timeout=300, name_prefix="s3 ")
        assert len(runs) == 4
    finally:
        watcher.close()
        stop_process(worker, timeout=30)
        _api("PATCH", f"{prefect_api}/deployments/{dep['id']}", {"parameters": dep["parameters"]})


def test_fifty_uploads_at_once_make_fifty_runs_none_twice(
    pg_server: ServerInfo, deployed: dict[str, dict], moto_endpoint: str, tmp_path: Path
) -> None:
    """50 pairs uploaded at once → 50 runs created by the trigger, each pair exactly once,
    queued on the pool (no worker here: bench/watch_load.py runs them all and measures);
    every notification sent again → no new run (one new pair after it → exactly 51); the
    server on PostgreSQL answered no 503."""
    import boto3

    from helixflow.app.watch import WatchConfig, open_watcher
    from helixflow.app.watch_sources import connect_bucket_to_queue

    prefect_api = pg_server.api_url
    busy_before = retryable_errors(pg_server)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="burst")
    queue_url = connect_bucket_to_queue("burst", "burst", s3=s3, sqs=sqs)
    dep = deployed["genomics-pipeline"]

    def burst_runs() -> list[dict]:
        runs = _post(prefect_api, "/flow_runs/filter", {
            "flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "limit": 200})
        return [r for r in runs if r["parameters"].get("inputs", [""])[0].startswith(
            "s3://burst/")]

    payload = gzip.compress(b"@r1\nACGT\n+\nIIII\n")
    keys = [f"b/p{i:02d}_R{m}.fq.gz" for i in range(50) for m in (1, 2)]

    def put(key: str) -> None:  # distinct bytes per pair: distinct ETags
        s3.put_object(Bucket="burst", Key=key, Body=payload + key[:6].encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))
    watcher = open_watcher(WatchConfig(queue_url=queue_url, wait_time=1,
                                       ledger=tmp_path / "ledger.sqlite"))
    try:
        stats = watcher.run(until_idle=True)
        assert (stats.announced, stats.errors) == (50, 0), stats
        deadline = time.monotonic() + 120
        while len(runs := burst_runs()) < 50 and time.monotonic() < deadline:
            time.sleep(2)
        inputs = [tuple(r["parameters"]["inputs"]) for r in runs]
        assert len(inputs) == 50 and len(set(inputs)) == 50
        assert set(inputs) == {(f"s3://burst/b/p{i:02d}_R1.fq.gz",
                                f"s3://burst/b/p{i:02d}_R2.fq.gz") for i in range(50)}
        assert all(r["state_type"] == "SCHEDULED" for r in runs)  # queued for a worker

        for key in keys:  # every object announced again, as a replayed queue would
            s3.put_object(Bucket="burst", Key=key, Body=payload + key[:6].encode())
        again = watcher.run(until_idle=True)
        assert (again.announced, again.duplicates) == (0, 100), again
        # one new pair after the replay: once its run exists, a run the replay had wrongly
        # triggered would exist too (the trigger takes events in order); no fixed wait
        for key in ("b/p50_R1.fq.gz", "b/p50_R2.fq.gz"):
            put(key)
        assert watcher.run(until_idle=True).announced == 1
        deadline = time.monotonic() + 120
        while len(runs := burst_runs()) < 51 and time.monotonic() < deadline:
            time.sleep(2)
        assert len(runs) == 51, len(runs)
        assert retryable_errors(pg_server) == busy_before
    finally:
        watcher.close()
        for run in burst_runs():  # not for the other tests' workers to pick up
            _api("DELETE", f"{prefect_api}/flow_runs/{run['id']}")
