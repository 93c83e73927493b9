"""Running an emulator on a loopback port: in the current event loop or on a background thread."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import anyio.from_thread

from ._connections import start_site
from ._emulator import Emulator
from ._options import EmulatorOptions

__all__ = ["serve", "serve_in_thread"]

# How long shutdown waits for handlers still writing to a stalled reader before cancelling them.
_SHUTDOWN_TIMEOUT = 2.0


def _emulator(emu_or_options: Emulator | EmulatorOptions | None) -> Emulator:
    if isinstance(emu_or_options, Emulator):
        return emu_or_options
    return Emulator(emu_or_options)


@contextlib.asynccontextmanager
async def serve(
    emu_or_options: Emulator | EmulatorOptions | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[str]:
    """Serve an emulator in the running event loop; yields its base URL.

    `port=0` picks a free port. The options' `http` limits (`HttpLimits`) bound what clients
    may send. On exit, open streams end, running tasks are cancelled, and the port is released.
    """
    emulator = _emulator(emu_or_options)
    runner = await start_site(
        emulator.make_app(),
        emulator.options.http,
        host,
        port,
        shutdown_timeout=_SHUTDOWN_TIMEOUT,
    )
    try:
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{shown}:{bound_port}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def serve_in_thread(
    emu_or_options: Emulator | EmulatorOptions | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[str]:
    """Serve an emulator on a background thread with its own event loop; yields its base URL.

    For synchronous code and tests. On exit the server stops and the thread is joined.
    """
    emulator = _emulator(emu_or_options)
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(serve(emulator, host=host, port=port)) as url,
    ):
        yield url
