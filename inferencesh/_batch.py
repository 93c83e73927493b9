"""Fan-out: many tasks run with a concurrency bound, their outcomes handed back as they end.

`client.run_many(configs)` takes any iterable of configs, consumed lazily (a generator of a
million is fine: only `concurrency` are in flight), and yields a `TaskOutcome` per task as it
ends: its index and config, and the final task or the typed error. Nothing accumulates unless
asked (`results()` keeps them, in input order). Leaving early (break, an exception,
cancellation, fail-fast) stops the local work at once and, unless told not to, cancels on the
server every task the batch started that has not ended. `progress` is a live tally.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import attrs

from ._defaults import check_callback, count
from ._events import TaskUpdate
from ._exceptions import InferenceshError, TaskError, UsageError
from ._status import TaskStatus
from ._streaming import StreamingOptions, stream_options

if TYPE_CHECKING:
    from ._async_client import AsyncInference, TaskStream

__all__ = [
    "AsyncBatch",
    "BatchItem",
    "BatchProgress",
    "OnSubmit",
    "OnUpdate",
    "TaskOutcome",
    "in_input_order",
    "next_outcome",
]

logger = logging.getLogger("inferencesh.batch")

Params = Mapping[str, Any]
# Server-side cancellations sent at once when a batch is left early.
_PARALLEL_CANCELS = 16
# Failures kept for `BatchProgress.recent_failures`.
_RECENT = 5
# The message `aclose` cancels an iteration in another task with, so it knows it is its own.
_CLOSED = "inferencesh: batch closed"


@attrs.frozen
class BatchItem:
    """One input of a batch with an explicit index; with `task_id`, re-attach to that task
    (started before, e.g. by a run that crashed) instead of starting a new one."""

    index: int
    config: Params
    task_id: str | None = None


@attrs.frozen
class TaskOutcome:
    """How one task of a batch ended: `task` is its final state (with every log line) when
    known, `error` the typed exception when it did not complete (None when it did)."""

    index: int
    config: Params
    task: TaskUpdate | None
    error: InferenceshError | None = None

    @property
    def ok(self) -> bool:
        """Whether the task completed."""
        return self.error is None

    @property
    def task_id(self) -> str | None:
        """The task's id, if it was created."""
        return self.task.id if self.task is not None else None


@attrs.frozen
class BatchProgress:
    """A batch's tally at one moment: what started and ended, how fast, what is left."""

    total: int | None
    started: int
    finished: int
    succeeded: int
    failed: int
    by_status: Mapping[str, int]
    elapsed: float
    recent_failures: tuple[tuple[int, str], ...]

    @property
    def running(self) -> int:
        """Tasks started and not ended."""
        return self.started - self.finished

    @property
    def rate(self) -> float:
        """Tasks ended per second, since the batch started."""
        return self.finished / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every task has ended at the current rate (None: unknown)."""
        if self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.finished) / self.rate

    @property
    def fraction(self) -> float | None:
        """`finished / total` from 0 to 1, or None when the total is unknown."""
        return self.finished / self.total if self.total else None


class _Tally:
    """What `progress` reports; written by the batch's loop only."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.began = time.monotonic()
        self.started = 0
        self.succeeded = 0
        self.failed = 0
        self.live: dict[int, str] = {}  # index -> latest status of the tasks still going
        self.ended: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[tuple[int, str]] = collections.deque(maxlen=_RECENT)

    def start(self, index: int) -> None:
        self.started += 1
        self.live[index] = "starting"

    def status(self, index: int, status: TaskStatus) -> None:
        if index in self.live:
            self.live[index] = status.value

    def end(self, outcome: TaskOutcome) -> None:
        self.live.pop(outcome.index, None)
        if outcome.ok:
            self.succeeded += 1
            self.ended["completed"] += 1
            return
        self.failed += 1
        task = outcome.task
        self.ended[task.status.value if task is not None else "error"] += 1
        self.recent.append((outcome.index, str(outcome.error)))

    def snapshot(self) -> BatchProgress:
        by_status = collections.Counter(self.live.values()) + self.ended
        return BatchProgress(
            total=self.total,
            started=self.started,
            finished=self.succeeded + self.failed,
            succeeded=self.succeeded,
            failed=self.failed,
            by_status=dict(by_status),
            elapsed=time.monotonic() - self.began,
            recent_failures=tuple(self.recent),
        )


OnUpdate = Callable[[int, TaskUpdate], Any]
OnSubmit = Callable[[int, Params], Any]


async def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class _Slot:
    """One task in flight: its input and, once it exists, its stream (for the task id)."""

    __slots__ = ("item", "stream")

    def __init__(self, item: BatchItem) -> None:
        self.item = item
        self.stream: TaskStream | None = None

    @property
    def task_id(self) -> str | None:
        return self.item.task_id or (self.stream.task_id if self.stream is not None else None)


def _items(configs: Iterable[Params | BatchItem]) -> Iterator[BatchItem]:
    for position, config in enumerate(configs):
        if isinstance(config, BatchItem):
            yield config
        elif isinstance(config, Mapping):
            yield BatchItem(position, config)
        else:
            raise UsageError(f"input {position} of the batch is a {type(config).__name__}, "
                             "not a mapping of run parameters")  # fmt: skip


class AsyncBatch(AsyncIterator[TaskOutcome]):
    """Tasks run with a concurrency bound; iterate to get each `TaskOutcome` as it ends.

    `async with` (or `aclose()`) makes leaving early clean: the tasks in flight stop here and,
    with `cancel_unfinished` (the default), are cancelled on the server.
    """

    def __init__(
        self,
        client: AsyncInference,
        configs: Iterable[Params | BatchItem],
        *,
        concurrency: int,
        fail_fast: bool,
        cancel_unfinished: bool,
        on_update: OnUpdate | None,
        on_submit: OnSubmit | None,
        options: StreamingOptions | None,
        total: int | None,
    ) -> None:
        count(concurrency, "concurrency", least=1)
        if isinstance(configs, Mapping | str | bytes):
            raise UsageError("run_many takes an iterable of configs, not a single config")
        if not isinstance(configs, Iterable):
            raise UsageError(f"run_many takes an iterable of configs, got {type(configs).__name__}")
        count(total, "total", least=0, optional=True)
        check_callback(on_update, "on_update")
        check_callback(on_submit, "on_submit")
        options = stream_options(options, client.streaming_options)
        if total is None and hasattr(configs, "__len__"):
            total = len(configs)  # type: ignore[arg-type]
        self._client = client
        self._concurrency = concurrency
        self._fail_fast = fail_fast
        self._cancel_unfinished = cancel_unfinished
        self._on_update = on_update
        self._on_submit = on_submit
        self._options = options
        self._tally = _Tally(total)
        self._outcomes = _run(self, _items(configs))
        self._iterating: asyncio.Task[Any] | None = None  # the task in `__anext__`, if any
        self._iteration_done: asyncio.Future[None] | None = None
        self._closing: asyncio.Future[None] | None = None  # set by the first `aclose`

    @property
    def progress(self) -> BatchProgress:
        """The batch's tally now: counts by status, rate, ETA, recent failures."""
        return self._tally.snapshot()

    async def progress_now(self) -> BatchProgress:
        """`progress`, read on the batch's loop (for another thread)."""
        return self._tally.snapshot()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> TaskOutcome:
        task = asyncio.current_task()
        done = asyncio.get_running_loop().create_future()
        self._iterating, self._iteration_done = task, done
        try:
            return await self._outcomes.__anext__()
        except asyncio.CancelledError as exc:
            # `aclose` from another task ends this iteration, not the task it runs in.
            if exc.args == (_CLOSED,) and task is not None and task.uncancel() == 0:
                raise StopAsyncIteration from None
            raise
        finally:
            self._iterating = None
            done.set_result(None)

    async def results(self) -> list[TaskOutcome]:
        """Every outcome, in input order (this keeps them all; iterate to keep none)."""
        return in_input_order([outcome async for outcome in self])

    async def aclose(self) -> None:
        """Stop now: tasks in flight stop here and, unless told not to, on the server (from
        any task: an iteration waiting in another one ends)."""
        if self._closing is not None:  # another task is closing it (or has): wait for that
            await asyncio.shield(self._closing)
            return
        # The first to close does it all, so the iteration is cancelled once however many
        # close at once (the client's `aclose` closes its batches too): a second cancellation
        # would escape the iteration's task.
        self._closing = asyncio.get_running_loop().create_future()
        try:
            iterating, done = self._iterating, self._iteration_done
            if iterating is not None and iterating is not asyncio.current_task():
                iterating.cancel(_CLOSED)  # its loop cleans up as it leaves
                if done is not None:
                    await asyncio.shield(done)
            await self._outcomes.aclose()
        finally:
            self._closing.set_result(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- one task --------------------------------------------------------------------------------

    async def _one(self, slot: _Slot) -> TaskOutcome:
        item = slot.item
        index = item.index
        client = self._client
        last: list[TaskUpdate] = []

        async def seen(update: TaskUpdate) -> None:
            last[:] = [update]
            self._tally.status(index, update.status)
            await _call(self._on_update, index, update)

        try:
            if item.task_id is not None:
                slot.stream = client.stream_task(item.task_id, self._options)
            else:
                await _call(self._on_submit, index, item.config)
                slot.stream = client.run(item.config, stream=True, options=self._options)
            task = await client._outcome(slot.stream, on_update=seen)
            return TaskOutcome(index, item.config, task)
        except TaskError as exc:
            return TaskOutcome(index, item.config, exc.task, exc)
        except InferenceshError as exc:
            return TaskOutcome(index, item.config, last[0] if last else None, exc)

    async def _cancel_on_server(self, task_ids: list[str]) -> None:
        gate = asyncio.Semaphore(_PARALLEL_CANCELS)

        async def cancel(task_id: str) -> None:
            async with gate:
                try:
                    await self._client.cancel_task(task_id)
                except InferenceshError as exc:  # leaving anyway: say it, do not mask
                    logger.warning("could not cancel task %s of the batch: %s", task_id, exc)

        await asyncio.gather(*(cancel(task_id) for task_id in task_ids))


async def _run(batch: AsyncBatch, items: Iterator[BatchItem]) -> AsyncGenerator[TaskOutcome, None]:
    """The batch's loop (a module function: the generator must not keep the batch alive)."""
    running: dict[asyncio.Task[TaskOutcome], _Slot] = {}
    # Tasks put themselves here as they end: one wake-up per task, whatever the bound.
    ended: asyncio.Queue[asyncio.Task[TaskOutcome]] = asyncio.Queue()
    more = True
    try:
        while True:
            while more and len(running) < batch._concurrency:
                item = next(items, None)
                if item is None:
                    more = False
                    break
                slot = _Slot(item)
                batch._tally.start(item.index)
                task = asyncio.ensure_future(batch._one(slot))
                task.add_done_callback(ended.put_nowait)
                running[task] = slot
            if not running:
                return
            finished = await ended.get()
            del running[finished]
            outcome = finished.result()
            batch._tally.end(outcome)
            if outcome.error is not None and batch._fail_fast:
                raise outcome.error
            yield outcome
    finally:
        await _abandon(batch, running)


async def _abandon(batch: AsyncBatch, running: dict[asyncio.Task[TaskOutcome], _Slot]) -> None:
    """Stop the tasks still in flight here and, if asked, on the server."""
    if not running:
        return
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    if batch._cancel_unfinished:
        unfinished = [slot.task_id for slot in running.values() if slot.task_id is not None]
        await batch._cancel_on_server([task_id for task_id in unfinished if task_id])


def in_input_order(outcomes: Iterable[TaskOutcome]) -> list[TaskOutcome]:
    """Outcomes sorted by their input's index (what `results()` gives)."""
    return sorted(outcomes, key=lambda outcome: outcome.index)


def next_outcome(batch: AsyncBatch) -> Callable[[], Awaitable[TaskOutcome | None]]:
    """One outcome at a time, None at the end (for the blocking client's iterator)."""

    async def next_outcome() -> TaskOutcome | None:
        try:
            return await batch.__anext__()
        except StopAsyncIteration:
            return None

    return next_outcome
