"""Names as users write them, end to end against the real services: input files, S3 keys,
store roots and Slurm scratch folders named with spaces, `;`, quotes, `$()`, `+`, `%`
(a literal `%20`) and non-ASCII letters work, and nothing is ever executed from a name.

The canary: a folder is named so that its full path contains `$(touch "<tmp>/pwned")`;
any shell that sees the path unquoted creates that file.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.blocks.slurm import SlurmCluster
from helixflow.lineage import LineageGraph, load_records
from helixflow.samples import Sample, plan_samples
from helixflow.slurm import JobSpec
from helixflow.slurm_jobs import run_jobs
from helixflow.store import Store, file_uri, identify, local_path
from helixflow.tasks.assemble import AssemblyParams, assemble
from helixflow.tasks.fastq import iter_read_batches
from helixflow.tasks.ingest import write_sample_shards
from tests.conftest import REPO, require_tool

pytestmark = pytest.mark.integration

STEM = "my sample;'q\"+%20é"  # what the FASTQ files are called, before _R1/_R2


def canary_dir(tmp_path: Path, leaf: str) -> tuple[Path, Path]:
    """`<tmp>/<leaf> $(touch "<tmp>/pwned")`-like folder (its path spans the command's
    slashes) and the canary file a shell would create from it."""
    base = tmp_path / f'{leaf} $(touch "'
    folder = base.joinpath(*tmp_path.parts[1:], 'pwned")')
    assert f'$(touch "{tmp_path}/pwned")' in str(folder)
    return folder, tmp_path / "pwned"


def _reads(path: Path) -> int:
    with gzip.open(path, "rt") as handle:
        return sum(1 for _ in handle) // 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return write_demo(tmp_path_factory.mktemp("demo"),
                      DemoSpec(n_pairs=1500, n_genomes=2, genome_length=20_000))


def test_slurm_job_in_a_nasty_scratch_runs_and_executes_nothing_from_names(
    slurm_cluster: str, tmp_path: Path
) -> None:
    scratch, canary = canary_dir(tmp_path, "scr atch;'q'%20é")
    store_root, _ = canary_dir(tmp_path, "st ore;%20")
    store = Store(str(store_root))
    src = tmp_path / "src.txt"
    src.write_text("from the store\n")
    ref = store.publish(src, run_id="r-names", stage="inputs", name="in put;$(id).txt",
                        move=False).ref()
    body = 'cat -- "$1" > "$2"; printf "%s\\n" "$3" "$PWD" >> "$2"; echo "to stderr $3" >&2'
    # Two similar jobs (one array: %a in --output) and one with other resources (alone).
    jobs = [
        JobSpec(name=f"job-{i}", commands=[["bash", "-c", body, "sh", "in put;$(id).txt",
                                             "out put;'$(id)'.txt", f"arg {i}; $(touch pwned)"]],
                inputs={"in put;$(id).txt": ref}, outputs=["out put;'$(id)'.txt"],
                cpus=c)
        for i, c in ((0, 1), (1, 1), (2, 2))
    ]
    cluster = SlurmCluster(
        mode="local-cli", scratch_dir=str(scratch), poll_interval=0.2, poll_max_interval=1.0,
        sentinel_timeout=5.0, default_mem_mb=100, default_time_limit=5, keep_scratch=True)
    results = run_jobs(jobs, cluster, store, "r-names")

    assert [r.state for r in results] == ["COMPLETED"] * 3
    assert len({r.job_id.split("_")[0] for r in results[:2]}) == 1, "jobs 0 and 1: one array"
    for i, result in enumerate(results):
        job_dir = Path(result.job_dir)
        assert str(job_dir).startswith(str(scratch) + "/")
        art = result.outputs["out put;'$(id)'.txt"]
        assert local_path(art.uri) == store_root / "runs" / "r-names" / "slurm" / f"job-{i}" / \
            "out put;'$(id)'.txt"
        lines = store.read_bytes(art.uri).decode().splitlines()
        # the input staged under its name, every argument verbatim, run in the job folder
        assert lines == ["from the store", f"arg {i}; $(touch pwned)", str(job_dir)]
        # Slurm wrote stdout/stderr where --output/--error said (quoted, % kept literal)
        assert (job_dir / "slurm.err").read_text() == f"to stderr arg {i}; $(touch pwned)\n"
        assert (job_dir / ".exitcode").read_text() == "0\n"
    assert not canary.exists(), "a name was executed by a shell"
    assert not list(tmp_path.rglob("pwned")), "a name was executed by a shell"


def test_megahit_under_a_nasty_folder_assembles_and_executes_nothing(demo,
                                                                    tmp_path: Path) -> None:
    """MEGAHIT pastes its paths into shell commands: it runs in a plain folder instead."""
    require_tool("megahit")
    work, canary = canary_dir(tmp_path, "asm;'q'")
    batches = list(iter_read_batches(str(demo.r1), str(demo.r2), batch_size=1000))
    result = assemble(batches, work, AssemblyParams(min_contig_len=300, threads=2))
    assert result.contigs == work / "contigs.fa" and result.stats["contigs"] >= 1
    assert result.reads["pairs"] > 1400  # of 1500 (pairs with an empty mate are not)
    assert not canary.exists() and not list(tmp_path.rglob("pwned")), \
        "a name was executed by a shell"


def test_s3_keys_with_nasty_names_identify_and_ingest(moto_endpoint: str, demo,
                                                      tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"names-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    keys = [f"in $(touch x);'q'/{STEM}_R{i}.fastq.gz" for i in (1, 2)]
    for key, path in zip(keys, (demo.r1, demo.r2), strict=True):
        s3.upload_file(str(path), bucket, key)
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]} == set(keys)
    uris = [f"s3://{bucket}/{k}" for k in keys]
    [sample] = plan_samples(uris)
    assert sample.layout == "paired" and sample.name == "my_sample_q_+_20é"
    r1, r2 = (identify(u) for u in uris)
    assert r1.uri == uris[0] and r1.etag and r1.size == demo.r1.stat().st_size
    out = tmp_path / "shards"
    out.mkdir()
    shards, stats, _first = write_sample_shards(sample, r1, r2, out, shard_size=1000,
                                           storage_options={"endpoint_url": moto_endpoint})
    rows = sum(pq.read_metadata(p).num_rows for p, _ in shards)
    assert sum(m.reads for m in stats.mates.values()) == rows
    assert rows == 2 * _reads(demo.r1) == 3000
    # the store on S3 under a nasty prefix: keys raw, as S3 keeps them
    store = Store(f"s3://{bucket}/st ore;%20é", storage_options={"endpoint_url": moto_endpoint})
    art = store.publish(shards[0][0], run_id="r1", stage="ingest", move=False)
    assert f"st ore;%20é/runs/r1/ingest/{shards[0][0].name}" in {
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert store.read_bytes(art.uri) == shards[0][0].read_bytes()


def test_cli_run_on_files_named_as_people_name_them(
    prefect_api: str, slurm_cluster: str, demo, tmp_path: Path
) -> None:
    """`helixflow run "my sample_R1…" "my sample_R2…"`, reference, store and Slurm scratch
    all under nasty names: QC → BAM (samtools) → VCF → MD through Slurm (gmx) completes."""
    require_tool("gmx")
    require_tool("samtools")
    inputs_dir, canary = canary_dir(tmp_path, "in;'q'")
    inputs_dir.mkdir(parents=True)
    r1, r2 = (inputs_dir / f"{STEM}_R{i}.fastq.gz" for i in (1, 2))
    os.link(demo.r1, r1)
    os.link(demo.r2, r2)
    reference = inputs_dir / "ref genome;$(id)+%20.fa"
    os.link(demo.genomes, reference)
    store_root, _ = canary_dir(tmp_path, "st ore;%20é")
    scratch, _ = canary_dir(tmp_path, "scr atch;'q'")
    block = f"test-names-{uuid.uuid4().hex[:8]}"
    SlurmCluster(mode="local-cli", scratch_dir=str(scratch), poll_interval=0.5,
                 poll_max_interval=2.0, default_time_limit=10).save(block)

    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "200",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "helixflow", "run", str(r1), str(r2),
         "--store", str(store_root), "--reference", str(reference), "--embed", "kmer",
         "--max-representatives", "1", "--md-steps", "100", "--cluster-block", block],
        capture_output=True, text=True, timeout=1500, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no such file" not in proc.stdout + proc.stderr

    store = Store(str(store_root))
    records = load_records(store)
    [run_dir] = (store_root / "runs").iterdir()
    sample = Sample(name="my_sample_q_+_20é", r1=str(r1))  # the safe name of the stem
    shards = sorted((run_dir / "ingest").glob(f"{sample.name}.reads.*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in shards) == 3000
    # lineage keeps the exact inputs (their file URIs decode to the paths given)
    graph = LineageGraph(records)
    ingest = graph.resolve(file_uri(shards[0]))
    assert {local_path(u.uri) for u in ingest.upstream} == {r1, r2}
    # the shell-facing stages: a valid BAM (samtools), a VCF, and an MD trajectory via Slurm
    [bam] = (run_dir / "align").glob("*.bam")
    assert bam.name == f"{sample.name}.bam"
    check = subprocess.run(["samtools", "quickcheck", "-v", str(bam)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert list((run_dir / "variants").glob("*.vcf.gz"))
    trajectories = list((run_dir / "md").glob("*.nc"))
    assert len(trajectories) == 1
    jobs = [r for r in records if r.task_name == "flows.slurm"]
    assert jobs and all(r.metadata.get("slurm_state") == "COMPLETED" for r in jobs)
    assert not canary.exists() and not list(tmp_path.rglob("pwned")), \
        "a name was executed by a shell"
