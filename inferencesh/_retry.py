"""The one retry policy: when to try again, and how long to wait first.

REST calls, uploads, stream reconnects and resumed downloads all ask `retry_delay` how long to
wait before an attempt (and `may_retry` whether to), and read `Retry-After` with
`parse_retry_after`. Nothing else in the SDK decides a retry.
"""

from __future__ import annotations

import math
import random
import re
from datetime import UTC, datetime
from typing import Any

import attrs

from ._defaults import count, finite, shown_arg
from ._exceptions import APIStatusError, ConnectError, TransportError, UsageError

__all__ = [
    "RetryPolicy",
    "asks_too_long",
    "compute_backoff",
    "may_retry",
    "parse_retry_after",
    "retry_delay",
]


# Options are checked when they are made: a wrong value is the caller's mistake (UsageError).


def _number(attribute: attrs.Attribute[Any], value: Any, bound: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        raise UsageError(f"{attribute.name} must be a number {bound}, got {shown_arg(value)}")
    if finite(value) is None:  # an infinity, or an int too large for a float (10**400)
        raise UsageError(f"{attribute.name} must be finite, got {shown_arg(value)}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    _number(attribute, value, ">= 0")
    if value < 0:
        raise UsageError(f"{attribute.name} must be a number >= 0, got {shown_arg(value)}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    _number(attribute, value, "> 0")
    if value <= 0:
        raise UsageError(f"{attribute.name} must be a number > 0, got {shown_arg(value)}")


def _count(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    count(value, attribute.name, least=0)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How often to try again after a failure, and how long to wait before each new attempt.

    Attempt `n` (1-based) waits `retry_delay * retry_backoff ** (n - 1)` seconds, capped at
    `max_retry_delay`, plus a random part of up to `retry_jitter` times that (0.25: up to a
    quarter more), so clients cut off together do not come back together. A server's
    `Retry-After` sets a floor under that wait; one longer than `max_retry_after` is not
    honoured by sleeping: the call raises the server's error instead, with its `retry_after`.
    `max_retries` is how many failed attempts in a row are retried before giving up.
    """

    max_retries: int = attrs.field(default=5, validator=_count)
    retry_delay: float = attrs.field(default=1.0, validator=_non_negative)
    retry_backoff: float = attrs.field(default=2.0, validator=_positive)
    max_retry_delay: float = attrs.field(default=30.0, validator=_non_negative)
    retry_jitter: float = attrs.field(default=0.25, validator=_non_negative)
    max_retry_after: float = attrs.field(default=60.0, validator=_non_negative)


def compute_backoff(
    policy: RetryPolicy,
    attempt: int,
    *,
    server_hint: float | None = None,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry `attempt` (1-based), ignoring `max_retry_after`.

    `server_hint` (an SSE `retry:` value, in seconds) replaces `retry_delay` as the base;
    `retry_after` (seconds) is a floor. The result is never more than
    `max_retry_delay * (1 + retry_jitter)`, unless `retry_after` asks for more.
    """
    base = policy.retry_delay if server_hint is None else server_hint
    exponent = max(0, attempt - 1)
    try:
        delay = base * policy.retry_backoff**exponent
    except OverflowError:
        delay = math.inf
    delay = min(delay, policy.max_retry_delay)
    if policy.retry_jitter and delay > 0:
        delay += delay * (rng or random).uniform(0, policy.retry_jitter)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def asks_too_long(policy: RetryPolicy, retry_after: float | None) -> bool:
    """Whether a server's `Retry-After` asks for a longer wait than the policy honours."""
    return retry_after is not None and retry_after > policy.max_retry_after


def retry_delay(
    policy: RetryPolicy,
    attempt: int,
    *,
    retry_after: float | None = None,
    server_hint: float | None = None,
) -> float | None:
    """Seconds to wait before retry `attempt`, or None when it must not be made: the retries
    are used up, or the server asked for too long a wait (`asks_too_long`)."""
    if attempt > policy.max_retries or asks_too_long(policy, retry_after):
        return None
    return compute_backoff(policy, attempt, server_hint=server_hint, retry_after=retry_after)


def may_retry(error: BaseException, *, idempotent: bool) -> bool:
    """Whether a failed request may be sent again: always when it cannot have reached the
    server's logic (the connection was refused, or 429: not processed); otherwise only an
    idempotent request, after a network failure or a 5xx answer. Anything else (another 4xx,
    a protocol error) is final."""
    if isinstance(error, ConnectError):
        return True
    if isinstance(error, APIStatusError):
        return error.status == 429 or (idempotent and error.retryable)
    return idempotent and isinstance(error, TransportError)


_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(\d\d):(\d\d):(\d\d)"
# RFC 9110 section 5.6.7: IMF-fixdate, and the two obsolete forms a recipient must accept.
_IMF_FIXDATE = re.compile(rf"{_DAY}, (\d\d) {_MONTH} (\d{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"{_LONG_DAY}, (\d\d)-{_MONTH}-(\d\d) {_TIME} GMT")
_ASCTIME = re.compile(rf"{_DAY} {_MONTH} ([ \d]\d) {_TIME} (\d{{4}})")
# Longer than this many digits, delta-seconds is beyond any wait we could honour anyway.
_MAX_DIGITS = 15


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks to wait; None when absent or not valid.

    Only the two forms of RFC 9110 are read: delta-seconds (ASCII digits only) and an
    HTTP-date. A date in the past means 0. A value with more digits than any real wait is
    `math.inf`, so it can be refused rather than slept on.
    """
    if value is None:
        return None
    text = value.strip(" \t")
    if text.isascii() and text.isdigit():
        return float(text) if len(text) <= _MAX_DIGITS else math.inf
    when = _http_date(text)
    if when is None:
        return None
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds)


def _http_date(text: str) -> datetime | None:
    if match := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850.fullmatch(text):
        day, month, short_year, hour, minute, second = match.groups()
        # RFC 9110: a two-digit year more than 50 years ahead is in the past century.
        this_year = datetime.now(UTC).year
        year = str(2000 + int(short_year))
        if int(year) > this_year + 50:
            year = str(int(year) - 100)
    elif match := _ASCTIME.fullmatch(text):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    try:
        return datetime(
            int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError:  # 31 Feb, hour 25, ...
        return None
