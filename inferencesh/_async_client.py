"""`AsyncInference`, the asyncio-native client. Every behaviour of the SDK lives here."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import reprlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self, overload

import attrs

from ._agent import AsyncAgent
from ._batch import AsyncBatch, BatchItem, OnSubmit, OnUpdate
from ._converters import TaskEvent, structure_task
from ._defaults import (
    USE_CLIENT_DEFAULT,
    Timeout,
    call_timeout,
    check_callback,
    count,
    path_id,
    seconds,
    shown_arg,
)
from ._events import TaskUpdate
from ._exceptions import (
    InferenceshError,
    ProtocolError,
    TaskCancelledError,
    TaskFailedError,
    TaskRejectedError,
    UsageError,
)
from ._files import File, ProgressCallback, download, upload, upload_inputs
from ._reader import Codec, StreamReader
from ._retry import RetryPolicy
from ._sessions import AsyncSession, SessionInfo, session_info, session_path
from ._status import TaskStatus
from ._stream import ItemStream
from ._streaming import StreamingOptions, stream_options, timed
from ._task_stream import TaskCodec, TaskView, update_of
from ._transport import DEFAULT_BASE_URL, Transport, without_userinfo
from ._wire import preview, usable_id

__all__ = ["DEFAULT_REQUEST_RETRY", "AsyncInference", "TaskStream", "async_inference"]

Params = Mapping[str, Any]

logger = logging.getLogger("inferencesh.client")

DEFAULT_REQUEST_RETRY = RetryPolicy(max_retries=2, retry_delay=0.5, max_retry_delay=8.0)
"""How REST calls retry unless the client is given another `retry` policy."""


def _resolve_base_url(base_url: str | None) -> str:
    if base_url is not None and not isinstance(base_url, str):
        raise UsageError(f"base_url must be a URL string or None, got {type(base_url).__name__}")
    url = base_url or os.environ.get("INFERENCE_BASE_URL") or DEFAULT_BASE_URL
    if not url.startswith(("http://", "https://")):
        raise UsageError(
            f"base_url must start with http:// or https://, got {without_userinfo(url)!r}"
        )
    return url


class TaskStream(ItemStream[TaskUpdate]):
    """A task's live updates: iterate with `async for`; ends after the terminal update.

    Iterating yields `TaskUpdate`s (completed, failed or cancelled is the last one; a failed
    task does not raise here). Use `async with` or `aclose()` to release the connection early;
    breaking out of the loop also releases it as soon as the stream object is dropped.
    """

    @property
    def task_id(self) -> str | None:
        """The id of the task, once known (after `POST /apps/run` answered)."""
        codec = self.reader.codec
        return codec.task_id if isinstance(codec, TaskCodec) else None


def _task_view(codec: Codec[Any]) -> TaskView:
    assert isinstance(codec, TaskCodec)
    return TaskView(codec.task_id)


class AsyncInference:
    """Client for the inference.sh API: run apps and stream their tasks.

    The key falls back to `INFERENCE_API_KEY`, the base URL to `INFERENCE_BASE_URL` and then to
    the hosted API. `timeout` bounds each REST call, its retries included; `retry` says when
    and how REST calls are retried (streams retry as their `StreamingOptions` say). One
    connection pool per client, opened on first use inside the running event loop;
    `max_connections=None` leaves it unbounded, so fan-outs of thousands of streams are not
    throttled. Close it with `async with` or `aclose()`; a client left open inside
    `asyncio.run(...)` is closed when that loop shuts down, without warnings.

    What the server says alongside an answer (the envelope's `messages`) is logged on the
    `inferencesh.server` logger and given to `on_messages`, if set, as the list it sent.

    Every request (API calls, streams, file uploads and downloads) goes through `proxy`
    (`"http://[user:password@]host:port"`) when given; otherwise, unless `trust_env=False`,
    through the proxy `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` name for its URL (read when
    the client is created), except for the hosts `NO_PROXY` lists. `default_headers` go with
    every API request, never to presigned storage URLs; they cannot set `Authorization`.

    Each call's own `timeout=` (seconds, or None for no limit) replaces the client's for that
    call: a REST call's `timeout`, a stream's (or a wait's) `total_timeout`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | None = 30.0,
        max_connections: int | None = None,
        streaming_options: StreamingOptions | None = None,
        retry: RetryPolicy = DEFAULT_REQUEST_RETRY,
        on_messages: Callable[[list[Any]], Any] | None = None,
        proxy: str | None = None,
        trust_env: bool = True,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("INFERENCE_API_KEY", "")
        self._options = stream_options(streaming_options, StreamingOptions(), "streaming_options")
        if not isinstance(retry, RetryPolicy):
            raise UsageError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        count(max_connections, "max_connections", least=1, optional=True)
        check_callback(on_messages, "on_messages")
        self._transport = Transport(
            base_url=_resolve_base_url(base_url),
            api_key=key,
            timeout=seconds(timeout, "timeout"),
            retry=retry,
            max_connections=max_connections,
            max_body_bytes=self._options.max_event_bytes,
            on_messages=on_messages,
            proxy=proxy,
            trust_env=trust_env,
            default_headers=default_headers,
        )
        # What must clean up on the server if it is left open (batches, `cancel_on_close`
        # streams): `aclose` closes them first, while the connections are still open.
        # Added to from any thread (the blocking client makes streams in its caller's).
        self._leavers: weakref.WeakSet[AsyncBatch | StreamReader[Any]] = weakref.WeakSet()
        self._leavers_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<AsyncInference base_url={self.base_url!r}>"

    @property
    def base_url(self) -> str:
        """The API's base URL this client talks to."""
        return self._transport.base_url

    @property
    def streaming_options(self) -> StreamingOptions:
        """The options streams use when a call passes none."""
        return self._options

    @property
    def timeout(self) -> float | None:
        """Seconds a REST call may take, its retries included (None: no limit)."""
        return self._transport.timeout

    @property
    def _cleanup_timeout(self) -> float:
        """Seconds clean-up work may take (see `Transport.cleanup_timeout`)."""
        return self._transport.cleanup_timeout

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _open_leavers(self) -> list[AsyncBatch | StreamReader[Any]]:
        """The batches and `cancel_on_close` streams `aclose` will close, held: a caller that
        closes from another thread keeps them alive until then (their own threads may drop
        them as soon as they see the client closing)."""
        with self._leavers_lock:
            return list(self._leavers)

    async def aclose(self) -> None:
        """Close the connection pool. The client cannot be used afterwards. Batches and
        `cancel_on_close` streams still open are closed first (their unfinished tasks are
        cancelled on the server, as leaving them early does)."""
        if not self._transport.closed:
            with self._leavers_lock:
                leavers = list(self._leavers)
                self._leavers.clear()
            for failure in await asyncio.gather(
                *(leaver.aclose() for leaver in leavers), return_exceptions=True
            ):
                if isinstance(failure, Exception):  # closing anyway: say it, do not mask
                    logger.warning("closing a stream or batch of the client failed: %r", failure)
        await self._transport.aclose()

    @property
    def closed(self) -> bool:
        """Whether `aclose()` was called."""
        return self._transport.closed

    # -- operations ---------------------------------------------------------------------------

    @overload
    def run(
        self,
        params: Params,
        *,
        stream: Literal[True],
        wait: bool = True,
        options: StreamingOptions | None = None,
        cancel_on_close: bool = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> TaskStream: ...

    @overload
    def run(
        self,
        params: Params,
        *,
        stream: Literal[False] = False,
        wait: bool = True,
        options: StreamingOptions | None = None,
        cancel_on_close: bool = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> Awaitable[TaskUpdate]: ...

    @overload
    def run(
        self,
        params: Params,
        *,
        stream: bool,
        wait: bool = True,
        options: StreamingOptions | None = None,
        cancel_on_close: bool = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> TaskStream | Awaitable[TaskUpdate]: ...

    def run(
        self,
        params: Params,
        *,
        stream: bool = False,
        wait: bool = True,
        options: StreamingOptions | None = None,
        cancel_on_close: bool = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> TaskStream | Awaitable[TaskUpdate]:
        """Run an app.

        With `stream=True`, returns a `TaskStream` to iterate with `async for` (no `await`); its
        first update is the task as created. Else returns an awaitable: the completed task's
        final state (raising `TaskFailedError` or `TaskCancelledError` otherwise), or with
        `wait=False` the task as just created. With `cancel_on_close`, leaving the stream (or
        the wait) before the task ended cancels the task on the server too.

        `timeout` bounds the stream or the wait from the start (`TaskTimeoutError`; it
        replaces the options' `total_timeout`), or with `wait=False` the requests that create
        the task (`RequestTimeoutError`; it replaces the client's `timeout`).
        """
        if not isinstance(params, Mapping):
            raise UsageError(f"params must be a mapping, got {type(params).__name__}")
        if not stream and not wait:
            call_timeout(timeout, None)  # a wrong value is said now, not when awaited
            return self._created(params, timeout)
        updates = self._stream(
            lambda: self._create(params), self._timed(options, timeout), cancel_on_close
        )
        return updates if stream else self._outcome(updates)

    def _timed(self, options: StreamingOptions | None, timeout: Timeout) -> StreamingOptions:
        """The options of a stream: `options` (else the client's), with the call's `timeout`
        as their `total_timeout` if it gave one."""
        return timed(stream_options(options, self._options), timeout)

    async def _create(
        self, params: Params, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> tuple[TaskCodec, Sequence[TaskEvent]]:
        body = dict(params)
        if "input" in body:

            async def upload_input(value: Any) -> File:
                return await upload(
                    self._transport, value, filename=None, content_type=None, progress=None,
                    options=self._options, timeout=timeout,
                )  # fmt: skip

            body["input"] = await upload_inputs(body["input"], upload_input)
        # Not idempotent: a POST that may have reached the app is never sent twice.
        data = await self._transport.request("POST", "/apps/run", json_body=body, timeout=timeout)
        task_id = data.get("id") if isinstance(data, Mapping) else None
        if not usable_id(task_id):
            raise ProtocolError(
                f"POST /apps/run answered without a usable task id: {preview(data)}"
            )
        event = structure_task(data, task_id)
        return TaskCodec(task_id), [event] if event is not None else []

    async def _created(self, params: Params, timeout: Timeout) -> TaskUpdate:
        codec, events = await self._create(params, timeout)
        return update_of(events[0] if events else None, codec.task_id)

    def _stream(
        self, start: Any, options: StreamingOptions, cancel_on_close: bool = False
    ) -> TaskStream:
        reader: StreamReader[TaskEvent] = StreamReader(
            self._transport,
            options,
            start,
            on_abandon=self._abandoned if cancel_on_close else None,
        )
        if cancel_on_close:
            with self._leavers_lock:
                self._leavers.add(reader)  # the reader: a blocking stream keeps only it
        return TaskStream(reader, _task_view)

    async def _abandoned(self, codec: Codec[Any]) -> None:
        """Cancel the task of a stream left before the task ended (when asked to)."""
        assert isinstance(codec, TaskCodec)
        try:
            await self.cancel_task(codec.task_id)
        except InferenceshError as exc:  # the caller is leaving anyway: say it, do not mask
            logger.warning("could not cancel task %s on leaving: %s", codec.task_id, exc)

    def run_many(
        self,
        configs: Iterable[Params | BatchItem],
        *,
        concurrency: int = 8,
        fail_fast: bool = False,
        cancel_unfinished: bool = True,
        on_update: OnUpdate | None = None,
        on_submit: OnSubmit | None = None,
        options: StreamingOptions | None = None,
        total: int | None = None,
    ) -> AsyncBatch:
        """Run many apps, at most `concurrency` at a time; iterate the result (`async for`)
        to get each `TaskOutcome` as its task ends.

        `configs` is consumed lazily (a generator is fine). By default every task runs to its
        end and failures are outcomes; with `fail_fast` the first failure is raised and the
        others are stopped. `await batch.results()` gives every outcome in input order.
        `on_update(index, update)` sees each task's live updates; `on_submit(index, config)`
        runs just before a task is created. Leaving early (break, an exception, Ctrl-C,
        fail-fast) stops everything in flight and, unless `cancel_unfinished=False`, cancels
        those tasks on the server. `batch.progress` is a live tally (`total` defaults to
        `len(configs)` when it has one).
        """
        batch = AsyncBatch(
            self, configs, concurrency=concurrency, fail_fast=fail_fast,
            cancel_unfinished=cancel_unfinished, on_update=on_update, on_submit=on_submit,
            options=options, total=total,
        )  # fmt: skip
        with self._leavers_lock:
            self._leavers.add(batch)
        return batch

    async def get_task(self, task_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> TaskUpdate:
        """The task's current state (its `logs` are all lines so far)."""
        path = f"/tasks/{path_id(task_id, 'task_id')}"
        data = await self._transport.request("GET", path, timeout=timeout)
        return update_of(structure_task(_require_object(data), task_id), task_id)

    async def cancel_task(self, task_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Ask the server to cancel the task; a finished task is left as it is."""
        path = f"/tasks/{path_id(task_id, 'task_id')}/cancel"
        await self._transport.request("POST", path, idempotent=True, timeout=timeout)

    async def cancel(self, task_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """`cancel_task` under the official client's name."""
        await self.cancel_task(task_id, timeout=timeout)

    async def delete_task(
        self, task_id: str, *, files: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> None:
        """Delete a task; with `files=True` also the files it used and made."""
        path = f"/tasks/{path_id(task_id, 'task_id')}" + ("?files=true" if files else "")
        await self._transport.request("DELETE", path, timeout=timeout)

    async def task_files(
        self,
        task_id: str,
        *,
        role: Literal["input", "output"] | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> list[File]:
        """The files a task used (`role="input"`) and made (`"output"`), or both."""
        if role not in (None, "input", "output"):
            raise UsageError(f'role must be None, "input" or "output", got {shown_arg(role)}')
        path = f"/tasks/{path_id(task_id, 'task_id')}/files" + (f"?role={role}" if role else "")
        data = await self._transport.request("GET", path, timeout=timeout)
        if data is None:
            return []
        if not isinstance(data, list):
            raise ProtocolError(f"GET {path} answered {preview(data)}, not a list of files")
        return [File.from_wire(item) for item in data if isinstance(item, Mapping)]

    def stream_task(
        self,
        task_id: str,
        options: StreamingOptions | None = None,
        *,
        cancel_on_close: bool = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> TaskStream:
        """Attach to an existing task's stream; the first update is its current state.
        `timeout` bounds the whole stream (it replaces the options' `total_timeout`)."""
        path_id(task_id, "task_id")

        async def start() -> tuple[TaskCodec, Sequence[TaskEvent]]:
            return TaskCodec(task_id), ()

        return self._stream(start, self._timed(options, timeout), cancel_on_close)

    async def upload_file(
        self,
        source: str | os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        progress: ProgressCallback | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> File:
        """Upload a file and return it; pass the `File` (or its `uri`) in an app's input.

        `source` is a path (a `str` is a path, or a `data:` URI), `bytes`, or a binary file
        object; the content streams from disk in chunks. The type comes from `content_type`,
        the data URI, or the file name. `progress` is called with a `TransferProgress` as
        bytes go out (a coroutine function is awaited). `timeout` replaces the client's for
        the request that creates the file; sending its bytes is bounded by the options'
        `idle_timeout` (no progress), whatever their size.
        """
        return await upload(
            self._transport, source, filename=filename, content_type=content_type,
            progress=progress, options=self._options, timeout=timeout,
        )  # fmt: skip

    async def download(
        self,
        file_or_uri: File | str,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> Path:
        """Save a file (a `File` from an output, or its URI) at `dest`, a file path or a
        folder to save it in by its name; return the path written.

        Written to a temporary file and renamed when complete and of the announced size; a
        dropped connection resumes where it stopped (`Range`). Each read is bounded by the
        options' `idle_timeout`; `timeout` bounds the whole download, resumes included
        (`RequestTimeoutError`), and defaults to the options' `total_timeout`.
        """
        return await download(
            self._transport, file_or_uri, dest, progress=progress,
            options=timed(self._options, timeout),
        )  # fmt: skip

    def agent(
        self, ref: str, *, chat_id: str | None = None, options: StreamingOptions | None = None
    ) -> AsyncAgent:
        """A conversation with the agent `ref` (e.g. "my-org/assistant@latest").

        Pass `chat_id` to continue an existing chat; otherwise the first message starts one.
        """
        return AsyncAgent(
            self._transport, ref, chat_id=chat_id, options=stream_options(options, self._options)
        )

    def session(
        self, app: str, *, idle_timeout: int | None = None, keepalive: bool = True
    ) -> AsyncSession:
        """A session of `app` (a warm worker kept across calls); use `async with`.

        `idle_timeout` (whole seconds) asks the server to keep it that long between calls;
        with `keepalive` (the default) it is kept alive while the block runs.
        """
        return AsyncSession(
            self, self._transport, app, idle_timeout=idle_timeout, keepalive=keepalive
        )

    async def get_session(
        self, session_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> SessionInfo:
        """A session as the server sees it (`SessionNotFoundError` if it knows none)."""
        path = session_path(session_id)
        return session_info(await self._transport.request("GET", path, timeout=timeout))

    async def list_sessions(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> list[SessionInfo]:
        """Your sessions, as the server lists them."""
        data = await self._transport.request("GET", "/sessions", timeout=timeout)
        if data is None:
            return []
        if not isinstance(data, list):
            raise ProtocolError(f"GET /sessions answered {preview(data)}, not a list")
        return [session_info(item) for item in data]

    async def wait_for_completion(
        self, task_id: str, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> TaskUpdate:
        """Wait for the task to end and return its final state, with every log line.

        Raises `TaskFailedError` / `TaskCancelledError` when it did not complete, and
        `TaskTimeoutError` when `timeout` seconds pass first (the task keeps running). Without
        a `timeout`, the client's `streaming_options.total_timeout` applies; None: no limit.
        """
        return await self._outcome(self.stream_task(task_id, timeout=timeout))

    async def _outcome(
        self, stream: TaskStream, on_update: Callable[[TaskUpdate], Any] | None = None
    ) -> TaskUpdate:
        """The final state of a streamed task, with every log line; raises as
        `raise_for_outcome` does. `on_update` sees each update on the way."""
        logs: list[str] = []
        final: TaskUpdate | None = None
        async with stream as updates:
            async for update in updates:
                if on_update is not None:
                    result = on_update(update)
                    if inspect.isawaitable(result):
                        await result
                logs.extend(update.logs)
                final = update
        if final is None or not final.status.is_terminal:
            raise ProtocolError(f"the stream of task {stream.task_id} ended before the task did")
        return raise_for_outcome(attrs.evolve(final, logs=tuple(logs)))


def raise_for_outcome(task: TaskUpdate) -> TaskUpdate:
    """Return a completed task; raise the matching TaskError for any other terminal status."""
    status = task.status
    if status is TaskStatus.COMPLETED:
        return task
    error = task.error
    detail = f": {error if isinstance(error, str) else reprlib.repr(error)}" if error else ""
    if status is TaskStatus.CANCELLED:
        raise TaskCancelledError(f"task {task.id} was cancelled", task)
    if status is TaskStatus.REJECTED:
        raise TaskRejectedError(f"task {task.id} was rejected{detail}", task)
    raise TaskFailedError(f"task {task.id} failed{detail}", task)


def _require_object(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ProtocolError(f"expected a task object, got {preview(data)}")
    return data


async_inference = AsyncInference
"""Create an `AsyncInference` client (the seed document's spelling of the constructor)."""
