"""Lifecycle under stress: closing a client while what it started is still open.

Real emulator on loopback, real threads and child processes; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from inferencesh import TaskStatus, TaskUpdate, async_inference, inference
from inferencesh.local import Emulator, EmulatorOptions, serve, serve_in_thread

pytestmark = pytest.mark.anyio

HOLD = {"sim": {"hold": True}}
CANCELLED = TaskStatus.CANCELLED.code


def _emulator() -> Emulator:
    return Emulator(EmulatorOptions(sim_step_delay=0, transition_delay=0))


def _items() -> list[dict[str, Any]]:
    """One task that ends at once, then three that run until cancelled."""
    quick = {"app": "a/b", "input": {"sim": {"steps": 0}}}
    return [quick] + [{"app": "a/b", "input": {"i": i, **HOLD}} for i in range(3)]


def _cancelled(emu: Emulator, task_ids: list[str]) -> bool:
    return all(
        emu.wait_until(lambda e, t=t: (e.task_snapshot(t) or {}).get("status") == CANCELLED, 5)
        for t in task_ids
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_closing_the_async_client_cancels_its_open_batch_and_cancel_on_close_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch left with `break` but still referenced, and a `cancel_on_close` stream left
    after its first update: leaving the client's `async with` cancels their tasks on the
    server (while the connections are still open), with no "could not cancel" warnings."""
    emu = _emulator()
    ids: dict[int, str] = {}

    def remember(index: int, update: TaskUpdate) -> None:
        ids[index] = update.id

    async with serve(emu) as url:
        async with async_inference(api_key="k", base_url=url) as client:
            batch = client.run_many(_items(), concurrency=4, on_update=remember)
            async for outcome in batch:
                assert outcome.index == 0
                break
            stream = client.run({"app": "a/b", "input": HOLD}, stream=True, cancel_on_close=True)
            first = await stream.__anext__()
        held = [ids[1], ids[2], ids[3], first.id]

        def all_cancelled(e: Emulator) -> bool:
            return all((e.task_snapshot(t) or {}).get("status") == CANCELLED for t in held)

        assert await emu.async_wait_until(all_cancelled, timeout=5), [
            emu.task_snapshot(t) for t in held
        ]
        assert await emu.async_wait_until(lambda e: e.open_streams == 0, timeout=5)
        await batch.aclose()  # already closed by the client: nothing left to do
    assert _warnings(caplog) == []


@pytest.mark.parametrize("iterating", [True, False])
async def test_a_batch_closed_by_two_tasks_at_once_ends_its_iteration_cleanly(
    iterating: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """`batch.aclose()` and the client's `aclose()` (which closes its batches) at the same
    time, with a task waiting in the batch's iteration or none: the iteration ends as `aclose`
    says (no CancelledError escapes the consumer's task), neither closer raises, and the tasks
    in flight are cancelled on the server."""
    emu = _emulator()
    ids: dict[int, str] = {}
    async with serve(emu) as url:
        client = async_inference(api_key="k", base_url=url)
        batch = client.run_many(
            _items(), concurrency=4, on_update=lambda i, u: ids.update({i: u.id})
        )
        got: list[int] = []
        waiting = asyncio.Event()  # the consumer has its first outcome and waits for more

        async def consume() -> None:
            async for outcome in batch:
                got.append(outcome.index)
                waiting.set()

        consumer = None
        if iterating:
            consumer = asyncio.create_task(consume())
            await asyncio.wait_for(waiting.wait(), 5)
        else:
            got.append((await batch.__anext__()).index)  # then the batch is left idle
        assert await emu.async_wait_until(lambda e: len(ids) == 4, timeout=5)
        closing = asyncio.gather(batch.aclose(), client.aclose())
        await asyncio.wait_for(closing, 10)
        if consumer is not None:
            await asyncio.wait_for(consumer, 5)  # it ended, it was not cancelled
        assert got == [0]
        held = [ids[1], ids[2], ids[3]]

        def all_cancelled(e: Emulator) -> bool:
            return all((e.task_snapshot(t) or {}).get("status") == CANCELLED for t in held)

        assert await emu.async_wait_until(all_cancelled, timeout=5)
    assert _warnings(caplog) == []


def test_closing_the_blocking_client_from_another_thread_cancels_an_idle_batch_and_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The consumer holds a batch and a `cancel_on_close` stream between two `next()` calls
    when another thread closes the client: their tasks are cancelled on the server."""
    emu = _emulator()
    ids: dict[int, str] = {}
    with serve_in_thread(emu) as url:
        client = inference(api_key="k", base_url=url)
        batch = client.run_many(
            _items(), concurrency=4, on_update=lambda i, u: ids.update({i: u.id})
        )
        assert next(batch).index == 0
        stream = client.run({"app": "a/b", "input": HOLD}, stream=True, cancel_on_close=True)
        first = next(stream)
        closer = threading.Thread(target=client.close)
        closer.start()
        closer.join(20)
        assert not closer.is_alive(), "close() hung"
        held = [ids[1], ids[2], ids[3], first.id]
        assert _cancelled(emu, held), [emu.task_snapshot(t) for t in held]
        assert next(stream, None) is None  # the stream ends cleanly
        assert emu.wait_until(lambda e: e.open_streams == 0, timeout=5)
    assert _warnings(caplog) == []


LEFT_OPEN_AT_EXIT = """
import sys
from inferencesh import inference

client = inference(api_key="k", base_url=sys.argv[1])
ids = {}
hold = {"sim": {"hold": True}}
items = [{"app": "a/b", "input": {"sim": {"steps": 0}}}]
items += [{"app": "a/b", "input": {"i": i, **hold}} for i in range(3)]
batch = client.run_many(items, concurrency=4, on_update=lambda i, u: ids.update({i: u.id}))
next(batch)
stream = client.run({"app": "a/b", "input": hold}, stream=True, cancel_on_close=True)
print(ids[1], ids[2], ids[3], next(stream).id, flush=True)
# the script ends with both still open and the client never closed
"""


def test_a_script_ending_with_a_batch_and_stream_open_cancels_their_tasks_silently() -> None:
    """At exit the client is closed for the script: the tasks of a batch left half-read and
    of a `cancel_on_close` stream are cancelled on the server, and stderr stays empty."""
    emu = _emulator()
    with serve_in_thread(emu) as url:
        child = subprocess.run(
            [sys.executable, "-X", "dev", "-W", "default", "-c",
             textwrap.dedent(LEFT_OPEN_AT_EXIT), url],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert child.returncode == 0, child.stderr
        held = child.stdout.split()
        assert len(held) == 4, child.stdout
        assert _cancelled(emu, held), [emu.task_snapshot(t) for t in held]
    assert child.stderr == ""


COLLECTED_UNDER_THE_LOCK = """
import gc, sys
from inferencesh import inference

client = inference(api_key="k", base_url=sys.argv[1])
quick = {"app": "a/b", "input": {"sim": {"steps": 0}}}
task = client.run(quick)
for threshold in range(1, 121):
    stream = client.run(quick, stream=True)
    next(stream)
    gc.collect(0)
    cycle = [stream]  # an abandoned stream only the cyclic collector frees
    cycle.append(cycle)
    del stream, cycle
    # The next collection, hence the stream's finalizer, runs at the threshold-th allocation
    # of this call: across the thresholds, at every allocation on its way, under the client's
    # lock included.
    gc.set_threshold(threshold)
    try:
        client.get_task(task.id)
    finally:
        gc.set_threshold(700)
client.close()
print("done", flush=True)
"""


def test_an_abandoned_stream_collected_in_the_middle_of_a_call_does_not_deadlock() -> None:
    """A stream left suspended in a reference cycle is finalized by the cyclic collector at
    whatever allocation triggers it, in whatever thread, inside the client's own critical
    section too: its finalizer closes it through the client, which must not wait for the lock
    its own thread holds."""
    emu = _emulator()
    with serve_in_thread(emu) as url:
        try:
            child = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(COLLECTED_UNDER_THE_LOCK), url],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the client deadlocked: {exc.stderr!r}")
    assert (child.returncode, child.stdout) == (0, "done\n"), child.stderr
