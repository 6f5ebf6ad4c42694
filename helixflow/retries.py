"""Retry only what is transient: a network blip or a lost Ray worker retries, a bug does not.

One classifier for every task (`retry_options` carries it): an exception is transient when
it, or an exception it was raised from (`__cause__`/`__context__`, or a `RayTaskError`'s
`cause`), is a Ray system failure, an S3/HTTP fault that the same request may not meet
again, or the Prefect API asking to come back later. Anything else — a bug, a kernel's
`ValueError`, a `HelixflowError`, access denied, a missing object — fails on the first
attempt, with its traceback in the task run's logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from helixflow.errors import HelixflowError, exception_chain

# Default retry settings of every task (the caller may override them per call).
RETRIES = 2
RETRY_DELAYS = [2, 10]

# HTTP statuses that say "try again": timeout, too many requests, server-side trouble.
TRANSIENT_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})

# Exceptions that end the search down a chain: what they say holds whatever caused them.
_PERMANENT = (HelixflowError, PermissionError, FileNotFoundError, FileExistsError,
              IsADirectoryError, NotADirectoryError)


def transient_reason(exc: BaseException) -> str | None:
    """Why `exc` is worth retrying (e.g. `"S3 503 SlowDown"`), or None when it is not.

    Example:
        >>> transient_reason(ConnectionResetError(104, "Connection reset by peer"))
        'connection: ConnectionResetError'
        >>> transient_reason(ValueError("k must be an integer")) is None
        True
    """
    for err in exception_chain(exc):
        if isinstance(err, _PERMANENT):
            return None
        for check in _CHECKS:
            reason = check(err)
            if reason:
                return reason
    return None


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only a transient exception (`transient_reason`).

    Prefect logs nothing when a retry condition declines while retries remain, so the
    failure and its traceback are logged here, in the task run's logs.
    """
    from prefect.logging.loggers import task_run_logger

    logger = task_run_logger(task_run, task=task)
    exc = state.result(raise_on_failure=False)
    if not isinstance(exc, BaseException):
        logger.error("task run failed without an exception (%r): not retried", exc)
        return False
    reason = transient_reason(exc)
    if reason is None:
        logger.error("not retried (not a transient error): %s: %s", type(exc).__name__, exc,
                     exc_info=(type(exc), exc, exc.__traceback__))
        return False
    logger.warning("transient error (%s), retrying: %s: %s", reason, type(exc).__name__, exc)
    return True


def retry_options() -> dict[str, Any]:
    """The retry options every helixflow task shares: `RETRIES` attempts more, after
    `RETRY_DELAYS` seconds, only for transient errors.

    Example:
        >>> @task(name="identify-input", **retry_options())  # doctest: +SKIP
        ... def identify_input(uri: str) -> FileRef: ...
    """
    return {"retries": RETRIES, "retry_delay_seconds": RETRY_DELAYS,
            "retry_condition_fn": is_transient, "on_failure": [_lineage_of_failure]}


def _lineage_of_failure(task: Any, task_run: Any, state: Any) -> None:
    """A task failed for good: its OpenLineage FAIL event (when OpenLineage is set up)."""
    from helixflow.openlineage import on_task_failure  # the client loads only when needed

    on_task_failure(task, task_run, state)


# -- the checks, one per family of errors (each module imported once, when first needed) --

def _ray(err: BaseException) -> str | None:
    from ray import exceptions as rex

    if isinstance(err, rex.RayActorError):
        # An actor whose __init__ raised died of a bug (the cause follows in the chain).
        return None if err.actor_init_failed else f"ray: {type(err).__name__}"
    system = (rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError,
              rex.RaySystemError, rex.LocalRayletDiedError, rex.OutOfMemoryError,
              rex.RpcError)
    return f"ray: {type(err).__name__}" if isinstance(err, system) else None


def _botocore(err: BaseException) -> str | None:
    from botocore import exceptions as bex
    from botocore.parsers import ResponseParserError  # a throttled reply with broken XML

    if isinstance(err, bex.ClientError):
        return _client_error(err)
    transport = (bex.ConnectionError, bex.HTTPClientError, bex.IncompleteReadError,
                 ResponseParserError)
    return f"S3 transport: {type(err).__name__}" if isinstance(err, transport) else None


def _client_error(err: Any) -> str | None:
    """A botocore `ClientError`, judged as botocore's standard retry mode judges it."""
    from botocore.awsrequest import AWSResponse
    from botocore.retries.standard import (
        OrRetryChecker,
        RetryContext,
        ThrottledRetryableChecker,
        TransientRetryableChecker,
    )

    response = getattr(err, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    context = RetryContext(
        attempt_number=1, parsed_response=response,
        http_response=AWSResponse(None, status, {}, None) if status else None,
    )
    checker = OrRetryChecker([TransientRetryableChecker(), ThrottledRetryableChecker()])
    if checker.is_retryable(context) or status in TRANSIENT_HTTP_STATUS:
        return f"S3 {status} {code}"
    return None


def _aiohttp(err: BaseException) -> str | None:
    import aiohttp

    transport = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
    return f"HTTP transport: {type(err).__name__}" if isinstance(err, transport) else None


def _httpx(err: BaseException) -> str | None:
    import httpx

    if isinstance(err, httpx.HTTPStatusError):
        status = err.response.status_code
        return f"HTTP {status}" if status in TRANSIENT_HTTP_STATUS else None
    transport = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
    return f"HTTP transport: {type(err).__name__}" if isinstance(err, transport) else None


def _builtin(err: BaseException) -> str | None:
    if isinstance(err, ConnectionError | TimeoutError):
        return f"connection: {type(err).__name__}"
    return None


# In order: Ray, botocore/S3, aiohttp (s3fs's transport), httpx (Prefect's client), builtins.
_CHECKS: tuple[Callable[[BaseException], str | None], ...] = (
    _ray, _botocore, _aiohttp, _httpx, _builtin)
