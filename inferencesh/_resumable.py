"""Resumable streams: read one connection, reconnect on failure, hand payloads to a tracker.

The same machinery serves task streams and agent chat streams. A connection is read in
`StreamingOptions.chunk_size` reads and framed by the SSE decoder, or by newlines when the
server answers NDJSON. Each read's payloads are handed on as `Frames`, still unparsed;
`StreamItems` parses them one at a time as the consumer asks and gives each to a `Tracker`,
which knows the resource and decides what is new. This module knows only bytes, framing, and
when and how to reconnect.

Building items lazily is what keeps streams fast: only one event's objects are alive at a
time, so the cyclic garbage collector never has to run over a backlog of them. It also means
the consumer may run in another thread (the blocking client), fetching frames from the event
loop with one call per network read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from types import TracebackType
from typing import Any, Generic, NamedTuple, Protocol, Self, TypeVar

from ._exceptions import (
    APIStatusError,
    ProtocolError,
    RetriesExhaustedError,
    SSELineTooLongError,
    StreamInterruptedError,
    TransportError,
)
from ._streaming import StreamingOptions, compute_backoff
from ._transport import Transport
from .sse import SSEDecoder

__all__ = ["ACCEPT", "Frames", "ItemStream", "StreamItems", "Tracker", "resumable_stream"]

logger = logging.getLogger("inferencesh.stream")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

loads: Callable[[str | bytes], Any]
try:  # orjson is an optional speed-up; both give the same values for JSON text.
    import orjson

    loads = orjson.loads
    _DECODE_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - exercised when the speedups extra is absent
    loads = json.loads
    _DECODE_ERRORS = (ValueError,)

_FIRST_READ = 1024

# SSE first (it can resume); NDJSON is what the hosted API's official clients ask for.
ACCEPT = "text/event-stream, application/x-ndjson;q=0.9"


class Tracker(Protocol[T_co]):
    """What a resumable stream needs to know about the resource it follows."""

    path: str
    """The stream's URL path, relative to the base URL."""
    label: str
    """How log messages and errors name the resource, e.g. "task task_1"."""
    last_event_id: str
    """The last SSE event id received; sent back as `Last-Event-ID` on reconnect."""
    server_retry: float | None
    """The server's SSE `retry:` hint, in seconds."""
    finished: bool
    """Whether the resource has ended, so the stream must stop."""
    delivered: int
    """How many payloads gave the consumer something; counted by `StreamItems`."""

    def absorb(self, payload: Any) -> Sequence[T_co]:
        """Fold one decoded payload in and return what is new for the consumer."""


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
        if self._pending_len > self._max or max(map(len, lines), default=0) > self._max:
            raise ProtocolError(f"an NDJSON line is longer than {self._max} bytes")
        return list(filter(bytes.strip, lines))  # blank lines carry nothing


def _frames(
    decoder: SSEDecoder | None, framer: _LineFramer | None, chunk: bytes, tracker: Tracker[Any]
) -> tuple[list[str] | list[bytes], list[str] | None, SSELineTooLongError | None]:
    """The payloads completed by `chunk`, their SSE ids (None for NDJSON), and a framing error
    that came after them."""
    if framer is not None:
        return framer.feed(chunk), None, None
    assert decoder is not None
    error: SSELineTooLongError | None = None
    try:
        datas, ids = decoder.feed_data(chunk)
    except SSELineTooLongError as exc:
        datas, ids, error = [e.data for e in exc.events], [e.id for e in exc.events], exc
    if decoder.retry is not None:
        tracker.server_retry = decoder.retry / 1000
    if "" in datas:  # an event with empty data carries no payload
        kept = [i for i, data in enumerate(datas) if data]
        datas, ids = [datas[i] for i in kept], [ids[i] for i in kept]
    return datas, ids, error


class Frames(NamedTuple, Generic[T]):
    """The payloads of one network read, for `tracker`: JSON texts, or decoded objects when
    `decoded` (a task as the API's answer to a POST already holds it).

    `sync` marks a point where the stream's next step depends on what the consumer made of
    everything so far (whether the resource finished): a consumer that reads ahead must absorb
    these frames before it fetches more.
    """

    tracker: Tracker[T]
    payloads: Sequence[Any]
    decoded: bool = False
    sync: bool = False


async def _read_connection(
    transport: Transport, tracker: Tracker[T], options: StreamingOptions
) -> AsyncGenerator[Frames[T], None]:
    headers = {"Accept": ACCEPT, "Cache-Control": "no-cache"}
    if tracker.last_event_id:
        headers["Last-Event-ID"] = tracker.last_event_id
    async with transport.stream(
        tracker.path,
        headers=headers,
        connect_timeout=options.connect_timeout,
        idle_timeout=options.idle_timeout,
    ) as resp:
        sse = resp.content_type == "text/event-stream"
        decoder = SSEDecoder(max_line_bytes=options.max_line_bytes) if sse else None
        framer = None if sse else _LineFramer(options.max_line_bytes)
        # A small first read hands out the first event as soon as it is decoded, rather than
        # after decoding a whole burst of backlog.
        size = min(options.chunk_size, _FIRST_READ)
        while True:
            chunk = await resp.read(size)
            if not chunk:
                return
            if size == options.chunk_size:
                # A backlog (the consumer was busy): take up to three reads more of what has
                # already arrived. It costs nothing here, and a consumer in another thread
                # saves the hand-offs.
                chunk += resp.read_buffered(3 * size)
            size = options.chunk_size
            payloads, ids, too_long = _frames(decoder, framer, chunk, tracker)
            if payloads:
                if ids:
                    tracker.last_event_id = ids[-1]
                yield Frames(tracker, payloads)
                # An early way out only: a consumer that reads ahead (the blocking client) may
                # not have absorbed these yet; `resumable_stream` waits for it before deciding.
                if tracker.finished:
                    return
            if too_long is not None:
                raise too_long


async def resumable_stream(
    transport: Transport,
    tracker: Tracker[T],
    options: StreamingOptions,
    *,
    on_reconnect: Callable[[int, float, BaseException], None] | None = None,
) -> AsyncGenerator[Frames[T], None]:
    """Yield the payloads of the resource's stream as `Frames` (one per network read) until
    `tracker` is finished, reconnecting as needed. Consume them with `StreamItems`.

    Retryable failures (network, idle timeout, 429, 5xx, a stream that ends before the resource
    does) are retried with backoff, resuming with `Last-Event-ID`. `RetriesExhaustedError` ends
    `max_retries` failures in a row, chained to the last one. Other 4xx answers and protocol
    errors raise at once.
    """
    failures = 0
    while True:
        delivered = tracker.delivered
        retry_after: float | None = None
        error: BaseException
        try:
            async with aclosing(_read_connection(transport, tracker, options)) as frames:
                async for batch in frames:
                    yield batch
            error = StreamInterruptedError(
                f"the server ended the stream before the {tracker.label} finished"
            )
        except APIStatusError as exc:
            if not exc.retryable:
                raise
            error, retry_after = exc, exc.retry_after
        except TransportError as exc:
            error = exc
        # A step for the consumer: it asks for the next frames only once it has absorbed all
        # those before, which the decision below depends on.
        yield Frames(tracker, ())
        if tracker.finished:
            return
        if tracker.delivered > delivered:
            # Something new got through, so the connection was healthy: start counting afresh.
            # A reconnect that only repeats known state does not count, or a server that keeps
            # answering with nothing new would be retried forever.
            failures = 0
        failures += 1
        if failures > options.max_retries:
            raise RetriesExhaustedError(
                f"gave up on the {tracker.label} after {failures - 1} reconnect attempts: {error}",
                attempts=failures - 1,
            ) from error
        delay = compute_backoff(
            options, failures, server_retry=tracker.server_retry, retry_after=retry_after
        )
        logger.info(
            "stream of the %s interrupted (%s); reconnect %d/%d in %.2fs",
            tracker.label,
            error,
            failures,
            options.max_retries,
            delay,
        )
        if on_reconnect is not None:
            on_reconnect(failures, delay, error)
        await asyncio.sleep(delay)


class StreamItems(Generic[T]):
    """The items a stream of `Frames` gives, built one at a time as the consumer asks.

    `take` is plain code, so the consumer can run it in any thread; only `fetch` (the next
    network read) and `aclose` must run on the event loop that owns the connection.
    """

    def __init__(self, source: AsyncGenerator[Frames[T], None]) -> None:
        self._source = source
        self._tracker: Tracker[T] | None = None
        self._payloads: Iterator[Any] = iter(())
        self._decoded = False
        self._ready: list[T] = []  # the rest of one payload's items, last first
        self._fetcher: asyncio.Task[Any] | None = None  # the task running `fetch`, if any
        self._fetch_ended: asyncio.Future[None] | None = None
        self.closing = False
        """Set with the item that finishes the resource: close before handing it out."""

    @property
    def tracker(self) -> Tracker[T] | None:
        """The tracker of the stream, once its first frames have arrived."""
        return self._tracker

    def take(self) -> T | None:
        """The next item from the frames in hand, or None when more must be fetched."""
        if self._ready:
            return self._ready.pop()
        tracker = self._tracker
        if tracker is None:
            return None
        decoded = self._decoded
        try:
            for raw in self._payloads:
                if decoded:
                    payload = raw
                else:
                    try:
                        payload = loads(raw)
                    except _DECODE_ERRORS as exc:
                        text = f"stream event is not valid JSON: {raw[:80]!r}"
                        raise ProtocolError(text) from exc
                items = tracker.absorb(payload)
                if items:
                    tracker.delivered += 1
                    if tracker.finished:
                        self.closing = True
                        self._payloads = iter(())
                    if len(items) > 1:
                        self._ready = list(items[:0:-1])
                    return items[0]
        except BaseException:
            self._payloads = iter(())  # nothing after a payload that failed
            raise
        return None

    async def fetch(self) -> Frames[T] | None:
        """Read the next frames (hand them to `load`); None once the stream has ended."""
        self._fetcher = asyncio.current_task()
        try:
            return await self._source.__anext__()
        except StopAsyncIteration:
            return None
        finally:
            self._fetcher = None
            if self._fetch_ended is not None and not self._fetch_ended.done():
                self._fetch_ended.set_result(None)

    def load(self, frames: Frames[T]) -> None:
        """Take `frames` as the next ones `take` reads from."""
        self._tracker = frames.tracker
        self._payloads = iter(frames.payloads)
        self._decoded = frames.decoded

    async def aclose(self) -> None:
        """Close the source, and with it the connection. A read still running in another task
        (a consumer in another thread that gave up on it, say on Ctrl-C) is cancelled."""
        self.closing = False
        fetcher = self._fetcher
        if fetcher is not None and fetcher is not asyncio.current_task():
            # The source cannot be closed while that read runs: stop it and wait for its end.
            self._fetch_ended = asyncio.get_running_loop().create_future()
            fetcher.cancel()
            await self._fetch_ended
        await self._source.aclose()


class ItemStream(AsyncIterator[T]):
    """A stream's items for `async for`. Leaving early (`break`, an exception, cancellation)
    or reaching the end closes the connection; so do `aclose()` and `async with`."""

    def __init__(self, source: AsyncGenerator[Frames[T], None]) -> None:
        self._items = StreamItems(source)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        items = self._items
        while True:
            try:
                item = items.take()
            except BaseException:
                await items.aclose()
                raise
            if item is not None:
                if items.closing:
                    await items.aclose()  # release the connection before the last item
                return item
            frames = await items.fetch()
            if frames is None:
                raise StopAsyncIteration
            items.load(frames)

    def items(self) -> StreamItems[T]:
        """The items not yet consumed, for driving this stream from another thread."""
        return self._items

    async def aclose(self) -> None:
        """Stop streaming and close the connection now."""
        await self._items.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
