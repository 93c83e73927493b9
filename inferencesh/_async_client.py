"""`AsyncInference`, the asyncio-native client. Every behaviour of the SDK lives here."""

from __future__ import annotations

import os
import reprlib
from collections.abc import Awaitable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self, overload
from urllib.parse import quote

import attrs

from ._agent import AsyncAgent
from ._converters import TaskEvent, structure_task, valid_task_id
from ._events import TaskUpdate
from ._exceptions import (
    ProtocolError,
    TaskCancelledError,
    TaskFailedError,
    TaskRejectedError,
    UsageError,
)
from ._reader import Codec, StreamReader
from ._retry import RetryPolicy
from ._status import TaskStatus
from ._stream import ItemStream
from ._streaming import StreamingOptions
from ._task_stream import TaskCodec, TaskView, update_of
from ._transport import DEFAULT_BASE_URL, Transport
from ._wire import preview

__all__ = ["DEFAULT_REQUEST_RETRY", "AsyncInference", "TaskStream", "async_inference"]

Params = Mapping[str, Any]

DEFAULT_REQUEST_RETRY = RetryPolicy(max_retries=2, retry_delay=0.5, max_retry_delay=8.0)
"""How REST calls retry unless the client is given another `retry` policy."""


def _resolve_base_url(base_url: str | None) -> str:
    url = base_url or os.environ.get("INFERENCE_BASE_URL") or DEFAULT_BASE_URL
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"base_url must start with http:// or https://, got {url!r}")
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
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("INFERENCE_API_KEY", "")
        self._options = streaming_options or StreamingOptions()
        self._transport = Transport(
            base_url=_resolve_base_url(base_url),
            api_key=key,
            timeout=timeout,
            retry=retry,
            max_connections=max_connections,
            max_body_bytes=self._options.max_event_bytes,
        )

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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
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
    ) -> TaskStream: ...

    @overload
    def run(
        self,
        params: Params,
        *,
        stream: Literal[False] = False,
        wait: bool = True,
        options: StreamingOptions | None = None,
    ) -> Awaitable[TaskUpdate]: ...

    def run(
        self,
        params: Params,
        *,
        stream: bool = False,
        wait: bool = True,
        options: StreamingOptions | None = None,
    ) -> TaskStream | Awaitable[TaskUpdate]:
        """Run an app.

        With `stream=True`, returns a `TaskStream` to iterate with `async for` (no `await`); its
        first update is the task as created. Else returns an awaitable: the completed task's
        final state (raising `TaskFailedError` or `TaskCancelledError` otherwise), or with
        `wait=False` the task as just created.
        """
        if not isinstance(params, Mapping):
            raise UsageError(f"params must be a mapping, got {type(params).__name__}")
        if stream:
            return self._stream(lambda: self._create(params), options)
        if not wait:
            return self._created(params)
        return self._outcome(self._stream(lambda: self._create(params), options))

    async def _create(self, params: Params) -> tuple[TaskCodec, Sequence[TaskEvent]]:
        # Not idempotent: a POST that may have reached the app is never sent twice.
        data = await self._transport.request("POST", "/apps/run", json_body=dict(params))
        task_id = data.get("id") if isinstance(data, Mapping) else None
        if not valid_task_id(task_id):
            raise ProtocolError(
                f"POST /apps/run answered without a usable task id: {preview(data)}"
            )
        assert isinstance(task_id, str)
        event = structure_task(data, task_id)
        return TaskCodec(task_id), [event] if event is not None else []

    async def _created(self, params: Params) -> TaskUpdate:
        codec, events = await self._create(params)
        return update_of(events[0] if events else None, codec.task_id)

    def _stream(self, start: Any, options: StreamingOptions | None) -> TaskStream:
        reader: StreamReader[TaskEvent] = StreamReader(
            self._transport, options or self._options, start
        )
        return TaskStream(reader, _task_view)

    async def get_task(self, task_id: str) -> TaskUpdate:
        """The task's current state (its `logs` are all lines so far)."""
        data = await self._transport.request("GET", f"/tasks/{_quote_id(task_id)}")
        return update_of(structure_task(_require_object(data), task_id), task_id)

    async def cancel_task(self, task_id: str) -> None:
        """Ask the server to cancel the task; a finished task is left as it is."""
        path = f"/tasks/{_quote_id(task_id)}/cancel"
        await self._transport.request("POST", path, idempotent=True)

    def stream_task(self, task_id: str, options: StreamingOptions | None = None) -> TaskStream:
        """Attach to an existing task's stream; the first update is its current state."""
        _quote_id(task_id)

        async def start() -> tuple[TaskCodec, Sequence[TaskEvent]]:
            return TaskCodec(task_id), ()

        return self._stream(start, options)

    def agent(
        self, ref: str, *, chat_id: str | None = None, options: StreamingOptions | None = None
    ) -> AsyncAgent:
        """A conversation with the agent `ref` (e.g. "my-org/assistant@latest").

        Pass `chat_id` to continue an existing chat; otherwise the first message starts one.
        """
        return AsyncAgent(self._transport, ref, chat_id=chat_id, options=options or self._options)

    async def wait_for_completion(self, task_id: str, timeout: float | None = None) -> TaskUpdate:
        """Wait for the task to end and return its final state, with every log line.

        Raises `TaskFailedError` / `TaskCancelledError` when it did not complete, and
        `TaskTimeoutError` when `timeout` seconds pass first (the task keeps running).
        """
        if timeout is not None:
            options = attrs.evolve(self._options, total_timeout=timeout)
        else:
            options = self._options
        return await self._outcome(self.stream_task(task_id, options))

    async def _outcome(self, stream: TaskStream) -> TaskUpdate:
        logs: list[str] = []
        final: TaskUpdate | None = None
        async with stream as updates:
            async for update in updates:
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


def _quote_id(task_id: str) -> str:
    if not valid_task_id(task_id):
        raise UsageError(f"task_id must be a non-empty printable string, got {task_id!r:.80}")
    return quote(task_id, safe="")


async_inference = AsyncInference
"""Create an `AsyncInference` client (the seed document's spelling of the constructor)."""
