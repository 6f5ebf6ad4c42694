"""Stopping a run politely on SIGINT (Ctrl-C) and SIGTERM.

SIGTERM is what Slurm, Kubernetes and systemd send at a time limit or on preemption.
Both signals end a `helixflow run` the same way: the flow unwinds in the main thread
(the Slurm sub-flow `scancel`s its jobs on the way), Ray is shut down (its tasks end),
the flow run, its sub-flow runs and their unfinished task runs are marked Cancelled,
and the process exits with 128 + the signal number. Finished tasks keep their cached
results, so the same command resumes.

Why a watchdog: a signal handler's exception is raised wherever the main thread is,
and where C code calls back into Python (Ray's object deserialisation, for one) it can
be turned into a `SystemError` or lost. So after the first signal the interrupt is
raised again every `NUDGE_SECONDS` until the flow has unwound, and a flow that ends in
any state but Completed after a signal counts as stopped. A second real signal exits
at once, without cleanup.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from helixflow.errors import HelixflowError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
NUDGE_SECONDS = 2.0


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by a stop signal. A `KeyboardInterrupt`, so that no
    `except Exception` in flow code swallows it and Prefect treats it as Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunStopped(HelixflowError):
    """The run was stopped by a signal; its flow run is Cancelled and can be resumed."""

    def __init__(self, signum: int, flow_run_url: str | None) -> None:
        where = f"flow run {flow_run_url} marked Cancelled" if flow_run_url else (
            "the flow run had not started")
        super().__init__(f"stopped by {signal.Signals(signum).name}: the run's Ray tasks "
                         f"and Slurm jobs were stopped, {where}; run the same command "
                         "again to resume from the cache")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


class StopSignals:
    """SIGINT/SIGTERM handling for one run in this process (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.unwound = threading.Event()
        self._active = False
        self._deferred = False
        self._reinject = False
        self._previous: dict[int, Any] = {}

    @property
    def stopping(self) -> bool:
        """A stop signal arrived, or (SIGTERM) Prefect's handler is turning one into a
        `TerminationSignal` that reaches ours next (as it does in a sub-flow)."""
        if self.signum is not None:
            return True
        if not self._active:
            return False
        from prefect.exceptions import TerminationSignal

        return isinstance(sys.exc_info()[1], TerminationSignal)

    @contextlib.contextmanager
    def scope(self) -> Iterator[StopSignals]:
        """Handle the stop signals while the block runs (only in the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self.signum, self._reinject, self._deferred = None, False, False
        self.unwound.clear()
        self._previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        self._active = True
        self.arm()
        try:
            yield self
        finally:
            self._active = False
            self.unwound.set()
            for sig, old in self._previous.items():
                signal.signal(sig, old)

    def arm(self) -> None:
        """Install the handlers again: `ray.init` and Prefect's flow engine replace
        SIGTERM's with their own."""
        if self._active and threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._handle)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal during the block is acted on when it ends (code that must not be
        interrupted halfway, such as connecting to Ray)."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False
        if self.signum is not None:
            self.unwound.set()  # raised from here, not from a handler: nothing to nudge
            raise Interrupted(self.signum)

    def _handle(self, signum: int, frame: Any) -> None:
        if self._reinject:  # the watchdog's nudge
            self._reinject = False
            if not self.unwound.is_set():
                raise Interrupted(self.signum or signum)
            return
        if self.signum is not None:
            os._exit(128 + signum)  # a second signal: stop now, without cleanup
        self.signum = signum
        if not self._deferred:
            raise self._start()

    def _start(self) -> Interrupted:
        threading.Thread(target=self._nudge, name="helixflow-stop", daemon=True).start()
        assert self.signum is not None
        return Interrupted(self.signum)

    def _nudge(self) -> None:
        while not self.unwound.wait(NUDGE_SECONDS):
            self._reinject = True
            _thread.interrupt_main(signal.SIGINT)


def cancel_flow_run(flow_run_id: UUID, message: str) -> None:
    """Mark a flow run, its unfinished (or crashed) sub-flow runs and their unfinished task
    runs Cancelled with `message` (forced: a crashed run is already final)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    settled = (StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED)
    unfinished = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING,
                  StateType.PAUSED, StateType.CANCELLING]
    with get_client(sync_client=True) as client:
        runs, parents = [flow_run_id], [flow_run_id]
        while parents:
            children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents)))
            parents = [c.id for c in children if c.state_type not in settled]
            runs.extend(parents)
        task_runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=runs),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=unfinished))))
        for task_run in task_runs:
            client.set_task_run_state(task_run.id, Cancelled(message=message), force=True)
        for run_id in reversed(runs):  # sub-flows first, the run itself last
            client.set_flow_run_state(run_id, Cancelled(message=message), force=True)


#: The one set of stop handlers of this process (the CLI's run and its Slurm allocation).
STOP = StopSignals()
