"""No secret anywhere helixflow writes: an S3-store pipeline run (moto server) with a
recognisable fake AWS secret key, and an SSH-mode Slurm run (real sshd, real Slurm) with
the private key given as a block secret; then everything is searched for them — the store
(every object, lineage records included), the Slurm scratch and staging trees, the
Prefect server's logs, artifacts, events, flow-run and task-run records (via the API) and
its log file and database, HELIXFLOW_HOME, Ray's session logs and the Ray runtime env,
and the console."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from prefect_aws import AwsClientParameters, AwsCredentials

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.app.launch import launch_pipeline
from helixflow.blocks.store import HelixflowStore
from helixflow.flows.slurm import run_slurm_jobs
from helixflow.lineage import load_records
from helixflow.slurm import JobSpec
from helixflow.store import Store
from tests.flows import test_slurm_ssh
from tests.flows.test_slurm_ssh import SshServer, key_fragments, ssh_cluster

pytestmark = pytest.mark.integration

# The real sshd in front of the real Slurm cluster, as test_slurm_ssh starts them.
sshd = test_slurm_ssh.sshd
slurm_over_ssh = test_slurm_ssh.slurm_over_ssh


def _files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def _api_records(api: str, path: str, body: dict, page: int = 200) -> list[dict]:
    """Every record a Prefect `POST …/filter` endpoint returns, page by page."""
    out: list[dict] = []
    while True:
        resp = httpx.post(f"{api}/{path}", json={**body, "limit": page, "offset": len(out)},
                          timeout=60)
        resp.raise_for_status()
        batch = resp.json()
        out.extend(batch)
        if len(batch) < page:
            return out


def _events(api: str, flow_run_ids: list[str]) -> list[dict]:
    """Every event related to the flow runs (asset materialisations, state changes)."""
    resources = [f"prefect.flow-run.{i}" for i in flow_run_ids]
    resp = httpx.post(f"{api}/events/filter", json={
        "filter": {"any_resource": {"id": resources}}, "limit": 50}, timeout=60)
    resp.raise_for_status()
    page = resp.json()
    events = list(page["events"])
    while page.get("next_page"):
        resp = httpx.get(page["next_page"], timeout=60)
        resp.raise_for_status()
        page = resp.json()
        events.extend(page["events"])
    return events


def test_no_secret_in_logs_artifacts_lineage_parameters_or_ray(
    prefect_api: str, helixflow_home: Path, moto_endpoint: str, slurm_over_ssh: SshServer,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    aws_secret = f"hfFakeAwsSecret{uuid.uuid4().hex}"
    ssh_key = slurm_over_ssh.private_key
    secrets = [aws_secret, *key_fragments(ssh_key)]
    # Ray's session (its logs) in a folder of this test; short, for Ray's socket paths
    ray_tmp = Path(tempfile.mkdtemp(prefix="hfray-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    # The secret is the one in use: in the block and in this process's AWS environment.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)

    # 1. The pipeline, reading from and publishing to S3, credentials from a block.
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=1000, n_genomes=2,
                                                  genome_length=20_000))
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    raw, results = f"raw-{uuid.uuid4().hex[:8]}", f"results-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=raw)
    s3.create_bucket(Bucket=results)
    inputs = []
    for name, path in (("s 1_R1.fastq.gz", demo.r1), ("s 1_R2.fastq.gz", demo.r2)):
        s3.upload_file(str(path), raw, f"in/{name}")
        inputs.append(f"s3://{raw}/in/{name}")
    block = f"secret-store-{uuid.uuid4().hex[:8]}"
    HelixflowStore(
        url=f"s3://{results}/hf",
        credentials=AwsCredentials(
            aws_access_key_id="AKIAHELIXFLOWTEST", aws_secret_access_key=aws_secret,
            region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint),
        ),
    ).save(block, overwrite=True)
    launched = launch_pipeline(inputs, store_block=block, shard_size=600,
                               embed_methods=["kmer"], simulate=False)
    assert launched.error is None, launched.error
    store = HelixflowStore.load(block).get_store()
    assert store.storage_options["secret"] == aws_secret  # the secret was really used
    records = load_records(store)
    assert records and any(r.stage == "ingest" for r in records)

    # 2. A Slurm job over SSH, the private key given as the block's SecretStr.
    cluster = ssh_cluster(slurm_over_ssh, tmp_path, secret=True, keep_scratch=True)
    slurm_store = Store(str(tmp_path / "slurm-store"))
    state = run_slurm_jobs([JobSpec(name="env", commands=[["bash", "-c", "env > env.txt"]],
                                    outputs=["env.txt"])],
                           cluster=cluster, store=slurm_store.url, run_id="r-secret",
                           stage="sim", return_state=True)
    [job] = state.result()
    assert job.state == "COMPLETED"
    flow_runs = [launched.flow_run_id, str(state.state_details.flow_run_id)]

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)

    texts: dict[str, str] = {}
    # the S3 store: every object (shards, CAS, lineage, manifests, Prefect results)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=results):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=results, Key=obj["Key"])["Body"].read()
            texts[f"s3://{results}/{obj['Key']}"] = body.decode("latin-1")
    texts["lineage records"] = "\n".join(r.model_dump_json() for r in records)
    # local trees: the Slurm store, scratch and staging; HELIXFLOW_HOME (server log,
    # database, hash cache); Ray's session folders
    for root in (tmp_path / "slurm-store", tmp_path / "remote-scratch", tmp_path / "staging",
                 helixflow_home, ray_tmp):
        for path in _files(root):
            texts[str(path)] = path.read_bytes().decode("latin-1")
    ray_logs = [p for p in texts if p.startswith(str(ray_tmp)) and "/logs/" in p]
    assert ray_logs, f"no Ray session logs under {ray_tmp}"
    # the server, through its API
    run_filter = {"flow_runs": {"id": {"any_": flow_runs}}}
    texts["logs"] = json.dumps(_api_records(prefect_api, "logs/filter", {
        "logs": {"flow_run_id": {"any_": flow_runs}}}))
    texts["flow runs"] = json.dumps(_api_records(prefect_api, "flow_runs/filter", {}))
    texts["task runs"] = json.dumps(_api_records(prefect_api, "task_runs/filter", run_filter))
    texts["artifacts"] = json.dumps(_api_records(prefect_api, "artifacts/filter", {}))
    texts["events"] = json.dumps(_events(prefect_api, flow_runs))
    assert "submitted 1 job(s)" in texts["logs"] and "ingest" in texts["logs"]
    assert launched.flow_run_id in texts["flow runs"] and '"parameters"' in texts["flow runs"]
    # the Ray runtime env a run hands to its workers
    from helixflow.runner import build_task_runner

    texts["ray runtime env"] = json.dumps(build_task_runner(prefect_api).init_kwargs,
                                          default=str)
    captured = capfd.readouterr()
    texts["console"] = captured.out + captured.err

    leaks = sorted({where for where, text in texts.items() for s in secrets if s in text})
    assert not leaks, f"a secret appears in: {leaks}"
    # the job's environment (the job ran with neither secret)
    env_txt = slurm_store.read_bytes(job.outputs["env.txt"].uri).decode()
    assert "PATH=" in env_txt and not any(s in env_txt for s in secrets)
    print(f"searched {len(texts)} sources ({sum(map(len, texts.values())) >> 20} MiB) for "
          f"{len(secrets)} secret fragments: none found")
