"""`USE_CLIENT_DEFAULT`: what a call's `timeout=` is when it is not given; and the checks of
arguments that several calls share.

One rule for every per-call `timeout`: a number of seconds bounds that call, `None` means no
limit, and `USE_CLIENT_DEFAULT` (the default) keeps what the client was set up with: its
`timeout` for a REST call, the stream options' `total_timeout` for a stream.

A wrong argument is a `UsageError` that names it and says what was expected, raised where the
value is taken (never a `TypeError` from deep inside, or after a request was sent).
"""

from __future__ import annotations

import enum
import math
from typing import Any, Final
from urllib.parse import quote

from ._exceptions import UsageError
from ._wire import usable_id

__all__ = [
    "USE_CLIENT_DEFAULT",
    "Timeout",
    "UseClientDefault",
    "call_timeout",
    "check_callback",
    "count",
    "finite",
    "path_id",
    "path_segment",
    "seconds",
    "shown_arg",
]


class UseClientDefault(enum.Enum):
    """The type of `USE_CLIENT_DEFAULT`, the default of a call's `timeout=`."""

    USE_CLIENT_DEFAULT = "USE_CLIENT_DEFAULT"

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT: Final = UseClientDefault.USE_CLIENT_DEFAULT
"""A call's `timeout` when it is not given: the client's own (see the module's docstring)."""

Timeout = float | None | UseClientDefault


def call_timeout(timeout: Timeout, default: float | None) -> float | None:
    """The seconds a call may take: `default` (the client's) unless the call gave its own.
    A value that is not a positive, finite number of seconds (or None) is a `UsageError`."""
    if timeout is USE_CLIENT_DEFAULT:
        return default
    return seconds(timeout, "timeout")


def shown_arg(value: Any, width: int = 40) -> str:
    """`value`'s repr for a message, cut to `width` characters. An int too long to print (past
    Python's 4300 digits) is described by its size instead of raising `ValueError`."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<an int of {value.bit_length()} bits>" if isinstance(value, int) else "<?>"
    return text if len(text) <= width else text[: width - 3] + "..."


def finite(value: Any) -> float | None:
    """`value` as a finite float, or None when it is not a finite real number (a bool, a
    string, NaN, an infinity, or an int too large for a float, such as 10**400)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def seconds(value: Any, name: str) -> float | None:
    """A timeout argument `name` as seconds: a positive, finite number, or None (no limit)."""
    if value is None:
        return None
    number = finite(value)
    if number is None or number <= 0:
        raise UsageError(
            f"{name} must be a positive number of seconds or None (no limit), "
            f"got {shown_arg(value)}"
        )
    return number


def count(value: Any, name: str, *, least: int, optional: bool = False) -> None:
    """A count argument `name` must be an integer (not a bool) of at least `least`, or, when
    `optional`, None."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        none = ", or None" if optional else ""
        raise UsageError(f"{name} must be an integer >= {least}{none}, got {shown_arg(value)}")


def check_callback(value: Any, name: str) -> None:
    """A callback argument `name` must be callable, or None."""
    if value is not None and not callable(value):
        raise UsageError(f"{name} must be a callable or None, got {type(value).__name__}")


def path_segment(value: str) -> str:
    """`value` (a `usable_id`) quoted as one URL path segment: the one way ids go into paths."""
    return quote(value, safe="")


def path_id(value: Any, name: str) -> str:
    """An id argument `name`, quoted as one URL path segment; it must be `usable_id`."""
    if not usable_id(value):
        raise UsageError(
            f"{name} must be a non-empty printable string other than . and .., "
            f"got {shown_arg(value, 80)}"
        )
    return path_segment(value)
