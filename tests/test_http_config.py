"""HTTP configuration: proxies (the environment's and `proxy=`), `default_headers`, per-call
`timeout=` and the User-Agent, over real loopback sockets.

A small forwarding proxy (raw asyncio sockets, on its own thread so blocking clients can use it
too) records the head of every request it is sent, then forwards it to the emulator and pipes
the answer back; it can also refuse (407) or answer CONNECT, so what a proxy sees is asserted
as a proxy sees it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import socket
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import attrs
import pytest

import inferencesh
from inferencesh import (
    USE_CLIENT_DEFAULT,
    APIStatusError,
    ConnectError,
    InferenceshError,
    RequestTimeoutError,
    RetryPolicy,
    TaskTimeoutError,
    UsageError,
    async_inference,
    inference,
)
from inferencesh._transport import USER_AGENT, _bypassed

pytestmark = pytest.mark.anyio

HOLD = {"app": "x/y", "input": {"sim": {"hold": True}}}
SIM = {"app": "x/y", "input": {"prompt": "a mountain"}}
SECRET = "s3cr3t-proxy-pw"
KEY = "api-key-0123456789"
NO_RETRY = RetryPolicy(max_retries=0)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy variable of the machine running the tests leaks in."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)


# -- servers on a background loop -----------------------------------------------------------------


@attrs.frozen
class Seen:
    """The head of one request a proxy was sent."""

    method: str
    target: str
    headers: Mapping[str, str]  # names lower-cased
    head: str  # as it arrived

    @property
    def path(self) -> str:
        return urlsplit(self.target).path if "://" in self.target else self.target


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ThreadServer:
    """An asyncio server on 127.0.0.1, run by its own loop on a daemon thread."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


class Proxy(ThreadServer):
    """A forwarding HTTP proxy for http:// targets, one request per connection.

    It records each request's head; `require` (user, password) makes it answer 407 without
    them; `refuse` makes it answer that status to everything; CONNECT (for https:// targets)
    is recorded and answered 407 or 502, never tunnelled.
    """

    def __init__(self, *, require: tuple[str, str] | None = None, refuse: int | None = None):
        super().__init__(self._handle)
        self.seen: list[Seen] = []
        self._expected = None
        if require is not None:
            token = base64.b64encode(f"{require[0]}:{require[1]}".encode()).decode()
            self._expected = f"Basic {token}"
        self._refuse = refuse

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        method, target, version = request_line.split(" ", 2)
        fields = [line.split(":", 1) for line in lines if line]
        headers = {name.strip().lower(): value.strip() for name, value in fields}
        self.seen.append(Seen(method, target, headers, head))
        status = self._refuse
        if (
            status is None
            and self._expected is not None
            and headers.get("proxy-authorization") != self._expected
        ):
            status = 407
        if status is None and method == "CONNECT":
            status = 502
        if status is not None:
            writer.write(
                f'HTTP/1.1 {status} Refused\r\nProxy-Authenticate: Basic realm="t"\r\n'
                "Content-Type: text/plain\r\nContent-Length: 7\r\nConnection: close\r\n\r\n"
                "refused".encode()
            )
            await writer.drain()
            return
        parts = urlsplit(target)
        assert parts.hostname is not None
        assert parts.port is not None
        up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port)
        origin_form = parts.path + (f"?{parts.query}" if parts.query else "")
        kept = [
            f"{name}:{value}"
            for name, value in fields
            if name.strip().lower() not in ("proxy-authorization", "proxy-connection", "connection")
        ]
        out = "\r\n".join([f"{method} {origin_form} {version}", *kept, "Connection: close"])
        up_writer.write((out + "\r\n\r\n").encode("latin-1"))
        upstream = asyncio.ensure_future(_pipe(reader, up_writer))
        try:
            await _pipe(up_reader, writer)
        finally:
            upstream.cancel()
            with contextlib.suppress(BaseException):
                await upstream
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, then never answer."""
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.Event().wait()


def refused_url() -> str:
    """A loopback URL nothing listens on (the port was just bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def with_credentials(url: str, user: str = "user", password: str = SECRET) -> str:
    return url.replace("http://", f"http://{user}:{password}@", 1)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    with Proxy() as running:
        yield running


@pytest.fixture
def silent() -> Iterator[str]:
    with ThreadServer(_silent) as running:
        yield running.url


# -- helpers ------------------------------------------------------------------------------------


async def every_kind_of_request(client: inferencesh.AsyncInference, tmp_path: Path) -> None:
    """A REST call, a task stream, an upload (POST /files and the presigned PUT) and a
    download of the task's output file, all through `client`."""
    done = [update async for update in client.run(SIM, stream=True)]
    assert done[-1].status == "completed"
    await client.get_task(done[-1].id)
    uploaded = await client.upload_file(b"hello proxy", filename="hello.txt")
    saved = await client.download(uploaded, tmp_path / "copy.txt")
    assert b"hello proxy" == saved.read_bytes()


def assert_every_kind(paths: list[str]) -> None:
    assert "/apps/run" in paths
    assert any(re.fullmatch(r"/tasks/[^/]+/stream", p) for p in paths), paths
    assert any(re.fullmatch(r"/tasks/[^/]+", p) for p in paths), paths
    assert "/files" in paths
    assert any(p.startswith("/uploads/") for p in paths), paths
    assert any(p.startswith("/blobs/") for p in paths), paths


def reachable(root: object, depth: int = 8) -> Iterator[object]:
    """Every object reachable from an error: its chain, arguments, attributes and slots."""
    seen: set[int] = set()
    stack = [(root, 0)]
    while stack:
        obj, level = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if level >= depth or isinstance(obj, str | bytes | int | float | type):
            continue
        if isinstance(obj, types.ModuleType | types.FunctionType | types.FrameType):
            continue
        children: list[object] = []
        if isinstance(obj, BaseException):
            children += [obj.__cause__, obj.__context__, *obj.args]
        if isinstance(obj, Mapping):
            for key in list(obj.keys()):
                children += [key, obj[key]]
        elif isinstance(obj, list | tuple | set | frozenset):
            children += list(obj)
        if hasattr(obj, "__dict__"):
            children += list(vars(obj).values())
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for name in [slots] if isinstance(slots, str) else slots:
                children.append(getattr(obj, name, None))
        for name in ("request_info", "headers", "history", "os_error", "real_url", "url"):
            with contextlib.suppress(Exception):
                children.append(getattr(obj, name, None))
        stack += [(child, level + 1) for child in children]


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    assert isinstance(error, InferenceshError), repr(error)
    walked = 0
    for obj in reachable(error):
        walked += 1
        for secret in secrets:
            assert secret not in repr(obj), f"{secret} is in {type(obj).__name__}"
            if isinstance(obj, BaseException):
                assert secret not in str(obj)
    assert walked > 3  # the walk reached the chained aiohttp error


# -- proxies from the environment ------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
async def test_environment_proxy_carries_every_request(
    server: str, proxy: Proxy, variable: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With a proxy in the environment, REST calls, streams, the presigned upload and the
    download all go through it."""
    monkeypatch.setenv(variable, proxy.url)
    async with async_inference(api_key=KEY, base_url=server) as client:
        await every_kind_of_request(client, tmp_path)
    assert_every_kind(proxy.paths())
    assert all(seen.target.startswith(server) for seen in proxy.seen)  # absolute form


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*", "127.0.0.0/8"])
async def test_no_proxy_bypasses_the_proxy(
    server: str, proxy: Proxy, no_proxy: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    async with async_inference(api_key=KEY, base_url=server) as client:
        await every_kind_of_request(client, tmp_path)
    assert [] == proxy.seen


async def test_trust_env_false_ignores_the_environment(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", refused_url())
    async with async_inference(api_key=KEY, base_url=server, trust_env=False) as client:
        assert "completed" == (await client.run(SIM)).status


async def test_unusable_environment_proxy_is_ignored_with_a_warning(
    server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A SOCKS proxy set for other tools neither stops the client nor shows its password."""
    monkeypatch.setenv("ALL_PROXY", f"socks5://user:{SECRET}@127.0.0.1:1080")
    with caplog.at_level(logging.DEBUG):
        async with async_inference(api_key=KEY, base_url=server) as client:
            assert "completed" == (await client.run(SIM)).status
    assert "ALL_PROXY" in caplog.text
    assert "socks5" in caplog.text
    assert SECRET not in caplog.text


async def test_malformed_environment_proxy_is_ignored_with_a_warning(
    server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy URL `urlsplit` cannot read (a broken IPv6 host) is skipped as any other unusable
    one, not raised from the client's constructor as a ValueError."""
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:{SECRET}@[::1:8080")
    with caplog.at_level(logging.DEBUG):
        async with async_inference(api_key=KEY, base_url=server) as client:
            assert "completed" == (await client.run(SIM)).status
    assert "HTTPS_PROXY" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.parametrize("factory", [async_inference, inference])
@pytest.mark.parametrize(
    "url",
    [
        "http://[::1:8080",
        "http://a b/x",
        "http://\x00/x",
        "http:///x",
        "http://h:99999/",
        "http://h:abc/",
        "http://h:0/",
    ],
)
def test_malformed_base_url_is_a_usage_error(factory: Callable[..., Any], url: str) -> None:
    """Refused when the client is made: a URL with no usable host or port otherwise failed at
    the first request (a ConnectError after every retry, for a host with a space)."""
    with pytest.raises(UsageError, match="base_url"):
        factory(api_key=KEY, base_url=url)


@pytest.mark.parametrize("factory", [async_inference, inference])
@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{SECRET}@127.0.0.1:9/api",
        f"https://{SECRET}@example.com",
        f"http://user:{SECRET}@h?x=1",
        f"ftp://user:{SECRET}@example.com/",
    ],
)
def test_credentials_in_base_url_are_refused_unshown(factory: Callable[..., Any], url: str) -> None:
    """The key authenticates: credentials in base_url would go out as Basic auth beside it (or
    make aiohttp refuse the request) and show in every repr; the message hides them."""
    with pytest.raises(UsageError, match="base_url") as caught:
        factory(api_key=KEY, base_url=url)
    assert SECRET not in str(caught.value)
    assert "***@" in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_credentials_in_environment_base_url_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERENCE_BASE_URL", f"http://user:{SECRET}@127.0.0.1:9")
    with pytest.raises(UsageError, match="credentials") as caught:
        async_inference(api_key=KEY)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "no_proxy", "bypassed"),
    [
        ("http://api.example.com/x", "example.com", True),
        ("http://api.example.com/x", ".example.com", True),
        ("http://example.com/x", "example.com", True),
        ("http://badexample.com/x", "example.com", False),
        ("http://127.0.0.1:8080/x", "127.0.0.1:8080", True),
        ("http://127.0.0.1:8081/x", "127.0.0.1:8080", False),
        ("http://10.1.2.3/x", "10.0.0.0/8", True),
        ("http://11.1.2.3/x", "10.0.0.0/8", False),
        ("http://[::1]:5/x", "::1", True),
        ("http://[::1]:5/x", "[::1]:5", True),
        ("https://API.EXAMPLE.COM/x", " other.org , Example.com ", True),
        ("http://anything/x", "*", True),
        ("http://anything/x", "", False),
    ],
)
def test_no_proxy_entries(url: str, no_proxy: str, bypassed: bool) -> None:
    assert bypassed == _bypassed(urlsplit(url), no_proxy)


# -- proxy= --------------------------------------------------------------------------------------


async def test_proxy_argument_without_environment(
    server: str, proxy: Proxy, tmp_path: Path
) -> None:
    async with async_inference(api_key=KEY, base_url=server, proxy=proxy.url) as client:
        await every_kind_of_request(client, tmp_path)
    assert_every_kind(proxy.paths())


async def test_proxy_argument_overrides_the_environment(
    server: str, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`proxy=` wins over HTTP_PROXY (a dead one here) and over NO_PROXY."""
    monkeypatch.setenv("HTTP_PROXY", refused_url())
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with async_inference(api_key=KEY, base_url=server, proxy=proxy.url) as client:
        assert "completed" == (await client.run(SIM)).status
    assert "/apps/run" in proxy.paths()


def test_blocking_client_uses_the_proxy(server: str, proxy: Proxy, tmp_path: Path) -> None:
    with inference(api_key=KEY, base_url=server, proxy=proxy.url) as client:
        final = client.run(SIM)
        assert final.id == client.get_task(final.id).id
        uploaded = client.upload_file(b"abc", filename="a.txt")
        assert b"abc" == client.download(uploaded, tmp_path / "a.txt").read_bytes()
    paths = proxy.paths()
    assert "/apps/run" in paths
    assert any(p.startswith("/uploads/") for p in paths)
    assert any(p.startswith("/blobs/") for p in paths)


@pytest.mark.parametrize("how", ["argument", "environment"])
async def test_proxy_credentials_are_sent_and_never_shown(
    server: str,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """A proxy that wants credentials gets them on every request (presigned ones too); they
    appear in no repr and no log line."""
    with Proxy(require=("user", SECRET)) as guarded:
        url = with_credentials(guarded.url)
        kwargs: dict[str, Any] = {}
        if how == "argument":
            kwargs["proxy"] = url
        else:
            monkeypatch.setenv("HTTP_PROXY", url)
        with caplog.at_level(logging.DEBUG):
            async with async_inference(api_key=KEY, base_url=server, **kwargs) as client:
                assert SECRET not in repr(client)
                await every_kind_of_request(client, tmp_path)
    assert_every_kind(guarded.paths())
    expected = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
    assert {expected} == {seen.headers.get("proxy-authorization") for seen in guarded.seen}
    assert f"http://***@127.0.0.1:{guarded.port}" in caplog.text  # the proxy is logged ...
    assert SECRET not in caplog.text  # ... without its password


def test_proxy_credentials_not_in_the_blocking_clients_repr() -> None:
    client = inference(api_key=KEY, base_url="http://127.0.0.1:9", proxy=f"http://u:{SECRET}@h:1")
    with client:
        assert SECRET not in repr(client)
        assert SECRET not in repr(vars(client))


@pytest.mark.parametrize("failure", ["407", "down"])
@pytest.mark.parametrize("kind", ["async", "blocking"])
async def test_proxy_failures_never_carry_the_credentials(
    failure: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that refuses (407) or is down: the error says so, and nothing reachable from
    it (message, chained aiohttp errors, their request info) holds the password or the key."""
    with contextlib.ExitStack() as stack:
        if failure == "407":
            refusing = stack.enter_context(Proxy(refuse=407))
            proxy_url = with_credentials(refusing.url)
        else:
            proxy_url = with_credentials(refused_url())
        options: dict[str, Any] = {"api_key": KEY, "base_url": "http://127.0.0.1:9"}
        options.update(proxy=proxy_url, retry=NO_RETRY)

        def call() -> BaseException:
            with pytest.raises(InferenceshError) as info, inference(**options) as client:
                client.get_task("t1")
            return info.value

        with caplog.at_level(logging.DEBUG):
            if kind == "blocking":
                error = await asyncio.to_thread(call)
            else:
                with pytest.raises(InferenceshError) as info:
                    async with async_inference(**options) as client:
                        await client.get_task("t1")
                error = info.value
    if failure == "407":
        assert isinstance(error, APIStatusError)
        assert 407 == error.status
    else:
        assert isinstance(error, ConnectError)
        assert "proxy" in str(error)
        assert error.__cause__ is not None
    assert_no_secret(error, SECRET, KEY)
    assert SECRET not in caplog.text
    assert KEY not in caplog.text


async def test_connect_to_a_proxy_carries_neither_the_key_nor_default_headers() -> None:
    """For an https:// API the proxy only sees CONNECT: with the proxy's own credentials,
    never the API key (aiohttp would send a session's default headers there) or the default
    headers. A refused CONNECT is a ConnectError that shows no credentials."""
    with Proxy(refuse=407) as refusing:
        for proxy_url in (refusing.url, with_credentials(refusing.url)):
            async with async_inference(
                api_key=KEY,
                base_url="https://127.0.0.1:9",
                proxy=proxy_url,
                retry=NO_RETRY,
                default_headers={"X-Team": "research"},
            ) as client:
                with pytest.raises(ConnectError) as info:
                    await client.get_task("t1")
            assert "407" in str(info.value)
            assert_no_secret(info.value, SECRET, KEY)
    without, with_auth = refusing.seen
    for seen in (without, with_auth):
        assert ("CONNECT", "127.0.0.1:9") == (seen.method, seen.target)
        assert KEY not in seen.head
        assert "authorization" not in seen.headers
        assert "x-team" not in seen.headers
        assert seen.headers["user-agent"] == USER_AGENT
    assert "proxy-authorization" not in without.headers
    assert with_auth.headers["proxy-authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    "bad",
    [
        "socks5://user:" + SECRET + "@127.0.0.1:1080",
        "http://user:" + SECRET + "@",
        "http://h:x1/",
        "http://user:" + SECRET + "@[::1:8080",  # urlsplit raises ValueError on it
    ],
)
@pytest.mark.parametrize("factory", [async_inference, inference])
def test_unusable_proxy_argument_is_a_usage_error(factory: Callable[..., Any], bad: str) -> None:
    with pytest.raises(UsageError) as info:
        factory(api_key=KEY, base_url="http://127.0.0.1:9", proxy=bad)
    assert SECRET not in str(info.value)
    assert "proxy" in str(info.value)


# -- logs ----------------------------------------------------------------------------------------


async def test_a_servers_error_text_cannot_forge_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server's error text goes into the retry and reconnect log lines escaped: a newline
    in it cannot start a line of its own."""
    from aiohttp import web

    forged = "boom\nERROR inferencesh forged line"

    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": forged}}, status=503)

    app = web.Application()
    app.router.add_get("/tasks/{id}", failing)
    app.router.add_get("/tasks/{id}/stream", failing)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    quick = RetryPolicy(max_retries=1, retry_delay=0.01, retry_jitter=0.0)
    options = inferencesh.StreamingOptions(max_retries=1, retry_delay=0.01, retry_jitter=0.0)
    try:
        with caplog.at_level(logging.INFO, logger="inferencesh"):
            async with async_inference(api_key=KEY, base_url=url, retry=quick) as client:
                with pytest.raises(APIStatusError):
                    await client.get_task("t1")
                with pytest.raises(InferenceshError):
                    async for _ in client.stream_task("t1", options):
                        pass
    finally:
        await runner.cleanup()
    retried = [r.getMessage() for r in caplog.records if "retry 1/1" in r.getMessage()]
    reconnected = [r.getMessage() for r in caplog.records if "reconnect 1/1" in r.getMessage()]
    assert retried, caplog.text
    assert reconnected, caplog.text
    for message in retried + reconnected:
        assert "\n" not in message, message
        assert "boom\\nERROR" in message, message


# -- default headers ----------------------------------------------------------------------------


async def test_default_headers_go_to_the_api_only(
    server: str, proxy: Proxy, tmp_path: Path
) -> None:
    """Default headers reach every API request and no presigned URL; the key likewise."""
    headers = {"X-Team": "research", "X-Trace": "a\tb"}
    async with async_inference(
        api_key=KEY, base_url=server, proxy=proxy.url, default_headers=headers
    ) as client:
        await every_kind_of_request(client, tmp_path)
    assert_every_kind(proxy.paths())
    for seen in proxy.seen:
        presigned = seen.path.startswith(("/uploads/", "/blobs/"))
        assert ("x-team" in seen.headers) is not presigned, seen.head
        assert ("authorization" in seen.headers) is not presigned, seen.head
        if not presigned:
            assert "research" == seen.headers["x-team"]
            assert f"Bearer {KEY}" == seen.headers["authorization"]


def test_blocking_client_sends_default_headers(server: str, proxy: Proxy) -> None:
    with inference(
        api_key=KEY, base_url=server, proxy=proxy.url, default_headers={"X-Team": "blocking"}
    ) as client:
        client.list_sessions()
    [seen] = proxy.seen
    assert "blocking" == seen.headers["x-team"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer other"},
        {"authorization": "Bearer other"},
        {"Proxy-Authorization": "Basic eDp5"},
        {"Host": "elsewhere"},
        {"Content-Length": "3"},
        {"X-Bad": "a\r\nInjected: yes"},
        {"X-Bad": "nul\x00"},
        {"X-Bad": "caf\u00e9"},
        {"X Bad": "name with a space"},
        {"": "empty name"},
        {"X-Number": 3},
        {"X-A": "1", "x-a": "2"},
    ],
)
@pytest.mark.parametrize("factory", [async_inference, inference])
def test_unsendable_default_headers_are_a_usage_error(
    factory: Callable[..., Any], headers: dict[str, Any]
) -> None:
    with pytest.raises(UsageError) as info:
        factory(api_key=KEY, base_url="http://127.0.0.1:9", default_headers=headers)
    for value in headers.values():
        if isinstance(value, str) and len(value) > 3:
            assert value not in str(info.value)  # a value may be secret: never shown


# -- User-Agent ---------------------------------------------------------------------------------


def test_user_agent_names_the_sdk_and_python() -> None:
    python = ".".join(map(str, sys.version_info[:3]))
    assert f"inferencesh-py/{inferencesh.__version__} (python {python})" == USER_AGENT


async def test_user_agent_on_api_and_presigned_requests(
    server: str, proxy: Proxy, tmp_path: Path
) -> None:
    async with async_inference(api_key=KEY, base_url=server, proxy=proxy.url) as client:
        await every_kind_of_request(client, tmp_path)
    assert_every_kind(proxy.paths())
    assert {USER_AGENT} == {seen.headers.get("user-agent") for seen in proxy.seen}


async def test_callers_user_agent_comes_first_on_api_requests(
    server: str, proxy: Proxy, tmp_path: Path
) -> None:
    async with async_inference(
        api_key=KEY, base_url=server, proxy=proxy.url, default_headers={"user-agent": "app/2.1"}
    ) as client:
        await every_kind_of_request(client, tmp_path)
    for seen in proxy.seen:
        presigned = seen.path.startswith(("/uploads/", "/blobs/"))
        expected = USER_AGENT if presigned else f"app/2.1 {USER_AGENT}"
        assert expected == seen.headers["user-agent"], seen.path


# -- per-call timeout ---------------------------------------------------------------------------


async def _timed(call: Callable[[], Awaitable[Any]]) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(InferenceshError) as info:
        await asyncio.wait_for(call(), 10)
    return info.value, time.monotonic() - started


REST_CALLS: dict[str, Callable[[inferencesh.AsyncInference], Awaitable[Any]]] = {
    "get_task": lambda c: c.get_task("t1", timeout=0.3),
    "cancel_task": lambda c: c.cancel_task("t1", timeout=0.3),
    "delete_task": lambda c: c.delete_task("t1", timeout=0.3),
    "task_files": lambda c: c.task_files("t1", timeout=0.3),
    "upload_file": lambda c: c.upload_file(b"x", filename="x.txt", timeout=0.3),
    "get_session": lambda c: c.get_session("s1", timeout=0.3),
    "list_sessions": lambda c: c.list_sessions(timeout=0.3),
    "run_no_wait": lambda c: c.run(SIM, wait=False, timeout=0.3),
    "agent_stop": lambda c: _agent_stop(c),
}


async def _agent_stop(client: inferencesh.AsyncInference) -> None:
    await client.agent("a/b", chat_id="c1").stop(timeout=0.3)


@pytest.mark.parametrize("call", list(REST_CALLS))
async def test_per_call_timeout_replaces_the_clients(silent: str, call: str) -> None:
    """A server that never answers: the call's own 0.3 s, not the client's 30 s."""
    async with async_inference(api_key=KEY, base_url=silent, timeout=30) as client:
        error, elapsed = await _timed(lambda: REST_CALLS[call](client))
    assert isinstance(error, RequestTimeoutError), repr(error)
    assert "0.3 seconds" in str(error)
    assert 0.25 <= elapsed < 10.0


def test_blocking_per_call_timeout(silent: str) -> None:
    with inference(api_key=KEY, base_url=silent, timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            client.get_task("t1", timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 10.0


async def test_per_call_none_is_no_limit(silent: str) -> None:
    """timeout=None lifts the client's 0.2 s for that call (it is still waiting at 0.8 s)."""
    async with async_inference(api_key=KEY, base_url=silent, timeout=0.2) as client:
        with pytest.raises(RequestTimeoutError):
            await client.get_task("t1")
        with pytest.raises(TimeoutError) as info:
            await asyncio.wait_for(client.get_task("t1", timeout=None), 0.8)
        assert not isinstance(info.value, InferenceshError)
        with pytest.raises(RequestTimeoutError):
            await client.get_task("t1", timeout=USE_CLIENT_DEFAULT)


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), True, "1"])
async def test_unusable_timeout_is_a_usage_error(bad: Any) -> None:
    async with async_inference(api_key=KEY, base_url="http://127.0.0.1:9") as client:
        with pytest.raises(UsageError):
            await client.get_task("t1", timeout=bad)
        with pytest.raises(UsageError):
            client.stream_task("t1", timeout=bad)
        with pytest.raises(UsageError):
            client.run(SIM, wait=False, timeout=bad)


async def _drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass


@pytest.mark.parametrize("how", ["run_stream", "run_wait", "stream_task", "wait_for_completion"])
async def test_stream_timeout_is_its_total_time(server: str, how: str) -> None:
    """On a held task, the call's timeout bounds the stream (TaskTimeoutError), over the
    client's options (which have no total_timeout)."""
    async with async_inference(api_key=KEY, base_url=server) as client:
        if how == "run_stream":
            updates = client.run(HOLD, stream=True, timeout=0.5)
            error, elapsed = await _timed(lambda: _drain(updates))
        elif how == "run_wait":
            error, elapsed = await _timed(lambda: client.run(HOLD, timeout=0.5))
        else:
            created = await client.run(HOLD, wait=False)
            if how == "stream_task":
                stream = client.stream_task(created.id, timeout=0.5)
                error, elapsed = await _timed(lambda: _drain(stream))
            else:
                error, elapsed = await _timed(lambda: client.wait_for_completion(created.id, 0.5))
            assert "running" == (await client.get_task(created.id)).status  # still running
    assert isinstance(error, TaskTimeoutError), repr(error)
    assert 0.45 <= elapsed < 10.0


def test_blocking_stream_timeout(server: str) -> None:
    with inference(api_key=KEY, base_url=server) as client:
        started = time.monotonic()
        with pytest.raises(TaskTimeoutError):
            for _ in client.run(HOLD, stream=True, timeout=0.5):
                pass
        assert 0.45 <= time.monotonic() - started < 10.0
