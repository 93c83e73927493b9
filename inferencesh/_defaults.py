"""`USE_CLIENT_DEFAULT`: what a call's `timeout=` is when it is not given.

One rule for every per-call `timeout`: a number of seconds bounds that call, `None` means no
limit, and `USE_CLIENT_DEFAULT` (the default) keeps what the client was set up with: its
`timeout` for a REST call, the stream options' `total_timeout` for a stream.
"""

from __future__ import annotations

import enum
import math
from typing import Final

from ._exceptions import UsageError

__all__ = ["USE_CLIENT_DEFAULT", "Timeout", "UseClientDefault", "call_timeout"]


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
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise UsageError(
            f"timeout must be a positive number of seconds or None (no limit), got {timeout!r:.40}"
        )
    return float(timeout)
