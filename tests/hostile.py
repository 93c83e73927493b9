"""Hostile HTTP/1.1 servers on raw asyncio sockets, for tests/test_hostile_*.py.

Deliberately not aiohttp.web and not the emulator: these servers parse just enough HTTP (the
request line, the headers, a Content-Length body), record every request, and write their
answers byte by byte, so a test can send exactly the broken thing it wants to send: a body cut
in the middle of a chunk, replayed or renumbered events, no headers at all, garbage instead of a
status line.

Every connection carries one request (`Connection: close` on every answer). A handler is an
async function of one `Exchange`; whatever it leaves open is closed when it returns, and all
handlers still running are cancelled when the server's `async with` block ends, so a server
that never answers stops with the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal

import attrs

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
Framing = Literal["sse", "ndjson"]
Transfer = Literal["chunked", "close"]

# A handler that is still writing when the client hangs up meets one of these; it is not a bug.
_GONE = (ConnectionError, BrokenPipeError)


@attrs.frozen
class Request:
    """One request as it arrived: method, path, headers (names lower-cased), body, and when."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() once the request was read

    def json(self) -> Any:
        return json.loads(self.body)


class Exchange:
    """One request and the means to answer it by hand."""

    def __init__(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.request = request
        self.reader = reader
        self.writer = writer
        self.chunked = False
        # drain() then waits until every byte left asyncio's buffer for the kernel, so what was
        # written before a cut is on the wire when the socket closes.
        writer.transport.set_write_buffer_limits(0)

    async def respond(
        self,
        status: int,
        body: bytes | str | Any = b"",
        *,
        headers: Sequence[tuple[str, str]] = (),
        content_type: str = "application/json",
        reason: str = "X",
    ) -> None:
        """A complete answer with Content-Length; a dict or list body is sent as JSON."""
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = json.dumps(body).encode()
        head = [
            f"HTTP/1.1 {status} {reason}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in headers),
        ]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()

    async def start(
        self,
        content_type: str,
        *,
        transfer: Transfer = "chunked",
        status: int = 200,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Response headers for a streamed body: chunked, or delimited by closing."""
        self.chunked = transfer == "chunked"
        head = [
            f"HTTP/1.1 {status} OK",
            f"Content-Type: {content_type}",
            "Cache-Control: no-cache",
            "Connection: close",
            *(["Transfer-Encoding: chunked"] if self.chunked else []),
            *(f"{name}: {value}" for name, value in headers),
        ]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        """Part of the body (one chunk when chunked)."""
        if not data:
            return
        if self.chunked:
            self.writer.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.writer.write(data)
        await self.writer.drain()

    async def finish(self) -> None:
        """End the body cleanly (the last chunk, or a close) and close the connection."""
        if self.chunked:
            self.writer.write(b"0\r\n\r\n")
        await self.close()

    async def cut(self) -> None:
        """End the body abruptly: a chunked body stops inside a chunk that announced more
        bytes than it got; a close-delimited body simply closes (the events so far arrived,
        the terminal one never does)."""
        if self.chunked:
            self.writer.write(b'400\r\n{"id": "t1", "sta')
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(*_GONE):
            await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(*_GONE):
            await self.writer.wait_closed()

    async def hang(self) -> None:
        """Say nothing more, until the client hangs up (or the server stops)."""
        with contextlib.suppress(*_GONE):
            await self.reader.read()  # b"" once the client closed its side


Handler = Callable[[Exchange], Awaitable[None]]


class HostileServer:
    """A raw HTTP server on 127.0.0.1 that hands each request to `handler`.

    `async with HostileServer(handler) as server:` runs it on the current loop; `server.url` is
    its base URL and `server.requests` every request so far, in arrival order. Handler failures
    other than a client hanging up are re-raised when the block ends.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = threading.Condition()

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._server.wait_closed()
        errors, self.errors = self.errors, []
        if errors and exc_info[0] is None:
            raise AssertionError(f"the hostile server's handler failed: {errors!r}") from errors[0]

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    def wait_for_requests(self, count: int, timeout: float = 10) -> bool:
        """Block (from another thread than the server's) until `count` requests arrived."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= count, timeout)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await _read_request(reader)
            if request is None:
                return
            with self._changed:
                self.requests.append(request)
                self._changed.notify_all()
            await self._handler(Exchange(request, reader, writer))
        except _GONE:
            pass
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, *_GONE):
        return None
    request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    method, target, _version = request_line.split(" ")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return Request(method, target, headers, body, time.monotonic())


@contextlib.contextmanager
def serve_in_thread(handler: Handler) -> Iterator[HostileServer]:
    """Run a `HostileServer` on its own loop in a daemon thread (for code that must block the
    calling thread, or another process, while the server answers)."""
    server = HostileServer(handler)
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        state["loop"], state["stop"] = asyncio.get_running_loop(), stop
        async with server:
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="hostile-server", daemon=True)
    thread.start()
    assert ready.wait(10), "the hostile server did not start"
    if "error" in state:
        raise state["error"]
    try:
        yield server
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        assert not thread.is_alive(), "the hostile server did not stop"
        if "error" in state:
            raise state["error"]


def refused_url() -> str:
    """A loopback URL nothing listens on (the port was just bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- stream events ---------------------------------------------------------------------------------


def encode(framing: Framing, payload: Any, event_id: str | None) -> bytes:
    """One event as the server writes it: an SSE block, or an NDJSON line whose top-level
    `event_id` key (our extension) carries the id."""
    if framing == "sse":
        head = f"id: {event_id}\n" if event_id is not None else ""
        return (head + "data: " + json.dumps(payload) + "\n\n").encode()
    if event_id is not None:
        payload = {**payload, "event_id": event_id}
    return (json.dumps(payload) + "\n").encode()


def heartbeat(framing: Framing) -> bytes:
    return b": keep-alive\n\n" if framing == "sse" else b'{"type": "heartbeat"}\n'


def content_type(framing: Framing) -> str:
    return SSE if framing == "sse" else NDJSON


def running(task_id: str = "t1", **fields: Any) -> dict[str, Any]:
    """A running task's snapshot."""
    return {"id": task_id, "status": 7, "logs": [], **fields}


@attrs.frozen
class Script:
    """A task's whole stream, scripted: event 1 is the first snapshot (running, no logs),
    events 2 .. steps + 1 are partial updates (one or two new log lines, a progress step and an
    intermediate output each), and event steps + 2 is the terminal snapshot (completed, every
    line, output {"text": "done"})."""

    steps: int
    new_lines: tuple[tuple[str, ...], ...]

    @classmethod
    def make(cls, steps: int, widths: Sequence[int] | None = None) -> Script:
        widths = widths or [1 + step % 2 for step in range(steps)]
        lines = tuple(
            tuple(f"step {step} line {n}" for n in range(width))
            for step, width in zip(range(1, steps + 1), widths, strict=True)
        )
        return cls(steps, lines)

    @property
    def last(self) -> int:
        """The id of the terminal event."""
        return self.steps + 2

    @property
    def all_logs(self) -> list[str]:
        return [line for lines in self.new_lines for line in lines]

    def logs_after(self, event: int) -> list[str]:
        """Every log line once event `event` happened."""
        return [line for lines in self.new_lines[: max(0, event - 1)] for line in lines]

    def payload(self, event: int) -> dict[str, Any]:
        """The payload of event `event` (1-based), as the stream sends it."""
        assert 1 <= event <= self.last, event
        if event == 1 or event == self.last:
            return self.snapshot(event)
        step = event - 1
        data = {
            "id": "t1",
            "status": 7,
            "logs": list(self.new_lines[step - 1]),
            "progress": {"current": step, "total": self.steps},
            "output": {"step": step},
        }
        return {"data": data, "fields": ["logs", "progress", "output"]}

    def snapshot(self, event: int) -> dict[str, Any]:
        """The task's full state once event `event` happened (what a fresh connection gets)."""
        if event >= self.last:
            return {
                "id": "t1",
                "status": 10,
                "logs": self.all_logs,
                "progress": {"current": self.steps, "total": self.steps},
                "output": {"text": "done"},
            }
        snapshot = running(progress={"current": max(0, event - 1), "total": self.steps})
        if event > 1:
            snapshot["logs"] = self.logs_after(event)
            snapshot["output"] = {"step": event - 1}
        return snapshot


Misbehaviour = Literal["resume", "replay", "repeat", "skip", "rewind", "renumber", "noids"]


@attrs.define
class ScriptedTask:
    """A handler serving `script` as task t1's stream, misbehaving once after a cut.

    The first connection sends events 1 .. `cut` and cuts the body. The second (the client's
    reconnect) misbehaves as `kind` says:

    - resume: resumes correctly after Last-Event-ID (the control case);
    - replay: ignores Last-Event-ID and replays from event 1;
    - repeat: resumes, but repeats the last event sent before the cut first;
    - skip: skips one event (resumes at cut + 2);
    - rewind: rewinds three (resumes at cut - 2);
    - renumber: resumes the content correctly but numbers the events from 1 again;
    - noids: sends no event ids at all (like the hosted API); every connection replays from
      event 1.

    Any later connection behaves: with Last-Event-ID it resumes after that id; without, it sends
    a snapshot of the task as of the furthest event the server got to, then carries on.
    `cut=None` serves the whole script on the first connection (the clean run).
    """

    script: Script
    framing: Framing
    kind: Misbehaviour = "resume"
    cut: int | None = None
    transfer: Transfer = "chunked"
    event_id: Callable[[int], str] = str
    connections: int = 0
    furthest: int = 0
    fresh_at: int | None = None  # where a fresh connection's snapshot is; else `furthest`
    # Awaited before the cut. aiohttp raises a broken chunked body's error before handing out
    # what it had buffered, so a test that needs the client to have read every event up to the
    # cut waits here until its consumer saw them.
    before_cut: Callable[[], Awaitable[Any]] | None = None

    async def __call__(self, exchange: Exchange) -> None:
        number = self.connections
        self.connections += 1
        last_id = exchange.request.headers.get("last-event-id")
        await exchange.start(content_type(self.framing), transfer=self.transfer)
        if number == 0 and self.cut is not None:
            await self._send(exchange, range(1, self.cut + 1), ids=self.kind != "noids")
            if self.before_cut is not None:
                await self.before_cut()
            await exchange.cut()
            return
        if self.kind == "noids":
            await self._send(exchange, range(1, self.script.last + 1), ids=False)
        elif number == 1:
            await self._misbehave(exchange, last_id)
        elif last_id is not None:
            await self._send(exchange, range(self._after(last_id), self.script.last + 1))
        else:
            await self._fresh(exchange, self.fresh_at or self.furthest)
        await exchange.finish()

    async def _misbehave(self, exchange: Exchange, last_id: str | None) -> None:
        assert self.cut is not None
        cut, last = self.cut, self.script.last
        if self.kind == "resume":
            start = self._after(last_id) if last_id is not None else 1
            await self._send(exchange, range(start, last + 1))
        elif self.kind == "replay":
            await self._send(exchange, range(1, last + 1))
        elif self.kind == "repeat":
            await self._send(exchange, range(cut, last + 1))
        elif self.kind == "skip":
            self.fresh_at = min(cut + 1, last)
            await self._send(exchange, range(min(cut + 2, last), last + 1))
        elif self.kind == "rewind":
            await self._send(exchange, range(max(1, cut - 2), last + 1))
        elif self.kind == "renumber":
            events = range(cut + 1, last + 1)
            for number, event in enumerate(events, 1):
                await exchange.send(encode(self.framing, self.script.payload(event), str(number)))
        else:
            raise AssertionError(self.kind)

    def _after(self, last_id: str) -> int:
        for event in range(1, self.script.last + 1):
            if self.event_id(event) == last_id:
                return event + 1
        raise AssertionError(f"the client sent a Last-Event-ID never sent: {last_id!r}")

    async def _fresh(self, exchange: Exchange, event: int) -> None:
        event = max(1, event)
        await exchange.send(encode(self.framing, self.script.snapshot(event), self.event_id(event)))
        await self._send(exchange, range(event + 1, self.script.last + 1))

    async def _send(self, exchange: Exchange, events: range, *, ids: bool = True) -> None:
        for event in events:
            event_id = self.event_id(event) if ids else None
            await exchange.send(encode(self.framing, self.script.payload(event), event_id))
            self.furthest = max(self.furthest, event)


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[HostileServer]:
    """`async with serving(handler) as server:` (the same as `async with HostileServer(...)`)."""
    async with HostileServer(handler) as server:
        yield server


async def error_of(call: Callable[[], Awaitable[Any]], *, within: float = 20.0) -> BaseException:
    """The exception `call()` raises: it must raise one from the SDK's tree, within `within`
    seconds."""
    from inferencesh import InferenceshError

    async with asyncio.timeout(within):
        try:
            await call()
        except Exception as exc:
            error = exc
        else:
            raise AssertionError("no exception")
    assert isinstance(error, InferenceshError), f"not from the SDK's tree: {error!r}"
    return error
