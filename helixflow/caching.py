"""Task cache keys built from content, not names.

A key combines: the task's identity and explicit `version`, helixflow's version, the
content identity of every input file (`FileRef.identity`: sha256, or ETag+size on S3),
the parameters that change the output, and the versions of external tools the task
runs. Runtime-only parameters (where to write, which run) are left out, so a second
run over the same bytes reuses the first run's results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from pydantic import BaseModel

import helixflow
from helixflow.artifacts import FileRef
from helixflow.tools import tool_version

# Parameters that say where or for which run to write, never what to compute.
RUNTIME_PARAMETERS = frozenset({"store", "run_id"})


def stable_value(value: Any) -> Any:
    """A JSON-able stand-in for a task input in which files appear only by content."""
    if isinstance(value, FileRef):
        return {"file": value.identity}
    # Models and dataclasses field by field, so files nested in them still count by content
    if isinstance(value, BaseModel):
        names = list(type(value).model_fields)
        return {"__type__": type(value).__qualname__,
                **{n: stable_value(getattr(value, n)) for n in names}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = [f.name for f in dataclasses.fields(value)]
        return {"__type__": type(value).__qualname__,
                **{n: stable_value(getattr(value, n)) for n in names}}
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return {str(k): stable_value(v) for k, v in items}
    if isinstance(value, list | tuple):
        return [stable_value(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(stable_value(v) for v in value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "__fspath__"):
        raise TypeError("pass files to cached tasks as FileRef/Artifact, not paths")
    raise TypeError(f"cannot build a stable cache key from {type(value).__name__}")


def content_key(
    task_identity: str,
    version: str | None,
    inputs: dict[str, Any],
    *,
    tools: tuple[str, ...] = (),
    exclude: frozenset[str] = RUNTIME_PARAMETERS,
) -> str:
    """The cache key for one call: pure, so it is unit-testable without Prefect."""
    payload = {
        "task": task_identity,
        "version": version or "0",
        "helixflow": helixflow.__version__,
        "inputs": {k: stable_value(v) for k, v in sorted(inputs.items()) if k not in exclude},
        "tools": {name: tool_version(name) for name in sorted(tools)},
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


@dataclass
class ContentInputs(CachePolicy):
    """Prefect cache policy keyed on input content, parameters, code and tool versions.

    Example:
        >>> from prefect import task
        >>> @task(version="1", cache_policy=ContentInputs(tools=("samtools",)))
        ... def sort_bam(bam: FileRef, threads: int) -> FileRef: ...
    """

    tools: tuple[str, ...] = ()
    exclude: frozenset[str] = field(default_factory=lambda: RUNTIME_PARAMETERS)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        fn = task_ctx.task.fn
        # Named as before the one import root (`tasks.qc`, not `helixflow.tasks.qc`), so
        # the move into the helixflow package kept every cached result.
        module = fn.__module__.removeprefix("helixflow.")
        identity = f"{module}.{fn.__qualname__}"
        return content_key(
            identity, task_ctx.task.version, inputs, tools=self.tools, exclude=self.exclude
        )


def stage_options(version: str, *, tools: tuple[str, ...] = ()) -> dict[str, Any]:
    """The options every cached stage task shares: explicit code version, content cache
    key (with the external tools it runs), persisted results, retries on transient errors.

    Example:
        >>> @task(name="sort-bam", **stage_options("1", tools=("samtools",)))  # doctest: +SKIP
        ... def sort_bam(bam: FileRef) -> FileRef: ...
    """
    from helixflow.retries import retry_options

    return {
        "version": version,
        "cache_policy": ContentInputs(tools=tools),
        "persist_result": True,
        **retry_options(),
    }
