"""Starting a pipeline run: the one Prefect server, the Ray runner, the store's result storage.

Used by the CLI and by tests, so both run the flow exactly the same way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from helixflow.errors import HelixflowError
from helixflow.settings import ray_address as default_ray_address


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


def quiet_user_errors() -> None:
    """Attach the filter to Prefect's console handlers."""
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _HideUserErrorTracebacks) for f in handler.filters):
                handler.addFilter(_HideUserErrorTracebacks())


def connect_prefect() -> str:
    """The API URL to use: `PREFECT_API_URL` if set, else the local server (started if needed)."""
    from helixflow.server import ensure_server, use_server

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
    from flows.pipeline import DEFAULT_SHARD_SIZE, genomics_pipeline
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

    from blocks.store import resolve_store, result_storage
    from helixflow.runner import build_task_runner

    quiet_user_errors()
    st = resolve_store(store, store_block)
    runner = build_task_runner(api_url, ray_address or default_ray_address(), debug=debug)
    configured = flow.with_options(
        task_runner=runner, result_storage=result_storage(st), persist_result=True
    )
    with tags("helixflow", "cli"):
        state = configured(**parameters, store=st.url, store_block=store_block,
                           return_state=True)
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
