"""The async client against the local emulator over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import time
import traceback
from typing import Any

import attrs
import pytest
from support import FAST, fast_emulator, seed_examples

import inferencesh
from inferencesh import (
    AuthenticationError,
    IdleTimeoutError,
    NotFoundError,
    RetriesExhaustedError,
    StreamingOptions,
    TaskCancelledError,
    TaskFailedError,
    TaskStatus,
    TaskTimeoutError,
    TaskUpdate,
    UsageError,
    async_inference,
)
from inferencesh.local import Emulator, serve_in_thread

pytestmark = pytest.mark.anyio

SIM = {"app": "infsh/flux-schnell", "input": {"prompt": "A mountain"}}
HOLD = {"app": "x/y", "input": {"sim": {"hold": True}}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def collect(stream: Any) -> list[TaskUpdate]:
    return [update async for update in stream]


def all_logs(updates: list[TaskUpdate]) -> list[str]:
    return [line for update in updates for line in update.logs]


# -- seed examples, verbatim --------------------------------------------------------------------


@pytest.mark.parametrize("drop_after", [None, 1, 2, 3])
def test_seed_async_streaming(
    emu: Emulator,
    server: str,
    drop_after: int | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The seed's "Async Streaming" example runs unchanged and returns the output."""
    emu.faults.drop_after = drop_after
    monkeypatch.setenv("INFERENCE_BASE_URL", server)
    namespace: dict[str, Any] = {}
    exec(seed_examples()["Async Streaming"], namespace)
    printed = capsys.readouterr().out.splitlines()
    assert "Status: completed" == printed[-1]
    assert "Status: received" == printed[0]
    assert isinstance(namespace["result"], dict)
    statuses = [line.removeprefix("Status: ") for line in printed]
    ranks = [TaskStatus.parse(s).rank for s in statuses]
    assert sorted(ranks) == ranks


@pytest.mark.parametrize("drop_after", [None, 1, 2, 3])
def test_seed_multiple_streams_in_parallel(
    emu: Emulator,
    server: str,
    drop_after: int | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The seed's parallel example gathers three outputs over one client."""
    emu.faults.drop_after = drop_after
    monkeypatch.setenv("INFERENCE_BASE_URL", server)
    namespace: dict[str, Any] = {}
    exec(seed_examples()["Multiple Streams in Parallel"], namespace)
    results = namespace["results"]
    assert 3 == len(results)
    assert all(isinstance(r, dict) for r in results)
    printed = capsys.readouterr().out
    for index in range(3):
        assert f"[{index}] completed" in printed


# -- the shape of a stream ------------------------------------------------------------------------


async def test_stream_walks_status_flow_and_ends_after_terminal(server: str) -> None:
    """run(stream=True) is iterable without await and stops right after the terminal update."""
    async with async_inference(api_key="k", base_url=server) as client:
        updates = await collect(client.run(SIM, stream=True, options=FAST))
    statuses = [u.status for u in updates]
    assert TaskStatus.RECEIVED == statuses[0]
    assert TaskStatus.COMPLETED == statuses[-1]
    assert 1 == sum(s.is_terminal for s in statuses)
    assert [s.rank for s in statuses] == sorted(s.rank for s in statuses)
    for expected in ("queued", "dispatched", "running", "uploading"):
        assert expected in statuses
    assert 5 == len(all_logs(updates))
    assert any(u.progress is not None for u in updates)
    assert updates[-1].output is not None
    assert any(u.partial_output is not None for u in updates)


@pytest.mark.parametrize("drop_after", [1, 2, 3])
async def test_drops_lose_and_repeat_nothing(drop_after: int) -> None:
    """With the connection cut every N events, logs equal a clean run's exactly."""
    emu = fast_emulator(sim_steps=8)
    with serve_in_thread(emu) as url:
        async with async_inference(api_key="k", base_url=url) as client:
            clean = await collect(client.run(SIM, stream=True, options=FAST))
            emu.faults.drop_after = drop_after
            dropped = await collect(client.run(SIM, stream=True, options=FAST))
        assert emu.streams_opened > 2 + 8 // drop_after
    assert 8 == len(all_logs(clean))
    assert all_logs(clean) == all_logs(dropped)
    assert TaskStatus.COMPLETED == dropped[-1].status
    assert clean[-1].output == dropped[-1].output
    ranks = [u.status.rank for u in dropped]
    assert sorted(ranks) == ranks


@pytest.mark.parametrize("drop_after", [1, 2])
async def test_ndjson_reconnect_reconciles_from_snapshot(
    drop_after: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that answers NDJSON (no replay) is reconciled from its fresh snapshots."""
    monkeypatch.setattr("inferencesh._reader.ACCEPT", "application/x-ndjson")
    emu = fast_emulator(sim_steps=6, drop_after=drop_after)
    # NDJSON carries no `retry:` hint; a small real backoff gives the task time to move
    # between reconnects that each see only a snapshot.
    options = StreamingOptions(retry_delay=0.02, retry_jitter=0.0, max_retries=8)
    with serve_in_thread(emu) as url:
        async with async_inference(api_key="k", base_url=url) as client:
            updates = await collect(client.run(SIM, stream=True, options=options))
    logs = all_logs(updates)
    assert 6 == len(logs)
    assert len(set(logs)) == len(logs)
    assert TaskStatus.COMPLETED == updates[-1].status


async def test_stream_task_reattaches(server: str) -> None:
    """stream_task follows a task created earlier with wait=False."""
    async with async_inference(api_key="k", base_url=server) as client:
        created = await client.run(SIM, wait=False)
        assert TaskStatus.RECEIVED == created.status
        updates = await collect(client.stream_task(created.id, FAST))
    assert created.id == updates[-1].id
    assert TaskStatus.COMPLETED == updates[-1].status
    assert 5 == len(all_logs(updates))


# -- run / wait outcomes --------------------------------------------------------------------------


async def test_run_returns_final_state_with_every_log(server: str) -> None:
    """await run() returns the completed task with all its log lines."""
    async with async_inference(api_key="k", base_url=server) as client:
        final = await client.run(SIM)
    assert TaskStatus.COMPLETED == final.status
    assert 5 == len(final.logs)
    assert final.output is not None


async def test_failed_task_raises_with_state(server: str) -> None:
    """A failing app raises TaskFailedError carrying the task and its error."""
    params = {"app": "x/y", "input": {"sim": {"fail": "boom"}}}
    async with async_inference(api_key="k", base_url=server) as client:
        with pytest.raises(TaskFailedError) as info:
            await client.run(params)
        streamed = await collect(client.run(params, stream=True))
    assert "boom" in str(info.value)
    assert TaskStatus.FAILED == info.value.task.status
    assert "boom" == info.value.error
    assert TaskStatus.FAILED == streamed[-1].status


async def test_cancelled_task_raises(server: str) -> None:
    """Cancelling a held task ends run() with TaskCancelledError."""
    async with async_inference(api_key="k", base_url=server) as client:
        created = await client.run({"app": "x/y", "input": {"sim": {"hold": True}}}, wait=False)
        waiter = asyncio.create_task(client.wait_for_completion(created.id))
        await client.cancel_task(created.id)
        with pytest.raises(TaskCancelledError) as info:
            await asyncio.wait_for(waiter, 10)
    assert TaskStatus.CANCELLED == info.value.task.status


async def test_wait_for_completion_timeout(server: str) -> None:
    """wait_for_completion raises TaskTimeoutError (a TimeoutError) at its deadline."""
    async with async_inference(api_key="k", base_url=server) as client:
        created = await client.run({"app": "x/y", "input": {"sim": {"hold": True}}}, wait=False)
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            await client.wait_for_completion(created.id, timeout=0.3)
        assert isinstance(info.value, TaskTimeoutError)
        assert 0.3 <= time.monotonic() - started < 5
        assert TaskStatus.RUNNING == (await client.get_task(created.id)).status


# -- errors and retries ---------------------------------------------------------------------------


async def test_unknown_task_raises_not_found(server: str) -> None:
    """An HTTP error on the stream request is raised, never parsed as an update."""
    async with async_inference(api_key="k", base_url=server) as client:
        with pytest.raises(NotFoundError) as info:
            await collect(client.stream_task("task_missing", FAST))
        with pytest.raises(NotFoundError):
            await client.get_task("task_missing")
    assert 404 == info.value.status


async def test_401_is_not_retried() -> None:
    """A wrong key fails at once with AuthenticationError and no reconnect."""
    emu = fast_emulator(api_key="right-key")
    with serve_in_thread(emu) as url:
        async with async_inference(api_key="right-key", base_url=url) as good:
            created = await good.run(SIM, wait=False)
        async with async_inference(api_key="wrong-key", base_url=url) as client:
            started = time.monotonic()
            with pytest.raises(AuthenticationError) as info:
                await collect(client.stream_task(created.id, StreamingOptions(retry_delay=5)))
            assert time.monotonic() - started < 2
            with pytest.raises(AuthenticationError):
                await client.run(SIM)
    assert 401 == info.value.status
    assert "wrong-key" not in str(info.value)


async def test_503_then_success(server: str, emu: Emulator) -> None:
    """A 503 on the stream is retried and the stream then completes."""
    async with async_inference(api_key="k", base_url=server) as client:
        created = await client.run(SIM, wait=False)
        emu.faults.fail_next(2, status=503)
        updates = await collect(client.stream_task(created.id, FAST))
    assert TaskStatus.COMPLETED == updates[-1].status


async def test_429_on_create_is_retried(server: str, emu: Emulator) -> None:
    """POST /apps/run answered 429 (not processed) is retried, and the task made once."""
    emu.faults.fail_next(1, status=429)
    async with async_inference(api_key="k", base_url=server) as client:
        final = await client.run(SIM, options=FAST)
    assert TaskStatus.COMPLETED == final.status
    assert 1 == len(emu.tasks)


async def test_503_on_create_is_not_retried(server: str, emu: Emulator) -> None:
    """A 503 may come after the app was reached: POST /apps/run is not sent again."""
    emu.faults.fail_next(1, status=503)
    async with async_inference(api_key="k", base_url=server) as client:
        with pytest.raises(inferencesh.ServerError):
            await client.run(SIM, options=FAST)
        assert 0 == emu.faults.pending_failures
        assert TaskStatus.COMPLETED == (await client.run(SIM, options=FAST)).status


async def test_429_retry_after_is_honoured(server: str, emu: Emulator) -> None:
    """A 429 with Retry-After delays the reconnect by at least that long."""
    async with async_inference(api_key="k", base_url=server) as client:
        created = await client.run(SIM, wait=False)
        emu.faults.fail_next(1, status=429, retry_after=1)
        started = time.monotonic()
        updates = await collect(client.stream_task(created.id, FAST))
    assert time.monotonic() - started >= 1
    assert TaskStatus.COMPLETED == updates[-1].status


async def test_retries_exhausted_chains_last_failure(server: str, emu: Emulator) -> None:
    """After max_retries failures in a row the typed error carries the last one."""
    async with async_inference(api_key="k", base_url=server) as client:
        created = await client.run(SIM, wait=False)
        emu.faults.fail_next(10, status=503)
        with pytest.raises(RetriesExhaustedError) as info:
            await collect(client.stream_task(created.id, attrs.evolve(FAST, max_retries=2)))
    assert 2 == info.value.attempts
    assert isinstance(info.value.__cause__, inferencesh.ServerError)


async def test_idle_timeout_counts_as_drop() -> None:
    """A silent stream (no heartbeats) is dropped after idle_timeout and retried."""
    emu = fast_emulator(heartbeat_interval=60.0)
    with serve_in_thread(emu) as url:
        async with async_inference(api_key="k", base_url=url) as client:
            created = await client.run({"app": "x/y", "input": {"sim": {"hold": True}}}, wait=False)
            options = StreamingOptions(idle_timeout=0.2, max_retries=2, retry_delay=0)
            seen: list[TaskUpdate] = []

            async def consume() -> None:
                async for update in client.stream_task(created.id, options):
                    seen.append(update)

            with pytest.raises(RetriesExhaustedError) as info:
                await consume()
            await client.cancel_task(created.id)
    assert isinstance(info.value.__cause__, IdleTimeoutError)
    assert 3 == emu.streams_opened
    assert TaskStatus.RUNNING == seen[-1].status


async def test_heartbeats_keep_an_idle_stream_alive() -> None:
    """Heartbeats reset the idle clock: a quiet task outlives several idle timeouts."""
    emu = fast_emulator(heartbeat_interval=0.05)
    with serve_in_thread(emu) as url:
        async with async_inference(api_key="k", base_url=url) as client:
            created = await client.run({"app": "x/y", "input": {"sim": {"hold": True}}}, wait=False)
            options = StreamingOptions(idle_timeout=0.3, max_retries=0)
            stream = client.stream_task(created.id, options)
            async for update in stream:
                if update.status == "running":
                    break
            late_cancel = asyncio.get_running_loop().call_later(
                1.0, lambda: asyncio.ensure_future(client.cancel_task(created.id))
            )
            rest = await collect(stream)
            late_cancel.cancel()
    assert 1 == emu.streams_opened
    assert TaskStatus.CANCELLED == rest[-1].status


# -- connection lifetime --------------------------------------------------------------------------


async def test_break_closes_connection_on_server(server: str, emu: Emulator) -> None:
    """Breaking out of async for releases the connection; the server sees it close."""
    async with async_inference(api_key="k", base_url=server) as client:
        params = {"app": "x/y", "input": {"sim": {"hold": True}}}
        async for update in client.run(params, stream=True):
            if update.status == "running":
                break
        assert await emu.async_wait_until(lambda e: e.streams_opened == 1, timeout=5)
        assert await emu.async_wait_until(lambda e: e.open_streams == 0, timeout=5)
        await client.cancel_task(update.id)


async def test_cancelling_consumer_closes_connection(server: str, emu: Emulator) -> None:
    """Cancelling the task that consumes a stream closes its connection at once."""
    started = asyncio.Event()
    async with async_inference(api_key="k", base_url=server) as client:

        async def consume() -> None:
            async for _ in client.run(
                {"app": "x/y", "input": {"sim": {"hold": True}}}, stream=True
            ):
                started.set()

        consumer = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 5)
        assert await emu.async_wait_until(lambda e: e.open_streams == 1, timeout=5)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert await emu.async_wait_until(lambda e: e.open_streams == 0, timeout=5)


async def test_fan_out_shares_one_pool(server: str) -> None:
    """Fifty concurrent streams on one client all complete."""
    async with async_inference(api_key="k", base_url=server) as client:
        runs = [collect(client.run(SIM, stream=True, options=FAST)) for _ in range(50)]
        results = await asyncio.gather(*runs)
    assert all(TaskStatus.COMPLETED == r[-1].status for r in results)
    assert all(5 == len(all_logs(r)) for r in results)


async def test_closed_client_raises_usage_error(server: str) -> None:
    """A closed client refuses further calls with UsageError."""
    client = async_inference(api_key="k", base_url=server)
    await client.get_task((await client.run(SIM, wait=False)).id)
    await client.aclose()
    with pytest.raises(UsageError):
        await client.run(SIM)


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key anywhere fails at construction and names the environment variable."""
    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    with pytest.raises(UsageError, match="INFERENCE_API_KEY"):
        async_inference()


def test_settings_fall_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key and base URL come from the environment when not passed."""
    monkeypatch.setenv("INFERENCE_API_KEY", "env-key")
    monkeypatch.setenv("INFERENCE_BASE_URL", "http://127.0.0.1:9/")
    client = async_inference()
    assert "http://127.0.0.1:9" == client.base_url
    monkeypatch.delenv("INFERENCE_BASE_URL")
    assert "https://api.inference.sh" == async_inference().base_url


async def test_api_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    """The key is absent from reprs, log records and error messages and tracebacks."""
    secret = "sk-very-secret-value"
    caplog.set_level(logging.DEBUG)
    client = async_inference(api_key=secret, base_url="http://127.0.0.1:9")
    options = StreamingOptions(max_retries=1, retry_delay=0, connect_timeout=1)
    with pytest.raises(RetriesExhaustedError) as info:
        await collect(client.stream_task("task_x", options))
    await client.aclose()
    text = "".join(traceback.format_exception(info.value))
    assert secret not in text
    assert secret not in repr(client)
    assert secret not in caplog.text
    assert "ConnectError" in text


def test_unclosed_client_in_asyncio_run_is_silent(server: str) -> None:
    """A client never closed inside asyncio.run prints no warning at exit."""
    script = textwrap.dedent(
        """
        import asyncio, gc
        from inferencesh import async_inference

        async def main():
            client = async_inference(api_key="k")
            async for update in client.run({"app": "a/b", "input": {}}, stream=True):
                pass
            print(update.status)

        asyncio.run(main())
        gc.collect()
        """
    )
    env = dict(os.environ, INFERENCE_BASE_URL=server, PYTHONWARNINGS="always", PYTHONDEVMODE="1")
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert "completed\n" == proc.stdout
    assert "" == proc.stderr
    assert 0 == proc.returncode


async def test_params_json_cannot_hold_are_a_usage_error(server: str, emu: Emulator) -> None:
    """An input JSON cannot carry (NaN, a set, an object) is refused before anything is sent."""
    async with async_inference(api_key="k", base_url=server) as client:
        for bad in (float("nan"), {1, 2}, object()):
            with pytest.raises(UsageError, match="JSON"):
                await client.run({"app": "a/b", "input": {"x": bad}}, wait=False)
    assert 0 == len(emu.tasks)


async def test_wait_for_completion_keeps_the_clients_total_timeout(server: str) -> None:
    """Without a `timeout` of its own, wait_for_completion keeps the client's total_timeout."""
    options = StreamingOptions(total_timeout=0.3, retry_delay=0.0, retry_jitter=0.0)
    async with async_inference(api_key="k", base_url=server, streaming_options=options) as c:
        created = await c.run(HOLD, wait=False)
        with pytest.raises(inferencesh.TaskTimeoutError):
            await c.wait_for_completion(created.id)
        await c.cancel_task(created.id)


def test_invalid_options_are_a_usage_error() -> None:
    """Options are checked when made: a wrong value is a UsageError naming the field."""
    with pytest.raises(UsageError, match="total_timeout"):
        StreamingOptions(total_timeout=0)
    with pytest.raises(UsageError, match="chunk_size"):
        StreamingOptions(chunk_size=0)
