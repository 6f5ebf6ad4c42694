"""Ray inside a Slurm allocation: the job script, and a real run on the local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.lineage import load_records
from helixflow.ray_slurm import RaySlurmSpec, job_script, job_state, sbatch_args
from helixflow.store import Store
from tests.conftest import REPO, missing, require_tool


def test_the_job_script_quotes_what_it_is_given(tmp_path: Path) -> None:
    odd = tmp_path / "a dir; $(touch pwned) 'q'"
    script = job_script(RaySlurmSpec(nodes=3), odd)
    assert f"DIR={__import__('shlex').quote(str(odd))}" in script
    path = tmp_path / "s.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert "srun --nodes=$((SLURM_JOB_NUM_NODES - 1))" in script  # workers join the head
    assert "ray stop" not in script.replace('"$RAY" stop', "")  # never every Ray on the node
    single = job_script(RaySlurmSpec(nodes=1), odd)
    assert "srun" not in single
    args = sbatch_args(RaySlurmSpec(nodes=2, cpus_per_node=4, mem_mb=9000, partition="p q"),
                       odd, odd / "s.sh")
    assert args[:2] == ["sbatch", "--parsable"] and "--nodes=2" in args
    assert "--cpus-per-task=4" in args and "--mem=9000" in args and "--partition=p q" in args


@pytest.mark.integration
def test_a_run_on_ray_in_a_slurm_allocation_leaves_no_job(tmp_path: Path) -> None:
    """`helixflow run --ray-on-slurm 1`: every task ran on the allocation's Ray node, and
    afterwards the allocation is gone from squeue."""
    require_tool("sbatch")
    if subprocess.run(["sinfo", "--noheader", "--states=idle,mixed,allocated"],
                      capture_output=True, text=True).stdout.strip() == "":
        missing("a running Slurm cluster (make slurm)")
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=2000, n_genomes=2,
                                                  genome_length=10_000))
    store = tmp_path / "store"
    scratch = tmp_path / "home" / "slurm-scratch"  # the SlurmCluster block's default
    env = {**os.environ, "PYTHONPATH": str(REPO), "HELIXFLOW_HOME": str(tmp_path / "home")}
    env.pop("HELIXFLOW_RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "helixflow", "run", str(demo.r1), str(demo.r2),
         "--store", str(store), "--ray-on-slurm", "1", "--shard-size", "1000",
         "--embed", "kmer", "--no-simulate"],
        env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (job_dir,) = scratch.glob("ray-*")
    (out,) = job_dir.glob("slurm-*.out")
    job_id = out.stem.removeprefix("slurm-")
    head = (job_dir / "head-node-id").read_text().strip()
    records = load_records(Store(str(store)))
    ran_on = {r.executed_on for r in records if r.executed_on and not r.cached}
    assert ran_on == {f"ray:{head}"}, (ran_on, head)
    assert len([r for r in records if r.task_name == "filter-reads"]) == 2  # 2 shards
    assert job_state(job_id) is None  # cancelled and gone
    mine = subprocess.run(["squeue", "--noheader", "--name=helixflow-ray", "--format=%i"],
                          capture_output=True, text=True).stdout.split()
    assert job_id not in mine
    # the job stopped its own Ray: no process names its temporary folder any more
    left = subprocess.run(["pgrep", "-f", f"hfray-{job_id}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout
