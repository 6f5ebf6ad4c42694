"""What a run is doing, stage by stage: live on the console, and as a breakdown after it.

Both read the flow run's task runs from the Prefect API (Ray runs the tasks in other
processes, so the API is where their states meet) and group them by stage with
`flows.stages`. The flow itself logs one `stage done` line per finished stage with its
figure; the console shows those as the stage's line instead of as a log record.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.markup import escape
from rich.status import Status

from helixflow.flows.stages import STAGE_DONE, STAGES, stage_of

_PAGE = 200


@dataclass
class StageTally:
    """One stage's task runs at one moment."""

    stage: str
    total: int = 0
    completed: int = 0
    cached: int = 0
    running: int = 0
    failed: int = 0
    task_seconds: float = 0.0
    """Summed run time of its task runs (kernel and task-wrapper time, not waiting)."""
    first_start: datetime | None = None
    last_end: datetime | None = None

    @property
    def span_seconds(self) -> float:
        """Wall time from its first task's start to its last task's end."""
        if self.first_start is None or self.last_end is None:
            return 0.0
        return max(0.0, (self.last_end - self.first_start).total_seconds())

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.completed + self.failed == self.total


def read_task_runs(client: Any, flow_run_id: UUID | str) -> list[Any]:
    """Every task run of a flow run and of its sub-flow runs (a sync Prefect client)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    runs = [UUID(str(flow_run_id))]
    children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=runs)))
    runs += [child.id for child in children]
    found: list[Any] = []
    while True:
        page = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)),
                                     limit=_PAGE, offset=len(found))
        found += page
        if len(page) < _PAGE:
            return found


def tally(task_runs: Iterable[Any]) -> dict[str, StageTally]:
    """Task runs grouped by stage, in the pipeline's stage order (unknown tasks last)."""
    order = {stage: i for i, stage in enumerate(STAGES)}
    stages: dict[str, StageTally] = {}
    for run in task_runs:
        stage = stage_of(run.task_key)
        t = stages.setdefault(stage, StageTally(stage))
        t.total += 1
        state = run.state_type.value if run.state_type else "PENDING"
        if state == "COMPLETED":
            t.completed += 1
            t.cached += run.state_name == "Cached"
        elif state == "RUNNING":
            t.running += 1
        elif state in ("FAILED", "CRASHED", "CANCELLED"):
            t.failed += 1
        t.task_seconds += run.total_run_time.total_seconds() if run.total_run_time else 0.0
        if run.start_time is not None:
            t.first_start = min(filter(None, (t.first_start, run.start_time)))
        if run.end_time is not None:
            t.last_end = max(filter(None, (t.last_end, run.end_time)))
    return dict(sorted(stages.items(), key=lambda kv: order.get(kv[0], len(order))))


def status_line(stages: dict[str, StageTally], planned: list[str], elapsed: float) -> str:
    """The live line: stages done/total, what is running now, elapsed time."""
    done = sum(1 for s in planned if s in stages and stages[s].finished)
    busy = [t for t in stages.values() if not t.finished]
    now = " · ".join(
        f"{t.stage} {t.completed}/{t.total}" + (f" ({t.running} running)" if t.running else "")
        for t in busy) or "between stages"
    return f"[{_clock(elapsed)}] stages {done}/{len(planned)} · {now}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


@dataclass
class LiveProgress:
    """The console's view of one run while it runs (a context manager).

    Follows the flow run whose log records reach this process first (the CLI runs one
    flow in-process); polls the API once a second on a thread of its own and updates a
    one-line status; prints one line per finished stage when the flow logs its figure.
    """

    console: Console
    planned: list[str]
    label: str = "starting …"
    """The line shown until the run's first task."""
    poll_seconds: float = 1.0
    flow_run_id: str | None = None
    _stages: dict[str, StageTally] = field(default_factory=dict)
    _started: float = field(default_factory=time.perf_counter)
    _last_done: float = 0.0
    _flow_started: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _status: Status | None = None
    _thread: threading.Thread | None = None
    _handler: logging.Handler | None = None

    def __enter__(self) -> LiveProgress:
        self._status = self.console.status(self._line(), spinner="dots")
        self._status.__enter__()
        self._handler = _StageLines(self)
        logging.getLogger("prefect.flow_runs").addHandler(self._handler)
        self._thread = threading.Thread(target=self._poll, name="helixflow-progress",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._handler is not None:
            logging.getLogger("prefect.flow_runs").removeHandler(self._handler)
        if self._status is not None:
            self._status.__exit__(None, None, None)

    def stage_done(self, stage: str, figure: str) -> None:
        """Print a finished stage's line: when, how long since the last one, its figure
        and (once the API has them all) its task runs."""
        now = self.elapsed()
        since, self._last_done = now - self._last_done, now
        t = self._stages.get(stage)
        tasks = "" if t is None or not t.finished else (
            f" · {t.total} task(s)" + (f", {t.cached} cached" if t.cached else ""))
        self.console.print(f"[green]✓[/] [{_clock(now)}] {stage} (+{since:.1f} s): "
                           f"{escape(figure)}{tasks}", highlight=False)

    def elapsed(self) -> float:
        """Seconds since the display started (Ray's and the flow's start included)."""
        return time.perf_counter() - self._started

    def pipeline_seconds(self) -> float | None:
        """Seconds since the flow run's first log record (None if none came)."""
        if self._flow_started is None:
            return None
        return self.elapsed() - self._flow_started

    def _line(self) -> str:
        if not self._stages:
            return f"[{_clock(self.elapsed())}] {self.label}"
        return status_line(self._stages, self.planned, self.elapsed())

    def _poll(self) -> None:
        from prefect.client.orchestration import get_client

        with contextlib.ExitStack() as stack:
            client = None
            while not self._stop.wait(self.poll_seconds):
                # the display must never end the run: a failed poll keeps the last view
                with contextlib.suppress(Exception):
                    if self.flow_run_id is not None:
                        if client is None:  # not before the run: no server to ask yet
                            client = stack.enter_context(get_client(sync_client=True))
                        self._stages = tally(read_task_runs(client, self.flow_run_id))
                if self._status is not None:
                    self._status.update(self._line())


class _StageLines(logging.Handler):
    """Hands the flow's records to the live display: the first names the flow run to
    follow; `stage done` ones are the stages' lines."""

    def __init__(self, progress: LiveProgress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if self.progress.flow_run_id is None:  # the run's first record names it
            self.progress.flow_run_id = getattr(record, "flow_run_id", None)
            self.progress._flow_started = self.progress.elapsed()
        stage = getattr(record, STAGE_DONE, None)
        if stage:
            self.progress.stage_done(stage, getattr(record, "stage_figure", ""))
