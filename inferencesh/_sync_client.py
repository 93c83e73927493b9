"""`Inference`, the blocking client: the async core run on a background event-loop thread.

No protocol logic lives here. Each call hands an `AsyncInference` coroutine to the client's own
event loop (an anyio blocking portal on a daemon thread) and waits for it. A stream is the same
reader and view the async client uses: the reader runs on the loop thread, a batch of events
per hand-off, and the view turns them into updates here, in the consumer's thread. An agent's
callbacks run here too, called by the async client's own dispatch loop through `_relay`.
Leaving a call by any exception, KeyboardInterrupt included, cancels the work on the loop
thread; closing a stream or the client from another thread (or at exit) ends what is waiting
on it cleanly.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import inspect
import os
import queue
import threading
import weakref
from collections.abc import (
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Generic, Literal, Self, TypeVar, cast, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._agent import AgentEvent, AsyncAgent, ChatMessage, MessageCallback, ToolCallCallback
from ._async_client import DEFAULT_REQUEST_RETRY, AsyncInference, Params
from ._batch import (
    AsyncBatch,
    BatchItem,
    BatchProgress,
    OnSubmit,
    OnUpdate,
    TaskOutcome,
    in_input_order,
    next_outcome,
)
from ._connection import ConnectionEvent
from ._defaults import USE_CLIENT_DEFAULT, Timeout, check_callback
from ._events import TaskUpdate
from ._exceptions import InferenceshError, UsageError
from ._files import File, ProgressCallback
from ._reader import StreamReader
from ._retry import RetryPolicy
from ._sessions import AsyncSession, SessionInfo
from ._stream import Items, ItemStream, MakeView
from ._streaming import StreamingOptions

__all__ = ["Agent", "Inference", "Session", "SyncBatch", "SyncStream", "inference"]

T = TypeVar("T")

_live_clients: weakref.WeakSet[Inference] = weakref.WeakSet()
# Objects that belonged to a parent process's event loop. A forked child keeps them alive but
# never touches them: finalizing them would warn about sessions the child cannot close.
_orphans: list[object] = []


class _Closed(Exception):
    """The client was closed while a call was waiting on its loop."""


class _Pending(Generic[T]):
    """Work handed to the client's loop thread (`Inference._start`), and its outcome.

    The thread that waits for it blocks on a lock of its own, which the loop thread releases
    once the work's task is done, and cancels it through `call_soon_threadsafe`: it never takes
    a lock that the loop thread takes too. A `concurrent.futures.Future` shares its Condition
    with the loop thread, and a KeyboardInterrupt raised just after the waiter acquired that
    lock (inside the Condition's Python `__enter__`, before the `with` block) leaves it held,
    so the loop thread blocks on it for good: seen on Python 3.13 with a signal handler raising
    at random instants. Everything but `_done` and `_cancel_sent` (the waiting thread's) is
    written on the loop thread only. `on_done` is called there once the outcome is set,
    however the work ended (even cancelled before its first step, or before `start` was
    queued: an interrupt landed while it was handed over).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        work: Callable[[], Awaitable[T]],
        on_done: Callable[[], object] | None = None,
    ) -> None:
        self._loop = loop
        self._work = work
        self._on_done = on_done
        self._done = threading.Lock()
        self._done.acquire()  # released by the loop thread once the outcome is set
        self._task: asyncio.Task[T] | None = None
        self._ended_unstarted = False  # cancelled before `start` was ever queued
        self._cancel_sent = False  # written by the waiting thread: `cancel` acts once
        self._value: T | None = None
        self._error: BaseException | None = None

    def start(self, running: set[asyncio.Future[Any]]) -> None:
        """On the loop thread: start the work as a task kept in `running` while it runs (before
        any `cancel` reaches the loop: both are queued there, this one first)."""
        if self._ended_unstarted:
            return
        self._task = task = self._loop.create_task(self._run())
        running.add(task)
        task.add_done_callback(running.discard)
        task.add_done_callback(self._finished)

    async def _run(self) -> T:
        return await self._work()

    def _finished(self, task: asyncio.Task[T]) -> None:
        # A done callback runs however the task ended, even cancelled before its first step
        # (when its coroutine never ran).
        try:
            if task.cancelled():
                self._error = _cancellation(task)
            elif (error := task.exception()) is not None:
                self._error = error
            else:
                self._value = task.result()
            if self._on_done is not None:
                self._on_done()
        finally:
            self._done.release()

    def wait(self) -> T:
        """The work's result, or its exception raised here; `_Closed` when it was cancelled
        (the client was closed under it). Leaving by any other exception, Ctrl-C included,
        cancels the work."""
        try:
            self._done.acquire()
        except BaseException:
            self.cancel()
            raise
        if self._error is None:
            return cast(T, self._value)
        if isinstance(self._error, asyncio.CancelledError):
            raise _Closed from None
        raise self._error

    def note_on(self, error: BaseException) -> None:
        """Add to `error` (raised in the waiting thread instead of the work's own) the notes
        the work's error carries, such as what its clean-up did; nothing if it has not ended
        (`_done` is released after the outcome is set)."""
        if self._done.acquire(blocking=False):
            self._done.release()
            for note in getattr(self._error, "__notes__", ()):
                error.add_note(note)

    def cancel(self) -> None:
        """Cancel the work once, as asyncio does (its clean-up still runs), from the thread
        that waits for it; nothing when the loop is gone (closing the client ended the work)."""
        if self._cancel_sent:
            return  # once: a second cancellation would cut the work's clean-up short
        self._cancel_sent = True
        _to_loop(self._loop, self._cancel)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        elif not self._ended_unstarted:
            # `start` never reached the loop (it comes first when it does): an interrupt
            # landed while it was being queued. The work ends here, cancelled, as it would.
            self._ended_unstarted = True
            self._error = asyncio.CancelledError()
            try:
                if self._on_done is not None:
                    self._on_done()
            finally:
                self._done.release()


class SyncStream(Iterator[T]):
    """A blocking iterator over a stream whose reader runs on the client's loop thread.

    Leaving the loop early (`break`, an exception, Ctrl-C) closes the connection as soon as
    the stream object is dropped: at once in `for update in client.run(..., stream=True)`.
    `close()` and the `with` block close it at once, and `close()` (or the client's) may be
    called from any thread: an iteration in another thread then ends cleanly.
    """

    def __init__(self, client: Inference, stream: ItemStream[T]) -> None:
        self._client = client
        self._reader = stream.reader
        self._items = _iterate(client, stream.reader, stream.make_view)

    def __iter__(self) -> Iterator[T]:
        return self._items

    def __next__(self) -> T:
        return next(self._items)

    @property
    def connection(self) -> ConnectionEvent | None:
        """The latest change of the stream's connection (None before it first connects), as
        the reader on the loop thread last recorded it."""
        return self._reader.connection

    def close(self) -> None:
        """Stop iterating and close the connection now (from any thread)."""
        self._client._close_soon(self._reader.aclose)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# A hand-off to the loop thread and back costs about 65 microseconds here, as much as a few
# hundred small events: the blocking client takes up to this many events per hand-off (the
# async client takes 64 per step, which keeps fewer objects alive at once).
_SYNC_BATCH = 1024
# What `_relay` waits for interrupted work beyond its clean-up's own bound (a stop after
# Ctrl-C): the work's end, so that what the clean-up did reaches the caller as a note.
_DRAIN_MARGIN = 5.0


def _iterate(
    client: Inference, reader: StreamReader[Any], make_view: MakeView[T]
) -> Generator[T, None, None]:
    # Only this generator's thread runs it; other threads stop it through the reader (whose
    # `aclose` ends a read waiting here) or the client, never by closing the generator.
    items = Items(reader, make_view)
    started = False
    try:
        while True:
            try:
                batch = client._start(_read, reader, _SYNC_BATCH).wait()
            except _Closed:
                return  # the client was closed while this thread waited (or at exit)
            except UsageError:
                if started and client.closed:
                    return  # ... or while this thread was busy with the last items
                raise
            if batch is None:
                return
            started = True
            yield from items.of(batch)
    finally:
        if not reader.ended:  # stopped early: release the connection
            client._close_soon(reader.aclose)


async def _read(reader: StreamReader[Any], limit: int) -> list[Any] | None:
    """One read of a blocking stream, on the loop. Cancelled (by `Inference.close` from another
    thread, or Ctrl-C in the iterating one), it closes the reader before it ends, while the
    client's connections are still open: a `cancel_on_close` stream cancels its task."""
    try:
        return await reader.next_batch(limit)
    except asyncio.CancelledError:
        await reader.aclose()
        raise


def _iterate_batch(client: Inference, batch: AsyncBatch) -> Generator[TaskOutcome, None, None]:
    # A module function holding no reference to the SyncBatch: dropping a loop left early
    # (break) finalizes this generator at once, and with it the batch.
    next_one = next_outcome(batch)
    try:
        while True:
            # Relayed, so Ctrl-C here cancels the batch's loop once and waits for its clean-up.
            outcome = client._relay(next_one)
            if outcome is None:
                return
            yield outcome
    finally:
        client._close_soon(batch.aclose)


class Inference:
    """Blocking client for the inference.sh API, with the same operations as `AsyncInference`.

    The work runs on a background event loop owned by this client (a daemon thread started on
    first use), so it works from plain scripts, from several threads at once, and from inside
    a running event loop (Jupyter, async web handlers). `with` or `close()` stops the loop.
    `on_messages` is called on that loop's thread. Proxies, `default_headers` and per-call
    `timeout=` are as `AsyncInference`'s.
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
        def make() -> AsyncInference:
            return AsyncInference(
                api_key,
                base_url=base_url,
                timeout=timeout,
                max_connections=max_connections,
                streaming_options=streaming_options,
                retry=retry,
                on_messages=on_messages,
                proxy=proxy,
                trust_env=trust_env,
                default_headers=default_headers,
            )

        self._make_async = make
        self._async = make()
        # Reentrant: the collector may finalize an abandoned stream or batch at any allocation,
        # in this lock's critical section too, and that closes it through `_start`.
        self._lock = threading.RLock()
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._running: set[asyncio.Future[Any]] = set()  # the work on the loop (its thread's own)
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

    @property
    def timeout(self) -> float | None:
        """Seconds a REST call may take, its retries included (None: no limit)."""
        return self._async.timeout

    # -- the loop thread ----------------------------------------------------------------------

    def _start(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        on_done: Callable[[], object] | None = None,
        hold: list[_Pending[Any]] | None = None,
        **kwargs: Any,
    ) -> _Pending[T]:
        """Start `fn(*args, **kwargs)` on the loop (started on first use); wait with `.wait()`.
        Under the lock, so that `close` cancels all the work started before it. Refused on
        the loop thread itself (a callback such as `on_messages`): it would wait for itself.
        An interrupt landing while the work is handed over cancels it; `hold` (if given)
        receives it once handed over or possibly so, for a caller that must then wait for it."""
        if threading.get_ident() == self._loop_thread:
            raise UsageError(
                "a blocking call cannot be made from a callback on the client's own loop thread"
            )
        with self._lock:
            if self._closed:
                raise UsageError("the client is closed; create a new one")
            loop = self._loop or self._start_loop()
            pending = _Pending(loop, _bind(fn, *args, **kwargs), on_done)
            try:
                loop.call_soon_threadsafe(pending.start, self._running)
            except RuntimeError:  # the loop thread has ended (it raised SystemExit, say)
                raise UsageError(
                    "the client's event loop has stopped; create a new client"
                ) from None
            except BaseException:  # queued or not: `cancel` ends it either way
                pending.cancel()
                if hold is not None:
                    hold.append(pending)
                raise
            if hold is not None:
                hold.append(pending)
            return pending

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        """Start the loop thread (under `_lock`); the client's state changes only once it runs."""
        cm = start_blocking_portal("asyncio", name="inferencesh-loop")
        portal = cm.__enter__()
        try:
            loop, ident = portal.call(_loop_and_thread)
        except BaseException:
            cm.__exit__(None, None, None)
            raise
        self._portal, self._portal_cm, self._loop, self._loop_thread = portal, cm, loop, ident
        return loop

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        try:
            return self._start(fn, *args, **kwargs).wait()
        except _Closed:
            raise UsageError("the client was closed while the call was running") from None

    def _close_soon(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn` (a stream's `aclose`) on the loop and wait for it, unless the client is
        already closed (which closed everything). On the loop thread itself (a callback such
        as `on_connection` closing a stream), it is started there and not waited for."""
        loop = self._loop
        if loop is None or self._closed:
            return
        if threading.get_ident() == self._loop_thread:
            task = asyncio.ensure_future(fn(), loop=loop)
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            return
        with contextlib.suppress(UsageError, _Closed):  # closed meanwhile: nothing left to do
            self._start(fn).wait()

    def _relay(
        self, fn: Callable[..., Awaitable[T]], *args: Any, **callbacks: Callable[[Any], Any] | None
    ) -> T:
        """Run the coroutine function `fn` on the loop, with `callbacks` run in this thread:
        on the loop side each is an async callable that waits for this thread to run it."""
        for name, callback in callbacks.items():
            check_callback(callback, name)  # said now, not when the first one is due
        requests: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, asyncio.Future[Any]] | None]
        requests = queue.SimpleQueue()

        def relayed(callback: Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
            if callback is None:
                return None

            def call(argument: Any) -> asyncio.Future[Any]:
                future = asyncio.get_running_loop().create_future()
                requests.put((callback, argument, future))
                return future

            return call

        async def run() -> T:
            return await fn(*args, **{name: relayed(cb) for name, cb in callbacks.items()})

        # The end of the work, however it ends (even cancelled before it started), ends the
        # loop below and `_drain`.
        interrupted: BaseException | None = None
        cleanup = self._async._cleanup_timeout + _DRAIN_MARGIN
        held: list[_Pending[Any]] = []
        try:
            done = self._start(run, on_done=lambda: requests.put(None), hold=held)
            while interrupted is None and (request := requests.get()) is not None:
                interrupted = _answer(*request)
        except BaseException as exc:
            # Ctrl-C while waiting (or while the work was handed over): stop the work, and let
            # it finish what it must (stop the agent's run) before this thread goes on: it is
            # cancelled once, so its clean-up runs.
            if held:
                held[0].cancel()
                _drain(requests, cleanup)
                held[0].note_on(exc)
            raise
        if interrupted is not None:
            # The loop was told, and ends the work as after any failed callback: wait for that.
            _drain(requests, cleanup)
            done.note_on(interrupted)
            raise interrupted
        try:
            return done.wait()
        except _Closed:
            raise UsageError("the client was closed while the call was running") from None

    def close(self) -> None:
        """Close the connection pool and stop the loop thread. Idempotent, from any thread
        but the loop thread itself (a callback such as `on_connection`: `UsageError`)."""
        if threading.get_ident() == self._loop_thread:
            raise UsageError("close() cannot be called from the client's own loop thread")
        with self._lock:
            if self._closed:
                return
            # Held before anyone can see the client closed: a thread iterating a batch or a
            # `cancel_on_close` stream then stops and drops it, and `aclose` must still find
            # it to cancel its tasks.
            held = self._async._open_leavers()
            self._closed = True
            portal, cm = self._portal, self._portal_cm
            self._portal = self._portal_cm = None
        if portal is None or cm is None:
            return
        try:
            # Cancel anything still running on the loop first, while the connections are open
            # for its clean-up (`cancel_on_close` cancels its task on the server): calls and
            # streams waiting in other threads then end (a stream stops; a call raises
            # UsageError).
            portal.call(self._cancel_running)
            portal.call(self._async.aclose)
            portal.call(portal.stop, True)
        finally:
            cm.__exit__(None, None, None)
            del held

    async def _cancel_running(self) -> None:
        """On the loop: cancel the work started by `_start` and wait until it has ended, for
        its clean-up at most the client's `_cleanup_timeout`."""
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self._async._cleanup_timeout)

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

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
        self._lock = threading.RLock()
        self._portal = self._portal_cm = None
        self._loop = self._loop_thread = None
        self._running = set()
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
        cancel_on_close: bool = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> SyncStream[TaskUpdate]: ...

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
    ) -> TaskUpdate: ...

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
    ) -> SyncStream[TaskUpdate] | TaskUpdate: ...

    def run(
        self,
        params: Params,
        *,
        stream: bool = False,
        wait: bool = True,
        options: StreamingOptions | None = None,
        cancel_on_close: bool = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> SyncStream[TaskUpdate] | TaskUpdate:
        """Run an app; see `AsyncInference.run`. With `stream=True`, returns an iterator."""
        if stream:
            updates = self._async.run(
                params, stream=True, options=options, cancel_on_close=cancel_on_close,
                timeout=timeout,
            )  # fmt: skip
            return SyncStream(self, updates)
        return self._call(
            lambda: self._async.run(
                params,
                wait=wait,
                options=options,
                cancel_on_close=cancel_on_close,
                timeout=timeout,
            )
        )

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
    ) -> SyncBatch:
        """Run many apps, at most `concurrency` at a time; iterate to get each `TaskOutcome`
        as its task ends (see `AsyncInference.run_many`). The callbacks run on the client's
        loop thread."""
        batch = self._async.run_many(
            configs, concurrency=concurrency, fail_fast=fail_fast,
            cancel_unfinished=cancel_unfinished, on_update=on_update, on_submit=on_submit,
            options=options, total=total,
        )  # fmt: skip
        return SyncBatch(self, batch)

    def get_task(self, task_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> TaskUpdate:
        """The task's current state; see `AsyncInference.get_task`."""
        return self._call(self._async.get_task, task_id, timeout=timeout)

    def cancel_task(self, task_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Ask the server to cancel the task; see `AsyncInference.cancel_task`."""
        self._call(self._async.cancel_task, task_id, timeout=timeout)

    def cancel(self, task_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """`cancel_task` under the official client's name."""
        self._call(self._async.cancel, task_id, timeout=timeout)

    def stream_task(
        self,
        task_id: str,
        options: StreamingOptions | None = None,
        *,
        cancel_on_close: bool = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> SyncStream[TaskUpdate]:
        """Attach to an existing task's stream; see `AsyncInference.stream_task`."""
        stream = self._async.stream_task(
            task_id, options, cancel_on_close=cancel_on_close, timeout=timeout
        )
        return SyncStream(self, stream)

    def delete_task(
        self, task_id: str, *, files: bool = False, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> None:
        """Delete a task; with `files=True` also the files it used and made."""
        self._call(self._async.delete_task, task_id, files=files, timeout=timeout)

    def task_files(
        self,
        task_id: str,
        *,
        role: Literal["input", "output"] | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> list[File]:
        """The files a task used (`role="input"`) and made (`"output"`), or both."""
        return self._call(self._async.task_files, task_id, role=role, timeout=timeout)

    def upload_file(
        self,
        source: str | os.PathLike[str] | bytes | IO[bytes],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        progress: ProgressCallback | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> File:
        """Upload a file and return it (see `AsyncInference.upload_file`); `progress` runs in
        this thread."""
        upload = functools.partial(
            self._async.upload_file, source, filename=filename, content_type=content_type,
            timeout=timeout,
        )  # fmt: skip
        return self._relay(upload, progress=progress)

    def download(
        self,
        file_or_uri: File | str,
        dest: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> Path:
        """Save a file at `dest` (see `AsyncInference.download`); `progress` runs in this
        thread."""
        return self._relay(
            functools.partial(self._async.download, file_or_uri, dest, timeout=timeout),
            progress=progress,
        )

    def agent(
        self, ref: str, *, chat_id: str | None = None, options: StreamingOptions | None = None
    ) -> Agent:
        """A conversation with the agent `ref`; see `AsyncInference.agent`."""
        return Agent(self, self._async.agent(ref, chat_id=chat_id, options=options))

    def session(
        self, app: str, *, idle_timeout: int | None = None, keepalive: bool = True
    ) -> Session:
        """A session of `app`; use `with` (see `AsyncInference.session`)."""
        return Session(
            self, self._async.session(app, idle_timeout=idle_timeout, keepalive=keepalive)
        )

    def get_session(self, session_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionInfo:
        """A session as the server sees it (`SessionNotFoundError` if it knows none)."""
        return self._call(self._async.get_session, session_id, timeout=timeout)

    def list_sessions(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> list[SessionInfo]:
        """Your sessions, as the server lists them."""
        return self._call(self._async.list_sessions, timeout=timeout)

    def wait_for_completion(
        self, task_id: str, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> TaskUpdate:
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

    def stream(
        self, text: str, *, files: Sequence[Any] = (), timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> SyncStream[AgentEvent]:
        """Send `text` (with `files`) and iterate what happens; see `AsyncAgent.stream`."""
        return SyncStream(self._client, self._async.stream(text, files=files, timeout=timeout))

    def send_message(
        self,
        text: str,
        *,
        files: Sequence[Any] = (),
        on_message: MessageCallback | None = None,
        on_tool_call: ToolCallCallback | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> ChatMessage:
        """Send `text` (with `files`) and run the callbacks here as the answer streams; see
        `AsyncAgent`. Callbacks must be plain functions: an async one stops the run with
        `UsageError`."""
        send = functools.partial(self._async.send_message, text, files=files, timeout=timeout)
        return self._client._relay(send, on_message=on_message, on_tool_call=on_tool_call)

    def submit_tool_result(
        self,
        call_id: str,
        result: Any,
        *,
        attachments: Sequence[Any] = (),
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> None:
        """Answer a client tool call; see `AsyncAgent.submit_tool_result`."""
        self._client._call(
            self._async.submit_tool_result, call_id, result, attachments=attachments,
            timeout=timeout,
        )  # fmt: skip

    def stop(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Stop the agent's current run; see `AsyncAgent.stop`."""
        self._client._call(self._async.stop, timeout=timeout)


class SyncBatch(Iterator[TaskOutcome]):
    """A blocking batch (see `AsyncBatch`): iterate for each `TaskOutcome` as it ends.

    Leaving early (break, an exception, Ctrl-C) stops the tasks in flight and, unless the
    batch was told not to, cancels them on the server before the loop goes on: at once in
    `for outcome in client.run_many(...)`, and with `with` or `close()` otherwise.
    """

    def __init__(self, client: Inference, batch: AsyncBatch) -> None:
        self._client = client
        self._batch = batch
        self._outcomes = _iterate_batch(client, batch)

    def __iter__(self) -> Iterator[TaskOutcome]:
        return self._outcomes

    def __next__(self) -> TaskOutcome:
        return next(self._outcomes)

    @property
    def progress(self) -> BatchProgress:
        """The batch's tally now (read on the client's loop)."""
        return self._client._call(self._batch.progress_now)

    def results(self) -> list[TaskOutcome]:
        """Every outcome, in input order (this keeps them all; iterate to keep none)."""
        return in_input_order(self)

    def close(self) -> None:
        """Stop now: tasks in flight stop here and, unless told not to, on the server."""
        self._client._close_soon(self._batch.aclose)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Session:
    """A blocking session of one app; see `AsyncSession`. The keepalive runs on the client's
    loop thread while the `with` block runs."""

    def __init__(self, client: Inference, session: AsyncSession) -> None:
        self._client = client
        self._async = session

    def __repr__(self) -> str:
        return f"<Session {self._async.app!r}>"

    @property
    def id(self) -> str:
        """The session's id (once opened)."""
        return self._async.id

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client._call(self._async.__aexit__, exc_type, exc, tb)

    def open(self) -> SessionInfo | None:
        """Start the session (what `with` does)."""
        return self._client._call(self._async.open)

    @overload
    def run(
        self,
        input: Mapping[str, Any],
        *,
        function: str | None = None,
        stream: Literal[True],
        options: StreamingOptions | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> SyncStream[TaskUpdate]: ...

    @overload
    def run(
        self,
        input: Mapping[str, Any],
        *,
        function: str | None = None,
        stream: Literal[False] = False,
        options: StreamingOptions | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> TaskUpdate: ...

    @overload
    def run(
        self,
        input: Mapping[str, Any],
        *,
        function: str | None = None,
        stream: bool,
        options: StreamingOptions | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> SyncStream[TaskUpdate] | TaskUpdate: ...

    def run(
        self,
        input: Mapping[str, Any],
        *,
        function: str | None = None,
        stream: bool = False,
        options: StreamingOptions | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> SyncStream[TaskUpdate] | TaskUpdate:
        """Call the app in this session (see `AsyncSession.run`)."""
        if stream:
            return SyncStream(
                self._client,
                self._async.run(
                    input, function=function, stream=True, options=options, timeout=timeout
                ),
            )
        return self._client._call(
            lambda: self._async.run(input, function=function, options=options, timeout=timeout)
        )

    def info(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionInfo:
        """The session as the server sees it now."""
        return self._client._call(self._async.info, timeout=timeout)

    def keepalive(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionInfo:
        """Tell the server the session is still wanted (the block does this by itself)."""
        return self._client._call(self._async.keepalive, timeout=timeout)

    def end(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """End the session (what leaving `with` does); idempotent."""
        self._client._call(self._async.end, timeout=timeout)


class _CallbackInterrupted(InferenceshError):
    """A callback run by the blocking client was interrupted (Ctrl-C, SystemExit, ...); the
    interruption itself is raised in the caller's thread once the loop has cleaned up."""


def _loop_and_thread() -> tuple[asyncio.AbstractEventLoop, int]:
    """Run on the loop thread: its loop and its thread's id."""
    return asyncio.get_running_loop(), threading.get_ident()


def _to_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: Any) -> None:
    """Have `loop` run `fn(*args)`; nothing when the loop is gone (the client was closed,
    which ended whatever `fn` was for)."""
    with contextlib.suppress(RuntimeError):  # "Event loop is closed"
        loop.call_soon_threadsafe(fn, *args)


def _cancellation(task: asyncio.Task[Any]) -> asyncio.CancelledError:
    """The CancelledError a cancelled task ended with (the one its work raised, with any notes
    its clean-up added), or a new one if asyncio no longer holds it."""
    try:
        task.result()
    except asyncio.CancelledError as exc:
        return exc
    return asyncio.CancelledError()  # pragma: no cover - a cancelled task's result raises


def _answer(
    callback: Callable[[Any], Any], argument: Any, future: asyncio.Future[Any]
) -> BaseException | None:
    """Run a relayed callback in this thread and hand its outcome back to the loop. Returns
    the interruption (KeyboardInterrupt, SystemExit, ...) the callback raised, if any."""
    loop = future.get_loop()
    try:
        result = callback(argument)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited: close it so it does not warn
            raise UsageError("the blocking client takes plain callbacks, not async ones")
    except Exception as exc:
        _to_loop(loop, _settle, future, exc, None)
    except BaseException as exc:
        _to_loop(loop, _settle, future, _CallbackInterrupted(repr(exc)), None)
        return exc
    else:
        _to_loop(loop, _settle, future, None, result)
    return None


def _settle(future: asyncio.Future[Any], error: BaseException | None, result: Any) -> None:
    if future.done():  # the waiting side was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _drain(
    requests: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, asyncio.Future[Any]] | None],
    timeout: float | None,
) -> None:
    """Wait (up to `timeout`, the client's) for relayed work to finish after it was stopped,
    refusing any callback it still asks for."""
    with contextlib.suppress(queue.Empty):  # the bound passed: go on without it
        while (request := requests.get(timeout=timeout)) is not None:
            future = request[2]
            _to_loop(future.get_loop(), future.cancel)


def _bind(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> Callable[[], Awaitable[T]]:
    if not args and not kwargs:
        return fn

    def bound() -> Awaitable[T]:
        return fn(*args, **kwargs)

    return bound


inference = Inference
"""Create a blocking `Inference` client (the seed document's spelling of the constructor)."""


def _close_all_at_exit() -> None:
    # Runs before the interpreter stops daemon threads: close each open client's pool so a
    # script that never called close() exits without "Unclosed client session" noise, and any
    # thread still iterating a stream sees it end.
    for client in list(_live_clients):
        try:
            client.close()
        except Exception as exc:  # at exit there is no caller left to raise to
            import logging

            logging.getLogger("inferencesh").debug("closing a client at exit failed: %r", exc)


def _reset_all_in_child() -> None:
    for client in list(_live_clients):
        client._after_fork_in_child()


atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_in_child)
