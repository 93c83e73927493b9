# ==================================================================================================
# BEGIN inferencesh.local emulator fixtures (tests/test_local_*.py). Keep this block together;
# add other fixtures below the END marker.
# These helpers use plain aiohttp and bare sockets, never the SDK's client or decoder, so the
# emulator and the client cannot hide each other's bugs.
# ==================================================================================================
from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs
import pytest

from inferencesh.local import Emulator, EmulatorOptions, serve

LOCAL_KEY = "test-key"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp runs on asyncio only."""
    return "asyncio"


@attrs.frozen
class SSEEvent:
    """One SSE block as read off the wire by `parse_sse_lines`."""

    id: str | None
    data: str | None
    retry: int | None
    comment: str | None

    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


def parse_sse_lines(lines: list[str]) -> list[SSEEvent]:
    """A deliberately tiny SSE reader for the emulator's own output (one line per field)."""
    blocks: list[SSEEvent] = []
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if fields:
                retry = fields.get("retry")
                blocks.append(
                    SSEEvent(
                        fields.get("id"),
                        fields.get("data"),
                        int(retry) if retry is not None else None,
                        fields.get(""),
                    )
                )
            fields = {}
            continue
        name, _, value = line.partition(":")
        assert name not in fields, f"repeated SSE field in one block: {line!r}"
        fields[name] = value[1:] if value.startswith(" ") else value
    assert not fields, f"unterminated SSE block at end of stream: {fields}"
    return blocks


@attrs.define
class StreamRead:
    """What a stream read returned: status, headers, lines, and how it ended."""

    status: int
    headers: dict[str, str]
    lines: list[str]
    error: BaseException | None

    def ndjson(self) -> list[Any]:
        """The payloads, without the `event_id` each event line carries (heartbeats have none)."""
        payloads = [json.loads(line) for line in self.lines]
        for payload in payloads:
            if payload != {"type": "heartbeat"}:
                assert payload.pop("event_id").isdigit(), payload
        return payloads

    def ndjson_ids(self) -> list[int]:
        """The `event_id` of each event line (heartbeats skipped)."""
        lines = [json.loads(line) for line in self.lines]
        return [int(line["event_id"]) for line in lines if line != {"type": "heartbeat"}]

    def sse(self) -> list[SSEEvent]:
        return parse_sse_lines(self.lines)

    def sse_events(self) -> list[SSEEvent]:
        """Blocks that carry data (no retry hint, no comments)."""
        return [block for block in self.sse() if block.data is not None]


@attrs.define
class RawResponse:
    """An HTTP/1.1 answer read off a raw socket until the server closed it."""

    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # False: the chunked body was cut before its final empty chunk

    @property
    def lines(self) -> list[str]:
        assert self.body == b"" or self.body.endswith(b"\n"), self.body[-80:]
        return self.body.decode("ascii").split("\n")[:-1]

    def sse_events(self) -> list[SSEEvent]:
        """Complete SSE blocks that carry data (a block cut in the middle is not counted)."""
        text = self.body.decode("ascii")
        whole = text[: text.rfind("\n\n") + 2] if "\n\n" in text else ""
        return [e for e in parse_sse_lines(whole.split("\n")[:-1]) if e.data is not None]


async def raw_get(url: str, path: str, headers: dict[str, str], timeout: float = 10) -> RawResponse:
    """GET over a bare socket, so an aborted chunked body can be seen exactly as it arrived.

    aiohttp's client raises a payload error as soon as the connection breaks, dropping lines it
    had buffered but not yet handed out; this reader keeps every byte that arrived.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = dict(line.split(": ", 1) for line in header_lines)
    assert found.get("Transfer-Encoding") == "chunked", found
    body = b""
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return RawResponse(int(status_line.split()[1]), found, body, False)
        size = int(size_line, 16)
        if size == 0:
            return RawResponse(int(status_line.split()[1]), found, body, rest == b"\r\n")
        if len(rest) < size + 2:
            return RawResponse(int(status_line.split()[1]), found, body, False)
        body += rest[:size]
        rest = rest[size + 2 :]


@attrs.define
class LocalServer:
    """An emulator served on 127.0.0.1 plus a plain aiohttp session with a valid key."""

    emu: Emulator
    url: str
    session: aiohttp.ClientSession

    async def create(self, app: str = "infsh/sim", input: Any = None, **extra: Any) -> Any:
        """POST /apps/run and return the envelope's data (asserting success)."""
        body = {"app": app, "input": {} if input is None else input, **extra}
        async with self.session.post("/apps/run", json=body) as resp:
            payload = await resp.json()
            assert resp.status == 200, payload
            assert payload["success"] is True
            return payload["data"]

    async def wait_status(self, task_id: str, code: int, timeout: float = 5.0) -> None:
        """Wait (bounded, no polling) until the task has status `code`."""

        def reached(emu: Emulator) -> bool:
            snapshot = emu.task_snapshot(task_id)
            return snapshot is not None and snapshot["status"] == code

        reached_in_time = await self.emu.async_wait_until(reached, timeout=timeout)
        assert reached_in_time, self.emu.task_snapshot(task_id)

    async def get(self, task_id: str) -> Any:
        async with self.session.get(f"/tasks/{task_id}") as resp:
            payload = await resp.json(content_type=None)
            assert resp.status == 200, payload
            return payload["data"]

    async def cancel(self, task_id: str) -> Any:
        async with self.session.post(f"/tasks/{task_id}/cancel") as resp:
            assert resp.status == 200
            return await resp.json()

    async def raw_stream(
        self, task_id: str, *, accept: str = NDJSON, last_event_id: int | str | None = None
    ) -> RawResponse:
        """Read a task stream over a bare socket (see `raw_get`)."""
        headers = {"Authorization": f"Bearer {LOCAL_KEY}", "Accept": accept}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        return await raw_get(self.url, f"/tasks/{task_id}/stream", headers)

    async def read_stream(
        self,
        task_id: str,
        *,
        accept: str | None = NDJSON,
        last_event_id: int | str | None = None,
        session: aiohttp.ClientSession | None = None,
        base: str = "",
        on_line: Callable[[str], None] | None = None,
    ) -> StreamRead:
        """Read a task stream to its end; a broken connection is recorded, not raised."""
        headers = {}
        if accept is not None:
            headers["Accept"] = accept
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        lines: list[str] = []
        error: BaseException | None = None
        async with (session or self.session).get(
            f"{base}/tasks/{task_id}/stream", headers=headers
        ) as resp:
            try:
                while True:
                    raw = await resp.content.readline()
                    if not raw:
                        break
                    assert raw.endswith(b"\n"), f"line without newline at end of stream: {raw!r}"
                    line = raw[:-1].decode("ascii")
                    lines.append(line)
                    if on_line is not None:
                        on_line(line)
            except aiohttp.ClientPayloadError as exc:
                error = exc
            return StreamRead(resp.status, dict(resp.headers), lines, error)


@pytest.fixture
def raw_stream_get() -> Callable[..., Any]:
    """`raw_get(url, path, headers)`: read an HTTP answer off a bare socket (see `raw_get`)."""
    return raw_get


@pytest.fixture
def local_server() -> Callable[..., contextlib.AbstractAsyncContextManager[LocalServer]]:
    """Start an emulator with the given `EmulatorOptions` fields: `async with local_server(...)`."""

    @contextlib.asynccontextmanager
    async def start(emulator: Emulator | None = None, **options: Any) -> AsyncIterator[LocalServer]:
        settings: dict[str, Any] = {
            "sim_steps": 3,
            "sim_step_delay": 0.005,
            "transition_delay": 0.0,
            "heartbeat_interval": 5.0,
        }
        settings.update(options)
        emu = emulator if emulator is not None else Emulator(EmulatorOptions(**settings))
        async with (
            serve(emu) as url,
            aiohttp.ClientSession(url, headers={"Authorization": f"Bearer {LOCAL_KEY}"}) as session,
        ):
            yield LocalServer(emu, url, session)

    return start


# ==================================================================================================
# END inferencesh.local emulator fixtures
# ==================================================================================================


# ==================================================================================================
# Client fixtures (tests/test_async_client.py, tests/test_sync_client.py, agent and CLI tests):
# a fast emulator served from a background thread, so sync and async clients both reach it over
# a real loopback socket.
# ==================================================================================================
from collections.abc import Iterator  # noqa: E402

from support import fast_emulator  # noqa: E402

from inferencesh.local import serve_in_thread  # noqa: E402


@pytest.fixture
def emu() -> Emulator:
    """A fresh, fast emulator (not yet serving)."""
    return fast_emulator()


@pytest.fixture
def server(emu: Emulator) -> Iterator[str]:
    """The base URL of `emu`, served on a loopback port from a background thread."""
    with serve_in_thread(emu) as url:
        yield url


# -- the hosted API's official client, for compatibility tests --------------------------------

OFFICIAL = "inferencesh==0.36.0"
NETWORK_ERRORS = ("Could not find a version", "No matching distribution", "NewConnectionError",
                  "Temporary failure in name resolution", "Network is unreachable")  # fmt: skip


@pytest.fixture(scope="session")
def official(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the official 0.36.0 client and its dependencies (installed once per
    run; put it first on `PYTHONPATH` in a subprocess: its `inferencesh` shadows ours)."""
    target = tmp_path_factory.mktemp("official")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", str(target), OFFICIAL],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if install.returncode != 0:
        if any(marker in install.stderr for marker in NETWORK_ERRORS):
            pytest.skip(f"the package index is unreachable: {install.stderr.strip()[-300:]}")
        pytest.fail(f"installing {OFFICIAL} failed:\n{install.stderr[-3000:]}")
    return target


_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to loopback servers: a proxy set in the developer's shell must not carry
    them (the tests of proxies set the variables themselves)."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C works in the tests however the run was started: a shell that starts a command in
    the background without job control ignores SIGINT in it (and in the processes it starts),
    which the tests that press Ctrl-C on themselves or a child would take for a hang."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
