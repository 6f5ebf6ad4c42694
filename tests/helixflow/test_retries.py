"""The retry classifier on real exception objects: botocore, s3fs, aiohttp, httpx, Ray."""

from __future__ import annotations

import importlib
import pkgutil

import aiohttp
import httpx
import pytest
from botocore import exceptions as bex
from prefect.exceptions import PrefectHTTPStatusError
from prefect.tasks import Task
from ray import exceptions as rex
from s3fs.errors import translate_boto_error

from helixflow.errors import HelixflowError, InputError, exception_chain
from helixflow.retries import is_transient, transient_reason


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
    import blocks
    import flows
    import helixflow
    import tasks

    found: dict[str, Task] = {}
    for package in (helixflow, tasks, flows, blocks):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for name, obj in vars(module).items():
                if isinstance(obj, Task) and obj.fn.__module__ == module.__name__:
                    found[f"{module.__name__}.{name}"] = obj
    assert len(found) >= 29, sorted(found)
    wrong = {name: (t.retries, t.retry_condition_fn) for name, t in found.items()
             if t.retry_condition_fn is not is_transient or t.retries < 1}
    assert not wrong, wrong
