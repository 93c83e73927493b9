"""The sync client: the async core on a background loop thread, against the emulator."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from support import FAST, fast_emulator, sdk_threads, seed_examples

import inferencesh
from inferencesh import (
    AsyncInference,
    Inference,
    NotFoundError,
    TaskCancelledError,
    TaskFailedError,
    TaskStatus,
    UsageError,
    async_inference,
    inference,
)
from inferencesh.local import Emulator, serve_in_thread

SIM = {"app": "infsh/flux-schnell", "input": {"prompt": "A sunset timelapse"}}
HOLD = {"app": "x/y", "input": {"sim": {"hold": True}}}

SYNC_EXAMPLES = [
    "Basic Streaming",
    "Handling Different Update Types",
    "Progress Tracking with UI",
    "Streaming with Timeout",
    "Reconnection Handling",
    "Cancelling a Stream",
    "Collecting All Logs",
    "Custom Stream Processing",
]


@pytest.fixture
def client(server: str) -> Iterator[Inference]:
    with inference(api_key="k", base_url=server) as c:
        yield c
    assert [] == sdk_threads()


@pytest.mark.parametrize("drop_after", [None, 1, 2, 3])
@pytest.mark.parametrize("name", SYNC_EXAMPLES)
def test_seed_sync_example(
    name: str,
    drop_after: int | None,
    emu: Emulator,
    server: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each blocking seed example runs verbatim, also with the stream cut every 2 events."""
    emu.faults.drop_after = drop_after
    monkeypatch.setenv("INFERENCE_BASE_URL", server)
    seen_running: list[bool] = []

    def should_cancel() -> bool:
        # Cancel once the task is running, as a user watching it would.
        seen_running.append(True)
        return len(seen_running) >= 3

    harness = inference(api_key="inf_...")
    namespace: dict[str, Any] = {
        "client": harness,
        # The cancel example gets a task that only ends when cancelled, so the cancel is seen.
        "config": HOLD if name == "Cancelling a Stream" else SIM,
        "should_cancel": should_cancel,
        "time": time,
    }
    try:
        exec(seed_examples()[name], namespace)
    finally:
        harness.close()
        created = namespace.get("client")
        if created is not harness and isinstance(created, Inference):
            created.close()
    out = capsys.readouterr().out
    assert [] == sdk_threads()
    expectations = {
        "Basic Streaming": "Status: completed",
        "Handling Different Update Types": "  Log: ",
        "Progress Tracking with UI": "100.0%",
        "Streaming with Timeout": "Status: completed",
        "Reconnection Handling": "status=<TaskStatus.COMPLETED",
        "Cancelling a Stream": "Task cancelled",
        "Collecting All Logs": "Final logs:",
        "Custom Stream Processing": "Logs: 5",
    }
    assert expectations[name] in out
    if name == "Collecting All Logs":
        logs = [line for line in out.splitlines() if line.startswith("  ")]
        assert 5 == len(logs)
        assert len(set(logs)) == len(logs)
    if name == "Cancelling a Stream":
        task_id = namespace["task_id"]
        assert emu.wait_until(
            lambda e: (e.task_snapshot(task_id) or {}).get("status") == 12, timeout=5
        )


def test_break_closes_connection_and_client_stays_usable(client: Inference, emu: Emulator) -> None:
    """break releases the connection at once; the client keeps working afterwards."""
    for update in client.run(HOLD, stream=True):
        if update.status == "running":
            break
    assert emu.wait_until(lambda e: e.open_streams == 0 and e.streams_opened == 1, timeout=5)
    client.cancel_task(update.id)
    assert TaskStatus.COMPLETED == client.run(SIM).status


def test_keyboard_interrupt_in_loop_body(client: Inference, emu: Emulator) -> None:
    """KeyboardInterrupt raised in the body propagates and closes the connection."""
    task_id = None

    def consume() -> None:
        nonlocal task_id
        for update in client.run(HOLD, stream=True):
            task_id = update.id
            if update.status == "running":
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        consume()
    assert emu.wait_until(lambda e: e.open_streams == 0, timeout=5)
    assert task_id is not None
    client.cancel_task(task_id)
    with pytest.raises(TaskCancelledError) as info:
        client.wait_for_completion(task_id, timeout=10)
    assert TaskStatus.CANCELLED == info.value.task.status


def test_errors_match_async_side(server: str) -> None:
    """The same failure raises the same class with the same message on both sides."""

    async def async_error() -> BaseException:
        async with async_inference(api_key="k", base_url=server) as c:
            with pytest.raises(NotFoundError) as info:
                await c.get_task("task_nope")
            return info.value

    with inference(api_key="k", base_url=server) as c:
        with pytest.raises(NotFoundError) as info:
            c.get_task("task_nope")
        with pytest.raises(TaskFailedError, match="kaput"):
            c.run({"app": "x/y", "input": {"sim": {"fail": "kaput"}}})
    expected = asyncio.run(async_error())
    assert str(expected) == str(info.value)


def test_closed_client_raises(server: str) -> None:
    """After close() every call raises UsageError and no loop thread remains."""
    c = inference(api_key="k", base_url=server)
    c.run(SIM, wait=False)
    c.close()
    c.close()
    assert [] == sdk_threads()
    with pytest.raises(UsageError):
        c.get_task("task_x")


def test_usable_inside_running_event_loop(client: Inference) -> None:
    """Called from a coroutine (as in Jupyter), the sync client works instead of deadlocking."""

    async def handler() -> TaskStatus:
        return client.run(SIM).status

    assert TaskStatus.COMPLETED == asyncio.run(handler())


def test_two_threads_share_one_client(client: Inference) -> None:
    """Two threads streaming through one client both get complete, separate streams."""
    results: dict[int, list[str]] = {}

    def worker(index: int) -> None:
        logs: list[str] = []
        for update in client.run(SIM, stream=True, options=FAST):
            logs.extend(update.logs)
        results[index] = logs

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {0, 1} == set(results)
    assert all(5 == len(logs) for logs in results.values())


def test_slow_consumer_applies_back_pressure() -> None:
    """A paused consumer holds the server's writer back (bounded buffering) and loses nothing."""
    # About 72 MB: more than every buffer on the way together (the client's one network read,
    # and the kernel's loopback socket buffers, which autotune up to tens of MB), and fewer
    # events than the emulator is told to keep per task, so nothing falls out of its replay
    # window (the default window is far smaller: a reader that falls behind gets a snapshot).
    steps, blob = 8000, "x" * 9000

    async def blobs(input: dict[str, Any], ctx: Any) -> dict[str, int]:
        for i in range(steps):
            ctx.partial({"i": i, "blob": blob})
            await asyncio.sleep(0)  # one step update per partial output
        return {"steps": steps}

    emu = fast_emulator(max_event_log_bytes=2**30, memory_budget=2**30)
    emu.register_app("test/blobs", blobs)
    with serve_in_thread(emu) as url, inference(api_key="k", base_url=url) as client:
        stream = client.run({"app": "test/blobs"}, stream=True, options=FAST)
        first = next(stream)  # the answer to the POST
        second = next(stream)  # the first streamed update: the stream is open now
        assert emu.open_streams == 1
        assert emu.wait_until(
            lambda e: (e.task_snapshot(first.id) or {}).get("status") == 10, timeout=60
        )
        # An unbounded reader would drain all 72 MB into memory within a second or two and the
        # server would then end the stream; a bounded one stalls it. So the stream must still
        # be open after a bounded wait, held well short of the end: the consumer's pause
        # reached the writer instead of piling up in memory.
        assert not emu.wait_until(lambda e: e.open_streams == 0, timeout=5)
        [connection] = emu.stream_stats()
        assert connection["events_sent"] < connection["log_last_seq"] - 1000
        updates = [first, second, *stream]
    seen = [u.partial_output["i"] for u in updates if u.partial_output is not None]
    assert list(range(steps)) == seen


def test_public_signatures_match_async() -> None:
    """Every public operation has the same signature on Inference and AsyncInference."""
    skip = {"aclose", "close"}
    async_names = {n for n in dir(AsyncInference) if not n.startswith("_")} - skip
    sync_names = {n for n in dir(Inference) if not n.startswith("_")} - skip
    assert async_names == sync_names
    for name in sorted(async_names):
        a, s = getattr(AsyncInference, name), getattr(Inference, name)
        if isinstance(a, property):
            continue
        a_params = list(inspect.signature(a).parameters.values())
        s_params = list(inspect.signature(s).parameters.values())
        assert [(p.name, p.kind, p.default) for p in a_params] == [
            (p.name, p.kind, p.default) for p in s_params
        ], name
    a_factory = inspect.signature(inferencesh.async_inference).parameters
    s_factory = inspect.signature(inferencesh.inference).parameters
    assert list(a_factory) == list(s_factory)


def test_sync_module_imports_no_protocol_libraries() -> None:
    """The shim imports no HTTP, parsing or streaming module: it has no protocol logic. (Names
    it imports only for type annotations, under `if TYPE_CHECKING:`, do not run.)"""
    tree = ast.parse(inspect.getsource(sys.modules["inferencesh._sync_client"]))
    tree.body = [
        node
        for node in tree.body
        if not (isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    ]
    imported = {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    forbidden = {"aiohttp", "cattrs", "sse", "_transport", "_resumable", "_converters", "json"}
    assert set() == {m for m in imported if m.split(".")[-1] in forbidden or m in forbidden}


def _run_script(script: str, server: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, INFERENCE_BASE_URL=server, PYTHONWARNINGS="always")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_exit_without_close_is_prompt_and_silent(server: str) -> None:
    """A script that never closes its client exits at once, with no warning or traceback."""
    started = time.monotonic()
    proc = _run_script(
        """
        from inferencesh import inference
        client = inference(api_key="k")
        for update in client.run({"app": "a/b", "input": {"sim": {"hold": True}}}, stream=True):
            if update.status == "running":
                print("running", flush=True)
                break
        stream = client.run({"app": "a/b", "input": {}}, stream=True)
        next(stream)   # left open on purpose
        """,
        server,
    )
    assert 0 == proc.returncode, proc.stderr
    assert "running\n" == proc.stdout
    assert "" == proc.stderr
    assert time.monotonic() - started < 15


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_gets_a_fresh_loop(server: str) -> None:
    """After os.fork() the child can use the parent's client; the parent still can too."""
    proc = _run_script(
        """
        import os
        from inferencesh import inference
        client = inference(api_key="k")
        print("parent", client.run({"app": "a/b", "input": {}}).status, flush=True)
        pid = os.fork()
        if pid == 0:
            status = client.run({"app": "a/b", "input": {}}).status
            print("child", status, flush=True)
            client.close()
            os._exit(0 if status == "completed" else 3)
        _, code = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(code), flush=True)
        print("parent again", client.run({"app": "a/b", "input": {}}).status, flush=True)
        client.close()
        """,
        server,
    )
    assert 0 == proc.returncode, proc.stderr
    lines = proc.stdout.splitlines()
    assert "parent completed" == lines[0]
    assert "child completed" in lines
    assert "child exit 0" in lines
    assert "parent again completed" == lines[-1]


def test_ctrl_c_at_any_moment_never_hangs_close(server: str) -> None:
    """KeyboardInterrupt landing at any instant of a stream leaves close() able to return."""
    proc = _run_script(
        """
        import random, signal
        from inferencesh import inference

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGALRM, interrupt)
        random.seed(7)
        interrupted = 0
        held = {"app": "a/b", "input": {"sim": {"hold": True}}}
        for _ in range(40):
            client = inference(api_key="k")
            try:
                for update in client.run(held, stream=True):
                    if update.status == "running":
                        signal.setitimer(signal.ITIMER_REAL, random.uniform(0, 0.003))
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                client.close()
        print("interrupted", interrupted, flush=True)
        """,
        server,
        timeout=120,
    )
    assert 0 == proc.returncode, proc.stderr
    assert "interrupted 40\n" == proc.stdout


def test_reading_ahead_never_reconnects_after_the_end() -> None:
    """The blocking client reads the next network read while the consumer works on the last
    one. Whether to reconnect depends on what the consumer absorbed, so at the end of a
    connection the stream waits for it: even a slow consumer of a backlog that holds the end
    of the task sees its stream opened exactly once."""
    emu = fast_emulator()
    with serve_in_thread(emu) as url, inference(api_key="k", base_url=url) as client:
        for _ in range(5):
            updates = []
            for update in client.run({"app": "a/b"}, stream=True, options=FAST):
                if len(updates) == 1:  # the first streamed one: let the rest pile up unread
                    assert emu.wait_until(
                        lambda e, i=update.id: (e.task_snapshot(i) or {}).get("status") == 10,
                        timeout=30,
                    )
                updates.append(update)
                time.sleep(0.01)  # a consumer that takes its time over each update
            assert updates[-1].status is TaskStatus.COMPLETED
        assert 5 == emu.streams_opened
        assert emu.wait_until(lambda e: e.open_streams == 0, timeout=10)


@contextlib.contextmanager
def _finished_at_post() -> Iterator[tuple[str, list[str]]]:
    """A server whose `POST /apps/run` answers with a task that has already completed, and
    that records every request (a stream request would be a wasted one)."""
    seen: list[str] = []

    async def run_app(request: web.Request) -> web.Response:
        seen.append(request.path)
        task = {"id": "t1", "status": 10, "output": {"ok": True}, "logs": []}
        return web.json_response({"success": True, "data": task, "messages": []})

    async def anything_else(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/apps/run", run_app)
    app.router.add_route("*", "/{tail:.*}", anything_else)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_reading_ahead_does_not_open_the_stream_of_a_task_finished_at_creation() -> None:
    """What follows the POST's answer depends on it: a task already finished there needs no
    stream, so reading ahead must wait until the answer has been absorbed."""
    with _finished_at_post() as (url, seen), inference(api_key="k", base_url=url) as client:
        for _ in range(20):
            [update] = client.run({"app": "a/b"}, stream=True, options=FAST)
            assert update.status is TaskStatus.COMPLETED
    assert ["/apps/run"] * 20 == seen
