"""Tasks: state, the hosted API's status flow, the event log, and bounded retention."""

from __future__ import annotations

import asyncio
import copy
import inspect
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .._status import TaskStatus
from ._apps import AppContext
from ._eventlog import EventLog, Frame, Snapshot, encode_json
from ._hub import ChangeHub
from ._options import AppFunction

__all__ = ["Task", "TaskStore"]

# The statuses a task walks through before its app runs, in order.
_BEFORE_RUN = (
    TaskStatus.QUEUED,
    TaskStatus.DISPATCHED,
    TaskStatus.PREPARING,
    TaskStatus.SERVING,
    TaskStatus.SETTING_UP,
    TaskStatus.RUNNING,
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Task:
    """One task: its state, its event log, and the coroutine that runs it.

    Every mutation happens on the server's loop while holding the hub's lock, appends one event
    to `log` and notifies the hub. Status changes append a full snapshot; app reports between
    two awaits of the app are coalesced into one per-step `{"data", "fields"}` update.
    """

    def __init__(
        self,
        *,
        app: str,
        input: dict[str, Any],
        session_id: str | None,
        hub: ChangeHub,
        max_events: int,
        on_finished: Callable[[Task], None] | None = None,
    ) -> None:
        token = secrets.token_hex(10)
        self.id = f"task_{token}"
        self.short_id = token[:8]
        self.app = app
        self.input = input
        self.session_id = session_id
        self.created_at = self.updated_at = _now()
        self.status = TaskStatus.RECEIVED
        self.output: Any = None
        self.error: str | None = None
        self.logs: list[str] = []
        self.progress: dict[str, float] | None = None
        self.log = EventLog(max_events)
        self.runner: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self.finished_at: float | None = None
        self._hub = hub
        self._on_finished = on_finished
        self._pending_logs: list[str] = []
        self._pending_progress: dict[str, float] | None = None
        self._pending_output: tuple[Any] | None = None
        self._flush_scheduled = False
        with hub.lock:
            self.log.append(Frame(encode_json(self.to_dict())))
        hub.notify()

    # -- reading ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The full task object of the wire contract (a consistent copy, from any thread)."""
        with self._hub.lock:
            return self._to_dict()

    def _to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "short_id": self.short_id,
            "app": self.app,
            "status": self.status.code,
            "status_text": self.status.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "session_id": self.session_id,
            "logs": list(self.logs),
            "progress": dict(self.progress) if self.progress is not None else None,
        }

    def snapshot(self) -> Snapshot:
        """The current full state as one frame, consistent with `log.last_seq`."""
        with self._hub.lock:
            return Snapshot(
                self.log.last_seq, (Frame(encode_json(self._to_dict())),), self.status.is_terminal
            )

    @property
    def is_terminal(self) -> bool:
        """Whether the task has ended (completed, failed, cancelled)."""
        return self.status.is_terminal

    # -- app reports (through AppContext) ---------------------------------------------------

    def add_log(self, line: str) -> None:
        """Queue a log line for the next step update."""
        if not self.is_terminal:
            self._pending_logs.append(line)
            self._schedule_flush()

    def set_progress(self, current: float, total: float) -> None:
        """Queue a progress report for the next step update."""
        if not self.is_terminal:
            self._pending_progress = {"current": current, "total": total}
            self._schedule_flush()

    def set_partial(self, output: Any) -> None:
        """Queue an intermediate output for the next step update (must encode as JSON)."""
        encode_json(output)  # raise to the app now, not later in the runner
        if not self.is_terminal:
            self._pending_output = (copy.deepcopy(output),)
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_step)

    def flush_step(self) -> None:
        """Append one per-step update with everything reported since the last one."""
        self._flush_scheduled = False
        if self.is_terminal or not (
            self._pending_logs or self._pending_progress is not None or self._pending_output
        ):
            return
        data: dict[str, Any] = {"id": self.id, "status": self.status.code}
        with self._hub.lock:
            if self._pending_logs:
                data["logs"] = self._pending_logs
                self.logs.extend(self._pending_logs)
                self._pending_logs = []
            if self._pending_progress is not None:
                data["progress"] = self.progress = self._pending_progress
                self._pending_progress = None
            if self._pending_output is not None:
                data["output"] = self.output = self._pending_output[0]
                self._pending_output = None
            self.updated_at = _now()
            fields = [key for key in data if key not in ("id", "status")]
            self.log.append(Frame(encode_json({"data": data, "fields": fields})))
        self._hub.notify()

    # -- status flow --------------------------------------------------------------------------

    def transition(
        self, status: TaskStatus, *, output: Any = None, error: str | None = None
    ) -> None:
        """Move to `status` and log a full snapshot; terminal statuses close the log."""
        if self.is_terminal:
            return
        self.flush_step()
        with self._hub.lock:
            self.status = status
            self.updated_at = _now()
            if status is TaskStatus.COMPLETED:
                self.output = output
            elif status.is_terminal:
                self.output = None
                self.error = error
            if status.is_terminal:
                self.finished_at = time.monotonic()
            self.log.append(Frame(encode_json(self._to_dict())), terminal=status.is_terminal)
        self._hub.notify()
        if status.is_terminal and self._on_finished is not None:
            self._on_finished(self)

    def request_cancel(self) -> None:
        """Cancel: cancelling (8) now, cancelled (12) once the runner has stopped."""
        if self.is_terminal or self.cancel_requested:
            return
        self.cancel_requested = True
        self.transition(TaskStatus.CANCELLING)
        if self.runner is not None and not self.runner.done():
            self.runner.cancel()
        else:
            self.transition(TaskStatus.CANCELLED)

    async def run(
        self, fn: AppFunction, *, transition_delay: float, hold_at: TaskStatus | None
    ) -> None:
        """Walk the status flow around one call of the app (the runner coroutine)."""
        if hold_at is TaskStatus.RECEIVED:
            await asyncio.Event().wait()  # until cancelled
        for status in _BEFORE_RUN:
            await asyncio.sleep(transition_delay)
            self.transition(status)
            if status is hold_at:
                await asyncio.Event().wait()
        ctx = AppContext(self, task_id=self.id, app=self.app)
        try:
            result = fn(copy.deepcopy(self.input), ctx)
            if inspect.isawaitable(result):
                result = await result
            output = _as_output(result)
        except Exception as exc:  # the app failed: that is the task's outcome, not ours
            if not self.cancel_requested:
                self.transition(TaskStatus.FAILED, error=str(exc) or type(exc).__name__)
            return
        if self.cancel_requested:
            return  # the app swallowed its cancellation; runner_done reports it cancelled
        self.transition(TaskStatus.UPLOADING)
        await asyncio.sleep(transition_delay)
        self.transition(TaskStatus.COMPLETED, output=output)

    def runner_done(self, runner: asyncio.Task[None]) -> None:
        """Finish a task whose runner stopped without ending it (cancelled, crashed, shutdown)."""
        if runner.cancelled():
            if self.cancel_requested:
                self.transition(TaskStatus.CANCELLED)
            else:
                self.transition(TaskStatus.FAILED, error="the emulator stopped")
            return
        exc = runner.exception()
        if exc is not None:
            self.transition(TaskStatus.FAILED, error=f"emulator error: {exc!r}")
        elif self.cancel_requested:  # the app swallowed its cancellation and returned
            self.transition(TaskStatus.CANCELLED)


def _as_output(result: Any) -> dict[str, Any]:
    """The final output is always an object: None becomes {}, other values {"result": v}."""
    if result is None:
        result = {}
    elif not isinstance(result, dict):
        result = {"result": result}
    encode_json(result)  # a non-JSON output fails the task with a clear message
    return copy.deepcopy(result)


class TaskStore:
    """All tasks by id; finished ones are kept for `ttl` seconds and at most `max_finished`."""

    def __init__(self, hub: ChangeHub, *, ttl: float, max_finished: int) -> None:
        self._hub = hub
        self._ttl = ttl
        self._max_finished = max_finished
        self._tasks: dict[str, Task] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()

    def add(self, task: Task) -> None:
        """Store a new task."""
        with self._hub.lock:
            self._tasks[task.id] = task
            self.expire()

    def get(self, task_id: str) -> Task | None:
        """The task with this id, unless unknown or expired."""
        with self._hub.lock:
            self.expire()
            return self._tasks.get(task_id)

    def __len__(self) -> int:
        with self._hub.lock:
            return len(self._tasks)

    def mark_finished(self, task: Task) -> None:
        """Start the retention clock of a task that has ended; drop the oldest over the cap."""
        with self._hub.lock:
            self._finished[task.id] = task.finished_at or time.monotonic()
            self.expire()

    def expire(self) -> int:
        """Forget finished tasks past their ttl or over the count cap; return how many."""
        dropped = 0
        with self._hub.lock:
            deadline = time.monotonic() - self._ttl
            while self._finished:
                task_id, finished = next(iter(self._finished.items()))
                if finished > deadline and len(self._finished) <= self._max_finished:
                    break
                self._finished.popitem(last=False)
                self._tasks.pop(task_id, None)
                dropped += 1
        if dropped:
            self._hub.notify()
        return dropped

    def runners(self) -> list[asyncio.Task[None]]:
        """The runners still going (for shutdown)."""
        with self._hub.lock:
            return [t.runner for t in self._tasks.values() if t.runner and not t.runner.done()]

    def next_expiry_in(self) -> float | None:
        """Seconds until the oldest finished task expires, or None when none is finished."""
        with self._hub.lock:
            if not self._finished:
                return None
            oldest = next(iter(self._finished.values()))
            return max(0.0, oldest + self._ttl - time.monotonic())
