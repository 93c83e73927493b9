"""Agent chats with client tool calls, sync and async, against the emulator's scripted agent."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import hostile
import pytest
from support import fast_emulator, sdk_threads, seed_examples

from inferencesh import (
    AgentError,
    AsyncAgent,
    ChatMessage,
    ConflictError,
    ConnectError,
    Inference,
    MessageEvent,
    RetryPolicy,
    ServerError,
    StreamInterruptedError,
    TaskTimeoutError,
    ToolCall,
    ToolCallError,
    UsageError,
    async_inference,
    inference,
)
from inferencesh.local import AgentContext, Emulator, serve_in_thread

AGENT = "my-org/assistant@latest"


def execute_tool(name: str, args: Any) -> dict[str, Any]:
    """The small tool runner the seed example leaves to the reader."""
    return {"tool": name, "echo": args}


@pytest.mark.parametrize("drop_after", [None, 1, 2, 3])
def test_seed_agent_streaming_sync(
    drop_after: int | None,
    emu: Emulator,
    server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The seed's "Agent Streaming" example runs verbatim on the blocking client."""
    emu.faults.drop_after = drop_after
    monkeypatch.setenv("INFERENCE_BASE_URL", server)
    client = inference(api_key="inf_...")
    namespace: dict[str, Any] = {"client": client, "execute_tool": execute_tool}
    try:
        exec(seed_examples()["Agent Streaming"], namespace)
    finally:
        client.close()
    assert [] == sdk_threads()
    out = capsys.readouterr().out
    response: ChatMessage = namespace["response"]
    assert "[Calling tool: " in out
    assert 1 == out.count("[Calling tool: ")
    assert "[Thinking: " in out
    assert response.text
    assert response.text in out
    assert "Explain quantum entanglement" in response.text
    assert "completed" == response.tool_calls[0].raw["status"]


@pytest.mark.anyio
@pytest.mark.parametrize("drop_after", [None, 1, 2, 3])
async def test_agent_streaming_async_twin(drop_after: int | None) -> None:
    """The same flow on the async client, with async callbacks."""
    emu = fast_emulator(drop_after=drop_after)
    pieces: list[MessageEvent] = []
    calls: list[ToolCall] = []
    with serve_in_thread(emu) as url:
        async with async_inference(api_key="k", base_url=url) as client:
            agent = client.agent(AGENT)

            async def on_tool_call(call: ToolCall) -> None:
                calls.append(call)
                await agent.submit_tool_result(call.id, execute_tool(call.name, call.args))

            response = await agent.send_message(
                "What is the weather?", on_message=pieces.append, on_tool_call=on_tool_call
            )
    text = "".join(p.content for p in pieces if p.type == "text")
    thinking = "".join(p.content for p in pieces if p["type"] == "thinking")
    assert text == response.text
    assert thinking == response.reasoning
    assert thinking
    assert 1 == len(calls)
    assert "What is the weather?" == calls[0].args["query"]
    assert json.dumps(execute_tool(calls[0].name, calls[0].args)) in response.text


def test_multi_turn_chat_keeps_history(client: Inference) -> None:
    """Two messages go to one chat and the second answer sees the first turn."""
    agent = client.agent(AGENT)

    def on_tool_call(call: ToolCall) -> None:
        agent.submit_tool_result(call.id, f"result for {call.args['query']}")

    first = agent.send_message("first question", on_tool_call=on_tool_call)
    chat_id = agent.chat_id
    second = agent.send_message("second question", on_tool_call=on_tool_call)
    assert chat_id == agent.chat_id
    assert "first question" in first.text
    assert "second question" in second.text
    assert "turn 2" in second.text
    assert first.id != second.id


def test_tool_handler_that_raises_stops_the_run(client: Inference) -> None:
    """A failing handler raises ToolCallError and the chat is free for the next message."""
    agent = client.agent(AGENT)

    def broken(call: ToolCall) -> None:
        raise ValueError("tool exploded")

    with pytest.raises(ToolCallError, match="tool exploded") as info:
        agent.send_message("hello", on_tool_call=broken)
    assert isinstance(info.value.__cause__, ValueError)
    answer = agent.send_message(
        "again", on_tool_call=lambda call: agent.submit_tool_result(call.id, "ok")
    )
    assert "ok" in answer.text


def test_tool_call_without_handler_is_a_clear_error(client: Inference) -> None:
    """No on_tool_call handler (a misuse): a ToolCallError naming the tool, not a hang, and
    the run was stopped, so the chat takes the next message at once."""
    agent = client.agent(AGENT)
    with pytest.raises(ToolCallError, match="no on_tool_call handler"):
        agent.send_message("hello")
    assert "again" in agent.send_message("again", on_tool_call=_answers(agent)).text


class _Abort(BaseException):
    """Not an Exception: what a framework might raise to unwind a handler."""


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["tool", "message"])
async def test_any_base_exception_from_an_async_callback_stops_the_run(
    server: str, where: str
) -> None:
    """A BaseException that is not an Exception, from an async tool handler or message
    callback, reaches the caller as itself after the run was stopped."""
    async with async_inference(api_key="k", base_url=server) as client:
        agent = client.agent(AGENT)

        async def abort(event: Any) -> None:
            raise _Abort

        async def answer(call: ToolCall) -> None:
            await agent.submit_tool_result(call.id, "ok")

        callbacks: dict[str, Any] = {"on_tool_call": abort}
        if where == "message":
            callbacks = {"on_message": abort, "on_tool_call": answer}
        with pytest.raises(_Abort):
            await agent.send_message("hello", **callbacks)
        assert "again" in (await agent.send_message("again", on_tool_call=answer)).text


def test_stop_during_streaming(client: Inference) -> None:
    """stop() from a callback ends the run promptly; send_message returns the partial answer."""
    agent = client.agent(AGENT)
    stopped = threading.Event()

    def on_message(msg: MessageEvent) -> None:
        if not stopped.is_set():
            stopped.set()
            agent.stop()

    message = agent.send_message("stop me", on_message=on_message)
    assert stopped.is_set()
    assert "cancelled" == message.status


def test_tool_result_timeout_fails_the_run() -> None:
    """With no tool result in time the run fails with a clear AgentError."""
    emu = fast_emulator(tool_timeout=0.3)
    with serve_in_thread(emu) as url, inference(api_key="k", base_url=url) as client:
        agent = client.agent(AGENT)
        with pytest.raises(AgentError, match="no result") as info:
            agent.send_message("slow tool", on_tool_call=lambda call: None)
    assert not isinstance(info.value, ToolCallError)


def test_dict_and_string_results_are_accepted(client: Inference) -> None:
    """A dict result is sent as JSON text; a string as it is."""
    agent = client.agent(AGENT)
    reply = agent.send_message(
        "dict please", on_tool_call=lambda c: agent.submit_tool_result(c.id, {"a": [1, 2]})
    )
    assert '{"a": [1, 2]}' in reply.text
    reply = agent.send_message(
        "string please", on_tool_call=lambda c: agent.submit_tool_result(c.id, "plain words")
    )
    assert "plain words" in reply.text
    with pytest.raises(UsageError):
        agent.submit_tool_result("ti_x", object())


@pytest.mark.timeout(15)
def test_run_that_ended_before_the_stream_opened_still_returns_its_text(
    emu: Emulator, client: Inference
) -> None:
    """Regression: a run that has ended when the client connects, with no tool call.

    The snapshot of a new connection must give the messages before the chat, whose ended run
    makes the client stop reading: with the chat first the answer came back empty.
    """

    async def quick(text: str, ctx: AgentContext) -> None:
        ctx.say("done: " + text)  # the run ends in the same step: no await in between

    emu.register_agent("ns/quick", quick)
    # Every request waits before it is handled, the stream's GET included, while the run
    # started by POST /agents/run finishes on the server.
    emu.faults.delay = 0.3
    pieces: list[MessageEvent] = []
    message = client.agent("ns/quick").send_message("hello", on_message=pieces.append)
    assert "done: hello" == message.text
    assert "ready" == message.status
    assert "assistant" == message.role
    # The text came from the snapshot's message, not from a delta: the stream opened after
    # ctx.say, so after the run's end.
    assert [("text", "done: hello")] == [(p.type, p.content) for p in pieces]
    assert "delta" not in pieces[0].raw
    assert "done: hello" == pieces[0].raw["content"][0]["text"]


@pytest.fixture
def client(server: str) -> Iterator[Inference]:
    """A blocking client on the fast emulator; no SDK thread may outlive it."""
    with inference(api_key="k", base_url=server) as c:
        yield c
    assert [] == sdk_threads()


@pytest.mark.parametrize("bad", [123, "", " padded", "chat\n1", "c" * 1025])
def test_an_unusable_chat_id_is_a_usage_error(client: Inference, bad: Any) -> None:
    """A chat_id goes into URL paths (`/chats/{id}/stop`): one that cannot (not a string,
    empty, control characters) is refused when the agent is made, as a task id is."""
    with pytest.raises(UsageError, match="chat_id"):
        client.agent(AGENT, chat_id=bad)
    assert client.agent(AGENT, chat_id="chat/1").chat_id == "chat/1"  # quoted in paths


def _answers(agent: Any) -> Any:
    return lambda call: agent.submit_tool_result(call.id, "ok")


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_tool_handler_stops_the_run_first(
    client: Inference, interruption: type[BaseException]
) -> None:
    """Ctrl-C (or SystemExit) in a blocking tool handler reaches the caller as itself, after
    the run was stopped: the chat takes the next message at once (no 409)."""
    agent = client.agent(AGENT)

    def interrupted(call: ToolCall) -> None:
        raise interruption

    with pytest.raises(interruption):
        agent.send_message("hello", on_tool_call=interrupted)
    assert "again" in agent.send_message("again", on_tool_call=_answers(agent)).text


def test_an_async_callback_on_the_blocking_agent_is_refused_and_stops_the_run(
    client: Inference,
) -> None:
    """A coroutine function given to the blocking agent: UsageError, the coroutine closed (no
    'never awaited' warning, which the suite turns into an error), the chat free again."""
    agent = client.agent(AGENT)

    async def handler(call: ToolCall) -> None:
        agent.submit_tool_result(call.id, "never")

    with pytest.raises(ToolCallError) as info:
        agent.send_message("hello", on_tool_call=handler)
    assert isinstance(info.value.__cause__, UsageError)
    assert "again" in agent.send_message("again", on_tool_call=_answers(agent)).text


def test_a_message_callback_that_raises_stops_the_run(client: Inference) -> None:
    """An on_message error is the caller's own exception, raised after the run was stopped."""
    agent = client.agent(AGENT)

    def failing(message: MessageEvent) -> None:
        raise LookupError("display broke")

    with pytest.raises(LookupError, match="display broke"):
        agent.send_message("hello", on_message=failing, on_tool_call=_answers(agent))
    assert "again" in agent.send_message("again", on_tool_call=_answers(agent)).text


@pytest.mark.anyio
async def test_a_cancelled_async_send_message_stops_the_run(server: str) -> None:
    """Cancelling `send_message` while the agent waits on a tool stops the run too."""
    import asyncio

    async with async_inference(api_key="k", base_url=server) as client:
        agent = client.agent(AGENT)
        waiting = asyncio.Event()

        async def slow(call: ToolCall) -> None:
            waiting.set()
            await asyncio.Event().wait()  # until cancelled

        task = asyncio.create_task(agent.send_message("hello", on_tool_call=slow))
        async with asyncio.timeout(10):
            await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def answer(call: ToolCall) -> None:
            await agent.submit_tool_result(call.id, "ok")

        assert "again" in (await agent.send_message("again", on_tool_call=answer)).text


def test_ctrl_c_while_the_blocking_agent_waits_stops_the_run(client: Inference) -> None:
    """Ctrl-C while `send_message` waits for the agent (not inside a callback): the run is
    stopped before KeyboardInterrupt reaches the caller, so the chat takes the next message."""
    import os
    import signal

    agent = client.agent(AGENT)
    handed = threading.Event()

    def leave_it(call: ToolCall) -> None:
        handed.set()  # and answer nothing: the agent waits for this tool's result

    def interrupt() -> None:
        if handed.wait(10):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        agent.send_message("hello", on_tool_call=leave_it)
    assert "again" in agent.send_message("again", on_tool_call=_answers(agent)).text


def test_a_callback_that_closes_the_client_ends_in_usage_error(server: str) -> None:
    """A callback that closes the client under its own call: the call ends with UsageError,
    never a raw 'Event loop is closed'."""
    client = inference(api_key="k", base_url=server)
    agent = client.agent(AGENT)

    def closing(message: MessageEvent) -> None:
        client.close()

    with pytest.raises(UsageError, match="closed"):
        agent.send_message("hello", on_message=closing)


@pytest.mark.anyio
async def test_an_agent_runs_total_timeout_is_a_task_timeout() -> None:
    """`total_timeout` on an agent's stream raises TaskTimeoutError, as on a task's."""
    import inferencesh

    emu = fast_emulator(tool_timeout=5.0)
    with serve_in_thread(emu) as url:
        async with async_inference(api_key="k", base_url=url) as client:
            options = inferencesh.StreamingOptions(total_timeout=0.3)
            agent = client.agent(AGENT, options=options)

            async def never(call: ToolCall) -> None:
                pass

            with pytest.raises(inferencesh.TaskTimeoutError, match="chat"):
                await agent.send_message("slow tool", on_tool_call=never)


def test_the_blocking_agent_sends_files_and_tool_attachments(tmp_path: Any) -> None:
    """The blocking agent passes `files` and tool `attachments` through the same core."""
    from pathlib import Path

    from inferencesh.local import serve_in_thread

    async def counter(text: str, ctx: AgentContext) -> str:
        result = await ctx.call_tool_result("more", {})
        return f"{len(ctx.attachments)} then {len(result.attachments)}"

    emu = fast_emulator()
    emu.register_agent("acme/counter", counter)
    note = Path(tmp_path) / "note.txt"
    note.write_text("hello", encoding="utf-8")
    with serve_in_thread(emu) as url, inference(api_key="k", base_url=url) as client:
        agent = client.agent("acme/counter")
        reply = agent.send_message(
            "count",
            files=[note, b"two"],
            on_tool_call=lambda call: agent.submit_tool_result(
                call.id, "ok", attachments=[b"a", b"b", b"c"]
            ),
        )
    assert "2 then 3" == reply.text


# -- a message cut short while it is being sent ----------------------------------------------------


class _Relay:
    """A raw loopback server (tests/hostile.py) in front of the emulator: it forwards each
    request and relays the emulator's answer, except that once the emulator has taken a
    `POST /agents/run` it can hold that answer (`hold`, until the client hangs up), close the
    connection instead (`cut`), or answer 502 as a gateway would (`502`); and it can answer
    every stop itself with `stop_status`, a problem whose detail is hostile text.

    A stop is forwarded only once the message it follows has reached the emulator, so it can
    never overtake the run it is meant to stop."""

    def __init__(self, upstream: str, *, run: str = "pass", stop_status: int | None = None) -> None:
        self.upstream = upstream
        self.run = run
        self.stop_status = stop_status
        self.forwarded = threading.Event()  # the emulator answered POST /agents/run
        self._forward: asyncio.Future[tuple[int, bytes, str]] | None = None

    async def __call__(self, exchange: hostile.Exchange) -> None:
        path = exchange.request.path
        if path == "/agents/run":
            self._forward = asyncio.ensure_future(self._upstream(exchange.request))
            status, body, kind = await self._forward
            self.forwarded.set()
            if self.run == "hold":
                await exchange.hang()
            elif self.run == "cut":
                await exchange.close()
            elif self.run == "502":
                await exchange.respond(502, {"detail": "bad gateway"}, reason="Bad Gateway")
            else:
                await exchange.respond(status, body, content_type=kind)
            return
        if path.endswith("/stop") and self._forward is not None:
            await asyncio.wait([self._forward], timeout=10)
        if path.endswith("/stop") and self.stop_status is not None:
            detail = "stop broke\nWARNING forged log line " + "x" * 5000
            await exchange.respond(self.stop_status, {"detail": detail})
            return
        status, body, kind = await self._upstream(exchange.request)
        await exchange.respond(status, body, content_type=kind)

    async def _upstream(self, request: hostile.Request) -> tuple[int, bytes, str]:
        headers = {
            name: request.headers[name.lower()]
            for name in ("Authorization", "Content-Type", "Accept")
            if name.lower() in request.headers
        }
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(
                request.method, self.upstream + request.path, data=request.body, headers=headers
            ) as resp,
        ):
            return resp.status, await resp.read(), resp.content_type

    @staticmethod
    def stops(server: hostile.HostileServer, chat_id: str) -> int:
        return server.paths().count(f"/chats/{chat_id}/stop")


_NO_RETRY = RetryPolicy(max_retries=0)


async def _cancelled_in_flight(agent: AsyncAgent, relay: _Relay) -> None:
    """Send a message and cancel it once the emulator has taken it (its answer held)."""
    task = asyncio.create_task(agent.send_message("hello"))
    assert await asyncio.to_thread(relay.forwarded.wait, 10)
    task.cancel()
    await task


async def _chat_with_one_turn(url: str) -> str:
    """The id of a chat that has answered one message and is idle again."""
    async with async_inference(api_key="k", base_url=url) as client:
        agent = client.agent(AGENT)

        async def answer(call: ToolCall) -> None:
            await agent.submit_tool_result(call.id, "ok")

        await agent.send_message("first", on_tool_call=answer)
        assert agent.chat_id is not None
        return agent.chat_id


async def _takes_a_message(url: str, chat_id: str) -> None:
    """The chat is not busy: a new message to it runs to its end (a busy chat answers 409)."""
    async with async_inference(api_key="k", base_url=url) as client:
        agent = client.agent(AGENT, chat_id=chat_id)

        async def answer(call: ToolCall) -> None:
            await agent.submit_tool_result(call.id, "ok")

        assert "again" in (await agent.send_message("again", on_tool_call=answer)).text


@pytest.mark.anyio
@pytest.mark.parametrize("ending", ["cancel", "timeout", "cut", "502"])
async def test_a_message_to_an_existing_chat_cut_short_in_flight_stops_its_run(
    emu: Emulator, server: str, ending: str
) -> None:
    """Cancelled, timed out, its connection dropped or a gateway's 502, while the POST that
    sends the message to an existing chat waits for its answer: the emulator took the message
    and started a run, so `send_message` stops the chat's run (once) before it raises, and the
    chat takes the next message. The stop's answer (the chat) never replaces the error."""
    chat_id = await _chat_with_one_turn(server)
    relay = _Relay(server, run="hold" if ending in ("cancel", "timeout") else ending)
    expected: dict[str, type[BaseException]] = {
        "cancel": asyncio.CancelledError,
        "timeout": TaskTimeoutError,
        "cut": StreamInterruptedError,
        "502": ServerError,
    }
    async with (
        hostile.serving(relay) as proxy,
        async_inference(api_key="k", base_url=proxy.url, retry=_NO_RETRY) as client,
    ):
        agent = client.agent(AGENT, chat_id=chat_id)
        timeout = 1.0 if ending == "timeout" else None
        with pytest.raises(expected[ending]) as info:
            await (
                _cancelled_in_flight(agent, relay)
                if ending == "cancel"
                else agent.send_message("hello", timeout=timeout)
            )
        assert [f"stopped the agent run in chat '{chat_id}'"] == info.value.__notes__
        assert 1 == _Relay.stops(proxy, chat_id)
    chat = emu.chats.get(chat_id)
    assert chat is not None
    assert chat.run is not None
    assert "hello" == chat.run.user.text  # the run of the message cut short ...
    assert "canceled" == chat.run.state  # ... was stopped
    await _takes_a_message(server, chat_id)


@pytest.mark.anyio
@pytest.mark.parametrize("case", ["busy", "refused", "new chat"])
async def test_no_stop_when_the_message_cannot_have_started_a_run(
    emu: Emulator, server: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A message the server refused (409: the chat is busy with another run, which must go
    on), one that could not connect, and one cut short on its way to a new chat (no id to
    stop): no stop is sent, and nothing is noted on the error."""
    chat_id = await _chat_with_one_turn(server)
    relay = _Relay(server, run="hold" if case == "new chat" else "pass")
    other = None
    if case == "busy":  # another client's run, waiting for its tool
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{server}/agents/run",
                json={"chat_id": chat_id, "input": {"text": "other"}, "agent": AGENT},
                headers={"Authorization": "Bearer k"},
            ) as resp,
        ):
            assert 200 == resp.status
            other = (await resp.json())["data"]["user_message"]["agent_run_id"]
    async with hostile.serving(relay) as proxy:
        url = hostile.refused_url() if case == "refused" else proxy.url
        async with async_inference(api_key="k", base_url=url, retry=_NO_RETRY) as client:
            agent = client.agent(AGENT, chat_id=None if case == "new chat" else chat_id)
            expected: type[BaseException] = {
                "busy": ConflictError,
                "refused": ConnectError,
                "new chat": asyncio.CancelledError,
            }[case]
            with pytest.raises(expected) as info:
                await (
                    _cancelled_in_flight(agent, relay)
                    if case == "new chat"
                    else agent.send_message("hello")
                )
        assert not getattr(info.value, "__notes__", None)
        assert not [path for path in proxy.paths() if path.endswith("/stop")]
    assert "could not stop" not in caplog.text
    chat = emu.chats.get(chat_id)
    assert chat is not None
    assert chat.run is not None
    if case == "busy":
        assert other == chat.run.id
        assert chat.busy  # the other client's run goes on
    else:
        assert "completed" == chat.run.state


def _check_note(error: BaseException, chat_id: str) -> None:
    notes = getattr(error, "__notes__", [])
    assert 1 == len(notes), notes
    note = notes[0]
    assert note.startswith(f"could not stop the agent run in chat '{chat_id}': ServerError(")
    assert "HTTP 500" in note
    assert "\n" not in note
    assert "\r" not in note
    assert len(note) < 400


@pytest.mark.anyio
async def test_a_failed_stop_after_a_cancel_in_flight_is_noted_on_the_cancellation(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The stop that follows a cancel while the message is sent fails (500 with a hostile,
    long, multi-line detail): the cancellation is still what is raised, and it carries one
    note, one bounded line with the server's text escaped, saying the run could not be
    stopped and why; the same line is logged."""
    chat_id = await _chat_with_one_turn(server)
    relay = _Relay(server, run="hold", stop_status=500)
    async with (
        hostile.serving(relay) as proxy,
        async_inference(api_key="k", base_url=proxy.url, retry=_NO_RETRY) as client,
    ):
        with pytest.raises(asyncio.CancelledError) as info:
            await _cancelled_in_flight(client.agent(AGENT, chat_id=chat_id), relay)
        assert 1 == _Relay.stops(proxy, chat_id)
    _check_note(info.value, chat_id)
    assert "stop broke\\nWARNING forged log line" in info.value.__notes__[0]
    warnings = [r for r in caplog.records if r.name == "inferencesh.agent"]
    assert 1 == len(warnings)
    assert "WARNING" == warnings[0].levelname
    assert info.value.__notes__[0] in warnings[0].getMessage()


@pytest.mark.anyio
async def test_a_failed_stop_after_a_tool_handler_raised_is_noted_on_its_error(
    emu: Emulator, server: str
) -> None:
    """The stop after an accepted message's tool handler raised fails (the emulator answers
    it 500): the ToolCallError is raised as it was, with the stop's failure noted on it."""
    async with async_inference(api_key="k", base_url=server, retry=_NO_RETRY) as client:
        agent = client.agent(AGENT)

        async def broken(call: ToolCall) -> None:
            emu.faults.fail_next(1, status=500)  # the next request is the stop
            raise ValueError("tool exploded")

        with pytest.raises(ToolCallError, match="tool exploded") as info:
            await agent.send_message("hello", on_tool_call=broken)
    assert 0 == emu.faults.pending_failures
    assert agent.chat_id is not None
    _check_note(info.value, agent.chat_id)


def test_ctrl_c_while_the_blocking_agent_sends_stops_the_run(
    emu: Emulator, server: str, client: Inference
) -> None:
    """Ctrl-C while the blocking agent's message to an existing chat is on its way (the
    emulator took it, its answer is held): the same async path stops the run before
    KeyboardInterrupt reaches the caller, which is noted on it, and the chat takes the next
    message."""
    import os
    import signal

    agent = client.agent(AGENT)
    agent.send_message("first", on_tool_call=_answers(agent))
    chat_id = agent.chat_id
    assert chat_id is not None
    relay = _Relay(server, run="hold")

    def interrupt() -> None:
        if relay.forwarded.wait(10):
            os.kill(os.getpid(), signal.SIGINT)

    with (
        hostile.serve_in_thread(relay) as proxy,
        inference(api_key="k", base_url=proxy.url, retry=_NO_RETRY) as relayed,
    ):
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt) as info:
            relayed.agent(AGENT, chat_id=chat_id).send_message("hello")
        assert 1 == _Relay.stops(proxy, chat_id)
    # What the loop side's clean-up did reaches the caller's interruption.
    assert [f"stopped the agent run in chat '{chat_id}'"] == info.value.__notes__
    chat = emu.chats.get(chat_id)
    assert chat is not None
    assert chat.run is not None
    assert "canceled" == chat.run.state
    assert "again" in agent.send_message("again", on_tool_call=_answers(agent)).text
