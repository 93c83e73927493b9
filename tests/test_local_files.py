"""The emulator's files: `POST /files`, keyless upload and download URLs, apps that take and
give files, built-in media apps, a task's files and their deletion, and persistence.

Real loopback sockets and plain aiohttp (plus the official 0.36.0 client in a subprocess);
waits are bounded and event-driven.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import LOCAL_KEY, LocalServer

from inferencesh.local import (
    AppContext,
    Emulator,
    EmulatorOptions,
    UnknownFileError,
    serve_in_thread,
)
from inferencesh.local._media import media_kind

pytestmark = pytest.mark.anyio

Server = Callable[..., AbstractAsyncContextManager[LocalServer]]
MiB = 1024 * 1024
HOLD = {"sim": {"hold": True}}
TOKEN = re.compile(r"/(?:uploads|blobs)/file_[0-9a-f]{20}/([A-Za-z0-9_-]{43})(?:/|$)")


# -- helpers ----------------------------------------------------------------------------------


async def create_file(
    srv: LocalServer, filename: str = "data.bin", *, size: int | None = None, **extra: Any
) -> dict[str, Any]:
    """POST /files for one file, as the official client sends it; its FileDTO."""
    spec = {"uri": "", "filename": filename, "content_type": "application/octet-stream",
            "path": None, "size": size, "public": None, **extra}  # fmt: skip
    async with srv.session.post("/files", json={"files": [spec]}) as resp:
        payload = await resp.json()
        assert resp.status == 200, payload
    assert payload["success"] is True
    [dto] = payload["data"]
    return dict(dto)


async def put(url: str, data: Any, **headers: str) -> tuple[int, Any]:
    """PUT to an upload URL with no Authorization header at all; status and JSON body."""
    async with (
        aiohttp.ClientSession() as bare,
        bare.put(
            url, data=data, headers={"Content-Type": "application/octet-stream", **headers}
        ) as resp,
    ):
        assert "Authorization" not in resp.request_info.headers
        return resp.status, await resp.json(content_type=None)


async def download(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """GET a file URL with no API key."""
    async with aiohttp.ClientSession() as bare, bare.get(url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def upload(srv: LocalServer, data: bytes, filename: str = "data.bin") -> dict[str, Any]:
    dto = await create_file(srv, filename, size=len(data))
    status, body = await put(dto["upload_url"], data)
    assert status == 200, body
    return dict(body["data"])


async def finished(srv: LocalServer, app: str, input: dict[str, Any]) -> dict[str, Any]:
    """Run a task to completion; its final object."""
    task = await srv.create(app, input)
    await srv.wait_status(task["id"], 10)
    return dict(await srv.get(task["id"]))


async def chunks(
    total: int, size: int = MiB, pause: asyncio.Event | None = None
) -> AsyncIterator[bytes]:
    """`total` deterministic bytes in pieces of `size` (waiting on `pause` after the first)."""
    sent = 0
    while sent < total:
        piece = bytes([sent // size % 251]) * min(size, total - sent)
        yield piece
        sent += len(piece)
        if pause is not None:
            await pause.wait()


def content_files(folder: Path) -> list[str]:
    """Files holding content (or content being written) in a files folder."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".part"))


# -- upload and download ------------------------------------------------------------------------


async def test_upload_without_a_key_then_download_byte_identical(local_server: Server) -> None:
    """POST /files (with the key), PUT the bytes and GET them back with no key at all."""
    data = os.urandom(300_000)
    async with local_server(api_key=LOCAL_KEY) as srv:
        dto = await create_file(srv, "photo of a cat.png", size=len(data), content_type="image/png")
        assert dto["id"].startswith("file_")
        assert dto["filename"] == "photo of a cat.png"
        assert dto["content_type"] == "image/png"
        assert dto["size"] == len(data)
        assert {"uri", "upload_url", "path", "created_at", "category", "metadata"} <= set(dto)
        assert dto["upload_url"].startswith(f"{srv.url}/uploads/{dto['id']}/")
        assert dto["uri"].startswith(f"{srv.url}/blobs/{dto['id']}/")
        assert dto["uri"].endswith("/photo%20of%20a%20cat.png")
        upload_token = TOKEN.search(dto["upload_url"])
        download_token = TOKEN.search(dto["uri"])
        assert upload_token
        assert download_token
        assert upload_token[1] != download_token[1]

        assert (await download(dto["uri"]))[0] == 404  # no content yet
        status, body = await put(dto["upload_url"], data, **{"Content-Type": "image/png"})
        assert status == 200, body
        assert body["data"]["size"] == len(data)
        assert body["data"]["upload_url"] is None
        status, headers, got = await download(dto["uri"])
        assert status == 200
        assert got == data
        assert headers["Content-Type"] == "image/png"
        assert headers["Content-Length"] == str(len(data))
        assert headers["Accept-Ranges"] == "bytes"
        assert (await put(dto["upload_url"], b"again"))[0] == 409  # uploaded once

        async with srv.session.get(f"/files/{dto['id']}") as resp:
            assert resp.status == 200
            assert (await resp.json())["data"]["size"] == len(data)
        async with aiohttp.ClientSession(srv.url) as bare, bare.get(f"/files/{dto['id']}") as resp:
            assert resp.status == 401  # the file's record is behind the key; its URLs are not
        async with srv.session.post("/files", json={"files": []}) as resp:
            assert resp.status == 400


async def test_range_and_head(local_server: Server) -> None:
    data = bytes(range(256)) * 40
    async with local_server() as srv:
        dto = await upload(srv, data, "table.bin")
        status, headers, got = await download(dto["uri"], Range="bytes=100-199")
        assert status == 206
        assert got == data[100:200]
        assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        status, _, got = await download(dto["uri"], Range="bytes=-10")
        assert (status, got) == (206, data[-10:])
        assert (await download(dto["uri"], Range=f"bytes={len(data)}-"))[0] == 416
        async with aiohttp.ClientSession() as bare, bare.head(dto["uri"]) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(data))
            assert resp.headers["Content-Type"] == "application/octet-stream"
            assert await resp.read() == b""


async def test_urls_cannot_be_guessed(local_server: Server) -> None:
    """A wrong token (or file id) in either URL is a 404, as an unknown file is."""
    async with local_server() as srv:
        dto = await upload(srv, b"secret content")
        pending = await create_file(srv, size=3)
        download_token = TOKEN.search(dto["uri"])
        upload_token = TOKEN.search(pending["upload_url"])
        pending_download_token = TOKEN.search(pending["uri"])
        assert download_token
        assert upload_token
        assert pending_download_token
        status, _, body = await download(dto["uri"].replace(download_token[1], "A" * 43))
        assert status == 404
        assert b"secret" not in body
        status, _, _ = await download(dto["uri"].replace(dto["id"], "file_" + "0" * 20))
        assert status == 404
        forged = pending["upload_url"].replace(upload_token[1], "B" * 43)
        status, problem = await put(forged, b"abc")
        assert status == 404
        assert problem["type"].endswith("/not_found")
        # The download token does not open the upload URL.
        swapped = pending["upload_url"].replace(upload_token[1], pending_download_token[1])
        assert (await put(swapped, b"abc"))[0] == 404
        assert (await put(pending["upload_url"], b"abc"))[0] == 200


async def test_upload_over_max_file_bytes_is_413_and_leaves_nothing(
    local_server: Server, tmp_path: Path
) -> None:
    async with local_server(max_file_bytes=1000, data_dir=tmp_path) as srv:
        folder = tmp_path / "files"
        async with srv.session.post("/files", json={"files": [{"size": 1001}]}) as resp:
            assert resp.status == 413  # declared too big: refused before any upload
        dto = await create_file(srv)
        status, body = await put(dto["upload_url"], b"x" * 5000)  # Content-Length over the cap
        assert status == 413
        assert body["type"].endswith("/payload_too_large")
        assert "1000" in body["detail"]
        status, _ = await put(dto["upload_url"], chunks(5000, size=400))  # chunked, no length
        assert status == 413
        assert content_files(folder) == []
        assert srv.emu.files.used == 0
        assert (await download(dto["uri"]))[0] == 404
        assert (await put(dto["upload_url"], b"y" * 1000))[0] == 200  # still waiting: it works
        assert content_files(folder) == [f"{dto['id']}.bin"]


async def test_size_mismatch_is_400(local_server: Server) -> None:
    async with local_server() as srv:
        dto = await create_file(srv, size=10)
        for wrong in (b"x" * 11, b"x" * 9):
            status, body = await put(dto["upload_url"], wrong)
            assert status == 400
            assert "declared with 10" in body["detail"]
        status, _ = await put(dto["upload_url"], chunks(11, size=4))
        assert status == 400
        status, _ = await put(dto["upload_url"], chunks(9, size=4))
        assert status == 400
        assert srv.emu.files.used == 0
        assert (await put(dto["upload_url"], b"x" * 10))[0] == 200


async def test_file_storage_and_pending_files_are_bounded(local_server: Server) -> None:
    async with local_server(max_files_bytes=1000) as srv:
        first = await upload(srv, b"a" * 800)
        second = await create_file(srv, size=300)
        status, body = await put(second["upload_url"], b"b" * 300)
        assert status == 507
        assert body["type"].endswith("/insufficient_storage")
        status, _ = await put(second["upload_url"], chunks(300, size=100))
        assert status == 507
        assert srv.emu.files.used == 800
        folder = srv.emu.files.folder
        assert folder is not None
        assert content_files(folder) == [f"{first['id']}.bin"]

        srv.emu.files.max_pending = 3
        waiting = [await create_file(srv) for _ in range(4)]
        assert srv.emu.files.pending == 3
        # The oldest files still waiting for their upload made room for the newest.
        for gone in (second, waiting[0]):
            assert (await put(gone["upload_url"], b"late"))[0] == 404
        for kept in waiting[1:]:
            assert (await put(kept["upload_url"], b"ok"))[0] == 200


async def test_upload_streams_past_the_body_limit_and_the_body_gate(local_server: Server) -> None:
    """A 48 MiB upload, far over the 1 MiB JSON body limit and the 16 MiB body gate, goes
    to disk while JSON requests are answered as usual."""
    total = 48 * MiB
    async with local_server() as srv:
        dto = await create_file(srv, size=total)
        resume = asyncio.Event()
        upload = asyncio.create_task(
            put(dto["upload_url"], chunks(total, pause=resume), **{"Content-Length": str(total)})
        )

        def writing(emu: Emulator) -> bool:
            return emu.files.used > 0  # the upload is in, reserved against the disk budget

        assert await srv.emu.async_wait_until(writing)
        async with asyncio.timeout(5):  # answered while the upload's body is still coming
            task = await srv.create("a/b", {"prompt": "meanwhile"})
        assert task["status"] == 1
        assert not upload.done()
        resume.set()
        async with asyncio.timeout(20):
            status, body = await upload
        assert status == 200, body
        async with aiohttp.ClientSession() as bare, bare.head(dto["uri"]) as resp:
            assert resp.headers["Content-Length"] == str(total)


READY = re.compile(r"inferencesh emulator listening on (http://127\.0\.0\.1:\d+)\n")


def high_water_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        found = re.search(r"VmHWM:\s+(\d+) kB", status.read())
    assert found
    return int(found.group(1))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_a_200_mib_upload_keeps_the_server_rss_flat() -> None:
    """The upload is streamed to disk in pieces: the server's peak RSS barely moves, and the
    download is byte-identical."""
    total = 200 * MiB
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inferencesh", "serve", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            ready = READY.fullmatch((await proc.stdout.readline()).decode())
        assert ready
        url = ready.group(1)
        headers = {"Authorization": "Bearer k"}
        async with aiohttp.ClientSession(url, headers=headers) as session, asyncio.timeout(60):
            srv = LocalServer(Emulator(), url, session)  # only its session is used
            warm_up = await create_file(srv, size=2 * MiB)  # every code path runs once
            assert (await put(warm_up["upload_url"], chunks(2 * MiB)))[0] == 200
            before = high_water_kib(proc.pid)
            dto = await create_file(srv, "big.bin", size=total)
            status, body = await put(dto["upload_url"], chunks(total))
            assert status == 200, body
            after = high_water_kib(proc.pid)
            expected, got = hashlib.sha256(), hashlib.sha256()
            async for piece in chunks(total):
                expected.update(piece)
            async with aiohttp.ClientSession() as bare, bare.get(dto["uri"]) as resp:
                assert resp.headers["Content-Length"] == str(total)
                async for piece in resp.content.iter_chunked(MiB):
                    got.update(piece)
            assert got.hexdigest() == expected.hexdigest()
    finally:
        proc.terminate()
        await proc.wait()
    assert (after - before) // 1024 < 64, (before, after)


# -- media apps -------------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every chunk of a PNG, each CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found = []
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        found.append((kind, body))
        at += 12 + length
    assert at == len(data)
    return found


def parse_png(data: bytes) -> tuple[int, int]:
    """Check a PNG from signature to IEND; its width and height."""
    found = png_chunks(data)
    kinds = [kind for kind, _ in found]
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    assert set(kinds[1:-1]) == {b"IDAT"}
    width, height, depth, color, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", found[0][1]
    )
    assert (depth, color, compression, filtering, interlace) == (8, 2, 0, 0, 0)  # RGB, 8 bits
    raw = zlib.decompress(b"".join(body for kind, body in found if kind == b"IDAT"))
    assert len(raw) == height * (1 + 3 * width)
    assert all(raw[row * (1 + 3 * width)] <= 4 for row in range(height))  # filter types 0-4
    return width, height


async def test_image_apps_output_a_real_png(local_server: Server) -> None:
    async with local_server() as srv:
        fox = {"prompt": "a red fox", "width": 48, "height": 20}
        task = await finished(srv, "acme/flux-dev", fox)
        output = task["output"]
        assert output["text"] == "simulated acme/flux-dev output for a red fox"
        assert list(output) == ["text", "steps", "image", "input"]
        image = output["image"]
        assert image["content_type"] == "image/png"
        assert image["filename"] == "image.png"
        status, headers, data = await download(image["uri"])
        assert status == 200
        assert headers["Content-Type"] == "image/png"
        assert image["size"] == len(data)
        assert parse_png(data) == (48, 20)

        again = await finished(srv, "acme/sdxl-turbo", fox)
        # The same prompt and size make the same bytes, stored once: the outputs are equal.
        assert again["output"]["image"] == image
        async with srv.session.get(f"/tasks/{again['id']}/files") as resp:
            listed = [(item["role"], item["id"]) for item in (await resp.json())["data"]]
        assert listed == [("output", image["id"])]
        assert len(srv.emu.files) == 1
        capped = await finished(srv, "acme/my-image-model", {"width": 4096, "height": 3})
        assert parse_png((await download(capped["output"]["image"]["uri"]))[2]) == (1024, 3)
        default = await finished(srv, "acme/kandinsky", {"prompt": "x"})
        assert parse_png((await download(default["output"]["image"]["uri"]))[2]) == (256, 256)
        plain = await finished(srv, "acme/other", {"prompt": "x"})
        assert set(plain["output"]) == {"text", "steps", "input"}


def riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a RIFF body (a LIST's body is its type then its chunks)."""
    found = []
    at = 0
    while at < len(data):
        kind = data[at : at + 4]
        (size,) = struct.unpack("<I", data[at + 4 : at + 8])
        assert at + 8 + size <= len(data), kind
        found.append((kind, data[at + 8 : at + 8 + size]))
        at += 8 + size + size % 2
    assert at == len(data)
    return found


async def test_video_apps_output_a_real_avi(local_server: Server) -> None:
    async with local_server() as srv:
        small = {"prompt": "waves", "width": 30, "height": 20, "num_frames": 5}
        task = await finished(srv, "acme/wan-2-1", small)
        video = task["output"]["video"]
        assert video["content_type"] == "video/x-msvideo"
        status, headers, data = await download(video["uri"])
        assert status == 200
        assert headers["Content-Type"] == "video/x-msvideo"
        assert video["size"] == len(data)

    assert data[:4] == b"RIFF"
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8
    assert data[8:12] == b"AVI "
    (hdrl_kind, hdrl), (movi_kind, movi), (idx_kind, idx1) = riff_chunks(data[12:])
    assert (hdrl_kind, hdrl[:4], movi_kind, movi[:4], idx_kind) == (
        b"LIST", b"hdrl", b"LIST", b"movi", b"idx1"
    )  # fmt: skip
    (avih_kind, avih), (strl_kind, strl) = riff_chunks(hdrl[4:])
    assert (avih_kind, len(avih), strl_kind, strl[:4]) == (b"avih", 56, b"LIST", b"strl")
    per_frame, _, _, flags, frames, _, streams, _, width, height = struct.unpack("<10I", avih[:40])
    assert (frames, streams, width, height) == (5, 1, 30, 20)
    assert flags & 0x10  # AVIF_HASINDEX
    assert per_frame == 1_000_000 // 12
    (strh_kind, strh), (strf_kind, strf) = riff_chunks(strl[4:])
    assert (strh_kind, len(strh), strf_kind, len(strf)) == (b"strh", 56, b"strf", 40)
    assert strh[:4] == b"vids"
    scale, rate, _, length = struct.unpack("<4I", strh[20:36])
    assert (rate / scale, length) == (12, 5)
    size, bwidth, bheight, planes, bits, compression, image_size = struct.unpack(
        "<IiiHHII", strf[:24]
    )
    stride = (3 * 30 + 3) // 4 * 4
    assert (size, bwidth, bheight, planes, bits, compression) == (40, 30, 20, 1, 24, 0)
    assert image_size == stride * 20
    frames_found = riff_chunks(movi[4:])
    assert [kind for kind, _ in frames_found] == [b"00db"] * 5
    assert all(len(body) == stride * 20 for _, body in frames_found)
    assert len({body for _, body in frames_found}) == 5  # it moves
    entries = [struct.unpack("<4sIII", idx1[i : i + 16]) for i in range(0, len(idx1), 16)]
    assert len(entries) == 5
    for entry, (_, body) in zip(entries, frames_found, strict=True):
        kind, entry_flags, offset, entry_size = entry
        assert (kind, entry_flags & 0x10, entry_size) == (b"00db", 0x10, len(body))
        # Offsets count from the `movi` list's type: the chunk header is there, then the frame.
        assert movi[offset : offset + 4] == b"00db"
        assert movi[offset + 8 : offset + 8 + entry_size] == body


def test_media_app_names() -> None:
    assert media_kind("acme/FLUX-pro@1:run") == "image"
    assert media_kind("infsh/flux-schnell") == "image"
    assert media_kind("acme/stable-diffusion-xl") == "image"
    assert media_kind("acme/hunyuan-image") == "image"
    assert media_kind("acme/image-to-video") == "video"
    assert media_kind("acme/kling-2") == "video"
    assert media_kind("google/veo-3") == "video"
    # The examples' streaming demo stays a plain simulated app, whatever its version.
    assert media_kind("google/veo-3-1-fast@2") is None
    assert media_kind("flux/text-model") is None  # only the name counts, not the namespace
    assert media_kind("a/b") is None


# -- apps that take and give files ----------------------------------------------------------------


async def reverse(input: dict[str, Any], ctx: AppContext) -> dict[str, Any]:
    """Read the uploaded file `input["doc"]` and save it reversed."""
    data = await asyncio.to_thread(ctx.open_file(input["doc"]).read_bytes)
    saved = ctx.save_file(data[::-1], filename="reversed.txt", content_type="text/plain")
    return {"reversed": saved, "read": len(data)}


async def test_a_registered_app_reads_and_saves_files(local_server: Server) -> None:
    emu = Emulator(EmulatorOptions(sim_steps=1, sim_step_delay=0, transition_delay=0))
    emu.register_app("acme/reverse", reverse)
    async with local_server(emu) as srv:
        doc = await upload(srv, b"hello files", "doc.txt")
        input = {"doc": doc["uri"], "other": [{"again": doc["uri"]}]}  # named twice, listed once
        task = await finished(srv, "acme/reverse", input)
        output = task["output"]
        assert output["read"] == len(b"hello files")
        status, headers, data = await download(output["reversed"]["uri"])
        assert (status, data) == (200, b"selif olleh")
        assert headers["Content-Type"] == "text/plain"
        assert output["reversed"]["size"] == len(data)

        async def files(role: str | None = None) -> list[tuple[str, str]]:
            query = f"?role={role}" if role else ""
            async with srv.session.get(f"/tasks/{task['id']}/files{query}") as resp:
                assert resp.status == 200
                return [(item["role"], item["id"]) for item in (await resp.json())["data"]]

        saved = output["reversed"]["id"]
        assert await files() == [("input", doc["id"]), ("output", saved)]
        assert await files("input") == [("input", doc["id"])]
        assert await files("output") == [("output", saved)]
        async with srv.session.get(f"/tasks/{task['id']}/files?role=both") as resp:
            assert resp.status == 400
        async with srv.session.get("/tasks/task_nope/files") as resp:
            assert resp.status == 404


async def test_open_file_names_unknown_files_with_a_typed_error(local_server: Server) -> None:
    seen: list[str] = []

    async def opener(input: dict[str, Any], ctx: AppContext) -> dict[str, Any]:
        for uri in input["uris"]:
            with pytest.raises(UnknownFileError) as caught:
                ctx.open_file(uri)
            assert isinstance(caught.value, LookupError)
            seen.append(uri)
        ctx.open_file(input["uris"][0])  # uncaught: the task fails saying why
        return {}

    emu = Emulator(EmulatorOptions(sim_steps=1, sim_step_delay=0, transition_delay=0))
    emu.register_app("acme/opener", opener)
    async with local_server(emu) as srv:
        pending = await create_file(srv)  # never uploaded
        unknown = f"{srv.url}/blobs/file_{'0' * 20}/{'A' * 43}/x"
        uris = ["https://example.com/cat.png", pending["uri"], unknown]
        task = await srv.create("acme/opener", {"uris": uris})
        await srv.wait_status(task["id"], 11)
        assert seen == uris
        assert "not an emulator file URL" in (await srv.get(task["id"]))["error"]


# -- a task's files, deletion -------------------------------------------------------------------


async def test_deleting_a_running_task_ends_its_stream_and_frees_it(local_server: Server) -> None:
    async with local_server() as srv:
        doc = await upload(srv, b"input file")
        before = srv.emu.budget.used
        task = await srv.create("a/b", {"doc": doc["uri"], **HOLD})
        await srv.wait_status(task["id"], 7)
        stream = asyncio.create_task(srv.read_stream(task["id"]))

        def streaming(emu: Emulator) -> bool:
            return emu.open_streams == 1

        assert await srv.emu.async_wait_until(streaming)
        async with srv.session.delete(f"/tasks/{task['id']}") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["data"]["files"] == {"deleted": [], "skipped": []}
        async with asyncio.timeout(5):
            read = await stream  # the stream ended with the task
        assert read.error is None
        assert {event["id"] for event in read.ndjson() if "id" in event} == {task["id"]}
        async with srv.session.get(f"/tasks/{task['id']}") as resp:
            assert resp.status == 404
        async with srv.session.delete(f"/tasks/{task['id']}") as resp:
            assert resp.status == 404
        assert srv.emu.budget.used == before  # everything it held was given back
        assert (await download(doc["uri"]))[2] == b"input file"  # files=false keeps files
        async with srv.session.delete(f"/tasks/{task['id']}?files=maybe") as resp:
            assert resp.status == 400


async def test_deleting_a_task_with_its_files(local_server: Server, tmp_path: Path) -> None:
    async with local_server(data_dir=tmp_path) as srv:
        before = srv.emu.budget.used
        doc = await create_file(srv, "doc", size=12, content_type=None)  # typed by its PUT
        status, _ = await put(doc["upload_url"], b"prompt image", **{"Content-Type": "text/x-doc"})
        assert status == 200
        async with srv.session.get(f"/files/{doc['id']}") as resp:
            assert (await resp.json())["data"]["content_type"] == "text/x-doc"
        input = {"image": doc["uri"], "width": 8, "height": 8}
        task = await finished(srv, "acme/flux-dev", input)
        image = task["output"]["image"]
        assert len(content_files(tmp_path / "files")) == 2
        async with srv.session.get(f"/tasks/{task['id']}/files") as resp:
            listed = [(item["role"], item["id"]) for item in (await resp.json())["data"]]
        # The output's echo of the input names the input file: it is an input, not an output.
        assert listed == [("input", doc["id"]), ("output", image["id"])]
        async with srv.session.delete(f"/tasks/{task['id']}?files=true") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["data"]["files"] == {"deleted": [doc["id"], image["id"]], "skipped": []}
        for dto in (doc, image):
            assert (await download(dto["uri"]))[0] == 404
            async with srv.session.get(f"/files/{dto['id']}") as resp:
                assert resp.status == 404
        assert list((tmp_path / "files").iterdir()) == []
        assert srv.emu.files.used == 0
        assert srv.emu.budget.used == before  # the task and the file records gave theirs back


async def test_deleting_a_tasks_files_by_role_skips_files_in_use(local_server: Server) -> None:
    emu = Emulator(EmulatorOptions(sim_steps=1, sim_step_delay=0, transition_delay=0))
    emu.register_app("acme/reverse", reverse)
    async with local_server(emu) as srv:
        doc = await upload(srv, b"shared")
        done = await finished(srv, "acme/reverse", {"doc": doc["uri"]})
        saved = done["output"]["reversed"]["id"]
        held = await srv.create("a/b", {"doc": doc["uri"], **HOLD})  # still going, uses doc

        async def delete(query: str) -> Any:
            async with srv.session.delete(f"/tasks/{done['id']}/files{query}") as resp:
                assert resp.status == 200
                return (await resp.json())["data"]

        assert await delete("?role=input") == {"deleted": [], "skipped": [doc["id"]]}
        assert await delete("?role=output") == {"deleted": [saved], "skipped": []}
        await srv.cancel(held["id"])
        await srv.wait_status(held["id"], 12)
        assert await delete("") == {"deleted": [doc["id"]], "skipped": []}
        assert (await srv.get(done["id"]))["status"] == 10  # the task itself stays


async def test_task_expiry_keeps_files(local_server: Server) -> None:
    saved: list[dict[str, Any]] = []

    async def painter(input: dict[str, Any], ctx: AppContext) -> dict[str, Any]:
        saved.append(ctx.save_file(b"paint", filename="paint.txt"))
        return {"file": saved[-1]}

    emu = Emulator(EmulatorOptions(finished_task_ttl=0, transition_delay=0))
    emu.register_app("acme/painter", painter)
    async with local_server(emu) as srv:
        task = await srv.create("acme/painter", {})

        def expired(emu: Emulator) -> bool:
            return bool(saved) and emu.task_snapshot(task["id"]) is None

        assert await srv.emu.async_wait_until(expired)
        status, headers, data = await download(saved[0]["uri"])
        assert (status, data) == (200, b"paint")
        assert headers["Content-Type"] == "text/plain"  # guessed from the name


# -- where files live ------------------------------------------------------------------------


async def test_files_survive_a_restart_with_data_dir(local_server: Server, tmp_path: Path) -> None:
    options = EmulatorOptions(sim_steps=1, sim_step_delay=0, transition_delay=0, data_dir=tmp_path)
    first = Emulator(options)
    first.register_app("acme/reverse", reverse)
    async with local_server(first) as srv:
        doc = await upload(srv, b"kept across restarts")
        task = await finished(srv, "acme/reverse", {"doc": doc["uri"]})
        saved = task["output"]["reversed"]
        pending = await create_file(srv, size=4)
        old_base = srv.url

    second = Emulator(options)
    async with local_server(second) as srv:
        assert len(second.files) == 3
        for dto, content in ((doc, b"kept across restarts"), (saved, b"stratser ssorca tpek")):
            async with srv.session.get(f"/files/{dto['id']}") as resp:
                fresh = (await resp.json())["data"]
            assert fresh["uri"] == dto["uri"].replace(old_base, srv.url)  # same token
            assert (await download(fresh["uri"]))[2] == content
        async with srv.session.get(f"/tasks/{task['id']}/files") as resp:
            listed = [(item["role"], item["id"]) for item in (await resp.json())["data"]]
        assert listed == [("input", doc["id"]), ("output", saved["id"])]
        upload_url = pending["upload_url"].replace(old_base, srv.url)
        assert (await put(upload_url, b"late"))[0] == 200


async def test_files_without_data_dir_go_to_a_temporary_folder(local_server: Server) -> None:
    async with local_server() as srv:
        assert srv.emu.files.folder is None  # nothing written until a file comes
        await upload(srv, b"short-lived")
        folder = srv.emu.files.folder
        assert folder is not None
        assert folder.is_dir()
    assert not folder.exists()
    assert len(srv.emu.files) == 0


# -- the official client -----------------------------------------------------------------------


OFFICIAL_SCRIPT = """
import asyncio, sys
import inferencesh, requests
from inferencesh import AsyncInference, Inference

assert "official" in inferencesh.__file__, inferencesh.__file__
url, path = sys.argv[1], sys.argv[2]
client = Inference(api_key="k", base_url=url)
uploaded = client.upload_file(b"raw bytes")
print("upload", uploaded["id"][:5], requests.get(uploaded["uri"]).content.decode())
result = client.run({"app": "acme/reverse", "input": {"doc": path}})
print("run", result["output"]["read"], requests.get(result["output"]["reversed"]["uri"]).text)
uploaded = asyncio.run(AsyncInference(api_key="k", base_url=url).upload_file(b"async bytes"))
print("async", requests.get(uploaded["uri"]).content.decode())
listed = client.tasks.files(result["id"])
print("files", sorted(item["role"] for item in listed.data))
client.tasks.delete(result["id"], files=True)
try:
    client.get_task(result["id"])
except Exception as exc:
    print("deleted", getattr(exc, "status_code", exc))
"""


def test_the_official_client_uploads_and_runs_with_files(official: Path, tmp_path: Path) -> None:
    """0.36.0's `upload_file` (sync and async), its automatic upload of a path in `run`, its
    task files listing and its `tasks.delete(..., files=True)`."""
    doc = tmp_path / "doc.txt"
    doc.write_text("from a path", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERENCE_", "PYTHON"))}
    env["PYTHONPATH"] = str(official)
    emu = Emulator(EmulatorOptions(sim_steps=1, sim_step_delay=0, transition_delay=0))
    emu.register_app("acme/reverse", reverse)
    with serve_in_thread(emu) as url:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(OFFICIAL_SCRIPT), url, str(doc)],
            capture_output=True, text=True, env=env, timeout=60, check=False,
            cwd=official.parent,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "upload file_ raw bytes",
        "run 11 htap a morf",
        "async async bytes",
        "files ['input', 'output']",
        "deleted 404",
    ]


async def test_an_upload_cut_off_mid_body_is_one_rejected_line() -> None:
    """A client hanging up in the middle of a PUT: one INFO line, no 500, no traceback."""
    import logging

    from inferencesh.local import serve

    records: list[logging.LogRecord] = []
    logged = asyncio.Event()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            logged.set()

    handler = Catch(level=logging.INFO)
    logger = logging.getLogger("inferencesh.local")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with serve() as url, aiohttp.ClientSession() as session:
            spec = {"filename": "a.bin", "content_type": "application/octet-stream", "size": 10**5}
            async with session.post(
                f"{url}/files", json={"files": [spec]}, headers={"Authorization": "Bearer k"}
            ) as resp:
                upload_url = (await resp.json())["data"][0]["upload_url"]
            host, port = url.removeprefix("http://").split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            path = upload_url.split(f":{port}", 1)[1]
            writer.write(
                f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
            )
            writer.write(b"x" * 1000)
            await writer.drain()
            writer.transport.abort()
            await asyncio.wait_for(logged.wait(), 10)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert [r.levelname for r in records] == ["INFO"]
    assert (
        "400 field 'body': the connection closed before the body arrived" in records[0].getMessage()
    )
    assert records[0].exc_info is None
