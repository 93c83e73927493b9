"""The blocking client's hand-off to its loop thread (`_Pending`): work cancelled before its
first step still ends its wait at once, and Ctrl-C before relayed work could start leaves
`_relay` at once, not after the client's timeout. The loop thread is held busy by a real
blocking callback so that the cancel reaches it before the work's first step."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest
from hostile import refused_url

from inferencesh import (
    ConnectionEvent,
    Inference,
    StreamingOptions,
    TaskStatus,
    UsageError,
    inference,
)
from inferencesh._sync_client import _Closed
from inferencesh.local import AppContext, Emulator

BOUND = 5.0  # seconds: far below the client's 30 s timeout, far above a busy machine's hiccup


@pytest.fixture
def client() -> Iterator[Inference]:
    with inference(api_key="k", base_url=refused_url(), timeout=30) as client:
        client._call(asyncio.sleep, 0)  # the loop thread runs
        yield client


def hold_loop(client: Inference) -> threading.Event:
    """Block the loop thread until the returned event is set (bounded: BOUND seconds)."""
    gate = threading.Event()
    assert client._loop is not None
    client._loop.call_soon_threadsafe(gate.wait, BOUND)
    return gate


def test_work_cancelled_before_its_first_step_ends_its_wait(client: Inference) -> None:
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)

    gate = hold_loop(client)
    pending = client._start(work)
    pending.cancel()  # reaches the loop after `start`, before the task's first step
    gate.set()
    started = time.monotonic()
    with pytest.raises(_Closed):
        pending.wait()
    assert time.monotonic() - started < BOUND
    assert [] == ran


def test_ctrl_c_before_relayed_work_starts_leaves_at_once(client: Inference) -> None:
    """Ctrl-C lands while the loop thread is busy, so the relayed work never takes a step:
    `_relay` still leaves as soon as the loop has cancelled it, with KeyboardInterrupt."""
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)
        await asyncio.sleep(BOUND)

    gate = hold_loop(client)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        # Free the loop thread only once the interrupt has landed, a little later.
        threading.Timer(0.2, gate.set).start()
        raise KeyboardInterrupt

    # SIGUSR1, not SIGALRM: pytest-timeout's own alarm must stay in place.
    previous = signal.signal(signal.SIGUSR1, interrupt)
    signaller = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        signaller.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            client._relay(work)
        elapsed = time.monotonic() - started
    finally:
        signaller.cancel()
        gate.set()
        signal.signal(signal.SIGUSR1, previous)
    assert elapsed < BOUND
    assert [] == ran


def test_a_blocking_call_from_a_loop_thread_callback_is_refused(server: str) -> None:
    """A callback that runs on the client's loop thread cannot wait for that thread."""
    seen: list[BaseException] = []

    def call_back(event: ConnectionEvent) -> None:
        try:
            client.get_task("task_1")
        except BaseException as exc:
            seen.append(exc)

    with inference(api_key="k", base_url=server) as client:
        options = StreamingOptions(on_connection=call_back)
        final = list(client.run({"app": "x/y", "input": {}}, stream=True, options=options))[-1]
    assert TaskStatus.COMPLETED is final.status
    assert seen
    assert all(isinstance(exc, UsageError) for exc in seen)


@pytest.mark.parametrize("stream", [True, False])
def test_closing_the_client_under_a_cancel_on_close_call_cancels_its_task(
    emu: Emulator, server: str, stream: bool
) -> None:
    """`close()` from another thread while a `cancel_on_close` stream or wait is running:
    the task is cancelled on the server (the clean-up runs before the connections close)."""
    started = threading.Event()
    ids: list[str] = []

    async def waits(input: dict[str, Any], ctx: AppContext) -> Any:
        ids.append(ctx.task_id)
        started.set()
        await asyncio.Event().wait()

    emu.register_app("acme/waits", waits)
    errors: list[BaseException] = []
    client = inference(api_key="k", base_url=server)
    config = {"app": "acme/waits", "input": {}}

    def consume() -> None:
        try:
            if stream:
                for _ in client.run(config, stream=True, cancel_on_close=True):
                    pass
            else:
                client.run(config, cancel_on_close=True)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=consume)
    worker.start()
    assert started.wait(BOUND)
    client.close()
    worker.join(BOUND)
    assert not worker.is_alive()
    with inference(api_key="k", base_url=server) as observer:
        status = observer.get_task(ids[0]).status
    assert status in (TaskStatus.CANCELLED, TaskStatus.CANCELLING), (status, errors)


@pytest.mark.parametrize("queued", [True, False])
def test_ctrl_c_while_work_is_handed_over_cancels_and_waits_for_it(
    server: str, queued: bool
) -> None:
    """A KeyboardInterrupt landing inside the hand-over itself (`call_soon_threadsafe`), after
    the work was queued or before: the work is cancelled once, its clean-up runs to its end
    before the interrupt reaches the caller, and nothing is left running on the loop."""
    began = threading.Event()
    cleaned: list[str] = []

    async def work() -> str:
        began.set()
        try:
            await asyncio.sleep(BOUND * 4)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # a clean-up that takes a while (a stop request)
            cleaned.append("done")
            raise
        return "finished"

    with inference(api_key="k", base_url=server) as client:
        client._call(asyncio.sleep, 0)  # the loop runs
        loop = client._loop
        assert loop is not None
        real = loop.call_soon_threadsafe

        def interrupted(callback: Any, *args: Any, context: Any = None) -> Any:
            loop.call_soon_threadsafe = real  # type: ignore[method-assign]
            if queued:
                real(callback, *args)
            raise KeyboardInterrupt

        loop.call_soon_threadsafe = interrupted  # type: ignore[method-assign, assignment]
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            client._relay(work)
        assert time.monotonic() - started < BOUND  # not the drain's whole bound
        # Cancelled (before its first step, or in it: then its clean-up ran to its end
        # before the caller went on), or never queued.
        assert cleaned == (["done"] if began.is_set() else [])
        # Anything queued before this call has run by its end: the work is not running.
        assert "ok" == client._call(asyncio.sleep, 0, "ok")
        assert not client._running, "the work was left running on the loop"
