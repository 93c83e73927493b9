"""The emulator against a hostile or careless client: requests that are each valid and small,
but that once cost the server far more than their size (real sockets, the emulator in the
test's loop, every wait bounded)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferencesh.local import Emulator, EmulatorOptions, serve

KEY = {"Authorization": "Bearer test-key"}
FAST = {"sim_steps": 1, "sim_step_delay": 0.0, "transition_delay": 0.0, "agent_step_delay": 0.0}


async def _message(
    session: aiohttp.ClientSession, url: str, emulator: Emulator, text: str, chat_id: str | None
) -> str:
    """Send `text` to the scripted agent, answer its tool call, wait until its run ended."""
    body: dict[str, Any] = {"agent": "a/b", "input": {"text": text}}
    if chat_id is not None:
        body["chat_id"] = chat_id
    async with session.post(f"{url}/agents/run", json=body) as response:
        assert response.status == 200, await response.text()
        chat_id = str((await response.json())["data"]["user_message"]["chat_id"])
    chat = emulator.chats.get(chat_id)
    assert chat is not None
    run = chat.run
    assert run is not None

    def waiting(_: Emulator) -> bool:
        return any(invocation.waiting for invocation in run.message.tool_invocations)

    assert await emulator.async_wait_until(waiting, 10)
    invocation = run.message.tool_invocations[0]
    async with session.post(f"{url}/tools/{invocation.id}", json={"result": "ok"}) as response:
        assert response.status == 200, await response.text()
    assert await emulator.async_wait_until(lambda _: run.ended, 10)
    return chat_id


@pytest.mark.anyio
async def test_a_message_to_a_long_chat_persists_only_its_run(tmp_path: Path) -> None:
    """With a data folder, every change of a chat (message, tool call, tool result, end)
    once rewrote the whole chat on the server's loop: a short message to a chat of a few
    large ones wrote megabytes, and at the memory budget stalled every client for seconds.
    Now a change writes the run it touched."""
    emulator = Emulator(EmulatorOptions(**FAST, data_dir=str(tmp_path)))  # type: ignore[arg-type]
    big = "x" * 900_000  # under the 1 MiB body limit
    async with serve(emulator) as url, aiohttp.ClientSession(headers=KEY) as session:
        chat_id = None
        for _ in range(6):
            chat_id = await _message(session, url, emulator, big, chat_id)
        journal = emulator._journal
        assert journal is not None
        written: list[str] = []
        journal._db.set_trace_callback(written.append)  # each statement, its values expanded
        try:
            await _message(session, url, emulator, "hi", chat_id)
        finally:
            journal._db.set_trace_callback(None)
        # The run's events may name the previous answer (the chat's `output`); never the chat.
        assert sum(map(len, written)) < 2 * len(big), [len(s) for s in written]
        before = emulator.chat_snapshot(str(chat_id))
    # And the chat comes back whole after a restart.
    emulator = Emulator(EmulatorOptions(**FAST, data_dir=str(tmp_path)))  # type: ignore[arg-type]
    async with serve(emulator):
        assert emulator.chat_snapshot(str(chat_id)) == before


@pytest.mark.anyio
async def test_a_chat_written_whole_by_an_earlier_emulator_is_reloaded(tmp_path: Path) -> None:
    """A data folder whose chats were checkpointed whole (before runs were kept apart) still
    reloads them, and the next message keeps the earlier ones."""
    emulator = Emulator(EmulatorOptions(**FAST, data_dir=str(tmp_path)))  # type: ignore[arg-type]
    async with serve(emulator) as url, aiohttp.ClientSession(headers=KEY) as session:
        chat_id = await _message(session, url, emulator, "one", None)
        chat_id = await _message(session, url, emulator, "two", chat_id)
        before = emulator.chat_snapshot(chat_id)
    with sqlite3.connect(tmp_path / "emulator.sqlite3") as db:
        (state,) = db.execute("SELECT state FROM resources WHERE id = ?", (chat_id,)).fetchone()
        parts = [
            json.loads(data)
            for (data,) in db.execute(
                "SELECT data FROM chat_runs WHERE chat_id = ? ORDER BY ord", (chat_id,)
            )
        ]
        whole = {
            "messages": [message for part in parts for message in (part["user"], part["message"])],
            "runs": [part["run"] for part in parts],
            "current": json.loads(state)["current"],
        }
        db.execute("UPDATE resources SET state = ? WHERE id = ?", (json.dumps(whole), chat_id))
        db.execute("DELETE FROM chat_runs")
    db.close()
    emulator = Emulator(EmulatorOptions(**FAST, data_dir=str(tmp_path)))  # type: ignore[arg-type]
    async with serve(emulator) as url, aiohttp.ClientSession(headers=KEY) as session:
        assert emulator.chat_snapshot(chat_id) == before
        await _message(session, url, emulator, "three", chat_id)
        after = emulator.chat_snapshot(chat_id)
    emulator = Emulator(EmulatorOptions(**FAST, data_dir=str(tmp_path)))  # type: ignore[arg-type]
    async with serve(emulator):
        assert emulator.chat_snapshot(chat_id) == after
        assert after is not None
        assert [m["content"][0]["text"] for m in after["messages"] if m["role"] == "user"] == [
            "one",
            "two",
            "three",
        ]
