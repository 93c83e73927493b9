"""`AsyncInference`, the asyncio-native client. Every behaviour of the SDK lives here."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Awaitable, Mapping
from contextlib import aclosing
from types import TracebackType
from typing import Any, Literal, Self, overload
from urllib.parse import quote

import attrs

from ._agent import AsyncAgent
from ._converters import structure_task
from ._events import TaskUpdate
from ._exceptions import (
    ProtocolError,
    TaskCancelledError,
    TaskFailedError,
    TaskRejectedError,
    TaskTimeoutError,
    UsageError,
)
from ._resumable import Frames, ItemStream
from ._status import TaskStatus
from ._streaming import StreamingOptions
from ._task_stream import TaskTracker, stream_task_updates
from ._transport import DEFAULT_BASE_URL, Transport

__all__ = ["AsyncInference", "TaskStream", "async_inference"]

Params = Mapping[str, Any]


def _resolve_settings(api_key: str | None, base_url: str | None) -> tuple[str, str]:
    key = api_key if api_key is not None else os.environ.get("INFERENCE_API_KEY")
    if not key:
        raise UsageError(
            "no API key: pass api_key=... or set the INFERENCE_API_KEY environment variable"
        )
    url = base_url or os.environ.get("INFERENCE_BASE_URL") or DEFAULT_BASE_URL
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"base_url must start with http:// or https://, got {url!r}")
    return key, url


class TaskStream(ItemStream[TaskUpdate]):
    """A task's live updates: iterate with `async for`; ends after the terminal update.

    Iterating yields `TaskUpdate`s (completed, failed or cancelled is the last one; a failed
    task does not raise here). Use `async with` or `aclose()` to release the connection early;
    breaking out of the loop also releases it as soon as the stream object is dropped.
    """

    @property
    def task_id(self) -> str | None:
        """The id of the task, once its first update has been handed out."""
        tracker = self.items().tracker
        return tracker.task_id if isinstance(tracker, TaskTracker) and tracker.delivered else None


class AsyncInference:
    """Client for the inference.sh API: run apps and stream their tasks.

    The key falls back to `INFERENCE_API_KEY`, the base URL to `INFERENCE_BASE_URL` and then to
    the hosted API. One connection pool per client, opened on first use inside the running
    event loop; `max_connections=None` leaves it unbounded, so fan-outs of thousands of streams
    are not throttled. Close it with `async with` or `aclose()`; a client left open inside
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
        max_retries: int = 2,
    ) -> None:
        key, url = _resolve_settings(api_key, base_url)
        self._transport = Transport(
            base_url=url, api_key=key, request_timeout=timeout, max_connections=max_connections
        )
        self._options = streaming_options or StreamingOptions()
        self._max_retries = max_retries

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

    async def _request(self, method: str, path: str, json_body: Any = None) -> Any:
        return await self._transport.request(
            method, path, json_body=json_body, retries=self._max_retries
        )

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

        With `stream=True`, returns a `TaskStream` to iterate with `async for` (no `await`). Else
        returns an awaitable: the completed task's final state (raising `TaskFailedError` or
        `TaskCancelledError` otherwise), or with `wait=False` the task as just created.
        """
        if stream:
            return TaskStream(self._run_stream(params, options))
        if not wait:
            return self._create(params)
        return self._run_and_wait(params, options)

    async def _create(self, params: Params) -> TaskUpdate:
        if not isinstance(params, Mapping):
            raise UsageError(f"params must be a mapping, got {type(params).__name__}")
        data = await self._request("POST", "/apps/run", dict(params))
        return structure_task(_require_task(data)).update

    async def _run_stream(
        self, params: Params, options: StreamingOptions | None
    ) -> AsyncGenerator[Frames[TaskUpdate], None]:
        if not isinstance(params, Mapping):
            raise UsageError(f"params must be a mapping, got {type(params).__name__}")
        created = _require_task(await self._request("POST", "/apps/run", dict(params)))
        stream = stream_task_updates(
            self._transport, created["id"], options or self._options, seed=created
        )
        async with aclosing(stream) as frames:
            async for batch in frames:
                yield batch

    async def _run_and_wait(self, params: Params, options: StreamingOptions | None) -> TaskUpdate:
        created = await self._create(params)
        return await self._wait(created.id, None, options)

    async def get_task(self, task_id: str) -> TaskUpdate:
        """The task's current state (its `logs` are all lines so far)."""
        data = await self._request("GET", f"/tasks/{_quote_id(task_id)}")
        return structure_task(_require_task(data), task_id=task_id).update

    async def cancel_task(self, task_id: str) -> None:
        """Ask the server to cancel the task; a finished task is left as it is."""
        await self._request("POST", f"/tasks/{_quote_id(task_id)}/cancel")

    def stream_task(self, task_id: str, options: StreamingOptions | None = None) -> TaskStream:
        """Attach to an existing task's stream; the first update is its current state."""
        _quote_id(task_id)
        return TaskStream(stream_task_updates(self._transport, task_id, options or self._options))

    def agent(
        self, ref: str, *, chat_id: str | None = None, options: StreamingOptions | None = None
    ) -> AsyncAgent:
        """A conversation with the agent `ref` (e.g. "my-org/assistant@latest").

        Pass `chat_id` to continue an existing chat; otherwise the first message starts one.
        """
        return AsyncAgent(self, ref, chat_id=chat_id, options=options)

    async def wait_for_completion(self, task_id: str, timeout: float | None = None) -> TaskUpdate:
        """Wait for the task to end and return its final state, with every log line.

        Raises `TaskFailedError` / `TaskCancelledError` when it did not complete, and
        `TaskTimeoutError` when `timeout` seconds pass first (the task keeps running).
        """
        return await self._wait(task_id, timeout, None)

    async def _wait(
        self, task_id: str, timeout: float | None, options: StreamingOptions | None
    ) -> TaskUpdate:
        logs: list[str] = []
        final: TaskUpdate | None = None
        try:
            async with asyncio.timeout(timeout):
                async with self.stream_task(task_id, options) as updates:
                    async for update in updates:
                        logs.extend(update.logs)
                        final = update
        except TimeoutError as exc:
            raise TaskTimeoutError(
                f"task {task_id} did not finish within {timeout} seconds"
            ) from exc
        if final is None or not final.status.is_terminal:
            raise ProtocolError(f"the stream of task {task_id} ended without a terminal status")
        return raise_for_outcome(attrs.evolve(final, logs=tuple(logs)))


def raise_for_outcome(task: TaskUpdate) -> TaskUpdate:
    """Return a completed task; raise the matching TaskError for any other terminal status."""
    status = task.status
    if status is TaskStatus.COMPLETED:
        return task
    detail = f": {task.error}" if task.error else ""
    if status is TaskStatus.CANCELLED:
        raise TaskCancelledError(f"task {task.id} was cancelled", task)
    if status is TaskStatus.REJECTED:
        raise TaskRejectedError(f"task {task.id} was rejected{detail}", task)
    raise TaskFailedError(f"task {task.id} failed{detail}", task)


def _require_task(data: Any) -> dict[str, Any]:
    if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
        raise ProtocolError(f"expected a task object with an 'id', got {data!r:.120}")
    return dict(data)


def _quote_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not task_id:
        raise UsageError(f"task_id must be a non-empty string, got {task_id!r}")
    return quote(task_id, safe="")


async_inference = AsyncInference
"""Create an `AsyncInference` client (the seed document's spelling of the constructor)."""
