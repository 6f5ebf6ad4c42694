"""The run's poll rhythm: the backoff schedule."""

from __future__ import annotations

import pytest

from helixflow.slurm_jobs import backoff


def test_backoff_schedule() -> None:
    it = backoff(1.0, 2.0, 10.0)
    assert [next(it) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    flat = backoff(0.5, 1.0, 0.5)
    assert [next(flat) for _ in range(3)] == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError):
        next(backoff(0, 2, 1))
