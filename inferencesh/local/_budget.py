"""The emulator's memory budget: the bytes clients can make it hold, against one limit.

Tasks, chats and file records charge what they keep (inputs, log lines, messages, event
logs, file metadata) as they keep it. When the total goes over the limit, ended resources
(finished tasks, idle chats) are dropped oldest first; when live work alone fills it, new work
is refused (`Overloaded`, a 429) and event logs keep only their newest event (a resume from
before it gets a fresh snapshot). File records are not dropped to make room: files live on
disk under their own cap.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["MemoryBudget", "Overloaded", "Reclaimable", "Retention"]

# What one retained object costs beyond the bytes of its text (object headers, list slots).
OVERHEAD = 64

#: The oldest ended resource a store can drop: (when it ended, monotonic; how to drop it).
Reclaimable = tuple[float, Callable[[], None]]


class Overloaded(Exception):
    """New work refused because a limit is reached; answered 429 with `Retry-After`."""

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class MemoryBudget:
    """Bytes held by retained tasks and chats, and the stores that can give some back.

    Used on the server's loop, under the hub's lock (one owner: the stores charge, the budget
    only counts and asks them to drop their oldest ended resources).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._sources: list[Callable[[], Reclaimable | None]] = []

    def __repr__(self) -> str:
        return f"<MemoryBudget used={self.used} limit={self.limit}>"

    def add_source(self, oldest: Callable[[], Reclaimable | None]) -> None:
        """Register a store's way to name its oldest droppable resource."""
        self._sources.append(oldest)

    def charge(self, size: int) -> None:
        """Count `size` more bytes held (negative: released)."""
        self.used += size

    @property
    def over(self) -> bool:
        """Whether more is held than the limit allows."""
        return self.used > self.limit

    def reclaim(self, need: int = 0) -> bool:
        """Drop ended resources, oldest first, until `need` more bytes fit; whether they do."""
        while self.used + need > self.limit:
            found = [item for item in (source() for source in self._sources) if item is not None]
            if not found:
                return False
            min(found, key=lambda item: item[0])[1]()
        return True

    def admit(self, size: int, what: str) -> None:
        """Make room for `size` new bytes, or raise `Overloaded` naming `what` was refused."""
        if not self.reclaim(size):
            raise Overloaded(
                f"{what} refused: the emulator's memory budget ({self.limit} bytes) is full "
                "of live tasks, chats and file records; retry when some have ended"
            )


class Retention:
    """Ended resources (finished tasks, idle chats) by id, oldest end first: each is kept for
    `ttl` seconds and at most `max_count` of them, and is dropped by `drop` when its time is up,
    when the cap is exceeded or when the memory budget needs room."""

    def __init__(self, *, ttl: float, max_count: int, drop: Callable[[str], None]) -> None:
        self.ttl = ttl
        self._max_count = max_count
        self._drop = drop
        self._since: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._since)

    def add(self, resource_id: str, since: float) -> None:
        """Start (or restart) the clock of a resource that ended at `since` (monotonic)."""
        self._since.pop(resource_id, None)
        late = bool(self._since) and since < next(reversed(self._since.values()))
        self._since[resource_id] = since
        if late:  # it ended before others already kept (a reload): keep the order by end
            self._since = OrderedDict(sorted(self._since.items(), key=lambda item: item[1]))

    def discard(self, resource_id: str) -> float | None:
        """Stop keeping track of a resource (it runs again, or is gone); when it had ended."""
        return self._since.pop(resource_id, None)

    def oldest(self) -> Reclaimable | None:
        """The resource that ended first, and how to drop it (for `MemoryBudget`)."""
        if not self._since:
            return None
        resource_id, since = next(iter(self._since.items()))
        return since, lambda: self._forget(resource_id)

    def _forget(self, resource_id: str) -> None:
        self._since.pop(resource_id, None)
        self._drop(resource_id)

    def expire(self) -> int:
        """Drop what is past its ttl or over the count cap, oldest first; return how many."""
        dropped = 0
        deadline = time.monotonic() - self.ttl
        while self._since:
            resource_id, since = next(iter(self._since.items()))
            if since > deadline and len(self._since) <= self._max_count:
                break
            self._forget(resource_id)
            dropped += 1
        return dropped

    def next_due_in(self) -> float | None:
        """Seconds until the oldest one expires, or None when none is kept."""
        if not self._since:
            return None
        return max(0.0, next(iter(self._since.values())) + self.ttl - time.monotonic())
