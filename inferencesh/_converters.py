"""The one place a task payload is structured: wire JSON in, a typed `TaskEvent` out.

Stream events, the answer of `POST /apps/run` and of `GET /tasks/{id}` all come through
`structure_task`. A payload in the exact shapes the API sends is read directly; anything else
goes through the SDK's cattrs converter, which validates every known field and raises
`ProtocolError` naming a malformed one. Unknown fields never break parsing; they stay in `raw`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import attrs
import cattrs

from ._events import Progress, new_progress
from ._exceptions import ProtocolError
from ._status import _BY_CODE, TaskStatus
from ._wire import preview

__all__ = ["DELTA", "PARTIAL", "SNAPSHOT", "TaskEvent", "converter", "structure_task"]

logger = logging.getLogger("inferencesh.stream")

SNAPSHOT: Final = 0
"""A full task object: every field is the whole current value (logs: all lines so far)."""
PARTIAL: Final = 1
"""A `{"data": ..., "fields": [...]}` update: its logs are only the lines new since the last."""
DELTA: Final = 2
"""An `{"event": "delta"}` piece of an LLM answer, to fold into what came before."""

_ABSENT: Any = object()
_TERMINAL = frozenset(status for status in TaskStatus if status.is_terminal)
_UNKNOWN = TaskStatus.UNKNOWN


class TaskEvent(NamedTuple):
    """One structured task payload, before anyone decides what in it is new.

    `logs` is None when the payload has no `logs` field. `output` is the payload's `output`
    whatever the status (for a DELTA, the delta itself); `partial_output` is its
    `partial_output` field, or `_ABSENT`. `absolute` and `final` are what a stream reader needs.
    """

    kind: int
    absolute: bool
    final: bool
    status: TaskStatus | None
    logs: Sequence[str] | None
    progress: Progress | None
    output: Any
    partial_output: Any
    error: Any
    session_id: str | None
    raw: Mapping[str, Any]


# Streams build one event per payload: the tuple constructor, without NamedTuple's Python-level
# `__new__`, costs half as much and builds the same thing.
_new_event = tuple.__new__


def structure_task(obj: Any, task_id: str) -> TaskEvent | None:
    """Read one payload of task `task_id`'s stream, or its REST answer.

    Returns None for a payload that carries nothing (a heartbeat, a named event other than
    `delta` without `fields`). Raises `ProtocolError` for a malformed payload, including one
    that names another task.
    """
    if type(obj) is not dict:
        if not isinstance(obj, Mapping):
            raise ProtocolError(f"task payload must be a JSON object, got {type(obj).__name__}")
        obj = dict(obj)
    if ("type" in obj or "event" in obj) and _carries_nothing(obj, task_id):
        return None
    if "fields" in obj and "data" in obj:
        kind, payload = PARTIAL, obj["data"]
        if type(payload) is not dict:
            if not isinstance(payload, Mapping):
                raise ProtocolError(
                    f"a partial update's data must be a JSON object, got {preview(payload)}"
                )
            payload = dict(payload)
    elif obj.get("event") == "delta":
        return _delta(obj)
    else:
        kind, payload = SNAPSHOT, obj
    get = payload.get
    found_id = get("id", task_id)
    if found_id != task_id:
        raise ProtocolError(
            f"task payload field 'id' names another task ({preview(found_id)}) than {task_id}"
        )
    code = get("status")
    logs = get("logs")
    progress = get("progress")
    session_id = get("session_id")
    if (
        (type(code) is int or code is None)
        and (logs is None or (type(logs) is list and all(map(isinstance, logs, _STR))))
        and (session_id is None or type(session_id) is str)
        and (progress is None or (progress := _plain_progress(progress)) is not None)
    ):
        status = None if code is None else _BY_CODE.get(code, _UNKNOWN)
        return _task_event(kind, status, logs, progress, session_id or None, payload)
    return validated_task(kind, payload)


_STR = itertools.repeat(str)


def _carries_nothing(obj: dict[str, Any], task_id: str) -> bool:
    """Whether a payload with `type` or `event` is one to skip: a heartbeat, or a named event
    other than a delta that is not a partial update either."""
    if obj.get("type") == "heartbeat":
        return True
    event = obj.get("event")
    if event is None or event == "delta" or "fields" in obj:
        return False
    logger.debug("ignoring a %s event on task %s", preview(event), task_id)
    return True


def _plain_progress(value: Any) -> Progress | None:
    """`{"current": n, "total": n}` with two finite numbers, as a `Progress`; else None."""
    if type(value) is not dict:
        return None
    current: Any = value.get("current")
    total: Any = value.get("total")
    if type(current) is int and type(total) is int:
        return new_progress(current, total)
    if _finite_number(current) and _finite_number(total):
        return new_progress(current, total)
    return None


def _finite_number(value: Any) -> bool:
    # An int of any size is finite (and `math.isfinite` cannot take one past float range).
    return type(value) is int or (type(value) is float and math.isfinite(value))


def validated_task(kind: int, payload: Mapping[str, Any]) -> TaskEvent:
    """The slow path: every known field through cattrs, with errors that name the field.
    `structure_task` takes it for any payload it cannot read directly."""
    status = None
    if payload.get("status") is not None:
        status = TaskStatus.parse(payload["status"])
    logs: tuple[str, ...] | None = None
    if payload.get("logs") is not None:
        logs = tuple(line.text for line in _field(payload, "logs", list[_LogLine]))
    progress: Progress | None = None
    if payload.get("progress") is not None:
        progress = _field(payload, "progress", Progress)
    session_id = payload.get("session_id")
    if session_id is not None:
        session_id = _field(payload, "session_id", str) or None
    return _task_event(kind, status, logs, progress, session_id, payload)


def _task_event(
    kind: int,
    status: TaskStatus | None,
    logs: Sequence[str] | None,
    progress: Progress | None,
    session_id: str | None,
    payload: Mapping[str, Any],
) -> TaskEvent:
    """The event, from the fields read and checked; the rest of the payload as it is."""
    get = payload.get
    return _new_event(
        TaskEvent,
        (
            kind,
            kind == SNAPSHOT,
            status in _TERMINAL,
            status,
            logs,
            progress,
            get("output"),
            get("partial_output", _ABSENT),
            get("error"),
            session_id,
            payload,
        ),
    )


def _delta(obj: Mapping[str, Any]) -> TaskEvent | None:
    data = obj.get("data")
    delta = data.get("delta") if isinstance(data, Mapping) else None
    if not delta or not isinstance(delta, Mapping):
        return None  # an empty delta changes nothing (protocol 4.4)
    return TaskEvent(DELTA, False, False, None, None, None, delta, _ABSENT, None, None, obj)


# -- the cattrs converter ------------------------------------------------------------------------

converter = cattrs.Converter(forbid_extra_keys=False)


def _structure_number(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return value


def _require_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


@attrs.frozen
class _LogLine:
    text: str


def _structure_log_line(value: Any, _: type) -> _LogLine:
    # Our emulator and SDK send plain strings; the hosted API's task object lists log records
    # whose text is in `content`.
    if isinstance(value, str):
        return _LogLine(value)
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return _LogLine(value["content"])
    raise TypeError(f"expected a string or a log record with 'content', got {preview(value)}")


converter.register_structure_hook(TaskStatus, lambda value, _: TaskStatus.parse(value))
converter.register_structure_hook(float, _structure_number)
converter.register_structure_hook(str, _require_str)
converter.register_structure_hook(_LogLine, _structure_log_line)


def _explain(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, path="$"))
    return str(exc)


def _field(payload: Mapping[str, Any], name: str, typ: Any) -> Any:
    value = payload[name]
    try:
        if getattr(typ, "__origin__", None) is list and not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return converter.structure(value, typ)
    except Exception as exc:  # cattrs raises several types; all mean "wrong shape"
        raise ProtocolError(f"task payload field {name!r} is malformed: {_explain(exc)}") from exc
