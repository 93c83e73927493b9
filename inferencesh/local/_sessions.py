"""App sessions: a worker kept for one app across calls, as the hosted API's `/sessions`.

`POST /apps/run` with `"session": "new"` opens a session bound to the app (`namespace/name`)
and runs its first call; `"session": "<id>"` runs another call in it. A session is `active`
until it is ended (`DELETE /sessions/{id}`) or has been idle (no call running or queued, no
call started, no keepalive) for its `idle_timeout`; then it is `ended` or `expired`, and calls
get 410. Its calls run one at a time, in order: a call made while another runs waits its turn
as a task still `received` (at most the session's idle timeout, then it fails), and a session
holds at most `MAX_SESSION_CALLS` calls running or waiting (409 `session_busy` beyond).

Bounds: at most `max_live` active sessions (429 beyond); ended and expired sessions are kept
`ttl` seconds and at most `max_ended` of them, then forgotten (404). Sessions live in memory
only, even with a data folder: after a restart every session is unknown.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from .._status import TaskStatus
from ._apps import AppRef, InvalidField
from ._budget import Overloaded, Retention
from ._hub import ChangeHub
from ._options import MAX_SESSION_TIMEOUT, is_session_timeout

if TYPE_CHECKING:
    from ._tasks import Task

__all__ = [
    "MAX_LISTED_SESSIONS",
    "MAX_SESSION_CALLS",
    "MAX_SESSION_TIMEOUT",
    "CallRequest",
    "Session",
    "SessionError",
    "SessionStore",
    "parse_call",
]

#: Calls one session holds at once, the running one included; more get 409 `session_busy`.
MAX_SESSION_CALLS = 16
#: `GET /sessions` answers at most this many sessions, the most recent first.
MAX_LISTED_SESSIONS = 100

_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_FUNCTION = 100
_MAX_SESSION_ID = 128


class SessionError(Exception):
    """A call or session request refused: its HTTP status, error code and detail."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@attrs.frozen
class CallRequest:
    """The session-related keys of a `POST /apps/run` body, validated."""

    function: str | None
    session: str | None
    session_timeout: int | None


def parse_call(body: dict[str, Any], ref: AppRef) -> CallRequest:
    """Read `function`, `session` and `session_timeout` (`InvalidField` when malformed).

    `function` may also come from the app reference (`ns/name@version:function`); naming two
    different functions is an error.
    """
    function = body.get("function")
    if function is not None and (
        not isinstance(function, str)
        or len(function) > _MAX_FUNCTION
        or not _FUNCTION.fullmatch(function)
    ):
        raise InvalidField("function", f"must be a function name of at most {_MAX_FUNCTION} "
                           "characters (letters, digits, _)")  # fmt: skip
    if function is not None and ref.function is not None and function != ref.function:
        raise InvalidField("function", f"is {function!r} but the app names {ref.function!r}")
    session = body.get("session")
    if session is not None and (
        not isinstance(session, str) or not session or len(session) > _MAX_SESSION_ID
    ):
        raise InvalidField("session", 'must be "new" or a session id')
    timeout = body.get("session_timeout")
    if timeout is not None and not is_session_timeout(timeout):
        raise InvalidField(
            "session_timeout",
            f"must be a whole number of seconds from 1 to {MAX_SESSION_TIMEOUT}, "
            f"got {timeout!r:.40}",
        )
    return CallRequest(function or ref.function, session, timeout)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Session:
    """One app session: its state (`to_dict` is the `AppSessionDTO`) and its calls.

    Mutated on the server's loop under the hub's lock; `run_call` takes the calls' turns.
    """

    def __init__(self, *, app_id: str, app_version_id: str | None, idle_timeout: int) -> None:
        token = secrets.token_hex(10)
        self.id = f"sess_{token}"
        self.short_id = token[:8]
        self.worker_id = f"worker_{secrets.token_hex(6)}"
        self.app_id = app_id
        self.app_version_id = app_version_id
        self.idle_timeout = idle_timeout
        self.status = "active"
        self.created_at = self.updated_at = self._active_wall = datetime.now(UTC)
        self._active_mono = time.monotonic()
        self.ended_at: datetime | None = None
        self.task_id: str | None = None
        self.call_count = 0
        self.last_call_at: datetime | None = None
        self.calls: dict[str, Task] = {}  # running or waiting, in the order they were made
        self._turn = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.app_id} {self.status} calls={self.call_count}>"

    @property
    def busy(self) -> bool:
        """Whether a call is running or waiting (a busy session does not expire)."""
        return bool(self.calls)

    def deadline(self) -> float | None:
        """When (monotonic) an active, idle session expires; None if ended or busy."""
        if self.status != "active" or self.busy:
            return None
        return self._active_mono + self.idle_timeout

    def touch(self) -> None:
        """Count activity now: the idle timeout starts again."""
        self._active_mono = time.monotonic()
        self.updated_at = self._active_wall = datetime.now(UTC)

    def finish(self, status: str, *, mono: float, wall: datetime) -> None:
        """Mark the session ended or expired at the given moment."""
        self.status = status
        self.updated_at = self.ended_at = wall
        self._active_mono = mono

    def expires_wall(self) -> datetime:
        """When the session expires (or ended); a busy one a whole idle timeout from now."""
        if self.ended_at is not None:
            return self.ended_at
        if self.busy:
            return datetime.now(UTC) + timedelta(seconds=self.idle_timeout)
        return self._active_wall + timedelta(seconds=self.idle_timeout)

    def to_dict(self) -> dict[str, Any]:
        """The `AppSessionDTO` of the hosted API."""
        expires = self.expires_wall()
        return {
            "id": self.id,
            "short_id": self.short_id,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "worker_id": self.worker_id,
            "app_id": self.app_id,
            "app_version_id": self.app_version_id,
            "status": self.status,
            "expires_at": _iso(expires),
            "ended_at": _iso(self.ended_at) if self.ended_at is not None else None,
            "task_id": self.task_id,
            "call_count": self.call_count,
            "last_call_at": _iso(self.last_call_at) if self.last_call_at is not None else None,
            "idle_timeout": self.idle_timeout,
        }

    async def run_call(self, task: Task, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run one call (`start()`, the task's runner) once the earlier calls are done.

        The call waits as a task still `received`; if its turn does not come within the
        session's idle timeout, the task fails saying the session was busy.
        """
        try:
            async with asyncio.timeout(self.idle_timeout):
                await self._turn.acquire()
        except TimeoutError:
            task.transition(
                TaskStatus.FAILED,
                error=f"session busy: session {self.id}'s earlier calls did not finish within "
                f"its idle timeout ({self.idle_timeout} s)",
            )
            return
        try:
            await start()
        finally:
            self._turn.release()


class SessionStore:
    """All sessions by id, most recent last, and what bounds them: `max_live` active ones,
    ended or expired ones for `ttl` seconds and at most `max_ended`.

    Expiry happens when a session is read and on the emulator's housekeeping
    (`expire`, `next_due_in`); `on_change` wakes the housekeeping when a new deadline may be
    the next one due.
    """

    def __init__(
        self,
        hub: ChangeHub,
        *,
        max_live: int,
        default_timeout: int,
        ttl: float,
        max_ended: int,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.hub = hub
        self.default_timeout = default_timeout
        self._max_live = max_live
        self._sessions: dict[str, Session] = {}
        self._active: dict[str, Session] = {}
        self._ended = Retention(ttl=ttl, max_count=max_ended, drop=self._forget)
        self._on_change = on_change

    def __len__(self) -> int:
        with self.hub.lock:
            return len(self._sessions)

    @property
    def active(self) -> int:
        """How many sessions are active, as of the last expiry sweep or read."""
        with self.hub.lock:
            return len(self._active)

    def _changed(self) -> None:
        self.hub.notify()
        if self._on_change is not None:
            self._on_change()

    # -- reading ---------------------------------------------------------------------------

    def get(self, session_id: str) -> Session | None:
        """The session with this id (its expiry checked now), unless unknown or forgotten."""
        with self.hub.lock:
            session = self._sessions.get(session_id)
            if session is not None and self._refresh(session, time.monotonic()):
                self.hub.notify()
            return session

    def snapshot(self, session_id: str) -> dict[str, Any] | None:
        """The session's `AppSessionDTO`, or None if unknown or forgotten."""
        with self.hub.lock:
            session = self.get(session_id)
            return session.to_dict() if session is not None else None

    def list(self, limit: int = MAX_LISTED_SESSIONS) -> list[dict[str, Any]]:
        """The most recent sessions first, at most `limit` of them."""
        with self.hub.lock:
            self.expire()
            recent = list(reversed(self._sessions.values()))[:limit]
            return [session.to_dict() for session in recent]

    # -- calls ---------------------------------------------------------------------------------

    def open(self, request: CallRequest, ref: AppRef) -> Session | None:
        """The session a `POST /apps/run` call runs in: a new one, an existing one, or None.

        Raises `Overloaded` at the cap of active sessions, and `SessionError` for an unknown
        (404), ended or expired (410) or busy (409) session, or one of another app (400).
        """
        if request.session is None:
            return None
        if request.session == "new":
            timeout = request.session_timeout or self.default_timeout
            return self.create(ref, timeout)
        session_id = request.session
        session = self._usable(session_id)
        if session.app_id != ref.key:
            raise SessionError(
                400,
                "session_app_mismatch",
                f"session {session_id} belongs to app {session.app_id}, not {ref.key}",
            )
        version = session.app_version_id
        if ref.version is not None and version is not None and ref.version != version:
            raise SessionError(
                400,
                "session_app_mismatch",
                f"session {session_id} runs {ref.key}@{version}, not @{ref.version}",
            )
        if len(session.calls) >= MAX_SESSION_CALLS:
            raise SessionError(
                409,
                "session_busy",
                f"session {session_id} already holds {MAX_SESSION_CALLS} calls running or "
                "waiting; retry when some have finished",
            )
        return session

    def create(self, ref: AppRef, idle_timeout: int) -> Session:
        """A new active session of app `ref`, if the cap allows (`Overloaded` if not)."""
        with self.hub.lock:
            if len(self._active) >= self._max_live:
                self.expire()
            if len(self._active) >= self._max_live:
                raise Overloaded(
                    f"too many sessions: the emulator keeps at most {self._max_live} active "
                    "sessions; end some (DELETE /sessions/{id}) or retry"
                )
            session = Session(app_id=ref.key, app_version_id=ref.version, idle_timeout=idle_timeout)
            self._sessions[session.id] = session
            self._active[session.id] = session
        self._changed()
        return session

    def abandon(self, session: Session) -> None:
        """Forget a session just created whose first call could not be started."""
        with self.hub.lock:
            if session.call_count == 0:
                self._sessions.pop(session.id, None)
                self._active.pop(session.id, None)

    def begin_call(self, session: Session, task: Task) -> None:
        """Count a call made in `session` (its task was created)."""
        with self.hub.lock:
            session.calls[task.id] = task
            session.call_count += 1
            session.touch()
            session.last_call_at = session.updated_at
            if session.task_id is None:
                session.task_id = task.id
        self._changed()

    def call_done(self, session: Session, task: Task) -> None:
        """A call's runner has stopped: the session is idle from now if it was its last."""
        with self.hub.lock:
            session.calls.pop(task.id, None)
            if session.status == "active":
                session.touch()
        self._changed()

    # -- lifecycle -------------------------------------------------------------------------

    def keepalive(self, session_id: str) -> Session:
        """Restart an active session's idle timeout (`SessionError` 404 or 410 otherwise)."""
        with self.hub.lock:
            session = self._usable(session_id)
            session.touch()
        self._changed()
        return session

    def end(self, session_id: str) -> Session:
        """End a session (`SessionError` 404 if unknown); its calls still going fail.

        Ending an ended or expired session changes nothing.
        """
        with self.hub.lock:
            session = self.get(session_id)
            if session is None:
                raise SessionError(404, "session_not_found", f"session {session_id} not found")
            if session.status != "active":
                return session
            self._finish(session, "ended", time.monotonic(), datetime.now(UTC))
            calls = list(session.calls.values())
        for task in calls:
            task.reap(f"session {session_id} was ended")
        self._changed()
        return session

    def _usable(self, session_id: str) -> Session:
        session = self.get(session_id)
        if session is None:
            raise SessionError(404, "session_not_found", f"session {session_id} not found")
        if session.status == "ended":
            raise SessionError(410, "session_ended", f"session {session_id} has been ended")
        if session.status == "expired":
            raise SessionError(
                410,
                "session_expired",
                f"session {session_id} expired after {session.idle_timeout} s without calls",
            )
        return session

    def _finish(self, session: Session, status: str, mono: float, wall: datetime) -> None:
        session.finish(status, mono=mono, wall=wall)
        self._active.pop(session.id, None)
        self._ended.add(session.id, mono)

    def _refresh(self, session: Session, now: float) -> bool:
        """Expire `session` if its idle time is up; whether it did."""
        deadline = session.deadline()
        if deadline is None or now < deadline:
            return False
        self._finish(session, "expired", deadline, session.expires_wall())
        return True

    def _forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    # -- housekeeping ------------------------------------------------------------------------

    def expire(self) -> int:
        """Expire idle sessions whose time is up and forget ended ones past their ttl or over
        the cap; return how many changed."""
        with self.hub.lock:
            now = time.monotonic()
            changed = sum(self._refresh(s, now) for s in list(self._active.values()))
            changed += self._ended.expire()
        if changed:
            self.hub.notify()
        return changed

    def next_due_in(self) -> float | None:
        """Seconds until the next session expires or an ended one is forgotten."""
        with self.hub.lock:
            now = time.monotonic()
            dues = [due - now for s in self._active.values() if (due := s.deadline()) is not None]
            forget = self._ended.next_due_in()
            if forget is not None:
                dues.append(forget)
            return max(0.0, min(dues)) if dues else None
