"""The files routes: `POST /files`, `GET /files/{id}`, the keyless upload and download URLs,
and a task's files (`GET`/`DELETE /tasks/{id}/files`, `DELETE /tasks/{id}`)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ._emulator import Emulator
from ._files import (
    BLOB_ROUTE,
    UPLOAD_ROUTE,
    FileError,
    StoredFile,
    current_base_url,
    parse_file_specs,
)
from ._http import EMULATOR, _envelope, _json_object, task_or_404
from ._streaming import bounded_write
from ._tasks import CANCEL_GRACE, Task

__all__ = ["base_url", "install_files"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Bytes read from an upload, or sent of a download, at a time.
_CHUNK = 256 * 1024
# A download is sent in pieces this size, each under `write_timeout`: a client must take one
# within that time (2 KiB/s at the default 30 s), never the whole file.
_SEND_CHUNK = 64 * 1024
# A Host header fit to name the server in a URL: a name or IPv4, or a bracketed IPv6, and a port.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_ROLES = ("input", "output")


def base_url(request: web.Request) -> str:
    """The URL the client reached the server at: scheme and Host (else the local address)."""
    host = request.headers.get("Host", "")
    if not _HOST.fullmatch(host):
        transport = request.transport
        address = transport.get_extra_info("sockname") if transport is not None else None
        if isinstance(address, tuple) and len(address) >= 2:
            name = str(address[0])
            host = f"[{name}]:{address[1]}" if ":" in name else f"{name}:{address[1]}"
        else:
            host = "127.0.0.1"
    return f"{request.scheme}://{host}"


def install_files(app: web.Application) -> None:
    """Add the files routes, and the middleware that names files under each request's base."""
    app.middlewares.append(_remember_base)
    router = app.router
    router.add_post("/files", _create_files)
    router.add_get("/files/{file_id}", _get_file, allow_head=False)
    router.add_put("/uploads/{file_id}/{token}", _upload, name=UPLOAD_ROUTE)
    router.add_get("/blobs/{file_id}/{token}/{name:.*}", _blob, name=BLOB_ROUTE)
    router.add_get("/tasks/{task_id}/files", _list_task_files, allow_head=False)
    router.add_delete("/tasks/{task_id}/files", _delete_task_files)
    router.add_delete("/tasks/{task_id}", _delete_task)


@web.middleware
async def _remember_base(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Keep the request's base URL for the files it names, including those its task saves."""
    base = base_url(request)
    request.app[EMULATOR].files.last_base = base
    token = current_base_url().set(base)  # a task's runner inherits it when created here
    try:
        return await handler(request)
    finally:
        current_base_url().reset(token)


# -- files ------------------------------------------------------------------------------------


async def _create_files(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    body = await _json_object(request)
    specs = parse_file_specs(body, max_file_bytes=emulator.files.max_file_bytes)
    records = [emulator.files.create(spec) for spec in specs]
    base = base_url(request)
    return _envelope([record.dto(base) for record in records])


async def _get_file(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    record = request.app[EMULATOR].files.get(file_id)
    if record is None:
        raise FileError(404, f"file {file_id} not found")
    return _envelope(record.dto(base_url(request)))


async def _upload(request: web.Request) -> web.Response:
    """`PUT upload_url`: the raw content, streamed to disk (no API key: the URL is the key)."""
    files = request.app[EMULATOR].files
    record = files.for_upload(request.match_info["file_id"], request.match_info["token"])
    await files.receive(
        record,
        request.content.iter_chunked(_CHUNK),
        length=request.content_length,
        content_type=request.headers.get("Content-Type"),
    )
    return _envelope(record.dto(base_url(request)))


async def _blob(request: web.Request) -> web.StreamResponse:
    """`GET`/`HEAD uri`: the content, with Range support (no API key: the URL is the key)."""
    files = request.app[EMULATOR].files
    record, path = files.for_download(request.match_info["file_id"], request.match_info["token"])
    headers = {
        "Content-Type": record.media_type,
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(record.filename, safe='')}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
    write_timeout = request.app[EMULATOR].options.http.write_timeout
    return _BoundedFileResponse(path, write_timeout=write_timeout, headers=headers)


class _BoundedFileResponse(web.FileResponse):
    """aiohttp's `FileResponse` (its Range, HEAD, ETag and conditional answers unchanged) whose
    body is read a chunk at a time and each chunk written under `HttpLimits.write_timeout`, as
    streams are: a client that reads nothing is cut, ending the handler and closing the file.
    (aiohttp's own body, `loop.sendfile`, waits for such a client forever.)"""

    def __init__(self, path: Path, *, write_timeout: float, headers: Mapping[str, str]) -> None:
        super().__init__(path, chunk_size=_SEND_CHUNK, headers=headers)
        self._write_timeout = write_timeout

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        """Send `count` bytes of `fobj` from `offset` (called once the headers are decided,
        only when there is a body to send); `Stalled`, a `ConnectionError`, if the client stops
        reading, which aiohttp takes as the client gone."""
        writer = await web.StreamResponse.prepare(self, request)  # the headers
        assert writer is not None
        loop = asyncio.get_running_loop()
        try:
            while count > 0:
                chunk = await loop.run_in_executor(
                    None, _read_at, fobj, offset, min(_SEND_CHUNK, count)
                )
                if not chunk:
                    break  # the file shrank: send what there is, as aiohttp does
                await bounded_write(request, self.write(chunk), self._write_timeout)
                offset += len(chunk)
                count -= len(chunk)
            await bounded_write(request, self.write_eof(), self._write_timeout)
        finally:
            # Closed before the handler returns, the connection cut or not (aiohttp closes it
            # later on a thread, unawaited). Closing a file opened for reading does not block.
            fobj.close()
        return writer


def _read_at(fobj: IO[Any], offset: int, size: int) -> bytes:
    """Up to `size` bytes of `fobj` from `offset` (run on a thread: disk reads block)."""
    fobj.seek(offset)
    data: bytes = fobj.read(size)
    return data


# -- a task's files ----------------------------------------------------------------------------


def _role(request: web.Request) -> str | None:
    role = request.query.get("role") or None
    if role is not None and role not in _ROLES:
        raise FileError(400, f"query 'role': must be input or output, got {role[:40]!r}")
    return role


def _files_of(emulator: Emulator, task: Task, role: str | None) -> list[tuple[str, StoredFile]]:
    """The files `task` uses: those its input names, then its outputs (those its app saved,
    and those its output names that its input does not: a file saved once and reused)."""
    files = emulator.files
    inputs = files.referenced(task.input_json)
    found: list[tuple[str, StoredFile]] = []
    if role in (None, "input"):
        found += [("input", record) for record in inputs]
    if role in (None, "output"):
        outputs = {record.id: record for record in files.outputs_of(task.id)}
        named = files.referenced(json.dumps(task.output)) if task.output is not None else []
        for record in named:
            if record not in inputs:
                outputs.setdefault(record.id, record)
        found += [("output", record) for record in outputs.values()]
    return found


async def _list_task_files(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    found = _files_of(emulator, task_or_404(request), _role(request))
    base = base_url(request)
    return _envelope([{**record.dto(base), "role": role} for role, record in found])


def _delete_files(
    emulator: Emulator, task: Task, found: list[tuple[str, StoredFile]]
) -> dict[str, list[str]]:
    """Delete `task`'s files; skip those being uploaded or named by another task still going."""
    in_use: set[str] = set()
    for other in emulator.tasks.live_tasks():
        if other is not task and "/blobs/file_" in other.input_json:
            in_use.update(record.id for record in emulator.files.referenced(other.input_json))
    deleted: list[str] = []
    skipped: list[str] = []
    for _, record in found:
        if record.id in deleted or record.id in skipped:
            continue
        if record.id not in in_use and emulator.files.delete(record.id):
            deleted.append(record.id)
        elif emulator.files.get(record.id) is not None:
            skipped.append(record.id)
    return {"deleted": deleted, "skipped": skipped}


async def _delete_task_files(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    task = task_or_404(request)
    return _envelope(_delete_files(emulator, task, _files_of(emulator, task, _role(request))))


async def _delete_task(request: web.Request) -> web.Response:
    """`DELETE /tasks/{id}[?files=true]`: cancel it if running, forget it, maybe its files."""
    emulator = request.app[EMULATOR]
    value = request.query.get("files", "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise FileError(400, f"query 'files': must be true or false, got {value[:40]!r}")
    task = task_or_404(request)
    await _end(task)
    found = _files_of(emulator, task, None) if value in ("true", "1") else []
    emulator.tasks.delete(task.id)
    files = _delete_files(emulator, task, found)
    return _envelope({"id": task.id, "deleted": True, "files": files})


async def _end(task: Task) -> None:
    """Cancel a task that is still going and wait until it has ended: the task itself ends
    cancelled within `CANCEL_GRACE`, even if its app ignores the cancellation."""
    task.request_cancel()
    await task.wait_ended(CANCEL_GRACE + 1.0)
