"""Task streams: what is new in each payload of a task's stream.

`TaskTracker` remembers what the consumer was already given, so replayed events (SSE with
`Last-Event-ID`) and fresh snapshots (servers that do not replay) both yield nothing twice,
log lines come exactly once and in order, and a status never goes backwards.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

from ._converters import WireTask, structure_task
from ._events import Progress, TaskUpdate, new_progress, new_update
from ._exceptions import ProtocolError
from ._resumable import Frames, resumable_stream
from ._status import _BY_CODE, TaskStatus
from ._streaming import StreamingOptions
from ._transport import Transport

__all__ = ["TaskTracker", "merge_delta", "stream_task_updates"]

logger = logging.getLogger("inferencesh.stream")

_NOTHING: Any = object()
_NO_UPDATE: tuple[TaskUpdate, ...] = ()
_RANK = {status: status.rank for status in TaskStatus}
_UNKNOWN = TaskStatus.UNKNOWN
_TERMINAL = frozenset(status for status in TaskStatus if status.is_terminal)
_NUMBERS = (int, float)


class TaskTracker:
    """What the consumer of one task's stream has been given so far, across connections."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.path = f"/tasks/{quote(task_id, safe='')}/stream"
        self.label = f"task {task_id}"
        self.status = TaskStatus.UNKNOWN
        self._code: int | None = None  # the last status code read
        self.logs_seen = 0
        self.progress: Progress | None = None
        self.partial_output: Any = _NOTHING
        self.delta: dict[str, Any] = {}
        self.last_event_id = ""
        self.server_retry: float | None = None
        self.finished = False
        """Whether the terminal update has been produced."""
        self.delivered = 0

    def absorb(self, obj: Any) -> Sequence[TaskUpdate]:
        """Fold one decoded payload in; return the update to yield, if anything is new.

        This runs once per stream event, so a well-formed payload takes a path that reads its
        fields directly; anything else is validated by `structure_task` first, which raises
        `ProtocolError` naming a malformed field. Where `_speedups.c` is built, its compiled
        copy of the direct path runs instead and hands every other payload to this method.
        """
        if type(obj) is dict:
            if obj.get("type") == "heartbeat":
                return _NO_UPDATE
            event = obj.get("event")
            if event is not None:
                if event == "delta":
                    return self._absorb_delta(obj)
                if "fields" not in obj:
                    logger.debug("ignoring %r event on task %s", event, self.task_id)
                    return _NO_UPDATE
            partial = "fields" in obj and "data" in obj
            payload = obj["data"] if partial else obj
        elif isinstance(obj, Mapping):
            partial, payload = False, obj
        else:
            raise ProtocolError(f"stream payload must be a JSON object, got {type(obj).__name__}")
        raw = payload
        current: Any  # the progress numbers, read while checking the progress's shape
        total: Any
        well_formed = type(payload) is dict
        if well_formed:
            task_id = payload.get("id", self.task_id)
            code = payload.get("status")
            raw_logs = payload.get("logs")
            raw_progress = payload.get("progress")
            session_id = payload.get("session_id")
            well_formed = (
                type(task_id) is str
                and task_id != ""
                and (type(code) is int or code is None)
                and (raw_logs is None or type(raw_logs) is list)
                and (session_id is None or type(session_id) is str)
                and (
                    raw_progress is None
                    or (
                        type(raw_progress) is dict
                        and type(current := raw_progress.get("current")) in _NUMBERS
                        and type(total := raw_progress.get("total")) in _NUMBERS
                    )
                )
                and (not raw_logs or all(type(line) is str for line in raw_logs))
            )
        if not well_formed:
            payload = _well_formed(structure_task(obj, task_id=self.task_id))
            task_id = payload["id"]
            code = payload["status"]
            raw_logs = payload["logs"]
            raw_progress = payload["progress"]
            if raw_progress is not None:
                current, total = raw_progress["current"], raw_progress["total"]
            session_id = payload["session_id"]

        if not raw_logs:
            new_logs: tuple[str, ...] = ()
        elif partial:  # a partial update lists only new lines; a snapshot lists all so far
            new_logs = tuple(raw_logs)
            self.logs_seen += len(new_logs)
        else:
            new_logs = tuple(raw_logs[self.logs_seen :])
            self.logs_seen = max(self.logs_seen, len(raw_logs))
        status = self.status
        status_changed = False
        if code is not None and code != self._code:  # the same code again changes nothing
            self._code = code
            new_status = _BY_CODE.get(code, _UNKNOWN)
            # A status never goes backwards; UNKNOWN has rank 0 and so never changes it.
            if _RANK[new_status] > _RANK[status]:
                status = self.status = new_status
                status_changed = True
        progress = self.progress
        progress_changed = False
        if raw_progress is not None and (
            progress is None or current != progress.current or total != progress.total
        ):
            progress = self.progress = new_progress(current, total)
            progress_changed = True
        output = payload.get("output")
        terminal = status in _TERMINAL
        # A running task's output is intermediate; only a finished task has its final output.
        partial_output = None if terminal else payload.get("partial_output", output)
        if partial_output is not None and partial_output != self.partial_output:
            self.partial_output = partial_output
        else:
            partial_output = None
        if not (status_changed or new_logs or progress_changed or partial_output is not None):
            return _NO_UPDATE
        update = new_update(
            task_id,
            status,
            new_logs,
            progress,
            partial_output,
            output if terminal else None,
            payload.get("error"),
            session_id or None,
            raw,
        )
        if terminal:
            self.finished = True
        return (update,)

    def _absorb_delta(self, obj: Mapping[str, Any]) -> Sequence[TaskUpdate]:
        data = obj.get("data")
        delta = data.get("delta") if isinstance(data, Mapping) else None
        if not delta or not isinstance(delta, Mapping):
            return _NO_UPDATE
        merge_delta(self.delta, delta)
        snapshot = copy.deepcopy(self.delta)
        self.partial_output = snapshot
        update = TaskUpdate(
            id=self.task_id,
            status=self.status,
            progress=self.progress,
            partial_output=snapshot,
            raw=obj,
        )
        return (update,)


def _compiled_absorb() -> Any:
    """The compiled `TaskTracker.absorb` from `_speedups`, or None: not built here, or turned
    off with INFERENCESH_NO_EXTENSIONS=1."""
    if os.environ.get("INFERENCESH_NO_EXTENSIONS"):
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    return _speedups.bind(
        TaskTracker, _python_absorb, TaskUpdate, Progress, _BY_CODE, _RANK, _TERMINAL, _UNKNOWN
    )


# The compiled method runs the fast path of the Python one above and hands it every other
# payload; the Python method stays the reference (tests compare the two on random streams).
_python_absorb = TaskTracker.absorb
_compiled = _compiled_absorb()
SPEEDUPS = _compiled is not None
"""Whether task streams use the compiled accelerator."""
if _compiled is not None:
    TaskTracker.absorb = _compiled  # type: ignore[method-assign]


def _well_formed(wire: WireTask) -> dict[str, Any]:
    """A validated payload in the exact shapes `TaskTracker.absorb` reads directly."""
    progress = wire.progress
    payload = {
        "id": wire.id,
        "status": wire.status.code,
        "logs": list(wire.logs),
        "progress": None
        if progress is None
        else {"current": progress.current, "total": progress.total},
        "output": wire.output,
        "error": wire.error,
        "session_id": wire.session_id,
    }
    if "partial_output" in wire.raw:
        payload["partial_output"] = wire.raw["partial_output"]
    return payload


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
) -> AsyncGenerator[Frames[TaskUpdate], None]:
    """Yield a task's stream as `Frames` until it is terminal, reconnecting as needed.

    `seed` is a task payload already in hand (the answer of `POST /apps/run`); it comes first.
    Failures are handled as `resumable_stream` describes.
    """
    tracker = TaskTracker(task_id)
    if seed is not None:
        yield Frames(tracker, [seed], decoded=True, sync=True)
        if tracker.finished:
            return
    stream = resumable_stream(transport, tracker, options, on_reconnect=on_reconnect)
    async with aclosing(stream) as frames:
        async for batch in frames:
            yield batch
