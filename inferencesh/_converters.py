"""The SDK's one cattrs converter: wire JSON in, typed events out.

Unknown fields never break parsing; they stay in `raw`. A known field with the wrong shape raises
`ProtocolError` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import attrs
import cattrs

from ._events import Progress, TaskUpdate
from ._exceptions import ProtocolError
from ._status import TaskStatus

__all__ = ["WireTask", "converter", "structure_task"]

converter = cattrs.Converter(forbid_extra_keys=False)


def _structure_status(value: Any, _: type) -> TaskStatus:
    return TaskStatus.parse(value)


def _structure_number(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return value


def _structure_log_line(value: Any, _: type) -> str:
    # Our emulator and SDK send plain strings; the hosted API's task object lists log records
    # whose text is in `content`.
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise TypeError(f"expected a string or a log record with 'content', got {value!r:.80}")


converter.register_structure_hook(TaskStatus, _structure_status)
converter.register_structure_hook(float, _structure_number)
converter.register_structure_hook(str, lambda v, _: _require_str(v))


def _require_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


@attrs.frozen
class _LogLine:
    text: str


converter.register_structure_hook(_LogLine, lambda v, t: _LogLine(_structure_log_line(v, t)))


def _explain(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc, path="$"))
    return str(exc)


class WireTask(NamedTuple):
    """A task payload as it came off the wire, before the stream decides what is new.

    `partial` is True for `{"data": ..., "fields": [...]}` updates, whose `logs` are only the
    new lines; a full snapshot's `logs` are every line so far. `output` is the payload's
    `output` whatever the status.
    """

    id: str
    status: TaskStatus
    logs: tuple[str, ...]
    progress: Progress | None
    output: Any
    error: Any
    session_id: str | None
    raw: Mapping[str, Any]
    partial: bool
    has_logs: bool

    @property
    def update(self) -> TaskUpdate:
        """The payload as a `TaskUpdate` on its own (no knowledge of earlier events)."""
        terminal = self.status.is_terminal
        return TaskUpdate(
            id=self.id,
            status=self.status,
            logs=self.logs,
            progress=self.progress,
            # A running task's output is intermediate; only a finished task has a final one.
            partial_output=None if terminal else self.raw.get("partial_output", self.output),
            output=self.output if terminal else None,
            error=self.error,
            session_id=self.session_id,
            raw=self.raw,
        )


def _field(payload: Mapping[str, Any], name: str, typ: Any) -> Any:
    value = payload[name]
    try:
        if getattr(typ, "__origin__", None) is list and not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return converter.structure(value, typ)
    except Exception as exc:  # cattrs raises several types; all mean "wrong shape"
        raise ProtocolError(f"task payload field {name!r} is malformed: {_explain(exc)}") from exc


def structure_task(obj: Any, *, task_id: str | None = None) -> WireTask:
    """Read one task payload (snapshot or partial update), validating every known field.

    A malformed field raises `ProtocolError` naming it. Streams read well-formed payloads
    directly (`TaskTracker.absorb`) and come here only for anything else.
    """
    partial = type(obj) is dict and "data" in obj and "fields" in obj
    payload = obj["data"] if partial else obj
    if not isinstance(payload, Mapping):
        raise ProtocolError(f"task payload must be a JSON object, got {type(payload).__name__}")
    raw_id = payload.get("id", task_id)
    if type(raw_id) is not str or not raw_id:
        raise ProtocolError(f"task payload field 'id' is malformed: {raw_id!r:.80}")
    logs: tuple[str, ...] = ()
    if payload.get("logs") is not None:
        logs = tuple(line.text for line in _field(payload, "logs", list[_LogLine]))
    progress: Progress | None = None
    if payload.get("progress") is not None:
        progress = _field(payload, "progress", Progress)
    session_id = payload.get("session_id")
    if session_id is not None:
        session_id = _field(payload, "session_id", str) or None
    return WireTask(
        id=raw_id,
        status=TaskStatus.parse(payload.get("status")),
        logs=logs,
        progress=progress,
        output=payload.get("output"),
        error=payload.get("error"),
        session_id=session_id,
        raw=payload,
        partial=partial,
        has_logs="logs" in payload,
    )
