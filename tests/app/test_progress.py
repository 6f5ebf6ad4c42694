"""The live progress view: stage tallies from task runs, the status line, stage lines."""

from __future__ import annotations

import io
import logging
import re
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import State, StateType, TaskRun
from prefect.logging.loggers import PrefectLogAdapter
from rich.console import Console

from helixflow.app.progress import LiveProgress, status_line, tally
from helixflow.flows.stages import log_stage_done

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _run(key: str, state: StateType, start: float | None = None, end: float | None = None,
         name: str | None = None) -> TaskRun:
    return TaskRun(
        id=uuid4(), flow_run_id=uuid4(), task_key=f"{key}-1a2b3c4d", dynamic_key="0",
        name=key, state_type=state, state_name=name or state.value.title(),
        state=State(type=state, name=name or state.value.title()),
        start_time=None if start is None else T0 + timedelta(seconds=start),
        end_time=None if end is None else T0 + timedelta(seconds=end),
        total_run_time=timedelta(seconds=(end or 0) - (start or 0)),
    )


def test_tally_groups_task_runs_by_stage_in_run_order() -> None:
    runs = [
        _run("correct_reads", StateType.RUNNING, 5),
        _run("filter_reads", StateType.COMPLETED, 1, 3),
        _run("filter_reads", StateType.COMPLETED, 2, 4, name="Cached"),
        _run("detect_sample_adapters", StateType.COMPLETED, 0, 1),
        _run("count_shard_kmers", StateType.FAILED, 4, 5),
        _run("mystery_task", StateType.PENDING),
    ]
    stages = tally(runs)
    assert list(stages) == ["qc", "correct", "mystery_task"]
    qc = stages["qc"]
    assert (qc.total, qc.completed, qc.cached, qc.running, qc.failed) == (3, 3, 1, 0, 0)
    assert qc.finished and qc.span_seconds == 4.0 and qc.task_seconds == 5.0
    correct = stages["correct"]
    assert (correct.total, correct.running, correct.failed) == (2, 1, 1)
    assert not correct.finished


def test_status_line_names_what_runs_now() -> None:
    stages = tally([_run("filter_reads", StateType.COMPLETED, 0, 1),
                    _run("hash_fragments", StateType.RUNNING, 1),
                    _run("hash_fragments", StateType.PENDING)])
    line = status_line(stages, ["inputs", "ingest", "qc", "dedup", "report"], 75.0)
    assert line == "[01:15] stages 1/5 · dedup 0/2 (1 running)"


def test_stage_lines_come_from_the_flows_log_records(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    base = logging.getLogger("prefect.flow_runs")
    monkeypatch.setattr(base, "level", logging.INFO)  # as Prefect's logging config sets it
    logger = PrefectLogAdapter(base, {"flow_run_id": "run-1"})  # as `get_run_logger` makes
    with LiveProgress(console, ["qc"], poll_seconds=60) as progress:
        progress._stages = tally([_run("filter_reads", StateType.COMPLETED, 0, 2)])
        logger.info("Beginning flow run")
        assert progress.flow_run_id == "run-1"  # the first record names the run to follow
        log_stage_done(logger, "qc", "90 of 100 reads kept (90.0 %)")
        logger.info("an ordinary line")
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("✓")]
    assert len(lines) == 1, buffer.getvalue()
    assert re.fullmatch(r"✓ \[00:00\] qc \(\+0\.\d s\): 90 of 100 reads kept \(90\.0 %\) · "
                        r"1 task\(s\)", lines[0]), lines
