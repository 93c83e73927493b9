"""`Inference`, the blocking client: the async core run on a background event-loop thread.

No protocol logic lives here. Each call hands an `AsyncInference` coroutine to the client's own
event loop (an anyio blocking portal on a daemon thread) and waits for it. A stream builds its
items here, in the consumer's thread, with the same `StreamItems` the async client uses, while
the loop thread reads the next network read's raw payloads: never more than one read ahead, so
a slow consumer slows the reader down instead of growing memory. Leaving a call by any
exception, KeyboardInterrupt included, cancels the work on the loop thread.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._agent import (
    AgentEvent,
    AsyncAgent,
    ChatMessage,
    MessageCallback,
    ToolCallCallback,
    dispatch,
    require_final,
)
from ._async_client import AsyncInference, Params
from ._events import TaskUpdate
from ._exceptions import ToolCallError, UsageError
from ._streaming import StreamingOptions

if TYPE_CHECKING:  # the stream items' type only; the shim drives them, it holds no logic
    from ._resumable import Frames, StreamItems

__all__ = ["Agent", "Inference", "SyncStream", "inference"]

T = TypeVar("T")

_live_clients: weakref.WeakSet[Inference] = weakref.WeakSet()
# Objects that belonged to a parent process's event loop. A forked child keeps them alive but
# never touches them: finalizing them would warn about sessions the child cannot close.
_orphans: list[object] = []


class SyncStream(Iterator[T]):
    """A blocking iterator over an async stream that runs on the client's loop thread.

    Leaving the loop early (`break`, an exception, Ctrl-C) closes the connection, because the
    `for` loop drops the iterator and its clean-up runs; so do `close()` and the `with` block.
    """

    def __init__(self, client: Inference, make_items: Callable[[], StreamItems[T]]) -> None:
        # The generator must not refer back to this object: a cycle would keep the connection
        # open after `break` until the cyclic garbage collector happened to run.
        self._gen = _iterate(client, make_items)

    def __iter__(self) -> Iterator[T]:
        return self._gen

    def __next__(self) -> T:
        return next(self._gen)

    def close(self) -> None:
        """Stop iterating and close the connection now."""
        self._gen.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _iterate(
    client: Inference, make_items: Callable[[], StreamItems[T]]
) -> Generator[T, None, None]:
    items = make_items()
    ahead: Future[Frames[T] | None] | None = None
    try:
        ahead = client._start(items.fetch)
        while True:
            frames = client._wait(ahead if ahead is not None else client._start(items.fetch))
            if frames is None:
                return
            items.load(frames)
            # Read the next frames on the loop while these are absorbed here, unless the
            # stream's next step depends on them.
            ahead = None if frames.sync else client._start(items.fetch)
            finished = False
            while (item := items.take()) is not None:
                if items.closing:
                    client._call(items.aclose)  # release the connection before the last items
                    finished = True
                yield item
            if finished:
                return
    finally:
        if ahead is not None:
            ahead.cancel()  # a read nobody wants any more; `aclose` waits for it to end
        client._call(items.aclose, closing=True)


class Inference:
    """Blocking client for the inference.sh API, with the same operations as `AsyncInference`.

    The work runs on a background event loop owned by this client (a daemon thread started on
    first use), so it works from plain scripts, from several threads at once, and from inside
    a running event loop (Jupyter, async web handlers). `with` or `close()` stops the loop.
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
        def make() -> AsyncInference:
            return AsyncInference(
                api_key,
                base_url=base_url,
                timeout=timeout,
                max_connections=max_connections,
                streaming_options=streaming_options,
                max_retries=max_retries,
            )

        self._make_async = make
        self._async = make()
        self._lock = threading.Lock()
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._closed = False
        _live_clients.add(self)

    def __repr__(self) -> str:
        return f"<Inference base_url={self.base_url!r}>"

    @property
    def base_url(self) -> str:
        """The API's base URL this client talks to."""
        return self._async.base_url

    @property
    def streaming_options(self) -> StreamingOptions:
        """The options streams use when a call passes none."""
        return self._async.streaming_options

    # -- the loop thread ----------------------------------------------------------------------

    def _get_portal(self) -> BlockingPortal:
        with self._lock:
            if self._closed:
                raise UsageError("the client is closed; create a new one")
            if self._portal is None:
                cm = start_blocking_portal("asyncio", name="inferencesh-loop")
                self._portal = cm.__enter__()
                self._portal_cm = cm
            return self._portal

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, closing: bool = False) -> T:
        if closing:
            portal = self._portal
            if portal is None:
                return None  # type: ignore[return-value]
        else:
            portal = self._get_portal()
        return self._wait(portal.start_task_soon(fn, *args))

    def _start(self, fn: Callable[..., Awaitable[T]], *args: Any) -> Future[T]:
        return self._get_portal().start_task_soon(fn, *args)

    @staticmethod
    def _wait(future: Future[T]) -> T:
        try:
            return future.result()
        except BaseException:
            # Ctrl-C or any other exit while waiting: stop the work on the loop thread too.
            future.cancel()
            raise

    def close(self) -> None:
        """Close the connection pool and stop the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            portal, cm = self._portal, self._portal_cm
            self._portal = self._portal_cm = None
        if portal is None or cm is None:
            return
        try:
            portal.call(self._async.aclose)
            # Cancel anything still running on the loop: a call interrupted by Ctrl-C at the
            # moment it was handed over may have left a task behind that nobody awaits.
            portal.call(portal.stop, True)
        finally:
            cm.__exit__(None, None, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        # The loop thread does not exist in the child; start afresh on first use.
        _orphans.extend([self._async, self._portal, self._portal_cm])
        self._lock = threading.Lock()
        self._portal = self._portal_cm = None
        self._async = self._make_async()

    # -- operations ---------------------------------------------------------------------------

    @overload
    def run(
        self,
        params: Params,
        *,
        stream: Literal[True],
        wait: bool = True,
        options: StreamingOptions | None = None,
    ) -> SyncStream[TaskUpdate]: ...

    @overload
    def run(
        self,
        params: Params,
        *,
        stream: Literal[False] = False,
        wait: bool = True,
        options: StreamingOptions | None = None,
    ) -> TaskUpdate: ...

    def run(
        self,
        params: Params,
        *,
        stream: bool = False,
        wait: bool = True,
        options: StreamingOptions | None = None,
    ) -> SyncStream[TaskUpdate] | TaskUpdate:
        """Run an app; see `AsyncInference.run`. With `stream=True`, returns an iterator."""
        if stream:
            return SyncStream(
                self, lambda: self._async.run(params, stream=True, options=options).items()
            )
        return self._call(self._run, params, wait, options)

    async def _run(
        self, params: Params, wait: bool, options: StreamingOptions | None
    ) -> TaskUpdate:
        return await self._async.run(params, wait=wait, options=options)

    def get_task(self, task_id: str) -> TaskUpdate:
        """The task's current state; see `AsyncInference.get_task`."""
        return self._call(self._async.get_task, task_id)

    def cancel_task(self, task_id: str) -> None:
        """Ask the server to cancel the task; see `AsyncInference.cancel_task`."""
        self._call(self._async.cancel_task, task_id)

    def stream_task(
        self, task_id: str, options: StreamingOptions | None = None
    ) -> SyncStream[TaskUpdate]:
        """Attach to an existing task's stream; see `AsyncInference.stream_task`."""
        self._async.stream_task(task_id, options)  # validates arguments before any I/O
        return SyncStream(self, lambda: self._async.stream_task(task_id, options).items())

    def agent(
        self, ref: str, *, chat_id: str | None = None, options: StreamingOptions | None = None
    ) -> Agent:
        """A conversation with the agent `ref`; see `AsyncInference.agent`."""
        return Agent(self, self._async.agent(ref, chat_id=chat_id, options=options))

    def wait_for_completion(self, task_id: str, timeout: float | None = None) -> TaskUpdate:
        """Wait for the task to end; see `AsyncInference.wait_for_completion`."""
        return self._call(self._async.wait_for_completion, task_id, timeout)


class Agent:
    """A blocking conversation with an agent; see `AsyncAgent`.

    Callbacks run in the calling thread while the stream is read on the client's loop thread,
    so a callback may call `submit_tool_result` or any other client method.
    """

    def __init__(self, client: Inference, agent: AsyncAgent) -> None:
        self._client = client
        self._async = agent

    def __repr__(self) -> str:
        return f"<Agent {self._async.ref!r} chat_id={self.chat_id!r}>"

    @property
    def chat_id(self) -> str | None:
        """The chat this agent talks in; set by the first message."""
        return self._async.chat_id

    def stream(self, text: str) -> SyncStream[AgentEvent]:
        """Send `text` and iterate what happens; see `AsyncAgent.stream`."""
        return SyncStream(self._client, lambda: self._async.stream(text).items())

    def send_message(
        self,
        text: str,
        *,
        on_message: MessageCallback | None = None,
        on_tool_call: ToolCallCallback | None = None,
    ) -> ChatMessage:
        """Send `text`, run the callbacks here as the answer streams; see `AsyncAgent`."""
        final: ChatMessage | None = None
        with self.stream(text) as events:
            for event in events:
                if isinstance(event, ChatMessage):
                    final = event
                    continue
                try:
                    if inspect.isawaitable(dispatch(event, on_message, on_tool_call)):
                        raise UsageError("the blocking agent takes plain callbacks, not async ones")
                except ToolCallError:
                    self._stop_after_failure()
                    raise
        return require_final(final, self.chat_id)

    def _stop_after_failure(self) -> None:
        self._client._call(self._async._stop_after_failure)

    def submit_tool_result(self, call_id: str, result: Any) -> None:
        """Answer a client tool call; see `AsyncAgent.submit_tool_result`."""
        self._client._call(self._async.submit_tool_result, call_id, result)

    def stop(self) -> None:
        """Stop the agent's current run; see `AsyncAgent.stop`."""
        self._client._call(self._async.stop)


inference = Inference
"""Create a blocking `Inference` client (the seed document's spelling of the constructor)."""


def _close_all_at_exit() -> None:
    # Runs before the interpreter stops daemon threads: close each open client's pool so a
    # script that never called close() exits without "Unclosed client session" noise.
    for client in list(_live_clients):
        with contextlib.suppress(Exception):
            client.close()


def _reset_all_in_child() -> None:
    for client in list(_live_clients):
        client._after_fork_in_child()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_in_child)
