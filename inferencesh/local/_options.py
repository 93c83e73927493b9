"""Settings of the emulator: fixed options and runtime-settable fault injection."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._limits import HttpLimits

if TYPE_CHECKING:
    from ._agents import AgentContext
    from ._apps import AppContext

__all__ = ["AgentFunction", "AppFunction", "EmulatorOptions", "Faults"]

AppFunction = Callable[[dict[str, Any], "AppContext"], Awaitable[Any]]
"""A local app: receives the task input and a context, returns the output."""

AgentFunction = Callable[[str, "AgentContext"], Awaitable[str | None]]
"""A local agent: receives the user's message text and a context, returns more answer text."""


def _non_negative(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{attribute.name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value!r}")


def _positive(_: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    _non_negative(_, attribute, value)
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _optional_non_negative(_: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _non_negative(_, attribute, value)


def _optional_count(_: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be None or an integer >= 1, got {value!r}")


def _optional_path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


def _count(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, got {value!r}")


#: The longest idle timeout a session may have, in seconds.
MAX_SESSION_TIMEOUT = 3600


def is_session_timeout(value: object) -> bool:
    """Whether `value` is a valid session idle timeout: whole seconds, 1 to the maximum."""
    return (
        not isinstance(value, bool) and isinstance(value, int) and 1 <= value <= MAX_SESSION_TIMEOUT
    )


def _session_timeout(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an integer, got {value!r}")
    if not is_session_timeout(value):
        raise ValueError(
            f"{attribute.name} must be from 1 to {MAX_SESSION_TIMEOUT} seconds, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class EmulatorOptions:
    """How a local emulator behaves; frozen, change it with `attrs.evolve`.

    The defaults make the built-in simulated app take about one second and keep faults off.
    `drop_after` and `delay` are only the initial values of `Emulator.faults`, which can be
    changed while the server runs. `transition_delay` is the pause between two status changes
    before and after the app runs (received → queued → ... → running, uploading → completed).

    Agents: `agents` maps `namespace/name` to local agent functions; any other agent reference
    runs the built-in scripted agent (404 with `strict_apps`). `agent_step_delay` paces the
    scripted agent's pieces (None: `min(sim_step_delay, 0.025)`, about 0.5 s a run);
    `tool_timeout` bounds each wait for a client tool result. Chats share the task limits:
    an idle chat is kept `finished_task_ttl` seconds, at most `max_finished_tasks` idle chats,
    and `max_events_per_task` events of each chat's log.

    `http`: the HTTP layer's limits (sizes, timeouts, connections); see `HttpLimits`.

    Bounds (what no client can make the emulator exceed): each event log keeps at most
    `max_event_log_bytes` (older events are dropped; a resume from before them gets a fresh
    snapshot); each task keeps `max_log_bytes` of log lines (then one truncation line);
    `max_live_tasks` tasks and `max_live_chats` busy chats run at once (429 beyond); a task or
    agent run still going after `task_lifetime` seconds is failed; and `memory_budget` bytes of
    inputs, logs, messages and event logs are held in all (ended tasks and idle chats are
    dropped oldest first to make room; 429 when live ones alone fill it).

    Sessions (`POST /apps/run` with `session`): at most `max_sessions` active at once (429
    beyond); a new session's idle timeout is the request's `session_timeout`, else
    `session_timeout` seconds (1 to 3600); ended and expired ones are kept like finished tasks.

    `data_dir`: keep tasks, their event logs and chats in a SQLite database in this folder, so
    they survive a restart (None: in memory only).

    Files (`POST /files`, uploads, app outputs): each at most `max_file_bytes` (413 beyond),
    `max_files_bytes` of them on disk in all (507 when full); in `DATA_DIR/files/` with
    `data_dir`, else in a temporary folder removed when the server stops.
    """

    api_key: str | None = attrs.field(default=None, repr=False)
    sim_steps: int = attrs.field(default=10, validator=_count)
    sim_step_delay: float = attrs.field(default=0.08, validator=_non_negative)
    transition_delay: float = attrs.field(default=0.02, validator=_non_negative)
    strict_apps: bool = False
    heartbeat_interval: float = attrs.field(default=10.0, validator=_positive)
    retry_ms: int = attrs.field(default=1000, validator=_non_negative)
    drop_after: int | None = attrs.field(default=None, validator=_optional_count)
    delay: float = attrs.field(default=0.0, validator=_non_negative)
    finished_task_ttl: float = attrs.field(default=600.0, validator=_non_negative)
    max_finished_tasks: int = attrs.field(default=1000, validator=_count)
    max_events_per_task: int = attrs.field(default=10_000, validator=_count)
    max_event_log_bytes: int = attrs.field(default=256 * 1024, validator=_count)
    max_log_bytes: int = attrs.field(default=64 * 1024, validator=_count)
    max_live_tasks: int = attrs.field(default=2_500, validator=_count)
    max_live_chats: int = attrs.field(default=500, validator=_count)
    task_lifetime: float = attrs.field(default=3600.0, validator=_positive)
    memory_budget: int = attrs.field(default=256 * 1024 * 1024, validator=_count)
    data_dir: str | None = attrs.field(default=None, converter=_optional_path)
    apps: Mapping[str, AppFunction] = attrs.field(factory=dict)
    agents: Mapping[str, AgentFunction] = attrs.field(factory=dict)
    agent_step_delay: float | None = attrs.field(default=None, validator=_optional_non_negative)
    tool_timeout: float = attrs.field(default=30.0, validator=_positive)
    http: HttpLimits = attrs.field(factory=HttpLimits)
    max_sessions: int = attrs.field(default=1000, validator=_count)
    session_timeout: int = attrs.field(default=300, validator=_session_timeout)
    max_file_bytes: int = attrs.field(default=1024**3, validator=_count)
    max_files_bytes: int = attrs.field(default=10 * 1024**3, validator=_count)

    def __attrs_post_init__(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be None (accept any key) or a non-empty string")
        if isinstance(self.retry_ms, bool) or not isinstance(self.retry_ms, int):
            raise TypeError(f"retry_ms must be an integer, got {self.retry_ms!r}")

    @property
    def effective_agent_step_delay(self) -> float:
        """The scripted agent's pause before each piece it writes."""
        if self.agent_step_delay is not None:
            return self.agent_step_delay
        return min(self.sim_step_delay, 0.025)


@attrs.frozen
class FailureFault:
    """One forced error answer: its HTTP status and optional Retry-After seconds."""

    status: int
    retry_after: int | None


class Faults:
    """Fault injection for tests, settable at any time from any thread.

    `drop_after` cuts each stream connection after that many events (read when a connection
    opens), `delay` holds every response for that many seconds, and `fail_next` answers the
    next requests with an error status before any other handling.
    """

    def __init__(self, *, drop_after: int | None = None, delay: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._drop_after: int | None = None
        self._delay = 0.0
        self._failures: list[FailureFault] = []
        self.drop_after = drop_after
        self.delay = delay

    @property
    def drop_after(self) -> int | None:
        """Abort each new stream connection after this many events (None: never)."""
        with self._lock:
            return self._drop_after

    @drop_after.setter
    def drop_after(self, value: int | None) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"drop_after must be None or an integer >= 1, got {value!r}")
        with self._lock:
            self._drop_after = value

    @property
    def delay(self) -> float:
        """Seconds to wait before answering each request."""
        with self._lock:
            return self._delay

    @delay.setter
    def delay(self, value: float) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"delay must be a non-negative number of seconds, got {value!r}")
        with self._lock:
            self._delay = float(value)

    def fail_next(self, count: int, *, status: int = 503, retry_after: int | None = None) -> None:
        """Answer the next `count` requests with `status` (problem+json), before auth.

        `retry_after` (whole seconds, as RFC 9110's delta-seconds) adds a `Retry-After` header.
        Calls add up: each queued failure is used once, in order.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative integer, got {count!r}")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status!r}")
        if retry_after is not None and (
            isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0
        ):
            raise ValueError(f"retry_after must be a whole number of seconds, got {retry_after!r}")
        fault = FailureFault(status, retry_after)
        with self._lock:
            self._failures.extend([fault] * count)

    @property
    def pending_failures(self) -> int:
        """How many forced error answers are still queued."""
        with self._lock:
            return len(self._failures)

    def clear(self) -> None:
        """Turn every fault off."""
        with self._lock:
            self._failures.clear()
            self._drop_after = None
            self._delay = 0.0

    def take_failure(self) -> FailureFault | None:
        """Use up the next queued failure, if any (called once per request)."""
        with self._lock:
            return self._failures.pop(0) if self._failures else None
