"""Fault injection: `helixflow run` against the real Prefect server and real (local) Ray,
with a Ray worker, a training actor, an inference actor or the driver itself SIGKILLed
mid-run. Outcomes asserted: exit status, every artifact's sha256 against an undisturbed
run in another HELIXFLOW_HOME and store, cache hits read from the Prefect API, and what
the store shows after a kill. Figures (attempts, time to recover) are printed (`-s`).

Runs are phase 1 (aligned to the demo's genomes) + k-mer embeddings on a small demo (3
shards of 1,000 pairs), the baseline with MEGAHIT too; the actor test embeds with LSHvec
and DNABERT instead. Every run is a `helixflow run` subprocess, so a
kill hits real processes; the Ray processes a killed driver leaves are waited for (and
killed, failing the test) so nothing keeps running.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from helixflow.app.demo import DemoSpec, write_demo
from tests.conftest import REPO, descendants

# a run takes minutes on a loaded 2-core machine; a test holds up to three
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]

RUN_TIMEOUT = 1200  # s: a whole run on a loaded 2-core machine
PHASE1 = ["--shard-size", "1000", "--embed", "kmer", "--no-simulate"]

# Artifacts whose bytes name the run, so they differ between any two runs by design:
NAMES_THE_RUN = {
    "report/report.html": "the QC report names its run (id, run folder URIs)",
    "manifest.json": "the manifest lists the run id and the run folder's URIs",
    "multiqc/multiqc_report.html": "MultiQC stamps its report with the time it ran",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return write_demo(tmp_path_factory.mktemp("demo"),
                      DemoSpec(n_pairs=3000, n_genomes=3, genome_length=20_000))


# --------------------------------------------------------------------------------------
# helpers


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _env(home: Path) -> dict[str, str]:
    """This worktree's code, the session's Prefect server, a HELIXFLOW_HOME of its own."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["HELIXFLOW_HOME"] = str(home)
    return env


def _command(demo, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "helixflow", "run", str(demo.r1), str(demo.r2),
            "--store", str(store), *extra]


def _start(command: list[str], home: Path, log: Path) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        return subprocess.Popen(command, env=_env(home), stdout=fh, stderr=subprocess.STDOUT,
                                cwd=home)


def _finish(proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        code = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"helixflow run did not finish in {RUN_TIMEOUT} s:\n{_tail(log)}")
    assert code == 0, f"helixflow run exited {code}:\n{_tail(log)}"


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _run(command: list[str], home: Path, log: Path) -> None:
    _finish(_start(command, home, log), log)


def title(pid: int) -> str:
    """A process's command line as `ps` shows it (Ray workers: `ray::<task name>`)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def find_process(root: int, prefix: str) -> int | None:
    """A live process below `root` whose title starts with `prefix`."""
    for pid in sorted(descendants(root)):
        if title(pid).startswith(prefix):
            return pid
    return None


def _run_dirs(store: Path) -> list[Path]:
    runs = store / "runs"
    return sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime) if runs.is_dir() else []


def run_files(run_dir: Path) -> dict[str, str]:
    """relative path → sha256 of every file in a run folder."""
    return {str(p.relative_to(run_dir)): _sha256(p)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def assert_same_outputs(run_dir: Path, baseline: Path, *, complete: bool = True) -> int:
    """Every artifact of `run_dir` has the bytes of the same artifact of `baseline`
    (`complete`: and the same set of artifacts); returns how many were compared."""
    ours, theirs = run_files(run_dir), run_files(baseline)
    if complete:
        assert sorted(ours) == sorted(theirs)
    else:
        assert set(ours) <= set(theirs), sorted(set(ours) - set(theirs))
    differ = []
    for name, digest in ours.items():
        if name in NAMES_THE_RUN or digest == theirs[name]:
            continue
        differ.append(name)
    assert not differ, f"bytes differ from the undisturbed run: {differ}"
    return len(ours)


def _api_post(path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    api = os.environ["PREFECT_API_URL"].rstrip("/")
    resp = httpx.post(f"{api}/{path}", json=body, timeout=30)
    resp.raise_for_status()
    return resp.json()


def task_runs(flow_run_id: str) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}
    return _api_post("task_runs/filter", body)


def _stop_all(pids: set[int], timeout: float = 60) -> list[str]:
    """Wait for `pids` to exit (Ray's reaper stops a killed driver's cluster); SIGKILL
    what is left after `timeout` and return its titles."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    titles = [title(p) for p in left]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return titles


# --------------------------------------------------------------------------------------
# the undisturbed run every fault is compared with


@pytest.fixture(scope="module")
def baseline(prefect_api: str, demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phase 1 + k-mer with the reference (aligned BAM, VCF) and MEGAHIT contigs, in a
    HELIXFLOW_HOME and store of its own: the run folder."""
    root = tmp_path_factory.mktemp("baseline")
    store = root / "store"
    _run(_command(demo, store, *PHASE1, "--reference", str(demo.genomes), "--assemble"),
         root / "home", root / "run.log")
    (run_dir,) = _run_dirs(store)
    return run_dir


@pytest.fixture
def cleanup() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started: killed with their process trees if still running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            tree = descendants(proc.pid)
            proc.kill()
            proc.wait()
            _stop_all(tree, timeout=30)


# --------------------------------------------------------------------------------------
# tests


def test_outputs_are_byte_identical_across_homes_and_stores(baseline: Path, demo,
                                                            tmp_path: Path) -> None:
    """The same inputs and parameters in another HELIXFLOW_HOME and store (no cache in
    common) give the same bytes: BAM/BAI (no scratch or index path in @PG), VCF/TBI,
    contigs, Parquet read and embedding shards; exceptions in NAMES_THE_RUN."""
    store = tmp_path / "store"
    _run(_command(demo, store, *PHASE1, "--reference", str(demo.genomes), "--assemble"),
         tmp_path / "home", tmp_path / "run.log")
    (run_dir,) = _run_dirs(store)
    compared = assert_same_outputs(run_dir, baseline)
    kinds = {Path(name).parts[0] for name in run_files(run_dir)}
    assert {"align", "align-parts", "variants", "assemble", "correct", "embed"} <= kinds
    print(f"\nbyte identity: {compared} artifacts compared, {len(NAMES_THE_RUN)} name the run")


def test_ray_worker_killed_mid_task_recovers_with_identical_outputs(
        baseline: Path, demo, tmp_path: Path, cleanup: list) -> None:
    """SIGKILL of the Ray worker running a correction (or QC) shard: Ray runs the task
    again, the run exits 0 and its artifacts equal the undisturbed run's."""
    store, log = tmp_path / "store", tmp_path / "run.log"
    proc = _start(_command(demo, store, *PHASE1, "--reference", str(demo.genomes)),
                  tmp_path / "home", log)
    cleanup.append(proc)

    def running_worker() -> int | None:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before a worker was killed:\n{_tail(log)}")
        return find_process(proc.pid, "ray::correct-reads") or find_process(
            proc.pid, "ray::filter-reads")

    victim = wait_for(running_worker, RUN_TIMEOUT, "a Ray worker running a QC/correction task",
                      interval=0.02)
    victim_title = title(victim)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    _finish(proc, log)
    (run_dir,) = _run_dirs(store)
    compared = assert_same_outputs(run_dir, baseline, complete=False)
    runs = task_runs(run_dir.name)
    stage = victim_title.removeprefix("ray::").split()[0]
    of_stage = [r for r in runs if r["task_key"].startswith(("filter", "correct"))
                or r["name"].startswith(("qc-", "correct-"))]
    assert of_stage and all(r["state_type"] == "COMPLETED" for r in runs)
    retried = [r for r in runs if (r.get("run_count") or 0) > 1]
    last_end = max(_epoch(r["end_time"]) for r in of_stage if r.get("end_time"))
    print(f"\nworker kill: {victim_title!r} killed; task runs run more than once: "
          f"{[(r['name'], r['run_count']) for r in retried]}; stage {stage} done "
          f"{last_end - killed_at:.1f} s after the kill; {compared} artifacts identical")


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_driver_killed_then_rerun_resumes_from_cache(baseline: Path, demo, tmp_path: Path,
                                                     cleanup: list) -> None:
    """SIGKILL of `helixflow run` after some shards are corrected: nothing partial is
    visible in the store, its Ray processes go away (Ray's agents: at the rerun's start),
    and the same command again takes every task that had finished from the cache and ends
    with the undisturbed outputs."""
    store, home, log = tmp_path / "store", tmp_path / "home", tmp_path / "run.log"
    command = _command(demo, store, *PHASE1, "--reference", str(demo.genomes))
    proc = _start(command, home, log)
    cleanup.append(proc)

    def corrected() -> list[Path]:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it was killed:\n{_tail(log)}")
        return [p for d in _run_dirs(store) for p in (d / "correct").glob("*.parquet")]

    wait_for(corrected, RUN_TIMEOUT, "a corrected shard in the store", interval=0.1)
    tree = descendants(proc.pid)
    agents = {p for p in tree if title(p).startswith(("ray::DashboardAgent",
                                                       "ray::RuntimeEnvAgent"))}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = _stop_all(tree - agents)  # Ray's agents outlive a killed driver: the rerun reaps
    (killed_dir,) = _run_dirs(store)

    # nothing half-written under a published name; what is there is complete
    hidden = [str(p.relative_to(store)) for top in ("runs", "objects")
              for p in (store / top).rglob("*") if p.name.startswith(".")]
    assert not hidden, hidden
    assert_same_outputs(killed_dir, baseline, complete=False)
    # identify-input is not cached by design (it hashes the input file each run)
    done = {r["name"] for r in task_runs(killed_dir.name)
            if r["state_type"] == "COMPLETED" and not r["name"].startswith("identify-")}
    assert any(n.startswith("correct-") for n in done), done

    started = time.monotonic()
    _run(command, home, log)
    resumed = time.monotonic() - started
    (new_dir,) = [d for d in _run_dirs(store) if d != killed_dir]
    runs = {r["name"]: r for r in task_runs(new_dir.name)}
    not_cached = sorted(n for n in done if n in runs and runs[n]["state_name"] != "Cached")
    assert not not_cached, f"finished before the kill but executed again: {not_cached}"
    assert done <= set(runs), sorted(done - set(runs))
    executed = sorted(n for n, r in runs.items() if r["state_name"] != "Cached")
    assert executed, "the rerun executed nothing: the kill came after the last task"
    compared = assert_same_outputs(new_dir, baseline, complete=False)
    print(f"\ndriver kill: {len(done)} task runs finished before the kill, all cached in the "
          f"rerun; {len(executed)} executed; rerun {resumed:.1f} s; {compared} artifacts "
          f"identical; Ray processes left after 60 s: {left}")
    assert not left, f"Ray processes outlived the killed driver: {left}"
    orphans = [title(p) for p in agents if _alive(p)]
    assert not orphans, f"the rerun left the killed run's Ray agents running: {orphans}"


def test_training_and_inference_actors_killed_stage_completes(demo, tmp_path: Path,
                                                              cleanup: list) -> None:
    """An LSHvec training actor, then a DNABERT inference actor (Ray Data pool) SIGKILLed
    mid-stage: training is retried as a task (the model is retrained from the start, so it
    is the undisturbed model), the inference actor is restarted by Ray Data; valid
    embeddings of every read come out."""
    store, log = tmp_path / "store", tmp_path / "run.log"
    proc = _start(_command(demo, store, "--shard-size", "1000", "--embed", "lshvec",
                           "--embed", "dnabert", "--embed-option", "dnabert_steps=5",
                           "--no-simulate"), tmp_path / "home", log)
    cleanup.append(proc)
    killed: dict[str, str] = {}
    # the training actor while it trains a round; the inference actor as soon as it exists
    for prefix in ("ray::_RayWorker.train_round", "ray::MapWorker"):
        def actor(prefix: str = prefix) -> int | None:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before {prefix} was killed:\n{_tail(log)}")
            return find_process(proc.pid, prefix)

        pid = wait_for(actor, RUN_TIMEOUT, f"a {prefix} actor", interval=0.05)
        killed[prefix] = title(pid)
        os.kill(pid, signal.SIGKILL)
    _finish(proc, log)
    (run_dir,) = _run_dirs(store)
    reads = sum(pq.ParquetFile(p).metadata.num_rows for p in (run_dir / "correct").glob("*"))
    for method in ("lshvec", "dnabert-mean", "dnabert-cls"):
        shards = sorted((run_dir / "embed").glob(f"*.{method}.parquet"))
        assert len(shards) == 3, (method, shards)
        table = pq.read_table(shards)
        assert table.num_rows == reads
        vectors = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(
            table.num_rows, -1)
        assert np.isfinite(vectors).all() and np.abs(vectors).sum(axis=1).min() > 0
    train = [r for r in task_runs(run_dir.name) if r["name"] == "train-lshvec"]
    assert len(train) == 1 and train[0]["state_type"] == "COMPLETED"
    print(f"\nactor kill: {killed}; train-lshvec run_count {train[0]['run_count']}")
