"""`serve --data-dir`: tasks, event logs and chats survive a restart, a SIGKILL included."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferencesh import NotFoundError, StreamingOptions, TaskStatus, TaskUpdate, async_inference
from inferencesh.local import DataDirError, Emulator, EmulatorOptions, serve

pytestmark = pytest.mark.anyio

READY = re.compile(r"inferencesh emulator listening on (http://127\.0\.0\.1:\d+)\n")
AUTH = {"Authorization": "Bearer k"}
# Reconnect quickly and for long enough to outlast a restart of the server process.
PATIENT = StreamingOptions(max_retries=60, retry_delay=0.05, max_retry_delay=0.25)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def server_process(data_dir: Path, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m inferencesh serve --data-dir DIR --port PORT`, killed on exit if still up."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferencesh", "serve", "--port", str(port),
        "--data-dir", str(data_dir), "--sim-step-delay", "0.01",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        assert READY.fullmatch(line), line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["data"]


async def read_stream(url: str, *, last_event_id: str | None = None) -> list[bytes]:
    """Every SSE block of a stream that ends by itself (a finished resource's)."""
    headers = {**AUTH, "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        async with asyncio.timeout(10):
            body = await response.read()
    return [block for block in body.split(b"\n\n") if block.startswith(b"id:")]


def event_id(block: bytes) -> int:
    """The `id:` of one SSE block."""
    first = block.split(b"\n", 1)[0]
    assert first.startswith(b"id:"), block
    return int(first[3:])


async def test_a_stream_outlives_a_sigkill_of_the_server(tmp_path: Path) -> None:
    """Killed (SIGKILL) while a client streams a running task, then restarted on the same data
    folder and port: the client's stream resumes by itself, ends with every log line emitted
    before the kill exactly once, then the "worker lost" failure. A finished task, and its
    stream, answer as they did before the kill."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with (
        server_process(tmp_path, port) as first,
        async_inference(api_key="k", base_url=url) as client,
    ):
        done = await client.run({"app": "a/b", "input": {"prompt": "kept"}})
        before = await get_json(f"{url}/tasks/{done.id}")
        done_stream = await read_stream(f"{url}/tasks/{done.id}/stream")

        params = {"app": "a/b", "input": {"sim": {"steps": 1000, "step_delay": 0.02}}}
        updates: list[TaskUpdate] = []
        stream = client.run(params, stream=True, options=PATIENT)
        restarted: asyncio.Task[None] | None = None

        async def restart() -> None:
            first.send_signal(signal.SIGKILL)
            await first.wait()
            async with server_process(tmp_path, port) as second:
                await asyncio.wait_for(second.wait(), 30)  # until the test kills it

        async with asyncio.timeout(30):
            async for update in stream:
                updates.append(update)
                logs = sum(len(u.logs) for u in updates)
                if restarted is None and logs >= 5:
                    restarted = asyncio.create_task(restart())
        assert restarted is not None
        task_id = updates[0].id
        final = await get_json(f"{url}/tasks/{task_id}")
        after = await get_json(f"{url}/tasks/{done.id}")
        after_stream = await read_stream(f"{url}/tasks/{done.id}/stream")
        # Raw reads of the restarted server (no client reconciling from snapshots): it replays
        # its persisted log, and resuming from an id before the kill continues at id + 1.
        replay = await read_stream(f"{url}/tasks/{task_id}/stream", last_event_id="0")
        half = len(replay) // 2
        resume_from = event_id(replay[half])
        resumed = await read_stream(f"{url}/tasks/{task_id}/stream", last_event_id=str(resume_from))
        restarted.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await restarted

    seen = [line for update in updates for line in update.logs]
    assert seen == final["logs"], "every line logged before the kill, exactly once, in order"
    assert len(seen) >= 5
    assert seen == [f"step {n}/1000: working on input" for n in range(1, len(seen) + 1)]
    assert updates[-1].status is TaskStatus.FAILED
    assert "worker lost" in str(updates[-1].error)
    assert final["status"] == TaskStatus.FAILED.code
    assert after == before
    assert after_stream == done_stream
    ids = [event_id(block) for block in replay]
    assert ids == list(range(1, len(ids) + 1)), ids
    assert len(ids) > len(seen) + 2  # the log of lines from before the kill was kept
    assert event_id(resumed[0]) == resume_from + 1
    assert b"short_id" not in resumed[0], "resumed with events, not a snapshot"
    assert resumed == replay[half + 1 :]


async def test_finished_and_running_work_after_a_clean_restart(tmp_path: Path) -> None:
    """In-process: a restart keeps finished tasks, chats (which take the next message) and
    the ids of events, and fails what was running."""
    options = EmulatorOptions(data_dir=tmp_path, sim_steps=3, sim_step_delay=0.0)
    async with serve(options) as url, async_inference(api_key="k", base_url=url) as client:
        done = await client.run({"app": "a/b", "input": {"prompt": "x"}})
        held = await client.run({"app": "a/b", "input": {"sim": {"hold": True}}}, wait=False)
        agent = client.agent("x/y")

        async def tool(call: Any) -> None:
            await agent.submit_tool_result(call.id, "found")

        first = await agent.send_message("first", on_tool_call=tool)
        chat_before = await get_json(f"{url}/chats/{agent.chat_id}")
        stream_before = await read_stream(f"{url}/tasks/{done.id}/stream", last_event_id="0")

    async with serve(options) as url, async_inference(api_key="k", base_url=url) as client:
        assert (await client.get_task(done.id)).output == done.output
        stopped = await client.get_task(held.id)
        assert stopped.status is TaskStatus.FAILED
        assert await get_json(f"{url}/chats/{agent.chat_id}") == chat_before
        assert await read_stream(f"{url}/tasks/{done.id}/stream", last_event_id="0") == (
            stream_before
        )
        again = client.agent("x/y", chat_id=agent.chat_id)

        async def tool2(call: Any) -> None:
            await again.submit_tool_result(call.id, "found")

        second = await again.send_message("second", on_tool_call=tool2)
        assert "turn 2" in second.text
        assert first.id != second.id


async def test_a_long_task_is_checkpointed_and_pruned(tmp_path: Path) -> None:
    """More step updates than the replay window: the database keeps a checkpoint and the
    window, and a reload rebuilds the exact logs and resumes an id inside the window."""
    options = EmulatorOptions(
        data_dir=tmp_path, max_events_per_task=20, sim_step_delay=0.0, transition_delay=0.0
    )
    async with serve(options) as url, async_inference(api_key="k", base_url=url) as client:
        done = await client.run({"app": "a/b", "input": {"sim": {"steps": 600}}})
        tail_before = await read_stream(f"{url}/tasks/{done.id}/stream", last_event_id="600")
    with contextlib.closing(sqlite3.connect(tmp_path / "emulator.sqlite3")) as db:
        rows = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert rows < 300, "old events are pruned from the database"
    async with serve(options) as url, async_inference(api_key="k", base_url=url) as client:
        again = await client.get_task(done.id)
        assert again.logs == done.logs
        assert len(again.logs) == 600
        assert await read_stream(f"{url}/tasks/{done.id}/stream", last_event_id="600") == (
            tail_before
        )


async def test_expired_tasks_are_not_reloaded(tmp_path: Path) -> None:
    options = EmulatorOptions(data_dir=tmp_path, sim_steps=1, sim_step_delay=0.0)
    async with serve(options) as url, async_inference(api_key="k", base_url=url) as client:
        done = await client.run({"app": "a/b", "input": {}})
    async with (
        serve(EmulatorOptions(data_dir=tmp_path, finished_task_ttl=0.0)) as url,
        aiohttp.ClientSession() as session,
        session.get(f"{url}/tasks/{done.id}", headers=AUTH) as response,
    ):
        assert response.status == 404
    with contextlib.closing(sqlite3.connect(tmp_path / "emulator.sqlite3")) as db:
        assert db.execute("SELECT COUNT(*) FROM resources").fetchone()[0] == 0


async def test_one_emulator_per_data_folder(tmp_path: Path) -> None:
    """A second server on a folder in use, or a folder whose database is something else,
    is refused with DataDirError (an OSError the CLI prints), not a traceback."""
    async with serve(EmulatorOptions(data_dir=tmp_path)):
        with pytest.raises(DataDirError, match="in use"):
            async with serve(EmulatorOptions(data_dir=tmp_path)):
                pass
    other = tmp_path / "other"
    other.mkdir()
    (other / "emulator.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataDirError, match=r"not an emulator database|cannot use"):
        async with serve(EmulatorOptions(data_dir=other)):
            pass


def test_the_cli_reports_a_folder_in_use(tmp_path: Path) -> None:
    """`serve --data-dir` on a folder another emulator holds: one line, exit status 1."""
    import subprocess

    with subprocess.Popen(
        [sys.executable, "-m", "inferencesh", "serve", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as first:  # fmt: skip
        try:
            assert first.stdout is not None
            assert "listening" in first.stdout.readline()
            second = subprocess.run(
                [sys.executable, "-m", "inferencesh", "serve", "--data-dir", str(tmp_path)],
                capture_output=True, text=True, timeout=30, env={**os.environ},
            )  # fmt: skip
        finally:
            first.kill()
    assert second.returncode == 1
    assert "in use by another running emulator" in second.stderr
    assert "Traceback" not in second.stderr


async def test_a_failing_disk_stops_persistence_not_the_emulator(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write that fails (here the database may not grow: "database or disk is full") is
    logged once as an error; tasks go on in memory and complete."""
    emu = Emulator(EmulatorOptions(data_dir=tmp_path, sim_steps=50, sim_step_delay=0.0))
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        journal = emu._journal
        assert journal is not None
        pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
        journal._db.execute(f"PRAGMA max_page_count={pages}")
        with caplog.at_level("ERROR", logger="inferencesh.local"):
            done = await client.run({"app": "a/b", "input": {"prompt": "x" * 5000}})
            again = await client.run({"app": "a/b", "input": {}})
    assert done.status is TaskStatus.COMPLETED
    assert again.status is TaskStatus.COMPLETED
    stopped = [r for r in caplog.records if "persistence stopped" in r.getMessage()]
    assert len(stopped) == 1
    assert "full" in stopped[0].getMessage()
    assert journal.failure is not None


async def test_an_unreadable_record_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = EmulatorOptions(data_dir=tmp_path, sim_steps=1, sim_step_delay=0.0)
    async with serve(options) as url, async_inference(api_key="k", base_url=url) as client:
        kept = await client.run({"app": "a/b", "input": {}})
        broken = await client.run({"app": "a/b", "input": {}})
    with contextlib.closing(sqlite3.connect(tmp_path / "emulator.sqlite3")) as db:
        db.execute("UPDATE events SET head = '{not json' WHERE resource_id = ?", (broken.id,))
        db.execute("UPDATE resources SET state_seq = 0 WHERE id = ?", (broken.id,))
        db.commit()
    with caplog.at_level("WARNING", logger="inferencesh.local"):
        async with serve(options) as url, async_inference(api_key="k", base_url=url) as client:
            assert (await client.get_task(kept.id)).status is TaskStatus.COMPLETED
            with pytest.raises(NotFoundError):
                await client.get_task(broken.id)
    assert any(broken.id in record.getMessage() for record in caplog.records)


async def test_a_chatty_run_is_checkpointed_so_its_events_are_pruned(tmp_path: Path) -> None:
    """An agent writing thousands of pieces in one run: the database keeps a bounded window
    (checkpoints move during the run), and a reload rebuilds the whole answer."""
    from inferencesh.local import AgentContext

    async def chatty(text: str, ctx: AgentContext) -> None:
        for n in range(3000):
            ctx.say(f"{n} ")
            if n % 100 == 0:
                await asyncio.sleep(0)

    options = EmulatorOptions(
        data_dir=tmp_path, max_events_per_task=20, agents={"a/chatty": chatty}
    )
    async with serve(options) as url, async_inference(api_key="k", base_url=url) as client:
        reply = await client.agent("a/chatty").send_message("go")
    with contextlib.closing(sqlite3.connect(tmp_path / "emulator.sqlite3")) as db:
        rows = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert rows < 400, rows
    async with serve(options) as url:
        chat = await get_json(f"{url}/chats/{reply.chat_id}")
    assert chat["output"] == reply.text == "".join(f"{n} " for n in range(3000))
