"""The emulator's task life cycle, driven with plain aiohttp: status flow, apps, cancel, expiry."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from inferencesh import TaskStatus
from inferencesh.local import AppContext, Emulator, EmulatorOptions, _tasks

pytestmark = pytest.mark.anyio

FLOW_BEFORE_RUN = [1, 2, 3, 4, 5, 6, 7]
SNAPSHOT_KEYS = {
    "id",
    "short_id",
    "app",
    "status",
    "status_text",
    "created_at",
    "updated_at",
    "input",
    "output",
    "error",
    "session_id",
    "logs",
    "progress",
}


def status_of(event: dict[str, Any]) -> int:
    return int(event["data"]["status"] if "fields" in event else event["status"])


async def test_simulated_task_walks_the_whole_status_flow(local_server: Any) -> None:
    """Every status from received to completed is an event, in order, with steps in between."""
    async with local_server(sim_steps=4) as srv:
        created = await srv.create("google/veo-3-1-fast", {"prompt": "A sunset timelapse"})
        assert created["status"] == 1
        assert created["status_text"] == "received"
        assert set(created) == SNAPSHOT_KEYS
        assert created["id"].startswith("task_")
        assert created["logs"] == []
        assert created["output"] is None
        assert created["app"] == "google/veo-3-1-fast"
        datetime.fromisoformat(created["created_at"])

        read = await srv.read_stream(created["id"], accept="text/event-stream", last_event_id=0)
        events = read.sse_events()
        assert [int(e.id) for e in events] == list(range(1, len(events) + 1))
        payloads = [e.json() for e in events]

        snapshots = [p for p in payloads if "fields" not in p]
        steps = [p for p in payloads if "fields" in p]
        assert [p["status"] for p in snapshots] == [*FLOW_BEFORE_RUN, 9, 10]
        for p in snapshots:
            assert set(p) == SNAPSHOT_KEYS
            assert p["status_text"] == TaskStatus.parse(p["status"]).value
        # The steps sit between running (7) and uploading (9).
        first_step = payloads.index(steps[0])
        assert payloads[first_step - 1]["status"] == 7
        assert payloads[first_step + len(steps)]["status"] == 9
        assert len(steps) == 4
        for number, step in enumerate(steps, 1):
            assert step["fields"] == ["logs", "progress", "output"]
            assert set(step["data"]) == {"id", "status", "logs", "progress", "output"}
            assert step["data"]["status"] == 7
            assert step["data"]["progress"] == {"current": number, "total": 4}
            assert step["data"]["logs"] == [f"step {number}/4: working on A sunset timelapse"]
            assert step["data"]["output"]["step"] == number

        final = payloads[-1]
        assert final["status_text"] == "completed"
        assert final["logs"] == [line for s in steps for line in s["data"]["logs"]]
        assert final["progress"] == {"current": 4, "total": 4}
        assert final["output"] == {
            "text": "simulated google/veo-3-1-fast output for A sunset timelapse",
            "steps": 4,
            "input": {"prompt": "A sunset timelapse"},
        }
        assert final["error"] is None
        assert await srv.get(created["id"]) == final


async def test_default_simulated_run_takes_about_a_second(local_server: Any) -> None:
    """With the default options a simulated task takes roughly one second."""
    emu = Emulator()
    async with local_server(emu) as srv:
        started = time.monotonic()
        task = await srv.create("infsh/flux-schnell", {"prompt": "A mountain"})
        await srv.wait_status(task["id"], 10, timeout=10)
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed <= 3.0
    assert len(emu.task_snapshot(task["id"])["logs"]) == 10  # type: ignore[index]


async def test_get_task_tracks_every_transition(local_server: Any) -> None:
    """GET /tasks/{id} shows each status as it happens (held stages are observable)."""
    async with local_server() as srv:
        task = await srv.create("a/b", {"sim": {"hold_at": "setting_up"}})
        await srv.wait_status(task["id"], 6)
        got = await srv.get(task["id"])
        assert got["status"] == 6
        assert got["status_text"] == "setting_up"
        await srv.cancel(task["id"])
        await srv.wait_status(task["id"], 12)


async def test_sim_fail_fails_the_task_with_the_message(local_server: Any) -> None:
    """`sim.fail` fails at the first step; the terminal event carries the error and logs."""
    async with local_server() as srv:
        task = await srv.create("a/b", {"sim": {"fail": "boom", "steps": 3}})
        read = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=0)
        final = read.sse_events()[-1].json()
        assert final["status"] == 11
        assert final["status_text"] == "failed"
        assert final["error"] == "boom"
        assert final["output"] is None
        assert final["logs"] == ["step 1/3: working on input: failing"]


async def test_sim_log_bytes_pads_log_lines(local_server: Any) -> None:
    """`sim.log_bytes` pads each log line to about that size."""
    async with local_server() as srv:
        task = await srv.create("a/b", {"sim": {"steps": 2, "log_bytes": 200}})
        await srv.wait_status(task["id"], 10)
        logs = (await srv.get(task["id"]))["logs"]
        assert [len(line) for line in logs] == [200, 200]


async def test_registered_app_reports_logs_progress_partials_and_output(local_server: Any) -> None:
    """Calls between two awaits become one step update listing only what changed."""

    async def adder(data: dict[str, Any], ctx: AppContext) -> Any:
        assert ctx.task_id.startswith("task_")
        assert ctx.app == "test/adder@1"
        ctx.log("a")
        ctx.log("b")
        ctx.progress(1, 2)
        ctx.partial({"partial": 1})
        await asyncio.sleep(0)
        ctx.log("c")
        await asyncio.sleep(0)
        ctx.progress(2, 2)
        await asyncio.sleep(0)
        return {"sum": data["a"] + data["b"]}

    async with local_server(apps={"test/adder": adder}) as srv:
        task = await srv.create("test/adder@1", {"a": 1, "b": 2})
        read = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=0)
        steps = [e.json() for e in read.sse_events() if "fields" in e.json()]
        assert [s["fields"] for s in steps] == [
            ["logs", "progress", "output"],
            ["logs"],
            ["progress"],
        ]
        assert steps[0]["data"]["logs"] == ["a", "b"]
        assert steps[0]["data"]["output"] == {"partial": 1}
        assert steps[1]["data"] == {"id": task["id"], "status": 7, "logs": ["c"]}
        assert steps[2]["data"]["progress"] == {"current": 2, "total": 2}
        final = read.sse_events()[-1].json()
        assert final["status"] == 10
        assert final["output"] == {"sum": 3}
        assert final["logs"] == ["a", "b", "c"]


async def test_registered_app_output_is_always_an_object(local_server: Any) -> None:
    """A non-object return value is wrapped; None becomes an empty object."""

    async def text(data: dict[str, Any], ctx: AppContext) -> Any:
        return data.get("value")

    async with local_server(apps={"test/text": text}) as srv:
        first = await srv.create("test/text", {"value": "hello"})
        second = await srv.create("test/text", {})
        await srv.wait_status(first["id"], 10)
        await srv.wait_status(second["id"], 10)
        assert (await srv.get(first["id"]))["output"] == {"result": "hello"}
        assert (await srv.get(second["id"]))["output"] == {}


async def test_registered_app_that_raises_fails_the_task(local_server: Any) -> None:
    """An exception fails the task with str(exc); earlier logs survive."""

    async def broken(data: dict[str, Any], ctx: AppContext) -> Any:
        ctx.log("about to fail")
        await asyncio.sleep(0)
        raise ValueError("bad input: a")

    async def unserialisable(data: dict[str, Any], ctx: AppContext) -> Any:
        return {"value": {1, 2}}

    async with local_server(apps={"test/broken": broken, "test/set": unserialisable}) as srv:
        task = await srv.create("test/broken")
        other = await srv.create("test/set")
        await srv.wait_status(task["id"], 11)
        await srv.wait_status(other["id"], 11)
        failed = await srv.get(task["id"])
        assert failed["error"] == "bad input: a"
        assert failed["logs"] == ["about to fail"]
        assert "not JSON serializable" in (await srv.get(other["id"]))["error"]


async def test_cancellation_reaches_the_app_as_cancelled_error(local_server: Any) -> None:
    """Cancelling a running task cancels the app coroutine; the task ends cancelled."""
    started = asyncio.Event()
    seen: list[str] = []

    async def waiter(data: dict[str, Any], ctx: AppContext) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return {}

    async with local_server(apps={"test/waiter": waiter}) as srv:
        task = await srv.create("test/waiter")
        async with asyncio.timeout(5):
            await started.wait()
        await srv.cancel(task["id"])
        await srv.wait_status(task["id"], 12)
        read = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=0)
        statuses = [status_of(e.json()) for e in read.sse_events()]
        assert statuses[-3:] == [7, 8, 12]
        assert seen == ["cancelled"]


async def test_app_that_swallows_cancellation_still_ends_cancelled(local_server: Any) -> None:
    """The task ends cancelled even when the app catches CancelledError and returns."""
    started = asyncio.Event()

    async def stubborn(data: dict[str, Any], ctx: AppContext) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ctx.log("cleaning up")
        return {"done": True}

    async with local_server(apps={"test/stubborn": stubborn}) as srv:
        task = await srv.create("test/stubborn")
        async with asyncio.timeout(5):
            await started.wait()
        await srv.cancel(task["id"])
        await srv.wait_status(task["id"], 12)
        final = await srv.get(task["id"])
        assert final["output"] is None


def _never_stops(started: asyncio.Event, release: asyncio.Event) -> Any:
    """An app that swallows every cancellation and only returns once `release` is set."""

    async def stubborn(data: dict[str, Any], ctx: AppContext) -> Any:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                ctx.log("ignoring the cancel")
        return {"done": True}

    return stubborn


async def test_cancel_ends_a_task_whose_app_never_stops(
    local_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task owns its end: cancelled (12) after `CANCEL_GRACE` although its app goes on."""
    monkeypatch.setattr(_tasks, "CANCEL_GRACE", 0.2)
    started, release = asyncio.Event(), asyncio.Event()
    async with local_server(apps={"test/stubborn": _never_stops(started, release)}) as srv:
        try:
            task = await srv.create("test/stubborn")
            async with asyncio.timeout(5):
                await started.wait()
            await srv.cancel(task["id"])  # POST /tasks/{id}/cancel, not DELETE
            await srv.wait_status(task["id"], 12, timeout=3)
            assert srv.emu.tasks.live == 0
            release.set()  # the app returning now changes nothing
            await asyncio.sleep(0.05)
            final = await srv.get(task["id"])
            assert (final["status"], final["output"]) == (12, None)
        finally:
            release.set()


async def test_reaping_a_task_whose_app_never_stops_fails_it_at_once(local_server: Any) -> None:
    """A task past its lifetime is failed first, then its app cancelled: one that swallows the
    cancellation cannot keep it live, so housekeeping has nothing due (no busy loop)."""
    started, release = asyncio.Event(), asyncio.Event()
    apps = {"test/stubborn": _never_stops(started, release)}
    async with local_server(apps=apps, task_lifetime=0.3) as srv:
        try:
            task = await srv.create("test/stubborn")
            await srv.wait_status(task["id"], 11, timeout=5)
            final = await srv.get(task["id"])
            assert "task lifetime (0.3 s)" in final["error"]
            assert srv.emu.tasks.live == 0
            due = srv.emu.tasks.next_due_in()
            assert due is None or due > 1, due
            assert not release.is_set()  # the app is still going, the task is not
        finally:
            release.set()


@pytest.mark.parametrize(
    "stage", ["received", "queued", "dispatched", "preparing", "serving", "setting_up", "running"]
)
async def test_cancel_at_each_stage(local_server: Any, stage: str) -> None:
    """A task held at any stage goes to cancelling (8), then cancelled (12), and the stream ends."""
    code = TaskStatus.parse(stage).code
    async with local_server() as srv:
        task = await srv.create("a/b", {"sim": {"hold_at": stage}})
        await srv.wait_status(task["id"], code)
        stream = asyncio.create_task(srv.read_stream(task["id"]))
        assert await srv.emu.async_wait_until(
            lambda e: any(s["events_sent"] == 1 for s in e.stream_stats())
        )
        body = await srv.cancel(task["id"])
        assert body == {"success": True, "data": None, "messages": []}
        read = await asyncio.wait_for(stream, 5)
        assert read.error is None
        events = read.ndjson()
        assert [status_of(e) for e in events] == [code, 8, 12]
        assert events[-1]["status_text"] == "cancelled"
        assert events[-1]["output"] is None
        full = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=0)
        statuses = [status_of(e.json()) for e in full.sse_events()]
        assert statuses == [*range(1, code + 1), 8, 12]


async def test_cancel_with_hold_while_running(local_server: Any) -> None:
    """`sim.hold` keeps the app running and silent until it is cancelled."""
    async with local_server() as srv:
        task = await srv.create("a/b", {"sim": {"hold": True}})
        await srv.wait_status(task["id"], 7)
        await srv.cancel(task["id"])
        await srv.wait_status(task["id"], 12)
        assert (await srv.get(task["id"]))["logs"] == []


async def test_cancel_after_completion_changes_nothing(local_server: Any) -> None:
    """Cancelling a finished task answers 200 and leaves it completed, with no new event."""
    async with local_server() as srv:
        task = await srv.create("a/b", {"sim": {"steps": 1}})
        await srv.wait_status(task["id"], 10)
        before = await srv.get(task["id"])
        body = await srv.cancel(task["id"])
        assert body == {"success": True, "data": None, "messages": []}
        assert await srv.get(task["id"]) == before
        replay = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=0)
        assert [status_of(e.json()) for e in replay.sse_events()][-1] == 10


async def test_cancel_twice_is_harmless(local_server: Any) -> None:
    """A second cancel of a cancelling task adds no event."""
    async with local_server() as srv:
        task = await srv.create("a/b", {"sim": {"hold": True}})
        await srv.wait_status(task["id"], 7)
        await srv.cancel(task["id"])
        await srv.cancel(task["id"])
        await srv.wait_status(task["id"], 12)
        replay = await srv.read_stream(task["id"], accept="text/event-stream", last_event_id=0)
        assert [status_of(e.json()) for e in replay.sse_events()].count(8) == 1


async def test_sessions(local_server: Any) -> None:
    """`session: "new"` gets a fresh id; a call in that session keeps it; both reach the
    terminal event."""
    async with local_server() as srv:
        fresh = await srv.create("a/b", {}, session="new", function="run")
        given = await srv.create("a/b", {}, session=fresh["session_id"])
        plain = await srv.create("a/b", {})
        assert fresh["session_id"].startswith("sess_")
        assert given["session_id"] == fresh["session_id"]
        assert plain["session_id"] is None
        for task in (fresh, given):
            read = await srv.read_stream(task["id"])
            assert read.ndjson()[-1]["status"] == 10
            assert read.ndjson()[-1]["session_id"] == task["session_id"]


async def test_strict_apps_refuses_unregistered_apps(local_server: Any) -> None:
    """With strict_apps, an unregistered app is 404; a registered one runs."""

    async def ok(data: dict[str, Any], ctx: AppContext) -> Any:
        return {"ok": True}

    async with local_server(strict_apps=True, apps={"my-org/x": ok}) as srv:
        async with srv.session.post("/apps/run", json={"app": "infsh/flux-schnell"}) as resp:
            assert resp.status == 404
            assert resp.content_type == "application/problem+json"
            body = await resp.json(content_type=None)
            assert body["error"]["code"] == "not_found"
            assert "infsh/flux-schnell" in body["detail"]
        task = await srv.create("my-org/x@latest")
        await srv.wait_status(task["id"], 10)
        assert (await srv.get(task["id"]))["output"] == {"ok": True}


async def test_finished_tasks_expire_after_their_ttl(local_server: Any) -> None:
    """A finished task is forgotten after finished_task_ttl; GET then answers 404."""
    async with local_server(finished_task_ttl=0.2) as srv:
        running = await srv.create("a/b", {"sim": {"hold": True}})
        task = await srv.create("a/b", {"sim": {"steps": 1}})
        await srv.wait_status(task["id"], 10)
        assert await srv.emu.async_wait_until(lambda e: e.task_snapshot(task["id"]) is None)
        async with srv.session.get(f"/tasks/{task['id']}") as resp:
            assert resp.status == 404
        # Tasks that have not finished never expire.
        assert srv.emu.task_snapshot(running["id"]) is not None


async def test_finished_tasks_are_capped_by_count(local_server: Any) -> None:
    """Only the newest max_finished_tasks finished tasks are kept."""
    async with local_server(max_finished_tasks=2) as srv:
        ids = []
        for _ in range(3):
            task = await srv.create("a/b", {"sim": {"steps": 1}})
            await srv.wait_status(task["id"], 10)
            ids.append(task["id"])
        assert srv.emu.task_snapshot(ids[0]) is None
        assert srv.emu.task_snapshot(ids[1]) is not None
        assert srv.emu.task_snapshot(ids[2]) is not None


async def test_shutdown_cancels_runners_and_ends_streams(local_server: Any) -> None:
    """Leaving `serve` ends open streams cleanly and leaves no runner pending."""
    emu = Emulator(EmulatorOptions(transition_delay=0.0))
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as own:
        async with local_server(emu) as srv:
            task = await srv.create("a/b", {"sim": {"hold": True}})
            await srv.wait_status(task["id"], 7)
            stream = asyncio.create_task(srv.read_stream(task["id"], session=own, base=srv.url))
            assert await emu.async_wait_until(lambda e: e.open_streams == 1)
        read = await asyncio.wait_for(stream, 5)
    assert read.error is None
    assert read.ndjson()[0]["status"] == 7
    assert emu.open_streams == 0
    assert emu.tasks.runners() == []
    final = emu.task_snapshot(task["id"])
    assert final is not None
    assert final["status"] == 11
    assert final["error"] == "the emulator stopped"
