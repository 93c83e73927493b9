"""Serving an `EventLog` as a stream, in SSE or NDJSON framing, with resume and faults.

Nothing here knows about tasks: a `StreamSource` gives a log and a snapshot, so chat streams
can reuse the same machinery. Each connection is a cursor over the log; every write is awaited,
so a reader that stops reading stops the writer (back-pressure) instead of growing a buffer.
A cursor that falls out of the retained window catches up with a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
from aiohttp import web

from ._eventlog import EventLog, LogEvent, Snapshot

__all__ = [
    "Connection",
    "Framing",
    "Stalled",
    "StreamSettings",
    "StreamSource",
    "bounded_write",
    "negotiate_framing",
    "parse_last_event_id",
]

_SSE = "text/event-stream"
_NDJSON = "application/x-ndjson"
# How often an idle connection checks whether its client is gone, besides heartbeats.
_LIVENESS_CHECK = 1.0
# The longest wait for a dropped connection's written bytes to leave the server.
_DROP_FLUSH_TIMEOUT = 1.0


class Framing(enum.Enum):
    """How events are framed on the wire."""

    SSE = _SSE
    NDJSON = _NDJSON


def negotiate_framing(accept: str | None) -> Framing:
    """Pick the framing from `Accept`: the first of SSE/NDJSON listed wins; default NDJSON."""
    for item in (accept or "").split(","):
        media = item.split(";", 1)[0].strip().lower()
        if media == _SSE:
            return Framing.SSE
        if media == _NDJSON:
            return Framing.NDJSON
    return Framing.NDJSON


def parse_last_event_id(value: str | None) -> int | None:
    """The integer in a `Last-Event-ID` header, or None when absent or not a seq."""
    if value is None:
        return None
    text = value.strip()
    # Bounded so a hostile header cannot reach int()'s digit limit; no real seq is that long.
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


class StreamSource(Protocol):
    """Something whose events can be streamed: an event log plus its current full state."""

    @property
    def id(self) -> str:
        """The resource's id (for statistics)."""
        ...

    @property
    def log(self) -> EventLog:
        """The resource's event log."""
        ...

    def snapshot(self) -> Snapshot:
        """The full current state, consistent with `log.last_seq`."""
        ...


@attrs.frozen(kw_only=True)
class StreamSettings:
    """What one connection needs to know about the server's settings and faults."""

    heartbeat_interval: float
    write_timeout: float  # the longest one write may wait for a client that reads nothing
    retry_ms: int
    drop_after: int | None
    stopping: Callable[[], bool]
    on_event_sent: Callable[[], None] = lambda: None


class _Dropped(Exception):
    """The fault injector cut this connection."""


class Stalled(ConnectionResetError):
    """The client read nothing for `write_timeout`; its connection was cut."""


async def bounded_write(request: web.BaseRequest, write: Awaitable[None], timeout: float) -> None:
    """Await a write to `request`'s client (it waits while the client's buffers are full) for
    at most `timeout` seconds; past it, cut the connection and raise `Stalled`, so the handler
    ends. The one write bound of streams and file downloads (`HttpLimits.write_timeout`)."""
    try:
        async with asyncio.timeout(timeout):
            await write
    except TimeoutError:
        transport = request.transport
        if transport is not None:
            _reset(transport)
        raise Stalled(f"the client read nothing for {timeout:g} s") from None


def _reset(transport: asyncio.Transport) -> None:
    """Close the connection with a TCP reset, dropping what the kernel still holds to send.

    A plain close queues the FIN behind the unsent bytes, which a client that reads nothing
    never takes: its socket would linger, holding up to a send buffer, and it would never see
    the connection end. A zero linger time makes the close a reset, at once.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        linger = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)
        with contextlib.suppress(OSError):  # already gone, or not a TCP socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    transport.abort()


class Connection:
    """One open stream connection: a cursor over a source's log, written to one response."""

    def __init__(
        self,
        request: web.Request,
        source: StreamSource,
        settings: StreamSettings,
        *,
        framing: Framing,
        last_event_id: int | None,
    ) -> None:
        self.request = request
        self.source = source
        self.settings = settings
        self.framing = framing
        self.last_event_id = last_event_id
        self.cursor = 0
        self.events_sent = 0
        self.bytes_sent = 0
        self.snapshots_sent = 0
        self.dropped = False
        self._response: web.StreamResponse | None = None
        self._last_write = time.monotonic()

    def stats(self) -> dict[str, object]:
        """Counters of this connection, for tests that check it stays bounded."""
        transport = self.request.transport
        return {
            "resource_id": self.source.id,
            "framing": self.framing.name.lower(),
            "cursor": self.cursor,
            "log_last_seq": self.source.log.last_seq,
            "events_sent": self.events_sent,
            "snapshots_sent": self.snapshots_sent,
            "bytes_sent": self.bytes_sent,
            "write_buffer_size": transport.get_write_buffer_size() if transport else 0,
        }

    async def serve(self) -> web.StreamResponse:
        """Write the stream until its terminal event, shutdown, a fault, or the client leaves."""
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": self.framing.value,
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )
        self._response = response
        try:
            await response.prepare(self.request)
            if self.framing is Framing.SSE:
                # Written as the contract spells it; the decoder also accepts `retry:<ms>`.
                await self._write(f"retry: {self.settings.retry_ms}\n\n".encode("ascii"))
            if await self._run():
                await bounded_write(self.request, response.write_eof(), self.settings.write_timeout)
        except _Dropped:
            self.dropped = True
        except Stalled:
            pass  # cut: nobody is reading, and the handler and its slot are freed
        except ConnectionError:
            pass  # the client went away; there is nobody left to tell
        return response

    async def _run(self) -> bool:
        """Send events; True when the stream should end cleanly, False when the client is gone."""
        log = self.source.log
        if self.last_event_id is not None:
            if log.replayable(self.last_event_id):
                self.cursor = self.last_event_id
            elif await self._send_snapshot():
                return True
        elif await self._send_snapshot():
            return True
        while True:
            if self.settings.stopping() or log.gone:
                return True  # shutting down, or the resource was forgotten: nothing follows
            batch = log.after(self.cursor)
            if batch is None:
                # This reader fell behind the retained window: catch up from the current state.
                if await self._send_snapshot():
                    return True
                continue
            for event in batch:
                await self._send_event(event)
                if event.terminal:
                    return True
            if batch:
                continue
            if log.closed:
                return True  # the terminal event is behind the cursor (resumed after it)
            wait = min(self._heartbeat_due() - time.monotonic(), _LIVENESS_CHECK)
            await log.wait_beyond(self.cursor, max(wait, 0.0))
            transport = self.request.transport
            if transport is None or transport.is_closing():
                return False
            if log.last_seq == self.cursor and time.monotonic() >= self._heartbeat_due():
                await self._write(self._heartbeat())

    def _heartbeat_due(self) -> float:
        return self._last_write + self.settings.heartbeat_interval

    def _heartbeat(self) -> bytes:
        if self.framing is Framing.SSE:
            return b": heartbeat\n\n"
        return b'{"type":"heartbeat"}\n'

    async def _send_snapshot(self) -> bool:
        """Send the full current state; True if it was terminal."""
        snapshot = self.source.snapshot()
        self.cursor = snapshot.seq
        self.snapshots_sent += 1
        for frame in snapshot.frames:
            data = (
                frame.sse(snapshot.seq)
                if self.framing is Framing.SSE
                else frame.ndjson(snapshot.seq)
            )
            await self._write(data)
            await self._count_event()
        return snapshot.terminal

    async def _send_event(self, event: LogEvent) -> None:
        await self._write(event.sse() if self.framing is Framing.SSE else event.ndjson())
        self.cursor = event.seq
        await self._count_event()

    async def _write(self, data: bytes) -> None:
        assert self._response is not None
        await bounded_write(self.request, self._response.write(data), self.settings.write_timeout)
        self.bytes_sent += len(data)
        self._last_write = time.monotonic()

    async def _count_event(self) -> None:
        self.events_sent += 1
        self.settings.on_event_sent()
        limit = self.settings.drop_after
        if limit is not None and self.events_sent >= limit:
            await self._abort()

    async def _abort(self) -> None:
        """Cut the TCP connection mid-body: the client sees a broken response, not an end."""
        transport = self.request.transport
        if transport is not None:
            # Let the events already written leave the server first, so the client gets
            # exactly `drop_after` of them (abort() discards a non-empty buffer): with a zero
            # high-water mark, drain() returns once the buffer is empty.
            transport.set_write_buffer_limits(high=0, low=0)
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(_DROP_FLUSH_TIMEOUT):
                    await self.request.writer.drain()
            transport.abort()
        raise _Dropped
