"""The emulator's HTTP layer against hostile clients: bad input, slow clients, too many of them.

Real sockets only: the emulator on loopback (in a thread, in the test's loop, or as a
`python -m inferencesh serve` subprocess under a low open-file limit), raw sockets for what an
HTTP client would refuse to send. Every refusal is a 4xx problem+json naming the problem, and
the log shows one line for it, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import logging
import re
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferencesh.cli import main
from inferencesh.local import (
    AppContext,
    Emulator,
    EmulatorOptions,
    HttpLimits,
    serve,
    serve_in_thread,
)

KEY = "Bearer test-key"
AUTH = f"Authorization: {KEY}\r\n".encode()
PROBLEM = "application/problem+json"
# The loggers a rejected request may reach: ours, aiohttp's and asyncio's.
WATCHED = ("inferencesh.local", "aiohttp", "asyncio")


# -- fixtures and helpers ------------------------------------------------------------------------


class Recorder(logging.Handler):
    """Every record of the watched loggers, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.rejected = threading.Event()  # set by the first "rejected ..." line

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if record.getMessage().startswith("rejected "):
            self.rejected.set()

    def rejections(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.getMessage().startswith("rejected ")]

    def assert_quiet(self) -> None:
        """No traceback, nothing at WARNING or above (a client's mistake is not an error)."""
        loud = [r for r in self.records if r.exc_info or r.levelno >= logging.WARNING]
        assert [] == [f"{r.name}: {r.getMessage()}" for r in loud]

    def assert_one_rejection(self, status: int) -> str:
        """Exactly one concise INFO line for the rejected request; returns it."""
        self.assert_quiet()
        lines = self.rejections()
        assert 1 == len(lines), lines
        assert f": {status} " in lines[0], lines[0]
        assert len(lines[0]) < 400, lines[0]
        self.records.clear()
        return lines[0]


@pytest.fixture
def logs() -> Iterator[Recorder]:
    recorder = Recorder()
    saved = []
    for name in WATCHED:
        log = logging.getLogger(name)
        saved.append((log, log.level))
        log.setLevel(logging.DEBUG)
        log.addHandler(recorder)
    try:
        yield recorder
    finally:
        for log, level in saved:
            log.removeHandler(recorder)
            log.setLevel(level)


FAST = {"sim_steps": 1, "sim_step_delay": 0.0, "transition_delay": 0.0, "heartbeat_interval": 5.0}


@pytest.fixture(scope="module")
def shared() -> Iterator[str]:
    """One emulator with the default `HttpLimits` for the module, on a background thread."""
    with serve_in_thread(EmulatorOptions(**FAST)) as url:  # type: ignore[arg-type]
        yield url


@contextlib.asynccontextmanager
async def emulator(heartbeat_interval: float = 5.0, **limits: Any) -> AsyncIterator[str]:
    """An emulator in this test's loop with these `HttpLimits` fields."""
    settings = {**FAST, "heartbeat_interval": heartbeat_interval}
    options = EmulatorOptions(**settings, http=HttpLimits(**limits))  # type: ignore[arg-type]
    async with serve(options) as url:
        yield url


HOLD = b'{"app": "a/b", "input": {"sim": {"hold": true}}}'
NDJSON = b"Accept: application/x-ndjson\r\n"


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


@attrs.frozen
class Answer:
    """One HTTP answer read off a raw socket (head, and a Content-Length body)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self, status: int, detail: str) -> dict[str, Any]:
        """Assert a problem+json answer whose detail matches `detail` (a regex)."""
        assert self.status == status, (self.status, self.body)
        assert self.headers["content-type"] == PROBLEM
        doc: dict[str, Any] = json.loads(self.body)
        assert doc["status"] == status
        assert doc["success"] is False
        assert doc["error"] == {"code": doc["error"]["code"], "message": doc["detail"]}
        assert doc["type"] == f"https://inference.sh/errors/{doc['error']['code']}"
        assert doc["title"]
        assert re.search(detail, doc["detail"]), doc["detail"]
        return doc


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split()[1]), headers, body)


async def exchange(url: str, *parts: bytes) -> Answer:
    """Send `parts` (one write each) on a new connection and read one answer, bounded."""
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        async with asyncio.timeout(5):
            for part in parts:
                writer.write(part)
                await writer.drain()
            return await read_answer(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request(method: str, path: str, body: bytes | None = None, *, extra: bytes = b"") -> bytes:
    """A raw HTTP/1.1 request with the key and, for a body, its Content-Length."""
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n".encode() + AUTH + extra
    if body is None:
        return head + b"\r\n"
    return head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


ROUTES = ["/apps/run", "/agents/run", "/tools/inv_nope"]


# -- Item 1: no input gives a 500 ---------------------------------------------------------------


def nested(depth: int) -> bytes:
    """A run request whose JSON nests exactly `depth` levels (the request object included)."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)
    return ('{"app": "a/b", "input": {"x": ' + (inner or "0") + "}}").encode()


# An unterminated string of escaped quotes: a backtracking string regex takes quadratic time on it.
UNTERMINATED = b'"' + b'\\"' * 32000


HOSTILE_BODIES = [
    pytest.param(b'{"app": "a/b", "input": {"x": NaN}}', r"field 'input\.x': NaN is not", id="nan"),
    pytest.param(b'{"app": "a/b", "input": {"x": Infinity}}', r"'input\.x': Infinity", id="inf"),
    pytest.param(b'{"app": "a/b", "input": [-Infinity]}', r"'input\[0\]': -Infinity", id="-inf"),
    pytest.param(b'{"app": "a/b", "input": {"x": 1e999}}', r"'input\.x': number 1e999", id="1e999"),
    pytest.param(
        b'{"app": "a/b", "input": {"n": ' + b"7" * 5000 + b"}}",
        r"'input\.n': integer of 5000 digits is too long",
        id="5000-digits",
    ),
    pytest.param(nested(65), "nested deeper than 64 levels", id="depth-65"),
    pytest.param(b"[" * 950 + b"]" * 950, "nested deeper than 64 levels", id="depth-950"),
    pytest.param(b'{"a":' * 5000, "nested deeper than 64 levels", id="depth-5000-truncated"),
    pytest.param(b'{"app": "a/b", "input": "\xff"}', "not UTF-8", id="invalid-utf8"),
    pytest.param(
        b'{"app": "a/b", "input": {"s": "\\ud800"}}', r"'input\.s': .*surrogate", id="lone"
    ),
    pytest.param(b'{"app": "a/b", "input": {"s": [1, 2', "not valid JSON", id="truncated"),
    pytest.param(UNTERMINATED, "not valid JSON", id="unterminated-escapes"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("body", "detail"), HOSTILE_BODIES)
async def test_hostile_json_is_400_naming_the_problem(
    shared: str, logs: Recorder, route: str, body: bytes, detail: str
) -> None:
    """NaN, infinities, huge numbers, deep nesting, bad UTF-8: 400 problem+json, one log line."""
    answer = await exchange(shared, request("POST", route, body))
    answer.problem(400, detail)
    line = logs.assert_one_rejection(400)
    assert line.startswith(f"rejected POST {route}: 400 ")


@pytest.mark.anyio
@pytest.mark.parametrize("size", [64 * 1024, 1024 * 1024 - 2])
async def test_unterminated_string_is_answered_quickly(
    shared: str, logs: Recorder, size: int
) -> None:
    """`"` + `\\"` * n (64 KiB up to the 1 MiB limit) is a 400 well within 2 s, not minutes."""
    body = (b'"' + b'\\"' * size)[:size]
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await exchange(shared, request("POST", "/apps/run", body))
    assert loop.time() - started < 2
    answer.problem(400, "not valid JSON")
    logs.assert_one_rejection(400)


@pytest.mark.anyio
async def test_nesting_up_to_the_limit_is_accepted(shared: str, logs: Recorder) -> None:
    """64 levels is allowed (the request object counts as one)."""
    answer = await exchange(shared, request("POST", "/apps/run", nested(64)))
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["data"]["input"]["x"]
    logs.assert_quiet()


@pytest.mark.anyio
@pytest.mark.parametrize("route", [*ROUTES, "/tasks/task_nope"])
async def test_oversize_body_is_413_on_every_route(shared: str, logs: Recorder, route: str) -> None:
    """A body over 1 MiB is 413 wherever it is sent, GET included (declared or chunked)."""
    big = b'{"app": "a/b", "input": {"pad": "' + b"x" * (1024 * 1024) + b'"}}'
    method = "GET" if route.startswith("/tasks/") else "POST"
    async with aiohttp.ClientSession(shared, headers={"Authorization": KEY}) as session:
        async with session.request(method, route, data=io.BytesIO(big)) as resp:
            assert resp.status == 413
            assert resp.content_type == PROBLEM
            doc = await resp.json(content_type=None)
        assert re.search(r"request body .*over the limit of 1048576 bytes", doc["detail"])
        logs.assert_one_rejection(413)
        if method == "POST":

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield b" " * 512 * 1024

            async with session.post(route, data=chunks()) as resp:  # no Content-Length
                assert resp.status == 413
                assert resp.content_type == PROBLEM
            logs.assert_one_rejection(413)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/tasks/task_nope"), ("POST", "/apps/run"), ("GET", "/")]
)
async def test_oversize_url_is_414(shared: str, logs: Recorder, method: str, path: str) -> None:
    """A URL over 8 KiB is 414; the log line shows the start of the path only."""
    answer = await exchange(shared, request(method, f"{path}?q={'a' * 9000}", b"{}"))
    answer.problem(414, "request URL is longer than 8192 bytes")
    line = logs.assert_one_rejection(414)
    assert line.startswith(f"rejected {method} {path}?q=aaa")
    assert "a" * 200 not in line


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("extra", "detail"),
    [
        (b"X-Long: " + b"v" * 9000 + b"\r\n", "a request header is longer than 8192 bytes"),
        (b"".join(b"X-H%d: 1\r\n" % i for i in range(70)), "more than 64 request headers"),
    ],
    ids=["long-line", "too-many"],
)
@pytest.mark.parametrize("route", ["/tasks/task_nope", "/apps/run"])
async def test_oversize_headers_are_431(
    shared: str, logs: Recorder, extra: bytes, detail: str, route: str
) -> None:
    """A header line over 8 KiB, or more than 64 headers, is 431."""
    answer = await exchange(shared, request("GET", route, extra=extra))
    answer.problem(431, detail)
    logs.assert_one_rejection(431)


CHUNKED = b"POST /apps/run HTTP/1.1\r\nHost: t\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("parts", "detail"),
    [
        ([b"GARBAGE\r\n\r\n"], "Invalid method"),
        ([b"GET /tasks/x HTTP/9.9\r\nHost: t\r\n\r\n"], "malformed HTTP request"),
        ([b"GET /tasks/x HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n"], "malformed HTTP request"),
        ([b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"], "HTTPS traffic"),
        ([b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], "malformed HTTP request"),
        ([request("POST", "/apps/run", extra=b"Content-Length: 12x\r\n")], "Content-Length"),
        ([request("POST", "/apps/run", extra=b"Content-Length: 1\r\nContent-Length: 2\r\n")], ""),
        ([request("GET", "/tasks/x", extra=b"Bad Header: 1\r\n")], "malformed HTTP request"),
        ([CHUNKED + b"zz\r\n{}\r\n0\r\n\r\n"], "chunk size"),
        ([CHUNKED + b"2\r\n{}XX0\r\n\r\n"], "malformed"),
    ],
    ids=[
        "request-line",
        "http-version",
        "header-without-colon",
        "tls",
        "http2-preface",
        "content-length",
        "two-content-lengths",
        "header-name",
        "chunk-size",
        "chunk-end",
    ],
)
async def test_broken_framing_is_400(
    shared: str, logs: Recorder, parts: list[bytes], detail: str
) -> None:
    """Requests aiohttp's parser refuses get problem+json too (not aiohttp's text/plain)."""
    answer = await exchange(shared, *parts)
    answer.problem(400, detail)
    logs.assert_one_rejection(400)


@pytest.mark.anyio
async def test_broken_chunk_while_the_body_is_read_is_400(shared: str, logs: Recorder) -> None:
    """Framing that breaks after the handler started reading the body ends that read: 400.

    `Expect: 100-continue` makes the server say when the handler is reading, so the broken
    chunk arrives then, not with the headers.
    """
    reader, writer = await asyncio.open_connection(*address(shared))
    try:
        async with asyncio.timeout(5):
            writer.write(CHUNKED.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
            assert b"HTTP/1.1 100 Continue\r\n\r\n" == await reader.readuntil(b"\r\n\r\n")
            writer.write(b"2\r\n{}\r\nzz\r\n")
            answer = await read_answer(reader)
            assert b"" == await reader.read()  # and the connection closes
    finally:
        writer.close()
    answer.problem(400, r"field 'body': malformed request body \(chunked framing is broken\)")
    logs.assert_one_rejection(400)


@pytest.mark.anyio
@pytest.mark.parametrize("chunked", [False, True])
async def test_client_hanging_up_mid_body_is_no_traceback(
    shared: str, logs: Recorder, chunked: bool
) -> None:
    """A client gone before its body arrived is logged in one line, not as an error."""
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: 100\r\n"
    head = b"POST /apps/run HTTP/1.1\r\nHost: t\r\n" + AUTH + framing + b"Expect: 100-continue\r\n"
    reader, writer = await asyncio.open_connection(*address(shared))
    try:
        async with asyncio.timeout(5):
            writer.write(head + b"\r\n")
            await reader.readuntil(b"100 Continue\r\n\r\n")  # the handler is reading the body
            writer.write(b'5\r\n{"app' if chunked else b'{"app')
            await writer.drain()
    finally:
        writer.transport.abort()
    assert await asyncio.to_thread(logs.rejected.wait, 5)  # the server saw the hang-up
    assert "400 field 'body': the connection closed before the body arrived" in logs.rejections()[0]
    logs.assert_one_rejection(400)


@pytest.mark.anyio
async def test_unsupported_expect_is_problem_json(shared: str, logs: Recorder) -> None:
    """aiohttp's own 417 for an unknown `Expect`, raised before any middleware, is problem+json."""
    answer = await exchange(shared, request("POST", "/apps/run", b"{}", extra=b"Expect: bogus\r\n"))
    answer.problem(417, "unsupported Expect header: 'bogus'")
    logs.assert_one_rejection(417)


@pytest.mark.anyio
async def test_get_task_and_good_requests_still_work(shared: str, logs: Recorder) -> None:
    """The hardening changes nothing for good requests, on one kept-alive connection."""
    reader, writer = await asyncio.open_connection(*address(shared))
    try:
        async with asyncio.timeout(5):
            writer.write(request("POST", "/apps/run", b'{"app": "a/b", "input": {"x": 1.5}}'))
            created = await read_answer(reader)
            assert created.status == 200
            task_id = json.loads(created.body)["data"]["id"]
            writer.write(request("GET", f"/tasks/{task_id}"))
            got = await read_answer(reader)
            assert got.status == 200
            assert json.loads(got.body)["data"]["input"] == {"x": 1.5}
            writer.write(request("GET", "/tasks/task_nope"))
            (await read_answer(reader)).problem(404, "task task_nope not found")
    finally:
        writer.close()
    logs.assert_one_rejection(404)


# -- the hypothesis test: no body is a server error --------------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
BAD_TOKENS = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 5000, "-0", "1e-999", '"\\udc00"']
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """Bytes a careless or hostile client might post as a JSON body."""
    kind = draw(st.sampled_from(["valid", "request", "token", "deep", "truncated", "bytes"]))
    if kind == "valid":
        return json.dumps(draw(JSON_VALUES)).encode()
    request = {
        "app": draw(st.sampled_from(["a/b", "infsh/sim", "x", ""])),
        "agent": draw(st.sampled_from(["a/b", "acme/agent@latest", "", None])),
        "input": draw(JSON_VALUES),
    }
    text = json.dumps(request)
    if kind == "request":
        return text.encode()
    if kind == "token":
        return (
            text.replace("null", draw(BAD_TOKENS), 1)
            .replace("}", f', "t": {draw(BAD_TOKENS)}}}', 1)
            .encode()
        )
    if kind == "deep":
        depth = draw(st.integers(1, 3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"k": ', "}")]))
        inner = opener * depth + "1" + closer * depth
        return text.replace('"input": ', f'"input": {{"d": {inner}}}, "was": ', 1).encode()
    if kind == "truncated":
        return text.encode()[: draw(st.integers(0, len(text)))]
    return draw(st.binary(max_size=64))


def post(url: str, path: str, body: bytes) -> tuple[int, str]:
    host, port = address(url)
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request(
            "POST",
            path,
            body=body,
            headers={"Authorization": KEY, "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Content-Type", "")
    finally:
        connection.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=hostile_bodies())
def test_no_body_is_a_server_error(shared: str, body: bytes) -> None:
    """Whatever the body, /apps/run and /agents/run answer below 500 and log no traceback."""
    recorder = Recorder()
    for name in WATCHED:
        logging.getLogger(name).addHandler(recorder)
    try:
        for path in ("/apps/run", "/agents/run"):
            status, content_type = post(shared, path, body)
            assert status < 500, (path, status, body[:200])
            assert content_type == ("application/json" if status == 200 else PROBLEM)
    finally:
        for name in WATCHED:
            logging.getLogger(name).removeHandler(recorder)
    recorder.assert_quiet()


# -- Item 3: slow clients cannot starve it -------------------------------------------------------


@pytest.mark.anyio
async def test_header_timeout_closes_a_slow_connection(logs: Recorder) -> None:
    """Headers not in within `header_timeout`: 408 problem+json, then the connection closes."""
    async with emulator(header_timeout=0.5) as url:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(*address(url))
        try:
            started = loop.time()
            writer.write(b"GET /tasks/task_x HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            async with asyncio.timeout(5):
                answer = await read_answer(reader)
                assert b"" == await reader.read()
            assert 0.4 <= loop.time() - started < 3
        finally:
            writer.close()
        answer.problem(408, r"request headers not received within 0\.5 s")
        assert "close" == answer.headers["connection"]
        line = logs.assert_one_rejection(408)
        assert line.startswith("rejected GET /tasks/task_x: 408")

        # A connection that sends nothing at all is closed without an answer, and logged
        # only at DEBUG.
        reader, writer = await asyncio.open_connection(*address(url))
        try:
            async with asyncio.timeout(5):
                assert b"" == await reader.read()
        finally:
            writer.close()
        assert [] == logs.rejections()
        logs.assert_quiet()


@pytest.mark.anyio
async def test_idle_keepalive_uses_its_own_timeout(logs: Recorder) -> None:
    """After an answer, an idle kept-alive connection closes after `keepalive_timeout`."""
    async with emulator(header_timeout=0.3, keepalive_timeout=1.0) as url:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(*address(url))
        try:
            async with asyncio.timeout(5):
                writer.write(request("GET", "/tasks/task_nope"))
                (await read_answer(reader)).problem(404, "not found")
                answered = loop.time()
                assert b"" == await reader.read()
            assert 0.8 <= loop.time() - answered < 3  # not the 0.3 s header timeout
        finally:
            writer.close()
    logs.assert_one_rejection(404)


@pytest.mark.anyio
async def test_header_timeout_runs_again_for_the_next_request(logs: Recorder) -> None:
    """On a kept-alive connection, the next request's headers are timed from its first byte."""
    async with emulator(header_timeout=0.5, keepalive_timeout=30) as url:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(*address(url))
        try:
            async with asyncio.timeout(5):
                writer.write(request("GET", "/tasks/task_one"))
                (await read_answer(reader)).problem(404, "task task_one not found")
                writer.write(b"GET /tasks/task_two HTTP/1.1\r\nHo")
                started = loop.time()
                answer = await read_answer(reader)
                assert b"" == await reader.read()
            assert 0.4 <= loop.time() - started < 3
        finally:
            writer.close()
    answer.problem(408, "request headers not received")
    assert [
        "rejected GET /tasks/task_one: 404 task task_one not found",
        "rejected GET /tasks/task_two: 408 request headers not received within 0.5 s",
    ] == logs.rejections()
    logs.assert_quiet()


@pytest.mark.anyio
async def test_body_timeout_answers_408(logs: Recorder) -> None:
    """A body that stalls is answered 408 problem+json after `body_timeout`, then closed."""
    async with emulator(body_timeout=0.5) as url:
        loop = asyncio.get_running_loop()
        for route in ("/apps/run", "/tasks/task_nope"):
            method = "POST" if route == "/apps/run" else "GET"
            reader, writer = await asyncio.open_connection(*address(url))
            try:
                started = loop.time()
                head = f"{method} {route} HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n"
                writer.write(head.encode() + AUTH + b"\r\n" + b'{"app": "a')
                async with asyncio.timeout(5):
                    answer = await read_answer(reader)
                    assert b"" == await reader.read()
                closed = loop.time() - started
            finally:
                writer.close()
            if method == "POST":  # the handler was reading the body
                answer.problem(408, r"request body not received within 0\.5 s")
                assert 0.4 <= closed < 3
                logs.assert_one_rejection(408)
            else:  # answered without the body, then closed when it did not come
                answer.problem(404, "task task_nope not found")
                assert 0.4 <= closed < 3
                logs.assert_one_rejection(404)


@pytest.mark.anyio
async def test_open_stream_outlives_short_timeouts(logs: Recorder) -> None:
    """A task stream stays open well past the header, body and keep-alive timeouts."""
    limits = {"header_timeout": 0.2, "body_timeout": 0.2, "keepalive_timeout": 0.2}
    async with (
        emulator(heartbeat_interval=0.3, **limits) as url,
        aiohttp.ClientSession(url, headers={"Authorization": KEY}) as session,
    ):
        async with session.post(
            "/apps/run", json={"app": "a/b", "input": {"sim": {"hold": True}}}
        ) as resp:
            task_id = (await resp.json())["data"]["id"]
        heartbeats = 0
        async with session.get(
            f"/tasks/{task_id}/stream", headers={"Accept": "application/x-ndjson"}
        ) as stream:
            assert stream.status == 200
            async with asyncio.timeout(10):
                while heartbeats < 4:  # about 1.2 s: six times every timeout
                    line = await stream.content.readline()
                    assert line, "the stream was cut"
                    heartbeats += json.loads(line) == {"type": "heartbeat"}
                async with session.post(f"/tasks/{task_id}/cancel") as resp:
                    assert resp.status == 200
                rest = [json.loads(line) for line in (await stream.content.read()).splitlines()]
            assert "cancelled" == rest[-1]["status_text"]  # the stream ended with the task
    logs.assert_quiet()


async def _held_connection(
    url: str, first: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*address(url))
    writer.write(first)
    await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Wait (bounded) for the server to close: True if it did without answering."""
    try:
        async with asyncio.timeout(5):
            return b"" == await reader.read()
    except ConnectionResetError:
        return True


@pytest.mark.anyio
async def test_a_new_connection_closes_the_oldest_waiting_one(logs: Recorder) -> None:
    """At `max_connections`, a newcomer closes the oldest connection still waiting."""
    async with emulator(max_connections=4) as url:
        held = [await _held_connection(url, b"GET /tasks/") for _ in range(4)]
        try:
            async with (
                aiohttp.ClientSession(url, headers={"Authorization": KEY}) as session,
                asyncio.timeout(5),
                session.get("/tasks/task_nope") as resp,
            ):
                assert resp.status == 404
            assert await _closed_by_server(held[0][0])  # the oldest
            for reader, writer in held[1:]:  # the others are still there
                writer.write(b"task_nope HTTP/1.1\r\nHost: t\r\n" + AUTH + b"\r\n")
                async with asyncio.timeout(5):
                    (await read_answer(reader)).problem(404, "not found")
        finally:
            for _, writer in held:
                writer.close()
    assert not [r for r in logs.records if r.exc_info or r.levelno >= logging.WARNING]


@pytest.mark.anyio
async def test_busy_connections_are_not_closed_for_a_newcomer(logs: Recorder) -> None:
    """When every connection is an open stream, the newcomer is closed, not a stream."""
    async with emulator(max_connections=2, heartbeat_interval=0.2) as url:
        streams = []
        try:
            for _ in range(2):
                created = await exchange(url, request("POST", "/apps/run", HOLD))
                task_id = json.loads(created.body)["data"]["id"]
                stream = request("GET", f"/tasks/{task_id}/stream", extra=NDJSON)
                reader, writer = await _held_connection(url, stream)
                streams.append((reader, writer))
                async with asyncio.timeout(5):
                    assert b"HTTP/1.1 200 OK\r\n" == await reader.readline()
            newcomer, writer = await _held_connection(url, request("GET", "/tasks/task_nope"))
            try:
                assert await _closed_by_server(newcomer)
            finally:
                writer.close()
            for reader, _ in streams:  # both streams still run: a heartbeat comes after
                async with asyncio.timeout(5):
                    while b'"heartbeat"' not in await reader.readline():
                        pass
        finally:
            for _, writer in streams:
                writer.close()
    logs.assert_quiet()


@pytest.mark.anyio
async def test_a_stream_reader_that_never_reads_is_cut_after_write_timeout(
    logs: Recorder,
) -> None:
    """A stream whose client reads nothing is cut once a write waits `write_timeout`: its
    handler ends and its connection slot is freed, so the next client is served."""
    assert HttpLimits().write_timeout == 30
    stop = asyncio.Event()
    blob = "x" * 65536

    async def firehose(data: dict[str, Any], ctx: AppContext) -> Any:
        while not stop.is_set():
            ctx.partial({"blob": blob})
            await asyncio.sleep(0.001)
        return {}

    http = HttpLimits(max_connections=1, write_timeout=0.5)
    emu = Emulator(EmulatorOptions(**FAST, max_events_per_task=50, http=http))  # type: ignore[arg-type]
    emu.register_app("test/firehose", firehose)
    loop = asyncio.get_running_loop()
    async with serve(emu) as url:
        created = await exchange(url, request("POST", "/apps/run", b'{"app": "test/firehose"}'))
        task_id = json.loads(created.body)["data"]["id"]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address(url))
            await loop.sock_sendall(sock, request("GET", f"/tasks/{task_id}/stream", extra=NDJSON))
            assert await emu.async_wait_until(lambda e: e.open_streams == 1)
            started = loop.time()  # from here on nothing is read from `sock`
            assert await emu.async_wait_until(lambda e: e.open_streams == 0, timeout=10)
            assert loop.time() - started < 10
            (await exchange(url, request("GET", "/tasks/task_nope"))).problem(404, "not found")
        finally:
            stop.set()
            sock.close()
    assert not [r for r in logs.records if r.exc_info or r.levelno >= logging.ERROR]


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


READY = re.compile(r"inferencesh emulator listening on (http://127\.0\.0\.1:\d+)\n")


@pytest.mark.anyio
async def test_slowloris_cannot_starve_the_server() -> None:
    """Under `ulimit -n 256`, 300 dribbling connections leave room for real requests.

    The header timeout stays at its default (10 s), longer than the test: what keeps the
    server answering is closing the oldest waiting connection, and keeping connections under
    the open-file limit so accept() never fails.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferencesh", "serve", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_low_fd_limit,
    )  # fmt: skip
    slow: list[socket.socket] = []
    dribbler: asyncio.Task[None] | None = None
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            match = READY.fullmatch((await proc.stdout.readline()).decode())
        assert match
        url = match.group(1)
        host, port = address(url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(10):
            for _ in range(300):
                sock = socket.socket()
                sock.setblocking(False)
                slow.append(sock)
                await loop.sock_connect(sock, (host, port))
                sock.send(b"GET /tasks/")
        rounds: asyncio.Queue[None] = asyncio.Queue()

        async def dribble() -> None:
            while True:
                for sock in slow:
                    with contextlib.suppress(OSError):  # those closed to make room
                        sock.send(b"a")
                rounds.put_nowait(None)
                await asyncio.sleep(0.5)  # pacing the attack, not waiting for anything

        dribbler = asyncio.create_task(dribble())
        async with aiohttp.ClientSession(
            url, headers={"Authorization": KEY}, connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            for _ in range(5):  # one real request after each round of the attack
                await asyncio.wait_for(rounds.get(), 5)
                async with asyncio.timeout(5), session.get("/tasks/nope") as resp:
                    assert resp.status == 404
                    assert resp.content_type == PROBLEM
    finally:
        if dribbler is not None:
            dribbler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dribbler
        for sock in slow:
            sock.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                _, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    stderr = err.decode()
    assert 0 == proc.returncode, stderr
    assert "Traceback" not in stderr
    assert "out of system resource" not in stderr
    assert "" == stderr.strip()


def test_connection_cap_fits_the_open_file_limit() -> None:
    """Under a 256 open-file limit, connections plus two backlogs leave a reserve of 32."""
    code = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        from inferencesh.local._connections import connection_budget
        print(*connection_budget(4096), *connection_budget(10))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    cap, backlog, small, _ = map(int, done.stdout.split())
    assert cap + 2 * backlog + 32 <= 256
    assert cap >= 100
    assert small == 10


# -- settings -----------------------------------------------------------------------------------


def test_the_aiohttp_hooks_relied_on_are_there() -> None:
    """What inferencesh/local/_connections.py takes from aiohttp, named so an upgrade that
    moves it fails here first (the tests above exercise each of them)."""
    import inspect

    from aiohttp import web

    assert callable(web.AppRunner._make_server)  # swapped for the connection-keeping server
    assert "_messages" in web.RequestHandler.__slots__  # a framing error behind a request
    assert ["self", "request", "status", "exc", "message"] == list(
        inspect.signature(web.RequestHandler.handle_error).parameters
    )
    assert ["self", "request", "resp", "start_time"] == list(
        inspect.signature(web.RequestHandler.finish_response).parameters
    )
    server = inspect.signature(web.Server)
    assert "request_factory" in server.parameters


def test_http_limits_validate_like_the_options() -> None:
    """Bad limits raise TypeError/ValueError naming the field; the defaults are documented."""
    limits = HttpLimits()
    assert limits == EmulatorOptions().http
    assert (limits.max_body_bytes, limits.max_url_bytes, limits.max_header_bytes) == (
        1024 * 1024,
        8192,
        8192,
    )
    assert (limits.max_headers, limits.max_json_depth, limits.max_connections) == (64, 64, 4096)
    assert (limits.header_timeout, limits.body_timeout, limits.keepalive_timeout) == (10, 30, 75)
    for field in attrs.fields(HttpLimits):
        assert f"`{field.name}` (" in (HttpLimits.__doc__ or ""), field.name
    with pytest.raises(ValueError, match="max_body_bytes"):
        HttpLimits(max_body_bytes=0)
    with pytest.raises(TypeError, match="max_headers"):
        HttpLimits(max_headers=True)
    with pytest.raises(TypeError, match="max_json_depth"):
        HttpLimits(max_json_depth=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="header_timeout"):
        HttpLimits(header_timeout=float("inf"))
    with pytest.raises(ValueError, match="body_timeout"):
        HttpLimits(body_timeout=0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        limits.max_headers = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "args",
    [
        ["--max-body-bytes", "0"],
        ["--max-connections", "many"],
        ["--header-timeout", "0"],
        ["--keepalive-timeout", "nan"],
    ],
)
def test_cli_refuses_bad_limits(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A bad HTTP limit on the command line is a usage error (exit 2), not a traceback."""
    assert 2 == main(["serve", *args])
    err = capsys.readouterr().err
    assert args[0] in err
    assert "Traceback" not in err


@pytest.mark.anyio
async def test_cli_limits_reach_the_server() -> None:
    """`serve` with HTTP limit flags enforces them (a subprocess, over real sockets)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferencesh", "serve", "--port", "0",
        "--max-body-bytes", "2048", "--max-url-bytes", "100", "--max-header-bytes", "200",
        "--max-headers", "9", "--max-json-depth", "3", "--header-timeout", "0.5",
        "--body-timeout", "5", "--keepalive-timeout", "5", "--max-connections", "7",
        "--write-timeout", "5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            match = READY.fullmatch((await proc.stdout.readline()).decode())
        assert match
        url = match.group(1)
        deep = b'{"app": "a/b", "input": {"x": [[1]]}}'  # 4 levels
        (await exchange(url, request("POST", "/apps/run", deep))).problem(400, "deeper than 3")
        big = b'{"app": "a/b", "input": {"x": "' + b"y" * 2048 + b'"}}'
        (await exchange(url, request("POST", "/apps/run", big))).problem(413, "limit of 2048")
        long_url = request("GET", "/tasks/" + "t" * 101)
        (await exchange(url, long_url)).problem(414, "longer than 100 bytes")
        header = request("GET", "/tasks/x", extra=b"X-Pad: " + b"p" * 201 + b"\r\n")
        (await exchange(url, header)).problem(431, "longer than 200 bytes")
        headers = request("GET", "/tasks/x", extra=b"".join(b"X-%d: 1\r\n" % i for i in range(9)))
        (await exchange(url, headers)).problem(431, "more than 9 request headers")
        (await exchange(url, b"GET /tasks/x HTTP/1.1\r\n")).problem(408, r"within 0\.5 s")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            _, err = await proc.communicate()
    assert 0 == proc.returncode, err.decode()
    assert "" == err.decode()
