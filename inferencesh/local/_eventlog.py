"""An append-only, bounded, awaitable log of the events one resource (a task, a chat) emits.

Stream connections read it through a cursor (the last seq they wrote), so a slow reader costs
one integer, never a queue. Each event is JSON-encoded once, when appended, and replayed
byte for byte.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs

from ..sse import encode_sse
from ._budget import OVERHEAD, MemoryBudget

__all__ = ["EventLog", "Frame", "LogEvent", "LogSettings", "Snapshot", "encode_json"]

_Owner = TypeVar("_Owner")


def encode_json(payload: Any) -> str:
    """Compact, ASCII-only JSON, so no byte of an event can be mistaken for a line break."""
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


@attrs.frozen
class Frame:
    """One payload as sent: JSON text plus an optional SSE event name (chats use names).

    The text is `head + shared + tail`. `shared` is a large part its owner holds once and
    every frame refers to (a task's input), so a task's dozen snapshots keep one copy of it.
    """

    head: str
    event: str | None = None
    shared: str = ""
    tail: str = ""
    full: bool = False  # the resource's whole state (what persistence checkpoints)

    @property
    def data(self) -> str:
        """The whole JSON text."""
        return self.head + self.shared + self.tail if self.shared else self.head + self.tail

    @property
    def own_size(self) -> int:
        """The bytes this frame holds by itself (not counting `shared`)."""
        return len(self.head) + len(self.tail)

    def ndjson(self, seq: int) -> bytes:
        """The payload as one NDJSON line; a named event becomes `{"event": ..., "data": ...}`.

        The line also carries `"event_id": "<seq>"`, the NDJSON form of the SSE `id:` field
        (our extension: clients of the hosted API ignore unknown keys; ours resume with it).
        """
        data = self.data
        event_id = '"event_id":"' + str(seq) + '"'
        if self.event is None:
            if not data.startswith("{"):
                raise ValueError("an unnamed frame must hold a JSON object")
            rest = data[1:]
            line = "{" + event_id + ("," + rest if rest != "}" else "}")
        else:
            line = '{"event":' + encode_json(self.event) + ',"data":' + data + "," + event_id + "}"
        return (line + "\n").encode("ascii")

    def sse(self, seq: int) -> bytes:
        """The payload as one SSE event block with `id: seq`."""
        return encode_sse(self.data, event=self.event, id=str(seq))


class LogEvent:
    """One logged event: its seq, frame and whether it ends the resource's life.

    The wire bytes of the first framing asked for are kept, shared by every connection using
    it (another framing is encoded per send). A frame with a shared part keeps no bytes, so
    the shared part stays one copy.
    """

    __slots__ = ("_wire", "_wire_sse", "frame", "seq", "size", "terminal")

    def __init__(self, seq: int, frame: Frame, terminal: bool) -> None:
        self.seq = seq
        self.frame = frame
        self.terminal = terminal
        self._wire: bytes | None = None
        self._wire_sse = False
        # What holding this event costs: the text, its wire bytes, the object itself.
        self.size = frame.own_size * (1 if frame.shared else 2) + OVERHEAD

    def ndjson(self) -> bytes:
        """The NDJSON line."""
        return self._encoded(sse=False)

    def sse(self) -> bytes:
        """The SSE block."""
        return self._encoded(sse=True)

    def _encoded(self, *, sse: bool) -> bytes:
        if self._wire is not None and self._wire_sse == sse:
            return self._wire
        wire = self.frame.sse(self.seq) if sse else self.frame.ndjson(self.seq)
        if self._wire is None and not self.frame.shared:
            self._wire, self._wire_sse = wire, sse
        return wire


@attrs.frozen
class Snapshot:
    """The full current state of a resource, as of event `seq`, as frames to send."""

    seq: int
    frames: tuple[Frame, ...]
    terminal: bool


class EventLog:
    """Append-only log with seq numbers 1, 2, ...; keeps the newest `max_events` events and
    at most `max_bytes` of them (always the newest one), charged to `budget`.

    Must be used from one event loop. `closed` becomes true when a terminal event is appended;
    nothing may be appended after it. `on_append` sees each event before any reader can
    (persistence writes it there).
    """

    def __init__(
        self,
        max_events: int,
        *,
        max_bytes: int | None = None,
        budget: MemoryBudget | None = None,
        on_append: Callable[[LogEvent], None] | None = None,
        start_seq: int = 0,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be >= 1")
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._budget = budget
        self._events: deque[LogEvent] = deque()
        self._bytes = 0
        self._last_seq = start_seq
        self._closed = False
        self._gone = False
        self._waiters: set[asyncio.Future[None]] = set()
        self.on_append = on_append

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

    @property
    def size(self) -> int:
        """The bytes the retained events hold."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._events)

    def append(self, frame: Frame, *, terminal: bool = False) -> LogEvent:
        """Add an event, wake every waiting cursor, and return it."""
        if self._closed:
            raise ValueError("the event log is closed: a terminal event was already appended")
        event = LogEvent(self._last_seq + 1, frame, terminal)
        if self.on_append is not None:
            self.on_append(event)  # first: if it cannot be kept, nothing was changed
        self.restore(event)
        self.wake()
        return event

    def restore(self, event: LogEvent) -> None:
        """Keep `event` as the newest one (appended now, or reloaded after a restart)."""
        self._last_seq = event.seq
        self._events.append(event)
        self._closed = event.terminal
        self._bytes += event.size
        self._charge(event.size)
        limit = self._max_bytes
        while len(self._events) > 1 and (
            len(self._events) > self._max_events or (limit is not None and self._bytes > limit)
        ):
            self._drop_oldest()
        budget = self._budget
        if budget is not None and budget.over and not budget.reclaim():
            while len(self._events) > 1:  # live work fills the budget: keep only the newest
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        dropped = self._events.popleft()
        self._bytes -= dropped.size
        self._charge(-dropped.size)

    def _charge(self, size: int) -> None:
        if self._budget is not None:
            self._budget.charge(size)

    def release(self) -> None:
        """The resource is forgotten: drop the events, give their bytes back to the budget,
        and wake the readers so their streams end (`gone`)."""
        self._charge(-self._bytes)
        self._bytes = 0
        self._budget = None
        self._events.clear()
        self._gone = True
        self.wake()

    @property
    def gone(self) -> bool:
        """Whether the resource was forgotten (expired, dropped, deleted): streams end."""
        return self._gone

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
        if self._last_seq > seq or self._closed or self._gone:
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


class LogSettings(Generic[_Owner]):
    """How a store's event logs are bounded and charged, and who sees each event appended
    (`on_event`, set while the emulator persists: it may change while logs exist)."""

    def __init__(self, *, max_events: int, max_bytes: int, budget: MemoryBudget) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.budget = budget
        self.on_event: Callable[[_Owner, LogEvent], None] | None = None

    def new_log(self, owner: _Owner, *, start_seq: int = 0) -> EventLog:
        """The event log of `owner` (a task, a chat)."""
        return EventLog(
            self.max_events,
            max_bytes=self.max_bytes,
            budget=self.budget,
            on_append=lambda event: self._appended(owner, event),
            start_seq=start_seq,
        )

    def _appended(self, owner: _Owner, event: LogEvent) -> None:
        if self.on_event is not None:
            self.on_event(owner, event)
