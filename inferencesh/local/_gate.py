"""A bound on the request bodies the emulator reads and handles at once.

Each body is held in a few forms while its request is handled (the bytes read, the decoded
JSON, the stored text, the answer), so many large bodies at once, one per connection, would
cost far more memory than anything the emulator keeps. Requests with a body take a share of
the gate's capacity (their declared size, or the body limit when undeclared) for as long as
they are handled, and wait, at most the body timeout, when it is used up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["BodyGate", "GateTimeoutError"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GateTimeoutError(Exception):
    """A request waited its whole body timeout for other requests' bodies to be handled."""


class BodyGate:
    """Bytes of request bodies being handled at once, against `capacity` (one per app)."""

    def __init__(self, capacity: int, *, max_body: int, timeout: float) -> None:
        self.capacity = capacity
        self.used = 0
        self._max_body = max_body
        self._timeout = timeout
        self._waiters: set[asyncio.Future[None]] = set()

    async def handle(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Run `handler` once the request's body fits (`GateTimeoutError` if it never did)."""
        if request.method != "POST" or not request.body_exists:
            # Only POSTs read a body into memory (uploads stream to disk); a body sent with
            # a GET, a stream's included, is never read and must not hold the gate.
            return await handler(request)
        declared = request.content_length
        size = min(declared if declared is not None else self._max_body, self.capacity)
        try:
            async with asyncio.timeout(self._timeout):
                while self.used + size > self.capacity:
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.add(waiter)
                    try:
                        await waiter
                    finally:
                        self._waiters.discard(waiter)
        except TimeoutError:
            raise GateTimeoutError(
                f"the emulator is busy with other request bodies ({self.capacity} bytes at "
                f"once) and this one waited {self._timeout:g} s; retry"
            ) from None
        self.used += size
        try:
            return await handler(request)
        finally:
            self.used -= size
            waiters, self._waiters = self._waiters, set()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
