"""HTTP transport: owns the aiohttp session, the envelope, the retries of REST calls, and the
mapping of foreign errors.

This is the only client-side module that imports aiohttp. Every aiohttp or asyncio exception
raised while talking to the server is mapped here, once, to the SDK's error tree, after the
request headers (and with them the API key) are scrubbed from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from ._exceptions import (
    APIStatusError,
    ConnectError,
    EventTooLargeError,
    HeadersTimeoutError,
    IdleTimeoutError,
    InferenceshError,
    ProtocolError,
    RequestTimeoutError,
    StreamInterruptedError,
    TransportError,
    UsageError,
    status_error,
)
from ._retry import RetryPolicy, may_retry, parse_retry_after, retry_delay
from ._streaming import StreamingOptions
from ._version import __version__
from ._wire import loads, preview

__all__ = ["DEFAULT_BASE_URL", "StreamResponse", "Transport", "validate_api_key"]

logger = logging.getLogger("inferencesh.transport")
# What the server says alongside an answer (the envelope's `messages`), one record each.
server_logger = logging.getLogger("inferencesh.server")

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.inference.sh"
USER_AGENT = f"inferencesh-py/{__version__}"
# An error answer is read up to this size: enough for any problem+json, never a whole stream.
_MAX_ERROR_BODY = 64 * 1024


def validate_api_key(key: str) -> str:
    """The key as it will be sent: surrounding whitespace removed. A key that cannot be sent
    as a header exactly as it is raises `UsageError` (the message never shows the key)."""
    if not isinstance(key, str):
        raise UsageError(f"the API key must be a string, got {type(key).__name__}")
    key = key.strip()
    if not key:
        raise UsageError(
            "no API key: pass api_key=... or set the INFERENCE_API_KEY environment variable"
        )
    if not (key.isascii() and key.isprintable()):
        raise UsageError("the API key contains control or non-ASCII characters")
    return key


def _without_secrets(info: aiohttp.RequestInfo) -> aiohttp.RequestInfo:
    headers = CIMultiDict(info.headers)
    for name in ("Authorization", "Proxy-Authorization", "Cookie"):
        headers.popall(name, None)
    return aiohttp.RequestInfo(info.url, info.method, CIMultiDictProxy(headers), info.real_url)


def _arg_without_secrets(arg: object) -> object:
    if isinstance(arg, aiohttp.RequestInfo):
        return _without_secrets(arg)
    if isinstance(arg, tuple):  # `history`: responses, each with its request's headers
        return ()
    return arg


def _scrub(exc: BaseException) -> BaseException:
    """Remove the request headers aiohttp keeps on `exc` and the exceptions it was raised from
    or during (`request_info`, `history`), so no attribute of an error carries the API key."""
    stack, seen = [exc], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        info = getattr(current, "request_info", None)
        if isinstance(info, aiohttp.RequestInfo):
            current.request_info = _without_secrets(info)  # type: ignore[attr-defined]
        if getattr(current, "history", None):
            current.history = ()  # type: ignore[attr-defined]
        if any(isinstance(arg, aiohttp.RequestInfo | tuple) for arg in current.args):
            # ClientResponseError keeps its constructor's arguments too.
            current.args = tuple(_arg_without_secrets(arg) for arg in current.args)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return exc


@contextlib.contextmanager
def map_errors() -> Iterator[None]:
    """Translate aiohttp/asyncio failures into the SDK's error tree, chaining the original."""
    try:
        yield
    except InferenceshError:
        raise
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise ConnectError(f"could not connect: {_describe(exc)}") from _scrub(exc)
    except aiohttp.SocketTimeoutError as exc:
        raise IdleTimeoutError(f"the server sent nothing in time: {_describe(exc)}") from _scrub(
            exc
        )
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise StreamInterruptedError(f"the connection dropped: {_describe(exc)}") from _scrub(exc)
    except aiohttp.InvalidURL as exc:
        raise UsageError(f"invalid URL: {exc}") from _scrub(exc)
    except aiohttp.ClientResponseError as exc:
        # aiohttp could not read the answer as HTTP (a malformed status line or header).
        raise ProtocolError(f"the server's answer is not valid HTTP: {_describe(exc)}") from _scrub(
            exc
        )
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(f"network error: {_describe(exc)}") from _scrub(exc)


def _describe(exc: BaseException) -> str:
    # aiohttp messages name the URL, host and port, never request headers.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StreamResponse:
    """An open streaming response: its content type, and reads bounded by the idle timeout."""

    def __init__(
        self, response: aiohttp.ClientResponse, *, idle_timeout: float | None, chunk_size: int
    ) -> None:
        self._response = response
        self._idle_timeout = idle_timeout
        self._chunk_size = chunk_size
        self.content_type = response.content_type
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        """Up to `chunk_size` bytes as soon as any arrive; b"" at the end of the body."""
        with map_errors():
            try:
                async with asyncio.timeout(self._idle_timeout):
                    return await self._response.content.read(self._chunk_size)
            except TimeoutError as exc:
                raise IdleTimeoutError(
                    f"the stream sent nothing for {self._idle_timeout} seconds (idle_timeout)"
                ) from exc

    def read_nowait(self) -> bytes:
        """Up to `chunk_size` bytes that have already arrived, without waiting; b"" if none."""
        with map_errors():
            return self._response.content.read_nowait(self._chunk_size)


class Transport:
    """One connection pool per client, created lazily inside the running event loop.

    The session is closed by `aclose()`, and otherwise when the loop that created it shuts its
    async generators down (as `asyncio.run` does), so a client that is never closed leaves no
    "Unclosed client session" warning behind and needs no `__del__`.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        timeout: float | None,
        retry: RetryPolicy,
        max_connections: int | None,
        max_body_bytes: int,
        on_messages: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._on_messages = on_messages
        self._api_key = validate_api_key(api_key)
        self._timeout = timeout
        self._retry = retry
        self._max_connections = max_connections
        self._max_body_bytes = max_body_bytes
        # The API's session, and one that never sends the key; each made on first use.
        self._sessions: list[aiohttp.ClientSession | None] = [None, None]
        self._keepers: list[AsyncIterator[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}>"

    @property
    def closed(self) -> bool:
        """Whether `aclose()` was called."""
        return self._closed

    @property
    def timeout(self) -> float | None:
        """Seconds a REST call may take, its retries included."""
        return self._timeout

    async def session(self) -> aiohttp.ClientSession:
        """The client's session for API calls (it sends the key), created on first use."""
        return await self._session_for(0)

    async def keyless_session(self) -> aiohttp.ClientSession:
        """A session that never sends the API key: for presigned upload URLs and file
        downloads, which may be on another host."""
        return await self._session_for(1)

    async def _session_for(self, index: int) -> aiohttp.ClientSession:
        if self._closed:
            raise UsageError("the client is closed; create a new one")
        loop = asyncio.get_running_loop()
        if self._loop is not loop or any(s is not None and s.closed for s in self._sessions):
            # The loop that owned the old sessions has shut down (e.g. a second asyncio.run).
            self._sessions, self._keepers = [None, None], []
            self._loop = loop
        session = self._sessions[index]
        if session is None:
            session = self._sessions[index] = self._new_session(with_key=index == 0)
            # One keeper per session: the loop closes each at its shutdown, on its own.
            keeper = self._close_at_loop_shutdown(session)
            self._keepers.append(keeper)
            await keeper.__anext__()
        return session

    def _new_session(self, *, with_key: bool) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections or 0, limit_per_host=0, enable_cleanup_closed=False
        )
        headers = {"User-Agent": USER_AGENT}
        if with_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        session = aiohttp.ClientSession(
            connector=connector,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=with_key,  # a file is saved as its bytes were sent
        )
        # aiohttp sends an idempotent request a second time, on its own, when the
        # connection drops; retries are our policy's to decide (and to count).
        session._retry_connection = False
        return session

    @staticmethod
    async def _close_at_loop_shutdown(session: aiohttp.ClientSession) -> AsyncIterator[None]:
        # The running loop tracks this generator once it starts; `loop.shutdown_asyncgens()`
        # (called by asyncio.run and asyncio.Runner) closes it, and with it the session.
        try:
            yield
        finally:
            await session.close()

    async def aclose(self) -> None:
        """Close the connection pools; further requests raise UsageError."""
        self._closed = True
        sessions, keepers = self._sessions, self._keepers
        self._sessions, self._keepers = [None, None], []
        if self._loop is asyncio.get_running_loop():
            for keeper in keepers:
                await keeper.aclose()  # type: ignore[attr-defined]
            return
        for session in sessions:
            if session is not None and not session.closed:
                await session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Send one API request and return the envelope's `data` (or the bare body).

        A failure is retried as `RetryPolicy` says, but only where repeating the request is
        safe (`_may_retry`); `idempotent` defaults to True for GET and DELETE. The client's
        `timeout` bounds the whole call, waits between attempts included.
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "DELETE")
        body = None if json_body is None else _encode(json_body)
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                return await self.retrying(
                    f"{method} {path}",
                    lambda: self._send(method, path, body),
                    idempotent=idempotent,
                    deadline=deadline.when,
                )
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise RequestTimeoutError(
                f"{method} {path} got no complete answer within {self._timeout} seconds"
            ) from exc

    async def retrying(
        self,
        what: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        deadline: Callable[[], float | None] = lambda: None,
    ) -> T:
        """`attempt()`, again after each failure the client's `RetryPolicy` and `may_retry`
        allow (never past `deadline()`, a loop time), after the delay they say."""
        failures = 0
        while True:
            try:
                return await attempt()
            except (TransportError, APIStatusError) as error:
                failures += 1
                delay = retry_delay(
                    self._retry, failures, retry_after=getattr(error, "retry_after", None)
                )
                when = deadline()
                if (
                    delay is None
                    or not may_retry(error, idempotent=idempotent)
                    or (when is not None and asyncio.get_running_loop().time() + delay > when)
                ):
                    raise
                logger.info(
                    "%s failed (%s); retry %d/%d in %.2fs",
                    what, error, failures, self._retry.max_retries, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _send(self, method: str, path: str, body: bytes | None) -> Any:
        session = await self.session()
        started = time.monotonic()
        headers = None if body is None else _JSON_HEADERS
        with map_errors():
            async with session.request(
                method, self.base_url + path, data=body, headers=headers
            ) as resp:
                if resp.status >= 400:
                    body = await resp.content.read(_MAX_ERROR_BODY)
                    raise _status_error(resp, body)
                body = await _read_body(resp, self._max_body_bytes)
        logger.debug(
            "%s %s -> %s in %.1f ms", method, path, resp.status, (time.monotonic() - started) * 1e3
        )
        data, messages = _unwrap(resp.status, body)
        for message in messages:
            server_logger.info("%s %s: %s", method, path, preview(message))
        if messages and self._on_messages is not None:
            self._on_messages(messages)
        return data

    @contextlib.asynccontextmanager
    async def stream(
        self,
        path: str,
        *,
        headers: Mapping[str, str],
        options: StreamingOptions,
        keyless_url: bool = False,
    ) -> AsyncIterator[StreamResponse]:
        """Open a streaming GET of an API path (or, with `keyless_url`, of a whole URL, without
        the API key: a file). Raises the mapped `APIStatusError` for a non-2xx answer and
        `HeadersTimeoutError` when no response headers arrive within `headers_timeout`."""
        session = await (self.keyless_session() if keyless_url else self.session())
        url = path if keyless_url else self.base_url + path
        timeout = aiohttp.ClientTimeout(
            total=None, connect=options.connect_timeout, sock_connect=options.connect_timeout
        )
        with map_errors():
            ctx = session.get(url, headers=headers, timeout=timeout)
            waiting = asyncio.timeout(options.headers_timeout)
            try:
                async with waiting:
                    resp = await ctx.__aenter__()
            except TimeoutError as exc:
                if not waiting.expired():
                    raise
                raise HeadersTimeoutError(
                    f"no response headers for {path} within {options.headers_timeout} seconds "
                    "(headers_timeout)"
                ) from exc
        try:
            if resp.status >= 400:
                with map_errors():
                    try:
                        async with asyncio.timeout(options.idle_timeout):
                            body = await resp.content.read(_MAX_ERROR_BODY)
                    except TimeoutError:
                        body = b""
                raise _status_error(resp, body)
            yield StreamResponse(
                resp, idle_timeout=options.idle_timeout, chunk_size=options.chunk_size
            )
        finally:
            resp.close()
            await ctx.__aexit__(None, None, None)

    async def put_file(
        self,
        url: str,
        body: AsyncIterator[bytes],
        *,
        size: int | None,
        content_type: str,
        idle_timeout: float | None,
    ) -> None:
        """PUT a file's bytes to a presigned `url`, with `Content-Type` and never the API key.

        Fails with `IdleTimeoutError` when the upload makes no progress (no chunk taken, or no
        answer after the last one) for `idle_timeout` seconds.
        """
        session = await self.keyless_session()
        headers = {"Content-Type": content_type}
        if size is not None:  # presigned storage wants a length, not chunked encoding
            headers["Content-Length"] = str(size)
        loop = asyncio.get_running_loop()
        watchdog = asyncio.timeout(idle_timeout)

        async def watched() -> AsyncIterator[bytes]:
            async for chunk in body:
                yield chunk
                if idle_timeout is not None:
                    watchdog.reschedule(loop.time() + idle_timeout)

        try:
            with map_errors():
                async with (
                    watchdog,
                    session.put(url, data=watched(), headers=headers) as resp,
                ):
                    answer = await resp.content.read(_MAX_ERROR_BODY)
                    if resp.status >= 400:
                        raise _status_error(resp, answer)
        except TimeoutError as exc:
            if not watchdog.expired():
                raise
            raise IdleTimeoutError(
                f"the upload made no progress for {idle_timeout} seconds (idle_timeout)"
            ) from exc


_JSON_HEADERS = {"Content-Type": "application/json"}


def _encode(value: Any) -> bytes:
    """A request body as JSON; a value JSON cannot hold (NaN, a set, an object) is the caller's
    mistake, said before anything is sent."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"the request body cannot be sent as JSON: {exc}") from None


def _status_error(resp: aiohttp.ClientResponse, body: bytes) -> APIStatusError:
    return status_error(
        resp.status, body, retry_after=parse_retry_after(resp.headers.get("Retry-After"))
    )


async def _read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of a REST answer, refusing one larger than `limit` bytes."""
    if resp.content_length is not None and resp.content_length > limit:
        raise EventTooLargeError(f"the answer is {resp.content_length} bytes, over {limit}")
    pieces: list[bytes] = []
    size = 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            raise EventTooLargeError(f"the answer is larger than {limit} bytes")
        pieces.append(chunk)
    return b"".join(pieces)


def _unwrap(status: int, body: bytes) -> tuple[Any, list[Any]]:
    """The answer's data (the envelope's, or the bare body) and the envelope's `messages`."""
    if status == 204 or not body.strip():
        return None, []
    payload = loads(body)
    if isinstance(payload, Mapping) and "data" in payload:
        if payload.get("success") is False:
            raise APIStatusError(status, "the server reported success: false", body=payload)
        messages = payload.get("messages")
        return payload["data"], list(messages) if isinstance(messages, list) else []
    return payload, []
