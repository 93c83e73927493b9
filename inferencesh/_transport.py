"""HTTP transport: owns the aiohttp session, the envelope, the retries of REST calls, the
HTTP configuration (proxies, default headers, User-Agent), and the mapping of foreign errors.

This is the only client-side module that imports aiohttp. Every aiohttp or asyncio exception
raised while talking to the server is mapped here, once, to the SDK's error tree, after the
request headers (and with them the API key) are scrubbed from it.

Proxies are chosen here, per request, not by aiohttp's `trust_env`: that would also read
`~/.netrc`, whose `default` entry breaks every API call (aiohttp refuses an `Authorization`
header beside netrc credentials) and sends Basic credentials to presigned storage URLs; and
it ignores `ALL_PROXY`. The API key and the default headers are sent per request, never as
session defaults, because aiohttp copies a session's default headers into the `CONNECT` it
sends a proxy for an https:// URL: the proxy would get the key (as `Proxy-Authorization`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import platform
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

import aiohttp
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from ._defaults import USE_CLIENT_DEFAULT, Timeout, call_timeout
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
    envelope_error,
    status_error,
    storage_error,
)
from ._logging import configure_from_environment
from ._retry import RetryPolicy, may_retry, parse_retry_after, retry_delay
from ._streaming import StreamingOptions
from ._version import __version__
from ._wire import loads, preview

__all__ = [
    "DEFAULT_BASE_URL",
    "USER_AGENT",
    "StreamResponse",
    "Transport",
    "validate_api_key",
    "validate_headers",
]

logger = logging.getLogger("inferencesh.transport")
# One DEBUG line per HTTP request: method, path, status (or error class), duration.
http_logger = logging.getLogger("inferencesh.http")
# What the server says alongside an answer (the envelope's `messages`), one record each.
server_logger = logging.getLogger("inferencesh.server")

CLEANUP_BOUND = 30.0
"""Seconds clean-up work may take when the client's REST calls have no limit."""

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.inference.sh"
USER_AGENT = f"inferencesh-py/{__version__} (python {platform.python_version()})"
"""Sent with every request, presigned uploads and downloads included."""
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


# RFC 9110 section 5.6.2: a header name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")
# Headers `default_headers` may not set, and why.
_RESERVED_HEADERS = {
    "authorization": "it carries the API key",
    "proxy-authorization": "put proxy credentials in the proxy URL",
    "host": "it is set from the URL",
    "content-length": "it is set from the body",
    "transfer-encoding": "it is set from the body",
}


def validate_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """`default_headers` as they will be sent. A header the SDK sets itself (`Authorization`,
    `Host`, ...), a name that is not a token or a value with control or non-ASCII characters
    raises `UsageError` (the message never shows a value)."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise UsageError(f"default_headers must be a mapping, got {type(headers).__name__}")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise UsageError(f"{name!r:.60} is not a valid header name")
        reason = _RESERVED_HEADERS.get(name.lower())
        if reason is not None:
            raise UsageError(f"default_headers cannot set {name}: {reason}")
        if not isinstance(value, str):
            raise UsageError(f"the value of header {name} must be a string, not {type(value)}")
        if not value.isascii() or any((c < " " and c != "\t") or c == "\x7f" for c in value):
            raise UsageError(f"the value of header {name} contains control or non-ASCII characters")
        if any(seen.lower() == name.lower() for seen in checked):
            raise UsageError(f"default_headers names {name} twice")
        checked[name] = value
    return checked


class Proxy(NamedTuple):
    """A proxy: its URL without credentials, the `Proxy-Authorization` that carries them (if
    any), and how it is shown in logs and messages (credentials replaced by `***`)."""

    url: str
    authorization: str | None
    shown: str


def parse_proxy(value: str, *, source: str) -> Proxy:
    """A proxy URL (`http://[user:password@]host:port`; without a scheme, http:// is meant),
    checked. `UsageError` names `source`, never the credentials."""
    if not isinstance(value, str):
        raise UsageError(f"{source} must be a URL string, got {type(value).__name__}")
    value = value.strip()
    if not value or not value.isascii() or not value.isprintable() or " " in value:
        raise UsageError(f"{source} is not a proxy URL (empty, or control or non-ASCII characters)")
    if "://" not in value:
        value = "http://" + value  # as curl, requests and httpx read HOST:PORT
    parts = split_url(value, error=UsageError, what=source)
    scheme = parts.scheme.lower()
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if scheme not in ("http", "https"):
        raise UsageError(f"{source}: {scheme}:// proxies are not supported (only http and https)")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1:
        raise UsageError(f"{source}: the proxy URL names no valid host and port")
    authorization = None
    if at:
        user, _, password = userinfo.partition(":")
        if ":" in unquote(user):
            raise UsageError(f"{source}: a proxy user name cannot hold a colon")
        # RFC 7617 Basic credentials, UTF-8 (the charset it names).
        pair = f"{unquote(user)}:{unquote(password)}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    url = f"{scheme}://{hostport}"
    return Proxy(url, authorization, f"{scheme}://***@{hostport}" if at else url)


def _environment_proxies() -> tuple[dict[str, Proxy], str | None]:
    """The proxies the environment names (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, upper or
    lower case) by URL scheme ("all" for any), and `NO_PROXY`. One that cannot be used is
    logged and left out, so a variable set for other tools does not stop the client."""
    found = urllib.request.getproxies_environment()
    proxies: dict[str, Proxy] = {}
    for scheme in ("http", "https", "all"):
        value = found.get(scheme)
        if not value:
            continue
        try:
            proxies[scheme] = parse_proxy(value, source=f"{scheme.upper()}_PROXY")
        except UsageError as exc:
            logger.warning("ignoring a proxy from the environment: %s", exc)
    return proxies, found.get("no")


def _bypassed(parts: SplitResult, no_proxy: str) -> bool:
    """Whether `NO_PROXY` exempts the URL's host: `*`, or an entry that is the host, a domain
    it is in (`example.com` and `.example.com` both cover `api.example.com`), the host with
    its port (`host:8080`), or an IP network holding it (`10.0.0.0/8`), as curl reads it."""
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.lower().split(","):
        entry = entry.strip()
        if entry == "*":
            return True
        name, _, entry_port = entry.rpartition(":") if _PORTED.fullmatch(entry) else (entry, "", "")
        name = name.strip("[]").lstrip(".")
        if not name or (entry_port and str(port) != entry_port):
            continue
        if host == name or host.endswith("." + name):
            return True
        if address is not None and "/" in name:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(name, strict=False):
                    return True
    return False


# A NO_PROXY entry ending in a port: `host:8080`, `[::1]:8080` (not a bare IPv6 address).
_PORTED = re.compile(r"(?:\[[^\]]*\]|[^:\[\]]*):\d+")


def _masked_url(url: yarl.URL) -> yarl.URL:
    text = shown(str(url))
    try:
        return yarl.URL(text)
    except ValueError:  # a port out of range, say: the scheme alone
        return yarl.URL(text.partition("://")[0] + "://...")


def _without_secrets(info: aiohttp.RequestInfo) -> aiohttp.RequestInfo:
    headers = CIMultiDict(info.headers)
    for name in ("Authorization", "Proxy-Authorization", "Cookie"):
        headers.popall(name, None)
    return aiohttp.RequestInfo(
        _masked_url(info.url), info.method, CIMultiDictProxy(headers), _masked_url(info.real_url)
    )


def _arg_without_secrets(arg: object) -> object:
    if isinstance(arg, aiohttp.RequestInfo):
        return _without_secrets(arg)
    if isinstance(arg, tuple):  # `history`: responses, each with its request's headers
        return ()
    if isinstance(arg, str):
        return masked(arg)
    if isinstance(arg, yarl.URL):  # InvalidURL's
        return _masked_url(arg)
    return arg


def _scrub(exc: BaseException) -> BaseException:
    """Remove the request headers aiohttp keeps on `exc` and the exceptions it was raised from
    or during (`request_info`, `history`), so no attribute of an error carries the API key,
    and mask the URLs they name (`masked`), so none shows a presigned URL's signature."""
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
        if isinstance(current, aiohttp.ClientResponseError):
            current.message = masked(current.message)
            if current.headers is not None:  # the answer's: a redirect's Location, say
                current.headers = CIMultiDictProxy(
                    CIMultiDict((name, masked(value)) for name, value in current.headers.items())
                )
        if any(
            isinstance(arg, aiohttp.RequestInfo | tuple | str | yarl.URL) for arg in current.args
        ):
            # ClientResponseError keeps its constructor's arguments too; others their message.
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
    except aiohttp.ClientProxyConnectionError as exc:
        raise ConnectError(f"could not connect to the proxy: {_describe(exc)}") from _scrub(exc)
    except aiohttp.ClientHttpProxyError as exc:
        # The proxy answered CONNECT (for an https:// URL) with an error: 407, 502, ...
        raise ConnectError(
            f"the proxy refused to connect to the server: {exc.status} {masked(exc.message)}"
        ) from _scrub(exc)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise ConnectError(f"could not connect: {_describe(exc)}") from _scrub(exc)
    except aiohttp.SocketTimeoutError as exc:
        raise IdleTimeoutError(f"the server sent nothing in time: {_describe(exc)}") from _scrub(
            exc
        )
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise StreamInterruptedError(f"the connection dropped: {_describe(exc)}") from _scrub(exc)
    except aiohttp.InvalidURL as exc:
        raise UsageError(f"invalid URL: {masked(str(exc))}") from _scrub(exc)
    except aiohttp.ClientResponseError as exc:
        # aiohttp could not read the answer as HTTP (a malformed status line or header).
        raise ProtocolError(f"the server's answer is not valid HTTP: {_describe(exc)}") from _scrub(
            exc
        )
    except (aiohttp.ClientError, OSError) as exc:
        raise TransportError(f"network error: {_describe(exc)}") from _scrub(exc)


class _Exchange:
    """What `logged` says of one request: its status once known, and a note."""

    __slots__ = ("note", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.note = ""


@contextlib.contextmanager
def logged(method: str, target: str) -> Iterator[_Exchange]:
    """Log the request the block makes, once it completes or fails, at DEBUG on
    `inferencesh.http`: the method, the target (`shown`), the status (or the class of the
    error, if none came), and the time it took. Never headers, bodies or error messages."""
    exchange = _Exchange()
    started = time.monotonic()
    error: BaseException | None = None
    try:
        yield exchange
    except BaseException as exc:
        error = exc
        raise
    finally:
        if http_logger.isEnabledFor(logging.DEBUG):
            status = exchange.status
            if error is None or (status is not None and isinstance(error, APIStatusError)):
                outcome = str(status)
            elif status is None:
                outcome = type(error).__name__
            else:
                outcome = f"{status}, then {type(error).__name__}"
            elapsed = (time.monotonic() - started) * 1e3
            http_logger.debug(
                "%s %s -> %s in %.1f ms%s", method, shown(target), outcome, elapsed, exchange.note
            )


# A URL's host as `shown` shows it: a name or an IPv4 address, or a bracketed IPv6 one, and a port.
_HOST = re.compile(r"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")


def split_url(url: str, *, error: type[InferenceshError], what: str) -> SplitResult:
    """`url` split into its parts. A URL `urlsplit` cannot read (a malformed IPv6 host, say),
    or an http(s) URL with no usable host (empty, with spaces or control characters) or port,
    raises `error`: `UsageError` for one the caller gave, `ProtocolError` for one the server
    sent. The message names `what` and the URL as `shown` shows it, never its secrets."""
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number from 0 to 65535 raises here
    except ValueError as exc:
        raise error(f"{what} is not a valid URL ({exc}): {shown(url)}") from None
    if parts.scheme.lower() in ("http", "https"):
        host = parts.hostname or ""
        if not host or not host.isprintable() or any(char.isspace() for char in host):
            raise error(f"{what} names no valid host: {shown(url)}")
        if port == 0:
            raise error(f"{what} names port 0: {shown(url)}")
    return parts


def without_userinfo(url: str) -> str:
    """`url` with the credentials of its authority (`user:password@`), if any, as `***@`:
    how a URL the caller gave is shown in a message."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = next((i for i, char in enumerate(rest) if char in "/?#"), len(rest))
    _, at, host = rest[:end].rpartition("@")
    return f"{scheme}://***@{host}{rest[end:]}" if at else url


def shown(target: str) -> str:
    """A request's target as logs and messages show it, without what may be secret. An API
    path keeps its query's parameter names but not their values. A whole URL is a presigned
    one (an upload or a download), authorised by a signature or a token in its path or query:
    only its scheme and host are shown (not even those when it does not read as a URL: cut
    short, say)."""
    try:
        parts = urlsplit(target)
    except ValueError:  # a malformed IPv6 host
        scheme, sep, _ = target.partition("://")
        return f"{scheme}://..." if sep else "..."
    if parts.scheme:
        host = parts.netloc.rpartition("@")[2]
        return f"{parts.scheme}://{host}/..." if _HOST.fullmatch(host) else f"{parts.scheme}://..."
    text = parts.path or "/"
    if parts.query:
        names = (pair.partition("=")[0] for pair in parts.query.split("&") if pair)
        text += "?" + "&".join(f"{name}=*" for name in names)
    return text


# A whole URL inside a message: up to a space or a character a URL never holds unescaped.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"<>]*")


def masked(text: str) -> str:
    """`text` with every whole URL in it as `shown` shows it (its scheme and host): aiohttp
    names the URL in some of its messages (`url='...'`, `Connection timeout to host ...`),
    and a presigned one carries its signature in its path or query."""

    def one(match: re.Match[str]) -> str:
        url, tail = match.group(), ""
        if match.start() > 0 and text[match.start() - 1] == "'":
            url, quote, rest = url.partition("'")  # a quoted URL ends at its quote
            tail = quote + masked(rest)
        return shown(url) + tail

    return _URL_IN_TEXT.sub(one, text) if "://" in text else text


def _describe(exc: BaseException) -> str:
    # aiohttp messages name the URL (masked here), host and port, never request headers.
    text = masked(str(exc))
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

    Every request goes through `proxy` when one is given; otherwise, with `trust_env`, through
    the proxy the environment names for its URL's scheme (read once, here), unless `NO_PROXY`
    exempts its host. API requests carry the key and `default_headers`; presigned upload and
    download URLs carry neither, only the `User-Agent` (and what storage expects).
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
        proxy: str | None = None,
        trust_env: bool = True,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        configure_from_environment()  # INFERENCESH_LOG, read when the first client is made
        if split_url(base_url, error=UsageError, what="base_url").netloc.rpartition("@")[1]:
            # aiohttp would send them as Basic credentials beside the key, or refuse the
            # request; and the URL is shown in reprs and logs. The key authenticates.
            raise UsageError(
                f"base_url must not carry credentials (user:password@): "
                f"{without_userinfo(base_url)}; the API key authenticates"
            )
        self.base_url = base_url.rstrip("/")
        self._on_messages = on_messages
        headers = validate_headers(default_headers)
        headers["Authorization"] = f"Bearer {validate_api_key(api_key)}"
        for name in [name for name in headers if name.lower() == "user-agent"]:
            # The caller's product first, then the SDK's (RFC 9110 section 10.1.5).
            headers["User-Agent"] = f"{headers.pop(name)} {USER_AGENT}"
        self._api_headers = headers
        self._api_json_headers = {**headers, **_JSON_HEADERS}
        self._proxy = None if proxy is None else parse_proxy(proxy, source="proxy")
        self._env_proxies: dict[str, Proxy] = {}
        self._no_proxy: str | None = None
        if self._proxy is not None:
            logger.debug("every request goes through the proxy %s", self._proxy.shown)
        elif trust_env:
            self._env_proxies, self._no_proxy = _environment_proxies()
            for scheme, found in self._env_proxies.items():
                logger.debug("proxy for %s URLs from the environment: %s", scheme, found.shown)
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

    @property
    def cleanup_timeout(self) -> float:
        """Seconds clean-up work may take (a stop or a cancel sent on leaving, cancelled work
        finishing): the REST timeout, or `CLEANUP_BOUND` when there is none, so that no
        clean-up waits for ever."""
        return self._timeout if self._timeout is not None else CLEANUP_BOUND

    async def session(self) -> aiohttp.ClientSession:
        """The client's session for API calls, created on first use. The key and the default
        headers are sent per request (`_api_headers`), never as the session's defaults."""
        return await self._session_for(0)

    async def keyless_session(self) -> aiohttp.ClientSession:
        """The session for presigned upload URLs and file downloads, which may be on another
        host: it never sends the API key or the default headers, and never decompresses."""
        return await self._session_for(1)

    def _proxy_for(self, url: str) -> Proxy | None:
        if self._proxy is not None:
            return self._proxy
        if not self._env_proxies:
            return None
        parts = split_url(url, error=ProtocolError, what="the URL to request")
        proxy = self._env_proxies.get(parts.scheme) or self._env_proxies.get("all")
        if proxy is None or (self._no_proxy is not None and _bypassed(parts, self._no_proxy)):
            return None
        return proxy

    def _route(self, url: str, headers: Mapping[str, str] | None) -> dict[str, Any]:
        """The keyword arguments that send a request to `url` with `headers`, through the
        proxy it is to go through, if any."""
        proxy = self._proxy_for(url)
        if proxy is None:
            return {"headers": headers}
        route: dict[str, Any] = {"headers": headers, "proxy": proxy.url}
        if proxy.authorization is not None:
            credentials = {"Proxy-Authorization": proxy.authorization}
            # An https:// URL is tunnelled: the credentials go with the CONNECT only. A plain
            # http:// request is sent to the proxy itself, so they go with the request.
            route["proxy_headers"] = credentials
            if not url.startswith("https:"):
                route["headers"] = {**(headers or {}), **credentials}
        return route

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
        # The only default header: aiohttp sends a session's defaults to a proxy, with CONNECT.
        # No `trust_env`: proxies are chosen by `_route` (see the module's docstring).
        session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": USER_AGENT},
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
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> Any:
        """Send one API request and return the envelope's `data` (or the bare body).

        A failure is retried as `RetryPolicy` says, but only where repeating the request is
        safe (`_may_retry`); `idempotent` defaults to True for GET and DELETE. `timeout` (the
        client's unless given; None for no limit) bounds the whole call, waits between
        attempts included.
        """
        seconds = call_timeout(timeout, self._timeout)
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "DELETE")
        body = None if json_body is None else _encode(json_body)
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await self.retrying(
                    f"{method} {shown(path)}",
                    lambda: self._send(method, path, body),
                    idempotent=idempotent,
                    deadline=deadline.when,
                )
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise RequestTimeoutError(
                f"{method} {shown(path)} got no complete answer within {seconds} seconds"
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
                logger.info(  # %r: the server's error text, escaped (no forged log lines)
                    "%s failed (%r); retry %d/%d in %.2fs",
                    what, str(error), failures, self._retry.max_retries, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _send(self, method: str, path: str, body: bytes | None) -> Any:
        session = await self.session()
        url = self.base_url + path
        headers = self._api_headers if body is None else self._api_json_headers
        with logged(method, path) as exchange, map_errors():
            async with session.request(
                method, url, data=body, allow_redirects=False, **self._route(url, headers)
            ) as resp:
                exchange.status = resp.status
                if resp.status >= 400:
                    raise _status_error(resp, await _read_capped(resp))
                _refuse_redirect(method, path, resp)
                body = await _read_body(resp, self._max_body_bytes)
        data, messages = _unwrap(resp.status, body)
        for message in messages:
            server_logger.info("%s %s: %s", method, shown(path), preview(message))
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
        if not keyless_url:
            headers = {**self._api_headers, **headers}
        timeout = aiohttp.ClientTimeout(
            total=None, connect=options.connect_timeout, sock_connect=options.connect_timeout
        )
        with logged("GET", path) as exchange, map_errors():
            # Storage may redirect a download (the request carries no secret); the API may not.
            ctx = session.get(
                url, timeout=timeout, allow_redirects=keyless_url, **self._route(url, headers)
            )
            waiting = asyncio.timeout(options.headers_timeout)
            try:
                async with waiting:
                    resp = await ctx.__aenter__()
            except TimeoutError as exc:
                if not waiting.expired():
                    raise
                raise HeadersTimeoutError(
                    f"no response headers for {shown(path)} within {options.headers_timeout} "
                    "seconds (headers_timeout)"
                ) from exc
            exchange.status = resp.status
            if resp.status < 400:
                exchange.note = f" (headers; streaming {resp.content_type or 'the body'})"
        try:
            if not keyless_url:
                _refuse_redirect("GET", path, resp)
            if resp.status >= 400:
                with map_errors():
                    try:
                        async with asyncio.timeout(options.idle_timeout):
                            body = await _read_capped(resp)
                    except TimeoutError:
                        body = b""
                raise _status_error(resp, body, storage=keyless_url)
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
        # aiohttp reads the body in a task of its own and reports anything raised there as a
        # connection error: keep the body's own failure (a file that changed, a callback that
        # raised) to raise it as it was.
        failed: list[BaseException] = []

        async def watched() -> AsyncIterator[bytes]:
            try:
                async for chunk in body:
                    yield chunk
                    if idle_timeout is not None:
                        watchdog.reschedule(loop.time() + idle_timeout)
            except Exception as exc:
                failed.append(exc)
                raise

        try:
            async with watchdog:  # outside map_errors: its TimeoutError is ours, not aiohttp's
                with logged("PUT", url) as exchange, map_errors():
                    async with session.put(
                        url, data=watched(), **self._route(url, headers)
                    ) as resp:
                        exchange.status = resp.status
                        if resp.status >= 400:
                            answer = await _read_capped(resp)
                            raise _status_error(resp, answer, storage=True)
                        await _read_capped(resp)  # the answer of a success is small
        except TimeoutError as exc:
            if failed:
                raise failed[0] from None
            if not watchdog.expired():
                raise
            raise IdleTimeoutError(
                f"the upload made no progress for {idle_timeout} seconds (idle_timeout)"
            ) from exc
        except InferenceshError:
            if failed:
                raise failed[0] from None
            raise


_JSON_HEADERS = {"Content-Type": "application/json"}


def _encode(value: Any) -> bytes:
    """A request body as JSON; a value JSON cannot hold (NaN, a set, an object) is the caller's
    mistake, said before anything is sent."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"the request body cannot be sent as JSON: {exc}") from None


def _refuse_redirect(method: str, path: str, resp: aiohttp.ClientResponse) -> None:
    """Raise `ProtocolError` for a redirect (3xx) from the API. API requests never follow one:
    aiohttp would send the request's body and `default_headers` (only `Authorization` is
    dropped) to whatever origin the server names, and turn a POST into a GET whose answer
    would pass for the POST's."""
    if not 300 <= resp.status < 400:
        return
    location = resp.headers.get("Location")
    where = f" to {_printable(shown(location))}" if location else ""
    raise ProtocolError(
        f"{method} {shown(path)} was answered {resp.status}, a redirect{where}; API requests do "
        "not follow redirects (is base_url right?)"
    )


def _printable(text: str) -> str:
    """`text` with anything not printable ASCII escaped (a header's undecodable bytes)."""
    if text.isascii() and text.isprintable():
        return text
    return repr(text)[1:-1].encode("ascii", "backslashreplace").decode("ascii")


def _status_error(
    resp: aiohttp.ClientResponse, body: bytes, *, storage: bool = False
) -> APIStatusError:
    """The error for an answer of status >= 400: the API's (`status_error`), or, from a
    presigned URL, file storage's (`storage_error`, which keeps none of its signed request)."""
    build = storage_error if storage else status_error
    return build(resp.status, body, retry_after=parse_retry_after(resp.headers.get("Retry-After")))


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """An answer's body up to `_MAX_ERROR_BODY` (the rest is left unread), whatever pieces it
    arrives in: enough for any problem+json, never a whole stream."""
    pieces: list[bytes] = []
    size = 0
    while size < _MAX_ERROR_BODY and (chunk := await resp.content.read(_MAX_ERROR_BODY - size)):
        pieces.append(chunk)
        size += len(chunk)
    return b"".join(pieces)


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
    if isinstance(payload, Mapping) and payload.get("success") is False:
        # With or without `data`: never taken for a bare DTO (the API's v1 error envelope).
        raise envelope_error(status, payload)
    if isinstance(payload, Mapping) and "data" in payload:
        messages = payload.get("messages")
        return payload["data"], list(messages) if isinstance(messages, list) else []
    return payload, []
