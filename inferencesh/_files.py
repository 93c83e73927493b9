"""Files in and out: `File`, uploading (`POST /files`, then `PUT` to the presigned URL),
the inputs that upload themselves, and downloads that resume.

What is uploaded is decided from types, never guessed from text: `pathlib.Path`, `bytes`
(and `bytearray`, `memoryview`), binary file objects, `File` (already uploaded: its `uri` is
used) and `data:` URIs. Any other string is sent as it is, even if it names a file that exists.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import inspect
import io
import mimetypes
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, unquote_to_bytes

import attrs

from ._defaults import USE_CLIENT_DEFAULT, Timeout, check_callback
from ._events import MappingReads
from ._exceptions import (
    APIStatusError,
    InferenceshError,
    ProtocolError,
    RequestTimeoutError,
    StreamInterruptedError,
    TransportError,
    UsageError,
)
from ._retry import may_retry, retry_delay
from ._streaming import StreamingOptions
from ._transport import Transport, masked, shown, split_url
from ._wire import preview

__all__ = [
    "File",
    "ProgressCallback",
    "TransferProgress",
    "download",
    "find_files",
    "upload",
    "upload_inputs",
]

_CHUNK = 256 * 1024
# Uploads of one input run at most this many at once.
_PARALLEL_UPLOADS = 4
# Inputs nest at most this deep (deeper is a mistake, and would exhaust the stack elsewhere).
_MAX_DEPTH = 256
_DATA_URI = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*?)(?P<b64>;base64)?,", re.I)
_OCTET_STREAM = "application/octet-stream"


@attrs.frozen
class File(MappingReads):
    """A file on the inference.sh side: one you uploaded, or one an app produced.

    `uri` is where its content is; `download(file, dest)` saves it. `role` says, in
    `task_files`, whether a task used it ("input") or made it ("output"). In a task's output, a JSON
    object with a string `uri` and a `content_type` is a file (`TaskUpdate.files` lists them);
    a plain URL string is left as it is.
    """

    uri: str
    id: str | None = None
    filename: str | None = None
    content_type: str | None = None
    size: int | None = None
    role: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> File:
        """The file described by a file object of the API (`FileDTO`)."""
        uri = data.get("uri")
        if not isinstance(uri, str) or not uri:
            raise ProtocolError(f"a file object without a uri: {masked(preview(data))}")
        size = data.get("size")
        return cls(
            uri=uri,
            id=_text(data.get("id")),
            filename=_text(data.get("filename")),
            content_type=_text(data.get("content_type")),
            size=size if type(size) is int and size >= 0 else None,
            role=_text(data.get("role")),
            raw=data,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def is_file_object(value: Any) -> bool:
    """Whether an output value is a file: an object with a string `uri` and `content_type`."""
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("uri"), str)
        and isinstance(value.get("content_type"), str)
        and bool(value["uri"])
    )


def find_files(value: Any) -> tuple[File, ...]:
    """Every file object inside `value` (dicts and lists, depth first, each once)."""
    found: list[File] = []
    seen: set[str] = set()
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if is_file_object(current):
            file = File.from_wire(current)
            if file.uri not in seen:
                seen.add(file.uri)
                found.append(file)
        elif depth < _MAX_DEPTH and isinstance(current, Mapping):
            stack.extend((item, depth + 1) for item in reversed(list(current.values())))
        elif depth < _MAX_DEPTH and isinstance(current, list | tuple):
            stack.extend((item, depth + 1) for item in reversed(current))
    return tuple(found)


@attrs.frozen
class TransferProgress:
    """How far an upload or a download is: `done` of `total` bytes (None: unknown)."""

    filename: str
    done: int
    total: int | None

    @property
    def fraction(self) -> float | None:
        """`done / total` from 0 to 1, or None when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


#: Called as bytes move; may be a coroutine function.
ProgressCallback = Callable[[TransferProgress], Any]


async def _report(progress: ProgressCallback | None, state: TransferProgress) -> None:
    if progress is None:
        return
    result = progress(state)
    if inspect.isawaitable(result):
        await result


# -- what is uploaded --------------------------------------------------------------------------


@attrs.frozen
class _Source:
    """Something to upload: its name, type, size and a way to read it (again, if `repeatable`)."""

    filename: str
    content_type: str
    size: int | None
    chunks: Callable[[], AsyncIterator[bytes]]
    repeatable: bool


def is_uploadable(value: Any) -> bool:
    """Whether an input value is uploaded by `run` (see the module docstring)."""
    return (
        isinstance(value, Path | bytes | bytearray | memoryview | File)
        or (isinstance(value, str) and value[:5].lower() == "data:")
        or _is_binary_file(value)
    )


def _is_binary_file(value: Any) -> bool:
    return isinstance(value, io.IOBase) and not isinstance(value, io.TextIOBase)


def _source(value: Any, *, filename: str | None, content_type: str | None) -> _Source:
    if isinstance(value, str) and value[:5].lower() == "data:":
        declared, data = _parse_data_uri(value)
        return _bytes_source(data, filename or "file", content_type or declared or _OCTET_STREAM)
    if isinstance(value, bytes | bytearray | memoryview):
        return _bytes_source(bytes(value), filename or "file", content_type or _OCTET_STREAM)
    if isinstance(value, str | os.PathLike):
        return _path_source(Path(value), filename, content_type)
    if isinstance(value, io.TextIOBase):
        raise UsageError("a file to upload must be opened in binary mode ('rb'), not text")
    if _is_binary_file(value) or callable(getattr(value, "read", None)):
        return _file_object_source(value, filename, content_type)
    raise UsageError(
        "upload_file takes a path, bytes, a binary file object or a data: URI, "
        f"got {type(value).__name__}"
    )


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or _OCTET_STREAM


def _bytes_source(data: bytes, filename: str, content_type: str) -> _Source:
    async def chunks() -> AsyncIterator[bytes]:
        view = memoryview(data)
        for start in range(0, len(data), _CHUNK):
            yield bytes(view[start : start + _CHUNK])

    return _Source(filename, content_type, len(data), chunks, repeatable=True)


async def _read(handle: IO[bytes]) -> bytes:
    """The next chunk of an upload's source. A read that fails (a closed file, an I/O error)
    is the caller's to see, as `UsageError`; the upload is not retried."""
    try:
        return await asyncio.to_thread(handle.read, _CHUNK)
    except (OSError, ValueError) as exc:
        raise UsageError(f"could not read the upload's content: {exc}") from None


def _path_source(path: Path, filename: str | None, content_type: str | None) -> _Source:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"cannot upload {str(path)!r}: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the path, or a lone surrogate the file system cannot encode
        raise UsageError(
            f"cannot upload {str(path)!r}: not a valid path (a NUL or an unencodable character)"
        ) from None
    if not path.is_file():
        raise UsageError(f"cannot upload {str(path)!r}: not a regular file")
    name = filename or path.name or "file"

    async def chunks() -> AsyncIterator[bytes]:
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except OSError as exc:
            raise UsageError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        sent = 0
        try:
            while chunk := await _read(handle):
                sent += len(chunk)
                if sent > size:
                    break
                yield chunk
        finally:
            handle.close()
        if sent != size:
            raise UsageError(f"{str(path)!r} changed size while it was uploaded")

    return _Source(name, content_type or _guess_type(name), size, chunks, repeatable=True)


def _file_object_source(
    handle: IO[bytes], filename: str | None, content_type: str | None
) -> _Source:
    given = getattr(handle, "name", None)
    name = filename or (os.path.basename(given) if isinstance(given, str) else "") or "file"
    start: int | None = None
    size: int | None = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if handle.seekable():
            start = handle.tell()
            size = handle.seek(0, io.SEEK_END) - start
            handle.seek(start)
    used = False

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal used
        if start is not None:
            try:
                handle.seek(start)
            except (OSError, ValueError) as exc:  # closed, say
                raise UsageError(f"could not read the upload's content: {exc}") from None
        elif used:
            raise UsageError("this file object cannot be read twice (it is not seekable)")
        used = True
        while chunk := await _read(handle):
            if not isinstance(chunk, bytes | bytearray):
                raise UsageError("a file to upload must be opened in binary mode ('rb')")
            yield bytes(chunk)

    return _Source(
        name, content_type or _guess_type(name), size, chunks, repeatable=start is not None
    )


def _parse_data_uri(uri: str) -> tuple[str | None, bytes]:
    """A `data:` URI's declared type and its bytes; `UsageError` when it is malformed."""
    match = _DATA_URI.match(uri)
    if match is None:
        raise UsageError(f"not a valid data: URI: {preview(uri)}")
    payload = uri[match.end() :]
    if match["b64"]:
        try:
            data = base64.b64decode(unquote(payload), validate=True)
        except (binascii.Error, ValueError):
            raise UsageError(
                f"the base64 data of a data: URI is not valid: {preview(uri)}"
            ) from None
    else:
        data = unquote_to_bytes(payload)
    return (match["type"].strip().lower() or None), data


# -- uploading ---------------------------------------------------------------------------------


async def upload(
    transport: Transport,
    value: Any,
    *,
    filename: str | None,
    content_type: str | None,
    progress: ProgressCallback | None,
    options: StreamingOptions,
    timeout: Timeout = USE_CLIENT_DEFAULT,
) -> File:
    """Upload `value` (see `AsyncInference.upload_file`) and return the new `File`; `timeout`
    bounds the `POST /files` that creates it (the bytes are bounded by `idle_timeout`)."""
    for name, given in (("filename", filename), ("content_type", content_type)):
        if given is not None and not isinstance(given, str):
            raise UsageError(f"{name} must be a string or None, got {type(given).__name__}")
    check_callback(progress, "progress")
    source = _source(value, filename=filename, content_type=content_type)
    description = {
        "uri": "", "filename": source.filename, "content_type": source.content_type,
        "path": None, "size": source.size, "public": None,
    }  # fmt: skip
    created = await transport.request(
        "POST", "/files", json_body={"files": [description]}, timeout=timeout
    )
    if not isinstance(created, list) or not created or not isinstance(created[0], Mapping):
        raise ProtocolError(f"POST /files answered {masked(preview(created))}, not a list of files")
    dto = created[0]
    upload_url = dto.get("upload_url")
    if not isinstance(upload_url, str) or not upload_url.startswith(("http://", "https://")):
        raise ProtocolError("POST /files gave no upload_url to send the content to")
    split_url(upload_url, error=ProtocolError, what="the upload_url POST /files gave")

    async def attempt() -> None:
        done = 0
        await _report(progress, TransferProgress(source.filename, 0, source.size))

        async def counted() -> AsyncIterator[bytes]:
            nonlocal done
            async for chunk in source.chunks():
                yield chunk
                done += len(chunk)
                await _report(progress, TransferProgress(source.filename, done, source.size))

        await transport.put_file(
            upload_url,
            counted(),
            size=source.size,
            content_type=source.content_type,
            idle_timeout=options.idle_timeout,
        )

    # The same bytes to the same URL: safe to repeat, if they can be read again.
    await transport.retrying("PUT (upload)", attempt, idempotent=source.repeatable)
    file = File.from_wire({**dto, "size": dto.get("size", source.size)})
    return attrs.evolve(
        file,
        filename=file.filename or source.filename,
        content_type=file.content_type or source.content_type,
        size=file.size if file.size is not None else source.size,
    )


async def upload_inputs(value: Any, upload_one: Callable[[Any], Awaitable[File]]) -> Any:
    """`value` with every uploadable value inside it replaced by its file's `uri`.

    Each distinct value is uploaded once (the same object, the same path, the same data URI),
    at most `_PARALLEL_UPLOADS` at a time; a `File` is used as it is.
    """
    found: dict[Any, Any] = {}
    _collect(value, found, 0)
    if not found:
        return value
    files = await upload_all(list(found.values()), upload_one)
    return _replace(value, {key: file.uri for key, file in zip(found, files, strict=True)}, 0)


async def upload_all(
    values: Sequence[Any], upload_one: Callable[[Any], Awaitable[File]]
) -> list[File]:
    """A `File` for each value, in order: uploaded (each distinct one once, a few at a time),
    or as it is for a `File`. A plain string is a path here (an explicit attachment). The
    first upload to fail is raised, the others cancelled."""
    wanted = [Path(v) if isinstance(v, str) and v[:5].lower() != "data:" else v for v in values]
    files: dict[Any, File] = {}
    gate = asyncio.Semaphore(_PARALLEL_UPLOADS)

    async def one(key: Any, value: Any) -> None:
        if isinstance(value, File):
            files[key] = value
            return
        async with gate:
            files[key] = await upload_one(value)

    try:
        async with asyncio.TaskGroup() as group:
            for key, value in {_key(v): v for v in wanted}.items():
                group.create_task(one(key, value))
    except ExceptionGroup as failed:
        raise _first(failed) from None
    return [files[_key(value)] for value in wanted]


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def file_ref(file: File) -> dict[str, Any]:
    """The `FileRef` an attachment is sent as."""
    return {
        "id": file.id or "", "uri": file.uri, "filename": file.filename or "",
        "content_type": file.content_type or "", "size": file.size or 0,
    }  # fmt: skip


def _key(value: Any) -> Any:
    if isinstance(value, Path):
        try:
            return ("path", str(value.resolve()))
        except ValueError:  # a NUL or a lone surrogate: uploading it says so (`_path_source`)
            return ("path", str(value))
    if isinstance(value, str):
        return ("data", value)
    if isinstance(value, File):
        return ("file", value.uri)
    return ("object", id(value))


def _collect(value: Any, found: dict[Any, Any], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise UsageError(f"the input nests deeper than {_MAX_DEPTH} levels")
    if is_uploadable(value):
        found.setdefault(_key(value), value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect(item, found, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, found, depth + 1)


def _replace(value: Any, uris: Mapping[Any, str], depth: int) -> Any:
    if is_uploadable(value):
        return uris[_key(value)]
    if isinstance(value, Mapping):
        return {key: _replace(item, uris, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_replace(item, uris, depth + 1) for item in value]
    return value


# -- downloading -------------------------------------------------------------------------------


def _target(file: File, dest: str | os.PathLike[str], url_path: str) -> Path:
    if not isinstance(dest, str | os.PathLike):
        raise UsageError(f"dest must be a path (str or os.PathLike), got {type(dest).__name__}")
    path = Path(dest)
    if path.is_dir():
        name = file.filename or PurePosixPath(unquote(url_path)).name
        name = os.path.basename(name.replace("\\", "/")).strip()
        # A NUL cannot be in a file name (open() raises ValueError on it): such a name is unused.
        if name in ("", ".", "..") or "\x00" in name:
            name = file.id if file.id and "\x00" not in file.id else "download"
        return path / name
    if not path.parent.is_dir():
        raise UsageError(f"cannot save to {str(path)!r}: its folder does not exist")
    return path


async def download(
    transport: Transport,
    file_or_uri: File | str,
    dest: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None,
    options: StreamingOptions,
) -> Path:
    """Save a file's content at `dest` (a file path, or a folder to save it in by its name).

    The bytes go to a temporary file beside it, renamed once complete and of the right size,
    so no half file ever has the final name. A dropped connection resumes with `Range` where
    it stopped, as often as `options` allows retries without progress.
    """
    check_callback(progress, "progress")
    file = file_or_uri if isinstance(file_or_uri, File) else File(uri=file_or_uri)
    if not isinstance(file.uri, str) or not file.uri.startswith(("http://", "https://")):
        raise UsageError(f"can only download http(s) URIs, got {masked(preview(file.uri))}")
    # A URL the caller gave is their mistake; one in a File (from the server) is the server's.
    url_error = UsageError if isinstance(file_or_uri, str) else ProtocolError
    parts = split_url(file.uri, error=url_error, what="the file's uri")
    target = _target(file, dest, parts.path)
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    state = _Received(target.name, file.size)
    try:
        with partial.open("wb") as out:
            deadline = asyncio.timeout(options.total_timeout)
            try:
                async with deadline:
                    await _fetch_all(transport, file, out, state, progress, options)
            except TimeoutError as exc:
                if not deadline.expired():
                    raise
                raise RequestTimeoutError(
                    f"the download of {_named(file)} did not end within "
                    f"{options.total_timeout} seconds (timeout)"
                ) from exc
        if state.total is not None and state.done != state.total:
            raise ProtocolError(
                f"{_named(file)} gave {state.done} bytes, not the {state.total} announced"
            )
        os.replace(partial, target)
    except InferenceshError:
        raise  # before OSError: a RequestTimeoutError is a TimeoutError, so an OSError too
    except (OSError, ValueError) as exc:  # the local side: a folder there, a full disk, ...
        reason = exc.strerror if isinstance(exc, OSError) else None
        raise UsageError(f"cannot save to {str(target)!r}: {reason or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, ValueError):
            partial.unlink()  # ValueError: a NUL in the dest the caller gave
    return target


@attrs.define
class _Received:
    """How much of a download is on disk, and how much there is in all (once known)."""

    name: str
    total: int | None
    done: int = 0

    @property
    def complete(self) -> bool:
        return self.total is not None and self.done == self.total


async def _fetch_all(
    transport: Transport,
    file: File,
    out: IO[bytes],
    state: _Received,
    progress: ProgressCallback | None,
    options: StreamingOptions,
) -> None:
    """`_fetch` until the file is whole, resuming after each failure the retry policy allows
    (its count starts afresh whenever an attempt brought bytes)."""
    failures = 0
    while True:
        before = state.done
        try:
            await _fetch(transport, file, out, state, progress, options)
            return
        except (TransportError, APIStatusError) as error:
            if state.complete:
                return  # cut after the last byte: nothing is left to ask for
            failures = 0 if state.done > before else failures + 1
            delay = retry_delay(options, failures, retry_after=getattr(error, "retry_after", None))
            if delay is None or not may_retry(error, idempotent=True):
                raise
            await asyncio.sleep(delay)


async def _fetch(
    transport: Transport,
    file: File,
    out: IO[bytes],
    state: _Received,
    progress: ProgressCallback | None,
    options: StreamingOptions,
) -> None:
    """Get the bytes from `state.done` on into `out`, keeping `state` up to date."""
    headers = {"Accept-Encoding": "identity"}
    if state.done:
        headers["Range"] = f"bytes={state.done}-"
    async with transport.stream(
        file.uri, headers=headers, options=options, keyless_url=True
    ) as resp:
        if resp.status == 206:  # a part: it must start where this request asked (or at 0)
            start, whole = _content_range(resp.headers.get("Content-Range"))
            if start != state.done:
                what = "a Range request" if state.done else "a request for the whole file"
                raise ProtocolError(
                    f"{_named(file)} answered {what} with a part from {start}, not {state.done}"
                )
            state.total = whole if whole is not None else state.total
        else:
            if state.done:
                out.seek(0)  # the server sends the whole file again
                out.truncate()
                state.done = 0
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit():
                if state.total is not None and int(length) != state.total:
                    raise ProtocolError(
                        f"{_named(file)} is {length} bytes, not the {state.total} its file object "
                        "says"
                    )
                state.total = int(length)
        await _report(progress, TransferProgress(state.name, state.done, state.total))
        while chunk := await resp.read():
            out.write(chunk)
            state.done += len(chunk)
            if state.total is not None and state.done > state.total:
                raise ProtocolError(
                    f"{_named(file)} sent more than the {state.total} bytes announced"
                )
            await _report(progress, TransferProgress(state.name, state.done, state.total))
        out.flush()
        if state.total is not None and state.done < state.total:
            raise StreamInterruptedError(
                f"{_named(file)} ended after {state.done} of {state.total} bytes"
            )


def _named(file: File) -> str:
    """How messages name a file being downloaded: its URI as `shown` shows it (a presigned URL
    carries its signature in its path or query), with its name when it has one."""
    where = shown(file.uri)
    return f"{file.filename!r} ({where})" if file.filename else where


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    match = re.fullmatch(r"bytes (\d{1,18})-\d{1,18}/(\d{1,18}|\*)", (value or "").strip())
    if match is None:
        return None, None
    whole = match.group(2)
    return int(match.group(1)), (int(whole) if whole != "*" else None)
