"""What a server may answer a REST call (and a stream's or a download's opening request) with:
envelopes that say `success: false`, redirects, integers past float range, broken HTTP, and
compressed bodies that are corrupt or expand without end. Each is a typed error from the SDK's
tree (or a sane value), in bounded time and memory, never carrying a secret."""

from __future__ import annotations

import contextlib
import gzip
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hostile import Exchange, HostileServer, error_of, serving

import inferencesh
from inferencesh import (
    APIStatusError,
    AsyncInference,
    EventTooLargeError,
    ProtocolError,
    RetryPolicy,
    StreamingOptions,
    StreamInterruptedError,
    TaskStatus,
)

pytestmark = pytest.mark.anyio

KEY = "sk-answers-SECRET-KEY"
ORG_SECRET = "org-SECRET-token"
NO_RETRY = RetryPolicy(max_retries=0)
TASK = {"id": "t1", "status": 7, "logs": []}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["orjson", "stdlib"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """orjson (installed here), then the standard library's decoder (used without it)."""
    if request.param == "stdlib":
        from inferencesh import _wire

        monkeypatch.setattr(_wire, "_decode", _wire._stdlib_decode)
        monkeypatch.setattr(_wire, "_ERRORS", (ValueError, RecursionError))
    return str(request.param)


@contextlib.asynccontextmanager
async def connected(
    handler: Callable[[Exchange], Awaitable[None]], **kw: Any
) -> AsyncIterator[tuple[HostileServer, AsyncInference]]:
    kw.setdefault("retry", NO_RETRY)
    kw.setdefault("timeout", 10)
    kw.setdefault("streaming_options", StreamingOptions(max_retries=0, total_timeout=10))
    async with (
        serving(handler) as server,
        inferencesh.async_inference(api_key=KEY, base_url=server.url, **kw) as client,
    ):
        yield server, client


def texts_of(error: BaseException) -> list[str]:
    """`str` and `repr` of `error`, of its attributes, and of every exception it came from."""
    found, stack, seen = [], [error], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found += [str(current), repr(current), repr(getattr(current, "__dict__", {}))]
        stack += [e for e in (current.__cause__, current.__context__) if e is not None]
    return found


def answering(status: int, head: list[str], body: bytes = b"") -> Callable[[Exchange], Any]:
    """A handler writing exactly this answer (and `Connection: close`)."""

    async def handler(exchange: Exchange) -> None:
        lines = [f"HTTP/1.1 {status} X", *head, "Connection: close"]
        exchange.writer.write(
            ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
        )
        await exchange.close()

    return handler


# Each call a user makes that reads a REST answer: the request it sends is the same whatever
# the answer, so the same hostile answer can be served to each.
CALLS: dict[str, Callable[[AsyncInference], Awaitable[Any]]] = {
    "get_task": lambda client: client.get_task("t1"),
    "run": lambda client: client.run({"app": "a/b", "input": {}}, wait=False),
    "cancel_task": lambda client: client.cancel_task("t1"),
    "get_session": lambda client: client.get_session("s1"),
    "upload_file": lambda client: client.upload_file(b"abc", filename="a.txt"),
}


# -- `success: false` ------------------------------------------------------------------------------


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("with_data", [False, True])
async def test_success_false_is_an_api_error(call: str, with_data: bool) -> None:
    """A 200 whose envelope says `success: false` (the v1 error envelope, with or without a
    `data` key) is an `APIStatusError` carrying the envelope's message and code, never a task
    made of the envelope's fields."""
    envelope: dict[str, Any] = {
        "success": False,
        "error": {"code": "not_found", "message": "task t1 not found"},
    }
    if with_data:
        envelope["data"] = None

    async def handler(exchange: Exchange) -> None:
        await exchange.respond(200, envelope)

    async with connected(handler) as (_, client):
        error = await error_of(lambda: CALLS[call](client))
    assert isinstance(error, APIStatusError), repr(error)
    assert error.status == 200
    assert error.message == "task t1 not found"
    assert error.code == "not_found"


async def test_success_false_without_a_message() -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.respond(200, {"success": False})

    async with connected(handler) as (_, client):
        error = await error_of(lambda: client.get_task("t1"))
    assert isinstance(error, APIStatusError), repr(error)
    assert "success: false" in str(error)


async def test_success_true_envelope_and_bare_dto_still_read() -> None:
    async def handler(exchange: Exchange) -> None:
        if exchange.request.path == "/tasks/t1":
            await exchange.respond(200, {"success": True, "data": TASK})
        else:
            await exchange.respond(200, {**TASK, "id": "t2"})  # a bare DTO

    async with connected(handler) as (_, client):
        assert (await client.get_task("t1")).status is TaskStatus.RUNNING
        assert (await client.get_task("t2")).status is TaskStatus.RUNNING


# -- redirects -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def redirected(status: int) -> AsyncIterator[tuple[HostileServer, AsyncInference]]:
    """A client of a server that redirects every request to another origin (`localhost` for
    `127.0.0.1`) that answers like the API; yields the other server and the client."""

    async def other(exchange: Exchange) -> None:
        await exchange.respond(200, {"success": True, "data": TASK})

    async with serving(other) as elsewhere:
        target = elsewhere.url.replace("127.0.0.1", "localhost")

        async def redirect(exchange: Exchange) -> None:
            location = target + exchange.request.path
            await exchange.respond(status, b"", headers=[("Location", location)])

        async with connected(redirect, default_headers={"X-Org-Token": ORG_SECRET}) as (
            _,
            client,
        ):
            yield elsewhere, client


REDIRECTED_CALLS: dict[str, Callable[[AsyncInference], Awaitable[Any]]] = {
    "get_task": lambda client: client.get_task("t1"),
    "run": lambda client: client.run({"app": "a/b", "input": {"prompt": "PRIVATE"}}, wait=False),
    "cancel_task": lambda client: client.cancel_task("t1"),
    "stream_task": lambda client: drain(client.stream_task("t1")),
}


async def drain(stream: Any) -> list[Any]:
    return [update async for update in stream]


@pytest.mark.parametrize("call", sorted(REDIRECTED_CALLS))
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_api_redirects_are_not_followed(call: str, status: int) -> None:
    """An API request is never sent on to the origin a redirect names: aiohttp would drop
    `Authorization` but send `default_headers` and a POST's body (the app's input) there, and
    a 301-303 would turn `POST /apps/run` into a GET whose answer passes for a new task."""
    async with redirected(status) as (elsewhere, client):
        error = await error_of(lambda: REDIRECTED_CALLS[call](client))
    while not isinstance(error, ProtocolError) and error.__cause__ is not None:
        error = error.__cause__  # a stream's RetriesExhaustedError chains it
    assert isinstance(error, ProtocolError), repr(error)
    assert f"{status}, a redirect to http://localhost:" in str(error)
    assert elsewhere.requests == []
    for text in texts_of(error):
        assert KEY not in text, text
        assert ORG_SECRET not in text, text


async def test_a_redirect_location_is_shown_without_its_query_values() -> None:
    location = "/tasks/t1?token=SIGSECRET&x=\udcff"
    handler = answering(302, [f"Location: {location}", "Content-Length: 0"])
    async with connected(handler) as (_, client):
        error = await error_of(lambda: client.get_task("t1"))
    assert isinstance(error, ProtocolError), repr(error)
    assert "SIGSECRET" not in str(error)
    str(error).encode("ascii")  # printable anywhere


# -- integers past float range -------------------------------------------------------------------


HUGE = b"1" + b"0" * 400


@pytest.mark.parametrize(
    ("call", "body"),
    [
        ("get_session", b'{"id": "s1", "idle_timeout": %s}' % HUGE),
        ("get_session", b'{"id": "s1", "call_count": -%s}' % HUGE),
        ("get_task", b'{"id": "t1", "status": %s}' % HUGE),
        ("get_task", b'{"id": "t1", "status": 10, "output": %s}' % (b"9" * 5000)),
    ],
)
async def test_integers_past_float_range_are_refused_by_either_decoder(
    decoder: str, call: str, body: bytes
) -> None:
    """The standard library's decoder (used without orjson) reads integers as orjson does: a
    64-bit one as an int, a larger one as a float, one past float range refused. So no call
    later fails with `float()`'s OverflowError (a session's `idle_timeout`)."""

    async def handler(exchange: Exchange) -> None:
        await exchange.respond(200, b'{"success": true, "data": %s}' % body)

    async with connected(handler) as (_, client):
        error = await error_of(lambda: CALLS[call](client))
    assert isinstance(error, ProtocolError), repr(error)


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        (b"18446744073709551615", 18446744073709551615),
        (b"-9223372036854775808", -9223372036854775808),
        (b"18446744073709551616", 1.8446744073709552e19),
        (b"1" + b"0" * 30, 1e30),
    ],
)
async def test_either_decoder_gives_the_same_numbers(
    decoder: str, literal: bytes, expected: float
) -> None:
    async def handler(exchange: Exchange) -> None:
        await exchange.respond(200, b'{"id": "t1", "status": 10, "output": %s}' % literal)

    async with connected(handler) as (_, client):
        output = (await client.get_task("t1")).output
    assert output == expected
    assert type(output) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b'"\\ud800"', None),  # a lone high surrogate: refused
        (b'["ok", {"k": "x\\udc00y"}]', None),  # a lone low one, deeper: refused
        (b'"\\ud83d\\ude00"', "\U0001f600"),  # a pair: one character
        (b'"\\\\ud800"', "\\ud800"),  # an escaped backslash, then text
    ],
)
async def test_either_decoder_refuses_lone_surrogates(
    decoder: str, text: bytes, expected: str | None
) -> None:
    """orjson refuses a lone surrogate escape; the standard library's decoder took it, and
    the string could then not be written in any encoding (UnicodeEncodeError later)."""

    async def handler(exchange: Exchange) -> None:
        await exchange.respond(200, b'{"id": "t1", "status": 10, "output": %s}' % text)

    async with connected(handler) as (_, client):
        if expected is None:
            assert isinstance(await error_of(lambda: client.get_task("t1")), ProtocolError)
        else:
            assert expected in str((await client.get_task("t1")).output)


# -- broken HTTP and compression (already typed: kept so) -----------------------------------------


BODY = b'{"success": true, "data": {"id": "t1", "status": 7}}'


def gzip_bomb(expanded: int) -> bytes:
    """Zeros, gzip-compressed: about a thousandth of `expanded`."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    pieces = [compressor.compress(block) for _ in range(expanded >> 20)]
    return b"".join([*pieces, compressor.flush()])


@pytest.mark.parametrize(
    ("head", "body", "error"),
    [
        (["Content-Encoding: gzip", "Content-Length: 20"], b"\x1f\x8b" + b"x" * 18, None),
        (["Content-Encoding: deflate", "Content-Length: 20"], b"y" * 20, None),
        (["Content-Encoding: br", "Content-Length: 20"], b"y" * 20, None),
        (["Content-Encoding: gzip"], gzip.compress(BODY)[:15], None),
        (["Content-Length: 100"], BODY, StreamInterruptedError),
        (["Content-Length: 3"], BODY, ProtocolError),
        (["Content-Length: -3"], BODY, ProtocolError),
        (["Transfer-Encoding: chunked"], b"zz\r\nabc\r\n0\r\n\r\n", ProtocolError),
        (["X-Big: " + "a" * 100_000, f"Content-Length: {len(BODY)}"], BODY, ProtocolError),
        (["Content-Type: text/html", "Content-Length: 6"], b"<html>", ProtocolError),
    ],
)
async def test_broken_http_answers_are_typed(
    head: list[str], body: bytes, error: type[Exception] | None
) -> None:
    async with connected(answering(200, head, body)) as (_, client):
        found = await error_of(lambda: client.get_task("t1"))
    if error is not None:
        assert isinstance(found, error), repr(found)
    for text in texts_of(found):
        assert KEY not in text, text


@pytest.mark.parametrize("status", [200, 500])
async def test_a_gzip_bomb_is_read_within_the_body_limit(status: int) -> None:
    """A megabyte of gzip that expands to a gibibyte: refused once past `max_event_bytes`
    (an error answer: read up to its small cap), without expanding the rest."""
    bomb = gzip_bomb(1 << 30)
    head = ["Content-Encoding: gzip", f"Content-Length: {len(bomb)}"]
    options = StreamingOptions(max_retries=0, max_event_bytes=1 << 20)
    async with connected(answering(status, head, bomb), streaming_options=options) as (_, client):
        started = time.monotonic()
        found = await error_of(lambda: client.get_task("t1"))
    assert time.monotonic() - started < 5
    assert isinstance(found, EventTooLargeError if status == 200 else APIStatusError), repr(found)
