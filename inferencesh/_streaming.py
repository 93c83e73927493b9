"""Reconnection policy for streams: `StreamingOptions` and the pure backoff computation."""

from __future__ import annotations

import random
from typing import Any

import attrs

__all__ = ["StreamingOptions", "compute_backoff"]


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class StreamingOptions:
    """How a stream reads, waits, and reconnects. Change a copy with `attrs.evolve`.

    Reconnects wait `retry_delay * retry_backoff ** (attempt - 1)` seconds, capped at
    `max_retry_delay`, plus up to `retry_jitter` seconds of random jitter. The server's SSE
    `retry:` hint replaces `retry_delay` as the base, and a `Retry-After` header sets a floor.
    `max_retries` counts consecutive failed attempts: the count starts again as soon as a
    connection delivers something new, so a long task on a flaky network never runs out of
    retries while it progresses, and a server that only repeats itself is not retried forever.

    `connect_timeout` bounds opening a connection. `idle_timeout` bounds the silence on an open
    stream (no byte at all, heartbeats included) before it counts as dropped. There is no cap
    on a stream's total duration.
    """

    max_retries: int = attrs.field(default=5, validator=_non_negative)
    retry_delay: float = attrs.field(default=1.0, validator=_non_negative)
    retry_backoff: float = attrs.field(default=2.0, validator=_positive)
    max_retry_delay: float = attrs.field(default=30.0, validator=_non_negative)
    retry_jitter: float = attrs.field(default=0.25, validator=_non_negative)
    chunk_size: int = attrs.field(default=64 * 1024, validator=_positive)
    connect_timeout: float | None = attrs.field(default=10.0, validator=_positive)
    idle_timeout: float | None = attrs.field(default=60.0, validator=_positive)
    max_line_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)


def compute_backoff(
    options: StreamingOptions,
    attempt: int,
    *,
    server_retry: float | None = None,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before reconnect `attempt` (1-based).

    `server_retry` is the SSE `retry:` hint in seconds; it replaces `retry_delay` as the base.
    `retry_after` is a `Retry-After` value in seconds; the wait is never shorter than it.
    """
    base = options.retry_delay if server_retry is None else server_retry
    exponent = max(0, attempt - 1)
    try:
        delay = base * options.retry_backoff**exponent
    except OverflowError:
        delay = options.max_retry_delay
    delay = min(delay, options.max_retry_delay)
    if options.retry_jitter and delay > 0:
        delay += (rng or random).uniform(0, options.retry_jitter)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Read a `Retry-After` header: delta-seconds or an HTTP date; None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from datetime import UTC, datetime
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)
