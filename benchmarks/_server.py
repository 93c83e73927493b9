"""Servers for `bench_stream.py`, each run in its own process so it never shares a GIL or an
event loop with the client under test.

Run as a script, this module serves on 127.0.0.1 (an OS-chosen port), prints `READY <port>`
once it listens, and stops when its standard input closes, on SIGTERM, or after `--lifetime`
seconds, whichever comes first:

* default: a minimal aiohttp.web server whose task streams are PRE-RENDERED bytes, written in
  512 KiB pieces, so the server is never the bottleneck. `--stream NAME:SIZE:N` adds a task
  `NAME` whose stream is N events of SIZE-byte JSON (see `render_events`).
* `--emulator`: the SDK's own emulator (`inferencesh.local`), which produces its events live.

The parent side is `running_server(...)`, a context manager that starts the process, waits for
the READY line and always stops the process again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
WRITE_CHUNK = 512 * 1024
BACKLOG = 4096
NDJSON_SUFFIX = ".ndjson"


# --- pre-rendered task streams ---------------------------------------------------------------


def partial_update(task_id: str, index: int, total: int, size: int) -> bytes:
    """A per-step partial update (`{data, fields}`) of exactly `size` bytes when possible.

    The padding goes into the step's intermediate `output` and the step number into
    `progress`, so every event changes what a client has seen and is yielded as an update. No
    `logs` are sent, which keeps the terminal snapshot (whose logs are cumulative) small and
    consistent: it lists no lines because none were ever sent.
    """
    payload: dict[str, Any] = {
        "data": {
            "id": task_id,
            "status": 7,
            "progress": {"current": index, "total": total},
            "output": {"text": f"step {index} "},
        },
        "fields": ["progress", "output"],
    }
    base = len(orjson.dumps(payload))
    if base < size:
        payload["data"]["output"]["text"] += "." * (size - base)
    return orjson.dumps(payload)


def terminal_snapshot(task_id: str, total: int) -> bytes:
    """The last event: a full, completed task snapshot."""
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
    events = [partial_update(task_id, i, count, size) for i in range(1, count)]
    events.append(terminal_snapshot(task_id, count))
    return events


def render_sse(events: list[bytes], retry_ms: int = 1000) -> bytes:
    """`retry:` then one `id: <n>` / `data: <json>` block per event (our SSE extension)."""
    parts = [b"retry: %d\n\n" % retry_ms]
    parts.extend(b"id: %d\ndata: %s\n\n" % (n, data) for n, data in enumerate(events, 1))
    return b"".join(parts)


def render_ndjson(events: list[bytes]) -> bytes:
    """One JSON object per line, as the official client reads it."""
    return b"".join(data + b"\n" for data in events)


class Bodies:
    """The pre-rendered SSE and NDJSON bodies of one task."""

    def __init__(self, task_id: str, size: int, count: int) -> None:
        events = render_events(task_id, size, count)
        self.task_id = task_id
        self.count = count
        self.sse = render_sse(events)
        self.ndjson = render_ndjson(events)
        self.snapshot = orjson.loads(events[-1])


def wants_sse(accept: str) -> bool:
    """SSE when the first media range of Accept is text/event-stream, else NDJSON."""
    return accept.split(",", 1)[0].strip().lower().startswith("text/event-stream")


def build_app(bodies: dict[str, Bodies]) -> web.Application:
    """The minimal API: `POST /apps/run`, `GET /tasks/{id}` and `GET /tasks/{id}/stream`.

    `POST /apps/run` with `{"input": {"stream": NAME}}` answers task NAME (status 1). A task id
    ending in `.ndjson` (as NAME or in a stream path) forces NDJSON framing whatever Accept says.
    """

    async def run_app(request: web.Request) -> web.Response:
        body = await request.json()
        name = (body.get("input") or {}).get("stream", "")
        if name.removesuffix(NDJSON_SUFFIX) not in bodies:
            return web.json_response({"detail": f"no stream {name!r}"}, status=404)
        return web.json_response(
            {"success": True, "data": {"id": name, "status": 1}, "messages": []}
        )

    async def get_task(request: web.Request) -> web.Response:
        name = request.match_info["task_id"].removesuffix(NDJSON_SUFFIX)
        if name not in bodies:
            return web.json_response({"detail": "not found"}, status=404)
        return web.json_response({"success": True, "data": bodies[name].snapshot})

    async def stream_task(request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["task_id"]
        name = task_id.removesuffix(NDJSON_SUFFIX)
        if name not in bodies:
            return web.json_response({"detail": "not found"}, status=404)
        sse = task_id == name and wants_sse(request.headers.get("Accept", ""))
        body = bodies[name].sse if sse else bodies[name].ndjson
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream" if sse else "application/x-ndjson",
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
            pass  # the client left early (time-to-first-event trials break after one event)
        return resp

    app = web.Application()
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
        apps={EMULATOR_APP: steps_app},
    )


# --- the server process ----------------------------------------------------------------------


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (1000 concurrent streams need fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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


async def serve_prerendered(app: web.Application, lifetime: float) -> None:
    """Serve `app` on 127.0.0.1 (a backlog for 1000 concurrent connects) until told to stop."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=BACKLOG)
        await site.start()
        port = runner.addresses[0][1]
        print(f"READY {port}", flush=True)
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
    asyncio.run(serve_prerendered(build_app(bodies), args.lifetime))


# --- the parent side -------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(args: list[str], *, ready_timeout: float = 120.0) -> Iterator[str]:
    """Start this module as a server process; yield its base URL; always stop it again."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = _read_line(proc, proc.stdout, ready_timeout)
        if not line.startswith(b"READY "):
            raise RuntimeError(f"benchmark server did not start (said {line!r})")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _read_line(proc: subprocess.Popen[bytes], stream: Any, timeout: float) -> bytes:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise RuntimeError(f"benchmark server not ready within {timeout:.0f} s")
    line: bytes = stream.readline()
    return line


if __name__ == "__main__":
    main()
