"""Sessions from both clients, the typed 412 and the server's messages, against the emulator."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from support import fast_emulator

from inferencesh import (
    RequirementError,
    RequirementsNotMetError,
    SessionEndedError,
    SessionExpiredError,
    SessionNotFoundError,
    SetupAction,
    TaskStatus,
    UsageError,
    async_inference,
    inference,
)
from inferencesh.local import AppContext, Emulator, serve

pytestmark = pytest.mark.anyio


async def echo_function(input: dict[str, Any], ctx: AppContext) -> dict[str, Any]:
    return {"function": ctx.function, "session": ctx.session_id, "input": input}


def _emulator() -> Emulator:
    emu = fast_emulator()
    emu.register_app("acme/echo", echo_function)
    return emu


async def test_an_async_session_runs_calls_keeps_alive_and_ends() -> None:
    emu = _emulator()
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        async with client.session("acme/echo") as session:
            first = await session.run({"n": 1}, function="predict")
            updates = [u async for u in session.run({"n": 2}, stream=True)]
            info = await session.info()
            alive = await session.keepalive()
            listed = {s.id for s in await client.list_sessions()}
            session_id = session.id
        assert first.output == {"function": "predict", "session": session_id, "input": {"n": 1}}
        assert updates[-1].status is TaskStatus.COMPLETED
        assert updates[-1].output["session"] == session_id
        assert info.active
        assert info.call_count == 3  # the opening call, then two
        assert alive.active
        assert session_id in listed
        ended = await client.get_session(session_id)
        assert ended.status == "ended"
        with pytest.raises(SessionEndedError):
            await client.run({"app": "acme/echo", "input": {}, "session": session_id})
        with pytest.raises(SessionNotFoundError):
            await client.get_session("sess_nope")


async def test_a_session_ends_even_when_the_block_raises() -> None:
    emu = _emulator()
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        session = client.session("acme/echo")

        async def fail_inside() -> None:
            async with session:
                ids.append(session.id)
                raise LookupError("the caller's own error")

        ids: list[str] = []
        with pytest.raises(LookupError):
            await fail_inside()
        session_id = ids[0]
        assert (await client.get_session(session_id)).status == "ended"


async def test_an_idle_session_expires_and_says_so() -> None:
    """Without keepalives, a session idle past its timeout expires: a typed error."""
    emu = _emulator()
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        session = client.session("acme/echo", idle_timeout=1, keepalive=False)
        await session.open()
        session_id = session.id

        def expired(emu: Emulator) -> bool:
            return (emu.session_snapshot(session_id) or {}).get("status") == "expired"

        assert await emu.async_wait_until(expired, timeout=10)
        with pytest.raises(SessionExpiredError):
            await session.run({})
        await session.end()  # ending an expired session is quiet


async def test_keepalives_keep_a_session_past_its_idle_timeout() -> None:
    """With keepalives (a third of the 1 s timeout), the session outlives several timeouts."""
    emu = _emulator()
    async with (
        serve(emu) as url,
        async_inference(api_key="k", base_url=url) as client,
        client.session("acme/echo", idle_timeout=1) as session,
    ):
        session_id = session.id
        deadlines: set[str] = set()

        def kept_alive_thrice(emu: Emulator) -> bool:
            snapshot = emu.session_snapshot(session_id) or {}
            deadlines.add(str(snapshot.get("expires_at")))
            return snapshot.get("status") != "active" or len(deadlines) > 3

        assert await emu.async_wait_until(kept_alive_thrice, timeout=10)
        assert (await session.info()).active
        assert (await session.run({"still": "here"})).output["input"] == {"still": "here"}


async def test_the_keepalive_task_ends_with_its_client(caplog: pytest.LogCaptureFixture) -> None:
    """Once the client is closed, the session's keepalive task ends at its next beat, rather
    than take "the client is closed" for a network blip and log it every interval."""
    import asyncio

    emu = _emulator()
    async with serve(emu) as url:
        client = async_inference(api_key="k", base_url=url)
        session = client.session("acme/echo", idle_timeout=1)  # a beat every third of a second
        await session.open()
        keeper = session._keeper
        assert keeper is not None
        assert not keeper.done()
        with caplog.at_level(logging.WARNING, logger="inferencesh"):
            await client.aclose()
            async with asyncio.timeout(5):
                await asyncio.wait([keeper])
        assert not keeper.cancelled()
        assert keeper.exception() is None
        assert "keepalive" not in caplog.text


def test_a_blocking_session() -> None:
    from inferencesh.local import serve_in_thread

    with serve_in_thread(_emulator()) as url, inference(api_key="k", base_url=url) as client:
        session = client.session("acme/echo")
        with session:
            done = session.run({"x": 1}, function="f")
            streamed = list(session.run({"x": 2}, stream=True))
            session_id = session.id
        assert done.output["function"] == "f"
        assert streamed[-1].output["input"] == {"x": 2}
        assert client.get_session(session_id).status == "ended"
        with pytest.raises(UsageError):
            client.get_session("")


async def test_requirements_not_met_is_typed() -> None:
    emu = _emulator()
    requirement = {
        "type": "secret",
        "key": "OPENAI_API_KEY",
        "message": "secret OPENAI_API_KEY is not set",
        "action": {"type": "add_secret", "provider": "openai"},
    }
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        with pytest.raises(RequirementsNotMetError) as info:
            await client.run({"app": "acme/any", "input": {"sim": {"require": [requirement]}}})
    assert info.value.errors == [
        RequirementError(
            type="secret",
            key="OPENAI_API_KEY",
            message="secret OPENAI_API_KEY is not set",
            action=SetupAction(type="add_secret", provider="openai"),
        )
    ]
    assert str(info.value) == "HTTP 412: secret OPENAI_API_KEY is not set"


async def test_server_messages_are_logged_and_given_to_the_callback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The envelope's `messages` reach the `inferencesh.server` logger and `on_messages`."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response(
            {"success": True, "data": {"id": "t_1", "status": 10}, "messages": ["low balance"]}
        )

    app = web.Application()
    app.router.add_get("/tasks/t_1", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    heard: list[list[Any]] = []
    try:
        with caplog.at_level(logging.INFO, logger="inferencesh.server"):
            async with async_inference(
                api_key="k", base_url=f"http://127.0.0.1:{port}", on_messages=heard.append
            ) as client:
                task = await client.get_task("t_1")
    finally:
        await runner.cleanup()
    assert task.status is TaskStatus.COMPLETED
    assert heard == [["low balance"]]
    assert any("low balance" in record.getMessage() for record in caplog.records)


async def test_agents_take_files_with_messages_and_tool_results(tmp_path: Any) -> None:
    """`send_message(files=...)` uploads and attaches them; a tool result carries
    attachments back to the agent; both reach the emulator's agent as file objects."""
    from pathlib import Path

    from inferencesh import ToolCall
    from inferencesh.local import AgentContext

    async def describer(text: str, ctx: AgentContext) -> str:
        names = [item["filename"] for item in ctx.attachments]
        result = await ctx.call_tool_result("render", {"names": names})
        returned = [item["filename"] for item in result.attachments]
        return f"got {names}; the tool said {result.text} and sent {returned}"

    emu = fast_emulator()
    emu.register_agent("acme/describer", describer)
    report = Path(tmp_path) / "report.pdf"
    report.write_bytes(b"%PDF-1.4 report")
    async with serve(emu) as url, async_inference(api_key="k", base_url=url) as client:
        agent = client.agent("acme/describer")

        async def render(call: ToolCall) -> None:
            await agent.submit_tool_result(
                call.id, "rendered", attachments=[b"chart bytes", Path(report)]
            )

        reply = await agent.send_message(
            "describe these", files=[report, b"raw notes"], on_tool_call=render
        )
    assert reply.text == (
        "got ['report.pdf', 'file']; the tool said rendered and sent ['file', 'report.pdf']"
    )
