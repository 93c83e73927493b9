"""Resumable streams: read one resource's stream across connections, each event once.

`StreamReader` is the event-loop side of every stream (task or chat). It owns the resume state:
the last event id, the server's retry hint, whether the resource has ended, and how many
connections failed in a row. It frames each network read (SSE, or NDJSON when the server
answers that), decodes and structures every payload once through the resource's `Codec`, drops
what it already handed on, and returns the rest as one batch. It decides to reconnect or stop
on its own; it never looks at what the consumer made of a batch.

Event ids are positions. When a server numbers its events with integers (SSE `id:`, or an
`event_id` key on an NDJSON line: our emulator's extension), an event is taken only if it moves
the stream on (`_Cursor`): a relative event (one that only makes sense after the one before it,
such as a partial update or a text delta) right after the last one taken, an absolute event (a
full snapshot) at or after it. An id already passed is a replay and is dropped; an id further
on means events were skipped, and another payload under the id last taken means the server
numbers its events afresh: either way the reader reconnects without `Last-Event-ID` and the
fresh connection's first snapshot anchors the stream again, whatever its id. A server that
skips events and will not send a snapshot raises `EventGapError`. Streams without ids are taken
as they come; the consumer's view places snapshots' log lines by position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ._connection import ConnectionEvent, ConnectionState
from ._exceptions import (
    APIStatusError,
    EventGapError,
    EventTooLargeError,
    InferenceshError,
    ProtocolError,
    RetriesExhaustedError,
    StreamInterruptedError,
    TaskTimeoutError,
    TransportError,
)
from ._retry import asks_too_long, may_retry, retry_delay
from ._streaming import StreamingOptions
from ._transport import StreamResponse, Transport
from ._wire import Buffer, Line, header_safe, is_blank, loads, split_lines
from .sse import SSEDecoder

__all__ = ["ACCEPT", "Codec", "NDJSONFramer", "Record", "StreamReader"]

logger = logging.getLogger("inferencesh.stream")

# SSE first (it can resume); NDJSON is what the hosted API's official clients ask for.
ACCEPT = "text/event-stream, application/x-ndjson;q=0.9"
# An integer id longer than this is not a position we could have counted to.
_MAX_ID_DIGITS = 18
# A server's SSE `retry:` hint beyond a day means "a long time" (the policy caps it anyway).
_MAX_RETRY_HINT_MS = 86_400_000
# The message `aclose` cancels a read with, so the read knows the cancellation is its own.
_CLOSED = "inferencesh: stream closed"


class Record(Protocol):
    """What the reader needs to know about one structured event."""

    @property
    def absolute(self) -> bool:
        """A full snapshot of the resource, meaningful whatever came before it."""
        ...

    @property
    def final(self) -> bool:
        """The resource has ended with this event: nothing after it is read."""
        ...


R = TypeVar("R", bound=Record)
R_co = TypeVar("R_co", bound=Record, covariant=True)


class Codec(Protocol[R_co]):
    """The one place a resource's payloads are structured."""

    path: str
    """The stream's URL path, relative to the base URL."""
    label: str
    """How messages and errors name the resource, e.g. "task task_1"."""

    def structure(self, payload: Any) -> R_co | None:
        """The event a decoded payload carries; None for one that carries nothing
        (a heartbeat). Raises `ProtocolError` for a malformed payload."""
        ...


Start = Callable[[], Awaitable[tuple["Codec[R]", Sequence[R]]]]
"""What opens a stream: it finds the resource (a POST, or nothing to do) and returns its
codec with the events already in hand (the POST's answer), which come first."""


class NDJSONFramer:
    """Splits an NDJSON body into lines; a line cut across reads is joined once, at its end."""

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._pieces: list[bytes] = []
        self._pending = 0

    def feed(self, chunk: bytes) -> tuple[list[Line], EventTooLargeError | None]:
        """The lines `chunk` completes (blank ones included), in order, and the error for a
        line past the bound, found after them (the framer is then of no further use)."""
        lines, tail, _ = split_lines(chunk)
        if not lines:
            self._pieces.append(tail)
            self._pending += len(tail)
            return [], self._too_long() if self._pending > self._max else None
        over = self._pending + len(chunk) > self._max
        if self._pieces:
            self._pieces.append(lines[0])  # type: ignore[arg-type]  # bytes or a view
            lines[0] = b"".join(self._pieces)
            self._pieces = []
        self._pending = len(tail)
        if tail:
            self._pieces.append(tail)
        if over:
            for index, line in enumerate(lines):
                if len(line) > self._max:
                    return lines[:index], self._too_long()
            if len(tail) > self._max:
                return lines, self._too_long()
        return lines, None

    def _too_long(self) -> EventTooLargeError:
        return EventTooLargeError(f"an NDJSON line is longer than {self._max} bytes")


class _Resync(Exception):
    """The stream can no longer be followed by its ids (events were skipped, or the server
    numbers them afresh): the connection must be replaced by one that starts from a
    snapshot."""


class _Cursor:
    """Where the reader is in the resource's event log; reader-owned.

    `top` is the position (integer id) of the last event taken; an event is taken only if it
    moves the stream on: a relative event right after `top`, a snapshot at or after it. Ids
    already passed are replays (dropped), but a relative event under `top` itself is compared
    with the one taken there: another payload means the server's ids are not positions any
    more, and, as after skipped events, the stream starts again from a snapshot (`resync`),
    which may then be at any id. Ids are consecutive integers (the emulator's are); other ids
    are not positions, and events under them are taken as they come.
    """

    def __init__(self) -> None:
        self.last_id = ""  # sent as Last-Event-ID; "" when it must not be (not header-safe)
        self.top: int | None = None  # the position of the last event taken
        # That event's payload (one event per stream at most), to tell a repeat of it.
        self.top_data: Buffer | None = None
        self.resync = False  # this connection started afresh: its first snapshot anchors
        self.novel = False  # the current connection brought something new
        self.last_absolute: Buffer | None = None  # the last id-less snapshot, to tell repeats

    def admit(self, record: Record, event_id: str | None, data: Buffer) -> bool:
        """Whether `record`, arriving with `event_id`, is handed on. Raises `_Resync`."""
        at = None
        if event_id is not None and event_id.isdigit() and event_id.isascii():
            at = int(event_id) if len(event_id) <= _MAX_ID_DIGITS else None
        if at is None:
            if event_id is not None:
                self.last_id = event_id if header_safe(event_id) else ""
            if not record.absolute:
                self.novel = True
            elif data != self.last_absolute:
                self.novel = True
                self.last_absolute = data
            self.resync = False
            return True
        top = self.top
        if top is not None:
            if at <= top:
                if record.absolute:
                    if at < top and not (record.final or self.resync):
                        return False  # a stale snapshot: the server replays or rewinds
                    # Else a snapshot at the current position, the end, or the anchor of a
                    # fresh start: taken whatever its id.
                elif at < top or data == self.top_data:
                    return False  # taken already: the server replays, repeats or rewinds
                else:
                    raise _Resync(f"the server sent another event under id {at}")
            elif at > top + 1 and not record.absolute:
                raise _Resync(f"the server skipped events {top + 1} to {at - 1}")
        if top is None or at > top:
            self.novel = True
        self.top = at
        self.top_data = data
        self.last_id = event_id  # type: ignore[assignment]  # digits: header-safe
        self.resync = False
        return True


class StreamReader(Generic[R]):
    """The loop side of a stream: batches of new events (what has arrived, up to a limit)
    until the resource ends. Use from one task at a time; `aclose` may be called from any
    task."""

    def __init__(
        self,
        transport: Transport,
        options: StreamingOptions,
        start: Start[R],
        *,
        on_abandon: Callable[[Codec[R]], Awaitable[None]] | None = None,
    ) -> None:
        self.codec: Codec[R] | None = None
        """The resource's codec, once `start` has run (on the first `next_batch`)."""
        self._start: Start[R] | None = start
        self._transport = transport
        self._options = options
        self._cursor = _Cursor()
        self._retry_hint: float | None = None
        self._failures = 0
        self._ended = False
        self._closed = False
        self._deadline: float | None = None
        self._connection: contextlib.AsyncExitStack | None = None
        self._response: StreamResponse | None = None
        self._framer: SSEDecoder | NDJSONFramer | None = None
        self._reading: asyncio.Task[Any] | None = None  # the task in `next_batch`, if any
        self._read_done: asyncio.Future[None] | None = None  # done when that task leaves
        # The payloads of the last network read not yet decoded, their SSE ids, and a failure
        # met after them (raised or handled once they are taken).
        self._payloads: Sequence[Buffer] = ()
        self._ids: Sequence[str | None] | None = None
        self._next = 0
        self._problem: BaseException | None = None
        # Run once when the reader is closed before its resource ended (cancel the task).
        self._on_abandon = on_abandon
        self.connection: ConnectionEvent | None = None
        """The latest change of the connection (`_report`); written only by the reader."""

    @property
    def ended(self) -> bool:
        """Whether the resource's final event has been read."""
        return self._ended

    async def next_batch(self, limit: int = 64) -> list[R] | None:
        """The next events to hand on (at most `limit`), in order; None once the resource has
        ended, or the reader was closed (by `aclose`, from this or any other task). Raises
        from the error tree; the connection is then closed, and once the stream had started,
        "gave_up" is reported with that error: the one place that says a stream stopped."""
        try:
            return await self._next_batch(limit)
        except InferenceshError as exc:
            last = self.connection
            if self.codec is not None and (last is None or last.state != "gave_up"):
                self._report("gave_up", cause=exc)
            raise

    async def _next_batch(self, limit: int) -> list[R] | None:
        if self._ended or self._closed:
            await self._disconnect()
            return None
        loop = asyncio.get_running_loop()
        if self._deadline is None and self._options.total_timeout is not None:
            self._deadline = loop.time() + self._options.total_timeout
        task = asyncio.current_task()
        done: asyncio.Future[None] = loop.create_future()
        self._reading, self._read_done = task, done
        scope = asyncio.timeout_at(self._deadline)
        try:
            async with scope:
                if self._start is not None:
                    start, self._start = self._start, None
                    self.codec, seed = await start()
                    if seed:
                        self._ended = any(record.final for record in seed)
                        return list(seed)
                return await self._read(limit)
        except TimeoutError as exc:
            await self._disconnect()
            if not scope.expired():
                raise
            seconds = self._options.total_timeout
            if self.codec is None:  # still starting: the POST that creates the resource
                message = f"the stream did not start within {seconds} seconds (total_timeout)"
                raise TaskTimeoutError(message) from exc
            message = f"the {self.codec.label} did not end within {seconds} seconds"
            raise TaskTimeoutError(message) from exc
        except asyncio.CancelledError as exc:
            await self._disconnect()
            # `aclose` from another task stops this read, not the task it runs in.
            if exc.args == (_CLOSED,) and task is not None and task.uncancel() == 0:
                return None
            raise
        except BaseException:
            await self._disconnect()
            raise
        finally:
            self._reading = None
            done.set_result(None)

    @property
    def _codec(self) -> Codec[R]:
        assert self.codec is not None, "the stream has not started"
        return self.codec

    async def aclose(self) -> None:
        """Stop: a read running in another task ends (its `next_batch` returns None), and the
        connection is closed."""
        self._closed = True
        reading = self._reading
        done = self._read_done
        if reading is not None and done is not None and reading is not asyncio.current_task():
            reading.cancel(_CLOSED)
            await asyncio.shield(done)
        await self._disconnect()
        abandon, self._on_abandon = self._on_abandon, None
        if abandon is not None and not self._ended and self.codec is not None:
            await abandon(self.codec)

    async def _read(self, limit: int) -> list[R] | None:
        batch: list[R] = []
        while True:
            if self._next < len(self._payloads):
                batch += self._take(limit - len(batch))
                if self._ended:
                    await self._disconnect()  # release the connection before the last events
                    return batch or None
                if len(batch) >= limit or (batch and self._problem is not None):
                    return batch  # a problem met after these events waits for the next call
                continue
            if batch:
                # More events only if they have already arrived: never wait while holding some.
                try:
                    chunk = self._response.read_nowait() if self._response is not None else b""
                except TransportError as exc:
                    self._problem = exc  # after these events
                    return batch
                if chunk:
                    self._frame(chunk)
                    continue
                return batch
            problem, self._problem = self._problem, None
            if isinstance(problem, TransportError | _Resync):
                await self._reconnect_after(problem)
            elif problem is not None:
                raise problem
            response = self._response or await self._connect()
            try:
                chunk = await response.read()
            except TransportError as exc:
                self._problem = exc
                continue
            if not chunk:
                self._problem = StreamInterruptedError(
                    f"the server ended the stream before the {self._codec.label} ended"
                )
                continue
            self._frame(chunk)

    def _frame(self, chunk: bytes) -> None:
        """Split a network read into payloads, still undecoded (bytes: the garbage collector
        never looks at them); a framing error is kept for after them."""
        framer = self._framer
        if isinstance(framer, SSEDecoder):
            self._payloads, self._ids, self._problem = framer.feed_payloads(chunk)
            if framer.retry is not None:  # ms, however many digits: capped long before floats
                self._retry_hint = min(framer.retry, _MAX_RETRY_HINT_MS) / 1000
        else:
            assert framer is not None
            (self._payloads, self._problem), self._ids = framer.feed(chunk), None
        self._next = 0

    def _take(self, limit: int) -> list[R]:
        """Decode and structure the next payloads in hand, up to `limit` new events: few at a
        time, so only a few events' objects are alive at once (a whole read's would be
        promoted to the collector's old generation and make every full collection slower).
        A problem met on the way (a malformed event, a gap) is kept in `_problem`."""
        payloads, ids = self._payloads, self._ids
        structure = self._codec.structure
        admit = self._cursor.admit
        batch: list[R] = []
        index = self._next
        end = len(payloads)
        try:
            while index < end and len(batch) < limit:
                data = payloads[index]
                index += 1
                if is_blank(data):
                    continue  # an empty event, a blank line: no payload
                payload = loads(data)
                if ids is not None:
                    event_id = ids[index - 1]
                elif type(payload) is dict and "event_id" in payload:
                    event_id = _ndjson_id(payload.pop("event_id"))
                else:
                    event_id = None
                record = structure(payload)
                if record is None or not admit(record, event_id, data):
                    continue
                batch.append(record)
                if record.final:
                    self._ended = True
                    break
        except (ProtocolError, _Resync) as exc:
            self._problem = exc
            index = end  # nothing after a payload that broke the stream
        self._next = index
        if self._ended:
            self._payloads, self._ids, self._next = (), None, 0
        return batch

    async def _connect(self) -> StreamResponse:
        cursor = self._cursor
        headers = {"Accept": ACCEPT, "Cache-Control": "no-cache"}
        if cursor.last_id and not cursor.resync:
            headers["Last-Event-ID"] = cursor.last_id
        while True:
            stack = contextlib.AsyncExitStack()
            try:
                response = await stack.enter_async_context(
                    self._transport.stream(self._codec.path, headers=headers, options=self._options)
                )
            except (TransportError, APIStatusError) as exc:
                await stack.aclose()
                if not may_retry(exc, idempotent=True):
                    raise  # an answer no retry can change
                await self._wait_to_retry(exc)
                continue
            except BaseException:
                await stack.aclose()
                raise
            self._connection, self._response = stack, response
            limit = self._options.max_event_bytes
            if response.content_type == "text/event-stream":
                self._framer = SSEDecoder(max_line_bytes=limit)
            else:
                self._framer = NDJSONFramer(limit)
            cursor.novel = False
            self._report("connected")
            return response

    async def _reconnect_after(self, error: BaseException) -> None:
        if isinstance(error, _Resync):
            if self._cursor.resync:  # a fresh connection, and still no snapshot to heal from
                raise EventGapError(f"the stream of the {self._codec.label}: {error}") from None
            self._cursor.resync = True  # until an event is taken again
            error = StreamInterruptedError(f"{error}; reconnecting for a fresh snapshot")
        await self._disconnect()
        await self._wait_to_retry(error)

    async def _wait_to_retry(self, error: BaseException) -> None:
        if self._cursor.novel:
            # Something new got through, so the connection was healthy: start counting afresh.
            self._failures = 0
            self._cursor.novel = False
        self._failures += 1
        retry_after = error.retry_after if isinstance(error, APIStatusError) else None
        delay = retry_delay(
            self._options, self._failures, retry_after=retry_after, server_hint=self._retry_hint
        )
        if delay is None:
            if asks_too_long(self._options, retry_after):
                raise error  # rather than sleep that long: the server's own error
            raise RetriesExhaustedError(
                f"gave up on the {self._codec.label} after {self._failures - 1} reconnect "
                f"attempts: {error}",
                attempts=self._failures - 1,
            ) from error
        hint = self._retry_hint
        logger.info(
            "stream of the %s interrupted (%r); reconnect %d/%d in %.2fs%s",
            self._codec.label,
            str(error),  # %r: the server's error text, escaped (no forged log lines)
            self._failures,
            self._options.max_retries,
            delay,
            "" if hint is None else f" (base {hint:g}s: the server's retry: hint)",
        )
        self._report("reconnecting", delay=delay, cause=error)
        await asyncio.sleep(delay)

    def _report(
        self,
        state: ConnectionState,
        *,
        delay: float | None = None,
        cause: BaseException | None = None,
    ) -> None:
        """Record a change of the connection and tell `on_connection`, if set (what it raises
        is raised from here: the callback is the caller's own)."""
        event = ConnectionEvent(
            state=state,
            resource=self._codec.label,
            attempt=self._failures,
            delay=delay,
            cause=cause,
        )
        self.connection = event
        callback = self._options.on_connection
        if callback is not None:
            callback(event)

    async def _disconnect(self) -> None:
        connection, self._connection, self._response = self._connection, None, None
        if connection is not None:
            await connection.aclose()


def _ndjson_id(value: Any) -> str | None:
    """An NDJSON line's `event_id` as an SSE id would read: a string, or None."""
    if isinstance(value, str):
        return value
    if type(value) is int:
        return str(value)
    return None
