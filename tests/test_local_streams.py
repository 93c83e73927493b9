"""Emulator streams with plain aiohttp: framing, heartbeats, resume, faults, bounds, scale."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from typing import Any

import aiohttp
import pytest

from inferencesh.local import AppContext, Emulator, EmulatorOptions, serve

pytestmark = pytest.mark.anyio

HEARTBEAT = '{"type":"heartbeat"}'
SSE = "text/event-stream"


def status_of(event: dict[str, Any]) -> int:
    return int(event["data"]["status"] if "fields" in event else event["status"])


def snapshot_sent(emu: Emulator) -> bool:
    """Whether the (only) stream has written its first event (it may be closed already)."""
    if emu.streams_opened != 1:
        return False
    return emu.open_streams == 0 or any(s["events_sent"] == 1 for s in emu.stream_stats())


# -- negotiation and NDJSON framing ---


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/x-ndjson"),
        ("*/*", "application/x-ndjson"),
        ("application/json", "application/x-ndjson"),
        ("application/x-ndjson", "application/x-ndjson"),
        ("text/event-stream", "text/event-stream"),
        ("text/event-stream, application/x-ndjson", "text/event-stream"),
        ("application/x-ndjson;q=0.5, text/event-stream", "application/x-ndjson"),
        ("text/html, TEXT/EVENT-STREAM; q=0.9", "text/event-stream"),
    ],
)
async def test_accept_header_picks_the_framing(
    local_server: Any, accept: str | None, expected: str
) -> None:
    """SSE or NDJSON on the same URL, by Accept; first listed wins; default NDJSON."""
    async with local_server() as srv:
        task = await srv.create("a/b", {"sim": {"steps": 1}})
        read = await srv.read_stream(task["id"], accept=accept)
        assert read.status == 200
        assert read.headers["Content-Type"] == expected
        assert read.headers["Cache-Control"] == "no-cache"
        assert read.headers["X-Accel-Buffering"] == "no"
        if expected == "text/event-stream":
            assert read.lines[0].startswith("retry:")
        else:
            json.loads(read.lines[0])


async def test_ndjson_framing_snapshot_first_terminal_last(local_server: Any) -> None:
    """NDJSON: no charset, ASCII-escaped lines, full snapshot first, full terminal, then close."""
    async with local_server(sim_steps=3, sim_step_delay=0.02, transition_delay=0.01) as srv:
        task = await srv.create("a/b", {"prompt": "caf\u00e9 \u2028 \U0001f305"})
        read = await srv.read_stream(task["id"])  # the helper asserts ASCII and "\n" endings
        assert read.error is None
        assert read.headers["Content-Type"] == "application/x-ndjson"
        events = read.ndjson()
        assert "short_id" in events[0]
        assert events[0]["id"] == task["id"]
        final = events[-1]
        assert final["status"] == 10
        assert final["input"]["prompt"] == "caf\u00e9 \u2028 \U0001f305"
        assert final["session_id"] is None
        assert isinstance(final["output"], dict)
        # The snapshot's logs plus every step's new lines are exactly the final logs.
        logs = list(events[0]["logs"])
        for event in events[1:-1]:
            if "fields" in event:
                logs.extend(event["data"].get("logs", []))
        assert logs == final["logs"]
        statuses = [status_of(e) for e in events]
        assert statuses == sorted(statuses)


async def test_ndjson_heartbeats(local_server: Any) -> None:
    """NDJSON sends {"type":"heartbeat"} lines while nothing happens."""
    async with local_server(heartbeat_interval=0.05) as srv:
        task = await srv.create("a/b", {"sim": {"hold": True}})
        await srv.wait_status(task["id"], 7)
        heartbeats = asyncio.Event()
        seen: list[str] = []

        def on_line(line: str) -> None:
            seen.append(line)
            if seen.count(HEARTBEAT) >= 3:
                heartbeats.set()

        stream = asyncio.create_task(srv.read_stream(task["id"], on_line=on_line))
        async with asyncio.timeout(5):
            await heartbeats.wait()
        await srv.cancel(task["id"])
        read = await asyncio.wait_for(stream, 5)
        assert read.lines[0] != HEARTBEAT
        assert json.loads(read.lines[0])["status"] == 7
        events = [json.loads(line) for line in read.lines if line != HEARTBEAT]
        assert [status_of(e) for e in events] == [7, 8, 12]
        assert read.lines[-1] != HEARTBEAT


async def test_finished_task_stream_sends_terminal_state_and_closes(local_server: Any) -> None:
    """A stream on a finished task is one terminal snapshot, then the end."""
    async with local_server() as srv:
        task = await srv.create("a/b", {"sim": {"steps": 2}})
        await srv.wait_status(task["id"], 10)
        ndjson = await srv.read_stream(task["id"])
        assert [e["status"] for e in ndjson.ndjson()] == [10]
        assert ndjson.ndjson()[0] == await srv.get(task["id"])
        sse = await srv.read_stream(task["id"], accept="text/event-stream")
        blocks = sse.sse()
        assert blocks[0].retry == 1000
        events = sse.sse_events()
        assert len(events) == 1
        assert events[0].json() == await srv.get(task["id"])
        last_seq = srv.emu.tasks.get(task["id"]).log.last_seq  # type: ignore[union-attr]
        assert events[0].id == str(last_seq)


# -- SSE framing, ids and resume ---


async def test_sse_retry_hint_first_and_heartbeat_comments(local_server: Any) -> None:
    """SSE: `retry:` is the first line, heartbeats are comments, events have increasing ids."""
    async with local_server(heartbeat_interval=0.05, retry_ms=1234) as srv:
        task = await srv.create("a/b", {"sim": {"hold": True}})
        await srv.wait_status(task["id"], 7)
        comments = asyncio.Event()
        seen: list[str] = []

        def on_line(line: str) -> None:
            seen.append(line)
            if seen.count(": heartbeat") >= 2:
                comments.set()

        stream = asyncio.create_task(
            srv.read_stream(task["id"], accept="text/event-stream", on_line=on_line)
        )
        async with asyncio.timeout(5):
            await comments.wait()
        await srv.cancel(task["id"])
        read = await asyncio.wait_for(stream, 5)
        assert read.lines[:2] == ["retry: 1234", ""]
        blocks = read.sse()
        assert blocks[0].retry == 1234
        assert blocks[0].data is None
        assert {b.comment for b in blocks if b.data is None and b.retry is None} == {"heartbeat"}
        events = read.sse_events()
        ids = [int(e.id) for e in events]  # type: ignore[arg-type]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert [status_of(e.json()) for e in events] == [7, 8, 12]
        # The snapshot's id is the latest seq when it was taken.
        assert ids[0] == 7


async def test_replay_after_every_cut_point_of_a_finished_task(local_server: Any) -> None:
    """For every N, Last-Event-ID: N replays exactly the events after N, byte for byte."""
    async with local_server(sim_steps=4) as srv:
        task = await srv.create("a/b")
        await srv.wait_status(task["id"], 10)
        full = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=0)
        events = full.sse_events()
        total = len(events)
        assert [e.id for e in events] == [str(i) for i in range(1, total + 1)]
        assert total == 7 + 4 + 2
        assert not any(line.startswith("event:") for line in full.lines)  # type "message"
        for cut in range(total + 1):
            read = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=cut)
            assert read.error is None
            assert read.lines[0] == "retry: 1000"
            assert read.sse_events() == events[cut:], cut


@pytest.mark.parametrize("bad", ["abc", "-1", "", "1.5", "99", "\u0661"])
async def test_invalid_or_unknown_last_event_id_falls_back_to_a_snapshot(
    local_server: Any, bad: str
) -> None:
    """A Last-Event-ID that is not a retained seq gets the full-snapshot behaviour."""
    async with local_server(sim_steps=2) as srv:
        task = await srv.create("a/b")
        await srv.wait_status(task["id"], 10)
        headers = {"Accept": "text/event-stream", "Last-Event-ID": bad}
        async with srv.session.get(f"/tasks/{task['id']}/stream", headers=headers) as resp:
            body = (await resp.read()).decode()
        lines = body.split("\n")
        assert lines[0] == "retry: 1000"
        data = [line for line in lines if line.startswith("data:")]
        ids = [line for line in lines if line.startswith("id:")]
        assert len(data) == 1
        assert json.loads(data[0][5:]) == await srv.get(task["id"])
        assert ids == ["id:11"]


async def test_replay_older_than_the_retained_window_falls_back(local_server: Any) -> None:
    """Only the newest max_events_per_task events are replayable; older ids get a snapshot."""
    async with local_server(sim_steps=4, max_events_per_task=5) as srv:
        task = await srv.create("a/b")
        await srv.wait_status(task["id"], 10)
        last = 13
        exact = await srv.read_stream(
            task["id"], accept="text/event-stream", last_event_id=last - 5
        )
        assert [e.id for e in exact.sse_events()] == [str(i) for i in range(last - 4, last + 1)]
        old = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=last - 6)
        events = old.sse_events()
        assert len(events) == 1
        assert events[0].id == str(last)
        assert "short_id" in events[0].json()


async def test_ndjson_lines_carry_event_ids_and_resume(local_server: Any) -> None:
    """NDJSON lines carry the SSE id as `event_id`; Last-Event-ID resumes them as in SSE."""
    async with local_server(sim_steps=3) as srv:
        task = await srv.create("a/b")
        await srv.wait_status(task["id"], 10)
        sse = (await srv.read_stream(task["id"], accept=SSE, last_event_id=0)).sse_events()
        full = await srv.read_stream(task["id"], last_event_id=0)
        assert [int(e.id) for e in sse] == full.ndjson_ids()  # type: ignore[arg-type]
        assert [e.json() for e in sse] == full.ndjson()
        resumed = await srv.read_stream(task["id"], last_event_id=2)
        assert full.ndjson_ids()[2:] == resumed.ndjson_ids()
        assert full.ndjson()[2:] == resumed.ndjson()
        # Without Last-Event-ID (the official clients): one snapshot of the finished task.
        fresh = await srv.read_stream(task["id"])
        assert [e["status"] for e in fresh.ndjson()] == [10]
        assert fresh.ndjson_ids() == [full.ndjson_ids()[-1]]


# -- drop_after ---


async def test_drop_after_cuts_the_connection_abruptly(local_server: Any) -> None:
    """drop_after N: N events (heartbeats not counted), then a broken body, not a clean end."""
    async with local_server(
        drop_after=3, heartbeat_interval=0.01, sim_steps=6, sim_step_delay=0.03
    ) as srv:
        task = await srv.create("a/b")
        raw = await srv.raw_stream(task["id"])
        assert raw.status == 200
        assert not raw.complete  # no final empty chunk: the body was cut
        events = [line for line in raw.lines if line != HEARTBEAT]
        assert len(events) == 3
        assert HEARTBEAT in raw.lines  # heartbeats flowed and did not count
        raw_sse = await srv.raw_stream(task["id"], accept="text/event-stream")
        assert not raw_sse.complete
        assert sum(line.startswith("data:") for line in raw_sse.lines) == 3
        # aiohttp reports the cut as a payload error, never as a clean end of stream.
        read = await srv.read_stream(task["id"])
        assert isinstance(read.error, aiohttp.ClientPayloadError)
        assert len([line for line in read.lines if line != HEARTBEAT]) <= 3
        # The task itself is unaffected.
        await srv.wait_status(task["id"], 10)
        assert await srv.emu.async_wait_until(lambda e: e.open_streams == 0)
        srv.emu.faults.drop_after = None
        whole = await srv.raw_stream(task["id"])
        assert whole.complete


@pytest.mark.parametrize("cut", range(1, 13))
async def test_resume_after_a_drop_at_every_cut_point_loses_nothing(
    local_server: Any, cut: int
) -> None:
    """Dropped after `cut` events, a resume with Last-Event-ID gets the rest: no gap, no dup."""
    async with local_server(sim_steps=4, sim_step_delay=0.01, transition_delay=0.005) as srv:
        srv.emu.faults.drop_after = cut
        task = await srv.create("a/b")
        first = await srv.raw_stream(task["id"], accept="text/event-stream", last_event_id=0)
        assert not first.complete
        received = first.sse_events()
        assert len(received) == cut
        srv.emu.faults.drop_after = None
        rest = await srv.read_stream(
            task["id"], accept="text/event-stream", last_event_id=received[-1].id
        )
        assert rest.error is None
        everything = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=0)
        assert received + rest.sse_events() == everything.sse_events()
        assert everything.sse_events()[-1].json()["status"] == 10


@pytest.mark.parametrize("cut", [1, 2, 4])
async def test_resume_after_a_drop_that_started_with_a_snapshot(
    local_server: Any, cut: int
) -> None:
    """A stream that began with a snapshot resumes from the snapshot's id exactly."""
    async with local_server(sim_steps=5, sim_step_delay=0.02) as srv:
        task = await srv.create("a/b", {"sim": {"hold_at": "preparing"}})
        await srv.wait_status(task["id"], 4)
        srv.emu.faults.drop_after = cut
        stream = asyncio.create_task(srv.raw_stream(task["id"], accept="text/event-stream"))
        assert await srv.emu.async_wait_until(snapshot_sent)
        await srv.cancel(task["id"])  # produces two more events: 8 and 12
        first = await asyncio.wait_for(stream, 5)
        received = first.sse_events()
        assert received[0].id == "4"
        assert first.complete == (cut > 3)
        assert len(received) == min(cut, 3)
        srv.emu.faults.drop_after = None
        rest = await srv.read_stream(
            task["id"], accept="text/event-stream", last_event_id=received[-1].id
        )
        everything = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=0)
        assert received[1:] + rest.sse_events() == everything.sse_events()[4:]


# -- bounded resources ---


async def test_stalled_reader_does_not_make_the_server_buffer(local_server: Any) -> None:
    """A reader that stops reading holds back the writer; server memory stays bounded.

    The app publishes ~64 MB of partial outputs while one client reads nothing. If the server
    queued events per connection, wrote without awaiting, or kept the whole log, the bytes
    accepted for that connection or the traced memory would grow towards 64 MB.
    """
    gate = asyncio.Event()
    blob = "x" * 65536
    count = 1000

    async def firehose(data: dict[str, Any], ctx: AppContext) -> Any:
        await gate.wait()
        for i in range(count):
            ctx.partial({"i": i, "blob": blob})
            await asyncio.sleep(0)
        return {"count": count}

    async with local_server(apps={"test/firehose": firehose}, max_events_per_task=50) as srv:
        task = await srv.create("test/firehose")
        async with srv.session.get(f"/tasks/{task['id']}/stream", read_bufsize=4096) as resp:
            assert resp.status == 200
            assert await srv.emu.async_wait_until(lambda e: e.open_streams == 1)
            tracemalloc.start()
            try:
                gate.set()
                await srv.wait_status(task["id"], 10, timeout=60)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            (stats,) = srv.emu.stream_stats()
            produced = count * len(blob)
            assert stats["bytes_sent"] < produced // 3, stats
            assert stats["write_buffer_size"] < 1_000_000, stats
            assert stats["cursor"] < stats["log_last_seq"] - 50, stats  # it fell far behind
            assert len(srv.emu.tasks.get(task["id"]).log) <= 50  # type: ignore[union-attr]
            assert peak < 24_000_000, f"peak traced memory {peak} bytes"

            body = await resp.read()  # now read everything that is left
        lines = [json.loads(line) for line in body.split(b"\n")[:-1]]
        # The lagging reader caught up from a fresh snapshot instead of the lost events.
        assert lines[-1]["status"] == 10
        assert lines[-1]["output"] == {"count": count}
        assert len(lines) < count
        assert sum(1 for line in lines if "short_id" in line) >= 2
        assert await srv.emu.async_wait_until(lambda e: e.open_streams == 0)


async def test_a_thousand_concurrent_streams_get_every_event() -> None:
    """1000 streams open at once (half SSE from seq 0, half NDJSON) all get every event."""
    gate = asyncio.Event()
    streams = 1000

    async def gated(data: dict[str, Any], ctx: AppContext) -> Any:
        await gate.wait()
        for step in range(1, 4):
            ctx.log(f"line {step} of {data['n']}")
            ctx.progress(step, 3)
            await asyncio.sleep(0.01)
        return {"n": data["n"]}

    emu = Emulator(
        EmulatorOptions(transition_delay=0.0, apps={"test/gated": gated}, heartbeat_interval=5.0)
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        serve(emu) as url,
        aiohttp.ClientSession(
            url,
            connector=connector,
            headers={"Authorization": "Bearer k"},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as session,
    ):

        async def one(n: int) -> tuple[int, str, list[str]]:
            async with session.post(
                "/apps/run", json={"app": "test/gated", "input": {"n": n}}
            ) as r:
                task_id = (await r.json())["data"]["id"]
            sse = n % 2 == 0
            headers = {"Accept": "text/event-stream" if sse else "application/x-ndjson"}
            if sse:
                headers["Last-Event-ID"] = "0"
            lines = []
            async with session.get(f"/tasks/{task_id}/stream", headers=headers) as resp:
                async for raw in resp.content:
                    lines.append(raw.decode("ascii"))
            return n, task_id, lines

        jobs = [asyncio.create_task(one(n)) for n in range(streams)]
        try:
            assert await emu.async_wait_until(lambda e: e.open_streams == streams, timeout=30)
            gate.set()
            results = await asyncio.wait_for(asyncio.gather(*jobs), 60)
        finally:
            for job in jobs:
                job.cancel()
    assert emu.streams_opened == streams
    assert emu.open_streams == 0
    expected_steps = [f"line {step} of {{}}" for step in range(1, 4)]
    for n, task_id, lines in results:
        if n % 2 == 0:
            assert lines[0] == "retry: 1000\n"
            data = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
            ids = [int(line[3:]) for line in lines if line.startswith("id:")]
            assert ids == list(range(1, len(ids) + 1))
            assert [status_of(e) for e in data if "fields" not in e] == [1, 2, 3, 4, 5, 6, 7, 9, 10]
        else:
            data = [json.loads(line) for line in lines]
            assert "short_id" in data[0]
        logs = list(data[0].get("logs", [])) if "fields" not in data[0] else []
        for event in data[1:]:
            if "fields" in event:
                logs.extend(event["data"].get("logs", []))
        final = data[-1]
        assert final["status"] == 10, (n, task_id)
        assert final["output"] == {"n": n}
        assert final["logs"] == [line.format(n) for line in expected_steps]
        assert logs == final["logs"], (n, task_id)
