"""A file download whose client reads nothing is cut after `HttpLimits.write_timeout`.

Real loopback sockets: the stalled client is a raw socket (aiohttp's client always reads), and
the wait for the server's cut is `poll()` on that socket, bounded, reading nothing meanwhile.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import os
import select
import socket
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from conftest import LocalServer

from inferencesh.local import HttpLimits

pytestmark = pytest.mark.anyio

Server = Callable[..., AbstractAsyncContextManager[LocalServer]]
MiB = 1024 * 1024
WRITE_TIMEOUT = 0.5
# Far more than the socket buffers of both ends hold, so the server's writes must wait.
SIZE = 16 * MiB
# How long past `WRITE_TIMEOUT` the cut may take to reach the client.
SLACK = 5.0

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(select, "POLLRDHUP"),
    reason="watches the socket with POLLRDHUP and the server's files in /proc/self/fd",
)


async def upload(srv: LocalServer, data: bytes) -> dict[str, Any]:
    """Store `data` as a file (POST /files, then PUT its upload URL); its FileDTO."""
    spec = {"filename": "big.bin", "content_type": "application/octet-stream", "size": len(data)}
    async with srv.session.post("/files", json={"files": [spec]}) as resp:
        assert resp.status == 200, await resp.text()
        [dto] = (await resp.json())["data"]
    async with (
        aiohttp.ClientSession() as bare,
        bare.put(dto["upload_url"], data=io.BytesIO(data)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return dict((await resp.json())["data"])


def open_on(path: Path) -> int:
    """How many of this process's descriptors are open on `path`."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == str(path):
                count += 1
        except OSError:
            pass  # closed since it was listed (the listing's own descriptor, say)
    return count


def wait_hangup(fd: int, timeout: float) -> int:
    """Block until the peer of socket `fd` closes or resets it, at most `timeout` seconds,
    without reading: buffered data does not count (no POLLIN). The events, 0 if none."""
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP)  # POLLHUP and POLLERR are always reported
    events = poller.poll(timeout * 1000)
    return events[0][1] if events else 0


async def read_headers(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """Read the answer's status line and headers, a byte at a time (none of the body)."""
    head = b""
    async with asyncio.timeout(5):
        while not head.endswith(b"\r\n\r\n"):
            byte = await loop.sock_recv(sock, 1)
            assert byte, f"connection closed in the headers: {head!r}"
            head += byte
    return head


async def drain(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> int:
    """Read what is left until the connection ends (EOF or reset); the bytes read."""
    got = 0
    async with asyncio.timeout(SLACK):
        while True:
            try:
                data = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return got
            if not data:
                return got
            got += len(data)


@linux_only
async def test_a_download_nobody_reads_is_cut_after_write_timeout(
    local_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that reads a big file's headers and then nothing is cut once a write waits
    `write_timeout`: the connection closes, the file is closed, the server serves on."""
    caplog.set_level(logging.DEBUG)
    data = bytes(range(256)) * (SIZE // 256)
    loop = asyncio.get_running_loop()
    async with local_server(http=HttpLimits(write_timeout=WRITE_TIMEOUT)) as srv:
        dto = await upload(srv, data)
        path = srv.emu.files.path_of(dto["uri"])
        assert open_on(path) == 0
        target = urlsplit(dto["uri"])
        assert target.hostname is not None
        assert target.port is not None
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: it sticks
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (target.hostname, target.port))
            # The download URL is its own key (its token is in the path): no Authorization.
            await loop.sock_sendall(
                sock, f"GET {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n\r\n".encode()
            )
            head = await read_headers(loop, sock)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert f"\r\nContent-Length: {SIZE}\r\n".encode() in head, head
            assert open_on(path) == 1  # the handler holds the file while it sends it
            started = loop.time()  # from here on nothing is read until the server cuts
            events = await asyncio.to_thread(wait_hangup, sock.fileno(), WRITE_TIMEOUT + SLACK)
            assert events, f"the server kept the connection past {WRITE_TIMEOUT + SLACK} s"
            assert loop.time() - started < WRITE_TIMEOUT + SLACK
            assert open_on(path) == 0  # closed by the handler before it cut the connection
            assert await drain(loop, sock) < SIZE  # a cut answer, not a finished one
        finally:
            sock.close()
        # The server serves on: the file's record, then the whole file, byte-identical.
        async with srv.session.get(f"/files/{dto['id']}") as resp:
            assert resp.status == 200
        async with aiohttp.ClientSession() as bare, bare.get(dto["uri"]) as resp:
            assert resp.status == 200
            assert await resp.read() == data
        assert open_on(path) == 0
    loud = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert [] == [f"{r.name}: {r.getMessage()}" for r in loud]


def test_the_aiohttp_hook_relied_on_is_there() -> None:
    """`_filehttp` replaces `FileResponse._sendfile` (the body after the headers are decided);
    named here so an aiohttp upgrade that moves it fails first (the test above exercises it)."""
    assert ["self", "request", "fobj", "offset", "count"] == list(
        inspect.signature(web.FileResponse._sendfile).parameters
    )
