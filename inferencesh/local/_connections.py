"""The emulator's HTTP connections: aiohttp's protocol with `HttpLimits` enforced on the wire.

aiohttp parses requests and answers its own low-level errors (a bad request line, a header
over the limit, broken chunked framing) with `text/plain` and a logged traceback; it has no
timeout for a request's headers or body and no cap on connections. Here:

- `_Connection`, a `web.RequestHandler` subclass, answers those errors with problem+json
  (overriding its public `handle_error`), logs one line per rejected request, and runs two
  timers: one for the request headers (from accept, or from the first byte of a kept-alive
  connection's next request) and one for the body once the headers are in. Neither runs while
  a response is being written, so streams are never cut.
- `_Server`, a `web.Server` subclass, makes those connections (its `__call__` is the
  protocol factory asyncio calls on accept), learns when a request's headers are complete
  through the public `request_factory` hook, and keeps `max_connections`: a new connection
  over the cap closes the oldest one still waiting for its request (or idle); only when all
  are busy answering is the new one closed.
- `start_site` is the one place that builds the runner and site; `serve` uses it.

aiohttp internals relied on, each pinned by tests/test_local_hardening.py: `AppRunner`'s
`_make_server` (overridden to swap in `_Server`), and `RequestHandler._messages` (read, to see a
framing error that arrives while a request's body is being read).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader

from ._http import RequestBodyTimeout, log_rejected, problem
from ._limits import HttpLimits

__all__ = ["connection_budget", "start_site"]

logger = logging.getLogger("inferencesh.local")

# Descriptors kept free of connections: the listening socket, the event loop's own, log and
# database files. The listen backlog is kept twice more: asyncio accepts up to a backlog of
# sockets at once, and closing one to make room takes a turn of the loop.
_FD_RESERVE = 32
_MAX_BACKLOG = 128

_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_RequestFactory = Callable[..., web.BaseRequest]

# A connection's phase: waiting for a request's headers, answering it, reading the rest of its
# body after the answer, or idle between requests.
_HEAD = "head"
_BUSY = "busy"
_DRAIN = "drain"
_IDLE = "idle"


def connection_budget(max_connections: int) -> tuple[int, int]:
    """`(max_connections, listen backlog)` that fit the process's open-file limit.

    So `accept()` never fails with EMFILE (which asyncio logs as "socket.accept() out of
    system resource" and answers by not accepting at all for a second).
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # not on this platform
        return max_connections, _MAX_BACKLOG
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return max_connections, _MAX_BACKLOG
    spare = soft - _FD_RESERVE
    backlog = max(8, min(_MAX_BACKLOG, spare // 8))
    allowed = max(1, min(max_connections, spare - 2 * backlog))
    if allowed < max_connections:
        logger.info(
            "max_connections lowered from %d to %d to fit the open-file limit (%d)",
            max_connections,
            allowed,
            soft,
        )
    return allowed, backlog


def _raw_problem(status: int, detail: str) -> bytes:
    """A whole problem+json answer as bytes, for a connection with no request to answer."""
    response = problem(status, detail)
    body = response.body
    assert isinstance(body, bytes)
    head = (
        f"HTTP/1.1 {status} {response.reason}\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _first_line(message: str) -> str:
    """aiohttp's parser error without the echoed request bytes and the caret line under them."""
    kept = []
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(("b'", 'b"', "^")):
            kept.append(line.rstrip(":"))
    return " ".join(kept)[:200] or "bad request"


class _Connection(web.RequestHandler):
    """One client connection: aiohttp's protocol plus timers, eviction and problem+json errors."""

    def __init__(self, manager: _Server, *, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._owner = manager  # aiohttp forgets its manager when the connection is lost
        self._limits = limits
        self._phase = _HEAD
        self._deadline: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        self._body_expired = False
        self._evicted = False
        self._begin_head()

    # -- asyncio protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._evicted:  # closed to make room before asyncio handed it over
            self.force_close()
            return
        self._start_timer(self._limits.header_timeout, self._headers_late)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        self._owner._forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self._phase == _IDLE:
            self._phase = _HEAD  # the next request starts: its headers are timed from here
            self._start_timer(self._limits.header_timeout, self._headers_late)
        if self._phase == _HEAD:
            self._note_head(data)
        super().data_received(data)
        body = self._body
        if body is not None and not body.is_eof() and self._framing_failed():
            # The chunked framing broke while the body was being read: end the read now.
            if self._phase == _BUSY:
                body.set_exception(web.RequestPayloadError("chunked framing is broken"))
            else:
                self.force_close()

    # -- aiohttp's hooks ---------------------------------------------------------------------

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._response_done()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer what aiohttp could not handle with problem+json, and log it in one line.

        aiohttp calls this for requests its parser refused (400) and for exceptions that
        escaped the application (500, 504), which only a bug in the emulator can cause.
        """
        if status >= 500:
            logger.error(
                "internal error handling %s %s", request.method, request.path, exc_info=exc
            )
            detail = "internal error in the emulator"
        else:
            status, detail = self._classify(status, exc, message)
            method, path = self._request_target()
            log_rejected(method, path, status, detail)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has started: the connection can only be closed")
        response = problem(status, detail)
        response.force_close()
        return response

    # -- the request's phases ----------------------------------------------------------------

    def _headers_received(self, payload: StreamReader) -> None:
        """The request's headers are complete (aiohttp is making its request object)."""
        self._cancel_timer()
        self._phase = _BUSY
        self._owner._busy(self)
        self._body = payload
        self._body_expired = False
        if not payload.is_eof():
            self._start_timer(self._limits.body_timeout, self._body_late)
            payload.on_eof(self._body_received)

    def _body_received(self) -> None:
        self._cancel_timer()
        if self._phase == _DRAIN:
            self._phase = _IDLE

    def _response_done(self) -> None:
        body = self._body
        if self._body_expired or (body is not None and body.exception() is not None):
            # The body cannot be read to its end, so no further request can be found.
            self.force_close()
            return
        if body is not None and not body.is_eof():
            self._phase = _DRAIN  # aiohttp reads and drops the rest; the body timer still runs
        else:
            self._cancel_timer()
            self._phase = _IDLE
        self._begin_head()
        self._owner._idle(self)

    def _headers_late(self) -> None:
        self._deadline = None
        if self._phase != _HEAD or self.transport is None:
            return
        timeout = self._limits.header_timeout
        if self._head_size:
            detail = f"request headers not received within {timeout:g} s"
            log_rejected(*self._request_target(), 408, detail)
            self.transport.write(_raw_problem(408, detail))
        else:
            logger.debug("closed %s: no request within %g s", self.peername, timeout)
        self.force_close()

    def _body_late(self) -> None:
        self._deadline = None
        self._body_expired = True
        timeout = self._limits.body_timeout
        if self._phase == _BUSY and self._body is not None:
            # Wake the handler reading it (it answers 408); if it is not reading, the
            # connection closes once the answer is written.
            self._body.set_exception(
                RequestBodyTimeout(f"request body not received within {timeout:g} s")
            )
        else:
            logger.debug("closed %s: rest of the body not received in %g s", self.peername, timeout)
            self.force_close()

    def _evict(self) -> None:
        """Close this connection to make room for a new one."""
        self._evicted = True
        if self.transport is not None:
            logger.debug("closed %s waiting for a request: too many connections", self.peername)
            self.force_close()

    @property
    def evictable(self) -> bool:
        """Waiting for a request (or for the rest of a body nobody needs), not answering one."""
        return self._phase != _BUSY

    # -- helpers -----------------------------------------------------------------------------

    def _start_timer(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._deadline = self._loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _begin_head(self) -> None:
        self._head_size = 0
        self._request_line_size: int | None = None
        self._head_start = b""

    def _note_head(self, data: bytes) -> None:
        """Keep what tells a long URL from a long header, and the start for the log line."""
        if self._request_line_size is None:
            newline = data.find(b"\n")
            if newline >= 0:
                self._request_line_size = self._head_size + newline
        if len(self._head_start) < 256:
            self._head_start += data[: 256 - len(self._head_start)]
        self._head_size += len(data)

    def _request_target(self) -> tuple[str, str]:
        """Method and path of the request being received, as far as they arrived."""
        parts = self._head_start.split(b"\n", 1)[0].strip().split(b" ")
        method = parts[0].decode("ascii", "replace") if parts[0].isalpha() else "-"
        path = parts[1].decode("latin-1") if len(parts) > 1 else "-"
        return method, path

    def _classify(
        self, status: int, exc: BaseException | None, message: str | None
    ) -> tuple[int, str]:
        limits = self._limits
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            if limits.max_url_bytes != limits.max_header_bytes and limit in (
                limits.max_url_bytes,
                limits.max_header_bytes,
            ):
                url = limit == limits.max_url_bytes
            else:  # the same limit for both: too long before the first line ended is the URL
                line = self._request_line_size
                url = line is None or line > limits.max_url_bytes
            if url:
                return 414, f"request URL is longer than {limits.max_url_bytes} bytes"
            return 431, f"a request header is longer than {limits.max_header_bytes} bytes"
        text = message or (exc.message if isinstance(exc, HttpProcessingError) else "") or ""
        if "Too many headers" in text:
            return 431, f"more than {limits.max_headers} request headers"
        return status, f"malformed HTTP request: {_first_line(text)}"

    def _framing_failed(self) -> bool:
        """Did the parser queue an error (not a request) behind the request being answered?"""
        queued: Any = getattr(self, "_messages", None)
        return bool(queued) and not isinstance(queued[-1][0], RawRequestMessage)


async def _guard(handler: _Handler, request: web.BaseRequest) -> web.StreamResponse:
    """problem+json for the errors aiohttp raises before the middlewares (e.g. `Expect`)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = exc.reason
        if exc.status == 417:
            detail = f"unsupported Expect header: {request.headers.get('Expect', '')!r}"
        log_rejected(request.method, request.path, exc.status, detail)
        return problem(exc.status, detail)


class _Server(web.Server):
    """aiohttp's low-level server making `_Connection`s and keeping `max_connections`."""

    def __init__(
        self,
        handler: _Handler,
        *,
        request_factory: _RequestFactory,
        limits: HttpLimits,
        max_connections: int,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        def guarded(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            return _guard(handler, request)

        def make_request(
            message: Any, payload: StreamReader, protocol: Any, *args: Any
        ) -> web.BaseRequest:
            if isinstance(protocol, _Connection):
                protocol._headers_received(payload)
            return request_factory(message, payload, protocol, *args)

        super().__init__(guarded, request_factory=make_request, loop=loop, **kwargs)
        self._limits = limits
        self._max_connections = max_connections
        self._handler_kwargs = kwargs
        self._event_loop = loop
        self._open: set[_Connection] = set()
        # Connections not answering a request, oldest first: the ones to close to make room.
        self._waiting: dict[_Connection, None] = {}

    def __call__(self) -> _Connection:
        """A protocol for a connection asyncio just accepted, making room for it first."""
        admitted = self._make_room()
        connection = _Connection(
            self, loop=self._event_loop, limits=self._limits, **self._handler_kwargs
        )
        if admitted:
            self._open.add(connection)
            self._waiting[connection] = None
        else:
            logger.debug("closed a new connection: all %d are busy", self._max_connections)
            connection._evicted = True
        return connection

    def _make_room(self) -> bool:
        while len(self._open) >= self._max_connections:
            if not self._waiting:
                return False
            oldest = next(iter(self._waiting))
            self._forget(oldest)
            oldest._evict()
        return True

    def _busy(self, connection: _Connection) -> None:
        self._waiting.pop(connection, None)

    def _idle(self, connection: _Connection) -> None:
        if connection in self._open:
            self._waiting.pop(connection, None)
            self._waiting[connection] = None  # the newest waiting one

    def _forget(self, connection: _Connection) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)


class _Runner(web.AppRunner):
    """An `AppRunner` whose server is a `_Server`."""

    def __init__(
        self, app: web.Application, *, limits: HttpLimits, max_connections: int, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits
        self._max_connections = max_connections
        self._server_kwargs = {k: v for k, v in kwargs.items() if k not in _RUNNER_ONLY}

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the application
        return _Server(
            plain.request_handler,
            request_factory=plain.request_factory,
            limits=self._limits,
            max_connections=self._max_connections,
            loop=asyncio.get_running_loop(),
            **self._server_kwargs,
        )


# AppRunner's own arguments; the others are the connections' (RequestHandler's).
_RUNNER_ONLY = frozenset({"handle_signals", "shutdown_timeout"})


async def start_site(
    app: web.Application, limits: HttpLimits, host: str, port: int, *, shutdown_timeout: float
) -> web.AppRunner:
    """Start serving `app` on `host:port` under `limits`; the caller cleans the runner up."""
    max_connections, backlog = connection_budget(limits.max_connections)
    runner = _Runner(
        app,
        limits=limits,
        max_connections=max_connections,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        access_log=None,
        keepalive_timeout=limits.keepalive_timeout,
        max_line_size=limits.max_url_bytes,
        max_field_size=limits.max_header_bytes,
        max_headers=limits.max_headers,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=backlog).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
