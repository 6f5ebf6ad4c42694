"""Load benchmark: N FASTQ pairs uploaded at once → N pipeline runs, none lost, none twice.

Everything real and local: a moto server (S3 + SQS over HTTP, bucket notifications to the
queue), a fresh Prefect server, `helixflow deploy` (work pool concurrency limit), one
`helixflow worker`, and the watcher. The N pairs (distinct seeds, tiny) are uploaded from a
thread pool at once; the watcher announces them; the deployment trigger creates the runs,
which queue under the pool's limit. Then every notification is sent again: no new run.

Prints: runs created / completed / distinct inputs, upload → run created and upload → run
start latencies (median, p90, max), the highest number of runs seen running at once, and
the makespan. There is no peer tool for this (Nextflow/Snakemake have no S3-event trigger);
the figures are helixflow's own.

Run:
    .venv/bin/python bench/watch_load.py                       # 50 pairs, limit 2
    .venv/bin/python bench/watch_load.py --uploads 10 --ray-head  # shared Ray cluster
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out" / "watch_load"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listening on port {port}")


def stamp(text: str | None) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else 0.0


def quantiles(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return f"median {statistics.median(values):.1f} s, p90 {p90:.1f} s, max {values[-1]:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=50, help="FASTQ pairs uploaded at once")
    ap.add_argument("--pairs", type=int, default=200, help="read pairs per upload")
    ap.add_argument("--concurrency", type=int, default=2, help="work pool concurrency limit")
    ap.add_argument("--ray-head", action="store_true",
                    help="runs join one shared Ray cluster instead of starting their own")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="hf-load-"))
    port = free_port()
    env = {**os.environ, "HELIXFLOW_HOME": str(home), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    procs: list[subprocess.Popen[bytes]] = []
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H",
                             "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    procs.append(moto)
    try:
        wait_port(port)
        run(args, env, home, procs)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.ray_head:
            subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"],
                           env=env, capture_output=True, check=False)
        from helixflow.server import stop_server

        stop_server(home)


def run(args: argparse.Namespace, env: dict[str, str], home: Path,
        procs: list[subprocess.Popen[bytes]]) -> None:
    import boto3
    import httpx

    from helixflow.demo import DemoSpec, write_demo
    from helixflow.server import ensure_server, use_server
    from helixflow.watch import WatchConfig, Watcher, connect_bucket_to_queue

    info = ensure_server(home)
    use_server(info)
    env["PREFECT_API_URL"] = api = info.api_url
    if args.ray_head:
        env["RAY_AUTH_MODE"] = "disabled"  # a throwaway local cluster: no token to hand out
        ray_port = free_port()
        subprocess.run([str(Path(sys.executable).with_name("ray")), "start", "--head",
                        f"--port={ray_port}", "--num-cpus=2", "--include-dashboard=false",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True)
        env["HELIXFLOW_RAY_ADDRESS"] = f"127.0.0.1:{ray_port}"
    subprocess.run([sys.executable, "-m", "helixflow.cli", "deploy", "--name",
                    "genomics-pipeline", "--concurrency", str(args.concurrency)],
                   env=env, check=True, cwd=REPO)
    (dep,) = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    params = {**dep["parameters"], "store": "s3://results/hf", "embed_methods": ["kmer"],
              "simulate": False}
    httpx.patch(f"{api}/deployments/{dep['id']}", json={"parameters": params},
                timeout=30).raise_for_status()

    s3 = boto3.client("s3")
    sqs = boto3.client("sqs")
    for bucket in ("incoming", "results"):
        s3.create_bucket(Bucket=bucket)
    queue_url = connect_bucket_to_queue("incoming", "uploads", s3=s3, sqs=sqs)

    files = []
    for i in range(args.uploads):
        demo = write_demo(home / "demo" / f"s{i:03d}", DemoSpec(
            seed=1000 + i, n_pairs=args.pairs, n_genomes=1, genome_length=5_000))
        files += [(demo.r1, f"load/s{i:03d}_R1.fastq.gz"), (demo.r2, f"load/s{i:03d}_R2.fastq.gz")]
    worker = subprocess.Popen([sys.executable, "-m", "helixflow.cli", "worker"], env=env,
                              cwd=REPO, stdout=(OUT / "worker.log").open("wb"),
                              stderr=subprocess.STDOUT)
    procs.append(worker)

    uploaded: dict[str, float] = {}

    def upload(item: tuple[Path, str]) -> None:
        s3.upload_file(str(item[0]), "incoming", item[1])
        uploaded[item[1]] = time.time()

    t0 = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(upload, files))
    print(f"{len(files)} objects uploaded in {time.time() - t0:.1f} s")

    # Keep every notification body to send them all again at the end.
    bodies: list[str] = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                  VisibilityTimeout=60).get("Messages", [])
        if not got:
            break
        bodies += [m["Body"] for m in got]
        for m in got:
            sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"],
                                          VisibilityTimeout=0)
        if len(bodies) >= len(files) + 1:
            break
    watcher = Watcher(WatchConfig(queue_url=queue_url, wait_time=1,
                                  ledger=home / "ledger.sqlite"))
    stats = watcher.run(until_idle=True)
    t_announced = time.time()
    print(f"watcher: {stats}; all announced {t_announced - t0:.1f} s after the first upload")

    deadline = time.monotonic() + args.timeout
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", json={
            "flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "limit": 200},
            timeout=30).json()
        done = sum(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") for r in runs)
        if len(runs) >= args.uploads and done == len(runs):
            break
        time.sleep(5)
    t_done = time.time()

    again = watcher.run(until_idle=True)
    time.sleep(15)
    after = httpx.post(f"{api}/flow_runs/filter", json={
        "flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "limit": 200},
        timeout=30).json()
    for body in bodies:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    resent = watcher.run(until_idle=True)
    time.sleep(15)
    final = httpx.post(f"{api}/flow_runs/filter", json={
        "flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "limit": 200},
        timeout=30).json()
    watcher.close()

    inputs = [tuple(r["parameters"]["inputs"]) for r in runs]
    states: dict[str, int] = {}
    for r in runs:
        states[r["state_type"]] = states.get(r["state_type"], 0) + 1
    created, started = [], []
    intervals = []
    for r in runs:
        key = r["parameters"]["inputs"][-1].removeprefix("s3://incoming/")
        up = uploaded[key]
        created.append(stamp(r["created"]) - up)
        if r["start_time"]:
            started.append(stamp(r["start_time"]) - up)
            intervals.append((stamp(r["start_time"]), stamp(r["end_time"]) or t_done))
    peak = max(sum(s <= t < e for s, e in intervals) for t, _ in intervals) if intervals else 0
    report = {
        "uploads": args.uploads, "pairs_per_upload": args.pairs,
        "concurrency_limit": args.concurrency, "shared_ray": args.ray_head,
        "runs": len(runs), "distinct_inputs": len(set(inputs)), "states": states,
        "lost": args.uploads - len(set(inputs)), "twice": len(inputs) - len(set(inputs)),
        "announced": stats.announced, "watcher_again": again.announced,
        "resent_announced": resent.announced, "resent_duplicates": resent.duplicates,
        "runs_after_resend": len(final), "runs_before_resend": len(after),
        "upload_to_created": quantiles(created) if created else None,
        "upload_to_start": quantiles(started) if started else None,
        "peak_running": peak, "makespan_s": round(t_done - t0, 1),
    }
    (OUT / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
