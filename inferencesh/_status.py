"""Task statuses of the hosted API, with their wire codes."""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["TaskStatus"]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life, as the hosted API numbers it.

    A member equals its lower-case name (`TaskStatus.QUEUED == "queued"`) and formats as it,
    so code written against plain strings keeps working. `code` is the integer the API sends.
    `TaskStatus.parse` accepts either form and never raises: unknown values become `UNKNOWN`.
    The older name `SCHEDULED` is an alias of `DISPATCHED` (code 3).
    """

    UNKNOWN = "unknown"
    RECEIVED = "received"
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    PREPARING = "preparing"
    SERVING = "serving"
    SETTING_UP = "setting_up"
    RUNNING = "running"
    CANCELLING = "cancelling"
    UPLOADING = "uploading"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    # The seed document's name for code 3; an alias, so `TaskStatus.SCHEDULED is DISPATCHED`.
    SCHEDULED = "dispatched"

    @property
    def code(self) -> int:
        """The integer the hosted API uses for this status."""
        return _CODES[self]

    @property
    def is_terminal(self) -> bool:
        """Whether the task can no longer change (completed, failed, cancelled, rejected)."""
        return _CODES[self] >= 10

    @property
    def rank(self) -> int:
        """Position in the life of a task; a task's rank never decreases.

        Equal to `code` except that CANCELLING may follow UPLOADING, so it ranks after it.
        """
        return _RANKS.get(self, _CODES[self])

    @classmethod
    def parse(cls, value: Any) -> TaskStatus:
        """Read a status from a wire code, a name, or a member; anything unknown is UNKNOWN."""
        if type(value) is int:  # the wire's usual form, first because it is the hot path
            return _BY_CODE.get(value, cls.UNKNOWN)
        if isinstance(value, TaskStatus):
            return value
        if isinstance(value, bool):
            return cls.UNKNOWN
        if isinstance(value, int):
            return _BY_CODE.get(value, cls.UNKNOWN)
        if isinstance(value, str):
            text = value.strip().lower().replace("-", "_")
            if text.isascii() and text.isdecimal() and len(text) <= 4:
                return _BY_CODE.get(int(text), cls.UNKNOWN)
            return _BY_NAME.get(text, cls.UNKNOWN)
        return cls.UNKNOWN

    @classmethod
    def _missing_(cls, value: object) -> TaskStatus:
        return cls.parse(value)


_CODES: dict[TaskStatus, int] = {
    TaskStatus.UNKNOWN: 0,
    TaskStatus.RECEIVED: 1,
    TaskStatus.QUEUED: 2,
    TaskStatus.DISPATCHED: 3,
    TaskStatus.PREPARING: 4,
    TaskStatus.SERVING: 5,
    TaskStatus.SETTING_UP: 6,
    TaskStatus.RUNNING: 7,
    TaskStatus.CANCELLING: 8,
    TaskStatus.UPLOADING: 9,
    TaskStatus.COMPLETED: 10,
    TaskStatus.FAILED: 11,
    TaskStatus.CANCELLED: 12,
    TaskStatus.REJECTED: 13,
}
_RANKS = {TaskStatus.UPLOADING: 8, TaskStatus.CANCELLING: 9}
_BY_CODE = {code: status for status, code in _CODES.items()}
_BY_NAME: dict[str, TaskStatus] = {status.value: status for status in _CODES}
_BY_NAME.update(
    {
        "scheduled": TaskStatus.DISPATCHED,
        "canceled": TaskStatus.CANCELLED,
        "canceling": TaskStatus.CANCELLING,
        "setup": TaskStatus.SETTING_UP,
    }
)
