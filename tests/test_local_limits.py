"""The emulator's bounds: simulation knobs, logs, live tasks and chats, lifetimes, memory."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest
from conftest import LocalServer

from inferencesh.local import Emulator

pytestmark = pytest.mark.anyio

Server = Callable[..., AbstractAsyncContextManager[LocalServer]]
HOLD = {"sim": {"hold": True}}


async def post(srv: LocalServer, path: str, body: Any) -> tuple[int, Any, Any]:
    async with srv.session.post(path, json=body) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


@pytest.mark.parametrize(
    ("knob", "value"),
    [("steps", 1001), ("step_delay", 61), ("log_bytes", 4097), ("fail", "x" * 1001)],
)
async def test_simulation_knobs_are_capped(local_server: Server, knob: str, value: Any) -> None:
    async with local_server() as srv:
        status, body, _ = await post(
            srv, "/apps/run", {"app": "a/b", "input": {"sim": {knob: value}}}
        )
    assert status == 400
    assert f"input.sim.{knob}" in body["detail"]


async def test_a_tasks_logs_are_capped_with_one_notice(local_server: Server) -> None:
    """The worst simulated task (most steps, longest lines) keeps `max_log_bytes` of logs."""
    async with local_server(max_log_bytes=20_000, sim_step_delay=0.0) as srv:
        task = await srv.create(input={"sim": {"steps": 1000, "log_bytes": 4096}})
        await srv.wait_status(task["id"], 10)
        logs = (await srv.get(task["id"]))["logs"]
    assert sum(len(line) for line in logs) <= 20_000
    assert logs[-1].startswith("[inferencesh emulator: log truncated at 20000 bytes")
    assert all(line.startswith("step ") for line in logs[:-1])


async def test_live_tasks_are_capped_with_429(local_server: Server) -> None:
    """Beyond `max_live_tasks`, 429 with Retry-After; a slot frees when a task ends."""
    async with local_server(max_live_tasks=3) as srv:
        held = [await srv.create(input=HOLD) for _ in range(3)]
        status, body, headers = await post(srv, "/apps/run", {"app": "a/b", "input": HOLD})
        assert status == 429
        assert headers["Content-Type"] == "application/problem+json"
        assert headers["Retry-After"] == "1"
        assert "at most 3" in body["detail"]
        await srv.cancel(held[0]["id"])
        await srv.wait_status(held[0]["id"], 12)
        await srv.create(input=HOLD)


async def test_busy_chats_are_capped_with_429(local_server: Server) -> None:
    async with local_server(max_live_chats=1) as srv:
        first, _, _ = await post(srv, "/agents/run", {"agent": "a/b", "input": {"text": "hi"}})
        status, body, headers = await post(
            srv, "/agents/run", {"agent": "a/b", "input": {"text": "hi"}}
        )
    assert first == 200
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert "at most 1" in body["detail"]


async def test_tasks_and_runs_that_never_end_are_reaped(local_server: Server) -> None:
    """A hold task, and an agent run waiting on a tool, fail after `task_lifetime`."""
    async with local_server(task_lifetime=0.3, tool_timeout=60) as srv:
        task = await srv.create(input=HOLD)
        _, run, _ = await post(srv, "/agents/run", {"agent": "a/b", "input": {"text": "hi"}})
        await srv.wait_status(task["id"], 11, timeout=5)
        failed = await srv.get(task["id"])
        chat_id = run["data"]["assistant_message"]["chat_id"]

        def run_failed(emu: Emulator) -> bool:
            chat = emu.chat_snapshot(chat_id) or {}
            return (chat.get("active_run") or {}).get("state") == "failed"

        assert await srv.emu.async_wait_until(run_failed, timeout=5)
        chat = srv.emu.chat_snapshot(chat_id)
    assert "task lifetime (0.3 s)" in failed["error"]
    assert chat is not None
    assert "task lifetime (0.3 s)" in chat["active_run"]["error"]


async def test_finished_tasks_hold_their_input_once(local_server: Server) -> None:
    """1,000 finished tasks with 20 KB inputs hold about 20 MB, not ten copies of each."""
    async with local_server(sim_steps=1, sim_step_delay=0.0, transition_delay=0.0) as srv:
        prompt = "p" * 20_000
        ids = [(await srv.create(input={"prompt": prompt}))["id"] for _ in range(1000)]
        assert await srv.emu.async_wait_until(lambda emu: emu.tasks.live == 0, timeout=30)
        held = srv.emu.budget.used
        task = srv.emu.tasks.get(ids[-1])
        assert task is not None
        snapshots = [event.frame for event in task.log.after(0, 100) or [] if event.frame.full]
    assert held < 1000 * 26_000, held
    assert len(snapshots) >= 8, "received, queued, ... completed: each a whole task"
    assert {id(frame.shared) for frame in snapshots} == {id(task.input_json)}


async def test_the_memory_budget_drops_finished_tasks_then_refuses(local_server: Server) -> None:
    """Over `memory_budget`, the oldest finished tasks go first; when live tasks alone fill
    it, new tasks get 429 (and the finished ones that fit are still there)."""
    big = {"prompt": "b" * 150_000}
    async with local_server(
        memory_budget=1_000_000, sim_steps=1, sim_step_delay=0.0, transition_delay=0.0
    ) as srv:
        done = []
        for _ in range(10):
            task = await srv.create(input=big)
            await srv.wait_status(task["id"], 10)
            done.append(task["id"])
        assert srv.emu.budget.used <= 1_000_000
        async with srv.session.get(f"/tasks/{done[0]}") as resp:
            assert resp.status == 404, "the oldest finished task made room"
        await srv.get(done[-1])
        statuses = []
        for _ in range(8):
            status, _, _ = await post(srv, "/apps/run", {"app": "a/b", "input": {**big, **HOLD}})
            statuses.append(status)
        assert statuses[:3] == [200, 200, 200]
        assert statuses[-1] == 429
        assert srv.emu.budget.used <= 1_000_000


READY = re.compile(r"inferencesh emulator listening on (http://127\.0\.0\.1:\d+)\n")
# The documented bound for the default settings (README, "Limits"): the emulator's resident
# memory stays below this whatever clients send.
RSS_BOUND_MIB = 900


def peak_rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        found = re.search(r"VmHWM:\s+(\d+) kB", status.read())
    assert found
    return int(found.group(1)) // 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_rss_stays_under_the_documented_bound() -> None:
    """A thousand unfinished requests, the worst simulated tasks, thousands of never-ending
    tasks, big inputs and big messages against a server with default settings: its peak RSS
    stays under the documented bound."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferencesh", "serve", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    codes: dict[int, int] = {}
    idle: list[asyncio.StreamWriter] = []
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            url = READY.fullmatch((await proc.stdout.readline()).decode())
        assert url
        connector = aiohttp.TCPConnector(limit=100)
        headers = {"Authorization": "Bearer k"}
        async with (
            asyncio.timeout(120),
            aiohttp.ClientSession(url.group(1), connector=connector, headers=headers) as session,
        ):

            async def send(path: str, body: Any, count: int) -> None:
                data = json.dumps(body).encode()

                async def one() -> None:
                    async with session.post(path, data=data) as resp:
                        await resp.read()
                        codes[resp.status] = codes.get(resp.status, 0) + 1

                await asyncio.gather(*(one() for _ in range(count)))

            host, port = url.group(1).removeprefix("http://").split(":")
            for _ in range(1000):  # connections that never finish their request
                _, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"POST /apps/run HTTP/1.1\r\nContent-Length: 1000000\r\n")
                idle.append(writer)
            worst = {"sim": {"steps": 1000, "step_delay": 0, "log_bytes": 4096}}
            await send("/apps/run", {"app": "a/b", "input": worst}, 300)
            await send("/apps/run", {"app": "a/b", "input": {"prompt": "p" * 20_000}}, 1000)
            await send("/apps/run", {"app": "a/b", "input": HOLD}, 3000)
            huge = {"prompt": "h" * 1_000_000, **HOLD}
            await send("/apps/run", {"app": "a/b", "input": huge}, 400)
            await send("/agents/run", {"agent": "a/b", "input": {"text": "t" * 1_000_000}}, 400)
        peak = peak_rss_mib(proc.pid)
    finally:
        for writer in idle:
            writer.close()
        proc.terminate()
        await proc.wait()
    assert codes.get(500, 0) == 0
    assert codes.get(429, 0) > 0, "the limits were reached"
    assert peak < RSS_BOUND_MIB, (peak, codes)


async def test_request_bodies_handled_at_once_are_bounded() -> None:
    """Sixteen largest bodies at once fill the gate: a seventeenth request waits until one of
    them is done (here: until the stalled ones time out), then is answered normally."""
    from inferencesh.local import EmulatorOptions, HttpLimits, serve

    limits = HttpLimits(max_body_bytes=1000, body_timeout=0.5)
    async with serve(EmulatorOptions(http=limits)) as url:
        host, port = url.removeprefix("http://").split(":")
        stalled = []
        loop = asyncio.get_running_loop()
        # Measured from before the first body: the gate frees when the first stalled body
        # times out (body_timeout after it began), however slowly the machine opens the rest.
        first_body = loop.time()
        try:
            for _ in range(16):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(
                    b"POST /apps/run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
                )
                await writer.drain()
                stalled.append((reader, writer))
            async with aiohttp.ClientSession(url, headers={"Authorization": "Bearer k"}) as s:
                async with asyncio.timeout(10):
                    resp = await s.post("/apps/run", json={"app": "a/b", "input": HOLD})
                waited = loop.time() - first_body
                assert resp.status == 200, await resp.text()
            answers = [await asyncio.wait_for(reader.read(), 5) for reader, _ in stalled]
        finally:
            for _, writer in stalled:
                writer.close()
    assert waited >= 0.45, "it waited for the gate, not beside the sixteen bodies"
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[0][:80]


async def test_a_refused_first_message_leaves_no_chat(local_server: Server) -> None:
    async with local_server(max_live_chats=1) as srv:
        first, _, _ = await post(srv, "/agents/run", {"agent": "a/b", "input": {"text": "hi"}})
        statuses = [
            (await post(srv, "/agents/run", {"agent": "a/b", "input": {"text": "hi"}}))[0]
            for _ in range(20)
        ]
        assert first == 200
        assert set(statuses) == {429}
        assert len(srv.emu.chats) == 1


async def test_a_forgotten_chat_ends_its_streams(local_server: Server) -> None:
    """An open chat stream does not keep a chat the emulator dropped: the stream ends, and
    the chat is then unknown."""
    from inferencesh.local import AgentContext

    async def quick(text: str, ctx: AgentContext) -> str:
        return "done"

    async with local_server(finished_task_ttl=0.3, agents={"acme/quick": quick}) as srv:
        _, run, _ = await post(srv, "/agents/run", {"agent": "acme/quick", "input": {"text": "x"}})
        chat_id = run["data"]["assistant_message"]["chat_id"]
        headers = {"Accept": "text/event-stream"}
        async with srv.session.get(f"/chats/{chat_id}/stream", headers=headers) as stream:
            body = await asyncio.wait_for(stream.read(), 10)  # ends once the chat is dropped
        async with srv.session.get(f"/chats/{chat_id}") as resp:
            assert resp.status == 404
    assert b"event" in body or b"data:" in body


async def test_a_stream_request_with_a_body_does_not_hold_the_gate() -> None:
    """Bodies sent with GETs (a stream's) are never read, so they take no share of the gate."""
    from inferencesh.local import EmulatorOptions, HttpLimits, serve

    limits = HttpLimits(max_body_bytes=1000)
    async with serve(EmulatorOptions(http=limits)) as url:
        host, port = url.removeprefix("http://").split(":")
        async with aiohttp.ClientSession(url, headers={"Authorization": "Bearer k"}) as s:
            created = await (await s.post("/apps/run", json={"app": "a/b", "input": HOLD})).json()
            task_id = created["data"]["id"]
            writers = []
            try:
                for _ in range(20):
                    _, writer = await asyncio.open_connection(host, int(port))
                    writer.write(
                        f"GET /tasks/{task_id}/stream HTTP/1.1\r\nHost: x\r\n"
                        "Authorization: Bearer k\r\nContent-Length: 1000\r\n\r\n".encode()
                    )
                    writers.append(writer)
                async with asyncio.timeout(5):
                    resp = await s.post("/apps/run", json={"app": "a/b", "input": {}})
                assert resp.status == 200
            finally:
                for writer in writers:
                    writer.close()
