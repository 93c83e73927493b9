"""Servers that never answer, refuse with Retry-After, nest JSON too deep, send huge events or
garbage, and streams that never end: every failure is a typed error from the SDK's tree, in
bounded time, and none of them carries the API key."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio
import pytest
from hostile import (
    Exchange,
    Framing,
    HostileServer,
    Script,
    content_type,
    encode,
    error_of,
    heartbeat,
    refused_url,
    serving,
)

import inferencesh
from inferencesh import (
    AsyncInference,
    EventTooLargeError,
    HeadersTimeoutError,
    InferenceshError,
    ProtocolError,
    RateLimitError,
    RequestTimeoutError,
    RetriesExhaustedError,
    RetryPolicy,
    ServerError,
    StreamingOptions,
    TaskTimeoutError,
    TaskUpdate,
    UsageError,
)

pytestmark = pytest.mark.anyio

TASK = {"id": "t1", "status": 7, "logs": []}
CREATED = {"success": True, "data": {"id": "t1", "status": 1, "logs": []}}
NO_RETRY = RetryPolicy(max_retries=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def options(**fields: Any) -> StreamingOptions:
    return StreamingOptions(**{"retry_delay": 0, "retry_jitter": 0, **fields})


async def blocking(fn: Callable[[], Any]) -> Any:
    """Run blocking client code in a worker thread, so this loop keeps serving."""
    return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)


async def timed_error(call: Callable[[], Awaitable[Any]]) -> tuple[BaseException, float]:
    """The exception `call()` raises (it must raise) and how long it took."""
    started = time.monotonic()
    error = await error_of(call)
    return error, time.monotonic() - started


@contextlib.asynccontextmanager
async def connected(
    handler: Callable[[Exchange], Awaitable[None]], *, base_url: str | None = None, **kw: Any
) -> AsyncIterator[tuple[HostileServer, AsyncInference]]:
    """A hostile server and an async client of it (or of `base_url`)."""
    kw.setdefault("api_key", "k")
    async with (
        serving(handler) as server,
        inferencesh.async_inference(base_url=base_url or server.url, **kw) as client,
    ):
        yield server, client


async def drain(stream: Any) -> list[TaskUpdate]:
    return [update async for update in stream]


# -- 3. a server that never sends response headers -------------------------------------------------


async def silent_stream(exchange: Exchange) -> None:
    """POST /apps/run and GET /tasks/t1 answer; the stream takes the request and says nothing."""
    if exchange.request.path == "/apps/run":
        await exchange.respond(200, CREATED)
    elif exchange.request.path == "/tasks/t1":
        await exchange.respond(200, {"success": True, "data": TASK})
    else:
        await exchange.hang()


def check_headers_timeout(
    error: BaseException, elapsed: float, retries: int, requests: int
) -> None:
    """What a stream raises after `retries + 1` connections that got no headers within 0.3 s."""
    # Pinned behaviour: even with max_retries=0 the stream reports RetriesExhaustedError (zero
    # reconnects), chaining the HeadersTimeoutError of the last attempt.
    assert isinstance(error, RetriesExhaustedError), repr(error)
    assert retries == error.attempts
    assert isinstance(error.__cause__, HeadersTimeoutError), repr(error.__cause__)
    assert retries + 1 == requests
    assert 0.3 * (retries + 1) - 0.05 <= elapsed < 0.3 * (retries + 1) + 1.5


@pytest.mark.parametrize("retries", [0, 1])
async def test_no_headers_stream_task(retries: int) -> None:
    async with connected(silent_stream) as (server, client):
        opts = options(headers_timeout=0.3, max_retries=retries)
        error, elapsed = await timed_error(lambda: drain(client.stream_task("t1", opts)))
    check_headers_timeout(error, elapsed, retries, len(server.requests))


@pytest.mark.parametrize("retries", [0, 1])
async def test_no_headers_run_stream(retries: int) -> None:
    """run(stream=True): the POST answers, then its stream hangs; the created task came first."""
    got: list[TaskUpdate] = []

    async def run() -> None:
        opts = options(headers_timeout=0.3, max_retries=retries)
        async for update in client.run({"app": "a/b", "input": {}}, stream=True, options=opts):
            got.append(update)

    async with connected(silent_stream) as (server, client):
        error, elapsed = await timed_error(run)
    assert ["/apps/run"] + ["/tasks/t1/stream"] * (retries + 1) == server.paths()
    check_headers_timeout(error, elapsed, retries, len(server.requests) - 1)
    assert ["received"] == [u.status for u in got]


async def test_no_headers_wait_for_completion() -> None:
    opts = options(headers_timeout=0.3, max_retries=0)
    async with connected(silent_stream, streaming_options=opts) as (server, client):
        error, elapsed = await timed_error(lambda: client.wait_for_completion("t1"))
    check_headers_timeout(error, elapsed, 0, len(server.requests))


async def test_no_headers_blocking_stream() -> None:
    opts = options(headers_timeout=0.3, max_retries=1)
    async with serving(silent_stream) as server:

        def consume() -> None:
            with inferencesh.inference(api_key="k", base_url=server.url) as client:
                list(client.stream_task("t1", opts))

        error, elapsed = await timed_error(lambda: blocking(consume))
    check_headers_timeout(error, elapsed, 1, len(server.requests))


async def test_no_answer_to_rest_call_is_request_timeout() -> None:
    """get_task against a server that never answers: RequestTimeoutError within `timeout=`."""

    async def hang(exchange: Exchange) -> None:
        await exchange.hang()

    async with connected(hang, timeout=0.5) as (server, client):
        error, elapsed = await timed_error(lambda: client.get_task("t1"))

        def sync_call() -> None:
            with inferencesh.inference(api_key="k", base_url=server.url, timeout=0.5) as client:
                client.get_task("t1")

        sync_error, sync_elapsed = await timed_error(lambda: blocking(sync_call))
    for found, seconds in ((error, elapsed), (sync_error, sync_elapsed)):
        assert isinstance(found, RequestTimeoutError), repr(found)
        assert 0.45 <= seconds < 2.0


# -- 4. Retry-After ------------------------------------------------------------------------------

FAR_DATE = "Fri, 31 Dec 9999 23:59:59 GMT"


@pytest.mark.parametrize(("status", "error_class"), [(429, RateLimitError), (503, ServerError)])
@pytest.mark.parametrize("retry_after", ["inf", "86400", FAR_DATE])
async def test_retry_after_too_long_is_not_slept_on(
    status: int, error_class: type[Exception], retry_after: str
) -> None:
    """A Retry-After past max_retry_after raises the server's error at once, carrying it; an
    invalid one ("inf") is ignored and the normal backoff applies."""

    async def refuse(exchange: Exchange) -> None:
        body = {"detail": "slow down"}
        await exchange.respond(status, body, headers=[("Retry-After", retry_after)])

    async with connected(refuse) as (server, client):
        opts = options(max_retries=1)
        error, elapsed = await timed_error(lambda: drain(client.stream_task("t1", opts)))
    assert elapsed < 1.0
    if retry_after == "inf":
        assert isinstance(error, RetriesExhaustedError), repr(error)
        assert isinstance(error.__cause__, error_class), repr(error.__cause__)
        assert error.__cause__.retry_after is None
        assert 2 == len(server.requests)
        return
    assert isinstance(error, error_class), repr(error)
    assert status == error.status
    assert "slow down" == error.message
    if retry_after == "86400":
        assert 86400.0 == error.retry_after
    else:
        assert error.retry_after > 7000 * 365 * 86400
    assert 1 == len(server.requests)


async def test_rest_retry_after_too_long_raises_at_once() -> None:
    async def refuse(exchange: Exchange) -> None:
        await exchange.respond(429, {"detail": "later"}, headers=[("Retry-After", "86400")])

    async with connected(refuse) as (server, client):
        error, elapsed = await timed_error(lambda: client.get_task("t1"))
    assert isinstance(error, RateLimitError), repr(error)
    assert 86400.0 == error.retry_after
    assert elapsed < 1.0
    assert 1 == len(server.requests)


async def test_retry_after_one_second_is_honoured() -> None:
    """503 with Retry-After: 1, then the stream: the reconnect waits at least a second."""
    script = Script.make(2)

    async def once_busy(exchange: Exchange) -> None:
        if len(server.requests) == 1:
            await exchange.respond(503, {"detail": "busy"}, headers=[("Retry-After", "1")])
            return
        await exchange.start(content_type("sse"))
        for event in range(1, script.last + 1):
            await exchange.send(encode("sse", script.payload(event), str(event)))
        await exchange.finish()

    async with connected(once_busy) as (server, client):
        with anyio.fail_after(10):
            updates = await drain(client.stream_task("t1", options(max_retries=2)))
    first, second = server.requests
    assert second.at - first.at >= 1.0
    assert script.all_logs == [line for u in updates for line in u.logs]
    assert {"text": "done"} == updates[-1].output


# -- 6. API keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("client_kind", ["async", "blocking"])
async def test_api_key_is_stripped_and_sent(client_kind: str) -> None:
    async def task(exchange: Exchange) -> None:
        await exchange.respond(200, {"success": True, "data": TASK})

    async with serving(task) as server:
        if client_kind == "async":
            async with inferencesh.async_inference(api_key=" key \n", base_url=server.url) as c:
                update = await c.get_task("t1")
        else:

            def call() -> TaskUpdate:
                with inferencesh.inference(api_key=" key \n", base_url=server.url) as c:
                    return c.get_task("t1")

            update = await blocking(call)
    assert "running" == update.status
    [request] = server.requests
    assert "Bearer key" == request.headers["authorization"]


@pytest.mark.parametrize("factory", [inferencesh.async_inference, inferencesh.inference])
@pytest.mark.parametrize("key", ["ke\x00y", "k\ney", "kéy", "sekrit\r\n-123"])
def test_unsendable_api_key_is_a_usage_error(factory: Callable[..., Any], key: str) -> None:
    with pytest.raises(UsageError) as info:
        factory(api_key=key, base_url="http://127.0.0.1:9")
    for text in (str(info.value), repr(info.value), repr(info.value.args)):
        assert key not in text
        assert key.strip() not in text
        assert repr(key) not in text


# -- 7. deep JSON, huge numbers, non-finite literals ----------------------------------------------


@pytest.fixture(params=["orjson", "stdlib"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with orjson (installed here) and with the standard library's decoder, the fallback
    `inferencesh._wire` uses when orjson is absent (swapped in as its import does)."""
    if request.param == "stdlib":
        from inferencesh import _wire

        monkeypatch.setattr(_wire, "_decode", _wire._stdlib_decode)
        monkeypatch.setattr(_wire, "_ERRORS", (ValueError, RecursionError))
    return str(request.param)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_deep_rest_answer_is_a_protocol_error(decoder: str) -> None:
    body = '{"success": true, "data": {"id": "t1", "status": 7, "output": '
    body += nested(100_000) + "}}"

    async def deep(exchange: Exchange) -> None:
        await exchange.respond(200, body)

    async with connected(deep, retry=NO_RETRY) as (_, client):
        error, _ = await timed_error(lambda: client.get_task("t1"))
    assert isinstance(error, ProtocolError), repr(error)


def stream_of(framing: Framing, *raw_events: bytes) -> Callable[[Exchange], Awaitable[None]]:
    """A stream handler: a running snapshot, then `raw_events` (JSON texts), then it hangs."""

    async def handler(exchange: Exchange) -> None:
        await exchange.start(content_type(framing))
        await exchange.send(encode(framing, TASK, "1"))
        for number, raw in enumerate(raw_events, 2):
            if framing == "sse":
                await exchange.send(b"id: %d\ndata: %s\n\n" % (number, raw))
            else:
                await exchange.send(raw + b"\n")
        await exchange.hang()

    return handler


async def stream_error(handler: Callable[[Exchange], Awaitable[None]]) -> BaseException:
    async with connected(handler) as (_server, client):
        error, _ = await timed_error(
            lambda: drain(client.stream_task("t1", options(max_retries=0)))
        )
    return error


@pytest.mark.parametrize("framing", ["sse", "ndjson"])
@pytest.mark.parametrize("depth", [600, 5000])
async def test_deep_delta_event_is_a_protocol_error(
    decoder: str, framing: Framing, depth: int
) -> None:
    event = '{"event": "delta", "data": {"delta": {"response": "x", "usage": %s}}}'
    error = await stream_error(stream_of(framing, (event % nested(depth)).encode()))
    assert isinstance(error, ProtocolError), repr(error)


HUGE = "1" + "0" * 399
# orjson reads a 400-digit integer as infinity and refuses it (a ProtocolError); the standard
# library's decoder (the `decoder` fixture's "stdlib") gives a Python int.


@pytest.mark.parametrize("framing", ["sse", "ndjson"])
@pytest.mark.parametrize(
    "progress",
    [
        f'{{"current": 1, "total": {HUGE}}}',
        f'{{"current": {HUGE}, "total": 3}}',
        f'{{"current": {HUGE}, "total": {HUGE}}}',
        f'{{"current": 0.5, "total": {HUGE}}}',
        f'{{"current": {HUGE}, "total": 2.5}}',
    ],
)
async def test_huge_integer_progress(decoder: str, framing: Framing, progress: str) -> None:
    """A 400-digit integer in progress: a usable progress, or a ProtocolError; no OverflowError."""
    raw = ('{"id": "t1", "status": 10, "logs": [], "progress": ' + progress + "}").encode()

    async def huge(exchange: Exchange) -> None:
        await exchange.start(content_type(framing))
        await exchange.send(b"id: 1\ndata: %s\n\n" % raw if framing == "sse" else raw + b"\n")
        await exchange.hang()

    async with connected(huge) as (_server, client):
        try:
            with anyio.fail_after(10):
                updates = await drain(client.stream_task("t1", options(max_retries=0)))
        except ProtocolError:
            return
        for update in updates:
            if update.progress is not None:
                fraction = update.progress.fraction
                assert fraction is None or 0.0 <= fraction <= 1.0


async def test_huge_integer_progress_in_rest_answer(decoder: str) -> None:
    raw = '{"success": true, "data": {"id": "t1", "status": 7, "progress": {"current": 1, '
    raw += f'"total": {HUGE}}}}}}}'

    async def huge(exchange: Exchange) -> None:
        await exchange.respond(200, raw)

    async with connected(huge) as (_server, client):
        try:
            with anyio.fail_after(10):
                update = await client.get_task("t1")
        except ProtocolError:
            return
    assert update.progress is not None
    fraction = update.progress.fraction
    assert fraction is None or 0.0 <= fraction <= 1.0


@pytest.mark.parametrize("framing", ["sse", "ndjson"])
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("where", ["progress", "output"])
async def test_non_finite_numbers_are_a_protocol_error(
    decoder: str, framing: Framing, literal: str, where: str
) -> None:
    if where == "progress":
        raw = f'{{"id": "t1", "status": 7, "progress": {{"current": {literal}, "total": 2}}}}'
    else:
        raw = f'{{"id": "t1", "status": 7, "output": {{"seed": {literal}}}}}'
    error = await stream_error(stream_of(framing, raw.encode()))
    assert isinstance(error, ProtocolError), repr(error)


# -- 8. big events ---------------------------------------------------------------------------------

MiB = 1024 * 1024


@pytest.mark.parametrize("framing", ["sse", "ndjson"])
async def test_sixteen_mib_event_with_default_options(framing: Framing) -> None:
    blob = base64.b64encode(os.urandom(12 * MiB)).decode()
    assert 16 * MiB == len(blob)
    digest = hashlib.sha256(blob.encode()).hexdigest()
    big = {"data": {"id": "t1", "status": 7, "output": {"image": blob}}, "fields": ["output"]}
    done = {"id": "t1", "status": 10, "logs": [], "output": {"text": "done"}}

    async def send_big(exchange: Exchange) -> None:
        await exchange.start(content_type(framing))
        await exchange.send(encode(framing, TASK, "1"))
        await exchange.send(encode(framing, big, "2"))
        await exchange.send(encode(framing, done, "3"))
        await exchange.finish()

    async with connected(send_big) as (server, client):
        with anyio.fail_after(30):
            updates = await drain(client.stream_task("t1"))
    [image] = [u.partial_output["image"] for u in updates if u.partial_output is not None]
    assert 16 * MiB == len(image)
    assert digest == hashlib.sha256(image.encode()).hexdigest()
    assert {"text": "done"} == updates[-1].output
    assert 1 == len(server.requests)


@pytest.mark.parametrize("framing", ["sse", "ndjson"])
async def test_event_over_32_mib_is_too_large(framing: Framing) -> None:
    piece = b"A" * MiB

    async def send_huge(exchange: Exchange) -> None:
        await exchange.start(content_type(framing))
        await exchange.send(encode(framing, TASK, "1"))
        prefix = b'{"data": {"id": "t1", "status": 7, "output": {"image": "'
        await exchange.send(b"id: 2\ndata: " + prefix if framing == "sse" else prefix)
        for _ in range(33):
            await exchange.send(piece)
        await exchange.send(b'"}}, "fields": ["output"]}\n\n')
        await exchange.hang()

    async with connected(send_huge) as (server, client):
        error, _ = await timed_error(lambda: drain(client.stream_task("t1")))
    assert isinstance(error, EventTooLargeError), repr(error)
    assert 1 == len(server.requests)


# -- 9. secrets ------------------------------------------------------------------------------------

SECRET = "sekrit-123"
_OPAQUE = (
    types.TracebackType,
    types.FrameType,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.CodeType,
    type,
)


def reachable(root: object, depth: int = 8) -> Iterator[object]:
    """`root` and what hangs off it: exception chains and args, instance attributes and
    slots, the items of containers, and the properties aiohttp errors keep their request in."""
    seen: set[int] = set()
    stack: list[tuple[object, int]] = [(root, 0)]
    while stack:
        obj, level = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if level >= depth or isinstance(obj, (*_OPAQUE, str, bytes, int, float)):
            continue
        children: list[object] = []
        if isinstance(obj, BaseException):
            children += [obj.__cause__, obj.__context__, *obj.args]
            children += getattr(obj, "__notes__", [])
        if isinstance(obj, types.MethodType):
            children.append(obj.__self__)
        if isinstance(obj, Mapping):
            for key in list(obj.keys()):
                children.append(key)
                children += obj.getall(key) if hasattr(obj, "getall") else [obj[key]]
        elif isinstance(obj, list | tuple | set | frozenset):
            children += list(obj)
        if hasattr(obj, "__dict__"):
            children += list(vars(obj).values())
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for name in [slots] if isinstance(slots, str) else slots:
                children.append(getattr(obj, name, None))
        for name in ("request_info", "headers", "history", "os_error", "real_url", "url"):
            try:
                children.append(getattr(obj, name, None))
            except Exception:
                continue
        stack += [(child, level + 1) for child in children]


def assert_no_secret(error: BaseException, client: object) -> None:
    assert isinstance(error, InferenceshError), repr(error)
    assert SECRET not in str(error)
    assert SECRET not in repr(client)
    count = 0
    for obj in reachable(error):
        count += 1
        assert SECRET not in repr(obj), f"the key is in {type(obj).__name__}: {obj!r}"[:300]
        if isinstance(obj, BaseException):
            assert SECRET not in str(obj)
    assert count > 3  # the walk did reach the chained aiohttp error


async def garbage(exchange: Exchange) -> None:
    exchange.writer.write(b"HELLO WORLD\r\n\r\n")
    await exchange.close()


async def cut_rest(exchange: Exchange) -> None:
    exchange.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    exchange.writer.write(b'Content-Length: 500\r\nConnection: close\r\n\r\n{"success": tr')
    await exchange.close()


async def cut_stream(exchange: Exchange) -> None:
    await exchange.start(content_type("sse"))
    await exchange.send(encode("sse", TASK, "1"))
    await exchange.cut()


@pytest.mark.parametrize(
    "server_kind",
    [
        "garbage",
        "refused",
        "cut",
    ],
)
@pytest.mark.parametrize("call", ["get_task", "stream_task"])
async def test_errors_never_carry_the_api_key(server_kind: str, call: str) -> None:
    handler = {"garbage": garbage, "refused": garbage, "cut": cut_rest}[server_kind]
    if call == "stream_task" and server_kind == "cut":
        handler = cut_stream
    url = refused_url() if server_kind == "refused" else None
    async with connected(handler, base_url=url, api_key=SECRET, retry=NO_RETRY) as (
        server,
        client,
    ):
        if call == "get_task":
            error, _ = await timed_error(lambda: client.get_task("t1"))
        else:
            opts = options(max_retries=0)
            error, _ = await timed_error(lambda: drain(client.stream_task("t1", opts)))
    if server_kind != "refused":
        assert f"Bearer {SECRET}" == server.requests[0].headers["authorization"]
    cause = error.__cause__ if isinstance(error, RetriesExhaustedError) else error
    expected = {
        "garbage": (ProtocolError, inferencesh.TransportError),
        "refused": inferencesh.ConnectError,
        "cut": inferencesh.StreamInterruptedError,
    }[server_kind]
    assert isinstance(cause, expected), repr(error)
    assert cause is not None
    assert cause.__cause__ is not None  # the aiohttp error is chained
    assert_no_secret(error, client)


async def test_blocking_client_errors_never_carry_the_api_key() -> None:
    async with serving(garbage) as server:

        def call() -> None:
            with inferencesh.inference(api_key=SECRET, base_url=server.url, retry=NO_RETRY) as c:
                assert SECRET not in repr(c)
                c.get_task("t1")

        error, _ = await timed_error(lambda: blocking(call))
    assert_no_secret(error, None)


# -- 11. total deadline ----------------------------------------------------------------------------


def forever(framing: Framing, events: bool) -> Callable[[Exchange], Awaitable[None]]:
    """A stream that never ends: heartbeats only, or a new running snapshot every 20 ms."""

    async def handler(exchange: Exchange) -> None:
        await exchange.start(content_type(framing))
        step = 0
        while True:
            step += 1
            if events:
                snapshot = {**TASK, "progress": {"current": step, "total": 10**6}}
                await exchange.send(encode(framing, snapshot, str(step)))
            else:
                await exchange.send(heartbeat(framing))
            await asyncio.sleep(0.02)

    return handler


@pytest.mark.parametrize(("framing", "events"), [("sse", False), ("ndjson", True)])
async def test_total_timeout(framing: Framing, events: bool) -> None:
    async with connected(forever(framing, events)) as (_server, client):
        opts = options(total_timeout=0.5)
        error, elapsed = await timed_error(lambda: drain(client.stream_task("t1", opts)))
    assert isinstance(error, TaskTimeoutError), repr(error)
    assert 0.4 <= elapsed < 2.0


async def test_wait_for_completion_timeout() -> None:
    async with connected(forever("sse", True)) as (server, client):
        error, elapsed = await timed_error(lambda: client.wait_for_completion("t1", 0.5))

        def call() -> None:
            with inferencesh.inference(api_key="k", base_url=server.url) as c:
                c.wait_for_completion("t1", timeout=0.5)

        sync_error, sync_elapsed = await timed_error(lambda: blocking(call))
    for found, seconds in ((error, elapsed), (sync_error, sync_elapsed)):
        assert isinstance(found, TaskTimeoutError), repr(found)
        assert 0.4 <= seconds < 2.0


@pytest.mark.parametrize("digits", [400, 5000])
async def test_a_huge_sse_retry_hint_is_just_a_long_wait(digits: int) -> None:
    """`retry: 1000...0` (hundreds of digits) sets a long base, which the policy caps: the
    stream reconnects after `max_retry_delay`, with no OverflowError."""
    connections = 0

    async def long_hint(exchange: Exchange) -> None:
        nonlocal connections
        connections += 1
        await exchange.start(content_type("sse"))
        if connections == 1:
            await exchange.send(b"retry: 1" + b"0" * digits + b"\n\n" + encode("sse", TASK, "1"))
            await exchange.finish()  # ends before the task: a reconnect is due
        else:
            done = {"id": "t1", "status": 10, "logs": [], "output": {"ok": True}}
            await exchange.send(encode("sse", done, "2"))
            await exchange.finish()

    async with connected(long_hint) as (_server, client):
        with anyio.fail_after(10):
            updates = await drain(client.stream_task("t1", options(max_retry_delay=0.05)))
    assert 2 == connections
    assert {"ok": True} == updates[-1].output
