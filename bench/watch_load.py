"""Load benchmark: N FASTQ pairs uploaded at once → N pipeline runs, none lost, none twice.

Everything real and local: a moto server (S3 + SQS over HTTP, bucket notifications to the
queue), a fresh Prefect server (on SQLite, or on the local PostgreSQL of
deployments/postgres/local-postgres.sh), `helixflow deploy` (work pool concurrency limit),
one `helixflow worker`, and the watcher. The N pairs (distinct seeds, tiny) are uploaded
from a thread pool at once; the watcher announces them; the deployment trigger creates the
runs, which queue under the pool's limit. Then every notification is sent again: no new run.

`--database sqlite,postgres` runs the whole burst once per database, one after the other
(each with its own server, moto, worker and Ray), and prints them side by side: runs
created and completed, lost and twice, the 503s the server answered (it logs each "try
again" it sends: its database was busy), the trigger actions that failed (a run never
created: Prefect does not retry them) and the 429/503s the worker's Prefect clients retried,
upload → run created and upload → run start latencies (median, p90), the highest number
of runs seen running at once, and the makespan. `--timeout` caps the wait for completion
per database; runs still queued then are counted as not completed. There is no peer tool
for this (Nextflow/Snakemake have no S3-event trigger); the figures are helixflow's own.

Run:
    .venv/bin/python bench/watch_load.py                               # 50 pairs, SQLite
    .venv/bin/python bench/watch_load.py --uploads 100 --database sqlite,postgres --ray-head
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out" / "watch_load"
DATABASES = ("sqlite", "postgres")
#: What the server logs for each 503 it answers (PREFECT_SERVER_LOG_RETRYABLE_ERRORS).
SERVER_503 = "Encountered retryable exception in request"
#: What the server logs when an automation action (the trigger's run-deployment) fails:
#: that run is never created (Prefect does not retry the action).
ACTION_FAILED = "prefect.server.events.actions - Action failed"
#: What a Prefect client logs for each 429/502/503 it retries.
CLIENT_RETRY = "Received response with retryable status code"


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


def quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return {"p50": round(statistics.median(values), 1), "p90": round(p90, 1),
            "max": round(values[-1], 1)}


def start(cmd: list[str], env: dict[str, str], log: Path | None = None
          ) -> subprocess.Popen[bytes]:
    """A child in its own process group (`stop` ends the group: a worker's flow runs too)."""
    out = log.open("wb") if log else subprocess.DEVNULL
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=50, help="FASTQ pairs uploaded at once")
    ap.add_argument("--pairs", type=int, default=200, help="read pairs per upload")
    ap.add_argument("--concurrency", type=int, default=2, help="work pool concurrency limit")
    ap.add_argument("--database", default="sqlite",
                    help="comma-separated server databases to run the burst on: sqlite, postgres")
    ap.add_argument("--ray-head", action="store_true",
                    help="runs join one shared Ray cluster instead of starting their own")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="seconds to wait for the runs to finish, per database")
    args = ap.parse_args()
    databases = [d.strip() for d in args.database.split(",") if d.strip()]
    if not databases or set(databases) - set(DATABASES):
        ap.error(f"--database: one or more of {', '.join(DATABASES)}")

    OUT.mkdir(parents=True, exist_ok=True)
    reports = []
    for database in databases:
        print(f"=== {database}: {args.uploads} uploads (load: {os.getloadavg()[0]:.1f})",
              flush=True)
        reports.append(burst(args, database))
        (OUT / f"report-{database}.json").write_text(json.dumps(reports[-1], indent=2))
    print(json.dumps(reports, indent=2))
    print(table(reports))


def burst(args: argparse.Namespace, database: str) -> dict[str, Any]:
    """One burst on a fresh server on `database`; its report."""
    from helixflow.app.server import flush_prefect_workers, stop_server

    home = Path(tempfile.mkdtemp(prefix=f"hf-load-{database}-"))
    port = free_port()
    env = {**os.environ, "HELIXFLOW_HOME": str(home), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    env.pop("PREFECT_API_URL", None)
    os.environ.update(env)
    procs = [start([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                    "-p", str(port)], env)]
    pg = None
    try:
        wait_port(port)
        server_database = None
        if database == "postgres":
            from deployments.postgres import LocalPostgres

            pg = LocalPostgres.from_env()
            if not pg.reachable() and not pg.start():
                raise SystemExit("no PostgreSQL: run deployments/postgres/local-postgres.sh "
                                 "as root")
            server_database = pg.url(pg.create_database("hf_bench_watch_load"), password=True)
        return run(args, env, home, procs, database, server_database)
    finally:
        flush_prefect_workers()  # bound to this server: the next burst gets new ones
        for proc in reversed(procs):
            stop(proc)
        stop_server(home)
        if pg is not None:
            pg.drop_created()


def run(args: argparse.Namespace, env: dict[str, str], home: Path,
        procs: list[subprocess.Popen[bytes]], database: str,
        server_database: str | None) -> dict[str, Any]:
    import boto3
    import httpx
    from pydantic import SecretStr
    from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

    from helixflow.app.demo import DemoSpec, write_demo
    from helixflow.app.server import ensure_server, use_server
    from helixflow.app.watch import WatchConfig, Watcher
    from helixflow.app.watch_sources import connect_bucket_to_queue

    bench_retries = 0

    def busy(exc: BaseException) -> bool:
        nonlocal bench_retries
        hit = (isinstance(exc, httpx.HTTPStatusError)
               and exc.response.status_code in (429, 503)) or isinstance(exc, httpx.TransportError)
        bench_retries += hit
        return hit

    @retry(retry=retry_if_exception(busy), wait=wait_exponential(max=8),
           stop=stop_after_attempt(8), reraise=True)
    def api(method: str, path: str, body: dict | None = None) -> Any:
        resp = httpx.request(method, f"{env['PREFECT_API_URL']}{path}", json=body, timeout=30)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    t_server = time.time()
    info = ensure_server(home, timeout=300,
                         database=SecretStr(server_database) if server_database else None)
    use_server(info)
    print(f"server on {info.database} healthy in {time.time() - t_server:.1f} s", flush=True)
    env["PREFECT_API_URL"] = info.api_url
    if args.ray_head:
        env["RAY_AUTH_MODE"] = "disabled"  # a throwaway local cluster: no token to hand out
        ray_port = free_port()
        # --block: the cluster lives as long as this child, which `stop` ends.
        procs.append(start([str(Path(sys.executable).with_name("ray")), "start", "--head",
                            f"--port={ray_port}", "--num-cpus=2", "--include-dashboard=false",
                            "--disable-usage-stats", "--block"], env, OUT / "ray.log"))
        env["HELIXFLOW_RAY_ADDRESS"] = f"127.0.0.1:{ray_port}"
        wait_port(ray_port, timeout=120)
    subprocess.run([sys.executable, "-m", "helixflow", "deploy", "--name",
                    "genomics-pipeline", "--concurrency", str(args.concurrency)],
                   env=env, check=True, cwd=REPO)
    (dep,) = api("POST", "/deployments/filter", {})
    params = {**dep["parameters"], "store": "s3://results/hf", "embed_methods": ["kmer"],
              "simulate": False}
    api("PATCH", f"/deployments/{dep['id']}", {"parameters": params})

    def deployment_runs() -> list[dict]:
        return api("POST", "/flow_runs/filter", {
            "flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "limit": 200})

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
    worker_log = OUT / f"worker-{database}.log"
    procs.append(start([sys.executable, "-m", "helixflow", "worker"], env, worker_log))

    uploaded: dict[str, float] = {}

    def upload(item: tuple[Path, str]) -> None:
        s3.upload_file(str(item[0]), "incoming", item[1])
        uploaded[item[1]] = time.time()

    t0 = time.time()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(upload, files))
    print(f"{len(files)} objects uploaded in {time.time() - t0:.1f} s", flush=True)

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
    print(f"watcher: {stats}; all announced {t_announced - t0:.1f} s after the first upload",
          flush=True)

    deadline = time.monotonic() + args.timeout
    runs: list[dict] = []
    t_created = None
    while time.monotonic() < deadline:
        runs = deployment_runs()
        if t_created is None and len(runs) >= args.uploads:
            t_created = time.time()
            print(f"{len(runs)} runs created {t_created - t0:.1f} s after the first upload",
                  flush=True)
        done = sum(r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") for r in runs)
        if len(runs) >= args.uploads and done == len(runs):
            break
        time.sleep(5)
    t_done = time.time()

    again = watcher.run(until_idle=True)
    time.sleep(15)
    after = deployment_runs()
    for body in bodies:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    resent = watcher.run(until_idle=True)
    time.sleep(15)
    final = deployment_runs()
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
    server_log = info.log_path.read_text(errors="replace")
    return {
        "database": database, "server_database": info.database,
        "uploads": args.uploads, "pairs_per_upload": args.pairs,
        "concurrency_limit": args.concurrency, "shared_ray": args.ray_head,
        "runs": len(runs), "completed": states.get("COMPLETED", 0),
        "distinct_inputs": len(set(inputs)), "states": states,
        "lost": args.uploads - len(set(inputs)), "twice": len(inputs) - len(set(inputs)),
        "server_503": server_log.count(SERVER_503),
        "trigger_actions_failed": server_log.count(ACTION_FAILED),
        "client_retries": worker_log.read_text(errors="replace").count(CLIENT_RETRY),
        "bench_retries": bench_retries,
        "announced": stats.announced, "watcher_again": again.announced,
        "resent_announced": resent.announced, "resent_duplicates": resent.duplicates,
        "runs_after_resend": len(final), "runs_before_resend": len(after),
        "upload_to_created_s": quantiles(created), "upload_to_start_s": quantiles(started),
        "all_created_s": round(t_created - t0, 1) if t_created else None,
        "peak_running": peak, "makespan_s": round(t_done - t0, 1),
        "timed_out": len(runs) < args.uploads or any(
            r["state_type"] not in ("COMPLETED", "FAILED", "CRASHED") for r in runs),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def table(reports: list[dict[str, Any]]) -> str:
    """The reports side by side, one column per database."""
    def latency(q: dict[str, float] | None) -> str:
        return f"{q['p50']:.1f} / {q['p90']:.1f}" if q else "-"

    rows = [
        ("runs created", lambda r: f"{r['runs']} of {r['uploads']}"),
        ("runs completed", lambda r: f"{r['completed']}" + (" (cut off)" if r["timed_out"]
                                                            else "")),
        ("lost / twice", lambda r: f"{r['lost']} / {r['twice']}"),
        ("503s answered by the server", lambda r: str(r["server_503"])),
        ("trigger actions failed (runs never made)",
         lambda r: str(r.get("trigger_actions_failed", "-"))),
        ("429/503 retried by worker clients", lambda r: str(r["client_retries"])),
        ("upload → run created p50 / p90 (s)", lambda r: latency(r["upload_to_created_s"])),
        ("upload → run start p50 / p90 (s)", lambda r: latency(r["upload_to_start_s"])),
        ("all runs created after (s)", lambda r: str(r["all_created_s"])),
        ("peak running", lambda r: str(r["peak_running"])),
        ("makespan (s)", lambda r: str(r["makespan_s"])),
        ("resent notifications → new runs", lambda r: str(r["runs_after_resend"]
                                                          - r["runs_before_resend"])),
        ("load average at the end", lambda r: " ".join(map(str, r["load_avg_1_5_15"]))),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':{width}} | " + " | ".join(f"{r['database']:>16}" for r in reports)]
    lines.append("-" * len(lines[0]))
    lines += [f"{name:{width}} | " + " | ".join(f"{cell(r):>16}" for r in reports)
              for name, cell in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
