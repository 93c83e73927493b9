"""Task streams: the reader's codec for tasks, and the one diff of what is new.

`TaskView.apply` is the only code that decides what a task event adds to what the consumer has
already been given. It belongs to the consumer (it runs in the consumer's thread in the
blocking client) and keeps what was handed out: log lines (counted by their absolute position in
the task's log), the status, the progress and the intermediate output. Snapshots say where the
log is; partial updates add lines after the position the last snapshot gave. So replayed
snapshots, stale snapshots after a rewind and fresh snapshots from servers that do not replay
all yield no line twice, and a status never goes backwards. While the log's position is behind
the lines already given, the stream is replaying the past: its progress, intermediate outputs
and deltas are old too, and are not given again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._converters import _ABSENT, DELTA, SNAPSHOT, TaskEvent, structure_task
from ._defaults import path_segment
from ._events import Progress, TaskUpdate, new_update
from ._status import TaskStatus

__all__ = ["TaskCodec", "TaskView", "merge_delta", "update_of"]

_RANK = {status: status.rank for status in TaskStatus}
_UNKNOWN = TaskStatus.UNKNOWN
_NOTHING: tuple[TaskUpdate, ...] = ()


class TaskCodec:
    """What a `StreamReader` needs to follow one task."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.path = f"/tasks/{path_segment(task_id)}/stream"
        self.label = f"task {task_id}"

    def structure(self, payload: Any) -> TaskEvent | None:
        """The task event in a decoded stream payload (see `structure_task`)."""
        return structure_task(payload, self.task_id)


class TaskView:
    """What the consumer of one task's stream has been given so far, across connections."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.status = _UNKNOWN
        self.delivered = 0  # log lines handed out
        self.position = 0  # absolute index, in the task's log, of the next line a partial adds
        self.progress: Progress | None = None
        self.partial_output: Any = _ABSENT
        self.delta: Mapping[str, Any] = {}

    def apply(self, event: TaskEvent) -> tuple[TaskUpdate, ...]:
        """The update `event` makes, if anything in it is new; empty otherwise."""
        if event.kind == DELTA:
            return self._delta(event)
        status = self.status
        status_changed = False
        new_status = event.status
        # A status never goes backwards; UNKNOWN has rank 0 and so never changes it.
        if new_status is not None and _RANK[new_status] > _RANK[status]:
            status = self.status = new_status
            status_changed = True
        new_logs: tuple[str, ...] = ()
        logs = event.logs
        if logs is not None:
            start = 0 if event.kind == SNAPSHOT else self.position
            end = self.position = start + len(logs)
            if end > self.delivered:
                new_logs = tuple(logs[self.delivered - start :] if self.delivered > start else logs)
                self.delivered = end
        replaying = self.position < self.delivered
        progress = event.progress
        if (
            progress is None
            or replaying
            or (
                (last := self.progress) is not None
                and progress.current == last.current
                and progress.total == last.total
            )
        ):
            progress_changed = False
        else:
            self.progress = progress
            progress_changed = True
        terminal = event.final
        partial_output = None
        if not (terminal or replaying):
            # A running task's output is intermediate; only a finished task has its final one.
            candidate = event.partial_output
            if candidate is _ABSENT:
                candidate = event.output
            if candidate is not None and candidate != self.partial_output:
                partial_output = self.partial_output = candidate
        if not (status_changed or new_logs or progress_changed or partial_output is not None):
            return _NOTHING
        return (
            new_update(
                self.task_id,
                status,
                new_logs,
                self.progress,
                partial_output,
                event.output if terminal else None,
                event.error,
                event.session_id,
                event.raw,
            ),
        )

    def _delta(self, event: TaskEvent) -> tuple[TaskUpdate, ...]:
        if self.position < self.delivered:
            return _NOTHING  # replaying the past: this piece was given already
        self.delta = self.partial_output = merge_delta(self.delta, event.output)
        return (
            new_update(
                self.task_id,
                self.status,
                (),
                self.progress,
                self.delta,
                None,
                None,
                None,
                event.raw,
            ),
        )


def update_of(event: TaskEvent | None, task_id: str) -> TaskUpdate:
    """A task's state from one payload on its own (a REST answer): everything in it is new."""
    if event is not None and event.kind != DELTA:
        found = TaskView(task_id).apply(event)
        if found:
            return found[0]
    return TaskUpdate(id=task_id, raw=event.raw if event is not None else {})


def merge_delta(state: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """`state` with an LLM delta folded in, as a new dict (`state` is left as it was, so an
    update that handed it out keeps what it showed): text pieces concatenate, tool calls
    merge by index, other fields replace; a null never overwrites."""
    merged = dict(state)
    for key, value in delta.items():
        if value is None:
            continue
        if key in ("response", "reasoning"):
            old = merged.get(key)
            merged[key] = old + value if isinstance(old, str) and isinstance(value, str) else value
        elif key == "tool_calls" and isinstance(value, list):
            merged[key] = _merge_tool_calls(merged.get(key), value)
        else:
            merged[key] = value
    return merged


def _merge_tool_calls(old: Any, pieces: list[Any]) -> list[dict[str, Any]]:
    calls: dict[Any, dict[str, Any]] = {}
    for call in old if isinstance(old, list) else []:
        if isinstance(call, Mapping):
            calls[call.get("index", 0)] = dict(call)
    for piece in pieces:
        if not isinstance(piece, Mapping):
            continue
        index = piece.get("index", 0)
        current = calls.setdefault(index, {"index": index})
        for field, value in piece.items():
            if field == "function" and isinstance(value, Mapping):
                function = dict(current.get("function") or {})
                for name, part in value.items():
                    if name == "arguments" and isinstance(function.get(name), str):
                        function[name] += part if isinstance(part, str) else ""
                    elif part is not None:
                        function[name] = part
                current["function"] = function
            elif value is not None:
                current[field] = value
    return [calls[index] for index in sorted(calls, key=_index_order)]


def _index_order(index: Any) -> tuple[int, Any]:
    # Indexes are ints on the wire; anything else sorts after them, by its text.
    return (0, index) if type(index) is int else (1, str(index))
