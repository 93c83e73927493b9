"""The streaming core: read a task's stream, reconnect on failure, and yield only what is new.

One connection is read in `StreamingOptions.chunk_size` reads and framed by the SSE decoder (or
by newlines for NDJSON). A `_Tracker` remembers what the consumer was already given, so replayed
events (SSE with `Last-Event-ID`) and fresh snapshots (servers that do not replay) both yield
nothing twice, log lines come exactly once and in order, and a status never goes backwards.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import quote

import attrs

from ._converters import structure_task
from ._events import TaskUpdate
from ._exceptions import (
    APIStatusError,
    ProtocolError,
    RetriesExhaustedError,
    SSELineTooLongError,
    StreamInterruptedError,
    TransportError,
)
from ._status import TaskStatus
from ._streaming import StreamingOptions, compute_backoff
from ._transport import StreamResponse, Transport
from .sse import SSEDecoder

__all__ = ["stream_task_updates"]

logger = logging.getLogger("inferencesh.stream")

_loads: Callable[[str | bytes], Any]
try:  # orjson is an optional speed-up; both give the same values for JSON text.
    import orjson

    _loads = orjson.loads
    _DECODE_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - exercised when the speedups extra is absent
    _loads = json.loads
    _DECODE_ERRORS = (ValueError,)

ACCEPT = "text/event-stream, application/x-ndjson;q=0.9"
_NOTHING: Any = object()


class _Tracker:
    """What the consumer of one task's stream has been given so far, across connections."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.status = TaskStatus.UNKNOWN
        self.logs_seen = 0
        self.progress: Any = None
        self.partial_output: Any = _NOTHING
        self.delta: dict[str, Any] = {}
        self.last_event_id = ""
        self.server_retry: float | None = None
        self.events_received = 0
        self.final: TaskUpdate | None = None

    def absorb(self, obj: Any) -> TaskUpdate | None:
        """Fold one decoded payload in; return the update to yield, or None if nothing is new."""
        if not isinstance(obj, Mapping):
            raise ProtocolError(f"stream payload must be a JSON object, got {type(obj).__name__}")
        if obj.get("type") == "heartbeat":
            return None
        self.events_received += 1
        event = obj.get("event")
        if event == "delta":
            return self._absorb_delta(obj)
        if event is not None and "fields" not in obj:
            logger.debug("ignoring %r event on task %s", event, self.task_id)
            return None
        wire = structure_task(obj, task_id=self.task_id)
        update = wire.update
        if wire.partial:
            new_logs = update.logs
            self.logs_seen += len(new_logs)
        elif wire.has_logs:
            new_logs = update.logs[self.logs_seen :]
            self.logs_seen = max(self.logs_seen, len(update.logs))
        else:
            new_logs = ()
        status_changed = (
            update.status is not TaskStatus.UNKNOWN and update.status.rank > self.status.rank
        )
        if status_changed:
            self.status = update.status
        progress_changed = update.progress is not None and update.progress != self.progress
        if progress_changed:
            self.progress = update.progress
        partial = update.partial_output
        partial_changed = partial is not None and partial != self.partial_output
        if partial_changed:
            self.partial_output = partial
        if not (status_changed or new_logs or progress_changed or partial_changed):
            return None
        result = attrs.evolve(
            update,
            status=self.status,
            logs=new_logs,
            progress=self.progress,
            partial_output=partial if partial_changed else None,
        )
        if self.status.is_terminal:
            self.final = result
        return result

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


class _LineFramer:
    """Splits an NDJSON body into lines, bounded like the SSE decoder."""

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._pending: list[bytes] = []
        self._pending_len = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if lines and self._pending:
            lines[0] = b"".join(self._pending) + lines[0]
            self._pending.clear()
            self._pending_len = 0
        if tail:
            self._pending.append(tail)
            self._pending_len += len(tail)
        if self._pending_len > self._max or any(len(line) > self._max for line in lines):
            raise ProtocolError(f"an NDJSON line is longer than {self._max} bytes")
        return [line for line in lines if line.strip()]


async def _read_connection(
    transport: Transport, tracker: _Tracker, options: StreamingOptions
) -> AsyncIterator[TaskUpdate]:
    headers = {"Accept": ACCEPT, "Cache-Control": "no-cache"}
    if tracker.last_event_id:
        headers["Last-Event-ID"] = tracker.last_event_id
    async with transport.stream(
        f"/tasks/{quote(tracker.task_id, safe='')}/stream",
        headers=headers,
        connect_timeout=options.connect_timeout,
        idle_timeout=options.idle_timeout,
    ) as resp:
        sse = resp.content_type == "text/event-stream"
        decoder = SSEDecoder(max_line_bytes=options.max_line_bytes) if sse else None
        framer = None if sse else _LineFramer(options.max_line_bytes)
        while True:
            chunk = await resp.read(options.chunk_size)
            if not chunk:
                return
            frames, error = _frames(decoder, framer, chunk, tracker)
            for raw, event_id in frames:
                try:
                    payload = _loads(raw)
                except _DECODE_ERRORS as exc:
                    raise ProtocolError(f"stream event is not valid JSON: {raw[:80]!r}") from exc
                update = tracker.absorb(payload)
                if event_id is not None:
                    tracker.last_event_id = event_id
                if update is None:
                    continue
                if tracker.final is not None:
                    _finish(resp)
                yield update
                if tracker.final is not None:
                    return
            if error is not None:
                # Everything before the oversized line was delivered above; now fail.
                raise error


def _finish(resp: StreamResponse) -> None:
    # The task is over: release the connection before handing out the last update, so a
    # consumer that returns right after it leaves nothing open.
    resp.close()


def _frames(
    decoder: SSEDecoder | None, framer: _LineFramer | None, chunk: bytes, tracker: _Tracker
) -> tuple[list[tuple[str | bytes, str | None]], SSELineTooLongError | None]:
    if framer is not None:
        return [(line, None) for line in framer.feed(chunk)], None
    assert decoder is not None
    error: SSELineTooLongError | None = None
    try:
        events = decoder.feed(chunk)
    except SSELineTooLongError as exc:
        events, error = exc.events, exc
    if decoder.retry is not None:
        tracker.server_retry = decoder.retry / 1000
    return [(e.data, e.id) for e in events if e.data], error


async def stream_task_updates(
    transport: Transport,
    task_id: str,
    options: StreamingOptions,
    *,
    seed: Mapping[str, Any] | None = None,
    on_reconnect: Callable[[int, float, BaseException], None] | None = None,
) -> AsyncIterator[TaskUpdate]:
    """Yield a task's updates until it is terminal, reconnecting and resuming as needed.

    `seed` is a task payload already in hand (the answer of `POST /apps/run`); it is yielded
    first. Retryable failures (network, 429, 5xx, a stream that ends before the task does) are
    retried with backoff; `RetriesExhaustedError` ends a run of `max_retries` failures in a
    row, chained to the last one. 4xx answers and protocol errors raise at once.
    """
    tracker = _Tracker(task_id)
    if seed is not None:
        first = tracker.absorb(seed)
        if first is not None:
            yield first
        if tracker.final is not None:
            return
    failures = 0
    while True:
        before = tracker.events_received
        retry_after: float | None = None
        try:
            async for update in _read_connection(transport, tracker, options):
                yield update
            if tracker.final is not None:
                return
            error: BaseException = StreamInterruptedError(
                "the server ended the stream before the task finished"
            )
        except APIStatusError as exc:
            if not exc.retryable:
                raise
            error, retry_after = exc, exc.retry_after
        except TransportError as exc:
            error = exc
        if tracker.events_received > before:
            failures = 0
        failures += 1
        if failures > options.max_retries:
            raise RetriesExhaustedError(
                f"gave up on task {task_id} after {failures - 1} reconnect attempts: {error}",
                attempts=failures - 1,
            ) from error
        delay = compute_backoff(
            options, failures, server_retry=tracker.server_retry, retry_after=retry_after
        )
        logger.info(
            "stream of task %s interrupted (%s); reconnect %d/%d in %.2fs",
            task_id,
            error,
            failures,
            options.max_retries,
            delay,
        )
        if on_reconnect is not None:
            on_reconnect(failures, delay, error)
        await asyncio.sleep(delay)
