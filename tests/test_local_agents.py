"""Emulator agent chats with plain aiohttp: runs, chat streams, client tools, stop, faults.

These tests never use the SDK's client or decoder: they read the wire as it is, so the emulator
and the client cannot hide each other's bugs (tests/test_agent.py drives the SDK against it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs
import pytest

from inferencesh.cli import main
from inferencesh.local import AgentContext, Emulator, EmulatorOptions

pytestmark = pytest.mark.anyio

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
AGENT = "my-org/assistant@latest"
REASONING = "Let me look that up with the search tool."
ID = re.compile(r"[a-z]+_[0-9a-f]{20}")


def answer(text: str, result: str, turn: int) -> str:
    """The scripted agent's answer, as the contract spells it."""
    return (
        f'You asked "{text}". The search tool returned: {result}. This is turn {turn} of this chat.'
    )


# -- reading chat streams --------------------------------------------------------------------------


@attrs.frozen
class Item:
    """One chat-stream payload: its SSE id (None in NDJSON), event name and data."""

    id: int | None
    event: str
    data: dict[str, Any]


class ChatStream:
    """A chat stream read incrementally, payload by payload, each read bounded in time."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.sse = resp.headers["Content-Type"] == SSE
        self.retry: int | None = None
        self.heartbeats = 0
        self.items: list[Item] = []

    async def _line(self) -> str:
        raw = await self.resp.content.readline()
        assert raw.endswith(b"\n"), f"stream ended: {raw!r}"
        return raw[:-1].decode("ascii")

    async def _payload(self) -> Item | None:
        """The next payload, or None for a heartbeat or a `retry:` block."""
        if not self.sse:
            payload = json.loads(await self._line())
            if payload == {"type": "heartbeat"}:
                self.heartbeats += 1
                return None
            assert set(payload) == {"event", "data", "event_id"}, payload
            return Item(int(payload["event_id"]), payload["event"], payload["data"])
        fields: dict[str, str] = {}
        while (line := await self._line()) != "":
            name, _, value = line.partition(":")
            assert name not in fields, line
            fields[name] = value[1:] if value.startswith(" ") else value
        assert "event" not in fields, "chat payloads carry their name in the data, not event:"
        if "retry" in fields:
            self.retry = int(fields["retry"])
            return None
        if "" in fields:
            assert fields[""] == "heartbeat"
            self.heartbeats += 1
            return None
        payload = json.loads(fields["data"])
        assert set(payload) == {"event", "data"}, payload
        return Item(int(fields["id"]), payload["event"], payload["data"])

    async def next(self, timeout: float = 5.0) -> Item:
        """The next payload (heartbeats skipped)."""
        async with asyncio.timeout(timeout):
            item = await self._payload()
            while item is None:
                item = await self._payload()
        self.items.append(item)
        return item

    async def until(self, predicate: Callable[[Item], bool], timeout: float = 5.0) -> list[Item]:
        """Payloads up to and including the first that satisfies `predicate`."""
        found = []
        async with asyncio.timeout(timeout):
            while True:
                found.append(await self.next())
                if predicate(found[-1]):
                    return found

    async def heartbeat(self, timeout: float = 5.0) -> None:
        """Read until a heartbeat; no payload may come first (the stream is open and quiet)."""
        seen = self.heartbeats
        async with asyncio.timeout(timeout):
            while self.heartbeats == seen:
                item = await self._payload()
                assert item is None, f"unexpected payload before the heartbeat: {item}"


@contextlib.asynccontextmanager
async def chat_stream(
    srv: Any, chat_id: str, *, accept: str = SSE, last_event_id: int | None = None
) -> AsyncIterator[ChatStream]:
    headers = {"Accept": accept}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    async with srv.session.get(f"/chats/{chat_id}/stream", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == accept
        yield ChatStream(resp)


def ended(item: Item) -> bool:
    return item.event == "chats" and item.data["active_run"]["state"] != "working"


def invocation_waiting(item: Item) -> bool:
    return item.event == "chat_messages" and any(
        inv["status"] == "awaiting_input" for inv in item.data["tool_invocations"]
    )


def pieces(items: list[Item], key: str) -> list[str]:
    return [i.data["delta"][key] for i in items if i.event == "delta" and key in i.data["delta"]]


# -- HTTP helpers ----------------------------------------------------------------------------------


@attrs.frozen
class Client:
    """Just a session, for servers not started by the `local_server` fixture."""

    session: aiohttp.ClientSession


async def post(srv: Any, path: str, body: Any = None) -> tuple[int, Any]:
    """POST JSON (no body when None); return the status and the parsed answer."""
    kwargs: dict[str, Any] = {} if body is None else {"json": body}
    async with srv.session.post(path, **kwargs) as resp:
        payload = await resp.json(content_type=None)
        if resp.status == 200:
            assert resp.content_type == "application/json"
            assert payload["success"] is True
            assert payload["messages"] == []
        else:
            assert resp.content_type == "application/problem+json"
            assert payload["status"] == resp.status
        return resp.status, payload


async def send(srv: Any, text: str, chat_id: str | None = None, agent: str = AGENT) -> Any:
    """POST /agents/run and return the answer's data (asserting success)."""
    status, payload = await post(
        srv, "/agents/run", {"chat_id": chat_id, "input": {"text": text}, "agent": agent}
    )
    assert status == 200, payload
    return payload["data"]


async def get_chat(srv: Any, chat_id: str) -> Any:
    async with srv.session.get(f"/chats/{chat_id}") as resp:
        payload = await resp.json()
        assert resp.status == 200, payload
        return payload["data"]


async def turn(srv: Any, text: str, result: str, chat_id: str | None = None) -> tuple[Any, Item]:
    """Send a message, answer its tool call with `result`, wait for the run's end."""
    reply = await send(srv, text, chat_id)
    chat_id = reply["assistant_message"]["chat_id"]
    async with chat_stream(srv, chat_id, accept=NDJSON) as stream:
        waiting = (await stream.until(invocation_waiting))[-1]
        tool_id = waiting.data["tool_invocations"][0]["id"]
        status, payload = await post(srv, f"/tools/{tool_id}", {"result": result})
        assert status == 200, payload
        last = (await stream.until(ended))[-1]
    return reply, last


# -- the run and its events ------------------------------------------------------------------------


async def test_run_reply_creates_chat_and_starts_the_run(local_server: Any) -> None:
    """POST /agents/run answers both messages; the run is working before the answer."""
    async with local_server() as srv:
        reply = await send(srv, "hello there")
        user, assistant = reply["user_message"], reply["assistant_message"]
        assert set(reply) == {"user_message", "assistant_message"}
        chat_id = user["chat_id"]
        assert chat_id.startswith("chat_")
        assert ID.fullmatch(chat_id)
        assert ID.fullmatch(user["id"])
        assert user["id"].startswith("msg_")
        assert assistant["id"].startswith("msg_")
        assert user["agent_run_id"].startswith("run_")
        assert user == {
            "id": user["id"],
            "chat_id": chat_id,
            "agent_run_id": user["agent_run_id"],
            "order": 1,
            "status": "ready",
            "role": "user",
            "content": [{"type": "text", "text": "hello there"}],
            "tool_invocations": [],
        }
        assert assistant == {
            "id": assistant["id"],
            "chat_id": chat_id,
            "agent_run_id": user["agent_run_id"],
            "order": 2,
            "status": "pending",
            "role": "assistant",
            "content": [],
            "tool_invocations": [],
        }
        chat = await get_chat(srv, chat_id)
        assert chat["id"] == chat_id
        assert chat["status"] == "busy"
        assert chat["active_run"] == {"id": user["agent_run_id"], "state": "working"}
        assert chat["output"] is None
        assert chat["pending_interrupts"] == []
        assert [m["id"] for m in chat["messages"]] == [user["id"], assistant["id"]]
        assert srv.emu.chat_snapshot(chat_id) is not None


async def test_empty_text_is_a_message_too(local_server: Any) -> None:
    """An empty string is valid text: the user message still has its text part."""
    async with local_server() as srv:
        reply, last = await turn(srv, "", "r")
        assert reply["user_message"]["content"] == [{"type": "text", "text": ""}]
        assert last.data["output"] == answer("", "r", 1)


@pytest.mark.parametrize("accept", [SSE, NDJSON])
async def test_run_flow_event_shapes_and_order(local_server: Any, accept: str) -> None:
    """Snapshot, reasoning deltas, the tool call, the result, the answer, the end, then quiet."""
    async with local_server(heartbeat_interval=0.1, retry_ms=25, agent_step_delay=0.02) as srv:
        reply = await send(srv, "weather in Paris?")
        chat_id = reply["user_message"]["chat_id"]
        run_id = reply["user_message"]["agent_run_id"]
        msg_id = reply["assistant_message"]["id"]
        async with chat_stream(srv, chat_id, accept=accept) as stream:
            snapshot = [await stream.next() for _ in range(3)]
            assert stream.retry == (25 if stream.sse else None)
            assert [i.event for i in snapshot] == ["chat_messages", "chat_messages", "chats"]
            assert snapshot[0].data == reply["user_message"]
            assert snapshot[1].data["id"] == msg_id
            assert snapshot[2].data == {
                "id": chat_id,
                "status": "busy",
                "active_run": {"id": run_id, "state": "working"},
                "output": None,
                "pending_interrupts": [],
            }
            if stream.sse:
                assert len({i.id for i in snapshot}) == 1

            before_tool = await stream.until(invocation_waiting)
            deltas = before_tool[:-1]
            assert {i.event for i in deltas} <= {"delta"}
            thoughts = pieces(deltas, "reasoning")
            assert len(thoughts) >= 3
            # Pieces written before the connection are in the snapshot's message.
            early = "".join(p["text"] for p in snapshot[1].data["content"])
            assert early + "".join(thoughts) == REASONING
            for delta in deltas:
                assert delta.data["resource_id"] == msg_id
                assert set(delta.data) == {"delta", "seq", "resource_id"}
                if stream.sse:
                    assert delta.data["seq"] == delta.id
            message = before_tool[-1].data
            invocation = message["tool_invocations"][0]
            assert message["status"] == "pending"
            assert message["content"] == [{"type": "reasoning", "text": REASONING}]
            assert invocation == {
                "id": invocation["id"],
                "tool_invocation_id": invocation["tool_invocation_id"],
                "type": "client",
                "status": "awaiting_input",
                "display_name": "search",
                "function": {"name": "search", "arguments": {"query": "weather in Paris?"}},
            }
            assert invocation["id"].startswith("ti_")
            assert invocation["tool_invocation_id"].startswith("call_")

            status, _ = await post(srv, f"/tools/{invocation['id']}", {"result": "sunny"})
            assert status == 200
            rest = await stream.until(ended)
            assert rest[0].event == "chat_messages"
            assert rest[0].data["tool_invocations"] == [
                {**invocation, "status": "completed", "result": "sunny"}
            ]
            assert rest[0].data["status"] == "pending"
            expected = answer("weather in Paris?", "sunny", 1)
            said = pieces(rest[1:-2], "response")
            assert len(said) >= 3
            assert len(said) == len(rest) - 3
            assert "".join(said) == expected
            final, last = rest[-2], rest[-1]
            assert final.event == "chat_messages"
            assert final.data == {
                **reply["assistant_message"],
                "status": "ready",
                "content": [
                    {"type": "reasoning", "text": REASONING},
                    {"type": "text", "text": expected},
                ],
                "tool_invocations": [{**invocation, "status": "completed", "result": "sunny"}],
            }
            assert last.data == {
                "id": chat_id,
                "status": "idle",
                "active_run": {"id": run_id, "state": "completed", "output": expected},
                "output": expected,
                "pending_interrupts": [],
            }
            live = stream.items[3:]
            if stream.sse:
                first = snapshot[0].id
                assert first is not None
                assert [i.id for i in live] == list(range(first + 1, first + 1 + len(live)))
            for item in stream.items[:-1]:
                if item.event == "chats":
                    assert item.data["active_run"]["state"] == "working"
            # A chat outlives its run: the stream stays open, with heartbeats.
            await stream.heartbeat()
        chat = await get_chat(srv, chat_id)
        assert chat["status"] == "idle"
        assert chat["output"] == expected
        assert chat["messages"][1] == final.data


async def test_tool_result_is_quoted_verbatim(local_server: Any) -> None:
    """A result string (JSON text, quotes, newlines, non-ASCII) comes back unchanged."""
    result = '{"a": [1, 2]} "quoted"\nnext line – ünïcode'
    async with local_server() as srv:
        reply, last = await turn(srv, "dict please", result)
        assert last.data["active_run"]["output"] == answer("dict please", result, 1)
        chat = await get_chat(srv, reply["user_message"]["chat_id"])
        assert chat["messages"][1]["tool_invocations"][0]["result"] == result


async def test_snapshot_on_connect_includes_history(local_server: Any) -> None:
    """A new connection gets every message of every turn, then the chat, at the latest seq."""
    async with local_server() as srv:
        first, _ = await turn(srv, "first question", "r1")
        chat_id = first["user_message"]["chat_id"]
        second = await send(srv, "second question", chat_id)
        async with chat_stream(srv, chat_id) as stream:
            items = [await stream.next() for _ in range(5)]
        assert [i.event for i in items] == ["chat_messages"] * 4 + ["chats"]
        # The chat is the snapshot's last event (clients stop at a chat whose run ended).
        assert items[-1].event == "chats"
        assert all(i.event == "chat_messages" for i in items[:-1])
        assert len({i.id for i in items}) == 1
        assert "messages" not in items[4].data
        assert items[4].data["status"] == "busy"
        orders = [i.data["order"] for i in items[:4]]
        assert orders == [1, 2, 3, 4]
        assert items[0].data == first["user_message"]
        assert items[1].data["status"] == "ready"
        assert items[1].data["content"][1] == {
            "type": "text",
            "text": answer("first question", "r1", 1),
        }
        assert items[2].data == second["user_message"]
        assert items[3].data["id"] == second["assistant_message"]["id"]
        assert items[3].data["status"] == "pending"


async def test_last_event_id_resumes_without_gap_or_duplicate(local_server: Any) -> None:
    """A reconnect with Last-Event-ID gets exactly the events after it, then the live tail."""
    async with local_server() as srv:
        reply = await send(srv, "resume me")
        chat_id = reply["user_message"]["chat_id"]
        async with chat_stream(srv, chat_id) as reference:
            await reference.next()
            async with chat_stream(srv, chat_id) as first:
                head = await first.until(lambda i: i.event == "delta" and i.id is not None)
                cut = head[-1].id
                # the snapshot's id is the log position, so a resume from it is exact too
                assert cut is not None
            async with chat_stream(srv, chat_id, last_event_id=cut) as resumed:
                waiting = (await resumed.until(invocation_waiting))[-1]
                tool_id = waiting.data["tool_invocations"][0]["id"]
                assert (await post(srv, f"/tools/{tool_id}", {"result": "ok"}))[0] == 200
                tail = await resumed.until(ended)
            whole = await reference.until(ended)
        resumed_items = resumed.items
        assert resumed_items[0].id == cut + 1
        expected = [i for i in reference.items if i.id is not None and i.id > cut]
        assert resumed_items == expected
        assert whole[-1] == tail[-1]


async def test_resume_from_before_the_retained_window_gets_a_snapshot(local_server: Any) -> None:
    """A Last-Event-ID older than the bounded log is answered with a fresh snapshot."""
    async with local_server(max_events_per_task=4) as srv:
        reply, last = await turn(srv, "bounded", "r")
        chat_id = reply["user_message"]["chat_id"]
        assert last.id is not None  # NDJSON lines carry event ids too
        async with chat_stream(srv, chat_id, last_event_id=1) as stream:
            items = [await stream.next() for _ in range(3)]
        assert [i.event for i in items] == ["chat_messages", "chat_messages", "chats"]
        assert {i.id for i in items} == {last.id}  # a snapshot: every frame at the newest seq
        assert items[2].data["status"] == "idle"
        assert len(srv.emu.chats.get(chat_id).log) == 4


# -- tools: timeout, reject ------------------------------------------------------------------------


async def test_tool_timeout_fails_the_run(local_server: Any) -> None:
    """No result within tool_timeout: the message fails, then the run, naming the tool."""
    async with local_server(tool_timeout=0.2) as srv:
        reply = await send(srv, "slow tool")
        chat_id = reply["user_message"]["chat_id"]
        async with chat_stream(srv, chat_id) as stream:
            waiting = (await stream.until(invocation_waiting))[-1]
            tool_id = waiting.data["tool_invocations"][0]["id"]
            rest = await stream.until(ended)
        assert [i.event for i in rest] == ["chat_messages", "chats"]
        assert rest[0].data["status"] == "failed"
        assert rest[0].data["tool_invocations"][0]["status"] == "failed"
        run = rest[1].data["active_run"]
        assert rest[1].data["status"] == "idle"
        assert run["state"] == "failed"
        assert run["error"] == "client tool 'search' got no result within 0.2 s"
        assert "no result" in run["error"]
        status, payload = await post(srv, f"/tools/{tool_id}", {"result": "late"})
        assert status == 409
        assert tool_id in payload["detail"]


async def test_rejected_tool_call_continues_with_the_rejection(local_server: Any) -> None:
    """POST /tools/{id}/reject: the run goes on with the rejection as the result text."""
    async with local_server() as srv:
        reply = await send(srv, "may I?")
        chat_id = reply["user_message"]["chat_id"]
        async with chat_stream(srv, chat_id, accept=NDJSON) as stream:
            waiting = (await stream.until(invocation_waiting))[-1]
            tool_id = waiting.data["tool_invocations"][0]["id"]
            status, _ = await post(srv, f"/tools/{tool_id}/reject", {"reason": "not now"})
            assert status == 200
            last = (await stream.until(ended))[-1]
        rejection = "The user rejected this tool call. Reason: not now"
        assert last.data["active_run"]["output"] == answer("may I?", rejection, 1)
        assert (await post(srv, f"/tools/{tool_id}", {"result": "x"}))[0] == 409


# -- stop ------------------------------------------------------------------------------------------


async def test_stop_during_reasoning(local_server: Any) -> None:
    """Stop cancels the agent: the message keeps its reasoning so far, the run is canceled."""
    async with local_server(agent_step_delay=0.5) as srv:
        reply = await send(srv, "stop me")
        chat_id = reply["user_message"]["chat_id"]
        async with chat_stream(srv, chat_id) as stream:
            first = (await stream.until(lambda i: i.event == "delta"))[-1]
            status, payload = await post(srv, f"/chats/{chat_id}/stop")
            assert status == 200
            assert payload["data"]["active_run"]["state"] == "canceled"
            rest = await stream.until(ended)
        assert [i.event for i in rest] == ["chat_messages", "chats"]
        thought = first.data["delta"]["reasoning"]
        assert rest[0].data["status"] == "cancelled"
        assert rest[0].data["content"] == [{"type": "reasoning", "text": thought}]
        assert rest[1].data["status"] == "idle"
        assert rest[1].data["active_run"] == {
            "id": reply["user_message"]["agent_run_id"],
            "state": "canceled",
        }
        chat = srv.emu.chats.get(chat_id)
        assert await srv.emu.async_wait_until(lambda _: chat.run.runner.done(), timeout=2)
        assert chat.run.runner.cancelled()


async def test_stop_during_the_tool_wait(local_server: Any) -> None:
    """Stop while waiting for a client tool: the invocation is cancelled and closed to results."""
    async with local_server() as srv:
        reply = await send(srv, "wait for me")
        chat_id = reply["user_message"]["chat_id"]
        async with chat_stream(srv, chat_id) as stream:
            waiting = (await stream.until(invocation_waiting))[-1]
            tool_id = waiting.data["tool_invocations"][0]["id"]
            assert (await post(srv, f"/chats/{chat_id}/stop"))[0] == 200
            rest = await stream.until(ended)
        assert [i.event for i in rest] == ["chat_messages", "chats"]
        assert rest[0].data["status"] == "cancelled"
        assert rest[0].data["content"] == [{"type": "reasoning", "text": REASONING}]
        assert rest[0].data["tool_invocations"][0]["status"] == "cancelled"
        assert rest[1].data["active_run"]["state"] == "canceled"
        assert (await post(srv, f"/tools/{tool_id}", {"result": "late"}))[0] == 409
        # The chat is free for the next message, which is its second turn.
        _, last = await turn(srv, "again", "fine", chat_id)
        assert last.data["active_run"]["output"] == answer("again", "fine", 2)


async def test_stop_when_idle_is_a_no_op(local_server: Any) -> None:
    """Stop on an idle chat answers 200 and logs nothing; on an unknown chat, 404."""
    async with local_server() as srv:
        reply, _ = await turn(srv, "done", "r")
        chat_id = reply["user_message"]["chat_id"]
        log = srv.emu.chats.get(chat_id).log
        before = log.last_seq
        status, payload = await post(srv, f"/chats/{chat_id}/stop")
        assert status == 200
        assert payload["data"]["status"] == "idle"
        assert payload["data"]["active_run"]["state"] == "completed"
        assert log.last_seq == before
        assert (await post(srv, "/chats/chat_nope/stop"))[0] == 404


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"chat_id": None, "input": {}, "agent": AGENT}, "input.text"),
        ({"chat_id": None, "input": {"text": 3}, "agent": AGENT}, "input.text"),
        ({"chat_id": None, "agent": AGENT}, "input"),
        ({"chat_id": None, "input": {"text": "x"}}, "agent"),
        ({"chat_id": None, "input": {"text": "x"}, "agent": 7}, "agent"),
        ({"chat_id": None, "input": {"text": "x"}, "agent": "no-slash"}, "agent"),
        ({"chat_id": None, "input": {"text": "x"}, "agent": "a/b:fn"}, "agent"),
        ({"chat_id": 5, "input": {"text": "x"}, "agent": AGENT}, "chat_id"),
        ({"input": {"text": "x", "attachments": "f"}, "agent": AGENT}, "input.attachments"),
        ([1, 2], "body"),
    ],
)
async def test_bad_run_requests_are_400_naming_the_field(
    local_server: Any, body: Any, field: str
) -> None:
    """Malformed POST /agents/run bodies: 400 problem+json naming the field; no chat made."""
    async with local_server() as srv:
        status, payload = await post(srv, "/agents/run", body)
        assert status == 400
        assert payload["detail"].startswith(f"field {field!r}")
        assert len(srv.emu.chats) == 0


async def test_not_found_and_conflict_answers(local_server: Any) -> None:
    """404 for unknown chats and invocations, 409 for a busy chat and a second result."""
    async with local_server() as srv:
        body = {"chat_id": "chat_unknown", "input": {"text": "x"}, "agent": AGENT}
        status, payload = await post(srv, "/agents/run", body)
        assert (status, payload["error"]["code"]) == (404, "not_found")
        assert "chat_unknown" in payload["detail"]
        for path in ("/chats/chat_unknown", "/chats/chat_unknown/stream"):
            async with srv.session.get(path) as resp:
                assert resp.status == 404
                assert resp.content_type == "application/problem+json"
        assert (await post(srv, "/tools/ti_unknown", {"result": "x"}))[0] == 404
        assert (await post(srv, "/tools/ti_unknown/reject", {"reason": ""}))[0] == 404

        reply = await send(srv, "busy")
        chat_id = reply["user_message"]["chat_id"]
        status, payload = await post(srv, "/agents/run", {**body, "chat_id": chat_id})
        assert (status, payload["error"]["code"]) == (409, "conflict")
        async with chat_stream(srv, chat_id) as stream:
            waiting = (await stream.until(invocation_waiting))[-1]
            tool_id = waiting.data["tool_invocations"][0]["id"]
            for bad in ({"result": {"a": 1}}, {}, {"result": None}):
                status, payload = await post(srv, f"/tools/{tool_id}", bad)
                assert status == 400
                assert payload["detail"].startswith("field 'result'")
            assert (await post(srv, f"/tools/{tool_id}", {"result": "one"}))[0] == 200
            assert (await post(srv, f"/tools/{tool_id}", {"result": "two"}))[0] == 409
            last = (await stream.until(ended))[-1]
        assert last.data["active_run"]["output"] == answer("busy", "one", 1)


async def test_strict_apps_makes_unregistered_agents_404(local_server: Any) -> None:
    """With strict_apps only registered agents run."""

    async def echo(text: str, ctx: AgentContext) -> str:
        return text

    async with local_server(strict_apps=True, agents={"my-org/echo": echo}) as srv:
        status, payload = await post(
            srv, "/agents/run", {"chat_id": None, "input": {"text": "x"}, "agent": AGENT}
        )
        assert status == 404
        assert "my-org/assistant" in payload["detail"]
        reply = await send(srv, "hi", agent="my-org/echo@v2")
        async with chat_stream(srv, reply["user_message"]["chat_id"]) as stream:
            last = (await stream.until(ended))[-1]
        assert last.data["active_run"]["output"] == "hi"


async def test_faults_apply_to_chat_endpoints(local_server: Any) -> None:
    """fail_next answers chat requests with the forced error too, before anything else."""
    async with local_server() as srv:
        srv.emu.faults.fail_next(1, status=503, retry_after=3)
        async with srv.session.post("/agents/run", json={}) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "3"
        assert len(srv.emu.chats) == 0
        reply = await send(srv, "after the fault")
        assert reply["user_message"]["order"] == 1


async def read_until_cut(url: str, path: str, headers: dict[str, str]) -> tuple[list[Item], bool]:
    """GET over a bare socket in HTTP/1.0 (no chunked framing), so every byte that arrived
    before a cut is kept. Returns the SSE payloads and whether the server cut the connection
    (False: a run-ended payload arrived and the stream, which stays open, was left)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    request = [f"GET {path} HTTP/1.0", f"Host: {parts.netloc}"]
    request += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(request) + "\r\n\r\n").encode("latin-1"))
    data = b""
    items: list[Item] = []
    try:
        async with asyncio.timeout(5):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return items, True
                data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                assert head.split(b"\r\n")[0].split(b" ")[1] == b"200", head
                items = []
                for block in body.decode("ascii").split("\n\n")[:-1]:
                    fields = {}
                    for line in block.split("\n"):
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
                    if "data" in fields:
                        payload = json.loads(fields["data"])
                        items.append(Item(int(fields["id"]), payload["event"], payload["data"]))
                if items and ended(items[-1]):
                    return items, False
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_drop_after_cuts_chat_streams_and_resume_is_exact(local_server: Any) -> None:
    """Each connection is cut after drop_after events; resuming loses and repeats nothing."""
    async with local_server(drop_after=2) as srv:
        reply = await send(srv, "flaky network")
        chat_id = reply["user_message"]["chat_id"]
        headers = {"Authorization": "Bearer test-key", "Accept": SSE}
        seen: list[Item] = []
        answered = False
        for _ in range(100):
            items, cut = await read_until_cut(srv.url, f"/chats/{chat_id}/stream", headers)
            assert len(items) == (2 if cut else len(items))
            assert 1 <= len(items) <= 2
            seen += items
            for item in items:
                if not answered and invocation_waiting(item):
                    tool_id = item.data["tool_invocations"][0]["id"]
                    assert (await post(srv, f"/tools/{tool_id}", {"result": "r"}))[0] == 200
                    answered = True
            if not cut:
                break
            headers["Last-Event-ID"] = str(items[-1].id)
        assert ended(seen[-1])
        ids = [item.id for item in seen]
        first = ids[0]
        assert first is not None
        assert ids[:2] == [first, first]  # the snapshot's first two payloads
        live = ids[2:]
        assert live == list(range(first + 1, first + 1 + len(live)))
        assert "".join(pieces(seen, "response")) == answer("flaky network", "r", 1)
        assert srv.emu.streams_opened >= 5


# -- history and local agents ----------------------------------------------------------------------


async def test_multi_turn_chat_keeps_history(local_server: Any) -> None:
    """The second message in a chat is turn 2, with orders 3 and 4; an open stream sees it."""
    async with local_server() as srv:
        first, _ = await turn(srv, "first question", "r1")
        chat_id = first["user_message"]["chat_id"]
        async with chat_stream(srv, chat_id, accept=NDJSON) as stream:
            snapshot = [await stream.next() for _ in range(3)]  # the 2 messages, then the chat
            assert [i.event for i in snapshot] == ["chat_messages", "chat_messages", "chats"]
            assert snapshot[2].data["status"] == "idle"
            second, last = await turn(srv, "second question", "r2", chat_id)
            live = await stream.until(ended)
        assert second["user_message"]["order"] == 3
        assert second["assistant_message"]["order"] == 4
        assert second["user_message"]["agent_run_id"] != first["user_message"]["agent_run_id"]
        expected = answer("second question", "r2", 2)
        assert last.data["output"] == expected
        assert live[-1] == last
        new = [i for i in live if i.event == "chat_messages" and i.data["role"] == "user"]
        assert [i.data for i in new] == [second["user_message"]]
        chat = await get_chat(srv, chat_id)
        assert [m["order"] for m in chat["messages"]] == [1, 2, 3, 4]
        assert [m["status"] for m in chat["messages"]] == ["ready"] * 4


async def test_registered_agent_thinks_says_calls_tools_and_sees_history(
    local_server: Any,
) -> None:
    """A local Python agent: think/say stream deltas, call_tool waits for the client."""
    histories: list[list[dict[str, str]]] = []
    gate = asyncio.Event()  # opened once the test's stream has its snapshot

    async def agent(text: str, ctx: AgentContext) -> str:
        await gate.wait()
        histories.append(list(ctx.history))
        ctx.think("hmm ")
        ctx.think("ok")
        ctx.say("Looking up. ")
        found = await ctx.call_tool("lookup", {"term": text, "n": 2})
        ctx.say(f"Found {found}.")
        return f" ({len(ctx.history)} earlier)"

    emu = Emulator(EmulatorOptions(sim_step_delay=0.005))
    emu.register_agent("acme/helper", agent)
    async with local_server(emu) as srv:
        reply = await send(srv, "cats", agent="acme/helper")
        chat_id = reply["user_message"]["chat_id"]
        async with chat_stream(srv, chat_id) as stream:
            snapshot = await stream.until(lambda i: i.event == "chats")
            assert [i.event for i in snapshot] == ["chat_messages", "chat_messages", "chats"]
            assert [i.data["role"] for i in snapshot[:2]] == ["user", "assistant"]
            gate.set()
            waiting = (await stream.until(invocation_waiting))[-1]
            invocation = waiting.data["tool_invocations"][0]
            assert invocation["function"] == {
                "name": "lookup",
                "arguments": {"term": "cats", "n": 2},
            }
            assert invocation["display_name"] == "lookup"
            assert waiting.data["content"] == [
                {"type": "reasoning", "text": "hmm ok"},
                {"type": "text", "text": "Looking up. "},
            ]
            assert (await post(srv, f"/tools/{invocation['id']}", {"result": "3 cats"}))[0] == 200
            rest = await stream.until(ended)
        assert pieces(stream.items, "reasoning") == ["hmm ", "ok"]
        assert pieces(stream.items, "response") == ["Looking up. ", "Found 3 cats.", " (0 earlier)"]
        full = "Looking up. Found 3 cats. (0 earlier)"
        assert rest[-2].data["content"][1] == {"type": "text", "text": full}
        assert rest[-1].data["active_run"]["output"] == full

        await send(srv, "dogs", chat_id, agent="acme/helper")
        async with chat_stream(srv, chat_id, accept=NDJSON) as stream:
            waiting = (await stream.until(invocation_waiting))[-1]
            tool_id = waiting.data["tool_invocations"][0]["id"]
            assert (await post(srv, f"/tools/{tool_id}", {"result": "dogs"}))[0] == 200
            last = (await stream.until(ended))[-1]
        assert last.data["output"].endswith("(2 earlier)")
        assert histories == [
            [],
            [{"role": "user", "text": "cats"}, {"role": "assistant", "text": full}],
        ]


async def test_raising_agent_fails_the_run_with_its_message(local_server: Any) -> None:
    """An agent that raises: its partial answer is kept, the run fails with the message."""

    gate = asyncio.Event()

    async def broken(text: str, ctx: AgentContext) -> str:
        await gate.wait()
        ctx.say("partial")
        await asyncio.sleep(0)
        raise ValueError("the model is on fire")

    async with local_server(agents={"acme/broken": broken}) as srv:
        reply = await send(srv, "go", agent="acme/broken")
        async with chat_stream(srv, reply["user_message"]["chat_id"], accept=NDJSON) as stream:
            snapshot = await stream.until(lambda i: i.event == "chats")
            assert [i.event for i in snapshot] == ["chat_messages", "chat_messages", "chats"]
            assert [i.data["role"] for i in snapshot[:2]] == ["user", "assistant"]
            gate.set()
            rest = await stream.until(ended)
        assert [i.event for i in rest] == ["delta", "chat_messages", "chats"]
        assert rest[-2].data["status"] == "failed"
        assert rest[-2].data["content"] == [{"type": "text", "text": "partial"}]
        assert rest[-1].data["active_run"]["state"] == "failed"
        assert rest[-1].data["active_run"]["error"] == "the model is on fire"
        assert rest[-1].data["output"] is None


async def test_ad_hoc_agent_config_runs_the_scripted_agent(local_server: Any) -> None:
    """An agent_config object instead of an agent reference is accepted."""
    async with local_server() as srv:
        body = {"chat_id": None, "input": {"text": "adhoc"}, "agent_config": {"name": "tmp"}}
        status, payload = await post(srv, "/agents/run", body)
        assert status == 200
        assert payload["data"]["assistant_message"]["status"] == "pending"


async def test_idle_chats_are_bounded(local_server: Any) -> None:
    """Idle chats beyond max_finished_tasks are forgotten, with their tool invocations."""
    async with local_server(max_finished_tasks=1) as srv:
        first, _ = await turn(srv, "one", "r")
        old_chat = first["user_message"]["chat_id"]
        old_tool = (await get_chat(srv, old_chat))["messages"][1]["tool_invocations"][0]["id"]
        await turn(srv, "two", "r")
        async with srv.session.get(f"/chats/{old_chat}") as resp:
            assert resp.status == 404
        assert (await post(srv, f"/tools/{old_tool}", {"result": "x"}))[0] == 404
        assert len(srv.emu.chats) == 1


async def test_idle_chats_expire_after_the_ttl(local_server: Any) -> None:
    """An idle chat is forgotten finished_task_ttl seconds after its run ended."""
    async with local_server(finished_task_ttl=0.1) as srv:
        reply, _ = await turn(srv, "short-lived", "r")
        chat_id = reply["user_message"]["chat_id"]
        assert await srv.emu.async_wait_until(lambda emu: len(emu.chats) == 0, timeout=5)
        assert srv.emu.chat_snapshot(chat_id) is None


# -- command line ----------------------------------------------------------------------------------


def test_serve_rejects_bad_agent_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """--agent needs NS/NAME=MODULE:FUNCTION; --tool-timeout a positive number."""
    assert main(["serve", "--agent", "nonsense"]) == 2
    assert "--agent: expected ns/name=package.module:function" in capsys.readouterr().err
    assert main(["serve", "--tool-timeout", "0"]) == 2
    assert "--tool-timeout" in capsys.readouterr().err


async def test_serve_subprocess_with_an_agent_and_tool_timeout(tmp_path: Path) -> None:
    """`serve --agent ns/name=module:fn --tool-timeout S` registers the agent and the bound."""
    (tmp_path / "my_agents.py").write_text(
        textwrap.dedent(
            """
            async def ask(text, ctx):
                ctx.say("asking ")
                return await ctx.call_tool("human", {"q": text})
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferencesh", "serve", "--port", "0",
        "--agent", "me/ask=my_agents:ask", "--tool-timeout", "0.2", "--strict-apps",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:"), line
        async with aiohttp.ClientSession(url, headers={"Authorization": "Bearer k"}) as session:
            srv = Client(session)
            reply = await send(srv, "anyone?", agent="me/ask")
            async with chat_stream(srv, reply["user_message"]["chat_id"]) as stream:
                last = (await stream.until(ended))[-1]
            assert (
                last.data["active_run"]["error"] == "client tool 'human' got no result within 0.2 s"
            )
            status, _ = await post(srv, "/agents/run", {"input": {"text": "x"}, "agent": AGENT})
            assert status == 404
    finally:
        proc.terminate()
        async with asyncio.timeout(15):
            await proc.communicate()
