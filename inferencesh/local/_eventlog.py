"""An append-only, bounded, awaitable log of the events one resource (a task, a chat) emits.

Stream connections read it through a cursor (the last seq they wrote), so a slow reader costs
one integer, never a queue. Each event is JSON-encoded once, when appended, and replayed
byte for byte.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

import attrs

from ..sse import encode_sse

__all__ = ["EventLog", "Frame", "LogEvent", "Snapshot", "encode_json"]


def encode_json(payload: Any) -> str:
    """Compact, ASCII-only JSON, so no byte of an event can be mistaken for a line break."""
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


@attrs.frozen
class Frame:
    """One payload as sent: JSON text plus an optional SSE event name (chats use names)."""

    data: str
    event: str | None = None

    def ndjson(self, seq: int) -> bytes:
        """The payload as one NDJSON line; a named event becomes `{"event": ..., "data": ...}`.

        The line also carries `"event_id": "<seq>"`, the NDJSON form of the SSE `id:` field
        (our extension: clients of the hosted API ignore unknown keys; ours resume with it).
        """
        event_id = '"event_id":"' + str(seq) + '"'
        if self.event is None:
            if not self.data.startswith("{"):
                raise ValueError("an unnamed frame must hold a JSON object")
            rest = self.data[1:]
            line = "{" + event_id + ("," + rest if rest != "}" else "}")
        else:
            line = (
                '{"event":'
                + encode_json(self.event)
                + ',"data":'
                + self.data
                + ","
                + event_id
                + "}"
            )
        return (line + "\n").encode("ascii")

    def sse(self, seq: int) -> bytes:
        """The payload as one SSE event block with `id: seq`."""
        return encode_sse(self.data, event=self.event, id=str(seq))


class LogEvent:
    """One logged event: its seq, frame and whether it ends the resource's life."""

    __slots__ = ("_ndjson", "_sse", "frame", "seq", "terminal")

    def __init__(self, seq: int, frame: Frame, terminal: bool) -> None:
        self.seq = seq
        self.frame = frame
        self.terminal = terminal
        self._ndjson: bytes | None = None
        self._sse: bytes | None = None

    def ndjson(self) -> bytes:
        """The NDJSON line, encoded once and shared by every connection."""
        if self._ndjson is None:
            self._ndjson = self.frame.ndjson(self.seq)
        return self._ndjson

    def sse(self) -> bytes:
        """The SSE block, encoded once and shared by every connection."""
        if self._sse is None:
            self._sse = self.frame.sse(self.seq)
        return self._sse


@attrs.frozen
class Snapshot:
    """The full current state of a resource, as of event `seq`, as frames to send."""

    seq: int
    frames: tuple[Frame, ...]
    terminal: bool


class EventLog:
    """Append-only log with seq numbers 1, 2, ...; keeps the newest `max_events` only.

    Must be used from one event loop. `closed` becomes true when a terminal event is appended;
    nothing may be appended after it.
    """

    def __init__(self, max_events: int) -> None:
        if max_events < 1:
            raise ValueError("max_events must be >= 1")
        self._events: deque[LogEvent] = deque(maxlen=max_events)
        self._last_seq = 0
        self._closed = False
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def last_seq(self) -> int:
        """The seq of the newest event (0 when empty)."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """The seq of the oldest retained event (last_seq + 1 when empty)."""
        return self._events[0].seq if self._events else self._last_seq + 1

    @property
    def closed(self) -> bool:
        """Whether the terminal event has been appended."""
        return self._closed

    def __len__(self) -> int:
        return len(self._events)

    def append(self, frame: Frame, *, terminal: bool = False) -> LogEvent:
        """Add an event, wake every waiting cursor, and return it."""
        if self._closed:
            raise ValueError("the event log is closed: a terminal event was already appended")
        self._last_seq += 1
        event = LogEvent(self._last_seq, frame, terminal)
        self._events.append(event)
        self._closed = terminal
        self.wake()
        return event

    def wake(self) -> None:
        """Wake every waiter (new event, or the server is shutting down)."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def replayable(self, after: int) -> bool:
        """Whether every event after seq `after` is still retained (so a resume is exact)."""
        return self.first_seq - 1 <= after <= self._last_seq

    def after(self, seq: int, limit: int = 64) -> list[LogEvent] | None:
        """Up to `limit` events with seq > `seq`, oldest first; None if some were dropped."""
        if not self.replayable(seq):
            return None
        count = min(self._last_seq - seq, limit)
        start = len(self._events) - (self._last_seq - seq)
        # Index from the near end: deque indexing is cheap close to either end.
        return [self._events[start + i] for i in range(count)]

    async def wait_beyond(self, seq: int, timeout: float) -> None:
        """Return when an event newer than `seq` exists, `wake()` is called, or on timeout."""
        if self._last_seq > seq or self._closed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return
        finally:
            self._waiters.discard(waiter)
