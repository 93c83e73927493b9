"""`python -m inferencesh serve` in a subprocess, the CLI's usage errors, and serve_in_thread."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import textwrap
import threading
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferencesh import UsageError
from inferencesh.cli import main
from inferencesh.local import Emulator, EmulatorOptions, serve, serve_in_thread

READY = re.compile(r"inferencesh emulator listening on (http://127\.0\.0\.1:(\d+))\n")
AUTH = {"Authorization": "Bearer k"}


@asynccontextmanager
async def serve_process(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start `python -m inferencesh serve --port 0 ...`; yield it with its printed URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "inferencesh",
        "serve",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        match = READY.fullmatch(line)
        assert match, line
        yield proc, match.group(1)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def stop(proc: asyncio.subprocess.Process, sig: signal.Signals) -> tuple[int, str, str]:
    """Signal the server and wait (bounded) for it to exit; return code, stdout, stderr."""
    proc.send_signal(sig)
    async with asyncio.timeout(15):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.anyio
async def test_serve_subprocess_runs_a_task_and_exits_cleanly_on_sigint() -> None:
    """The printed URL serves a task end to end; SIGINT exits 0 without a traceback."""
    async with (
        serve_process("--sim-steps", "3", "--sim-step-delay", "0.01") as (proc, url),
        aiohttp.ClientSession(url, headers=AUTH) as session,
    ):
        body = {"app": "google/veo-3-1-fast", "input": {"prompt": "A sunset timelapse"}}
        async with session.post("/apps/run", json=body) as resp:
            assert resp.status == 200
            task = (await resp.json())["data"]
        async with session.get(f"/tasks/{task['id']}/stream") as resp:
            assert resp.headers["Content-Type"] == "application/x-ndjson"
            events = [json.loads(line) async for line in resp.content]
        assert events[-1]["status"] == 10
        assert len(events[-1]["logs"]) == 3
        assert events[-1]["output"]["input"] == {"prompt": "A sunset timelapse"}
        code, out, err = await stop(proc, signal.SIGINT)
    assert code == 0
    assert "Traceback" not in err
    assert err == ""
    assert out == ""  # the ready line was the only output


@pytest.mark.anyio
async def test_sigterm_with_an_open_stream_and_a_running_task_exits_cleanly() -> None:
    """SIGTERM while a stream is open on a held task: the stream ends, exit code 0."""
    async with (
        serve_process() as (proc, url),
        aiohttp.ClientSession(url, headers=AUTH) as session,
    ):
        body = {"app": "a/b", "input": {"sim": {"hold": True}}}
        async with session.post("/apps/run", json=body) as resp:
            task = (await resp.json())["data"]
        async with session.get(f"/tasks/{task['id']}/stream") as resp:
            first = await resp.content.readline()
            assert json.loads(first)["id"] == task["id"]
            code, _, err = await stop(proc, signal.SIGTERM)
            rest = await resp.content.read()  # the server ended the body cleanly
        assert all(json.loads(line)["id"] == task["id"] for line in rest.splitlines())
    assert code == 0
    assert "Traceback" not in err
    assert "destroyed" not in err


@pytest.mark.anyio
async def test_serve_flags_auth_faults_strict_apps_and_app(
    tmp_path: Path, raw_stream_get: Any
) -> None:
    """--api-key, --fail-next/--fail-status/--retry-after, --drop-after, --strict-apps, --app."""
    (tmp_path / "cli_echo_app.py").write_text(
        textwrap.dedent(
            """
            import asyncio

            async def app(input, ctx):
                for word in input["words"]:
                    ctx.log(word)
                    await asyncio.sleep(0.01)
                return {"echo": input["words"]}
            """
        )
    )
    args = [
        "--api-key",
        "secret",
        "--fail-next",
        "1",
        "--fail-status",
        "429",
        "--retry-after",
        "3",
        "--drop-after",
        "2",
        "--strict-apps",
        "--app",
        "test/echo=cli_echo_app:app",
        "--heartbeat-interval",
        "0.5",
    ]
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    async with (
        serve_process(*args, env=env) as (proc, url),
        aiohttp.ClientSession(url, headers={"Authorization": "Bearer secret"}) as session,
    ):
        async with session.get("/tasks/x") as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "3"
        async with session.get("/tasks/x", headers={"Authorization": "Bearer other"}) as resp:
            assert resp.status == 401
        async with session.post("/apps/run", json={"app": "infsh/flux-schnell"}) as resp:
            assert resp.status == 404
        body = {"app": "test/echo", "input": {"words": ["a", "b", "c", "d"]}}
        async with session.post("/apps/run", json=body) as resp:
            task = (await resp.json())["data"]
        async with session.get(f"/tasks/{task['id']}/stream") as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        # Resume with Last-Event-ID after every cut: two events per connection, none lost.
        received: list[Any] = []
        headers = {"Authorization": "Bearer secret", "Accept": "text/event-stream"}
        for _ in range(50):
            headers["Last-Event-ID"] = received[-1].id if received else "0"
            raw = await raw_stream_get(url, f"/tasks/{task['id']}/stream", headers)
            events = raw.sse_events()
            received.extend(events)
            if raw.complete:
                break
            assert len(events) == 2
        assert [int(e.id) for e in received] == list(range(1, len(received) + 1))
        final = received[-1].json()
        assert final["status"] == 10
        assert final["output"] == {"echo": ["a", "b", "c", "d"]}
        assert final["logs"] == ["a", "b", "c", "d"]
        code, _, err = await stop(proc, signal.SIGINT)
    assert code == 0
    assert err == ""


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["serve", "--port", "x"],
        ["serve", "--port", "70000"],
        ["serve", "--sim-steps", "0"],
        ["serve", "--delay", "-1"],
        ["serve", "--fail-status", "200"],
        ["serve", "--heartbeat-interval", "0"],
        ["serve", "--app", "no-equals-sign"],
        ["serve", "--app", "bad ref=json:loads"],
        ["serve", "--app", "a/b=no_such_module_xyz:app"],
        ["serve", "--app", "a/b=json:no_such_function"],
        ["serve", "--api-key", ""],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad command lines exit 2 with a message on stderr, before anything is served."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "error" in captured.err
    assert captured.out == ""


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --help` lists the flags and exits 0."""
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--drop-after",
        "--fail-next",
        "--fail-status",
        "--retry-after",
        "--delay",
        "--api-key",
        "--app",
        "--sim-steps",
        "--sim-step-delay",
        "--strict-apps",
        "--heartbeat-interval",
        "--host",
        "--port",
    ):
        assert flag in out


def _request(url: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=AUTH)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_serve_in_thread_for_sync_code() -> None:
    """serve_in_thread serves from a background loop; wait_until blocks on real changes."""
    threads_before = set(threading.enumerate())
    emu = Emulator(EmulatorOptions(sim_steps=2, sim_step_delay=0.01, transition_delay=0.0))
    with serve_in_thread(emu) as url:
        assert url.startswith("http://127.0.0.1:")
        task = _request(f"{url}/apps/run", "POST", {"app": "a/b", "input": {}})["data"]
        assert emu.wait_until(
            lambda e: (e.task_snapshot(task["id"]) or {}).get("status") == 10, timeout=5
        )
        assert _request(f"{url}/tasks/{task['id']}")["data"]["status"] == 10
        assert not emu.wait_until(lambda e: e.open_streams > 0, timeout=0.05)

        async def other_loop() -> bool:
            held = _request(
                f"{url}/apps/run", "POST", {"app": "a/b", "input": {"sim": {"hold": True}}}
            )
            return await emu.async_wait_until(
                lambda e: (e.task_snapshot(held["data"]["id"]) or {}).get("status") == 7
            )

        assert asyncio.run(other_loop())  # a loop that is not the emulator's
        port = int(url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass  # the port was released
    assert set(threading.enumerate()) <= threads_before


@pytest.mark.anyio
async def test_wait_until_on_the_emulator_loop_is_refused() -> None:
    """The blocking wait would deadlock on the emulator's own loop, so it raises UsageError."""
    emu = Emulator()
    async with serve(emu):
        with pytest.raises(UsageError):
            emu.wait_until(lambda e: True)
        assert await emu.async_wait_until(lambda e: True, timeout=0.1)
        assert not await emu.async_wait_until(lambda e: False, timeout=0.05)
