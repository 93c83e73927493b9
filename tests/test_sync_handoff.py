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

import pytest
from hostile import refused_url

from inferencesh import Inference, inference
from inferencesh._sync_client import _Closed

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

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    gate = hold_loop(client)
    # SIGUSR1, not SIGALRM: pytest-timeout's own alarm must stay in place.
    previous = signal.signal(signal.SIGUSR1, interrupt)
    signaller = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
    releaser = threading.Timer(0.3, gate.set)  # after the interrupt, free the loop thread
    try:
        signaller.start()
        releaser.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            client._relay(work)
        elapsed = time.monotonic() - started
    finally:
        signaller.cancel()
        releaser.cancel()
        gate.set()
        signal.signal(signal.SIGUSR1, previous)
    assert elapsed < BOUND
    assert [] == ran
