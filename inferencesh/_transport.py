"""HTTP transport: owns the aiohttp session, the envelope, and the mapping of foreign errors.

This is the only client-side module that imports aiohttp. Every aiohttp or asyncio exception
raised while talking to the server is mapped here, once, to the SDK's error tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp

from ._exceptions import (
    APIStatusError,
    ConnectError,
    IdleTimeoutError,
    ProtocolError,
    StreamInterruptedError,
    TransportError,
    UsageError,
    status_error,
)
from ._streaming import parse_retry_after
from ._version import __version__

__all__ = ["DEFAULT_BASE_URL", "StreamResponse", "Transport"]

logger = logging.getLogger("inferencesh.transport")

DEFAULT_BASE_URL = "https://api.inference.sh"
USER_AGENT = f"inferencesh-py/{__version__}"


@contextlib.contextmanager
def map_errors(*, idle: bool = False) -> Iterator[None]:
    """Translate aiohttp/asyncio failures into the SDK's error tree, chaining the original."""
    try:
        yield
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise ConnectError(f"could not connect: {_describe(exc)}") from exc
    except aiohttp.SocketTimeoutError as exc:
        raise IdleTimeoutError(f"the server sent nothing in time: {_describe(exc)}") from exc
    except TimeoutError as exc:
        if idle:
            raise IdleTimeoutError("the stream was idle for longer than idle_timeout") from exc
        raise TransportError("the request timed out") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise StreamInterruptedError(f"the connection dropped: {_describe(exc)}") from exc
    except aiohttp.InvalidURL as exc:
        raise UsageError(f"invalid URL: {exc}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(f"network error: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    # aiohttp messages name host and port, never headers, so they are safe to show.
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StreamResponse:
    """An open streaming response: its content type, and reads bounded by the idle timeout."""

    def __init__(self, response: aiohttp.ClientResponse, idle_timeout: float | None) -> None:
        self._response = response
        self._idle_timeout = idle_timeout
        self.content_type = response.content_type
        self.headers: Mapping[str, str] = response.headers

    async def read(self, n: int) -> bytes:
        """Up to `n` bytes as soon as any arrive; b"" at the end of the body."""
        with map_errors(idle=True):
            if self._idle_timeout is None:
                return await self._response.content.read(n)
            async with asyncio.timeout(self._idle_timeout):
                return await self._response.content.read(n)

    def read_buffered(self, n: int) -> bytes:
        """Up to `n` more bytes that have already arrived, without waiting for any."""
        with map_errors(idle=True):
            return self._response.content.read_nowait(n)

    def close(self) -> None:
        """Drop the connection now (it is not returned to the pool mid-body)."""
        self._response.close()


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
        request_timeout: float | None,
        max_connections: int | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._request_timeout = request_timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keeper: AsyncIterator[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Transport {self.base_url}>"

    @property
    def closed(self) -> bool:
        """Whether `aclose()` was called."""
        return self._closed

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._api_key}",
            "User-Agent": USER_AGENT,
        }

    async def session(self) -> aiohttp.ClientSession:
        """The client's session, created on first use in the running loop."""
        if self._closed:
            raise UsageError("the client is closed; create a new one")
        loop = asyncio.get_running_loop()
        if self._session is not None and (self._session.closed or self._loop is not loop):
            # The loop that owned the old session has shut down (e.g. a second asyncio.run).
            self._session = None
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections or 0, limit_per_host=0, enable_cleanup_closed=False
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
            )
            self._loop = loop
            self._keeper = self._close_at_loop_shutdown(self._session)
            await self._keeper.__anext__()
        return self._session

    @staticmethod
    async def _close_at_loop_shutdown(session: aiohttp.ClientSession) -> AsyncIterator[None]:
        # The running loop tracks this generator once it starts; `loop.shutdown_asyncgens()`
        # (called by asyncio.run and asyncio.Runner) closes it, and with it the session.
        try:
            yield
        finally:
            await session.close()

    async def aclose(self) -> None:
        """Close the connection pool; further requests raise UsageError."""
        self._closed = True
        session, keeper = self._session, self._keeper
        self._session = self._keeper = None
        if session is None:
            return
        if keeper is not None and self._loop is asyncio.get_running_loop():
            await keeper.aclose()  # type: ignore[attr-defined]
        elif not session.closed:
            await session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        retries: int = 0,
        retry_delay: float = 0.5,
    ) -> Any:
        """Send one API request and return the envelope's `data` (or the bare body).

        429 and 503 answers, which mean the request was not processed, are retried up to
        `retries` times, honouring Retry-After. Other errors raise at once.
        """
        session = await self.session()
        url = self.base_url + path
        attempt = 0
        while True:
            timeout = aiohttp.ClientTimeout(total=self._request_timeout)
            with map_errors():
                async with session.request(method, url, json=json_body, timeout=timeout) as resp:
                    body = await resp.read()
                    if resp.status < 400:
                        return _unwrap(resp.status, body)
                    error = status_error(
                        resp.status,
                        body,
                        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                    )
            if error.status not in (429, 503) or attempt >= retries:
                raise error
            attempt += 1
            wait = max(retry_delay * 2 ** (attempt - 1), error.retry_after or 0.0)
            logger.info("%s %s answered %s; retrying in %.2fs", method, path, error.status, wait)
            await asyncio.sleep(wait)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        path: str,
        *,
        headers: Mapping[str, str],
        connect_timeout: float | None,
        idle_timeout: float | None,
    ) -> AsyncIterator[StreamResponse]:
        """Open a streaming GET; raises the mapped APIStatusError for a non-2xx answer."""
        session = await self.session()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, connect=connect_timeout
        )
        with map_errors():
            ctx = session.get(self.base_url + path, headers=headers, timeout=timeout)
            resp = await ctx.__aenter__()
        try:
            if resp.status >= 400:
                with map_errors(idle=True):
                    body = await _read_error_body(resp, idle_timeout)
                raise status_error(
                    resp.status,
                    body,
                    retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                )
            yield StreamResponse(resp, idle_timeout)
        finally:
            resp.close()
            await ctx.__aexit__(None, None, None)


async def _read_error_body(resp: aiohttp.ClientResponse, idle_timeout: float | None) -> bytes:
    # An error body is small; cap it so a misbehaving server cannot make us buffer a stream.
    async with asyncio.timeout(idle_timeout):
        return await resp.content.read(64 * 1024)


def _unwrap(status: int, body: bytes) -> Any:
    if status == 204 or not body.strip():
        return None
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"the server answered {status} with a body that is not JSON") from exc
    if isinstance(payload, Mapping) and "data" in payload:
        if payload.get("success") is False:
            raise APIStatusError(status, "the server reported success: false", body=payload)
        return payload["data"]
    return payload
