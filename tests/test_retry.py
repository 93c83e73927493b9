"""The one retry policy: backoff and Retry-After as pure functions, and how REST calls use them
against real loopback servers (which requests may be sent twice, and the total time bound)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

import inferencesh
from inferencesh import RetryPolicy, StreamingOptions, async_inference
from inferencesh._retry import compute_backoff, parse_retry_after, retry_delay

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
NO_JITTER = RetryPolicy(retry_jitter=0.0)


# -- compute_backoff -----------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    """retry_delay, then times retry_backoff per attempt, never past max_retry_delay."""
    policy = RetryPolicy(retry_delay=0.5, retry_backoff=2.0, max_retry_delay=3.0, retry_jitter=0)
    assert [0.5, 1.0, 2.0, 3.0, 3.0] == [compute_backoff(policy, n) for n in range(1, 6)]


def test_server_hint_replaces_the_base_and_retry_after_is_a_floor() -> None:
    """The SSE `retry:` hint is the base; Retry-After is never undercut."""
    assert 0.04 == compute_backoff(NO_JITTER, 3, server_hint=0.01)
    assert 7.0 == compute_backoff(NO_JITTER, 1, retry_after=7.0)
    assert 1.0 == compute_backoff(NO_JITTER, 1, retry_after=0.2)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    """An exponent past float range still gives the cap."""
    assert 30.0 == compute_backoff(NO_JITTER, 10_000)


@given(
    attempt=st.integers(1, 2000),
    jitter=st.floats(0, 2),
    delay=st.floats(0, 100),
    cap=st.floats(0, 100),
    seed=st.integers(),
)
def test_jitter_is_a_bounded_share_of_the_delay(
    attempt: int, jitter: float, delay: float, cap: float, seed: int
) -> None:
    """The wait lies between the capped delay and that times (1 + retry_jitter)."""
    policy = RetryPolicy(retry_delay=delay, max_retry_delay=cap, retry_jitter=jitter)
    plain = compute_backoff(attrs_evolve(policy, retry_jitter=0.0), attempt)
    waited = compute_backoff(policy, attempt, rng=random.Random(seed))
    assert plain <= waited <= plain * (1 + jitter) + 1e-9
    assert plain <= cap


def attrs_evolve(policy: RetryPolicy, **changes: Any) -> RetryPolicy:
    return attrs.evolve(policy, **changes)


def test_retry_delay_gives_up_after_max_retries_and_on_a_long_retry_after() -> None:
    """One rule for when not to wait at all: retries used up, or a server asking too much."""
    policy = RetryPolicy(max_retries=2, retry_jitter=0.0, max_retry_after=60.0)
    assert 1.0 == retry_delay(policy, 1)
    assert 2.0 == retry_delay(policy, 2)
    assert None is retry_delay(policy, 3)
    assert 60.0 == retry_delay(policy, 1, retry_after=60.0)
    assert None is retry_delay(policy, 1, retry_after=61.0)
    assert None is retry_delay(policy, 1, retry_after=math.inf)


@pytest.mark.parametrize(
    "bad", [{"max_retries": -1}, {"retry_delay": -1}, {"retry_backoff": 0}, {"retry_jitter": -0.1},
            {"max_retry_after": math.inf}, {"retry_delay": math.nan}, {"max_retries": 1.5}],
)  # fmt: skip
def test_policy_refuses_nonsense(bad: dict[str, Any]) -> None:
    """Negative, zero-backoff, infinite or NaN settings are refused at construction, with the
    SDK's UsageError (the caller's mistake), not a bare ValueError."""
    with pytest.raises(inferencesh.UsageError, match=next(iter(bad))):
        RetryPolicy(**bad)
    with pytest.raises(inferencesh.UsageError, match=next(iter(bad))):
        StreamingOptions(**bad)


def test_streaming_options_are_a_retry_policy() -> None:
    """Streams and REST calls share the policy's fields and meaning: one set of names."""
    options = StreamingOptions(max_retries=3, retry_delay=1.0, chunk_size=1024)
    assert isinstance(options, RetryPolicy)
    assert 2.0 == compute_backoff(attrs_evolve(options, retry_jitter=0.0), 2)


# -- parse_retry_after ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("86400", 86400.0),
        ("9" * 16, math.inf),
        ("Sun, 29 Nov 2026 12:00:30 GMT", 30.0),
        ("Sunday, 29-Nov-26 12:01:00 GMT", 60.0),
        ("Sun Nov 29 12:00:05 2026", 5.0),
        ("Sun Nov  1 12:00:00 2026", 0.0),  # in the past: no wait
        ("Sun, 29 Nov 2026 11:00:00 GMT", 0.0),
    ],
)
def test_retry_after_reads_delta_seconds_and_http_dates(header: str, seconds: float) -> None:
    """The two forms RFC 9110 defines (and the two obsolete date forms a recipient accepts)."""
    assert seconds == parse_retry_after(header, now=NOW)


def test_retry_after_far_future_date_is_a_huge_wait() -> None:
    """A date in year 9999 is valid and huge: the caller refuses it rather than sleep."""
    seconds = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=NOW)
    assert seconds is not None
    assert seconds > timedelta(days=365 * 7000).total_seconds()


@pytest.mark.parametrize(
    "header",
    [None, "", "inf", "Infinity", "nan", "-1", "1.5", "1e3", "+5", "٣", "0x10", "soon",
     "Sun, 29 Nov 2026 12:00:30 UTC", "Sun, 31 Feb 2026 12:00:30 GMT",
     "Sun, 29 Nov 2026 25:00:00 GMT", "29 Nov 2026 12:00:30 GMT", "5 seconds"],
)  # fmt: skip
def test_retry_after_refuses_everything_else(header: str | None) -> None:
    """No float, sign, exponent, non-ASCII digit, other zone or impossible date gets through."""
    assert None is parse_retry_after(header, now=NOW)


@given(st.text(max_size=40))
def test_retry_after_never_raises(header: str) -> None:
    """Whatever the header, the parser answers None or a non-negative number."""
    value = parse_retry_after(header, now=NOW)
    assert value is None or value >= 0


# -- REST calls against real servers -----------------------------------------------------------


class Recorder:
    """An aiohttp app answering `POST /apps/run` and `GET /tasks/t1` from a script of statuses."""

    def __init__(self, statuses: list[int], retry_after: str | None = None) -> None:
        self.statuses = statuses
        self.retry_after = retry_after
        self.requests: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            task = {"id": "t1", "status": 1}
            return web.json_response({"success": True, "data": task})
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        return web.json_response({"detail": f"scripted {status}"}, status=status, headers=headers)


@pytest.fixture
async def recorder_server() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(recorder: Recorder) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", recorder.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


FAST_REST = RetryPolicy(max_retries=2, retry_delay=0.0, retry_jitter=0.0)


@pytest.mark.parametrize(
    ("statuses", "method", "sent", "outcome"),
    [
        ([429], "POST", 2, None),
        ([503], "POST", 1, inferencesh.ServerError),
        ([500], "POST", 1, inferencesh.ServerError),
        ([503], "GET", 2, None),
        ([502, 504], "GET", 3, None),
        ([503, 503, 503], "GET", 3, inferencesh.ServerError),
        ([404], "GET", 1, inferencesh.NotFoundError),
    ],
)
async def test_which_answers_are_retried(
    recorder_server: Any,
    statuses: list[int],
    method: str,
    sent: int,
    outcome: type[Exception] | None,
) -> None:
    """429 is retried for any request (not processed); 5xx only for idempotent ones, so
    `POST /apps/run` that may have reached the app is never sent twice."""
    recorder = Recorder(list(statuses))
    url = await recorder_server(recorder)
    async with async_inference(api_key="k", base_url=url, retry=FAST_REST) as client:
        call = client.run({"app": "a/b", "input": {}}, wait=False)
        if method == "GET":
            call.close()
            call = client.get_task("t1")
        if outcome is None:
            await call
        else:
            with pytest.raises(outcome):
                await call
    assert sent == len(recorder.requests)


async def test_post_after_a_dropped_connection_is_not_sent_again() -> None:
    """A connection that closes after the request was sent may have created the task: the
    POST is not repeated (a GET would be)."""
    received: list[bytes] = []

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with (
        server,
        async_inference(
            api_key="k", base_url=f"http://127.0.0.1:{port}", retry=FAST_REST
        ) as client,
    ):
        with pytest.raises(inferencesh.TransportError):
            await client.run({"app": "a/b", "input": {}}, wait=False)
        assert 1 == len(received)
        with pytest.raises(inferencesh.TransportError):
            await client.get_task("t1")
        assert 1 + 3 == len(received)


async def test_a_refused_connection_is_retried_even_for_post(recorder_server: Any) -> None:
    """Connection refused: the request never left, so even `POST /apps/run` is retried. The
    server starts listening when the client announces its retry (no sleep in the test)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    recorder = Recorder([])
    started: list[asyncio.Task[Any]] = []

    class StartOnRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retry 1/" in record.getMessage() and not started:
                started.append(asyncio.get_running_loop().create_task(start_on(port)))

    async def start_on(port: int) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", recorder.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)

    runners: list[web.AppRunner] = []
    handler = StartOnRetry()
    logger = logging.getLogger("inferencesh.transport")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    policy = RetryPolicy(max_retries=2, retry_delay=0.3, retry_jitter=0.0)
    try:
        async with async_inference(
            api_key="k", base_url=f"http://127.0.0.1:{port}", retry=policy
        ) as client:
            created = await client.run({"app": "a/b", "input": {}}, wait=False)
        assert "t1" == created.id
        assert ["POST /apps/run"] == recorder.requests
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        for runner in runners:
            await runner.cleanup()


async def test_a_wait_past_the_total_timeout_is_not_slept(recorder_server: Any) -> None:
    """The client's `timeout` bounds the call, waits included: a Retry-After that would end
    past it raises the server's error at once instead of sleeping into the deadline."""
    recorder = Recorder([429, 429], retry_after="2")
    url = await recorder_server(recorder)
    loop = asyncio.get_running_loop()
    async with async_inference(api_key="k", base_url=url, timeout=1.0) as client:
        started = loop.time()
        with pytest.raises(inferencesh.RateLimitError) as info:
            await client.get_task("t1")
    assert loop.time() - started < 0.9
    assert 2.0 == info.value.retry_after
    assert 1 == len(recorder.requests)


async def test_a_silent_server_ends_the_call_at_the_total_timeout() -> None:
    """A server that takes the request and never answers: RequestTimeoutError at `timeout`."""
    hold = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await hold.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    async with server:
        async with async_inference(
            api_key="k", base_url=f"http://127.0.0.1:{port}", timeout=0.4
        ) as client:
            started = loop.time()
            with pytest.raises(inferencesh.RequestTimeoutError):
                await client.get_task("t1")
            assert 0.35 < loop.time() - started < 2.0
        hold.set()
