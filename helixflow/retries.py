"""Retry only what is transient: a user's bad input fails at once, a network blip retries."""

from __future__ import annotations

from typing import Any

from helixflow.errors import HelixflowError


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: False for `HelixflowError` (retrying can't fix it)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return True
    return not isinstance(exc, HelixflowError)


# Default retry settings for tasks that touch the network or the store.
RETRIES = 2
RETRY_DELAYS = [2, 10]
