"""`ConnectionEvent`: what a stream's connection is doing, as its reader reports it."""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = ["ConnectionEvent", "ConnectionState"]

ConnectionState = Literal["connected", "reconnecting", "gave_up"]


@attrs.frozen(kw_only=True)
class ConnectionEvent:
    """A change in a stream's connection, given to `StreamingOptions.on_connection`.

    `connected`: a connection is open (again). `reconnecting`: the connection dropped or
    could not be opened, and the stream waits `delay` seconds before the next attempt.
    `gave_up`: the stream stops trying; its error, the `cause`, is raised next:
    `RetriesExhaustedError`; the server's own when it asked for a longer wait than
    `max_retry_after` or gave an answer no retry can change, such as 404; `TaskTimeoutError`
    when `total_timeout` passes (a wait for the next attempt included); `EventGapError` when
    the server skipped events and a fresh connection sends no snapshot to heal from; any other
    error of the tree that ends the stream (a malformed or oversized event, say).
    """

    state: ConnectionState
    """"connected", "reconnecting" or "gave_up"."""
    resource: str
    """The resource the stream follows, as messages name it: "task abc123", "chat c1"."""
    attempt: int = 0
    """Connections failed in a row so far (0 on a first connect; a connection that brought
    something new starts the count again)."""
    delay: float | None = None
    """Seconds until the next attempt ("reconnecting" only)."""
    cause: BaseException | None = None
    """The failure that made the stream reconnect or give up."""
