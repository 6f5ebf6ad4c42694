"""Starting a pipeline run: the one Prefect server, the Ray runner, the store's result storage.

Used by the CLI and by tests, so both run the flow exactly the same way. A run stops
politely on SIGINT and SIGTERM (`helixflow.app.stop`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect_ray.task_runners import RayTaskRunner

from helixflow.app.stop import STOP, RunStopped, cancel_flow_run
from helixflow.errors import HelixflowError
from helixflow.settings import ray_address as default_ray_address

#: The stop-signal handling of this process's run (one run at a time per process).


@dataclass
class Launched:
    """The outcome of one `helixflow run`."""

    flow_run_id: str
    ui_url: str
    api_url: str
    summary: Any  # flows.pipeline.RunSummary when the run completed
    error: BaseException | None


class _HideUserErrorTracebacks(logging.Filter):
    """A user mistake is one line on the console, not a traceback (the UI still logs it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HelixflowError):
            record.exc_info = None
            record.exc_text = None
        return True


class _QuietWhileStopping(logging.Filter):
    """After a stop signal, Prefect's "Crash detected" lines would contradict the Cancelled
    state the run ends in: the console gets the CLI's one line instead (the UI keeps all)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not STOP.stopping


def quiet_user_errors() -> None:
    """Attach the filters to Prefect's console handlers."""
    from prefect.logging.handlers import APILogHandler

    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
        for handler in logging.getLogger(name).handlers:
            kinds = [_HideUserErrorTracebacks]
            if not isinstance(handler, APILogHandler):
                kinds.append(_QuietWhileStopping)
            for kind in kinds:
                if not any(isinstance(f, kind) for f in handler.filters):
                    handler.addFilter(kind())


def connect_prefect() -> str:
    """The API URL to use: `PREFECT_API_URL` if set, else the local server (started if needed)."""
    from helixflow.app.server import ensure_server, use_server

    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    info = ensure_server()
    use_server(info)
    return info.api_url


def ui_base(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")


def launch_pipeline(
    inputs: list[str],
    *,
    store: str | None = None,
    store_block: str | None = None,
    ray_address: str | None = None,
    shard_size: int | None = None,
    interleaved: bool = False,
    debug: bool = False,
    **options: Any,
) -> Launched:
    """Run `genomics-pipeline` on the one server and Ray; never raises for a failed run.

    `options` are further flow parameters (qc_options, reference, assemble, motifs, …).
    """
    from helixflow.flows.pipeline import DEFAULT_SHARD_SIZE, genomics_pipeline
    from helixflow.samples import plan_samples, run_label

    plan_samples(list(inputs), interleaved=interleaved)  # a naming mistake fails here
    parameters = {
        "inputs": list(inputs),
        "shard_size": shard_size or DEFAULT_SHARD_SIZE,
        "interleaved": interleaved,
        "run_label": run_label(inputs, interleaved=interleaved),
        **{k: v for k, v in options.items() if v is not None},
    }
    return launch_flow(genomics_pipeline, parameters, store=store, store_block=store_block,
                       ray_address=ray_address, debug=debug)


def launch_flow(
    flow: Any,
    parameters: dict[str, Any],
    *,
    store: str | None = None,
    store_block: str | None = None,
    ray_address: str | None = None,
    debug: bool = False,
) -> Launched:
    """Run a helixflow flow (taking `store`/`store_block`) on the one server and Ray, with
    results persisted to the store; never raises for a failed run."""
    api_url = connect_prefect()
    from prefect import tags

    from helixflow.blocks.store import resolve_store, result_storage
    from helixflow.runner import build_task_runner

    quiet_user_errors()
    st = resolve_store(store, store_block)
    runner = build_task_runner(api_url, ray_address or default_ray_address(), debug=debug)
    crashed: list[UUID] = []

    def remember_crash(flow: Any, flow_run: Any, state: Any) -> None:
        crashed.append(flow_run.id)  # a stop crashes the flow run first, then cancels it

    configured = flow.with_options(
        task_runner=_StoppableRayTaskRunner(address=runner.address,
                                            init_kwargs=runner.init_kwargs),
        result_storage=result_storage(st), persist_result=True,
        on_crashed=[*flow.on_crashed_hooks, remember_crash],
    )
    state = None
    with STOP.scope():
        try:
            with _ray_session(runner):
                try:
                    with tags("helixflow", "cli"):
                        state = configured(**parameters, store=st.url,
                                           store_block=store_block, return_state=True)
                finally:
                    STOP.unwound.set()
        except KeyboardInterrupt:  # ours, or Ray's rewording of ours (ray.get)
            if STOP.signum is None:
                raise
        # Ray is shut down by now: the run's tasks have ended.
        if STOP.signum is not None and (state is None or not state.is_completed()):
            flow_run_id = crashed[0] if crashed else (
                state.state_details.flow_run_id if state is not None else None)
            url = f"{ui_base(api_url)}/runs/flow-run/{flow_run_id}" if flow_run_id else ""
            if flow_run_id is not None:
                cancel_flow_run(flow_run_id, f"stopped by {signal.Signals(STOP.signum).name}")
            return Launched(flow_run_id=str(flow_run_id or ""), ui_url=url, api_url=api_url,
                            summary=None, error=RunStopped(STOP.signum, url))
    assert state is not None
    flow_run_id = str(state.state_details.flow_run_id)
    result = state.result(raise_on_failure=False)
    error = result if isinstance(result, BaseException) else None
    if error is None and not state.is_completed():
        error = RuntimeError(f"flow run ended in state {state.name}")
    return Launched(
        flow_run_id=flow_run_id,
        ui_url=f"{ui_base(api_url)}/runs/flow-run/{flow_run_id}",
        api_url=api_url,
        summary=None if error else result,
        error=error,
    )


class _StoppableRayTaskRunner(RayTaskRunner):
    """Sets the stop handlers again when the flow engine enters it: by then the engine
    has put its own SIGTERM handler in place (which crashes the run without a way back)."""

    def __enter__(self) -> _StoppableRayTaskRunner:
        super().__enter__()
        STOP.arm()
        return self


@contextlib.contextmanager
def _ray_session(runner: RayTaskRunner) -> Iterator[None]:
    """Start (or join) the runner's Ray cluster before the flow, shut it down after.

    Before: connecting is not interrupted halfway (a stop signal is acted on once it is
    done), and Ray's own SIGTERM handlers are not installed in this driver: its Python
    one exits and its C++ failure handler dumps a stack and aborts. Both are switched off
    by Ray's own knobs for this process only (`RAY_DISABLE_FAILURE_SIGNAL_HANDLER`, read
    at import, and the handler `ray.init` sets): Ray's workers keep theirs. After:
    shutting the driver down ends the run's Ray tasks (and a local cluster's processes),
    also on a stop. The task runner then uses this connection rather than opening one.
    """
    import ray
    from ray._private import ray_constants
    from ray._private import utils as ray_utils

    from helixflow.runner import (
        loopback_node,
        reap_orphaned_ray_agents,
        without_server_secrets,
    )

    if ray.is_initialized():  # the caller's connection: theirs to shut down
        yield
        return
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    # Token authentication stays as Ray sets it up; its notice about that is not news to
    # a user of helixflow's console (it names an opt-out we don't recommend).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    address = None if runner.address in (None, "auto") else runner.address
    if address == "local":  # a new cluster: first clear what a killed run left behind
        reap_orphaned_ray_agents()
    set_sigterm_handler = ray_utils.set_sigterm_handler
    try:
        with STOP.deferred():
            ray_utils.set_sigterm_handler = lambda handler: None
            try:
                # a new local cluster: 127.0.0.1 only, no database secret inherited
                with loopback_node(address), without_server_secrets():
                    ray.init(address, **runner.init_kwargs)
            except Exception as exc:  # no cluster, or one that did not come up in time
                raise HelixflowError(
                    f"Ray did not start ({address or 'a new local cluster'}): {exc}",
                    hint="check the address, or the machine's load; --debug shows Ray's "
                    "traceback") from exc
            finally:
                ray_utils.set_sigterm_handler = set_sigterm_handler
        yield
    finally:
        ray.shutdown()
