"""Fan-out with `run_many`, from both clients, against the emulator over loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferencesh import (
    BatchItem,
    TaskFailedError,
    TaskOutcome,
    TaskStatus,
    TaskUpdate,
    UsageError,
    async_inference,
    inference,
)
from inferencesh.local import AppContext, Emulator, EmulatorOptions, serve, serve_in_thread

pytestmark = pytest.mark.anyio

HOLD = {"sim": {"hold": True}}


class Gauge:
    """How many calls of an app run at once, and the most there ever were."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.calls: list[int] = []

    async def app(self, input: dict[str, Any], ctx: AppContext) -> dict[str, Any]:
        self.now += 1
        self.most = max(self.most, self.now)
        self.calls.append(input["i"])
        try:
            await asyncio.sleep(input.get("delay", 0.01))
            if input.get("fail"):
                raise RuntimeError(f"input {input['i']} failed")
            return {"i": input["i"]}
        finally:
            self.now -= 1


def _emulator(gauge: Gauge) -> Emulator:
    emu = Emulator(EmulatorOptions(sim_step_delay=0, transition_delay=0))
    emu.register_app("acme/gauge", gauge.app)
    return emu


def configs(count: int, **extra: Any) -> Iterator[dict[str, Any]]:
    return ({"app": "acme/gauge", "input": {"i": i, **extra}} for i in range(count))


async def test_concurrency_is_bounded_on_the_server_and_outcomes_come_as_tasks_end() -> None:
    gauge = Gauge()
    emu = _emulator(gauge)
    most_streams = 0
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        indexes = []
        batch = client.run_many(configs(40), concurrency=5)
        async for outcome in batch:
            assert outcome.ok
            assert outcome.task is not None
            assert outcome.task.output == {"i": outcome.index}
            indexes.append(outcome.index)
            most_streams = max(most_streams, emu.open_streams)
        progress = batch.progress
    assert sorted(indexes) == list(range(40))
    assert gauge.most == 5, "five at a time, and no more"
    assert most_streams <= 5
    assert progress.finished == progress.succeeded == 40
    assert progress.by_status == {"completed": 40}
    assert progress.total is None  # a generator has no length


async def test_collect_all_keeps_going_and_types_the_failures() -> None:
    gauge = Gauge()
    async with serve(_emulator(gauge)) as url, async_inference(api_key="k", base_url=url) as client:
        items = [{"app": "acme/gauge", "input": {"i": i, "fail": i % 3 == 0}} for i in range(12)]
        batch = client.run_many(items, concurrency=4)
        outcomes = await batch.results()
        progress = batch.progress
    assert [o.index for o in outcomes] == list(range(12)), "results() is in input order"
    failed = [o for o in outcomes if not o.ok]
    assert [o.index for o in failed] == [0, 3, 6, 9]
    assert all(isinstance(o.error, TaskFailedError) for o in failed)
    assert all(o.task is not None and o.task.status is TaskStatus.FAILED for o in failed)
    assert (progress.total, progress.failed, progress.succeeded) == (12, 4, 8)
    assert progress.by_status == {"completed": 8, "failed": 4}
    assert [index for index, _ in progress.recent_failures] == [0, 3, 6, 9][-5:]


async def test_fail_fast_raises_the_first_failure_and_cancels_the_siblings() -> None:
    gauge = Gauge()
    emu = _emulator(gauge)
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        items = [{"app": "acme/gauge", "input": {"i": 0, "fail": True}}] + [
            {"app": "a/b", "input": {"i": i, **HOLD}} for i in range(1, 4)
        ]
        started: dict[int, str] = {}

        async def remember(index: int, update: TaskUpdate) -> None:
            started[index] = update.id

        with pytest.raises(TaskFailedError, match="input 0 failed"):
            async for _ in client.run_many(
                items, concurrency=4, fail_fast=True, on_update=remember
            ):
                pass
        assert sorted(started) == [0, 1, 2, 3]
        for index in (1, 2, 3):

            def cancelled(emu: Emulator, task_id: str = started[index]) -> bool:
                return (emu.task_snapshot(task_id) or {}).get("status") == 12

            assert await emu.async_wait_until(cancelled, timeout=5)


@pytest.mark.parametrize("cancel_unfinished", [True, False])
async def test_leaving_early_cancels_the_unfinished_tasks_unless_told_not_to(
    cancel_unfinished: bool,
) -> None:
    emu = Emulator(EmulatorOptions(sim_step_delay=0, transition_delay=0))
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        items = [{"app": "a/b", "input": {"sim": {"steps": 0}}}] + [
            {"app": "a/b", "input": {"i": i, **HOLD}} for i in range(3)
        ]
        ids: dict[int, str] = {}

        def remember(index: int, update: TaskUpdate) -> None:
            ids[index] = update.id

        batch = client.run_many(
            items, concurrency=4, cancel_unfinished=cancel_unfinished, on_update=remember
        )
        async with batch:
            async for outcome in batch:
                assert outcome.index == 0
                break  # the caller leaves with three tasks still running
        expected = TaskStatus.CANCELLED if cancel_unfinished else TaskStatus.RUNNING
        for index in (1, 2, 3):

            def settled(emu: Emulator, index: int = index) -> bool:
                return (emu.task_snapshot(ids[index]) or {}).get("status") == expected.code

            assert await emu.async_wait_until(settled, timeout=5)
        # The connections were closed here: the server sees them go.
        assert await emu.async_wait_until(lambda e: e.open_streams == 0, timeout=5)


async def test_updates_are_labelled_by_index_and_items_can_reattach() -> None:
    """`on_update` sees each task's updates with its index; a `BatchItem` with a task id
    follows that existing task instead of starting another."""
    gauge = Gauge()
    emu = _emulator(gauge)
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        existing = await client.run({"app": "acme/gauge", "input": {"i": 7}}, wait=False)
        seen: dict[int, set[str]] = {}
        submitted: list[int] = []

        def on_update(index: int, update: TaskUpdate) -> None:
            seen.setdefault(index, set()).add(update.id)

        items = [
            BatchItem(3, {"app": "acme/gauge", "input": {"i": 3}}),
            BatchItem(7, {"app": "acme/gauge", "input": {"i": 7}}, task_id=existing.id),
        ]
        outcomes = await client.run_many(
            items, on_update=on_update, on_submit=lambda i, c: submitted.append(i)
        ).results()
    assert [o.index for o in outcomes] == [3, 7]
    assert outcomes[1].task_id == existing.id
    assert submitted == [3], "the re-attached input is not submitted again"
    assert sorted(gauge.calls) == [3, 7]
    assert len(seen[3]) == 1
    assert seen[7] == {existing.id}


async def test_configs_are_consumed_lazily() -> None:
    """A generator of a million configs: only what the bound lets run is ever taken."""
    gauge = Gauge()
    pulled = 0

    def endless() -> Iterator[dict[str, Any]]:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield {"app": "acme/gauge", "input": {"i": i}}

    async with serve(_emulator(gauge)) as url, async_inference(api_key="k", base_url=url) as client:
        batch = client.run_many(endless(), concurrency=3)
        async with batch:
            async for outcome in batch:
                if outcome.index >= 5:
                    break
    assert pulled <= 6 + 3


async def test_bad_batches_are_usage_errors() -> None:
    async with async_inference(api_key="k", base_url="http://127.0.0.1:9") as client:
        with pytest.raises(UsageError, match="concurrency"):
            client.run_many([], concurrency=0)
        with pytest.raises(UsageError, match="iterable of configs"):
            client.run_many({"app": "a/b"})  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="not a mapping"):
            await client.run_many(["a/b"]).results()  # type: ignore[list-item]


@pytest.mark.parametrize("cancel_on_close", [True, False])
async def test_a_single_stream_left_early_cancels_its_task_when_asked(
    cancel_on_close: bool,
) -> None:
    emu = Emulator(EmulatorOptions(sim_step_delay=0, transition_delay=0))
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        stream = client.run(
            {"app": "a/b", "input": HOLD}, stream=True, cancel_on_close=cancel_on_close
        )
        async with stream:
            async for update in stream:
                if update.status is TaskStatus.RUNNING:
                    break
        expected = TaskStatus.CANCELLED if cancel_on_close else TaskStatus.RUNNING

        def settled(emu: Emulator) -> bool:
            return (emu.task_snapshot(update.id) or {}).get("status") == expected.code

        assert await emu.async_wait_until(settled, timeout=5)


def test_the_blocking_batch_iterates_and_ctrl_c_cancels_on_the_server() -> None:
    gauge = Gauge()
    emu = _emulator(gauge)
    with serve_in_thread(emu) as url, inference(api_key="k", base_url=url) as client:
        with client.run_many(configs(6), concurrency=2) as batch:
            outcomes: list[TaskOutcome] = list(batch)
        assert sorted(o.index for o in outcomes) == list(range(6))
        assert batch.progress.succeeded == 6

        ids: dict[int, str] = {}
        running = threading.Event()

        def remember(index: int, update: TaskUpdate) -> None:
            ids[index] = update.id
            if len(ids) == 2 and update.status is TaskStatus.RUNNING:
                running.set()

        def interrupt() -> None:
            if running.wait(10):
                os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        holds = ({"app": "a/b", "input": {"i": i, **HOLD}} for i in range(2))
        with pytest.raises(KeyboardInterrupt):
            for _ in client.run_many(holds, concurrency=2, on_update=remember):
                pass
        for task_id in ids.values():
            assert emu.wait_until(
                lambda e, t=task_id: (e.task_snapshot(t) or {}).get("status") == 12, timeout=5
            )


BENCH_SERVER = Path(__file__).resolve().parent.parent / "benchmarks" / "_server.py"
TEN_THOUSAND = """
import asyncio, re, sys
from inferencesh import async_inference

def rss():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmRSS:\\s+(\\d+) kB", status).group(1)) // 1024

async def main():
    configs = ({"app": "a/b", "input": {"i": i, "sim": {"steps": 1}}} for i in range(10_000))
    ok = 0
    async with async_inference(api_key="k", base_url=sys.argv[1]) as client:
        async for outcome in client.run_many(configs, concurrency=64):
            ok += outcome.ok
            if outcome.index == 1_000:
                early = rss()
    print(ok, early, rss())

asyncio.run(main())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_ten_thousand_inputs_with_flat_memory() -> None:
    """10,000 tasks through `run_many`: outcomes go to the caller, so the client's memory
    after the last is what it was after the first thousand."""
    import subprocess
    import sys

    server = subprocess.Popen(
        [sys.executable, str(BENCH_SERVER), "--emulator", "--lifetime", "120"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        ready = server.stdout.readline().decode()
        assert ready.startswith("READY "), ready
        url = f"http://127.0.0.1:{int(ready.split()[1])}"
        result = subprocess.run(
            [sys.executable, "-c", TEN_THOUSAND, url],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    finally:
        assert server.stdin is not None
        server.stdin.close()  # its signal to stop
        server.wait(30)
        assert server.stdout is not None
        server.stdout.close()
    assert result.returncode == 0, result.stderr
    ok, early, late = map(int, result.stdout.split())
    assert ok == 10_000
    assert late - early < 16, f"RSS grew from {early} to {late} MiB over 9,000 tasks"


def test_breaking_out_of_a_blocking_batch_cancels_at_once() -> None:
    """`for outcome in client.run_many(...)`: break, and the tasks still running are
    cancelled on the server before the next line runs."""
    emu = Emulator(EmulatorOptions(sim_step_delay=0, transition_delay=0))
    with serve_in_thread(emu) as url, inference(api_key="k", base_url=url) as client:
        ids: dict[int, str] = {}
        items = [{"app": "a/b", "input": {"sim": {"steps": 0}}}] + [
            {"app": "a/b", "input": {"i": i, **HOLD}} for i in range(2)
        ]
        for outcome in client.run_many(
            items, concurrency=3, on_update=lambda i, u: ids.update({i: u.id})
        ):
            assert outcome.index == 0
            break
        statuses = [(emu.task_snapshot(ids[i]) or {}).get("status") for i in (1, 2)]
        # Asked already (cancelling, or cancelled once the app stopped), and cancelled soon.
        assert set(statuses) <= {TaskStatus.CANCELLING.code, TaskStatus.CANCELLED.code}
        for i in (1, 2):
            assert emu.wait_until(
                lambda e, t=ids[i]: (e.task_snapshot(t) or {}).get("status") == 12, timeout=5
            )
