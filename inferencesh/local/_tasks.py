"""Tasks: state, the hosted API's status flow, the event log, and bounded retention."""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._status import TaskStatus
from ._apps import AppContext
from ._budget import OVERHEAD, MemoryBudget, Overloaded, Retention
from ._eventlog import Frame, LogEvent, LogSettings, Snapshot, encode_json
from ._files import FileError, FileStore
from ._hub import ChangeHub
from ._journal import Record
from ._options import AppFunction

__all__ = ["CANCEL_GRACE", "Task", "TaskStore"]

#: Seconds a cancelled task's app has to stop before the task ends cancelled (12) anyway.
CANCEL_GRACE = 5.0

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


def _line_cost(line: str) -> int:
    """The bytes one log line counts for, against `max_log_bytes` and the memory budget."""
    return len(line) + OVERHEAD


class Task:
    """One task: its state, its event log, and the coroutine that runs it.

    Every mutation happens on the server's loop while holding the hub's lock, appends one event
    to `log` and notifies the hub. Status changes append a full snapshot; app reports between
    two awaits of the app are coalesced into one per-step `{"data", "fields"}` update. The
    input is held once, as JSON text that every snapshot refers to.
    """

    def __init__(
        self,
        store: TaskStore,
        *,
        app: str,
        input_json: str,
        session_id: str | None,
        record: Record | None = None,
    ) -> None:
        token = secrets.token_hex(10)
        self.id = record.id if record is not None else f"task_{token}"
        self.short_id = token[:8]
        self.app = app
        self.input_json = input_json
        self.session_id = session_id
        self.function: str | None = None  # the function the caller named (AppContext)
        self.created_at = self.updated_at = _now()
        self.status = TaskStatus.RECEIVED
        self.output: Any = None
        self.error: str | None = None
        self.logs: list[str] = []
        self.progress: dict[str, float] | None = None
        self.runner: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self.started_at = time.monotonic()
        self.finished_at: float | None = None
        self._store = store
        self._hub = store.hub
        # Bytes charged besides the event log: the input, and while the task runs its app's
        # own decoded copy of it (given back when the task ends).
        self._held = self.cost_of(input_json)
        self._log_bytes = 0
        self._log_truncated = False
        self._reap_reason: str | None = None
        # Forces cancelled (12) once `CANCEL_GRACE` has passed after a cancel request.
        self._cancel_deadline: asyncio.TimerHandle | None = None
        self._pending_logs: list[str] = []
        self._pending_progress: dict[str, float] | None = None
        self._pending_output: tuple[Any] | None = None
        self._flush_scheduled = False
        if record is not None:
            self._reload(record)
            return
        store.budget.charge(self._held)
        self.log = store.logs.new_log(self)
        with self._hub.lock:
            self.log.append(self.state_frame())
        self._hub.notify()

    @staticmethod
    def cost_of(input_json: str) -> int:
        """The bytes a task with this input is charged besides its event log: the input, and
        while it runs its app's own decoded copy of it."""
        return 2 * len(input_json) + OVERHEAD

    def _reload(self, record: Record) -> None:
        """Take the state and events persisted before a restart (what can fail, reading it
        back, comes before anything is charged to the budget)."""
        state = dict(record.state)
        for stored in record.events:  # the step updates after the checkpoint
            if stored.seq > record.state_seq:
                _replay(state, json.loads(stored.head + stored.tail))
        logs = state.get("logs") or []
        if not isinstance(logs, list) or not all(isinstance(line, str) for line in logs):
            raise TypeError(f"task {self.id}: its persisted logs are not a list of strings")
        self._store.budget.charge(self._held)
        self.short_id = str(state.get("short_id", self.short_id))
        self.created_at = str(state.get("created_at", self.created_at))
        self.updated_at = str(state.get("updated_at", self.updated_at))
        self.status = TaskStatus.parse(state.get("status"))
        self.output = state.get("output")
        self.error = state.get("error")
        self.logs = list(logs)
        self.progress = state.get("progress")
        self._log_bytes = sum(map(_line_cost, self.logs))
        self._hold(self._log_bytes)
        if self.is_terminal:
            self._hold(-len(self.input_json))  # no app holds a copy
        ago = record.ended_ago()
        if ago is not None:
            self.finished_at = time.monotonic() - ago
        start = record.events[0].seq - 1 if record.events else record.state_seq
        self.log = self._store.logs.new_log(self, start_seq=start)
        for stored in record.events:
            self.log.restore(LogEvent(stored.seq, stored.frame(self.input_json), stored.terminal))

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.app} {self.status.value}>"

    # -- reading ---------------------------------------------------------------------------

    @property
    def input(self) -> Any:
        """The task's input (a fresh copy)."""
        return json.loads(self.input_json)

    def to_dict(self) -> dict[str, Any]:
        """The full task object of the wire contract (a consistent copy, from any thread)."""
        result: dict[str, Any] = json.loads(self.state_frame().data)
        return result

    def _state(self) -> dict[str, Any]:
        """The task object without its input."""
        return {
            "id": self.id,
            "short_id": self.short_id,
            "app": self.app,
            "status": self.status.code,
            "status_text": self.status.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "output": self.output,
            "error": self.error,
            "session_id": self.session_id,
            "logs": self.logs,
            "progress": self.progress,
        }

    def state_frame(self) -> Frame:
        """The full task object as one frame that refers to the input held once."""
        with self._hub.lock:
            rest = encode_json(self._state())
        return Frame('{"input":', shared=self.input_json, tail="," + rest[1:], full=True)

    def snapshot(self) -> Snapshot:
        """The current full state as one frame, consistent with `log.last_seq`."""
        with self._hub.lock:
            return Snapshot(self.log.last_seq, (self.state_frame(),), self.status.is_terminal)

    @property
    def is_terminal(self) -> bool:
        """Whether the task has ended (completed, failed, cancelled)."""
        return self.status.is_terminal

    # -- app reports (through AppContext) ---------------------------------------------------

    def add_log(self, line: str) -> None:
        """Queue a log line for the next step update; past `max_log_bytes`, one notice."""
        if self.is_terminal or self._log_truncated:
            return
        limit = self._store.max_log_bytes
        if self._log_bytes + _line_cost(line) > limit:
            self._log_truncated = True
            line = f"[inferencesh emulator: log truncated at {limit} bytes; later lines dropped]"
        cost = _line_cost(line)
        self._log_bytes += cost
        self._hold(cost)
        self._pending_logs.append(line)
        self._schedule_flush()

    def _hold(self, size: int) -> None:
        self._held += size
        self._store.budget.charge(size)

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

    def open_file(self, uri: str) -> Path:
        """The local path of the emulator file `uri` names (`UnknownFileError` if none)."""
        return self._store.file_store().path_of(uri)

    def save_file(
        self, data: bytes, *, filename: str, content_type: str | None, reuse: bool = False
    ) -> dict[str, Any]:
        """Store a file this task's app made; its FileDTO (`FileError` over the limits)."""
        if self.is_terminal:
            raise FileError(409, f"task {self.id} has ended: it saves no more files")
        return self._store.file_store().save(
            data, filename=filename, content_type=content_type, task_id=self.id, reuse=reuse
        )

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

    def release(self) -> None:
        """Give back every byte this task holds (it is forgotten)."""
        self._store.budget.charge(-self._held)
        self._held = 0
        self.log.release()

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
            self.log.append(self.state_frame(), terminal=status.is_terminal)
        self._hub.notify()
        if status.is_terminal:
            self._hold(-len(self.input_json))  # the app is done with its copy
            self._store.finished(self)

    def request_cancel(self) -> None:
        """Cancel: cancelling (8) now, cancelled (12) once the runner has stopped, or after
        `CANCEL_GRACE` seconds if its app swallows the cancellation and keeps going."""
        if self.is_terminal or self.cancel_requested:
            return
        self.cancel_requested = True
        self.transition(TaskStatus.CANCELLING)
        if self.runner is not None and not self.runner.done():
            self.runner.cancel()
            self._cancel_deadline = self.runner.get_loop().call_later(
                CANCEL_GRACE, self.transition, TaskStatus.CANCELLED
            )
        else:
            self.transition(TaskStatus.CANCELLED)

    async def wait_ended(self, timeout: float) -> bool:
        """Wait (from any loop) until the task has ended; return whether it did in time."""
        return await self._hub.async_wait_until(lambda: self.is_terminal, timeout)

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
        ctx = AppContext(
            self, task_id=self.id, app=self.app, function=self.function, session_id=self.session_id
        )
        try:
            result = fn(self.input, ctx)
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

    def reap(self, reason: str) -> None:
        """Fail a task that has outlived its lifetime, then cancel its app: failed first, so
        an app that swallows the cancellation cannot keep the task live (and due) forever."""
        if self.is_terminal:
            return
        self._reap_reason = reason
        self.transition(TaskStatus.FAILED, error=reason)
        if self.runner is not None and not self.runner.done():
            self.runner.cancel()

    def runner_done(self, runner: asyncio.Task[None]) -> None:
        """Finish a task whose runner stopped without ending it (cancelled, crashed, shutdown)."""
        if self._cancel_deadline is not None:
            self._cancel_deadline.cancel()
            self._cancel_deadline = None
        if runner.cancelled():
            if self.cancel_requested:
                self.transition(TaskStatus.CANCELLED)
            else:
                error = self._reap_reason or "the emulator stopped"
                self.transition(TaskStatus.FAILED, error=error)
            return
        exc = runner.exception()
        if exc is not None:
            self.transition(TaskStatus.FAILED, error=f"emulator error: {exc!r}")
        elif self.cancel_requested:  # the app swallowed its cancellation and returned
            self.transition(TaskStatus.CANCELLED)


def _replay(state: dict[str, Any], payload: Any) -> None:
    """Apply one logged task event to a task object (the reload of a restart)."""
    if not isinstance(payload, dict):
        return
    if "fields" not in payload:  # a whole state (its input is not needed here)
        state.update(payload)
        return
    data = payload.get("data") or {}
    for key in payload["fields"]:
        if key == "logs":
            state["logs"] = list(state.get("logs") or []) + list(data.get("logs") or [])
        elif key in data:
            state[key] = data[key]
    if "status" in data:
        state["status"] = data["status"]


def _as_output(result: Any) -> dict[str, Any]:
    """The final output is always an object: None becomes {}, other values {"result": v}."""
    if result is None:
        result = {}
    elif not isinstance(result, dict):
        result = {"result": result}
    encode_json(result)  # a non-JSON output fails the task with a clear message
    return copy.deepcopy(result)


class TaskStore:
    """All tasks by id, and what bounds them: finished ones are kept for `ttl` seconds and at
    most `max_finished`; live ones at most `max_live`, each for `lifetime` seconds; every byte
    they hold is charged to `budget`, which may drop the oldest finished ones."""

    def __init__(
        self,
        hub: ChangeHub,
        budget: MemoryBudget,
        *,
        ttl: float,
        max_finished: int,
        max_live: int,
        lifetime: float,
        max_events: int,
        max_event_bytes: int,
        max_log_bytes: int,
    ) -> None:
        self.hub = hub
        self.budget = budget
        self.max_log_bytes = max_log_bytes
        self.logs = LogSettings[Task](
            max_events=max_events, max_bytes=max_event_bytes, budget=budget
        )
        self._max_live = max_live
        self._lifetime = lifetime
        self._tasks: dict[str, Task] = {}
        self._live: dict[str, Task] = {}  # in creation order: the oldest is reaped first
        self._finished = Retention(ttl=ttl, max_count=max_finished, drop=self._forget)
        self.on_finished: list[Callable[[Task], None]] = []
        self.on_forget: Callable[[str], None] | None = None
        #: Where the apps' files go (set by the emulator).
        self.files: FileStore | None = None
        budget.add_source(self._finished.oldest)

    def create(self, *, app: str, input_json: str, session_id: str | None) -> Task:
        """A new task, if the live cap and the memory budget allow (`Overloaded` if not)."""
        with self.hub.lock:
            if len(self._live) >= self._max_live:
                raise Overloaded(
                    f"too many tasks running: the emulator runs at most {self._max_live} at once"
                )
            self.budget.admit(Task.cost_of(input_json), "the new task")
            task = Task(self, app=app, input_json=input_json, session_id=session_id)
            self._tasks[task.id] = task
            self._live[task.id] = task
            self.expire()
            return task

    def reload(self, record: Record) -> Task | None:
        """Keep a task persisted before a restart; one that was running fails ("worker lost").

        None when it had expired meanwhile.
        """
        ago = record.ended_ago()
        if ago is not None and ago >= self._finished.ttl:
            return None
        meta = record.meta
        with self.hub.lock:
            task = Task(
                self,
                app=str(meta.get("app", "")),
                input_json=str(meta.get("input", "{}")),
                session_id=meta.get("session_id"),
                record=record,
            )
            self._tasks[task.id] = task
            if task.is_terminal:
                self._finished.add(task.id, task.finished_at or time.monotonic())
                return task
            self._live[task.id] = task
        task.transition(
            TaskStatus.FAILED, error="worker lost: the emulator stopped while the task ran"
        )
        return task

    def get(self, task_id: str) -> Task | None:
        """The task with this id, unless unknown or expired."""
        with self.hub.lock:
            self.expire()
            return self._tasks.get(task_id)

    def __len__(self) -> int:
        with self.hub.lock:
            return len(self._tasks)

    @property
    def live(self) -> int:
        """How many tasks have not ended."""
        with self.hub.lock:
            return len(self._live)

    def finished(self, task: Task) -> None:
        """Start the retention clock of a task that has ended; drop the oldest over the cap."""
        with self.hub.lock:
            self._live.pop(task.id, None)
            self._finished.add(task.id, task.finished_at or time.monotonic())
            self.expire()
        for callback in self.on_finished:
            callback(task)

    def file_store(self) -> FileStore:
        """The emulator's files (`RuntimeError` for a store no emulator owns)."""
        if self.files is None:
            raise RuntimeError("this task store has no file store")
        return self.files

    def live_tasks(self) -> list[Task]:
        """The tasks that have not ended, oldest first."""
        with self.hub.lock:
            return list(self._live.values())

    def delete(self, task_id: str) -> Task | None:
        """Forget a task now (`DELETE /tasks/{id}`), giving back what it holds as expiry does;
        the caller ends a running one first. None if unknown."""
        with self.hub.lock:
            task = self._tasks.get(task_id)
            if task is None:
                return None
            self._live.pop(task_id, None)
            self._finished.discard(task_id)
            self._forget(task_id)
        self.hub.notify()
        return task

    def _forget(self, task_id: str) -> None:
        task = self._tasks.pop(task_id, None)
        if task is not None:
            task.release()
        if self.on_forget is not None:
            self.on_forget(task_id)

    def expire(self) -> int:
        """Forget finished tasks past their ttl or over the count cap; return how many."""
        with self.hub.lock:
            dropped = self._finished.expire()
        if dropped:
            self.hub.notify()
        return dropped

    def reap(self) -> int:
        """Fail the tasks that have run longer than their lifetime; return how many."""
        with self.hub.lock:
            deadline = time.monotonic() - self._lifetime
            due = [task for task in self._live.values() if task.started_at <= deadline]
        reason = f"the task ran longer than the emulator's task lifetime ({self._lifetime:g} s)"
        for task in due:
            task.reap(reason)
        return len(due)

    def runners(self) -> list[asyncio.Task[None]]:
        """The runners still going (for shutdown)."""
        with self.hub.lock:
            return [t.runner for t in self._tasks.values() if t.runner and not t.runner.done()]

    def next_due_in(self) -> float | None:
        """Seconds until the oldest finished task expires or the oldest live one is reaped."""
        with self.hub.lock:
            dues = [self._finished.next_due_in()]
            if self._live:
                oldest = next(iter(self._live.values())).started_at
                dues.append(max(0.0, oldest + self._lifetime - time.monotonic()))
            return min((due for due in dues if due is not None), default=None)
