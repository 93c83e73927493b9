"""The consumer's side of a stream, shared by the async and the blocking client.

A stream is two parts with separate owners. The `StreamReader` (event loop side) hands out
batches of structured events. The consumer turns each batch into the items it yields with a
view (`TaskView`, `ChatView`) that remembers what it has been given. In the async client both
run in the caller's task; in the blocking client the reader runs on the loop thread and the view
in the caller's thread. Nothing is written by both.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from ._connection import ConnectionEvent
from ._reader import Codec, StreamReader

__all__ = ["ItemStream", "Items", "MakeView", "View"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class View(Protocol[T_co]):
    """What the consumer has been given of one resource; decides what each event adds."""

    def apply(self, event: Any) -> Sequence[T_co]:
        """The items `event` adds to what was given so far (often none, or one)."""
        ...


MakeView = Callable[[Codec[Any]], View[T]]
"""Builds the view of a stream once its reader knows the resource (after its first batch)."""


class Items(Generic[T]):
    """What a stream's batches give its consumer, through the view (made from the reader's
    codec once the first batch is in). Owned by the consumer."""

    def __init__(self, reader: StreamReader[Any], make_view: MakeView[T]) -> None:
        self._reader = reader
        self._make_view = make_view
        self._view: View[T] | None = None

    def of(self, batch: Sequence[Any]) -> list[T]:
        """Everything `batch` adds for the consumer, in order."""
        view = self._view
        if view is None:
            assert self._reader.codec is not None
            view = self._view = self._make_view(self._reader.codec)
        items: list[T] = []
        for event in batch:
            items += view.apply(event)
        return items


async def _items(reader: StreamReader[Any], make_view: MakeView[T]) -> AsyncGenerator[T, None]:
    # A module function, not a method: the generator must not keep its stream alive (a cycle
    # would hold the connection open after `break` until the collector ran).
    items = Items(reader, make_view)
    try:
        while (batch := await reader.next_batch()) is not None:
            for item in items.of(batch):
                yield item
    finally:
        await reader.aclose()


class ItemStream(AsyncIterator[T]):
    """A stream's items for `async for`. Reaching the end, an exception or cancellation closes
    the connection; leaving early with `break` closes it once the stream is dropped (at once
    in `async for u in client.run(...)`); `aclose()` and `async with` close it at once."""

    def __init__(self, reader: StreamReader[Any], make_view: MakeView[T]) -> None:
        self.reader = reader
        self.make_view = make_view
        self._items = _items(reader, make_view)

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items

    async def __anext__(self) -> T:
        return await self._items.__anext__()

    @property
    def connection(self) -> ConnectionEvent | None:
        """The latest change of the stream's connection (None before it first connects); the
        same events `StreamingOptions.on_connection` is given."""
        return self.reader.connection

    async def aclose(self) -> None:
        """Stop streaming and close the connection now (from any task)."""
        await self.reader.aclose()  # a read running in another task ends
        if not self._items.ag_running:  # type: ignore[attr-defined]
            await self._items.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
