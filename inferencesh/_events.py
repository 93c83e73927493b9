"""Typed events the SDK yields: task updates and their parts.

Plain attrs value objects with no I/O. They also answer dict-style reads (`update["status"]`,
`update.get("logs")`) because code written for the official client reads them that way; for
the keys the streaming reference reads, a type checker knows each read's type (the overloads
under `TYPE_CHECKING` below: they only describe the one implementation in `MappingReads`).
`to_dict()` gives the JSON form of any of them.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, overload

import attrs

from ._status import TaskStatus

if TYPE_CHECKING:
    from ._files import File

__all__ = ["MappingReads", "Progress", "TaskUpdate"]

_MISSING: Any = object()


class MappingReads:
    """Dict-style reads over an attrs class: its fields, then the keys of its `raw` payload.

    A key that is neither raises `KeyError` (or `get` returns the default), as a dict does.
    """

    __slots__ = ()

    def _lookup(self, key: str) -> Any:
        if key in attrs.fields_dict(type(self)) and key != "raw":  # type: ignore[arg-type]
            return getattr(self, key)
        raw = getattr(self, "raw", None)
        if isinstance(raw, Mapping) and key in raw:
            return raw[key]
        return _MISSING

    def __getitem__(self, key: str) -> Any:
        value = self._lookup(key)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value for `key`, or `default` when there is no such key."""
        value = self._lookup(key)
        return default if value is _MISSING else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._lookup(key) is not _MISSING

    def keys(self) -> list[str]:
        """The field names, then any extra keys of the raw payload."""
        names = [name for name in attrs.fields_dict(type(self)) if name != "raw"]  # type: ignore[arg-type]
        raw = getattr(self, "raw", None)
        if isinstance(raw, Mapping):
            names.extend(k for k in raw if k not in names)
        return names

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields, ready for `json.dumps`: statuses as their names, tuples
        as lists, nested values as their own `to_dict()`, mappings as new dicts. `raw` (the
        payload as received) is left out."""
        return {
            field.name: _plain(getattr(self, field.name))
            for field in attrs.fields(type(self))  # type: ignore[arg-type]
            if field.name != "raw"
        }


def _plain(value: Any) -> Any:
    """`value` as JSON-ready data: the one rule `MappingReads.to_dict` applies to each field.

    Iterative, not recursive: a server's output may nest as deep as `loads` accepts, deeper
    than the interpreter's recursion allows."""
    root: list[Any] = [None]
    # Each value still to convert, with the new container and the key it goes to.
    pending: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while pending:
        item, parent, key = pending.pop()
        if isinstance(item, MappingReads):
            parent[key] = item.to_dict()
        elif isinstance(item, enum.Enum):
            parent[key] = item.value
        elif isinstance(item, Mapping):
            new = dict.fromkeys(item)  # the keys in their order; values filled in below
            parent[key] = new
            pending.extend((child, new, name) for name, child in item.items())
        elif isinstance(item, list | tuple):
            items = list(item)
            parent[key] = items
            pending.extend((child, items, index) for index, child in enumerate(items))
        else:
            parent[key] = item
    return root[0]


@attrs.frozen(slots=False)
class Progress(MappingReads):
    """How far a task is: `current` steps of `total`."""

    current: float
    total: float

    @property
    def fraction(self) -> float | None:
        """`current / total` clamped to [0, 1], or None when the total is not positive or
        either is not a finite number (a NaN or an infinity a caller's `Progress` holds)."""
        if any(isinstance(v, float) and not math.isfinite(v) for v in (self.current, self.total)):
            return None
        if not self.total > 0:
            return None
        if self.current <= 0:
            return 0.0
        if self.current >= self.total:
            return 1.0
        try:
            return self.current / self.total
        except OverflowError:  # a float against an int past float range: exactly, then
            return float(Fraction(self.current) / Fraction(self.total))

    if TYPE_CHECKING:  # the types of `progress["current"]` and `progress.get("total")`

        @overload
        def __getitem__(self, key: Literal["current", "total"]) -> float: ...
        @overload
        def __getitem__(self, key: str) -> Any: ...
        def __getitem__(self, key: str) -> Any: ...
        @overload
        def get(self, key: Literal["current", "total"], default: object = None) -> float: ...
        @overload
        def get(self, key: str, default: Any = None) -> Any: ...
        def get(self, key: str, default: Any = None) -> Any:
            """Return the value for `key`, or `default` when there is no such key."""


@attrs.frozen(slots=False)
class TaskUpdate(MappingReads):
    """One step in the life of a task, as a stream yields it.

    `logs` holds only the log lines that are new in this update. `partial_output` is the
    intermediate output of a running task; `output` is the final output, set once the task
    has completed. `raw` is the payload as received, for fields this class does not name.

    Dict-style reads are typed for the fields: `update["status"]` is a `TaskStatus`,
    `update.get("logs")` a tuple of strings. `update["progress"]` is typed `Progress`, what
    it holds when the task reports progress, so that the streaming reference's
    `if update.get("progress"): update["progress"]["current"]` type-checks; at run time it is
    None (never a KeyError) while the task reports none, which `update.get("progress")`
    (typed `Progress | None`) or `update.progress` tells. `update["session_id"]` is typed
    `str` and `update.get("session_id")` `str | None` the same way. Other keys read the raw
    payload and are typed `Any`.
    """

    id: str
    status: TaskStatus = TaskStatus.UNKNOWN
    logs: tuple[str, ...] = ()
    progress: Progress | None = None
    partial_output: Any = None
    output: Any = None
    error: Any = None
    session_id: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def is_terminal(self) -> bool:
        """Whether this update ends the task (completed, failed, cancelled, rejected)."""
        return self.status.is_terminal

    @property
    def files(self) -> tuple[File, ...]:
        """The files in `output` (or, before it, in `partial_output`): each JSON object with
        a string `uri` and `content_type`, as a `File` to `download`."""
        from ._files import find_files  # here: _files builds on this module

        return find_files(self.output if self.output is not None else self.partial_output)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict ready for `json.dumps` (what `inferencesh run --json` prints): the
        fields, with `status` as its name and, next to it, `status_code` as the API's integer;
        `logs` a list, `progress` `{"current": ..., "total": ...}` or None."""
        fields = super().to_dict()
        data = {"id": fields.pop("id"), "status": fields.pop("status")}
        data["status_code"] = self.status.code
        data.update(fields)
        return data

    if TYPE_CHECKING:  # the types of `update["status"]`, `update.get("logs")`, ...

        @overload
        def __getitem__(self, key: Literal["id"]) -> str: ...
        @overload
        def __getitem__(self, key: Literal["status"]) -> TaskStatus: ...
        @overload
        def __getitem__(self, key: Literal["logs"]) -> tuple[str, ...]: ...
        @overload
        def __getitem__(self, key: Literal["progress"]) -> Progress: ...
        @overload
        def __getitem__(self, key: Literal["session_id"]) -> str: ...
        @overload
        def __getitem__(self, key: str) -> Any: ...
        def __getitem__(self, key: str) -> Any: ...
        @overload
        def get(self, key: Literal["id"], default: object = None) -> str: ...
        @overload
        def get(self, key: Literal["status"], default: object = None) -> TaskStatus: ...
        @overload
        def get(self, key: Literal["logs"], default: object = None) -> tuple[str, ...]: ...
        @overload
        def get(self, key: Literal["progress"], default: object = None) -> Progress | None: ...
        @overload
        def get(self, key: Literal["session_id"], default: object = None) -> str | None: ...
        @overload
        def get(self, key: str, default: Any = None) -> Any: ...
        def get(self, key: str, default: Any = None) -> Any:
            """Return the value for `key`, or `default` when there is no such key."""


# Streams build one `TaskUpdate` (and usually one `Progress`) per event, so they use the two
# constructors below instead of the attrs-generated `__init__`, which costs about three times as
# much. The classes are frozen dict classes: the constructors fill the new instance's `__dict__`
# directly, and a field left at its default is not stored at all but read from the class, where
# the defaults are set once here. The result is equal to, and indistinguishable from, the same
# instance built by `__init__` (tests/test_events.py checks that property).
def _set_class_defaults(cls: type) -> None:
    for field in attrs.fields(cls):
        if field.default is not attrs.NOTHING and not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            setattr(cls, field.name, field.default)


_set_class_defaults(TaskUpdate)

_new = object.__new__


def new_progress(current: float, total: float) -> Progress:
    """`Progress(current, total)`, without the cost of the generated `__init__`."""
    progress: Progress = _new(Progress)
    fields = progress.__dict__
    fields["current"] = current
    fields["total"] = total
    return progress


def new_update(
    id: str,
    status: TaskStatus,
    logs: tuple[str, ...],
    progress: Progress | None,
    partial_output: Any,
    output: Any,
    error: Any,
    session_id: str | None,
    raw: Mapping[str, Any],
) -> TaskUpdate:
    """`TaskUpdate(...)` with every field given, without the cost of the generated `__init__`."""
    update: TaskUpdate = _new(TaskUpdate)
    fields = update.__dict__
    fields["id"] = id
    fields["status"] = status
    fields["raw"] = raw
    if logs:
        fields["logs"] = logs
    if progress is not None:
        fields["progress"] = progress
    if partial_output is not None:
        fields["partial_output"] = partial_output
    if output is not None:
        fields["output"] = output
    if error is not None:
        fields["error"] = error
    if session_id is not None:
        fields["session_id"] = session_id
    return update
