"""The consumer's side of a stream, shared by the async and the blocking client.

A stream is two parts with separate owners. The `StreamReader` (event loop side) hands out
batches of structured events. The consumer turns them into the items it yields with a view
(`TaskView`, `ChatView`) that remembers what it has been given. In the async client both run in
the caller's task; in the blocking client the reader runs on the loop thread and the view in
the caller's thread. Nothing is written by both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from ._reader import Codec, StreamReader

__all__ = ["Consumer", "ItemStream", "MakeView", "View"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class View(Protocol[T_co]):
    """What the consumer has been given of one resource; decides what each event adds."""

    def apply(self, event: Any) -> Sequence[T_co]:
        """The items `event` adds to what was given so far (often none, or one)."""
        ...


MakeView = Callable[[Codec[Any]], View[T]]
"""Builds the view of a stream once its reader knows the resource (after its first batch)."""


class Consumer(Generic[T]):
    """The batch in hand and the view that turns it into items, one at a time as asked."""

    def __init__(self, reader: StreamReader[Any], make_view: MakeView[T]) -> None:
        self.reader = reader
        self._make_view = make_view
        self._view: View[T] | None = None
        self._events: Iterator[Any] = iter(())
        self._ready: list[T] = []  # the rest of one event's items, last first

    def load(self, batch: Sequence[Any]) -> None:
        """Take `batch` (from `reader.next_batch`) as the next events `take` reads."""
        if self._view is None:
            assert self.reader.codec is not None
            self._view = self._make_view(self.reader.codec)
        self._events = iter(batch)

    def take(self) -> T | None:
        """The next item from the batch in hand, or None when another batch is needed."""
        if self._ready:
            return self._ready.pop()
        view = self._view
        for event in self._events:
            assert view is not None
            items = view.apply(event)
            if items:
                if len(items) > 1:
                    self._ready = list(items[:0:-1])
                return items[0]
        return None


class ItemStream(AsyncIterator[T]):
    """A stream's items for `async for`. Leaving early (`break`, an exception, cancellation)
    or reaching the end closes the connection; so do `aclose()` and `async with`."""

    def __init__(self, reader: StreamReader[Any], make_view: MakeView[T]) -> None:
        self._consumer = Consumer(reader, make_view)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        consumer = self._consumer
        try:
            while (item := consumer.take()) is None:
                batch = await consumer.reader.next_batch()
                if batch is None:
                    raise StopAsyncIteration
                consumer.load(batch)
        except BaseException:
            await consumer.reader.aclose()
            raise
        return item

    def consumer(self) -> Consumer[T]:
        """The not yet consumed part of this stream, for driving it from another thread."""
        return self._consumer

    async def aclose(self) -> None:
        """Stop streaming and close the connection now."""
        await self._consumer.reader.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
