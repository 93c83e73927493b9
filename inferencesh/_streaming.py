"""`StreamingOptions`: how a stream reads, how long it waits, and when it reconnects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ._connection import ConnectionEvent
from ._defaults import USE_CLIENT_DEFAULT, Timeout, call_timeout, check_callback, count
from ._exceptions import UsageError
from ._retry import RetryPolicy, _positive

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "StreamingOptions", "stream_options", "timed"]

DEFAULT_MAX_EVENT_BYTES = 32 * 1024 * 1024


def _optional_positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _positive(_, attribute, value)


def _callback(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_callback(value, attribute.name)


def _callback_repr(value: object) -> str:
    return "None" if value is None else f"<{getattr(value, '__qualname__', type(value).__name__)}>"


def _size(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    count(value, attribute.name, least=1)


@attrs.frozen(kw_only=True)
class StreamingOptions(RetryPolicy):
    """How a stream reads, waits and reconnects. Change a copy with `attrs.evolve`.

    The retry fields are those of `RetryPolicy`: a stream reconnects after a network failure,
    a 429 or 5xx answer, or a server that ends the stream early, waiting as the policy says
    (the server's SSE `retry:` hint replaces `retry_delay` as the base). `max_retries` counts
    failed connections in a row: a connection that brings something new starts the count
    again, so a long task on a flaky network keeps going while a server that only repeats
    itself is given up on.

    Every wait is bounded: `connect_timeout` (opening a connection), `headers_timeout` (from
    sending the request to the response headers, connecting included), `idle_timeout` (no byte
    at all on an open stream, heartbeats included, before it counts as dropped) and
    `total_timeout` (the whole stream, reconnects included; None for no limit), after which
    the stream raises `TaskTimeoutError` whatever the server sends.

    `chunk_size` is the most bytes taken from the connection per read. `max_event_bytes`
    bounds one event (and one line) so a server cannot grow memory without limit; the default,
    32 MiB, leaves room for a partial output that carries an image preview.

    `on_connection` is called with a `ConnectionEvent` as the stream's connection changes:
    "connected" (each time a connection opens), "reconnecting" (with the attempt, the delay
    before it and the failure that caused it) and "gave_up" (just before the stream raises).
    It runs on the event loop that runs the stream (in the blocking client, the SDK's own loop
    thread), so keep it quick and never block in it; an exception it raises is raised out of
    the stream.
    """

    chunk_size: int = attrs.field(default=256 * 1024, validator=_size)
    connect_timeout: float | None = attrs.field(default=10.0, validator=_optional_positive)
    headers_timeout: float | None = attrs.field(default=30.0, validator=_optional_positive)
    idle_timeout: float | None = attrs.field(default=60.0, validator=_optional_positive)
    total_timeout: float | None = attrs.field(default=None, validator=_optional_positive)
    max_event_bytes: int = attrs.field(default=DEFAULT_MAX_EVENT_BYTES, validator=_size)
    on_connection: Callable[[ConnectionEvent], None] | None = attrs.field(
        default=None, validator=_callback, eq=False, repr=_callback_repr
    )


def stream_options(
    options: StreamingOptions | None, default: StreamingOptions, name: str = "options"
) -> StreamingOptions:
    """A call's `options`, or `default` when it gave None; anything else is a `UsageError`."""
    if options is None:
        return default
    if not isinstance(options, StreamingOptions):
        raise UsageError(f"{name} must be StreamingOptions or None, got {type(options).__name__}")
    return options


def timed(options: StreamingOptions, timeout: Timeout) -> StreamingOptions:
    """`options` with a call's `timeout` as their `total_timeout`, if the call gave one."""
    if timeout is USE_CLIENT_DEFAULT:
        return options
    return attrs.evolve(options, total_timeout=call_timeout(timeout, None))
