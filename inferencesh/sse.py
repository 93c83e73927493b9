"""Server-sent events (`text/event-stream`), sans I/O.

`SSEDecoder` follows the WHATWG HTML "Server-sent events" parsing and interpretation rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation) and
accepts bytes cut at any boundary. `encode_sse` writes events for the server side.
"""

from __future__ import annotations

import attrs

__all__ = ["SSEDecoder", "ServerSentEvent", "encode_sse"]


@attrs.frozen
class ServerSentEvent:
    """One dispatched event: its type, data, and the last event ID at dispatch time."""

    event: str = "message"
    data: str = ""
    id: str = ""


def encode_sse(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> bytes:
    """Encode one event block (ending in a blank line) as UTF-8 bytes.

    Multi-line `data` becomes one `data:` line per line, so it decodes back unchanged; any of
    CR, LF or CRLF in `data` counts as a line break. `event` and `id` must be single lines and
    `id` must not contain NUL, because the decoder would otherwise not give them back.
    A block with only `comment` or `retry` dispatches no event.
    """
    parts: list[str] = []
    if comment is not None:
        parts.extend(f":{_field_value(line)}" for line in _split_lines(comment))
    if retry is not None:
        if retry < 0:
            raise ValueError("retry must be a non-negative number of milliseconds")
        parts.append(f"retry:{retry}")
    if id is not None:
        if "\0" in id or _has_break(id):
            raise ValueError("an SSE id cannot contain NUL, CR or LF")
        parts.append(f"id:{_field_value(id)}")
    if event is not None:
        if _has_break(event):
            raise ValueError("an SSE event type cannot contain CR or LF")
        parts.append(f"event:{_field_value(event)}")
    if data is not None:
        parts.extend(f"data:{_field_value(line)}" for line in _split_lines(data))
    if not parts:
        return b""
    return ("\n".join(parts) + "\n\n").encode("utf-8")


def _field_value(value: str) -> str:
    # The decoder strips exactly one leading space, so a value that starts with a space needs
    # the separator space to survive; add it always when needed, never otherwise (compact).
    return f" {value}" if value.startswith(" ") else value


def _has_break(value: str) -> bool:
    return "\r" in value or "\n" in value


def _split_lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
