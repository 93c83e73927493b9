"""Resuming against servers that replay, repeat, skip, rewind or renumber events after a cut.

The servers are raw sockets (tests/hostile.py). Each test runs the same scripted task twice:
once cleanly, once with a cut and a misbehaving reconnect, and checks that the consumer got
every log line exactly once, in order, and nothing twice.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hostile import (
    Framing,
    Misbehaviour,
    Script,
    ScriptedTask,
    Transfer,
    content_type,
    encode,
    serving,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import inferencesh
from inferencesh import StreamingOptions, TaskStatus, TaskUpdate

pytestmark = pytest.mark.anyio

FAST = StreamingOptions(
    retry_delay=0, retry_jitter=0, max_retries=5, headers_timeout=5, idle_timeout=5
)
SCRIPT = Script.make(6)  # events 1 .. 8: snapshot, six partial updates, terminal snapshot
ACCEPT = "text/event-stream, application/x-ndjson;q=0.9"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def stream_updates(
    client: str,
    url: str,
    options: StreamingOptions = FAST,
    *,
    on_update: Callable[[TaskUpdate], None] | None = None,
) -> list[TaskUpdate]:
    """Every update of task t1's stream, through the async or the blocking client;
    `on_update` sees each as it arrives (in the blocking client's case, in a worker thread)."""
    seen = on_update or (lambda update: None)
    if client == "async":
        async with inferencesh.async_inference(api_key="k", base_url=url) as aclient:
            updates = []
            async for update in aclient.stream_task("t1", options):
                seen(update)
                updates.append(update)
            return updates

    def blocking() -> list[TaskUpdate]:
        with inferencesh.inference(api_key="k", base_url=url) as sclient:
            updates = []
            for update in sclient.stream_task("t1", options):
                seen(update)
                updates.append(update)
            return updates

    return await anyio.to_thread.run_sync(blocking, abandon_on_cancel=True)


async def serve_script(handler: ScriptedTask, client: str) -> tuple[list[TaskUpdate], Any]:
    """Stream `handler`'s task; a cut waits until the consumer has had every event before it."""
    loop = asyncio.get_running_loop()
    delivered = asyncio.Event()
    count = 0

    def on_update(update: TaskUpdate) -> None:
        nonlocal count
        count += 1
        if handler.cut is not None and count == handler.cut:
            loop.call_soon_threadsafe(delivered.set)

    handler.before_cut = delivered.wait
    with anyio.fail_after(20):
        async with serving(handler) as server:
            updates = await stream_updates(client, server.url, on_update=on_update)
    return updates, server


def all_logs(updates: list[TaskUpdate]) -> list[str]:
    return [line for update in updates for line in update.logs]


def check_once(updates: list[TaskUpdate], script: Script) -> None:
    """Every line once and in order, and one terminal update, the last, with the output."""
    assert script.all_logs == all_logs(updates)
    assert TaskStatus.COMPLETED == updates[-1].status
    assert {"text": "done"} == updates[-1].output
    assert [u.status.is_terminal for u in updates].count(True) == 1


def check_nothing_twice(updates: list[TaskUpdate]) -> None:
    """No update repeats what an earlier one gave: progress never goes back, no intermediate
    output comes twice, and every update brings something new."""
    currents = [u.progress.current for u in updates if u.progress is not None]
    assert sorted(currents) == currents, f"progress went backwards: {currents}"
    steps = [u.partial_output["step"] for u in updates if u.partial_output is not None]
    assert sorted(set(steps)) == steps, f"an intermediate output came twice: {steps}"
    for before, after in itertools.pairwise(updates):
        assert (
            after.status != before.status
            or after.logs
            or after.progress != before.progress
            or after.partial_output is not None
        ), f"an update with nothing new: {after}"


CUTS: list[tuple[int, Transfer]] = [(1, "chunked"), (2, "close"), (4, "chunked"), (6, "close")]
KINDS: list[Misbehaviour] = ["resume", "replay", "repeat", "skip", "rewind", "renumber"]

CASES = [
    pytest.param(kind, cut, transfer, id=f"{kind}-{cut}-{transfer}")
    for kind in KINDS
    for cut, transfer in CUTS
]


@pytest.mark.parametrize("client", ["async", "blocking"])
@pytest.mark.parametrize("framing", ["sse", "ndjson"])
async def test_clean_run_is_the_script(client: str, framing: Framing) -> None:
    """Without a cut the stream is the script, one update per event, over one connection."""
    updates, server = await serve_script(ScriptedTask(SCRIPT, framing), client)
    check_once(updates, SCRIPT)
    check_nothing_twice(updates)
    assert SCRIPT.last == len(updates)
    [request] = server.requests
    assert ("GET", "/tasks/t1/stream") == (request.method, request.path)
    assert ACCEPT == request.headers["accept"]
    assert "Bearer k" == request.headers["authorization"]
    assert "last-event-id" not in request.headers


@pytest.mark.parametrize("client", ["async", "blocking"])
@pytest.mark.parametrize("framing", ["sse", "ndjson"])
@pytest.mark.parametrize(("kind", "cut", "transfer"), CASES)
async def test_wrong_replay_gives_every_line_once(
    client: str, framing: Framing, kind: Misbehaviour, cut: int, transfer: Transfer
) -> None:
    """A cut, then a reconnect that misbehaves: the consumer still gets every log line of the
    clean run once, in order, and the completed output."""
    clean, _ = await serve_script(ScriptedTask(SCRIPT, framing, transfer=transfer), client)
    handler = ScriptedTask(SCRIPT, framing, kind, cut, transfer)
    updates, server = await serve_script(handler, client)
    assert all_logs(clean) == all_logs(updates)
    check_once(updates, SCRIPT)
    first, second, *rest = server.requests
    assert "last-event-id" not in first.headers
    assert str(cut) == second.headers.get("last-event-id")
    if (kind == "skip" and cut + 2 < SCRIPT.last) or (kind == "renumber" and 2 * cut < SCRIPT.last):
        # The gap, or another event under id `cut` (the server numbers afresh), is healed by a
        # fresh connection, which must not ask to resume.
        [fresh] = rest
        assert "last-event-id" not in fresh.headers
    else:
        assert [] == rest


@pytest.mark.parametrize("client", ["async", "blocking"])
@pytest.mark.parametrize("framing", ["sse", "ndjson"])
@pytest.mark.parametrize(("kind", "cut", "transfer"), CASES)
async def test_wrong_replay_gives_nothing_twice(
    client: str, framing: Framing, kind: Misbehaviour, cut: int, transfer: Transfer
) -> None:
    """A cut, then a reconnect that misbehaves: no update repeats an earlier one; where the
    server only repeats itself, the updates are exactly the clean run's."""
    clean, _ = await serve_script(ScriptedTask(SCRIPT, framing, transfer=transfer), client)
    updates, _ = await serve_script(ScriptedTask(SCRIPT, framing, kind, cut, transfer), client)
    check_nothing_twice(updates)
    if kind in ("resume", "repeat", "rewind", "replay"):
        assert clean == updates


@pytest.mark.parametrize("client", ["async", "blocking"])
@pytest.mark.parametrize("framing", ["sse", "ndjson"])
@pytest.mark.parametrize(("cut", "transfer"), [(1, "close"), (3, "chunked"), (6, "close")])
async def test_server_without_ids_replays_from_the_start(
    client: str, framing: Framing, cut: int, transfer: Transfer
) -> None:
    """No event ids (the hosted API's NDJSON): each reconnect replays from the first snapshot,
    and the consumer still gets every line once."""
    handler = ScriptedTask(SCRIPT, framing, "noids", cut, transfer)
    updates, server = await serve_script(handler, client)
    check_once(updates, SCRIPT)
    assert 2 == len(server.requests)
    assert all("last-event-id" not in r.headers for r in server.requests)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    widths=st.lists(st.integers(1, 3), min_size=1, max_size=8),
    kind=st.sampled_from(["resume", "replay", "repeat", "skip", "rewind", "noids"]),
    framing=st.sampled_from(["sse", "ndjson"]),
    transfer=st.sampled_from(["chunked", "close"]),
    data=st.data(),
)
def test_any_cut_any_misbehaviour(
    widths: list[int], kind: Misbehaviour, framing: Framing, transfer: Transfer, data: Any
) -> None:
    """Property: whatever the task, the cut point and the misbehaviour (renumbering aside:
    see RENUMBER_BUG), every line once and the completed output."""
    script = Script.make(len(widths), widths)
    cut = data.draw(st.integers(1, script.last - 1), label="cut")
    handler = ScriptedTask(script, framing, kind, cut, transfer)

    async def main() -> list[TaskUpdate]:
        with anyio.fail_after(20):
            async with serving(handler) as server:
                return await stream_updates("async", server.url)

    check_once(anyio.run(main), script)


# -- an unrecoverable gap -----------------------------------------------------------------------


@pytest.mark.parametrize("client", ["async", "blocking"])
@pytest.mark.parametrize("framing", ["sse", "ndjson"])
async def test_gap_without_snapshot_raises_event_gap_error(client: str, framing: Framing) -> None:
    """Events skipped, and the fresh connection again starts beyond the gap without a
    snapshot: EventGapError, at once."""
    script = SCRIPT
    cut = 2
    seen: list[dict[str, str]] = []

    async def handler(exchange: Any) -> None:
        seen.append(exchange.request.headers)
        # Close-delimited: the cut is a clean end of the body, so every event before it arrives.
        await exchange.start(content_type(framing), transfer="close")
        # The first connection: up to the cut. Resumed or fresh alike, the later ones start
        # beyond a gap, with relative events only.
        first = len(seen) == 1
        events = range(1, cut + 1) if first else range(cut + 1 + len(seen), script.last)
        for event in events:
            await exchange.send(encode(framing, script.payload(event), str(event)))
        if first:
            await exchange.cut()
        else:
            await exchange.hang()

    got: list[TaskUpdate] = []

    async def consume(url: str) -> None:
        if client == "async":
            async with inferencesh.async_inference(api_key="k", base_url=url) as aclient:
                async for update in aclient.stream_task("t1", FAST):
                    got.append(update)
            return

        def blocking() -> None:
            with inferencesh.inference(api_key="k", base_url=url) as sclient:
                got.extend(sclient.stream_task("t1", FAST))

        await anyio.to_thread.run_sync(blocking, abandon_on_cancel=True)

    with anyio.fail_after(10):
        async with serving(handler) as server:
            with pytest.raises(inferencesh.EventGapError) as info:
                await consume(server.url)
    assert isinstance(info.value, inferencesh.InferenceshError)
    assert isinstance(info.value, inferencesh.ProtocolError)
    assert 3 == len(seen)
    assert str(cut) == seen[1].get("last-event-id")
    assert "last-event-id" not in seen[2]
    # What came before the gap was given; nothing from beyond it.
    assert script.logs_after(cut) == all_logs(got)
    assert cut == len(got)


# -- event ids that must not be sent back --------------------------------------------------------

UNSAFE_IDS: dict[str, Callable[[int], str]] = {
    "control": lambda n: f"{n}\x01x",
    "delete": lambda n: f"{n}\x7f",
    "leading-space": lambda n: f" {n}",
    "trailing-tab": lambda n: f"{n}\t",
    "long": lambda n: f"{n}" + "x" * 2048,
    "non-ascii": lambda n: f"{n}é",
    "nul": lambda n: f"{n}\x00x",  # SSE ignores an id field holding NUL: no id at all
}


@pytest.mark.parametrize("client", ["async", "blocking"])
@pytest.mark.parametrize("framing", ["sse", "ndjson"])
@pytest.mark.parametrize("unsafe", sorted(UNSAFE_IDS))
async def test_unsafe_event_ids_are_never_sent_back(
    client: str, framing: Framing, unsafe: str
) -> None:
    """Ids that cannot go into a header as they are: the reconnect sends no Last-Event-ID, the
    server replays from the start, and the stream completes with every line once."""
    event_id = UNSAFE_IDS[unsafe]
    handler = ScriptedTask(SCRIPT, framing, "resume", 4, "chunked", event_id=event_id)
    updates, server = await serve_script(handler, client)
    check_once(updates, SCRIPT)
    first, second = server.requests
    assert "last-event-id" not in first.headers
    assert "last-event-id" not in second.headers


@pytest.mark.parametrize("client", ["async", "blocking"])
@pytest.mark.parametrize("framing", ["sse", "ndjson"])
async def test_safe_opaque_event_ids_are_sent_back(client: str, framing: Framing) -> None:
    """A header-safe id that is not a number (1 KiB long, punctuation) is sent back as it is,
    and the server resumes after it."""
    handler = ScriptedTask(
        SCRIPT, framing, "resume", 4, "close", event_id=lambda n: f"ev:{n}/" + "y" * 1000
    )
    updates, server = await serve_script(handler, client)
    check_nothing_twice(updates)
    check_once(updates, SCRIPT)
    assert "ev:4/" + "y" * 1000 == server.requests[1].headers["last-event-id"]


@pytest.mark.parametrize("framing", ["sse", "ndjson"])
async def test_a_repeat_of_a_long_event_is_known_whatever_the_reads(framing: Framing) -> None:
    """The event last taken, longer than a read's view threshold and cut across two reads
    (so held as joined bytes), comes again after a cut in one read (so as a view): it is a
    repeat, dropped, not "another event under the same id" (no fresh reconnect, no gap)."""
    big = "x" * 3000
    events = {
        1: {"id": "t1", "status": 7, "logs": []},
        2: {"data": {"id": "t1", "status": 7, "logs": [big]}, "fields": ["logs"]},
        3: {"data": {"id": "t1", "status": 7, "logs": ["small"]}, "fields": ["logs"]},
        4: {"id": "t1", "status": 10, "logs": [big, "small"], "output": {"ok": 1}},
    }
    seen: list[str | None] = []
    delivered = asyncio.Event()

    async def handler(exchange: Any) -> None:
        seen.append(exchange.request.headers.get("last-event-id"))
        await exchange.start(content_type(framing))
        if len(seen) == 1:
            await exchange.send(encode(framing, events[1], "1"))
            data = encode(framing, events[2], "2")
            await exchange.send(data[:1500])
            await exchange.send(data[1500:])
            await delivered.wait()
            await exchange.cut()
            return
        await exchange.send(b"".join(encode(framing, events[n], str(n)) for n in (2, 3, 4)))
        await exchange.finish()

    def on_update(update: TaskUpdate) -> None:
        if update.logs:
            delivered.set()

    async with serving(handler) as server:
        with anyio.fail_after(10):
            updates = await stream_updates("async", server.url, on_update=on_update)
    assert [big, "small"] == all_logs(updates)
    assert [None, "2"] == seen


@pytest.mark.parametrize("framing", ["sse", "ndjson"])
async def test_a_fresh_start_that_replays_from_the_beginning_gives_nothing_old(
    framing: Framing,
) -> None:
    """A gap heals through a fresh connection, and that server replays from event 1: the
    lines stay exact, and progress and intermediate outputs never go back or come twice."""
    seen: list[str | None] = []
    delivered = asyncio.Event()

    async def handler(exchange: Any) -> None:
        seen.append(exchange.request.headers.get("last-event-id"))
        await exchange.start(content_type(framing))
        if len(seen) == 1:
            for event in (1, 2, 3, 4):
                await exchange.send(encode(framing, SCRIPT.payload(event), str(event)))
            await delivered.wait()
            await exchange.cut()
        elif len(seen) == 2:  # skips event 5
            for event in range(6, SCRIPT.last + 1):
                await exchange.send(encode(framing, SCRIPT.payload(event), str(event)))
            await exchange.finish()
        else:  # fresh: replays everything from the first snapshot
            for event in range(1, SCRIPT.last + 1):
                await exchange.send(encode(framing, SCRIPT.payload(event), str(event)))
            await exchange.finish()

    def on_update(update: TaskUpdate) -> None:
        if update.progress is not None and update.progress.current == 3:
            delivered.set()

    async with serving(handler) as server:
        with anyio.fail_after(10):
            updates = await stream_updates("async", server.url, on_update=on_update)
    check_once(updates, SCRIPT)
    check_nothing_twice(updates)
    assert [None, "4", None] == seen
