"""Servers for `bench_stream.py`, each run in its own process so it never shares a GIL or an
event loop with the client under test.

Run as a script, this module serves on 127.0.0.1 (an OS-chosen port), prints `READY <port>`
once it listens, and stops when its standard input closes, on SIGTERM, or after `--lifetime`
seconds, whichever comes first:

* default: a minimal aiohttp.web server whose task streams are PRE-RENDERED bytes, written in
  512 KiB pieces, so the server is never the bottleneck. `--stream NAME:SIZE:N` adds two tasks:
  `NAME` (SSE) and `NAME.ndjson` (NDJSON), each a stream of N events of SIZE-byte JSON (see
  `render_events`). `GET /_bench/cpu` answers the CPU seconds the server has used.
* `--emulator`: the SDK's own emulator (`inferencesh.local`), which produces its events live.

The parent side is `running_server(...)`, a context manager that starts the process, waits for
the READY line and always stops the process again.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
WRITE_CHUNK = 512 * 1024
BACKLOG = 16384  # the kernel caps it at net.core.somaxconn
NDJSON_SUFFIX = ".ndjson"
RETRY_MS = 1000


# --- pre-rendered task streams ---------------------------------------------------------------


def base64_pool(length: int, seed: int = 1) -> str:
    """`length` base64 characters of seeded random bytes: the body of an image preview."""
    raw = random.Random(seed).randbytes(length * 3 // 4 + 3)
    return base64.b64encode(raw).decode("ascii")[:length]


def partial_update(task_id: str, index: int, total: int, size: int, pool: str) -> bytes:
    """A per-step partial update (`{data, fields}`) of exactly `size` bytes when possible.

    The padding is ONE base64-like string, the step's intermediate `output.preview` (as an image
    preview would be), taken from `pool` at an offset that moves with the step, so each event's
    preview differs; the step number goes into `progress`, so every event is new to a client.
    No `logs` are sent, so the terminal snapshot (whose logs are cumulative) stays small.
    """
    payload: dict[str, Any] = {
        "data": {
            "id": task_id,
            "status": 7,
            "progress": {"current": index, "total": total},
            "output": {"preview": ""},
        },
        "fields": ["progress", "output"],
    }
    room = max(0, size - len(orjson.dumps(payload)))
    offset = (index * 7) % (len(pool) - room + 1)
    payload["data"]["output"]["preview"] = pool[offset : offset + room]
    return orjson.dumps(payload)


def terminal_snapshot(task_id: str, total: int) -> bytes:
    """The last event: a small, completed task snapshot (status 10)."""
    return orjson.dumps(
        {
            "id": task_id,
            "status": 10,
            "output": {"text": "done", "steps": total},
            "logs": [],
            "progress": {"current": total, "total": total},
        }
    )


def render_events(task_id: str, size: int, count: int) -> list[bytes]:
    """The `count` JSON payloads of one task stream: `count - 1` partials, then the terminal."""
    pool = base64_pool(size + 4096)
    events = [partial_update(task_id, i, count, size, pool) for i in range(1, count)]
    events.append(terminal_snapshot(task_id, count))
    return events


def render_sse(events: list[bytes]) -> bytes:
    """`retry:`, then one `id: <n>` / `data: <json>` block per event, n = 1, 2, 3..."""
    parts = [b"retry: %d\n\n" % RETRY_MS]
    parts.extend(b"id: %d\ndata: %s\n\n" % (n, data) for n, data in enumerate(events, 1))
    return b"".join(parts)


def render_ndjson(events: list[bytes]) -> bytes:
    """One JSON object per line, each with a leading `"event_id": "<n>"` key, n = 1, 2, 3...
    (the emulator's extension; clients that do not know it ignore it)."""
    return b"".join(b'{"event_id":"%d",%s\n' % (n, data[1:]) for n, data in enumerate(events, 1))


class Bodies:
    """The pre-rendered SSE body of task NAME and NDJSON body of task NAME.ndjson.

    Both carry the same events, except for the task id, which a client checks against the task
    it asked for; the padding makes up for the longer id, so the events are the same size.
    """

    def __init__(self, name: str, size: int, count: int) -> None:
        self.count = count
        self.sse = render_sse(render_events(name, size, count))
        ndjson_events = render_events(name + NDJSON_SUFFIX, size, count)
        self.ndjson = render_ndjson(ndjson_events)
        self.snapshot = orjson.loads(ndjson_events[-1])


def wants_sse(accept: str) -> bool:
    """Whether the first media range of Accept is text/event-stream."""
    return accept.split(",", 1)[0].strip().lower().startswith("text/event-stream")


def build_app(bodies: dict[str, Bodies]) -> web.Application:
    """The minimal API: `POST /apps/run`, `GET /tasks/{id}` and `GET /tasks/{id}/stream`.

    Task NAME streams SSE (to a client whose first Accept range is text/event-stream; 406
    otherwise); task NAME.ndjson streams NDJSON whatever Accept says. `POST /apps/run` with
    `{"input": {"stream": ID}}` answers task ID as just created (status 1).
    """

    def find(task_id: str) -> tuple[Bodies, bool] | None:
        name = task_id.removesuffix(NDJSON_SUFFIX)
        found = bodies.get(name)
        return None if found is None else (found, name != task_id)

    async def run_app(request: web.Request) -> web.Response:
        body = await request.json()
        task_id = (body.get("input") or {}).get("stream", "")
        if find(task_id) is None:
            return web.json_response({"detail": f"no stream {task_id!r}"}, status=404)
        return web.json_response(
            {"success": True, "data": {"id": task_id, "status": 1}, "messages": []}
        )

    async def get_task(request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        found = find(task_id)
        if found is None:
            return web.json_response({"detail": "not found"}, status=404)
        return web.json_response({"success": True, "data": {**found[0].snapshot, "id": task_id}})

    async def stream_task(request: web.Request) -> web.StreamResponse:
        found = find(request.match_info["task_id"])
        if found is None:
            return web.json_response({"detail": "not found"}, status=404)
        task, ndjson = found
        if not ndjson and not wants_sse(request.headers.get("Accept", "")):
            return web.json_response({"detail": "ask for text/event-stream"}, status=406)
        body = task.ndjson if ndjson else task.sse
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson" if ndjson else "text/event-stream",
                "Cache-Control": "no-cache",
            }
        )
        resp.content_length = len(body)
        view = memoryview(body)
        try:
            await resp.prepare(request)
            for offset in range(0, len(body), WRITE_CHUNK):
                await resp.write(view[offset : offset + WRITE_CHUNK])
            await resp.write_eof()
        except (ConnectionError, OSError):
            pass  # the client left early
        return resp

    async def cpu_seconds(request: web.Request) -> web.Response:
        return web.json_response({"cpu_s": time.process_time()})

    app = web.Application()
    app.router.add_get("/_bench/cpu", cpu_seconds)
    app.router.add_post("/apps/run", run_app)
    app.router.add_get("/tasks/{task_id}", get_task)
    app.router.add_get("/tasks/{task_id}/stream", stream_task)
    return app


EMULATOR_APP = "bench/steps"


async def steps_app(input: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """An emulator app that reports `steps` steps as fast as it can, about `size` bytes each.

    Each step reports progress and a padded intermediate output, so each per-step update the
    emulator sends is new to the client; no log lines, so the terminal snapshot (whose logs
    are cumulative) stays small. `asyncio.sleep(0)` lets the emulator flush every step.
    """
    steps = int(input["steps"])
    pad = "." * max(0, int(input.get("size", 200)) - 120)
    for step in range(1, steps + 1):
        ctx.progress(step, steps)
        ctx.partial({"text": f"step {step} {pad}"})
        await asyncio.sleep(0)
    return {"text": "done", "steps": steps}


def emulator_options() -> Any:
    """The SDK's emulator with `steps_app` registered and every pause set to zero."""
    sys.path.insert(0, str(ROOT))
    from inferencesh.local import EmulatorOptions

    return EmulatorOptions(
        sim_step_delay=0.0,
        transition_delay=0.0,
        max_events_per_task=1_000_000,
        max_event_log_bytes=2**31,  # every event stays replayable (benchmarks read them all)
        memory_budget=2**32,
        apps={EMULATOR_APP: steps_app},
    )


# --- the server process ----------------------------------------------------------------------


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (thousands of streams need fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def wait_for_stop(lifetime: float) -> None:
    """Return when stdin closes, on SIGTERM, or after `lifetime` seconds."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    class StdinWatcher(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            stop.set()  # the parent closed our stdin (or died)

    transport, _ = await loop.connect_read_pipe(StdinWatcher, sys.stdin)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(lifetime):
                await stop.wait()
    finally:
        transport.close()


def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 (an OS-chosen port) with a big backlog."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def serve_prerendered(app: web.Application, sock: socket.socket, lifetime: float) -> None:
    """Serve `app` on the listening `sock` until told to stop."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, backlog=BACKLOG).start()
        print(f"READY {sock.getsockname()[1]}", flush=True)
        await wait_for_stop(lifetime)
    finally:
        await runner.cleanup()


async def serve_emulator(lifetime: float) -> None:
    """Serve the emulator through `inferencesh.local.serve` until told to stop."""
    from inferencesh.local import serve

    async with serve(emulator_options()) as url:
        print(f"READY {url.rsplit(':', 1)[1]}", flush=True)
        await wait_for_stop(lifetime)


def parse_stream_spec(spec: str) -> tuple[str, int, int]:
    """`NAME:SIZE:COUNT` -> (name, size, count)."""
    name, size, count = spec.split(":")
    return name, int(size), int(count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", action="append", default=[], metavar="NAME:SIZE:COUNT")
    parser.add_argument("--emulator", action="store_true")
    parser.add_argument("--lifetime", type=float, default=1800.0)
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.emulator:
        asyncio.run(serve_emulator(args.lifetime))
        return
    bodies = {}
    for spec in args.stream:
        name, size, count = parse_stream_spec(spec)
        bodies[name] = Bodies(name, size, count)
    sock = listening_socket()
    asyncio.run(serve_prerendered(build_app(bodies), sock, args.lifetime))


# --- the parent side -------------------------------------------------------------------------


class LineReader:
    """Whole lines from a child's stdout pipe, each awaited at most a given time.

    It reads the raw file descriptor itself (never a buffered file object, which could hold a
    line that `select` no longer sees), so a reply that never comes cannot block forever.
    """

    def __init__(self, proc: subprocess.Popen[bytes], name: str) -> None:
        assert proc.stdout is not None
        self._proc = proc
        self._name = name
        self._fd = proc.stdout.fileno()
        self._buffer = bytearray()

    def line(self, timeout: float) -> bytes:
        """The next line (without its newline); kills the child when none comes in time."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._fd, selectors.EVENT_READ)
            while (end := self._buffer.find(b"\n")) < 0:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self._proc.kill()
                    raise RuntimeError(f"{self._name} said nothing within {timeout:.0f} s")
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self._name} exited (code {self._proc.wait()})")
                self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line


def stop_child(proc: subprocess.Popen[bytes]) -> None:
    """Close the child's stdin (its signal to stop), wait for it, kill it if it lingers."""
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_server(args: list[str], *, ready_timeout: float = 120.0) -> Iterator[str]:
    """Start this module as a server process; yield its base URL; always stop it again."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        line = LineReader(proc, "the benchmark server").line(ready_timeout)
        if not line.startswith(b"READY "):
            raise RuntimeError(f"benchmark server did not start (said {line!r})")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        stop_child(proc)


if __name__ == "__main__":
    main()
