"""Named resource profiles for Ray task placement, applied at call sites.

Tasks say which profile they need; how much that is lives here, in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PROFILES: dict[str, dict[str, Any]] = {
    # metadata work: hashing small files, writing manifests
    "light": {"num_cpus": 0.25},
    # one streaming pass over a sample (decompression thread + parse + Parquet encode)
    "stream": {"num_cpus": 1, "scheduling_strategy": "SPREAD"},
    # a CPU-bound kernel over one shard
    "shard": {"num_cpus": 1, "scheduling_strategy": "SPREAD"},
}


@contextmanager
def profile(name: str, **overrides: Any) -> Iterator[None]:
    """Run the tasks submitted inside with the named profile's Ray options."""
    from prefect_ray.context import remote_options  # only flows submit: tasks need not load it

    try:
        options = {**PROFILES[name], **overrides}
    except KeyError:
        raise ValueError(f"unknown resource profile {name!r}; known: {sorted(PROFILES)}") from None
    with remote_options(**options):
        yield


def where_am_i() -> str:
    """The Ray node id executing this code (or the host name outside Ray), for lineage."""
    import socket
    import sys

    ray = sys.modules.get("ray")  # not imported: this process is not on Ray
    if ray is not None and ray.is_initialized():
        return f"ray:{ray.get_runtime_context().get_node_id()}"
    return f"host:{socket.gethostname()}"
