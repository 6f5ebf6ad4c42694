"""The pipeline reading from and publishing to S3, served over HTTP by a moto server."""

from __future__ import annotations

import hashlib

import boto3
import pyarrow.parquet as pq
import pytest
from prefect_aws import AwsClientParameters, AwsCredentials

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.app.launch import launch_pipeline
from helixflow.blocks.store import HelixflowStore
from helixflow.lineage import LineageGraph, load_records

pytestmark = pytest.mark.integration


def test_s3_inputs_and_store_via_block(prefect_api: str, moto_endpoint: str, tmp_path) -> None:
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=2000, n_genomes=2, genome_length=20_000))
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="results")
    for name, path in (("s1_R1.fastq.gz", demo.r1), ("s1_R2.fastq.gz", demo.r2)):
        s3.upload_file(str(path), "raw", f"incoming/{name}")

    # The endpoint and credentials come from a saved block (secret as SecretStr).
    HelixflowStore(
        url="s3://results/hf",
        credentials=AwsCredentials(
            aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint),
        ),
    ).save("test-s3-store", overwrite=True)

    inputs = ["s3://raw/incoming/s1_R1.fastq.gz", "s3://raw/incoming/s1_R2.fastq.gz"]
    launched = launch_pipeline(inputs, store_block="test-s3-store", shard_size=1500,
                               embed_methods=["kmer"], simulate=False)
    assert launched.error is None, launched.error
    run_id = launched.summary.run_id

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="results", Prefix="hf/")["Contents"]]
    shard_keys = sorted(k for k in keys if k.startswith(f"hf/runs/{run_id}/ingest/"))
    assert len(shard_keys) == 2  # 2000 pairs / 1500 per shard
    total = 0
    for key in shard_keys:
        body = s3.get_object(Bucket="results", Key=key)["Body"].read()
        digest = hashlib.sha256(body).hexdigest()
        cas = f"hf/objects/{digest[:2]}/{digest}"
        assert any(k.startswith(cas) for k in keys)
        local = tmp_path / key.rsplit("/", 1)[-1]
        local.write_bytes(body)
        total += pq.read_metadata(local).num_rows
    assert total == 4000
    assert f"hf/lineage/runs/{run_id}.jsonl" in keys
    assert any(k.startswith("hf/prefect-results/") for k in keys)

    store = HelixflowStore.load("test-s3-store").get_store()
    graph = LineageGraph(load_records(store))
    record = graph.resolve(f"s3://results/{shard_keys[0]}")
    etags = {o["Key"]: o["ETag"].strip('"')
             for o in s3.list_objects_v2(Bucket="raw")["Contents"]}
    assert {u.uri: u.etag for u in record.upstream} == {
        "s3://raw/incoming/s1_R1.fastq.gz": etags["incoming/s1_R1.fastq.gz"],
        "s3://raw/incoming/s1_R2.fastq.gz": etags["incoming/s1_R2.fastq.gz"],
    }

    again = launch_pipeline(inputs, store_block="test-s3-store", shard_size=1500,
                               embed_methods=["kmer"], simulate=False)
    assert again.error is None
    executed = {t for t, c in again.summary.by_task.items() if c["executed"]}
    assert executed == {"write-qc-report"}, again.summary.by_task
    assert again.summary.by_task["ingest-fastq"] == {"executed": 0, "cached": 1}
