"""The SDK's one cattrs converter: wire JSON in, typed events out.

Unknown fields never break parsing; they stay in `raw`. A known field with the wrong shape raises
`ProtocolError` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


@attrs.frozen
class WireTask:
    """A task payload as it came off the wire, before the stream decides what is new.

    `partial` is True for `{"data": ..., "fields": [...]}` updates, whose `logs` are only the
    new lines; a full snapshot's `logs` are every line so far.
    """

    update: TaskUpdate
    partial: bool
    has_logs: bool


def structure_task(obj: Any, *, task_id: str | None = None) -> WireTask:
    """Turn one task payload (snapshot or partial update) into a `WireTask`.

    Raises `ProtocolError` naming the field when a known field has the wrong shape.
    """
    partial = isinstance(obj, Mapping) and "data" in obj and "fields" in obj
    payload = obj["data"] if partial else obj
    if not isinstance(payload, Mapping):
        raise ProtocolError(f"task payload must be a JSON object, got {type(payload).__name__}")

    def field(name: str, typ: Any) -> Any:
        value = payload[name]
        try:
            if getattr(typ, "__origin__", None) is list and not isinstance(value, list):
                raise TypeError(f"expected a list, got {type(value).__name__}")
            return converter.structure(value, typ)
        except Exception as exc:  # cattrs raises several types; all mean "wrong shape"
            raise ProtocolError(
                f"task payload field {name!r} is malformed: {_explain(exc)}"
            ) from exc

    raw_id = payload.get("id", task_id)
    if not isinstance(raw_id, str) or not raw_id:
        raise ProtocolError(f"task payload field 'id' is malformed: {raw_id!r:.80}")
    status = TaskStatus.parse(payload.get("status"))
    logs: tuple[str, ...] = ()
    raw_logs = payload.get("logs")
    if raw_logs is not None:
        # Fast path for the common shape (a list of strings); cattrs for everything else.
        if type(raw_logs) is list and all(type(line) is str for line in raw_logs):
            logs = tuple(raw_logs)
        else:
            logs = tuple(line.text for line in field("logs", list[_LogLine]))
    raw_progress = payload.get("progress")
    progress: Progress | None = None
    if raw_progress is not None:
        current = raw_progress.get("current") if type(raw_progress) is dict else None
        total = raw_progress.get("total") if type(raw_progress) is dict else None
        if type(current) in (int, float) and type(total) in (int, float):
            progress = Progress(current, total)  # type: ignore[arg-type]
        else:
            progress = field("progress", Progress)
    output = payload.get("output")
    session_id = field("session_id", str) if payload.get("session_id") not in (None, "") else None
    update = TaskUpdate(
        id=raw_id,
        status=status,
        logs=logs,
        progress=progress,
        # A running task's output is intermediate; only a finished task has its final output.
        partial_output=None if status.is_terminal else payload.get("partial_output", output),
        output=output if status.is_terminal else None,
        error=payload.get("error"),
        session_id=session_id,
        raw=payload,
    )
    return WireTask(update=update, partial=partial, has_logs="logs" in payload)
