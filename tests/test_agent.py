"""Agent chats with client tool calls, sync and async, against the emulator's scripted agent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from support import fast_emulator, sdk_threads, seed_examples

from inferencesh import (
    AgentError,
    ChatMessage,
    Inference,
    MessageEvent,
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
