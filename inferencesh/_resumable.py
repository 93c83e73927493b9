"""Resumable streams: read one connection, reconnect on failure, hand payloads to a tracker.

The same machinery serves task streams and agent chat streams. A connection is read in
`StreamingOptions.chunk_size` reads and framed by the SSE decoder, or by newlines when the
server answers NDJSON. Each JSON payload goes to a `Tracker`, which knows the resource and
decides what is new; this module knows only bytes, framing, and when and how to reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, TypeVar

from ._exceptions import (
    APIStatusError,
    InferenceshError,
    ProtocolError,
    RetriesExhaustedError,
    SSELineTooLongError,
    StreamInterruptedError,
    TransportError,
)
from ._streaming import StreamingOptions, compute_backoff
from ._transport import Transport
from .sse import SSEDecoder

__all__ = ["ACCEPT", "Tracker", "resumable_stream"]

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
# Items are handed on in small batches. A batch per network read would be fewer hand-offs, but
# it keeps hundreds of fresh objects alive at once; the cyclic garbage collector then runs over
# and over, promotes them, and ends in full collections that cost more than the hand-offs.
_BATCH = 32

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
        if self._pending_len > self._max or any(len(line) > self._max for line in lines):
            raise ProtocolError(f"an NDJSON line is longer than {self._max} bytes")
        return [line for line in lines if line.strip()]


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


async def _read_connection(
    transport: Transport, tracker: Tracker[T], options: StreamingOptions
) -> AsyncIterator[list[T]]:
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
            size = options.chunk_size
            if not chunk:
                return
            payloads, ids, too_long = _frames(decoder, framer, chunk, tracker)
            failure: InferenceshError | None = too_long
            batch: list[T] = []
            absorb = tracker.absorb
            done = 0
            try:
                for raw in payloads:
                    try:
                        payload = loads(raw)
                    except _DECODE_ERRORS as exc:
                        text = f"stream event is not valid JSON: {raw[:80]!r}"
                        raise ProtocolError(text) from exc
                    batch += absorb(payload)
                    done += 1
                    if tracker.finished:
                        break
                    if len(batch) == _BATCH:
                        yield batch
                        batch = []
            except InferenceshError as exc:
                failure = exc  # raised below, once what came before it is delivered
            if ids and done:
                tracker.last_event_id = ids[done - 1]
            if tracker.finished:
                # Release the connection before handing out the last items, so a consumer
                # that returns right after them leaves nothing open.
                resp.close()
            if batch:
                yield batch
            # A failure the tracker raised (e.g. a failed agent run) ends the stream even though
            # the resource is finished; a framing error after the end no longer matters.
            if failure is not None and (failure is not too_long or not tracker.finished):
                raise failure
            if tracker.finished:
                return


async def resumable_stream(
    transport: Transport,
    tracker: Tracker[T],
    options: StreamingOptions,
    *,
    on_reconnect: Callable[[int, float, BaseException], None] | None = None,
) -> AsyncIterator[list[T]]:
    """Yield what `tracker` finds new, in batches (one per network read), until it is finished,
    reconnecting as needed. Batching keeps per-event overhead out of the layers above.

    Retryable failures (network, idle timeout, 429, 5xx, a stream that ends before the resource
    does) are retried with backoff, resuming with `Last-Event-ID`. `RetriesExhaustedError` ends
    `max_retries` failures in a row, chained to the last one. Other 4xx answers and protocol
    errors raise at once.
    """
    failures = 0
    while True:
        progressed = False
        retry_after: float | None = None
        try:
            async for batch in _read_connection(transport, tracker, options):
                progressed = True
                yield batch
            if tracker.finished:
                return
            error: BaseException = StreamInterruptedError(
                f"the server ended the stream before the {tracker.label} finished"
            )
        except APIStatusError as exc:
            if not exc.retryable:
                raise
            error, retry_after = exc, exc.retry_after
        except TransportError as exc:
            error = exc
        if progressed:
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
