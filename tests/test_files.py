"""Files from the client's side: downloads that resume, uploads that never send the key, and
inputs that upload themselves without guessing (servers over real loopback sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from inferencesh import (
    File,
    ProtocolError,
    StreamingOptions,
    StreamInterruptedError,
    TransferProgress,
    UsageError,
    async_inference,
)

pytestmark = pytest.mark.anyio

BLOB = bytes(range(256)) * 12_000  # about 3 MB
FAST = StreamingOptions(retry_delay=0.01, retry_jitter=0.0, max_retries=3)


@asynccontextmanager
async def blob_server(
    *,
    cut_first: bool = True,
    honour_range: bool = True,
    size: int | None = None,
    always_cut: bool = False,
    cut_at: int = 1_000_000,
) -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A server of BLOB at /blob that cuts its first answer after 1 MB (abruptly), or with
    `always_cut` every answer right after its headers."""
    requests: list[dict[str, str]] = []

    async def blob(request: web.Request) -> web.StreamResponse:
        requests.append(dict(request.headers))
        start = 0
        ranged = request.headers.get("Range")
        if ranged and honour_range:
            start = int(ranged.removeprefix("bytes=").rstrip("-"))
        body = BLOB[start:]
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = len(body) if size is None else size - start
        response.content_type = "application/octet-stream"
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"
        await response.prepare(request)
        if always_cut:
            assert request.transport is not None
            request.transport.abort()
            return response
        if cut_first and len(requests) == 1:
            await response.write(body[:cut_at])
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(body)
        return response

    app = web.Application()
    app.router.add_get("/blob", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/blob", requests
    finally:
        await runner.cleanup()


async def test_a_cut_download_resumes_with_range_and_is_identical(tmp_path: Path) -> None:
    seen: list[TransferProgress] = []
    async with (
        blob_server() as (url, requests),
        async_inference(api_key="secret-key", streaming_options=FAST) as client,
    ):
        path = await client.download(
            File(uri=url, filename="blob.bin", size=len(BLOB)), tmp_path, progress=seen.append
        )
    assert path == tmp_path / "blob.bin"
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(BLOB).digest()
    assert requests[1]["Range"] == "bytes=1000000-"
    assert all("Authorization" not in headers for headers in requests)
    assert [p.name for p in tmp_path.iterdir()] == ["blob.bin"], "no partial file is left"
    assert seen[-1].done == len(BLOB)
    assert seen[-1].fraction == 1.0


async def test_a_cut_after_the_last_byte_needs_no_more_requests(tmp_path: Path) -> None:
    """Every byte arrived, then the connection broke: the file is complete as it is."""
    async with (
        blob_server(cut_at=len(BLOB)) as (url, requests),
        async_inference(api_key="k", streaming_options=FAST) as client,
    ):
        path = await client.download(url, tmp_path / "whole.bin")
    assert path.read_bytes() == BLOB
    assert len(requests) == 1


async def test_a_server_that_ignores_range_is_read_again_from_the_start(tmp_path: Path) -> None:
    async with (
        blob_server(honour_range=False) as (url, _),
        async_inference(api_key="k", streaming_options=FAST) as client,
    ):
        path = await client.download(url, tmp_path / "again.bin")
    assert path.read_bytes() == BLOB


async def test_a_size_that_does_not_match_is_an_error_and_leaves_no_file(tmp_path: Path) -> None:
    async with (
        blob_server(cut_first=False) as (url, _),
        async_inference(api_key="k", streaming_options=FAST) as client,
    ):
        with pytest.raises(ProtocolError, match="not the 10 its file object says"):
            await client.download(File(uri=url, size=10), tmp_path / "x.bin")
    assert list(tmp_path.iterdir()) == []


async def test_a_download_that_always_breaks_gives_up_typed(tmp_path: Path) -> None:
    """A server that breaks every answer before any byte of it: retried, then a typed error."""
    async with (
        blob_server(always_cut=True) as (url, requests),
        async_inference(api_key="k", streaming_options=FAST) as client,
    ):
        with pytest.raises(StreamInterruptedError):
            await client.download(url, tmp_path / "x.bin")
    assert len(requests) == 1 + FAST.max_retries
    assert list(tmp_path.iterdir()) == []


async def test_download_refuses_what_it_cannot_save(tmp_path: Path) -> None:
    async with async_inference(api_key="k") as client:
        with pytest.raises(UsageError, match="http"):
            await client.download("file:///etc/passwd", tmp_path)
        with pytest.raises(UsageError, match="folder does not exist"):
            await client.download("http://127.0.0.1:9/x", tmp_path / "no" / "x.bin")


@asynccontextmanager
async def files_api(upload_url: str | None = None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """`POST /files` and a presigned `PUT` on another port, recording what they were sent
    (`upload_url`: the presigned URL `POST /files` gives instead of the real one)."""
    seen: dict[str, Any] = {"puts": [], "posts": []}

    async def put(request: web.Request) -> web.Response:
        body = bytearray()
        async for chunk in request.content.iter_chunked(65536):
            body.extend(chunk)
        seen["puts"].append((dict(request.headers), bytes(body)))
        return web.Response(status=200)

    storage = web.Application()
    storage.router.add_put("/upload/{name}", put)
    storage_runner = web.AppRunner(storage)
    await storage_runner.setup()
    await web.TCPSite(storage_runner, "127.0.0.1", 0).start()
    storage_port = storage_runner.addresses[0][1]

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        seen["posts"].append((dict(request.headers), body))
        spec = body["files"][0]
        index = len(seen["posts"])
        data = [
            {
                "id": f"file_{index}",
                "uri": f"https://cdn.example/{index}/{spec['filename']}",
                "upload_url": upload_url or f"http://127.0.0.1:{storage_port}/upload/{index}",
                "filename": spec["filename"],
                "content_type": spec["content_type"],
                "size": spec["size"],
            }
        ]
        return web.json_response({"success": True, "data": data, "messages": []})

    async def run(request: web.Request) -> web.Response:
        seen["run"] = await request.json()
        task = {"id": "task_1", "status": 10, "output": {"ok": True}, "logs": []}
        return web.json_response({"success": True, "data": task})

    api = web.Application()
    api.router.add_post("/files", create)
    api.router.add_post("/apps/run", run)
    api_runner = web.AppRunner(api)
    await api_runner.setup()
    await web.TCPSite(api_runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{api_runner.addresses[0][1]}", seen
    finally:
        await api_runner.cleanup()
        await storage_runner.cleanup()


async def test_upload_sources_and_the_put_never_carries_the_key(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG fake")
    async with files_api() as (url, seen), async_inference(api_key="sk-1", base_url=url) as client:
        from_path = await client.upload_file(photo)
        from_str = await client.upload_file(str(photo), filename="renamed.png")
        from_bytes = await client.upload_file(b"raw bytes")
        from_object = await client.upload_file(io.BytesIO(b"object bytes"), filename="o.txt")
        from_data = await client.upload_file("data:text/plain;base64,aGVsbG8=")
    assert (from_path.filename, from_path.content_type, from_path.size) == (
        "photo.png", "image/png", 9,
    )  # fmt: skip
    assert from_str.filename == "renamed.png"
    assert (from_bytes.content_type, from_bytes.size) == ("application/octet-stream", 9)
    assert from_object.content_type == "text/plain"
    assert from_data.content_type == "text/plain"
    bodies = [body for _, body in seen["puts"]]
    assert bodies == [b"\x89PNG fake", b"\x89PNG fake", b"raw bytes", b"object bytes", b"hello"]
    for headers, _ in seen["puts"]:
        assert "Authorization" not in headers
        assert "Transfer-Encoding" not in headers, "a presigned PUT has a Content-Length"
    assert all(headers["Authorization"] == "Bearer sk-1" for headers, _ in seen["posts"])


async def test_inputs_upload_themselves_without_guessing(tmp_path: Path) -> None:
    """Paths, bytes, file objects, Files and data: URIs anywhere in the input are uploaded
    (each once) and replaced by their uri; strings that name a file or look like base64 are
    sent as they are."""
    image = tmp_path / "cat.png"
    image.write_bytes(b"cat")
    already = File(uri="https://cdn.example/already.png", content_type="image/png")
    existing_path = str(image)
    base64_like = "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    async with files_api() as (url, seen), async_inference(api_key="k", base_url=url) as client:
        await client.run(
            {
                "app": "a/b",
                "input": {
                    "image": image,
                    "again": image,
                    "nested": [{"blob": b"bytes"}, (io.BytesIO(b"stream"),)],
                    "file": already,
                    "data": "data:image/png;base64,iVBORw0K",
                    "path_text": existing_path,
                    "word": base64_like,
                },
            }
        )
    sent = seen["run"]["input"]
    assert sent["image"] == sent["again"]
    assert sent["image"].startswith("https://cdn.example/")
    assert sent["nested"][0]["blob"].startswith("https://cdn.example/")
    assert sent["nested"][1][0].startswith("https://cdn.example/")
    assert sent["file"] == already.uri
    assert sent["data"].startswith("https://cdn.example/")
    assert sent["path_text"] == existing_path
    assert sent["word"] == base64_like
    assert len(seen["puts"]) == 4, "cat.png once, the bytes, the stream, the data URI"


async def test_bad_sources_are_usage_errors(tmp_path: Path) -> None:
    async with async_inference(api_key="k", base_url="http://127.0.0.1:9") as client:
        with pytest.raises(UsageError, match=r"no such file|No such file"):
            await client.upload_file(tmp_path / "missing.png")
        with pytest.raises(UsageError, match="binary mode"):
            await client.upload_file(io.StringIO("text"))
        with pytest.raises(UsageError, match="data: URI"):
            await client.upload_file("data:image/png;base64,@@@")
        with pytest.raises(UsageError, match="regular file"):
            await client.upload_file(tmp_path)


def test_update_files_lists_file_objects_only() -> None:
    from inferencesh import TaskStatus, TaskUpdate

    image = {"uri": "https://x/a.png", "content_type": "image/png", "size": 3}
    update = TaskUpdate(
        id="t",
        status=TaskStatus.COMPLETED,
        output={
            "image": image,
            "more": [image, {"uri": "https://x/b.mp4", "content_type": "video/mp4"}],
            "url": "https://x/not-a-file-object.png",
        },
    )
    assert [f.uri for f in update.files] == ["https://x/a.png", "https://x/b.mp4"]
    assert update.files[0].size == 3


async def test_upload_progress_reaches_every_byte(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"z" * 1_000_000)
    seen: list[int] = []

    async def progress(state: TransferProgress) -> None:
        seen.append(state.done)
        await asyncio.sleep(0)

    async with files_api() as (url, _), async_inference(api_key="k", base_url=url) as client:
        await client.upload_file(big, progress=progress)
    assert seen[0] == 0
    assert seen[-1] == 1_000_000
    assert seen == sorted(seen)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_200_mib_upload_keeps_the_clients_memory_flat(tmp_path: Path) -> None:
    """The body streams from disk in chunks: uploading 200 MiB raises the client's peak RSS
    by far less than the file's size."""
    import os
    import subprocess
    import sys
    import textwrap

    from inferencesh.local import serve_in_thread

    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(200 * 1024 * 1024)  # sparse: no disk used, reads as zeros
    script = textwrap.dedent(
        """
        import re, sys
        from inferencesh import inference

        def peak():
            status = open("/proc/self/status").read()
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024

        with inference(api_key="k", base_url=sys.argv[1]) as client:
            client.upload_file(b"warm up")
            before = peak()
            file = client.upload_file(sys.argv[2])
            print(file.size, peak() - before)
        """
    )
    with serve_in_thread() as url:
        result = subprocess.run(
            [sys.executable, "-c", script, url, str(big)],
            capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ),
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    size, growth = map(int, result.stdout.split())
    assert size == 200 * 1024 * 1024
    assert growth < 48, f"the client's peak RSS grew by {growth} MiB"


def test_blocking_transfers_report_progress_in_the_callers_thread(tmp_path: Path) -> None:
    import threading

    from inferencesh import inference
    from inferencesh.local import serve_in_thread

    threads: set[int] = set()

    def progress(state: TransferProgress) -> None:
        threads.add(threading.get_ident())

    source = tmp_path / "in.bin"
    source.write_bytes(b"q" * 700_000)
    with serve_in_thread() as url, inference(api_key="k", base_url=url) as client:
        file = client.upload_file(source, progress=progress)
        saved = client.download(file, tmp_path / "out.bin", progress=progress)
    assert saved.read_bytes() == source.read_bytes()
    assert threads == {threading.get_ident()}


async def test_a_destination_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    """A folder where the file should go: a typed error, not a raw OSError."""
    async with (
        blob_server(cut_first=False) as (url, _),
        async_inference(api_key="k", streaming_options=FAST) as client,
    ):
        (tmp_path / "taken").mkdir()
        with pytest.raises(UsageError, match="cannot save to"):
            await client.download(File(uri=url, filename="taken"), tmp_path)


async def test_a_file_that_changes_while_uploading_is_its_own_error(tmp_path: Path) -> None:
    """What goes wrong reading the content is raised as it was, not as a network error
    (aiohttp reads the body in a task of its own) and not retried."""

    class TextHalfway(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            data = super().read(size)
            return data.decode("latin-1") if self.tell() > 300_000 else data  # type: ignore[return-value]

    async with files_api() as (url, seen), async_inference(api_key="k", base_url=url) as client:
        with pytest.raises(UsageError, match="binary mode"):
            await client.upload_file(TextHalfway(b"z" * 600_000), filename="z.bin")
    assert len(seen["posts"]) == 1, "not retried"


async def test_an_error_answer_in_pieces_is_read_whole() -> None:
    """A 412 whose body arrives in two pieces still gives typed requirements."""
    import json

    body = json.dumps(
        {"status": 412, "detail": "need a key", "errors": [{"type": "secret", "key": "K",
         "message": "need a key", "action": {"type": "add_secret"}}]}
    ).encode()  # fmt: skip

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/problem+json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:20]
        )
        await writer.drain()
        await asyncio.sleep(0.05)  # the second piece comes later: what is being tested
        writer.write(body[20:])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with async_inference(api_key="k", base_url=f"http://127.0.0.1:{port}") as client:
            from inferencesh import RequirementsNotMetError

            with pytest.raises(RequirementsNotMetError) as info:
                await client.get_task("t_1")
    finally:
        server.close()
        await server.wait_closed()
    assert [r.key for r in info.value.errors] == ["K"]


@pytest.mark.parametrize(
    "malformed",
    [
        "https://[::1/x",  # urlsplit raises ValueError on it (a broken IPv6 host)
        "https://a b/x",  # no usable host: it was tried, and retried, as a DNS name
        "https://h:99999/x",
    ],
)
async def test_a_malformed_url_is_typed_by_whose_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, malformed: str
) -> None:
    """A URL with no usable host or port: the server's (a File's uri, an upload_url) is a
    `ProtocolError`, the caller's a `UsageError`, at once and never a raw ValueError; with a
    proxy in the environment too (which splits each URL to pick a proxy)."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    async with (
        files_api(upload_url=malformed) as (url, seen),
        async_inference(api_key="k", base_url=url, streaming_options=FAST) as client,
    ):
        with pytest.raises(ProtocolError, match="upload_url"):
            await client.upload_file(b"content")
        with pytest.raises(ProtocolError, match="uri"):
            await client.download(File(uri=malformed, filename="f.bin"), tmp_path)
        with pytest.raises(UsageError, match="uri"):
            await client.download(malformed, tmp_path)
    assert seen["puts"] == []
    assert list(tmp_path.iterdir()) == []


async def test_a_nul_in_a_name_is_never_a_raw_value_error(tmp_path: Path) -> None:
    """A server's file name with a NUL in it is not used (the file's id is); a destination the
    caller gave with one is a `UsageError`."""
    async with (
        blob_server(cut_first=False) as (url, _),
        async_inference(api_key="k", streaming_options=FAST) as client,
    ):
        saved = await client.download(File(uri=url, id="file_1", filename="a\x00b.bin"), tmp_path)
        assert saved == tmp_path / "file_1"
        assert saved.read_bytes() == BLOB
        with pytest.raises(UsageError, match="cannot save to"):
            await client.download(File(uri=url), tmp_path / "x\x00y.bin")
    assert [path.name for path in tmp_path.iterdir()] == ["file_1"]


async def test_an_upload_source_that_cannot_be_read_is_a_usage_error() -> None:
    """A closed file object, a read or a seek that fails: `UsageError`, raised as itself (not
    a network error) and not retried."""

    class Failing(io.BytesIO):
        reads = 0

        def read(self, size: int | None = -1) -> bytes:
            Failing.reads += 1
            if Failing.reads > 1:
                raise OSError(5, "Input/output error")
            return super().read(min(size or 1, 1000))

    class SeekFails(io.BytesIO):
        seeks = 0

        def seek(self, offset: int, whence: int = 0) -> int:
            SeekFails.seeks += 1
            if SeekFails.seeks > 2:  # past the two that measure it
                raise OSError(5, "Input/output error")
            return super().seek(offset, whence)

    closed = io.BytesIO(b"gone")
    closed.close()
    async with files_api() as (url, seen), async_inference(api_key="k", base_url=url) as client:
        with pytest.raises(UsageError, match="could not read the upload's content"):
            await client.upload_file(closed, filename="c.bin")
        with pytest.raises(UsageError, match=r"could not read the upload's content: .*Input"):
            await client.upload_file(Failing(b"z" * 600_000), filename="f.bin")
        assert Failing.reads == 2, "not retried"
        with pytest.raises(UsageError, match=r"could not read the upload's content: .*Input"):
            await client.upload_file(SeekFails(b"s" * 10), filename="s.bin")
        assert SeekFails.seeks == 3, "not retried"
    assert len(seen["posts"]) == 3


STORAGE_SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRETKEY"
S3_SIGNATURE_ERROR = f"""<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not \
match the signature you provided. Check your key and signing method.</Message>\
<AWSAccessKeyId>AKIA{STORAGE_SECRET}</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256
20261129T000000Z
{STORAGE_SECRET}</StringToSign><SignatureProvided>{STORAGE_SECRET}</SignatureProvided>\
<CanonicalRequest>PUT /upload/1 X-Amz-Security-Token={STORAGE_SECRET}</CanonicalRequest>\
<RequestId>R1</RequestId></Error>"""


def _everything_said(error: BaseException) -> str:
    """All an error and its chain show: messages, reprs and attribute values."""
    said: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        said += [str(seen), repr(seen), repr(vars(seen)), *getattr(seen, "__notes__", [])]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(said)


@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_a_storage_error_keeps_its_code_and_message_never_its_signed_request(
    direction: str, tmp_path: Path
) -> None:
    """S3's SignatureDoesNotMatch quotes the signed request, credentials included: the error
    keeps only <Code> and <Message>; a storage 403 is no API-key AuthenticationError."""
    from inferencesh import AuthenticationError, BadRequestError

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=403, text=S3_SIGNATURE_ERROR, content_type="application/xml")

    storage = web.Application()
    storage.router.add_put("/upload/{name}", refuse)
    storage.router.add_get("/blob", refuse)
    runner = web.AppRunner(storage)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    storage_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with (
            files_api(upload_url=f"{storage_url}/upload/1") as (url, _),
            async_inference(api_key="sk-1", base_url=url) as client,
        ):
            transfer = (
                client.upload_file(b"bytes")
                if direction == "upload"
                else client.download(f"{storage_url}/blob", tmp_path / "out")
            )
            with pytest.raises(BadRequestError) as caught:
                await transfer
    finally:
        await runner.cleanup()
    error = caught.value
    assert not isinstance(error, AuthenticationError)
    assert (error.status, error.code) == (403, "SignatureDoesNotMatch")
    assert "The request signature we calculated does not match" in error.message
    assert sorted(error.body) == ["Code", "Message"]
    assert error.body["Message"].startswith("The request signature we calculated")
    assert STORAGE_SECRET not in _everything_said(error)


async def test_a_missing_stored_file_is_not_found(tmp_path: Path) -> None:
    from inferencesh import NotFoundError

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")

    app = web.Application()
    app.router.add_get("/blob", missing)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with async_inference(api_key="k", base_url="http://127.0.0.1:9") as client:
            with pytest.raises(NotFoundError, match="file storage answered NoSuchKey"):
                await client.download(f"http://127.0.0.1:{runner.addresses[0][1]}/blob", tmp_path)
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _raw_server(answer: Any) -> AsyncIterator[str]:
    """A loopback server whose `answer(reader, writer)` handles each connection; on leaving,
    every handler still running is cancelled and its connection closed."""
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await answer(reader, writer)
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/blob"
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def test_a_part_answered_to_a_whole_file_request_is_refused(tmp_path: Path) -> None:
    """A 206 from byte 5 to a request that asked for the whole file (no Range) would be
    saved as the file itself: it is a ProtocolError, and nothing is saved."""

    async def part(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 5-7/10\r\n"
            b"Content-Length: 3\r\nConnection: close\r\n\r\nabc"
        )
        await writer.drain()

    async with (
        _raw_server(part) as url,
        async_inference(api_key="k", base_url="http://127.0.0.1:9") as client,
    ):
        with pytest.raises(ProtocolError, match="whole file with a part from 5, not 0"):
            await client.download(url, tmp_path / "out.bin")
    assert [] == list(tmp_path.iterdir())


@pytest.mark.parametrize("blocking", [False, True])
async def test_a_download_that_trickles_forever_ends_at_its_timeout(
    tmp_path: Path, blocking: bool
) -> None:
    """A byte every 50 ms never trips idle_timeout: `timeout=` bounds the whole download,
    a RequestTimeoutError (not an OSError: it is a TimeoutError), and no part file is left."""
    from inferencesh import RequestTimeoutError, inference

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(2000):  # bounded: 100 s at most, far past the test's timeout
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)

    async def fetch(url: str) -> None:
        if blocking:
            with inference(api_key="k", base_url="http://127.0.0.1:9") as sync_client:
                await asyncio.to_thread(sync_client.download, url, tmp_path / "o", timeout=0.5)
            return
        options = StreamingOptions(idle_timeout=5.0)
        async with async_inference(
            api_key="k", base_url="http://127.0.0.1:9", streaming_options=options
        ) as client:
            await client.download(url, tmp_path / "o", timeout=0.5)

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with _raw_server(trickle) as url:
        with pytest.raises(RequestTimeoutError, match=r"did not end within 0\.5 seconds"):
            await fetch(url)
    assert loop.time() - started < 4.0
    assert [] == list(tmp_path.iterdir())
