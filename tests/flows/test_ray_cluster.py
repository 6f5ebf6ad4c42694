"""The pipeline on an existing two-node Ray cluster (two `ray start` on this machine).

Shows: task runs executed on both nodes, all reported to the one Prefect server, and the
project's code shipped to the workers through the runtime env (py_modules).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helixflow.app.demo import DemoSpec, write_demo
from helixflow.lineage import load_records
from helixflow.store import Store
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _bare_python(root: Path) -> Path:
    """A Python that sees the installed stack but not helixflow: a venv whose only link to
    ours is a .pth line naming our site-packages (so our editable-install finder, itself a
    .pth hook, never runs there)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next((root / "lib").glob("python3*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    (site / "helixflow-stack.pth").write_text(ours + "\n")
    python = root / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import ray, prefect; import tasks"],
                           capture_output=True, text=True, cwd=root)
    assert "No module named 'tasks'" in probe.stderr, probe.stderr
    return python


def _ray(python: Path, *args: str, env: dict[str, str], cwd: Path) -> None:
    code = "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
    proc = subprocess.run([str(python), "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=180, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Head + worker node started with `ray start`, from a Python without helixflow."""
    root = tmp_path_factory.mktemp("ray-bare")
    python = _bare_python(root / "venv")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("PYTHONPATH", None)
    for var in ("PREFECT_API_URL", "HELIXFLOW_HOME"):  # workers learn these from the job
        env.pop(var, None)
    address = f"127.0.0.1:{port}"
    _ray(python, "start", "--head", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", env=env, cwd=root)
    try:
        _ray(python, "start", f"--address={address}", "--num-cpus=1", "--disable-usage-stats",
             env=env, cwd=root)
        yield address
    finally:
        _ray(python, "stop", "--force", env=env, cwd=root)


def _driver_env(prefect_api: str) -> dict[str, str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PREFECT_API_URL": prefect_api,
           "COLUMNS": "200"}
    env.pop("PYTHONPATH", None)
    return env


def test_pipeline_runs_on_both_nodes(
    two_node_cluster: str, prefect_api: str, tmp_path: Path
) -> None:
    inputs: list[str] = []
    for seed, name in ((11, "alpha"), (12, "beta"), (13, "gamma"), (14, "delta")):
        demo = write_demo(tmp_path / f"demo-{name}", DemoSpec(seed=seed, n_pairs=4000,
                                                               n_genomes=2, genome_length=20_000))
        for mate, src in (("R1", demo.r1), ("R2", demo.r2)):
            link = tmp_path / f"{name}_{mate}.fastq.gz"
            shutil.copyfile(src, link)
            inputs.append(str(link))
    store_dir = tmp_path / "store"
    # The driver runs from a neutral folder: Ray forwards the driver's working directory
    # to workers' sys.path, which would otherwise hand them the checkout.
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("helixflow")), "run", *inputs, "--store",
         str(store_dir), "--ray-address", two_node_cluster, "--embed", "kmer", "--no-simulate"],
        env=_driver_env(prefect_api), cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "0 from cache" in proc.stdout, proc.stdout
    run_id = proc.stdout.split("run folder: ")[1].split()[0].rstrip("/").rsplit("/", 1)[-1]
    flow_run_id = proc.stdout.split("/runs/flow-run/")[1].split()[0]

    records = [r for r in load_records(Store(str(store_dir)))
               if r.run_id == run_id and r.stage == "ingest"]
    nodes = {r.executed_on for r in records}
    assert len(records) == 4 and all(n and n.startswith("ray:") for n in nodes)
    assert len(nodes) == 2, f"ingest ran on {nodes}; expected both Ray nodes"

    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    runs = httpx.post(f"{prefect_api}/task_runs/filter", json=body, timeout=30).json()
    ingest_runs = [r for r in runs if r["name"].startswith("ingest-")]
    assert len(ingest_runs) == 4 and all(r["state_type"] == "COMPLETED" for r in ingest_runs)


def test_project_code_is_shipped_to_workers(
    two_node_cluster: str, prefect_api: str, tmp_path: Path
) -> None:
    script = textwrap.dedent(f"""
        import json, os, ray
        from helixflow.runner import runtime_env
        ray.init(address={two_node_cluster!r},
                 runtime_env=runtime_env({prefect_api!r}, ship_code=True))

        @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
        def where():
            import helixflow.tasks.ingest
            return [ray.get_runtime_context().get_node_id(), helixflow.tasks.ingest.__file__,
                    os.environ.get("PREFECT_API_URL", "")]

        print(json.dumps(ray.get([where.remote() for _ in range(4)])))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_driver_env(prefect_api),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len({node for node, _, _ in results}) == 2
    assert all("runtime_resources" in path for _, path, _ in results), results
    assert all(url == prefect_api for _, _, url in results)


def test_lshvec_trains_one_model_on_two_nodes(
    two_node_cluster: str, prefect_api: str, tmp_path: Path
) -> None:
    """Two skip-gram actors, one per node (each node has one CPU, each actor needs one),
    train one model; its read vectors classify held-out reads of 4 genomes far above
    chance (0.25)."""
    demo = write_demo(tmp_path / "demo", DemoSpec(n_pairs=3000, n_genomes=4,
                                                  genome_length=20_000))
    script = textwrap.dedent(f"""
        import gzip, json, ray, numpy as np
        from helixflow.runner import runtime_env
        from helixflow.tasks.fastq import iter_read_batches
        from helixflow.tasks.lsh import fit_lsh, tokenize
        from helixflow.tasks.read_vectors import sequence_vectors
        from helixflow.tasks.skipgram import SkipGramConfig
        from helixflow.tasks.skipgram_ray import train_skipgram_ray
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split

        ray.init(address={two_node_cluster!r},
                 runtime_env=runtime_env({prefect_api!r}, ship_code=True))
        batch = next(iter_read_batches({str(demo.r1)!r}, batch_size=10_000))
        with gzip.open({str(demo.truth)!r}, "rt") as fh:
            next(fh)
            genome = {{line.split("\\t")[0]: line.split("\\t")[1] for line in fh}}
        names = batch.column("read_id").to_pylist()
        seqs = batch.column("sequence")
        y = np.array([genome[n] for n in names])
        lsh = fit_lsh(seqs, k=11, hash_size=12, seed=0)  # small corpus: few, reused buckets
        tokens, offsets = tokenize(seqs, lsh)
        half = len(names) // 2
        parts = [(tokens[:offsets[half]], offsets[:half + 1]),
                 (tokens[offsets[half]:], offsets[half:] - offsets[half])]
        refs = [ray.put(p) for p in parts]
        model = train_skipgram_ray(refs, SkipGramConfig(dim=32, epochs=5), num_workers=2,
                                   sync_tokens=100_000,
                                   worker_options={{"scheduling_strategy": "SPREAD"}})
        X = sequence_vectors(tokens, offsets, model.vectors, model.vocab)
        xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
        acc = LogisticRegression(max_iter=2000).fit(xtr, ytr).score(xte, yte)
        print(json.dumps({{"nodes": len([n for n in ray.nodes() if n["Alive"]]),
                          "workers": model.stats["workers"], "acc": acc,
                          "labels": len(set(y.tolist()))}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_driver_env(prefect_api),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 2 and result["workers"] == 2 and result["labels"] == 4
    assert result["acc"] >= 0.6, result  # chance is 0.25; one process reaches 0.78
