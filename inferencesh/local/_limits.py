"""Limits of the emulator's HTTP layer: sizes, timeouts and connections no client can exceed."""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["HttpLimits"]


def _at_least_one(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


def _seconds(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{attribute.name} must be a finite number of seconds, got {value!r}")
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


@attrs.frozen(kw_only=True)
class HttpLimits:
    """What one client may send the emulator's HTTP server, so none can break or starve it.

    Frozen; change it with `attrs.evolve`. A request over a limit gets a problem+json answer
    (400, 408, 413, 414 or 431; 503 when the request bodies in hand fill the body gate),
    never a 500.

    - `max_body_bytes` (1 MiB): the largest request body, on every route but file uploads,
      which stream to disk under their own limit (413; a body a route does not read is
      dropped as it arrives).
    - `max_url_bytes` (8 KiB): the longest request target, path and query (414).
    - `max_header_bytes` (8 KiB): the longest header name or value (431).
    - `max_headers` (64): the most header lines in a request (431).
    - `max_json_depth` (64 levels): the deepest nesting of arrays and objects in a JSON
      body (400).
    - `header_timeout` (10 s): how long a request's headers may take to arrive, from the
      connection's accept or, on a kept-alive connection, from the request's first byte (408).
    - `body_timeout` (30 s): how long a request's body may take to arrive after its headers
      (408). Neither timeout applies to a response being written, so streams are not cut.
    - `write_timeout` (30 s): how long one write of a stream or of a file download (a piece
      of up to 64 KiB) may wait for a client that reads nothing (its buffers full) before the
      connection is cut (a TCP reset), so a stalled reader does not hold its handler, its open
      file and its connection slot forever.
    - `keepalive_timeout` (75 s): how long an idle kept-alive connection stays open.
    - `max_connections` (4096): open connections at once. At serve time it is lowered to fit
      the process's open-file limit (`RLIMIT_NOFILE`), keeping some descriptors in reserve.
      A new connection beyond it closes the oldest one still waiting for its request headers
      (or an idle one); only when all are busy answering is the new one closed.
    """

    max_body_bytes: int = attrs.field(default=1024 * 1024, validator=_at_least_one)
    max_url_bytes: int = attrs.field(default=8 * 1024, validator=_at_least_one)
    max_header_bytes: int = attrs.field(default=8 * 1024, validator=_at_least_one)
    max_headers: int = attrs.field(default=64, validator=_at_least_one)
    max_json_depth: int = attrs.field(default=64, validator=_at_least_one)
    header_timeout: float = attrs.field(default=10.0, validator=_seconds)
    body_timeout: float = attrs.field(default=30.0, validator=_seconds)
    keepalive_timeout: float = attrs.field(default=75.0, validator=_seconds)
    write_timeout: float = attrs.field(default=30.0, validator=_seconds)
    max_connections: int = attrs.field(default=4096, validator=_at_least_one)
