"""The blocking client closed from another thread, and at interpreter exit, while a stream or
a call waits on a server that sends one event and then only heartbeats (or nothing)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from hostile import Exchange, content_type, encode, heartbeat, serve_in_thread

import inferencesh
from inferencesh import TaskUpdate, UsageError

TASK = {"id": "t1", "status": 7, "logs": ["hello"]}
BOUND = 5.0  # seconds anything here may take; all of it should take milliseconds


async def one_event_then_heartbeats(exchange: Exchange) -> None:
    """The stream's first snapshot, then a heartbeat every 20 ms until the client hangs up."""
    await exchange.start(content_type("sse"))
    await exchange.send(encode("sse", TASK, "1"))
    while True:
        await exchange.send(heartbeat("sse"))
        await asyncio.sleep(0.02)


class Iteration:
    """A stream iterated to its end in a thread of its own, recording what happened."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.updates: list[TaskUpdate] = []
        self.error: BaseException | None = None
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._run, name="consumer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for update in self.stream:
                self.updates.append(update)
                self.first.set()
        except BaseException as exc:
            self.error = exc

    def ended(self) -> bool:
        self.thread.join(BOUND)
        return not self.thread.is_alive()


@pytest.mark.parametrize("closer", ["stream", "client"])
def test_close_from_another_thread_ends_the_iteration(closer: str) -> None:
    with serve_in_thread(one_event_then_heartbeats) as server:
        client = inferencesh.inference(api_key="k", base_url=server.url)
        try:
            iteration = Iteration(client.stream_task("t1"))
            assert iteration.first.wait(BOUND)
            started = time.monotonic()
            if closer == "stream":
                iteration.stream.close()
            else:
                client.close()
            assert iteration.ended(), "the iteration did not end after close()"
            assert time.monotonic() - started < 2.0, "close() should end it in milliseconds"
        finally:
            client.close()
    assert iteration.error is None, repr(iteration.error)
    assert [("running", ("hello",))] == [(u.status, u.logs) for u in iteration.updates]


def test_close_while_a_blocking_call_waits_is_a_usage_error() -> None:
    async def hang(exchange: Exchange) -> None:
        await exchange.hang()

    with serve_in_thread(hang) as server:
        client = inferencesh.inference(api_key="k", base_url=server.url, timeout=60)
        outcome: list[BaseException | TaskUpdate] = []

        def call() -> None:
            try:
                outcome.append(client.get_task("t1"))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        try:
            assert server.wait_for_requests(1, BOUND)  # the call is waiting on the server
            client.close()
            thread.join(BOUND)
            assert not thread.is_alive()
        finally:
            client.close()
    [error] = outcome
    assert isinstance(error, UsageError), repr(error)
    assert isinstance(error, inferencesh.InferenceshError)


def test_stream_iterated_in_a_daemon_thread_at_exit() -> None:
    """The main thread leaves while a daemon thread iterates: exit status 0, nothing on stderr."""
    script = textwrap.dedent(
        """
        import sys, threading
        import inferencesh

        client = inferencesh.inference(api_key="k", base_url=sys.argv[1])
        first = threading.Event()

        def consume():
            for update in client.stream_task("t1"):
                first.set()

        threading.Thread(target=consume, daemon=True).start()
        if not first.wait(10):
            sys.exit(3)
        print("leaving", flush=True)
        """
    )
    with serve_in_thread(one_event_then_heartbeats) as server:
        done = subprocess.run(
            [sys.executable, "-c", script, server.url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert (0, "leaving\n", "") == (done.returncode, done.stdout, done.stderr)


def test_blocking_stream_close_before_any_event() -> None:
    """close() from another thread while the first read still waits for headers."""

    async def hang(exchange: Exchange) -> None:
        await exchange.hang()

    with (
        serve_in_thread(hang) as server,
        inferencesh.inference(api_key="k", base_url=server.url) as client,
    ):
        iteration = Iteration(client.stream_task("t1"))
        assert server.wait_for_requests(1, BOUND)
        iteration.stream.close()
        assert iteration.ended()
    assert iteration.error is None, repr(iteration.error)
    assert [] == iteration.updates


def test_closing_the_client_while_the_consumer_is_busy_ends_the_iteration() -> None:
    """The consumer is busy with an update (not waiting) when another thread closes the
    client: its next step ends the loop cleanly, no UsageError."""
    with serve_in_thread(one_event_then_heartbeats) as server:
        client = inferencesh.inference(api_key="k", base_url=server.url)
        busy, closed = threading.Event(), threading.Event()
        got: list[Any] = []

        def consume() -> None:
            try:
                for update in client.stream_task("t1"):
                    got.append(update)
                    busy.set()
                    closed.wait(BOUND)  # still handling this update when the client closes
            except BaseException as exc:
                got.append(exc)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        assert busy.wait(BOUND)
        client.close()
        closed.set()
        thread.join(BOUND)
        assert not thread.is_alive()
    assert [TaskUpdate] == [type(item) for item in got]


@pytest.mark.anyio
async def test_async_aclose_from_another_task_ends_only_the_iteration() -> None:
    """`aclose()` from another task ends the consumer's `async for` (as the end of the stream
    would); the consumer's task itself is not cancelled and carries on."""
    from hostile import serving

    async with (
        serving(one_event_then_heartbeats) as server,
        inferencesh.async_inference(api_key="k", base_url=server.url) as client,
    ):
        stream = client.stream_task("t1")
        first = asyncio.Event()
        after: list[str] = []

        async def consume() -> None:
            async for _update in stream:
                first.set()
            after.append("loop ended")
            await asyncio.sleep(0)
            after.append("task goes on")

        task = asyncio.create_task(consume())
        async with asyncio.timeout(BOUND):
            await first.wait()
            await stream.aclose()
            await task
    assert ["loop ended", "task goes on"] == after
    assert not task.cancelled()
