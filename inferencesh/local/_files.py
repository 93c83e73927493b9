"""Files: the store behind `POST /files`, presigned-style uploads and keyless downloads.

A file is a record (an id, two secret tokens, its name, type and size, the task that made it)
and, once uploaded, its content on disk. Its upload URL and its download URL (`uri`) each
carry a secret token (`secrets.token_urlsafe(32)`), so they need no API key and cannot be
guessed, as the hosted API's presigned storage URLs.

Content lives in `DATA_DIR/files/` when the emulator persists (a JSON sidecar per file keeps
the record, so files survive a restart), else in a temporary folder made on first use and
removed when the server stops. It is written as it arrives, in pieces, never held whole.

Bounds: `max_file_bytes` per file (413), `max_total_bytes` of content on disk in all,
uploads in progress included (507), at most `MAX_PENDING_FILES` files created and not yet
uploaded (the oldest idle one is dropped to make room), at most `MAX_FILES` files in all
(507), and every record's bytes are charged to the emulator's memory budget (429 when live
work fills it).
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import hmac
import json
import logging
import mimetypes
import os
import re
import secrets
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import attrs

from ._budget import OVERHEAD, MemoryBudget, Overloaded
from ._hub import ChangeHub

__all__ = [
    "BLOB_ROUTE",
    "KEYLESS_ROUTES",
    "MAX_FILES",
    "MAX_FILES_PER_REQUEST",
    "MAX_PENDING_FILES",
    "UPLOAD_ROUTE",
    "FileError",
    "FileSpec",
    "FileStore",
    "StoredFile",
    "UnknownFileError",
    "current_base_url",
    "parse_file_specs",
]

logger = logging.getLogger("inferencesh.local")

_T = TypeVar("_T")

#: Route names of the upload and download URLs: authorised by the token in their path, they
#: take no API key, and their bodies stream to or from disk (no JSON body limit, no body gate).
UPLOAD_ROUTE = "inferencesh.files.upload"
BLOB_ROUTE = "inferencesh.files.blob"
KEYLESS_ROUTES = frozenset({UPLOAD_ROUTE, BLOB_ROUTE})

#: Files created and not yet uploaded, at most; the oldest idle one is dropped for a new one.
MAX_PENDING_FILES = 1_000
#: Files one `POST /files` may create.
MAX_FILES_PER_REQUEST = 100
#: Files kept at most (records cost about 1 KB of memory each, charged to the memory budget).
MAX_FILES = 50_000

_MAX_NAME = 255
_MAX_PATH = 1_024
_MAX_METADATA = 1024
# A content type as a header may carry it: type/subtype and optional parameters, no controls.
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(?:\s*;[ -~]*)?")
# An emulator file's download URL, found by its path whatever host the client used.
_BLOB = re.compile(r"/blobs/(file_[0-9a-f]{20})/([A-Za-z0-9_-]{43})/")
_FALLBACK_TYPE = "application/octet-stream"

# The base URL (scheme and host) of the request being handled, so a file an app saves is
# named under the address its client used (tasks inherit it from the request that made them).
_BASE_URL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "inferencesh_local_base_url", default=None
)


def current_base_url() -> contextvars.ContextVar[str | None]:
    """The context variable holding the base URL of the request being handled."""
    return _BASE_URL


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FileError(Exception):
    """A file operation the emulator refused; `status` is the HTTP status it answers with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class UnknownFileError(FileError, LookupError):
    """No emulator file with content has this uri (unknown, deleted, or not uploaded yet)."""

    def __init__(self, detail: str) -> None:
        super().__init__(404, detail)


@attrs.frozen(kw_only=True)
class FileSpec:
    """One file a `POST /files` asks for, validated."""

    filename: str
    content_type: str | None
    size: int | None
    path: str | None
    category: str | None
    metadata: dict[str, Any] | None


@attrs.define(eq=False, kw_only=True)
class StoredFile:
    """One file's record. `size` is the declared size until the content is uploaded."""

    id: str
    token: str
    upload_token: str
    filename: str
    content_type: str | None
    declared_size: int | None
    path: str | None = None
    category: str | None = None
    metadata: dict[str, Any] | None = None
    created_at: str
    updated_at: str
    task_id: str | None = None
    digest: str | None = None  # SHA-256 of the content of a file saved to be reused
    size: int = 0
    uploaded: bool = False
    uploading: bool = False  # a PUT is writing it (not persisted)

    @property
    def cost(self) -> int:
        """What holding the record costs in memory, roughly (charged to the budget). It uses
        only what never changes, so charging and giving back match."""
        text = (self.filename, self.path or "", self.category or "")
        metadata = len(json.dumps(self.metadata)) if self.metadata else 0
        return sum(map(len, text)) + metadata + _MAX_NAME + 16 * OVERHEAD

    @property
    def media_type(self) -> str:
        """The content type to answer with: the one given, else a guess from the name."""
        return self.content_type or mimetypes.guess_type(self.filename)[0] or _FALLBACK_TYPE

    def dto(self, base: str) -> dict[str, Any]:
        """The hosted API's FileDTO, URLs under `base` (`upload_url` only while pending)."""
        upload_url = None
        if not self.uploaded:
            upload_url = f"{base}/uploads/{self.id}/{self.upload_token}"
        return {
            "id": self.id,
            "uri": f"{base}/blobs/{self.id}/{self.token}/{quote(self.filename, safe='')}",
            "upload_url": upload_url,
            "filename": self.filename,
            "content_type": self.media_type,
            "size": self.size if self.uploaded else (self.declared_size or 0),
            "path": self.path,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "category": self.category,
            "metadata": self.metadata if self.metadata is not None else {},
        }

    def record(self) -> dict[str, Any]:
        """What the sidecar keeps."""
        fields = attrs.asdict(self, recurse=False)
        del fields["uploading"]
        return fields

    @classmethod
    def from_record(cls, data: Any) -> StoredFile:
        """A record read back from its sidecar (`ValueError` if it is not one)."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            found = cls(**{key: data[key] for key in _RECORD_KEYS if key in data})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or unexpected field: {exc}") from None
        for name in ("id", "token", "upload_token", "filename", "created_at", "updated_at"):
            if not isinstance(getattr(found, name), str):
                raise ValueError(f"field {name!r} is not a string")
        if not re.fullmatch(r"file_[0-9a-f]{20}", found.id):
            raise ValueError(f"bad file id {found.id!r}")
        if isinstance(found.size, bool) or not isinstance(found.size, int) or found.size < 0:
            raise ValueError("field 'size' is not a size")
        optional: list[tuple[str, Any, type | tuple[type, ...]]] = [
            ("content_type", found.content_type, str),
            ("declared_size", found.declared_size, int),
            ("path", found.path, str),
            ("category", found.category, str),
            ("metadata", found.metadata, dict),
            ("task_id", found.task_id, str),
            ("digest", found.digest, str),
        ]
        for name, value, kind in optional:
            if value is not None and not isinstance(value, kind):
                raise ValueError(f"field {name!r} has the wrong type")
        if not isinstance(found.uploaded, bool):
            raise ValueError("field 'uploaded' is not a boolean")
        return found


_RECORD_KEYS = [a.name for a in attrs.fields(StoredFile) if a.name != "uploading"]


def _safe_name(value: str) -> str:
    """A file name to show and put in a URL: its last path part, printable, not too long."""
    name = value.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    if name in ("", ".", ".."):
        return "file"
    return name[:_MAX_NAME]


def valid_content_type(value: Any) -> str | None:
    """`value` if it is a content type a header may carry, else None."""
    if isinstance(value, str) and len(value) <= _MAX_NAME and _CONTENT_TYPE.fullmatch(value):
        return value
    return None


def parse_file_specs(body: dict[str, Any], *, max_file_bytes: int) -> list[FileSpec]:
    """The files a `POST /files` body asks for; `FileError` (400, 413) naming the field."""
    files = body.get("files")
    if not isinstance(files, list) or not files:
        raise FileError(400, "field 'files': must be a non-empty list of file objects")
    if len(files) > MAX_FILES_PER_REQUEST:
        raise FileError(400, f"field 'files': at most {MAX_FILES_PER_REQUEST} files at once")
    category = body.get("category")
    if category is not None and (not isinstance(category, str) or len(category) > _MAX_NAME):
        raise FileError(400, f"field 'category': must be a string of at most {_MAX_NAME}")
    return [_spec(item, f"files[{i}]", category, max_file_bytes) for i, item in enumerate(files)]


def _spec(item: Any, where: str, category: str | None, max_file_bytes: int) -> FileSpec:
    if not isinstance(item, dict):
        raise FileError(400, f"field '{where}': must be a file object")
    if item.get("uri") not in (None, ""):
        raise FileError(
            400,
            f"field '{where}.uri': the emulator does not fetch files from URLs; leave uri "
            "empty and PUT the content to the upload_url it answers with",
        )
    filename = item.get("filename")
    if filename is not None and not isinstance(filename, str):
        raise FileError(400, f"field '{where}.filename': must be a string")
    content_type = item.get("content_type")
    if content_type is not None and valid_content_type(content_type) is None:
        raise FileError(400, f"field '{where}.content_type': must be a media type (type/subtype)")
    size = item.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise FileError(400, f"field '{where}.size': must be a number of bytes")
    if size is not None and size > max_file_bytes:
        raise FileError(
            413, f"field '{where}.size': {size} bytes is over the limit of {max_file_bytes}"
        )
    path = item.get("path")
    if path is not None and (not isinstance(path, str) or len(path) > _MAX_PATH):
        raise FileError(400, f"field '{where}.path': must be a string of at most {_MAX_PATH}")
    public = item.get("public")
    if public is not None and not isinstance(public, bool):
        raise FileError(400, f"field '{where}.public': must be a boolean")
    metadata = item.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or len(json.dumps(metadata)) > _MAX_METADATA
    ):
        raise FileError(
            400, f"field '{where}.metadata': must be an object of at most {_MAX_METADATA} bytes"
        )
    return FileSpec(
        filename=_safe_name(filename or "file"),
        content_type=content_type,
        size=size,
        path=path,
        category=category,
        metadata=metadata,
    )


class _PartFile:
    """Content being written: `{id}.part`, renamed to `{id}.bin` once complete."""

    def __init__(self, folder: Path, file_id: str) -> None:
        self.part = folder / f"{file_id}.part"
        self.final = folder / f"{file_id}.bin"
        self._out = self.part.open("wb")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._out.write(data)

    def commit(self) -> None:
        self._out.close()
        os.replace(self.part, self.final)

    def discard(self) -> None:
        self._out.close()
        self.part.unlink(missing_ok=True)


class FileStore:
    """Every file by id, its content on disk, and the limits on both (one per emulator).

    Used on the server's loop. `open()` at server start loads what a data folder kept;
    `close()` at cleanup forgets the records (and removes a temporary folder).
    """

    def __init__(
        self,
        hub: ChangeHub,
        budget: MemoryBudget,
        *,
        max_file_bytes: int,
        max_total_bytes: int,
        data_dir: str | None,
        max_pending: int = MAX_PENDING_FILES,
    ) -> None:
        self.hub = hub
        self.budget = budget
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.max_pending = max_pending
        self.used = 0  # bytes of content on disk, uploads in progress included
        #: The base URL of the latest request, for files saved outside of one.
        self.last_base = "http://127.0.0.1"
        self._data_dir = data_dir
        self._folder: Path | None = None
        self._temporary = False
        self._files: dict[str, StoredFile] = {}
        self._pending: OrderedDict[str, None] = OrderedDict()  # oldest first
        self._by_task: dict[str, list[str]] = {}
        self._by_digest: dict[str, str] = {}  # files saved to be reused, by content

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[StoredFile]:
        return iter(list(self._files.values()))

    @property
    def folder(self) -> Path | None:
        """Where content is written (None until a temporary folder is needed)."""
        return self._folder

    @property
    def pending(self) -> int:
        """Files created and not yet uploaded."""
        return len(self._pending)

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Load the files a data folder kept (at server start)."""
        if self._data_dir is None:
            return
        folder = Path(self._data_dir) / "files"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._folder = folder
        self._temporary = False
        for sidecar in sorted(folder.glob("file_*.json")):
            self._load(sidecar)
        for leftover in folder.iterdir():
            file_id, _, suffix = leftover.name.partition(".")
            if suffix in ("part", "json.tmp") or (suffix == "bin" and file_id not in self._files):
                leftover.unlink(missing_ok=True)  # cut by a stop, or a deleted file's content

    def _load(self, sidecar: Path) -> None:
        try:
            record = StoredFile.from_record(json.loads(sidecar.read_text(encoding="utf-8")))
            if record.id != sidecar.stem:
                raise ValueError(f"it holds file {record.id}")
            content = sidecar.with_suffix(".bin")
            if record.uploaded and content.stat().st_size != record.size:
                raise ValueError("its content is missing or has another size")
        except (OSError, ValueError) as exc:
            logger.warning("not reloading file %s from the data folder: %s", sidecar.name, exc)
            sidecar.unlink(missing_ok=True)
            return
        self._add(record, admit=False)
        if record.uploaded:
            self.used += record.size

    def close(self) -> None:
        """Forget every record (at cleanup); a temporary folder is removed with its files."""
        with self.hub.lock:
            for record in self._files.values():
                self.budget.charge(-record.cost)
        self._files.clear()
        self._pending.clear()
        self._by_task.clear()
        self._by_digest.clear()
        self.used = 0
        folder, self._folder = self._folder, None
        if folder is not None and self._temporary:
            shutil.rmtree(folder, ignore_errors=True)
        self._temporary = False

    def _writable_folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="inferencesh-files-"))
            self._temporary = True
        return self._folder

    # -- records ---------------------------------------------------------------------------

    def _admit(self, record: StoredFile) -> None:
        """Room for one more record, or `FileError` (507) / `Overloaded` (429) saying why not."""
        if len(self._files) >= MAX_FILES:
            raise FileError(
                507,
                f"the emulator keeps at most {MAX_FILES} files; delete some "
                "(DELETE /tasks/{id}?files=true)",
            )
        with self.hub.lock:
            self.budget.admit(record.cost, "the new file")

    def _add(self, record: StoredFile, *, admit: bool) -> None:
        if admit:
            self._admit(record)
        with self.hub.lock:
            self.budget.charge(record.cost)
            self._files[record.id] = record
            if not record.uploaded:
                self._pending[record.id] = None
            if record.task_id is not None:
                self._by_task.setdefault(record.task_id, []).append(record.id)
            if record.digest is not None and record.uploaded:
                self._by_digest.setdefault(record.digest, record.id)
        self.hub.notify()

    def _new(self, spec: FileSpec, *, task_id: str | None = None) -> StoredFile:
        now = _now()
        return StoredFile(
            id=f"file_{secrets.token_hex(10)}",
            token=secrets.token_urlsafe(32),
            upload_token=secrets.token_urlsafe(32),
            filename=spec.filename,
            content_type=spec.content_type,
            declared_size=spec.size,
            path=spec.path,
            category=spec.category,
            metadata=spec.metadata,
            created_at=now,
            updated_at=now,
            task_id=task_id,
        )

    def create(self, spec: FileSpec) -> StoredFile:
        """A new file waiting for its content (`Overloaded` when the budget is full)."""
        while len(self._pending) >= self.max_pending:
            idle = next((i for i in self._pending if not self._files[i].uploading), None)
            if idle is None:
                raise Overloaded(
                    f"too many files waiting for their upload ({self.max_pending}); retry"
                )
            self.delete(idle)  # the oldest never-uploaded file makes room
        record = self._new(spec)
        self._add(record, admit=True)
        self._write_sidecar(record)
        return record

    def get(self, file_id: str) -> StoredFile | None:
        """The file with this id, uploaded or not."""
        return self._files.get(file_id)

    def _by_secret(self, file_id: str, token: str, *, upload: bool) -> StoredFile:
        record = self._files.get(file_id)
        secret = None if record is None else record.upload_token if upload else record.token
        if record is None or secret is None or not hmac.compare_digest(secret, token):
            raise UnknownFileError(f"no file at this {'upload ' if upload else ''}URL")
        return record

    def for_download(self, file_id: str, token: str) -> tuple[StoredFile, Path]:
        """The file a download URL names and its content (`UnknownFileError` if none)."""
        record = self._by_secret(file_id, token, upload=False)
        if not record.uploaded or self._folder is None:
            raise UnknownFileError(f"file {file_id} has no content yet")
        return record, self._folder / f"{record.id}.bin"

    def for_upload(self, file_id: str, token: str) -> StoredFile:
        """The file an upload URL names, if it still waits for its content."""
        record = self._by_secret(file_id, token, upload=True)
        if record.uploaded:
            raise FileError(409, f"file {file_id} is already uploaded")
        if record.uploading:
            raise FileError(409, f"file {file_id} is being uploaded by another request")
        return record

    def resolve(self, uri: str) -> StoredFile:
        """The uploaded file a download URL names (`UnknownFileError` if none)."""
        match = _BLOB.search(uri + "/") if isinstance(uri, str) else None
        if match is None:
            raise UnknownFileError(f"{uri!r:.200} is not an emulator file URL")
        return self.for_download(match[1], match[2])[0]

    def path_of(self, uri: str) -> Path:
        """The local path of the uploaded file a download URL names."""
        record = self.resolve(uri)
        assert self._folder is not None
        return self._folder / f"{record.id}.bin"

    def referenced(self, text: str) -> list[StoredFile]:
        """The files whose download URLs appear in `text` (a task's input), in order."""
        found: dict[str, StoredFile] = {}
        for match in _BLOB.finditer(text):
            record = self._files.get(match[1])
            if record is not None and hmac.compare_digest(record.token, match[2]):
                found.setdefault(record.id, record)
        return list(found.values())

    def outputs_of(self, task_id: str) -> list[StoredFile]:
        """The files task `task_id` saved."""
        return [self._files[i] for i in self._by_task.get(task_id, ()) if i in self._files]

    def delete(self, file_id: str) -> bool:
        """Remove a file and its content; False if unknown or being uploaded."""
        record = self._files.get(file_id)
        if record is None or record.uploading:
            return False
        with self.hub.lock:
            del self._files[file_id]
            self._pending.pop(file_id, None)
            if record.task_id is not None:
                ids = self._by_task.get(record.task_id, [])
                if file_id in ids:
                    ids.remove(file_id)
                if not ids:
                    self._by_task.pop(record.task_id, None)
            if record.digest is not None and self._by_digest.get(record.digest) == file_id:
                del self._by_digest[record.digest]
            self.budget.charge(-record.cost)
            if record.uploaded:
                self.used -= record.size
        if self._folder is not None:
            for suffix in (".bin", ".json"):
                (self._folder / f"{file_id}{suffix}").unlink(missing_ok=True)
        self.hub.notify()
        return True

    # -- content ---------------------------------------------------------------------------

    def _reserve(self, size: int) -> None:
        """Count `size` more bytes on disk (negative: given back), within the disk budget."""
        if size > 0 and self.used + size > self.max_total_bytes:
            raise FileError(
                507,
                f"the emulator's file storage is full ({self.max_total_bytes} bytes in all); "
                "delete files (DELETE /tasks/{id}?files=true) or raise max_files_bytes",
            )
        with self.hub.lock:
            self.used += size
        self.hub.notify()

    def _too_big(self, size: int | None) -> FileError:
        body = "the file" if size is None else f"a file of {size} bytes"
        return FileError(413, f"{body} is over the limit of {self.max_file_bytes} bytes")

    async def receive(
        self,
        record: StoredFile,
        chunks: AsyncIterator[bytes],
        *,
        length: int | None,
        content_type: str | None,
    ) -> None:
        """Write an upload's content as it arrives, checking every limit on the way.

        `length` is the request's Content-Length, if any. A failed upload leaves nothing on
        disk and the file still waiting for its content.
        """
        declared = record.declared_size
        if length is not None and length > self.max_file_bytes:
            raise self._too_big(length)
        if length is not None and declared is not None and length != declared:
            raise _mismatch(length, declared)
        reserved = received = 0
        record.uploading = True
        part: _PartFile | None = None
        try:
            expected = length if length is not None else declared
            if expected:
                self._reserve(expected)
                reserved = expected
            part = self._part(record.id)
            async for chunk in chunks:
                received += len(chunk)
                if received > self.max_file_bytes:
                    raise self._too_big(None)
                if declared is not None and received > declared:
                    raise _mismatch(received, declared, more=True)
                if received > reserved:
                    self._reserve(received - reserved)
                    reserved = received
                part.write(chunk)
            if declared is not None and received != declared:
                raise _mismatch(received, declared)
            _disk_errors(part.commit)
        except BaseException:
            self._reserve(-reserved)
            if part is not None:
                part.discard()
            raise
        finally:
            record.uploading = False
        self._reserve(received - reserved)
        if record.content_type is None:
            record.content_type = valid_content_type(content_type)
        self._uploaded(record, received)

    def _part(self, file_id: str) -> _PartFile:
        folder = self._writable_folder()
        return _disk_errors(lambda: _PartFile(folder, file_id))

    def _uploaded(self, record: StoredFile, size: int) -> None:
        with self.hub.lock:
            record.size = size
            record.uploaded = True
            record.updated_at = _now()
            self._pending.pop(record.id, None)
        self._write_sidecar(record)
        self.hub.notify()

    def save(
        self,
        data: bytes,
        *,
        filename: str,
        content_type: str | None,
        task_id: str | None,
        reuse: bool = False,
    ) -> dict[str, Any]:
        """Store `data` as a new, uploaded file (an app's output); return its FileDTO.

        `reuse`: if a file saved with `reuse` holds the same bytes (and name and type), return
        it instead of storing them again.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        if not isinstance(filename, str):
            raise TypeError(f"filename must be a string, got {filename!r:.40}")
        if content_type is not None and valid_content_type(content_type) is None:
            raise ValueError(f"content_type must be a media type, got {content_type!r:.80}")
        size = len(memoryview(data))
        if size > self.max_file_bytes:
            raise self._too_big(size)
        spec = FileSpec(
            filename=_safe_name(filename),
            content_type=content_type,
            size=size,
            path=None,
            category=None,
            metadata=None,
        )
        digest = None
        if reuse:
            hasher = hashlib.sha256(data)
            hasher.update(f"\0{spec.filename}\0{content_type}".encode())
            digest = hasher.hexdigest()
            found = self._files.get(self._by_digest.get(digest, ""))
            if found is not None:
                return found.dto(_BASE_URL.get() or self.last_base)
        record = self._new(spec, task_id=task_id)
        record.digest = digest
        record.size = size
        record.uploaded = True
        self._admit(record)
        self._reserve(size)
        try:
            part = self._part(record.id)
            try:
                part.write(data)
                _disk_errors(part.commit)
            except BaseException:
                part.discard()
                raise
        except BaseException:
            self._reserve(-size)
            raise
        self._add(record, admit=False)
        self._write_sidecar(record)
        return record.dto(_BASE_URL.get() or self.last_base)

    def _write_sidecar(self, record: StoredFile) -> None:
        if self._data_dir is None or self._folder is None:
            return  # nothing outlives a temporary folder
        path = self._folder / f"{record.id}.json"
        temporary = path.with_suffix(".json.tmp")
        text = json.dumps(record.record(), separators=(",", ":"))

        def write() -> None:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(temporary, path)

        _disk_errors(write)


def _mismatch(size: int, declared: int, *, more: bool = False) -> FileError:
    got = f"more than {declared}" if more else str(size)
    return FileError(400, f"the upload has {got} bytes but the file was declared with {declared}")


def _disk_errors(action: Callable[[], _T]) -> _T:
    """Run `action`; a full disk becomes a 507 answer, other OS errors stay bugs."""
    try:
        return action()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FileError(507, f"the emulator's disk is full ({exc.strerror})") from None
        raise
