"""S3 faults, injected by a proxy in front of the moto server (tests/faultproxy.py).

Transient faults (503 SlowDown, connection resets) are retried and leave the outputs
byte-identical to an undisturbed run; persistent ones (access denied, a missing bucket,
a missing input object) end the run with one clear line naming the URI, and nothing is
published in the store.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Any

import boto3
import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.app.launch import launch_pipeline
from tests.conftest import REPO
from tests.faultproxy import FaultPlan, FaultProxy

pytestmark = pytest.mark.integration

SPEC = DemoSpec(n_pairs=2000, n_genomes=2, genome_length=20_000)
INPUTS = ["s3://raw/incoming/s1_R1.fastq.gz", "s3://raw/incoming/s1_R2.fastq.gz"]
RUN = {"shard_size": 1500, "embed_methods": ["kmer"], "simulate": False}

# Artifacts whose bytes name the run itself (its id, its time), so they differ between any
# two runs: the HTML report and the manifest. Every other artifact must be equal.
RUN_SPECIFIC = ("report/", "manifest.json", "multiqc/multiqc_report.html")


@pytest.fixture(scope="module")
def s3(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A client straight to moto (no faults), with the demo reads uploaded to s3://raw."""
    demo = write_demo(tmp_path_factory.mktemp("demo"), SPEC)
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket="raw")
    client.put_object(Bucket="raw", Key="private/kept-out.txt", Body=b"x")
    for name, path in (("s1_R1.fastq.gz", demo.r1), ("s1_R2.fastq.gz", demo.r2)):
        client.upload_file(str(path), "raw", f"incoming/{name}")
    return client


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def run_artifacts(s3: Any, bucket: str, run_id: str) -> dict[str, str]:
    """sha256 of every artifact in a run's folder, by its path inside the run."""
    prefix = f"hf/runs/{run_id}/"
    return {key.removeprefix(prefix): hashlib.sha256(
                s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()
            for key in keys(s3, bucket, prefix)}


def prefect_retries(flow_run_id: str) -> dict[str, int]:
    """Task runs of the flow run that took more than one attempt: name → attempts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.run_count for run in runs if run.run_count > 1}


def test_transient_faults_are_retried_and_outputs_are_identical(
    prefect_api: str, moto_endpoint: str, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.create_bucket(Bucket="clean")
    s3.create_bucket(Bucket="faulty")
    clean = launch_pipeline(INPUTS, store="s3://clean/hf", **RUN)
    assert clean.error is None, clean.error

    plan = FaultPlan(slowdown_every=7, reset_every=11, max_faults=400)
    with FaultProxy(moto_endpoint, plan) as proxy:
        # The store, the inputs and Prefect's result storage all go through the proxy (the
        # endpoint reaches Ray workers through the runtime env).
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        faulty = launch_pipeline(INPUTS, store="s3://faulty/hf", **RUN)
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    assert faulty.error is None, faulty.error

    slowdowns, resets = proxy.count("slowdown"), proxy.count("reset")
    assert slowdowns > 0 and resets > 0, "faults were injected"
    assert {s.path.split("/")[1].split("?")[0] for s in proxy.seen} >= {"raw", "faulty"}

    retried_tasks = prefect_retries(faulty.flow_run_id)
    repeats = sum(1 for s in proxy.seen if s.invocation) - len(
        {(s.invocation, s.attempt) for s in proxy.seen if s.invocation})
    print(f"\nS3 faults: {len(proxy.seen)} requests through the proxy, {slowdowns} answered "
          f"503 SlowDown, {resets} reset; retried by botocore: {proxy.botocore_retries()} "
          f"requests (attempt > 1); same attempt resent by the transport: {repeats}; "
          f"invocations botocore gave up on (retried above it, by s3fs or a task): "
          f"{proxy.given_up_by_botocore()}; Prefect task retries: {retried_tasks}")
    # Every fault was retried by some layer.
    assert proxy.botocore_retries() + repeats + proxy.given_up_by_botocore() >= \
        slowdowns + resets

    want = run_artifacts(s3, "clean", clean.summary.run_id)
    got = run_artifacts(s3, "faulty", faulty.summary.run_id)
    assert set(got) == set(want)
    compared = {k for k in want if not k.startswith(RUN_SPECIFIC)}
    assert len(compared) >= 8, sorted(want)  # ingest, qc, dedup, correct, ubam, kmer shards…
    differ = {k for k in compared if got[k] != want[k]}
    assert not differ, f"bytes differ from the undisturbed run: {sorted(differ)}"
    print(f"all {len(compared)} artifacts byte-identical to the undisturbed run")


def cli(args: list[str], endpoint: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "helixflow", "run", *args],
                          capture_output=True, text=True, env=env, timeout=600, check=False,
                          cwd=REPO)


@pytest.mark.parametrize(("case", "store", "inputs", "message"), [
    ("store bucket denied", "s3://locked/hf", INPUTS, "error: s3://locked/hf: access denied"),
    ("store bucket missing", "s3://nowhere/hf", INPUTS, "error: s3://nowhere/hf: no such bucket"),
    ("input object missing", "s3://results-missing/hf",
     [INPUTS[0], "s3://raw/incoming/gone_R2.fastq.gz"],
     "error: s3://raw/incoming/gone_R2.fastq.gz: no such object"),
    ("input denied", "s3://results-denied/hf",
     ["s3://raw/private/s1_R1.fastq.gz", "s3://raw/private/s1_R2.fastq.gz"],
     "error: s3://raw/private/s1_R1.fastq.gz: access denied"),
    ("store writes denied", "s3://results-readonly/hf", INPUTS,
     "error: s3://results-readonly/hf/objects/"),
])
def test_persistent_faults_fail_once_naming_the_uri_and_publish_nothing(
    prefect_api: str, moto_endpoint: str, s3: Any, case: str, store: str, inputs: list[str],
    message: str,
) -> None:
    bucket = store.removeprefix("s3://").split("/")[0]
    if bucket != "nowhere":
        s3.create_bucket(Bucket=bucket)

    def deny(method: str, path: str) -> bool:
        if path.startswith(("/locked", "/raw/private/")):
            return True  # a policy denying the whole bucket, or a prefix of the inputs
        # a read-only store: artifacts may not be written (Prefect's results may)
        return method in ("PUT", "POST") and path.startswith(
            ("/results-readonly/hf/objects/", "/results-readonly/hf/runs/"))

    with FaultProxy(moto_endpoint, FaultPlan(deny=deny)) as proxy:
        done = cli([*inputs, "--store", store, "--shard-size", "1500", "--embed", "kmer",
                    "--no-simulate"], proxy.url)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert message in done.stderr, output
    if case == "store writes denied":
        assert "access denied" in done.stderr and proxy.count("denied") >= 1, output
    assert "Traceback" not in output, output
    assert sum(1 for line in done.stderr.splitlines() if line.startswith("error:")) == 1, output
    if bucket != "nowhere":
        published = [k for k in keys(s3, bucket) if k.startswith(("hf/runs/", "hf/objects/"))]
        assert published == [], published
