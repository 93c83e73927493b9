"""Sessions: a warm worker of one app, kept across calls (protocol: section 3.4).

`client.session(app)` opens one as the hosted API does (it runs the app's `run` function with
`"session": "new"` and waits for it), keeps it alive in the background while the `async with`
block runs, and ends it on the way out, whatever ends the block.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, overload

import attrs

from ._defaults import USE_CLIENT_DEFAULT, Timeout, finite, path_id, shown_arg
from ._events import MappingReads, TaskUpdate
from ._exceptions import (
    InferenceshError,
    ProtocolError,
    SessionEndedError,
    SessionExpiredError,
    SessionNotFoundError,
    UsageError,
)
from ._streaming import StreamingOptions
from ._transport import Transport
from ._wire import preview, usable_id

if TYPE_CHECKING:
    from ._async_client import AsyncInference, TaskStream

__all__ = ["AsyncSession", "SessionInfo", "session_info"]

logger = logging.getLogger("inferencesh.session")

# Keepalives are sent this often, as a share of the session's idle timeout.
_KEEPALIVE_SHARE = 1 / 3
_DEFAULT_IDLE_TIMEOUT = 60.0


@attrs.frozen
class SessionInfo(MappingReads):
    """A session as the server describes it: `status` is `active`, `ended` or `expired`."""

    id: str
    status: str
    app_id: str | None = None
    idle_timeout: float | None = None
    expires_at: str | None = None
    ended_at: str | None = None
    call_count: int = 0
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def active(self) -> bool:
        """Whether the session still takes calls."""
        return self.status == "active"


def session_info(data: Any) -> SessionInfo:
    """The `SessionInfo` of an `AppSessionDTO`; `ProtocolError` when it names no session."""
    if not isinstance(data, Mapping) or not isinstance(data.get("id"), str) or not data["id"]:
        raise ProtocolError(f"expected a session object, got {preview(data)}")
    timeout = data.get("idle_timeout")
    calls = data.get("call_count")

    def text(name: str) -> str | None:
        value = data.get(name)
        return value if isinstance(value, str) and value else None

    return SessionInfo(
        id=data["id"],
        status=text("status") or "unknown",
        app_id=text("app_id"),
        idle_timeout=float(timeout)
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0
        else None,
        expires_at=text("expires_at"),
        ended_at=text("ended_at"),
        call_count=calls if type(calls) is int and calls >= 0 else 0,
        raw=data,
    )


def session_path(session_id: str, suffix: str = "") -> str:
    """The API path of a session (its id checked and quoted)."""
    return f"/sessions/{path_id(session_id, 'a session id')}{suffix}"


class AsyncSession:
    """A session of one app: `async with client.session(app) as session:` then
    `await session.run(input, function=...)` (or `stream=True`) as often as needed.

    Opening runs the app's `run` function to start the worker; while the block runs, the
    session is kept alive; leaving the block ends it. A call on a session the server has
    ended or let expire raises `SessionEndedError` / `SessionExpiredError`.
    """

    def __init__(
        self,
        client: AsyncInference,
        transport: Transport,
        app: str,
        *,
        idle_timeout: int | None = None,
        keepalive: bool = True,
    ) -> None:
        if not isinstance(app, str) or not app:
            raise UsageError(f"an app reference must be a non-empty string, got {shown_arg(app)}")
        if idle_timeout is not None and (
            not isinstance(idle_timeout, int) or finite(idle_timeout) is None or idle_timeout < 1
        ):  # finite: a whole number of seconds a float can hold (not 10**400)
            raise UsageError(
                f"idle_timeout must be whole seconds >= 1, got {shown_arg(idle_timeout)}"
            )
        self._client = client
        self._transport = transport
        self.app = app
        self._idle_timeout = idle_timeout
        self._keepalive = keepalive
        self._id: str | None = None
        self._keeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<AsyncSession {self.app!r} id={self._id!r}>"

    @property
    def id(self) -> str:
        """The session's id (once opened)."""
        if self._id is None:
            raise UsageError("the session is not open: use `async with client.session(app)`")
        return self._id

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.end()
        else:
            await self._end_quietly()  # the block's own error matters more: keep it

    async def _end_quietly(self) -> None:
        session_id = self._id
        try:
            await self.end()
        except InferenceshError as failure:
            logger.warning("could not end session %s after an error: %r", session_id, str(failure))

    async def open(self) -> SessionInfo | None:
        """Start the session (what `async with` does); returns the server's view of it."""
        if self._id is not None:
            raise UsageError("this session is already open")
        params: dict[str, Any] = {"app": self.app, "input": {}, "function": "run"}
        params["session"] = "new"
        if self._idle_timeout is not None:
            params["session_timeout"] = self._idle_timeout
        first = await self._client.run(params)
        session_id = first.session_id
        if not usable_id(session_id):
            raise ProtocolError(f"task {first.id} opened no usable session: {session_id!r:.80}")
        self._id = session_id
        try:
            info = await self.info()
        except BaseException:
            await self._end_quietly()  # opened on the server: not left behind
            raise
        if self._keepalive:
            interval = (info.idle_timeout or self._idle_timeout or _DEFAULT_IDLE_TIMEOUT) * (
                _KEEPALIVE_SHARE
            )
            self._keeper = asyncio.get_running_loop().create_task(
                self._keep_alive(max(interval, 0.1)), name=f"inferencesh keepalive {session_id}"
            )
        return info

    async def _keep_alive(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.keepalive()
            except (SessionEndedError, SessionExpiredError):
                return  # the next call says so; nothing left to keep alive
            except UsageError:
                return  # the client is closed: this task must not outlive it
            except InferenceshError as exc:  # a blip: the next keepalive may get through
                # %r: the server's error text, escaped, so it cannot forge log lines.
                logger.warning("keepalive of session %s failed: %r", self._id, str(exc))

    @overload
    def run(
        self,
        input: Mapping[str, Any],
        *,
        function: str | None = None,
        stream: Literal[True],
        options: StreamingOptions | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> TaskStream: ...

    @overload
    def run(
        self,
        input: Mapping[str, Any],
        *,
        function: str | None = None,
        stream: Literal[False] = False,
        options: StreamingOptions | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> Awaitable[TaskUpdate]: ...

    @overload
    def run(
        self,
        input: Mapping[str, Any],
        *,
        function: str | None = None,
        stream: bool,
        options: StreamingOptions | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> TaskStream | Awaitable[TaskUpdate]: ...

    def run(
        self,
        input: Mapping[str, Any],
        *,
        function: str | None = None,
        stream: bool = False,
        options: StreamingOptions | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> TaskStream | Awaitable[TaskUpdate]:
        """Call the app in this session: as `client.run`, with its `function` (default: the
        app's own default); `timeout` as `client.run`'s."""
        params: dict[str, Any] = {"app": self.app, "input": input, "session": self.id}
        if function is not None:
            params["function"] = function
        if stream:
            return self._client.run(params, stream=True, options=options, timeout=timeout)
        return self._client.run(params, options=options, timeout=timeout)

    async def info(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionInfo:
        """The session as the server sees it now."""
        path = session_path(self.id)
        return session_info(await self._transport.request("GET", path, timeout=timeout))

    async def keepalive(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> SessionInfo:
        """Tell the server the session is still wanted (the block does this by itself)."""
        path = session_path(self.id, "/keepalive")
        data = await self._transport.request("POST", path, idempotent=True, timeout=timeout)
        return session_info(data)

    async def end(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """End the session (what leaving `async with` does); idempotent."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            await asyncio.wait([keeper])  # its cancellation, never the caller's, is absorbed
        if self._id is None:
            return
        session_id, self._id = self._id, None
        try:
            await self._transport.request("DELETE", session_path(session_id), timeout=timeout)
        except (SessionEndedError, SessionExpiredError, SessionNotFoundError) as exc:
            # Already over (or forgotten by the server): what ending it was for.
            logger.debug("session %s was already over: %s", session_id, exc)
