"""How many task runs a Prefect server here absorbs: flows of N trivial tasks, per database.

For each database (SQLite under a fresh home; PostgreSQL from
deployments/postgres/local-postgres.sh) a fresh Prefect server is started, and for each N
a flow submits N trivial tasks (on a thread pool of 16, or on a local Ray with
`--runner ray`) in a process of its own. Printed per row:

- flow s: the flow run's wall time, and submitted/s = N / that;
- recorded s: from the flow's start until the server's API lists all N task runs as
  Completed (task states reach the server as events, recorded in batches), and
  recorded/s = N / that: the rate the server absorbs;
- when the server stops recording before N (no new task run for 90 s): how many it
  recorded, and the events its in-memory broker dropped (its queue holds 10,000);
- API latency seen by the flow: a probe reads the flow run once a second while the tasks
  run (p50 / p90 / max ms), and the 429/503s the clients retried.

There is no peer tool; the figures size the pipeline's task granularity (README, "Scaling").

Run:
    .venv/bin/python bench/server_load.py                         # 1k and 10k, SQLite
    .venv/bin/python bench/server_load.py --tasks 1000,10000,100000 --database sqlite,postgres
    .venv/bin/python bench/server_load.py --tasks 1000 --runner ray
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
#: No new task run recorded for this long: the rest are taken as lost.
STALL_SECONDS = 90.0
#: What the server's in-memory event broker logs for each event it drops (its queue holds
#: 10,000); a dropped task-run state event is a task run the API never shows.
DROPPED = "Subscription queue is full, dropping message"


def worker(n: int, runner: str) -> None:
    """The flow of `n` trivial tasks on this process's server; prints its figures (JSON)."""
    import httpx
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.futures import wait
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(persist_result=False, cache_policy=None)
    def noop(i: int) -> int:
        return i

    task_runner: Any = ThreadPoolTaskRunner(max_workers=16)
    if runner == "ray":
        from prefect_ray.task_runners import RayTaskRunner

        task_runner = RayTaskRunner(init_kwargs={"num_cpus": 2, "include_dashboard": False})
    latencies: list[float] = []
    flow_run_id: list[Any] = []
    done = threading.Event()

    def probe() -> None:
        with get_client(sync_client=True) as client:
            while not done.wait(1.0):
                if flow_run_id:
                    start = time.perf_counter()
                    client.read_flow_run(flow_run_id[0])
                    latencies.append(1000 * (time.perf_counter() - start))

    @flow(task_runner=task_runner, persist_result=False)
    def synthetic(n: int) -> None:
        from prefect import runtime

        flow_run_id.append(runtime.flow_run.id)
        wait([noop.submit(i) for i in range(n)])

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    start = time.time()
    synthetic(n)
    flow_s = time.time() - start
    done.set()
    recorded_s, recorded, last_change = None, 0, time.time()
    body = {"flow_runs": {"id": {"any_": [str(flow_run_id[0])]}},
            "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    while time.time() - last_change < STALL_SECONDS:  # the server may never record them all
        resp = httpx.post(f"{os.environ['PREFECT_API_URL']}/task_runs/count", json=body,
                          timeout=60)
        if resp.status_code == 200 and resp.json() != recorded:
            recorded, last_change = resp.json(), time.time()
        if recorded >= n:
            recorded_s = time.time() - start
            break
        time.sleep(0.5)
    print(json.dumps({"n": n, "flow_s": flow_s, "recorded_s": recorded_s, "recorded": recorded,
                      "latency_ms": latencies}))


def measure(database: str, sizes: list[int], runner: str) -> list[dict[str, Any]]:
    """A fresh server on `database`, then one worker process per size."""
    from helixflow.app.server import ensure_server, stop_server

    home = Path(tempfile.mkdtemp(prefix=f"hf-server-load-{database}-"))
    pg = None
    url = None
    if database == "postgres":
        from deployments.postgres import LocalPostgres

        pg = LocalPostgres.from_env()
        if not pg.reachable() and not pg.start():
            sys.exit("no PostgreSQL: run deployments/postgres/local-postgres.sh as root")
        url = pg.url(pg.create_database("hf_bench_server_load"), password=True)
    rows = []
    try:
        info = ensure_server(home, database=url)
        env = {**os.environ, "PREFECT_API_URL": info.api_url, "HELIXFLOW_HOME": str(home),
               "PREFECT_LOGGING_LEVEL": "WARNING"}
        for n in sizes:
            proc = subprocess.run([sys.executable, __file__, "--worker", str(n), runner],
                                  env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.exit(f"worker failed ({database}, {n}):\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["retried"] = proc.stderr.count("Received response with retryable status code")
            log = (home / "server.log").read_text(errors="replace")
            row["dropped"] = log.count(DROPPED) - sum(r["dropped"] for r in rows)
            row["database"] = database
            rows.append(row)
            print(format_row(row), flush=True)
    finally:
        stop_server(home)
        if pg is not None:
            pg.drop_created()
    return rows


def format_row(row: dict[str, Any]) -> str:
    lat = sorted(row["latency_ms"]) or [float("nan")]
    p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
    recorded = row["recorded_s"]
    rec = (f"ONLY {row['recorded']:,} recorded ({row['dropped']:,} events dropped)"
           if recorded is None else f"recorded {recorded:7.1f} s ({row['n'] / recorded:6.0f}/s)")
    return (f"{row['database']:<9} {row['n']:>7,} tasks: flow {row['flow_s']:7.1f} s "
            f"({row['n'] / row['flow_s']:6.0f}/s), {rec}; API latency p50 "
            f"{statistics.median(lat):.0f} / p90 {p90:.0f} / max {lat[-1]:.0f} ms; "
            f"{row['retried']} client retries")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="1000,10000", help="comma-separated N")
    parser.add_argument("--database", default="sqlite", help="sqlite, postgres or both")
    parser.add_argument("--runner", choices=("threads", "ray"), default="threads")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(int(args.worker[0]), args.worker[1])
        return
    sizes = [int(n) for n in args.tasks.split(",")]
    load = os.getloadavg()
    print(f"{args.runner} runner; load average before {load[0]:.2f} ({os.cpu_count()} cores)")
    for database in args.database.split(","):
        measure(database.strip(), sizes, args.runner)
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
