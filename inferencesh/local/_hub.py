"""One lock for the emulator's state, and waiting for it to change from any thread or loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from .._exceptions import UsageError

__all__ = ["ChangeHub"]


class ChangeHub:
    """Guards shared state with one re-entrant lock and wakes whoever waits for a change.

    The server mutates state on its event loop while holding `lock` and then calls `notify()`.
    Blocking waiters (`wait_until`) sleep on a `threading.Condition`; async waiters
    (`async_wait_until`) may run on any event loop and are woken with `call_soon_threadsafe`.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self.loop_thread: int | None = None

    def notify(self) -> None:
        """Wake every waiter so it re-checks its predicate."""
        with self._cond:
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed; its waiter can never run again
                self._discard(loop, event)

    def _discard(self, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        with self._cond:
            if (loop, event) in self._async_waiters:
                self._async_waiters.remove((loop, event))

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate()` is true or `timeout` seconds pass; return the last result."""
        if self.loop_thread == threading.get_ident():
            raise UsageError(
                "wait_until blocks; called on the emulator's own event loop it would deadlock. "
                "Use `await emulator.async_wait_until(...)` there."
            )
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)

    async def async_wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait without blocking the calling loop (any loop) until `predicate()` is true."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._cond:
            self._async_waiters.append((loop, event))
        try:
            deadline = loop.time() + timeout
            while True:
                with self._cond:
                    # Clear under the lock: a change notified after this point sets it again.
                    event.clear()
                    if predicate():
                        return True
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    async with asyncio.timeout(remaining):
                        await event.wait()
                except TimeoutError:
                    continue
        finally:
            self._discard(loop, event)
