"""Seeing what the SDK does: a stream's connection state (`StreamingOptions.on_connection`,
`stream.connection`), the DEBUG line per HTTP request on `inferencesh.http` (never the key),
and `INFERENCESH_LOG`. Real servers over loopback: the emulator, whose fault injector cuts
connections, and a closed port or a raw-socket server that refuses."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from hostile import Exchange, Script, encode, refused_url, serving
from support import FAST, FLOW, fast_emulator

from inferencesh import (
    ConnectError,
    ConnectionEvent,
    EventGapError,
    File,
    NotFoundError,
    ProtocolError,
    RetriesExhaustedError,
    RetryPolicy,
    ServerError,
    StreamingOptions,
    StreamInterruptedError,
    TaskTimeoutError,
    UsageError,
    async_inference,
    inference,
)
from inferencesh._transport import masked
from inferencesh.local import Emulator, serve_in_thread

pytestmark = pytest.mark.anyio

KEY = "sk-observability-Zq7X-never-logged"
CONFIG = {"app": "infsh/flux-schnell", "input": {"prompt": "A stormy sea"}}
# Long enough (5 steps of 40 ms) that two cuts and their reconnects happen while it runs.
SLOW_STEPS = {"sim_step_delay": 0.04}
BOUNDED = attrs.evolve(FAST, total_timeout=30)


@pytest.fixture
def cut_twice() -> Iterator[tuple[str, StreamingOptions, list[ConnectionEvent]]]:
    """An emulator that cuts each stream connection after 2 events until the stream has
    reconnected twice (the callback turns the fault off before the third connection opens),
    and options that record every connection event."""
    emu: Emulator = fast_emulator(**SLOW_STEPS)
    emu.faults.drop_after = 2
    events: list[ConnectionEvent] = []

    def record(event: ConnectionEvent) -> None:
        events.append(event)
        if sum(e.state == "reconnecting" for e in events) == 2:
            emu.faults.drop_after = None

    with serve_in_thread(emu) as url:
        yield url, attrs.evolve(BOUNDED, on_connection=record), events


def check_cut_twice(
    events: list[ConnectionEvent], latest: ConnectionEvent | None, task: str
) -> None:
    states = [(e.state, e.attempt) for e in events]
    cut = [("reconnecting", 1), ("connected", 1)]
    assert [("connected", 0), *cut, *cut] == states
    assert {f"task {task}"} == {e.resource for e in events}
    for event in events:
        if event.state == "reconnecting":
            # The emulator's SSE `retry: 10` is the base; FAST adds no jitter.
            assert event.delay == pytest.approx(0.01)
            assert isinstance(event.cause, StreamInterruptedError), repr(event.cause)
        else:
            assert (None, None) == (event.delay, event.cause)
    assert latest is events[-1]


async def test_async_stream_reports_each_reconnect(cut_twice: Any) -> None:
    url, options, events = cut_twice
    async with async_inference(api_key=KEY, base_url=url) as client:
        stream = client.run(CONFIG, stream=True, options=options)
        assert stream.connection is None  # not connected yet
        statuses = [update.status.value async for update in stream]
        assert FLOW == list(dict.fromkeys(statuses))  # in order, across the cuts
        assert stream.task_id is not None
        check_cut_twice(events, stream.connection, stream.task_id)


def test_blocking_stream_reports_each_reconnect(cut_twice: Any) -> None:
    url, options, events = cut_twice
    with inference(api_key=KEY, base_url=url) as client:
        with client.run(CONFIG, stream=True, options=options) as stream:
            updates = list(stream)
        assert FLOW == list(dict.fromkeys(update.status.value for update in updates))
        check_cut_twice(events, stream.connection, updates[-1].id)


def refusing_options(events: list[ConnectionEvent]) -> StreamingOptions:
    return StreamingOptions(
        max_retries=2, retry_delay=0.0, retry_jitter=0.0, connect_timeout=5, total_timeout=30,
        on_connection=events.append,
    )  # fmt: skip


def check_gave_up(events: list[ConnectionEvent], error: RetriesExhaustedError) -> None:
    assert [("reconnecting", 1), ("reconnecting", 2), ("gave_up", 3)] == [
        (e.state, e.attempt) for e in events
    ]
    assert [0.0, 0.0, None] == [e.delay for e in events]
    assert all(isinstance(e.cause, ConnectError) for e in events[:-1])
    assert events[-1].cause is error  # "gave_up" carries the error the stream raises
    assert isinstance(error.__cause__, ConnectError)
    assert 2 == error.attempts


async def test_async_stream_reports_giving_up_on_a_closed_port() -> None:
    events: list[ConnectionEvent] = []
    async with async_inference(api_key=KEY, base_url=refused_url()) as client:
        stream = client.stream_task("task_1", refusing_options(events))
        with pytest.raises(RetriesExhaustedError) as info:
            async for _ in stream:
                pass
    check_gave_up(events, info.value)
    assert events[-1] is stream.connection
    assert "task task_1" == events[-1].resource


def test_blocking_stream_reports_giving_up_on_a_closed_port() -> None:
    events: list[ConnectionEvent] = []
    with inference(api_key=KEY, base_url=refused_url()) as client:
        stream = client.stream_task("task_1", options=refusing_options(events))
        with pytest.raises(RetriesExhaustedError) as info:
            list(stream)
    check_gave_up(events, info.value)
    assert events[-1] is stream.connection


async def test_a_retry_after_too_long_gives_up_at_once() -> None:
    """A 503 whose Retry-After is past `max_retry_after`: "gave_up", then the server's error."""

    async def refuse(exchange: Exchange) -> None:
        await exchange.respond(503, {"detail": "later"}, headers=[("Retry-After", "86400")])

    events: list[ConnectionEvent] = []
    async with serving(refuse) as server, async_inference(api_key=KEY, base_url=server.url) as c:
        with pytest.raises(ServerError) as info:
            async for _ in c.stream_task("task_1", refusing_options(events)):
                pass
    assert [("gave_up", 1, None)] == [(e.state, e.attempt, e.delay) for e in events]
    assert info.value is events[0].cause


async def test_an_answer_no_retry_can_change_gives_up_at_once() -> None:
    """A 404 for the stream: "gave_up" with the error, and no reconnect attempt."""

    async def missing(exchange: Exchange) -> None:
        await exchange.respond(404, {"detail": "no such task"})

    events: list[ConnectionEvent] = []
    async with serving(missing) as server, async_inference(api_key=KEY, base_url=server.url) as c:
        with pytest.raises(NotFoundError) as info:
            async for _ in c.stream_task("task_1", refusing_options(events)):
                pass
    assert [("gave_up", 0, None)] == [(e.state, e.attempt, e.delay) for e in events]
    assert info.value is events[0].cause
    assert 1 == len(server.requests)


async def test_a_total_timeout_during_a_reconnect_wait_gives_up() -> None:
    """The stream is cut and the server's `retry:` hint asks for 30 s: the total deadline
    passes during the wait, and the stream's last word is "gave_up" with the
    `TaskTimeoutError` it raises."""
    emu: Emulator = fast_emulator(retry_ms=30_000, **SLOW_STEPS)
    emu.faults.drop_after = 2
    events: list[ConnectionEvent] = []
    options = attrs.evolve(FAST, total_timeout=2.0, on_connection=events.append)
    with anyio.fail_after(20), serve_in_thread(emu) as url:
        async with async_inference(api_key=KEY, base_url=url) as client:
            stream = client.run(CONFIG, stream=True, options=options)
            with pytest.raises(TaskTimeoutError) as info:
                async for _ in stream:
                    pass
    assert ["connected", "reconnecting", "gave_up"] == [e.state for e in events]
    assert 30.0 == events[1].delay
    assert info.value is events[-1].cause
    assert events[-1] is stream.connection
    assert (1, None) == (events[-1].attempt, events[-1].delay)


async def test_an_event_gap_gives_up() -> None:
    """Events skipped, and the fresh connection again without a snapshot: "gave_up" with the
    `EventGapError` the stream raises."""
    script = Script.make(6)  # events 1 .. 8
    requests: list[Exchange] = []

    async def skipping(exchange: Exchange) -> None:
        requests.append(exchange)
        await exchange.start("text/event-stream", transfer="close")
        first = len(requests) == 1
        for event in range(1, 3) if first else range(3 + len(requests), script.last):
            await exchange.send(encode("sse", script.payload(event), str(event)))
        if first:
            await exchange.cut()
        else:
            await exchange.hang()

    events: list[ConnectionEvent] = []
    options = attrs.evolve(BOUNDED, on_connection=events.append)
    with anyio.fail_after(20):
        async with (
            serving(skipping) as server,
            async_inference(api_key=KEY, base_url=server.url) as client,
        ):
            stream = client.stream_task("t1", options)
            with pytest.raises(EventGapError) as info:
                async for _ in stream:
                    pass
    assert "gave_up" == events[-1].state
    assert "reconnecting" not in [e.state for e in events[-2:]]
    assert info.value is events[-1].cause
    assert events[-1] is stream.connection


class Boom(Exception):
    """The caller's own failure, raised by its callback."""


def boom(event: ConnectionEvent) -> None:
    raise Boom(event.state)


async def test_a_failing_callback_is_raised_out_of_the_async_stream(server: str) -> None:
    async with async_inference(api_key=KEY, base_url=server) as client:
        with pytest.raises(Boom, match="connected"):
            async for _ in client.run(
                CONFIG, stream=True, options=StreamingOptions(on_connection=boom)
            ):
                pass


def test_a_failing_callback_is_raised_out_of_the_blocking_stream(server: str) -> None:
    with inference(api_key=KEY, base_url=server) as client, pytest.raises(Boom, match="connected"):
        list(client.run(CONFIG, stream=True, options=StreamingOptions(on_connection=boom)))


def test_on_connection_is_checked_and_kept_out_of_equality() -> None:
    with pytest.raises(UsageError, match="on_connection must be a callable"):
        StreamingOptions(on_connection="print")  # type: ignore[arg-type]
    assert StreamingOptions(on_connection=boom) == StreamingOptions()
    assert "on_connection=<boom>" in repr(StreamingOptions(on_connection=boom))


# -- logging -----------------------------------------------------------------------------------


def every_text(record: logging.LogRecord) -> str:
    """Everything a handler could print of `record`: message, arguments, traceback."""
    parts = [record.getMessage(), repr(record.args), str(record.msg)]
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    if record.exc_text:
        parts.append(record.exc_text)
    return "\n".join(parts)


def http_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "inferencesh.http"]


async def test_debug_logs_every_request_and_never_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run with a cut stream, a REST call with a query, an upload to a URL that carries a
    token, a 404 and a refused connection: one line each on `inferencesh.http`, at DEBUG, with
    the method, the path, the status or error class and the time; the key appears nowhere."""
    emu: Emulator = fast_emulator(**SLOW_STEPS)
    emu.faults.drop_after = 4
    caplog.set_level(logging.DEBUG, logger="inferencesh")
    with serve_in_thread(emu) as url:
        async with async_inference(api_key=KEY, base_url=url, streaming_options=BOUNDED) as client:
            updates = [u async for u in client.run(CONFIG, stream=True)]
            task = updates[-1].id
            await client.task_files(task, role="output")
            file = await client.upload_file(b"hello", filename="a.txt")
            with pytest.raises(NotFoundError):
                await client.get_task("task_missing")
    once = RetryPolicy(max_retries=0)
    async with async_inference(api_key=KEY, base_url=refused_url(), retry=once) as client:
        with pytest.raises(ConnectError):
            await client.get_task("task_1", timeout=5)
    lines = http_lines(caplog)
    pattern = r"(POST|GET|PUT|DELETE) \S+ -> (\d{3}|[A-Za-z]+Error)\b.* in \d+\.\d ms"
    assert all(re.fullmatch(pattern + r".*", line) for line in lines), lines
    assert any(line.startswith("POST /apps/run -> 200 in ") for line in lines), lines
    streams = [line for line in lines if line.startswith(f"GET /tasks/{task}/stream -> 200 in ")]
    assert len(streams) >= 2, lines  # one per connection: the cut made more than one
    assert all(line.endswith("(headers; streaming text/event-stream)") for line in streams)
    assert any(line.startswith(f"GET /tasks/{task}/files?role=* -> 200 in") for line in lines)
    assert any(line.startswith("GET /tasks/task_missing -> 404 in") for line in lines)
    assert any(line.startswith("GET /tasks/task_1 -> ConnectError in") for line in lines)
    uploads = [line for line in lines if line.startswith("PUT ")]
    assert [f"PUT {url}/... -> 200"] == [line.split(" in ")[0] for line in uploads]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "inferencesh.http")
    # The reconnects say why they wait, at INFO.
    reconnects = [r.getMessage() for r in caplog.records if r.name == "inferencesh.stream"]
    assert any(
        "reconnect 1/5 in 0.01s (base 0.01s: the server's retry: hint)" in line
        for line in reconnects
    )
    assert file.uri is not None
    for record in caplog.records:
        text = every_text(record)
        assert KEY not in text, record
        assert file.uri not in text, record  # a download URL's token neither


# A presigned download URL's secrets: a token in its path and a signature in its query.
PATH_TOKEN = "pathtoken-Vb81-secret"
QUERY_TOKEN = "sigtoken-Kq40-secret"
BLOB = bytes(range(256)) * 4


async def fail_500(exchange: Exchange) -> None:
    await exchange.respond(500, b"storage is down", content_type="text/plain")


async def fail_range(exchange: Exchange) -> None:
    """The first answer is cut halfway; the resumed one starts elsewhere than asked."""
    if "range" not in exchange.request.headers:
        await exchange.start("application/octet-stream", transfer="close",
                             headers=[("Content-Length", str(len(BLOB)))])  # fmt: skip
        await exchange.send(BLOB[:512])
        await exchange.cut()
        return
    span = f"bytes 10-{len(BLOB) - 1}/{len(BLOB)}"
    await exchange.start(
        "application/octet-stream", transfer="close", status=206, headers=[("Content-Range", span)]
    )
    await exchange.send(BLOB[10:])
    await exchange.finish()


async def fail_http(exchange: Exchange) -> None:
    """Not HTTP: aiohttp's error names the URL (`url='...'`)."""
    exchange.writer.write(b"HTTP/1.1 2x0 Nonsense\r\nContent-Length: 0\r\n\r\n")
    await exchange.close()


async def fail_redirects(exchange: Exchange) -> None:
    """Redirects to itself forever: aiohttp's error names the URL and keeps the answer's
    headers, `Location` included."""
    await exchange.respond(302, b"", headers=[("Location", exchange.request.path)])


def messages(error: BaseException) -> Iterator[str]:
    """`str` and `repr` of `error` and of every exception it was raised from or during."""
    stack, seen = [error], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        stack += [e for e in (current.__cause__, current.__context__) if e is not None]


@pytest.mark.parametrize(
    ("handler", "error", "says"),
    [
        (fail_500, ServerError, "storage is down"),
        (fail_range, ProtocolError, "'blob.bin' (http://127.0.0.1:*/...) answered a Range request"),
        (fail_http, ProtocolError, "not valid HTTP: *url='http://127.0.0.1:*/...'"),
        (fail_redirects, ProtocolError, "not valid HTTP: TooManyRedirects: *url='http://127.0.0.1:*/...'"),
    ],
)  # fmt: skip
async def test_a_failed_download_never_shows_its_presigned_url(
    handler: Any,
    error: type[Exception],
    says: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever breaks a download, neither its error, the errors it was raised from, nor the
    log carry the URL's path or query: only its scheme and host."""
    caplog.set_level(logging.DEBUG, logger="inferencesh")
    options = StreamingOptions(max_retries=1, retry_delay=0, retry_jitter=0, total_timeout=20)
    with anyio.fail_after(20):
        async with (
            serving(handler) as server,
            async_inference(api_key=KEY, base_url=server.url, streaming_options=options) as client,
        ):
            uri = f"{server.url}/bucket/{PATH_TOKEN}/blob.bin?X-Amz-Signature={QUERY_TOKEN}"
            with pytest.raises(error) as info:
                await client.download(File(uri=uri, filename="blob.bin"), tmp_path)
    assert fnmatch.fnmatchcase(str(info.value), f"*{says}*"), str(info.value)
    assert server.requests
    texts = [*messages(info.value), *(every_text(record) for record in caplog.records)]
    for text in texts:
        assert PATH_TOKEN not in text, text
        assert QUERY_TOKEN not in text, text
    assert len(texts) >= 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("400, message='x', url='https://s3.example.com/b/k?X-Amz-Signature=SECRET'",
         "400, message='x', url='https://s3.example.com/...'"),
        # A URL holding a quote is quoted with double quotes.
        ("url=\"https://h.example/a'SECRET?s=SECRET'\"", "url=\"https://h.example/...\""),
        ("Connection timeout to host https://h.example:8443/SECRET?s=SECRET",
         "Connection timeout to host https://h.example:8443/..."),
        ("<InvalidURL http://[::1]:80/SECRET>", "<InvalidURL http://[::1]:80/...>"),
        ("('https://a.example/SECRET','https://b.example/SECRET')",
         "('https://a.example/...','https://b.example/...')"),
        # Cut short by `preview`: not even the host, which may hold the end of the query.
        ("{'upload_url': 'https://st...s=SECRET'}", "{'upload_url': 'https://...'}"),
        ("http://user:SECRET@h.example/p", "http://h.example/..."),
        ("http://[bad/SECRET", "http://..."),
        ("no URL: 127.0.0.1:9, /tasks/t?role=output", "no URL: 127.0.0.1:9, /tasks/t?role=output"),
    ],
)  # fmt: skip
def test_messages_mask_every_url(text: str, expected: str) -> None:
    assert expected == masked(text)


def run_python(code: str, server: str, **env: str) -> subprocess.CompletedProcess[str]:
    variables = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE")}
    variables.update(INFERENCE_BASE_URL=server, INFERENCE_API_KEY=KEY, **env)
    return subprocess.run(
        [sys.executable, "-c", code], env=variables, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


# Importing configures nothing; the first client does, once (a second adds no handler).
LOG_SCRIPT = """
import logging
import inferencesh
assert logging.getLogger("inferencesh").handlers == []
with inferencesh.inference() as client, inferencesh.inference():
    client.run({"app": "infsh/flux-schnell", "input": {}})
print(len(logging.getLogger("inferencesh").handlers), logging.getLogger("inferencesh").level)
"""


def test_inferencesh_log_prints_the_requests_on_stderr(server: str) -> None:
    done = run_python(LOG_SCRIPT, server, INFERENCESH_LOG="Debug")
    assert 0 == done.returncode, done.stderr
    assert f"1 {logging.DEBUG}" == done.stdout.strip()
    assert "DEBUG inferencesh.http: POST /apps/run -> 200 in " in done.stderr
    assert "DEBUG inferencesh.http: GET /tasks/task_" in done.stderr
    assert KEY not in done.stderr


@pytest.mark.parametrize(("value", "level"), [("warning", logging.WARNING), ("", 0)])
def test_inferencesh_log_above_debug_or_unset_prints_no_requests(
    server: str, value: str, level: int
) -> None:
    done = run_python(LOG_SCRIPT, server, INFERENCESH_LOG=value)
    assert 0 == done.returncode, done.stderr
    assert f"{1 if value else 0} {level}" == done.stdout.strip()
    assert "" == done.stderr


def test_inferencesh_log_with_an_unknown_level_warns_and_stays_off(server: str) -> None:
    done = run_python(LOG_SCRIPT, server, INFERENCESH_LOG="verbose")
    assert 0 == done.returncode, done.stderr
    assert "0 0" == done.stdout.strip()
    # Said of the caller's line that made the first client (line 5 of the script), not of
    # the SDK's own code.
    assert "<string>:5: RuntimeWarning: INFERENCESH_LOG='verbose' is not one of debug" in (
        done.stderr
    )
    assert "inferencesh.http" not in done.stderr


async def test_a_malformed_event_gives_up_with_the_error_it_raises() -> None:
    """Any error that ends a started stream is its "gave_up", reported once."""

    async def garbage(exchange: Exchange) -> None:
        await exchange.start("text/event-stream")
        await exchange.send(b'data: {"id": "task_1", "status": 3}\n\ndata: {not json\n\n')
        await exchange.hang()

    events: list[ConnectionEvent] = []
    async with serving(garbage) as server, async_inference(api_key=KEY, base_url=server.url) as c:
        stream = c.stream_task("task_1", refusing_options(events))
        with pytest.raises(ProtocolError) as info:
            async for _ in stream:
                pass
    assert ["connected", "gave_up"] == [e.state for e in events]
    assert info.value is events[-1].cause is stream.connection.cause  # type: ignore[union-attr]
