"""Agent chat streams as a hostile or buggy server sends them.

The servers are raw sockets (tests/hostile.py) that answer `POST /agents/run`, serve a scripted
`GET /chats/c1/stream` per connection, and record tool results and stops. Each test checks one
promise of `send_message`/`stream`: every piece of text and thinking reaches the caller once and
in order, each client tool call is dispatched once, the final message's text is the streamed
text, a malformed event is a typed error, and nothing outlives the options' timeouts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from hostile import Exchange, Framing, content_type, encode, heartbeat, serving

import inferencesh
from inferencesh import (
    ChatMessage,
    MessageEvent,
    ProtocolError,
    StreamingOptions,
    TaskTimeoutError,
    ToolCall,
)

pytestmark = pytest.mark.anyio

CHAT, MSG, AGENT = "c1", "m_a", "org/agent@latest"
FAST = StreamingOptions(
    retry_delay=0, retry_jitter=0, max_retries=5, headers_timeout=5, idle_timeout=5,
    total_timeout=20,
)  # fmt: skip

CUT = "cut"  # end the connection's body here (a close, not a final event)
HANG = "hang"  # say nothing more on this connection


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def delta(piece: str, seq: int, key: str = "response") -> dict[str, Any]:
    return {"event": "delta", "data": {"delta": {key: piece}, "seq": seq, "resource_id": MSG}}


def call(
    call_id: str = "ti_1",
    status: str = "awaiting_input",
    name: str = "get_time",
    args: Any = None,
) -> dict[str, Any]:
    return {
        "id": call_id, "tool_invocation_id": "call_1", "type": "client", "status": status,
        "function": {"name": name, "arguments": {"tz": "UTC"} if args is None else args},
    }  # fmt: skip


def message(
    text: str = "",
    reasoning: str = "",
    *,
    status: str = "pending",
    calls: Sequence[dict[str, Any]] = (),
    message_id: str = MSG,
) -> dict[str, Any]:
    content = [{"type": "reasoning", "text": reasoning}] if reasoning else []
    content += [{"type": "text", "text": text}] if text else []
    data = {
        "id": message_id, "chat_id": CHAT, "role": "assistant", "status": status, "order": 2,
        "content": content, "tool_invocations": list(calls),
    }  # fmt: skip
    return {"event": "chat_messages", "data": data}


def chat(state: str = "working") -> dict[str, Any]:
    status = "busy" if state in ("submitted", "working") else "idle"
    run = {"id": "r1", "state": state}
    return {"event": "chats", "data": {"id": CHAT, "status": status, "active_run": run}}


Item = Any  # a payload, a (event id, payload) pair, CUT, HANG, or an asyncio.Event to wait on


class ChatServer:
    """Chat c1 with one scripted stream connection after another (the last one repeats).

    `ids`: "none" sends no ids; "sse"/"ndjson" number the events 1, 2, ... in the order the
    script lists them on each connection (an explicit (id, payload) pair overrides), as SSE `id:`
    or NDJSON `event_id`.
    """

    def __init__(self, connections: Sequence[Sequence[Item]], framing: Framing = "sse") -> None:
        self.connections = connections
        self.framing = framing
        self.ids = True
        self.streams = 0
        self.tool_results: list[tuple[str, Any]] = []
        self.answered = asyncio.Event()
        self.stops = 0

    async def __call__(self, exchange: Exchange) -> None:
        request = exchange.request
        if request.method == "POST" and request.path == "/agents/run":
            user = {"id": "m_u", "chat_id": CHAT, "role": "user", "status": "ready", "order": 1}
            assistant = {"id": MSG, "chat_id": CHAT, "role": "assistant", "status": "pending"}
            await exchange.respond(200, {"user_message": user, "assistant_message": assistant})
            return
        if request.method == "POST" and request.path.startswith("/tools/"):
            self.tool_results.append((request.path.removeprefix("/tools/"), request.json()))
            self.answered.set()
            await exchange.respond(200, {})
            return
        if request.method == "POST" and request.path == f"/chats/{CHAT}/stop":
            self.stops += 1
            await exchange.respond(200, {})
            return
        assert request.path == f"/chats/{CHAT}/stream", request.path
        script = self.connections[min(self.streams, len(self.connections) - 1)]
        self.streams += 1
        await exchange.start(content_type(self.framing), transfer="close")
        number = 0
        for item in script:
            if item == CUT:
                await exchange.close()
                return
            if item == HANG:
                await exchange.hang()
                return
            if isinstance(item, asyncio.Event):
                await item.wait()
                continue
            if item == "heartbeats":
                while True:
                    await exchange.send(heartbeat(self.framing))
                    await asyncio.sleep(0.05)
            number += 1
            event_id: str | None = str(number) if self.ids else None
            if isinstance(item, tuple):
                event_id, item = item
            await exchange.send(encode(self.framing, item, event_id))
        await exchange.close()


def answered_by(server: ChatServer) -> list[Any]:
    return [json.loads(body["result"]) for _, body in server.tool_results]


class Run:
    """What one send_message gave its caller."""

    def __init__(self) -> None:
        self.pieces: list[MessageEvent] = []
        self.calls: list[ToolCall] = []
        self.final: ChatMessage | None = None

    def text(self, kind: str = "text") -> str:
        return "".join(piece.content for piece in self.pieces if piece.type == kind)


async def send(server: ChatServer, client: str = "async", options: StreamingOptions = FAST) -> Run:
    """send_message against `server` through the async or the blocking client; every tool
    call is answered with {"n": <how many calls so far>}."""
    async with serving(server) as hostile:
        run = Run()
        if client == "async":
            async with inferencesh.async_inference(api_key="k", base_url=hostile.url) as aclient:
                agent = aclient.agent(AGENT, options=options)

                async def on_tool_call(tool: ToolCall) -> None:
                    run.calls.append(tool)
                    await agent.submit_tool_result(tool.id, {"n": len(run.calls)})

                async with asyncio.timeout(30):
                    run.final = await agent.send_message(
                        "hi", on_message=run.pieces.append, on_tool_call=on_tool_call
                    )
            return run

        def blocking() -> None:
            with inferencesh.inference(api_key="k", base_url=hostile.url) as sclient:
                agent = sclient.agent(AGENT, options=options)

                def on_tool_call(tool: ToolCall) -> None:
                    run.calls.append(tool)
                    agent.submit_tool_result(tool.id, {"n": len(run.calls)})

                run.final = agent.send_message(
                    "hi", on_message=run.pieces.append, on_tool_call=on_tool_call
                )

        with anyio.fail_after(30):
            await anyio.to_thread.run_sync(blocking, abandon_on_cancel=True)
        return run


# -- text reaches the caller once, in order --------------------------------------------------------


def _answer(final: str = "Hello world") -> list[Item]:
    return [
        chat(),
        delta("Let me", 1, "reasoning"),
        delta("Hel", 2),
        delta("lo", 3),
        delta(" world", 4),
        message(final, "Let me", status="ready"),
        chat("completed"),
    ]


@pytest.mark.parametrize("client", ["async", "blocking"])
@pytest.mark.parametrize(
    ("framing", "ids"), [("sse", True), ("ndjson", True), ("ndjson", False), ("sse", False)]
)
async def test_cut_after_a_delta_then_a_replay_from_the_start(
    framing: Framing, ids: bool, client: str
) -> None:
    """The server cuts after "Hel" and, on the reconnect, replays the whole stream from its
    first event (ignoring Last-Event-ID, or having no ids at all): the replayed deltas are
    recognised by their `seq` (per message, increasing) and dropped, so "Hel" comes once."""
    answer = _answer()
    server = ChatServer([[*answer[:3], CUT], answer], framing)
    server.ids = ids
    run = await send(server, client)
    assert ["Let me", "Hel", "lo", " world"] == [piece.content for piece in run.pieces]
    assert run.final is not None
    assert "Hello world" == run.text() == run.final.text
    assert "Let me" == run.text("thinking") == run.final.reasoning
    assert 2 == server.streams


async def test_idless_replay_of_a_snapshot_then_deltas_it_already_holds() -> None:
    """Without ids: a reconnect sends an old snapshot (it holds no more than was delivered),
    then replays the deltas from the start. The snapshot adds nothing, the replayed "Hel" (by
    its seq) is dropped, and the rest comes once. (A snapshot carries no seq: without ids, the
    deltas after one are taken as new, as a server that sends a snapshot and then the live
    tail means them.)"""
    first = [chat(), delta("Hel", 1), CUT]
    second = [
        message("Hel"),  # a snapshot behind what was delivered: nothing new
        delta("Hel", 1),
        delta("lo", 2),
        delta("!", 3),
        message("Hello!", status="ready"),
        chat("completed"),
    ]
    server = ChatServer([first, second], "ndjson")
    server.ids = False
    run = await send(server)
    assert ["Hel", "lo", "!"] == [piece.content for piece in run.pieces]
    assert run.final is not None
    assert "Hello!" == run.final.text


async def test_a_seq_that_is_not_a_position_drops_nothing() -> None:
    """A server whose deltas all carry the same seq (it is not a position there): every piece
    is new and none is dropped."""
    events = [chat(), delta("a", 0), delta("b", 0), delta("c", 0), chat("completed")]
    run = await send(ChatServer([events]))
    assert "abc" == run.text()
    assert run.final is not None
    assert "abc" == run.final.text


async def test_seqs_numbered_afresh_after_a_reconnect_drop_nothing() -> None:
    """Without ids, a server that numbers each connection's deltas from 1: after the reconnect
    (a snapshot, then the live tail numbered 1, 2) the new deltas are new, not replays."""
    first = [chat(), delta("Hel", 1), delta("lo", 2), CUT]
    second = [
        message("Hello"),
        delta(" world", 1),
        delta("!", 2),
        message("Hello world!", status="ready"),
        chat("completed"),
    ]
    server = ChatServer([first, second], "ndjson")
    server.ids = False
    run = await send(server)
    assert ["Hel", "lo", " world", "!"] == [piece.content for piece in run.pieces]
    assert run.final is not None
    assert "Hello world!" == run.final.text


async def test_a_corrected_snapshot_does_not_rewrite_what_was_streamed() -> None:
    """A snapshot whose text is not an extension of what was delivered (the server corrected
    "wrld" to "world") cannot take back what the caller has: the caller keeps what was
    streamed, later pieces are added to it, and the final message's text is the streamed text
    (the server's own is in `raw`)."""
    events = [
        chat(),
        delta("Hello wrld", 1),
        message("Hello world"),
        delta("!", 2),
        message("Hello world!", status="ready"),
        chat("completed"),
    ]
    run = await send(ChatServer([events]))
    assert "Hello wrld!" == run.text()
    assert run.final is not None
    assert "Hello wrld!" == run.final.text
    assert "Hello world!" == run.final.raw["content"][0]["text"]


async def test_a_final_chats_event_before_the_last_delta_ends_the_stream() -> None:
    """The chat says the run completed before the last delta arrived: the stream ends there,
    and the final message's text is what was streamed (the late delta is never read)."""
    events = [chat(), delta("Hel", 1), chat("completed"), delta("lo", 2)]
    run = await send(ChatServer([events]))
    assert run.final is not None
    assert "Hel" == run.text() == run.final.text


# -- client tool calls are dispatched once ---------------------------------------------------------


@pytest.mark.parametrize("client", ["async", "blocking"])
@pytest.mark.parametrize("ids", [True, False])
async def test_a_call_still_awaiting_input_after_a_reconnect_is_not_run_again(
    ids: bool, client: str
) -> None:
    """A tool call appears, the stream is cut, and after the reconnect the server still shows
    it awaiting input (with ids renumbered from 1, or none): the tool ran once."""
    waiting = message("Checking", calls=[call()])
    server = ChatServer([], "ndjson")
    first = [chat(), delta("Checking", 1), waiting, CUT]
    second = [
        chat(),
        waiting,
        message("Checking", calls=[call(status="completed")]),
        delta(" done", 2),
        message("Checking done", status="ready", calls=[call(status="completed")]),
        chat("completed"),
    ]
    server.connections = [first, [server.answered, *second]]
    server.ids = ids
    run = await send(server, client)
    assert 1 == len(run.calls)
    assert [{"n": 1}] == answered_by(server)
    assert run.final is not None
    assert "Checking done" == run.final.text == run.text()


async def test_the_same_call_in_two_messages_runs_once() -> None:
    """The same invocation (same id, name and arguments) listed in two messages of the run."""
    second = message("", calls=[call()], message_id="m_b")
    second["data"]["order"] = 3
    server = ChatServer([])
    server.connections = [
        [chat(), message("a", calls=[call()]), second, server.answered, chat("completed")]
    ]
    run = await send(server)
    assert 1 == len(run.calls)
    assert 1 == len(server.tool_results)


@pytest.mark.parametrize("differs", ["name", "args"])
async def test_two_different_calls_under_one_id_are_a_protocol_error(differs: str) -> None:
    """Two different calls under one invocation id: only one result can be posted to
    /tools/{id}, so the second can neither run nor be answered. Before, it was skipped and the
    run waited for its result until the total timeout; now it is a ProtocolError at once and
    the run is stopped."""
    other = call(name="delete_all") if differs == "name" else call(args={"tz": "CET"})
    server = ChatServer([])
    server.connections = [
        [chat(), message("a", calls=[call()]), server.answered, message("a", calls=[other]), HANG]
    ]
    with pytest.raises(ProtocolError, match="ti_1"):
        async with asyncio.timeout(5):
            await send(server)
    assert 1 == len(server.tool_results)
    assert 1 == server.stops


async def test_only_a_call_awaiting_input_is_dispatched() -> None:
    """Statuses other than awaiting_input (pending, in_progress, completed, awaiting_approval)
    are not dispatched; the call runs once it awaits input, and once only."""
    server = ChatServer([])
    server.connections = [
        [
            chat(),
            message(calls=[call(status="pending")]),
            message(calls=[call(status="in_progress"), call("ti_2", status="completed")]),
            message(calls=[call(), call("ti_3", status="awaiting_approval")]),
            server.answered,
            message(calls=[call(status="pending")]),
            message(calls=[call()]),
            chat("completed"),
        ]
    ]
    run = await send(server)
    assert ["ti_1"] == [tool.id for tool in run.calls]


async def test_an_awaited_call_without_a_usable_id_is_a_protocol_error() -> None:
    """A client call awaiting input whose id is not a string cannot be answered: a
    ProtocolError, not a run that waits for a result forever."""
    broken = call()
    broken["id"] = 7
    server = ChatServer([[chat(), message(calls=[broken]), HANG]])
    with pytest.raises(ProtocolError, match="id"):
        async with asyncio.timeout(5):
            await send(server)


# -- malformed events and endless streams ----------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {"event": "chats", "data": {"id": CHAT, "active_run": {"state": ["working"]}}},
        {"event": "chats", "data": {"id": CHAT, "active_run": {"state": {"a": 1}}}},
    ],
)
async def test_a_malformed_chats_event_is_a_protocol_error(event: dict[str, Any]) -> None:
    """An `active_run.state` that is not a string: a ProtocolError (before: a raw TypeError,
    unhashable type, from the codec)."""
    with pytest.raises(ProtocolError):
        async with asyncio.timeout(5):
            await send(ChatServer([[chat(), event, HANG]]))


@pytest.mark.parametrize("client", ["async", "blocking"])
async def test_heartbeats_without_an_end_are_bounded_by_the_total_timeout(client: str) -> None:
    """A chat stream that never ends but keeps sending heartbeats: TaskTimeoutError once the
    total timeout has passed, and the run is stopped."""
    server = ChatServer([[chat(), delta("Hel", 1), "heartbeats"]])
    started = asyncio.get_running_loop().time()
    options = StreamingOptions(retry_delay=0, idle_timeout=5, total_timeout=0.5)
    with pytest.raises(TaskTimeoutError):
        await send(server, client, options)
    assert asyncio.get_running_loop().time() - started < 10
    assert 1 == server.stops
