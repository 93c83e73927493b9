"""Reading what a server sends: JSON within bounds, and values safe to send back.

`loads` is the only JSON decoder the client uses, for REST answers and stream events alike.
Whatever the bytes, it returns a value our code (and the caller's `repr`, `==` or `json.dumps`)
can handle without recursing too deep, or raises `ProtocolError`.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable
from typing import Any, TypeGuard

from ._exceptions import ProtocolError

__all__ = [
    "MAX_JSON_DEPTH",
    "header_safe",
    "is_blank",
    "loads",
    "preview",
    "split_lines",
    "usable_id",
]

MAX_JSON_DEPTH = 512
"""The deepest nesting of arrays and objects accepted in anything a server sends."""

# A text shorter than this cannot nest deeper than MAX_JSON_DEPTH ("[" and "]" per level).
_DEPTH_CHECK_FROM = 2 * MAX_JSON_DEPTH

Buffer = bytes | bytearray | memoryview | str


def _stdlib_decode(data: Buffer) -> Any:
    """The standard library's decoder, held to what orjson accepts."""
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    value = json.loads(
        data, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_orjson_int
    )
    # Only a `\uD8xx`-style escape can make a lone surrogate (UTF-8 cannot carry one), and
    # orjson refuses it: so does this decoder.
    escape = "\\ud" if isinstance(data, str) else b"\\ud"
    if escape in data.lower() and _holds_lone_surrogate(value):  # type: ignore[operator]
        raise ValueError("a string holds a lone surrogate (an unpaired \\uD800-\\uDFFF escape)")
    return value


def _holds_lone_surrogate(value: Any) -> bool:
    # Iterative, as `_too_deep`: the value may nest as deep as the text allows.
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            stack.extend(item)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
        elif type(item) is str:
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number is infinity when parsed as double")
    return value


# The integers orjson gives as ints; past them it gives a float, and refuses one past float range.
_INT_DIGITS = 20
_INT_RANGE = range(-(2**63), 2**64)


def _orjson_int(text: str) -> int | float:
    """An integer as orjson reads it: an int within 64 bits, else a finite float. So a
    400-digit integer is refused by either decoder, and no value a server sends overflows
    `float()` (or costs a quadratic `int()`) later."""
    if len(text) <= _INT_DIGITS:
        value = int(text)
        if value in _INT_RANGE:
            return value
    return _finite_float(text)


_decode: Callable[[Buffer], Any] = _stdlib_decode
_ERRORS: tuple[type[Exception], ...] = (ValueError, RecursionError)
try:  # orjson is an optional speed-up; both give the same values for JSON within our bounds.
    import orjson

    _decode = orjson.loads
    _ERRORS = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - exercised when the speedups extra is absent
    pass


def loads(data: Buffer) -> Any:
    """Decode one JSON text. Raises `ProtocolError` for anything that is not JSON, nests
    deeper than `MAX_JSON_DEPTH`, or holds a non-finite number. Invalid UTF-8 is decoded with
    replacement characters, as an SSE or NDJSON reader decodes text."""
    try:
        value = _decode(data)
    except _ERRORS as exc:
        if not isinstance(data, str) and not _is_utf8(data):
            return loads(bytes(data).decode("utf-8", "replace"))
        raise ProtocolError(f"the server sent invalid JSON ({exc}): {preview(data)}") from None
    if len(data) >= _DEPTH_CHECK_FROM and _too_deep(value):
        raise ProtocolError(f"the server sent JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _is_utf8(data: bytes | bytearray | memoryview) -> bool:
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _too_deep(value: Any) -> bool:
    # Containers only: the cost follows the number of arrays and objects, not the bytes.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else ()
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth >= MAX_JSON_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def preview(data: object, limit: int = 80) -> str:
    """A short, printable excerpt of something a server sent, for error messages (bounded in
    size and nesting, whatever the value)."""
    if isinstance(data, memoryview | bytearray):
        data = bytes(data[: limit + 1])
    text = repr(data[: limit + 1]) if isinstance(data, bytes | str) else reprlib.repr(data)
    return text if len(text) <= limit else text[:limit] + "..."


_MAX_HEADER_VALUE = 1024


def header_safe(value: str) -> bool:
    """Whether `value` can be sent as an HTTP header value exactly as it is: printable ASCII,
    no surrounding whitespace, at most 1 KiB."""
    return (
        0 < len(value) <= _MAX_HEADER_VALUE
        and value.isascii()
        and value.isprintable()
        and value.strip() == value
    )


# How many lines `split_lines` looks at before it decides how to cut a chunk; past which
# average length the chunk's lines are cut as views rather than split out; and the length from
# which a line is a view (shorter ones are copied: a small copy is cheaper than a view).
_FEW_LINES = 32
_LONG_LINES = 512
_VIEW_FROM = 1024

Line = bytes | memoryview


def split_lines(chunk: bytes) -> tuple[list[Line], bytes, bool]:
    """The complete lines of `chunk` (without their LF), the unterminated rest, and whether
    every line is `bytes` (none a view).

    Many short lines are copied out by one C-level split. Long lines (large events: an image
    preview) are cut as views of the chunk instead, found with `find` (memchr speed): copying
    them out would allocate and fill a fresh block per line. A chunk of more than `_FEW_LINES`
    lines that are short on average is split; otherwise its lines longer than `_VIEW_FROM`
    are views and the others copies.
    """
    ends: list[int] = []
    find = chunk.find
    at = find(b"\n")
    while at >= 0:
        ends.append(at)
        if len(ends) == _FEW_LINES and at < _FEW_LINES * _LONG_LINES:
            lines: list[Line] = list(chunk.split(b"\n"))
            tail = lines.pop()
            assert isinstance(tail, bytes)
            return lines, tail, True
        at = find(b"\n", at + 1)
    if not ends:
        return [], chunk, True
    view = memoryview(chunk)
    start = 0
    lines = []
    copied = True
    for end in ends:
        if end - start > _VIEW_FROM:
            lines.append(view[start:end])
            copied = False
        else:
            lines.append(chunk[start:end])
        start = end + 1
    return lines, chunk[start:], copied


def usable_id(value: Any) -> TypeGuard[str]:
    """Whether `value` can be a resource's id (a task's, a chat's, a session's, a tool call's):
    a string we can send back as a header value and as one URL path segment, so not `.` or
    `..`, which a URL reads as "this folder" or "the one above" (another endpoint)."""
    return isinstance(value, str) and header_safe(value) and value not in (".", "..")


def is_blank(data: Buffer) -> bool:
    """Whether a line or an event's data holds nothing but whitespace (no payload)."""
    if not data:
        return True
    if isinstance(data, memoryview):
        return bytes(data[:1]).isspace() and bytes(data).isspace()
    return data.isspace()


def json_kind(value: Any) -> str:
    """What kind of JSON value `value` is, for messages ("an object", "a number", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
