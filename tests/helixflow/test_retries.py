"""The retry classifier on real exception objects: botocore, s3fs, aiohttp, httpx, Ray."""

from __future__ import annotations

import importlib
import os
import pkgutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from botocore import exceptions as bex
from prefect import flow, task
from prefect.exceptions import PrefectHTTPStatusError
from prefect.tasks import Task
from ray import exceptions as rex
from s3fs.errors import translate_boto_error

from helixflow.errors import HelixflowError, InputError, exception_chain
from helixflow.retries import is_transient, retry_options, transient_reason


def client_error(code: str, status: int, operation: str = "PutObject") -> bex.ClientError:
    """A ClientError as botocore builds it from an S3 error response."""
    return bex.ClientError(
        {"Error": {"Code": code, "Message": f"{code} message"},
         "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": "r1", "HTTPHeaders": {},
                              "RetryAttempts": 4}},
        operation,
    )


def raised(exc: BaseException, *, cause: BaseException | None = None,
           context: BaseException | None = None) -> BaseException:
    """`exc` as Python leaves it after `raise exc from cause`, or after `raise exc` inside
    `except context:`."""
    try:
        try:
            if context is not None:
                raise context
        except BaseException:
            raise exc  # noqa: B904 - the implicit context is the point
        raise exc from cause
    except BaseException as caught:
        return caught


def http_status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:4200/api/task_runs/")
    response = httpx.Response(status, request=request, json={"detail": "x"})
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


def ray_task_error(cause: BaseException) -> rex.RayTaskError:
    return rex.RayTaskError("tasks.lshvec.train", "Traceback ...", cause,
                            proctitle="ray::train", pid=1, ip="127.0.0.1")


TRANSIENT = {
    # S3 / botocore (codes and statuses as botocore's standard retry mode lists them)
    "S3 503 SlowDown": client_error("SlowDown", 503),
    "S3 HEAD 503 (no body)": client_error("503", 503, "HeadObject"),
    "S3 500 InternalError": client_error("InternalError", 500),
    "S3 ServiceUnavailable": client_error("ServiceUnavailable", 503),
    "S3 RequestTimeout": client_error("RequestTimeout", 400),
    "ThrottlingException": client_error("ThrottlingException", 400),
    "Throttling": client_error("Throttling", 400),
    "RequestLimitExceeded": client_error("RequestLimitExceeded", 400),
    "EndpointConnectionError": bex.EndpointConnectionError(endpoint_url="http://s3"),
    "ConnectionClosedError": bex.ConnectionClosedError(endpoint_url="http://s3"),
    "ReadTimeoutError": bex.ReadTimeoutError(endpoint_url="http://s3", error="timed out"),
    "ConnectTimeoutError": bex.ConnectTimeoutError(endpoint_url="http://s3", error="x"),
    # s3fs after its own retries: an OSError raised from the ClientError
    "s3fs SlowDown": translate_boto_error(client_error("SlowDown", 503)),
    "s3fs 500": translate_boto_error(client_error("InternalError", 500)),
    "s3fs RequestTimeout": translate_boto_error(client_error("RequestTimeout", 400)),
    "s3fs wrapping EndpointConnectionError": raised(
        OSError(5, "upload failed"), cause=bex.EndpointConnectionError(endpoint_url="x")),
    # aiohttp, as s3fs's transport raises it
    "aiohttp ServerDisconnectedError": aiohttp.ServerDisconnectedError(),
    "aiohttp ClientOSError": aiohttp.ClientOSError(104, "Connection reset by peer"),
    "aiohttp ClientPayloadError": aiohttp.ClientPayloadError("Response payload is not completed"),
    "ConnectionResetError": ConnectionResetError(104, "Connection reset by peer"),
    "TimeoutError": TimeoutError("timed out"),
    # the Prefect API
    "Prefect API 503": http_status_error(503),
    "Prefect API 429": http_status_error(429),
    "PrefectHTTPStatusError 503": PrefectHTTPStatusError.from_httpx_error(http_status_error(503)),
    "httpx ConnectError": httpx.ConnectError("refused", request=httpx.Request("GET", "http://a")),
    "httpx ReadTimeout": httpx.ReadTimeout("slow", request=httpx.Request("GET", "http://a")),
    "httpx RemoteProtocolError": httpx.RemoteProtocolError("Server disconnected"),
    # Ray system failures
    "WorkerCrashedError": rex.WorkerCrashedError(),
    "ActorDiedError (process died)": rex.ActorDiedError(),
    "ActorUnavailableError": rex.ActorUnavailableError("connection lost", None),
    "ObjectLostError": rex.ObjectLostError("ab" * 14, None, ""),
    "OwnerDiedError": rex.OwnerDiedError("ab" * 14, None, ""),
    "ObjectReconstructionFailedError": rex.ObjectReconstructionFailedError("ab" * 14, None, ""),
    "NodeDiedError": rex.NodeDiedError("node 10.0.0.2 died"),
    "RaySystemError": rex.RaySystemError("raylet killed"),
    "LocalRayletDiedError": rex.LocalRayletDiedError(),
    "OutOfMemoryError": rex.OutOfMemoryError("memory monitor killed the worker"),
    # chains
    "RayTaskError of a remote connection reset": ray_task_error(ConnectionResetError()),
    "RayTaskError of a dead actor": ray_task_error(rex.ActorDiedError()),
    "RuntimeError while handling SlowDown": raised(RuntimeError("x"),
                                                   context=client_error("SlowDown", 503)),
}

NOT_TRANSIENT = {
    "bug: ValueError": ValueError("k must be an integer in 1..N-1 = 5, got 30"),
    "bug: KeyError": KeyError("sequence"),
    "bug: TypeError": TypeError("unsupported operand"),
    "bug: AssertionError": AssertionError(),
    "HelixflowError": HelixflowError("no reads to sample k-mers from"),
    "InputError": InputError("R1.fq", "bad quality", record=3),
    "HelixflowError raised from a reset": raised(HelixflowError("s3://b/k: denied"),
                                                 cause=ConnectionResetError()),
    "S3 403 AccessDenied": client_error("AccessDenied", 403),
    "S3 404 NoSuchBucket": client_error("NoSuchBucket", 404),
    "S3 404 NoSuchKey": client_error("NoSuchKey", 404, "GetObject"),
    "S3 400 InvalidArgument": client_error("InvalidArgument", 400),
    "s3fs AccessDenied": translate_boto_error(client_error("AccessDenied", 403)),
    "s3fs NoSuchBucket": translate_boto_error(client_error("NoSuchBucket", 404)),
    "s3fs NoSuchKey": translate_boto_error(client_error("NoSuchKey", 404, "GetObject")),
    "PermissionError while handling a reset": raised(PermissionError("denied"),
                                                     context=ConnectionResetError()),
    "NoCredentialsError": bex.NoCredentialsError(),
    "ParamValidationError": bex.ParamValidationError(report="Bucket must be a string"),
    "Prefect API 404": http_status_error(404),
    "Prefect API 422": http_status_error(422),
    "RayTaskError of a bug": ray_task_error(ValueError("bug")),
    "RayTaskError of a bug, as its cause's class": ray_task_error(ValueError("bug"))
    .as_instanceof_cause(),
    "actor whose __init__ raised": rex.ActorDiedError(ray_task_error(ValueError("bad config"))),
    "TaskCancelledError": rex.TaskCancelledError(),
}


@pytest.mark.parametrize("name", sorted(TRANSIENT))
def test_transient_errors_are_retried(name: str) -> None:
    assert transient_reason(TRANSIENT[name]) is not None, name


@pytest.mark.parametrize("name", sorted(NOT_TRANSIENT))
def test_other_errors_fail_at_once(name: str) -> None:
    assert transient_reason(NOT_TRANSIENT[name]) is None, name


def test_reason_says_what_was_seen() -> None:
    assert transient_reason(translate_boto_error(client_error("SlowDown", 503))) == \
        "S3 503 SlowDown"
    assert transient_reason(rex.WorkerCrashedError()) == "ray: WorkerCrashedError"
    assert transient_reason(http_status_error(429)) == "HTTP 429"


def test_suppressed_context_is_not_followed() -> None:
    try:
        try:
            raise ConnectionResetError()
        except ConnectionResetError:
            raise ValueError("bug in the handler") from None
    except ValueError as exc:
        assert [type(e) for e in exception_chain(exc)] == [ValueError]
        assert transient_reason(exc) is None


def test_chain_of_a_ray_task_error_reaches_the_remote_exception() -> None:
    inner = ConnectionResetError()
    err = ray_task_error(inner)
    assert list(exception_chain(err)) == [err, inner]


def test_a_cyclic_chain_ends() -> None:
    a, b = OSError("a"), OSError("b")
    a.__cause__, b.__cause__ = b, a
    assert [str(e) for e in exception_chain(a)] == ["a", "b"]
    assert transient_reason(a) is None


def test_every_task_uses_the_one_classifier() -> None:
    """Every Prefect task helixflow defines retries through `is_transient`, and only it."""
    import helixflow
    import helixflow.app
    import helixflow.blocks
    import helixflow.flows
    import helixflow.tasks

    found: dict[str, Task] = {}
    for package in (helixflow, helixflow.app, helixflow.tasks, helixflow.flows,
                    helixflow.blocks):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for name, obj in vars(module).items():
                if isinstance(obj, Task) and obj.fn.__module__ == module.__name__:
                    found[f"{module.__name__}.{name}"] = obj
    assert len(found) >= 29, sorted(found)
    wrong = {name: (t.retries, t.retry_condition_fn) for name, t in found.items()
             if t.retry_condition_fn is not is_transient or t.retries < 1}
    assert not wrong, wrong


# -- against the real Prefect server (and real Ray) ---------------------------------------

@task(name="buggy-task", **retry_options())
def buggy_task() -> None:
    """A bug: retrying cannot fix it."""
    raise ValueError("k must be an integer in 1..N-1 = 5, got 30")


@task(name="flaky-task", **retry_options())
def flaky_task(marker: str) -> str:
    """The first attempt meets a connection reset, the next one succeeds."""
    path = Path(marker)
    if not path.exists():
        path.write_text("attempt 1")
        raise ConnectionResetError(104, "Connection reset by peer")
    return "ok"


@task(name="worker-crash-task", **retry_options())
def worker_crash_task(marker: str) -> str:
    """Runs a Ray task whose worker process dies the first time (a real WorkerCrashedError;
    Ray's own retry is off so that the Prefect task sees it)."""
    import ray

    @ray.remote(max_retries=0)
    def crash_once(marker: str) -> str:
        path = Path(marker)
        if not path.exists():
            path.write_text("crashed")
            os._exit(1)
        return "ok"

    return str(ray.get(crash_once.remote(marker)))


@flow(name="retry-classifier-check")
def retry_check_flow(marker: str, crash_marker: str | None) -> dict[str, Any]:
    futures = {"flaky": flaky_task.submit(marker), "buggy": buggy_task.submit()}
    if crash_marker:
        futures["crash"] = worker_crash_task.submit(crash_marker)
    for future in futures.values():
        future.wait()
    return {name: future.state.type.value for name, future in futures.items()}


def task_runs_of(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return {run.name.rsplit("-", 1)[0]: (run, client.read_task_run_states(run.id))
                for run in runs}


def logs_of(task_run_id: Any, needle: str, deadline_s: float = 30) -> str:
    """The task run's logs once one contains `needle` (logs reach the API asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    deadline = time.monotonic() + deadline_s
    text = ""
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(
                task_run_id=LogFilterTaskRunId(any_=[task_run_id])))
        text = "\n".join(log.message for log in logs)
        if needle in text:
            return text
        time.sleep(0.5)
    return text


@pytest.mark.integration
def test_bug_fails_in_one_attempt_transient_error_succeeds_on_retry(
    prefect_api: str, tmp_path: Path
) -> None:
    import ray

    ray.init(num_cpus=1, include_dashboard=False, namespace="test-retries",
             runtime_env={"env_vars": {"PREFECT_API_URL": prefect_api}})
    try:
        state = retry_check_flow(str(tmp_path / "flaky"), str(tmp_path / "crash"),
                                 return_state=True)
    finally:
        ray.shutdown()
    runs = task_runs_of(state.state_details.flow_run_id)

    buggy, buggy_states = runs["buggy-task"]
    assert buggy.state.is_failed()
    assert buggy.run_count == 1
    assert [s.type.value for s in buggy_states].count("RUNNING") == 1
    logs = logs_of(buggy.id, "Traceback")
    assert "not retried (not a transient error): ValueError" in logs
    assert "Traceback (most recent call last)" in logs and "got 30" in logs

    flaky, flaky_states = runs["flaky-task"]
    assert flaky.state.is_completed()
    assert flaky.run_count == 2
    assert [s.type.value for s in flaky_states].count("RUNNING") == 2
    assert "transient error (connection: ConnectionResetError)" in \
        logs_of(flaky.id, "transient error")

    crash, crash_states = runs["worker-crash-task"]
    assert crash.state.is_completed()
    assert crash.run_count == 2
    assert [s.type.value for s in crash_states].count("RUNNING") == 2
    assert "transient error (ray: WorkerCrashedError)" in logs_of(crash.id, "transient error")
