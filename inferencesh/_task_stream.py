"""Task streams: what is new in each payload of a task's stream.

`TaskTracker` remembers what the consumer was already given, so replayed events (SSE with
`Last-Event-ID`) and fresh snapshots (servers that do not replay) both yield nothing twice,
log lines come exactly once and in order, and a status never goes backwards.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ._converters import structure_task
from ._events import TaskUpdate
from ._exceptions import ProtocolError
from ._resumable import resumable_stream
from ._status import TaskStatus
from ._streaming import StreamingOptions
from ._transport import Transport

__all__ = ["TaskTracker", "merge_delta", "stream_task_updates"]

logger = logging.getLogger("inferencesh.stream")

_NOTHING: Any = object()
_RANK = {status: status.rank for status in TaskStatus}
_TERMINAL = frozenset(status for status in TaskStatus if status.is_terminal)


class TaskTracker:
    """What the consumer of one task's stream has been given so far, across connections."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.path = f"/tasks/{quote(task_id, safe='')}/stream"
        self.label = f"task {task_id}"
        self.status = TaskStatus.UNKNOWN
        self.logs_seen = 0
        self.progress: Any = None
        self.partial_output: Any = _NOTHING
        self.delta: dict[str, Any] = {}
        self.last_event_id = ""
        self.server_retry: float | None = None
        self.final: TaskUpdate | None = None

    @property
    def finished(self) -> bool:
        """Whether the terminal update has been produced."""
        return self.final is not None

    def absorb(self, payload: Any) -> Sequence[TaskUpdate]:
        """Fold one decoded payload in; return the update to yield, if anything is new."""
        update = self._absorb(payload)
        return () if update is None else (update,)

    def _absorb(self, obj: Any) -> TaskUpdate | None:
        if type(obj) is not dict and not isinstance(obj, Mapping):
            raise ProtocolError(f"stream payload must be a JSON object, got {type(obj).__name__}")
        if obj.get("type") == "heartbeat":
            return None
        event = obj.get("event")
        if event == "delta":
            return self._absorb_delta(obj)
        if event is not None and "fields" not in obj:
            logger.debug("ignoring %r event on task %s", event, self.task_id)
            return None
        wire = structure_task(obj, task_id=self.task_id)
        if wire.partial:
            new_logs = wire.logs
            self.logs_seen += len(new_logs)
        elif wire.has_logs:
            new_logs = wire.logs[self.logs_seen :]
            self.logs_seen = max(self.logs_seen, len(wire.logs))
        else:
            new_logs = ()
        status = wire.status
        # UNKNOWN (a partial update without a status) has rank 0 and so never changes it.
        status_changed = _RANK[status] > _RANK[self.status]
        if status_changed:
            self.status = status
        progress = wire.progress
        progress_changed = progress is not None and progress != self.progress
        if progress_changed:
            self.progress = progress
        terminal = self.status in _TERMINAL
        # A running task's output is intermediate; only a finished task has its final output.
        partial = None if terminal else wire.raw.get("partial_output", wire.output)
        partial_changed = partial is not None and partial != self.partial_output
        if partial_changed:
            self.partial_output = partial
        if not (status_changed or new_logs or progress_changed or partial_changed):
            return None
        update = TaskUpdate(
            wire.id,
            self.status,
            new_logs,
            self.progress,
            partial if partial_changed else None,
            wire.output if terminal else None,
            wire.error,
            wire.session_id,
            wire.raw,
        )
        if terminal:
            self.final = update
        return update

    def _absorb_delta(self, obj: Mapping[str, Any]) -> TaskUpdate | None:
        data = obj.get("data")
        delta = data.get("delta") if isinstance(data, Mapping) else None
        if not delta or not isinstance(delta, Mapping):
            return None
        merge_delta(self.delta, delta)
        snapshot = copy.deepcopy(self.delta)
        self.partial_output = snapshot
        return TaskUpdate(
            id=self.task_id,
            status=self.status,
            progress=self.progress,
            partial_output=snapshot,
            raw=obj,
        )


def merge_delta(state: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Fold an LLM delta into `state`: text pieces concatenate, tool calls merge by index."""
    for key, value in delta.items():
        if value is None:
            continue
        if key in ("response", "reasoning"):
            old = state.get(key)
            state[key] = old + value if isinstance(old, str) and isinstance(value, str) else value
        elif key == "tool_calls" and isinstance(value, list):
            calls: dict[int, dict[str, Any]] = {
                c.get("index", 0): c for c in state.get("tool_calls", []) if isinstance(c, dict)
            }
            for item in value:
                if not isinstance(item, Mapping):
                    continue
                index = item.get("index", 0)
                current = calls.setdefault(index, {"index": index})
                for field, piece in item.items():
                    if field == "function" and isinstance(piece, Mapping):
                        fn = current.setdefault("function", {})
                        for fkey, fval in piece.items():
                            if fkey == "arguments" and isinstance(fn.get(fkey), str):
                                fn[fkey] += fval
                            elif fval is not None:
                                fn[fkey] = fval
                    elif piece is not None:
                        current[field] = piece
            state["tool_calls"] = [calls[i] for i in sorted(calls)]
        else:
            state[key] = value


async def stream_task_updates(
    transport: Transport,
    task_id: str,
    options: StreamingOptions,
    *,
    seed: Mapping[str, Any] | None = None,
    on_reconnect: Callable[[int, float, BaseException], None] | None = None,
) -> AsyncIterator[list[TaskUpdate]]:
    """Yield a task's updates in batches until it is terminal, reconnecting as needed.

    `seed` is a task payload already in hand (the answer of `POST /apps/run`); it comes first.
    Failures are handled as `resumable_stream` describes.
    """
    tracker = TaskTracker(task_id)
    if seed is not None:
        first = tracker.absorb(seed)
        if first:
            yield list(first)
        if tracker.finished:
            return
    async for batch in resumable_stream(transport, tracker, options, on_reconnect=on_reconnect):
        yield batch
