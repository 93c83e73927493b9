"""Server-sent events (`text/event-stream`), sans I/O.

`SSEDecoder` turns the bytes of an event stream into `ServerSentEvent`s following the WHATWG
HTML "Server-sent events" parsing and interpretation rules exactly
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
It does no I/O: the transport feeds it whatever chunks the socket produced, cut at any byte
boundary (inside a UTF-8 sequence, between CR and LF, inside the BOM), and gets back the events
those bytes completed, never an event later than the chunk that finished it. It works on bytes
with C-level `find`/`split`/`replace` and decodes each chunk's complete lines in one call, never
loops per byte, and appends a long partial line to a bytearray, so the cost is linear in the
input however it is cut (it sits on the hot path of every stream). One line may be at most
`max_line_bytes` long; a longer one raises `SSELineTooLongError` instead of growing memory
without bound.

`encode_sse` writes events for the server side (the local emulator and tests).
"""

from __future__ import annotations

import contextlib
from itertools import repeat
from operator import itemgetter
from typing import Final, NoReturn

import attrs

from ._exceptions import SSELineTooLongError

__all__ = ["SSEDecoder", "ServerSentEvent", "encode_sse"]


@attrs.frozen
class ServerSentEvent:
    """One dispatched event: its type, data, and the last event ID at dispatch time."""

    event: str = "message"
    data: str = ""
    id: str = ""


_BOM: Final = b"\xef\xbb\xbf"

# What a chunk dispatched: the events' types, data and ids, as three lists in order.
_Dispatched = tuple[list[str], list[str], list[str]]
# Below this many complete lines in a chunk, looking for a run of events does not pay.
_MIN_RUN_LINES: Final = 8
_after_data_colon_space = itemgetter(slice(6, None))
_after_id_colon_space = itemgetter(slice(4, None))

# Built once: dispatching is the per-event hot path, and the attrs-generated `__init__` of a frozen
# class goes through `object.__setattr__` per field. Setting the slots through their descriptors
# is the same operation (what attrs itself does) at about two thirds of the cost.
_new_event_object = object.__new__
_set_event = ServerSentEvent.__dict__["event"].__set__
_set_data = ServerSentEvent.__dict__["data"].__set__
_set_id = ServerSentEvent.__dict__["id"].__set__


def _make_event(event: str, data: str, id: str) -> ServerSentEvent:
    sse: ServerSentEvent = _new_event_object(ServerSentEvent)
    _set_event(sse, event)
    _set_data(sse, data)
    _set_id(sse, id)
    return sse


class SSEDecoder:
    """Incremental, spec-exact `text/event-stream` decoder: bytes in, `ServerSentEvent`s out.

    Call `feed` with each chunk as it arrives; it returns the events whose terminating blank
    line was completed by that chunk, in order. An event left unterminated when the stream
    ends is never dispatched (the spec discards it), so there is no `flush`.

    `retry` is the last valid `retry:` value in milliseconds (None until one arrives) and
    `last_event_id` the last event ID buffer, which persists across events; a reconnecting
    client sends it as `Last-Event-ID`.

    A line longer than `max_line_bytes` (terminator excluded) raises `SSELineTooLongError` as
    soon as the buffered part of it passes the bound; events completed earlier in the same
    chunk are on the exception's `events`. The stream is out of sync after that, so the decoder
    is then closed: every later `feed` raises `SSELineTooLongError` again (with no events).
    Reconnect with a new decoder, passing on `last_event_id`.
    """

    __slots__ = (
        "_bom",
        "_broken",
        "_data",
        "_event_type",
        "_max_line_bytes",
        "_partial",
        "_pending_cr",
        "last_event_id",
        "retry",
    )

    retry: int | None
    last_event_id: str

    def __init__(self, max_line_bytes: int = 1024 * 1024) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self._max_line_bytes = max_line_bytes
        self.retry = None
        self.last_event_id = ""
        # Bytes of a possible BOM seen so far at stream start; None once the start is decided.
        self._bom: bytes | None = b""
        # The last chunk ended in CR: an LF that starts the next chunk belongs to that CRLF.
        self._pending_cr = False
        # The unterminated line so far. Appending to a bytearray is amortized O(1) and costs a
        # byte per byte, so a long line arriving in tiny chunks stays linear in time and memory.
        self._partial = bytearray()
        # The data buffer as its lines (joined with LF at dispatch) and the event type buffer.
        self._data: list[str] = []
        self._event_type = ""
        self._broken = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode the next `chunk` of the stream; return the events it completed, in order.

        Raises `SSELineTooLongError` when a line passes `max_line_bytes`.
        """
        types, datas, ids = self._decode(chunk)
        return list(map(_make_event, types, datas, ids))

    def feed_data(self, chunk: bytes) -> tuple[list[str], list[str]]:
        """Like `feed`, for consumers that ignore event types: the data of each event `chunk`
        completed, and the event's id, as two lists in order. No event objects are built."""
        _, datas, ids = self._decode(chunk)
        return datas, ids

    def _decode(self, chunk: bytes) -> _Dispatched:
        if self._broken:
            raise SSELineTooLongError(
                "the SSE decoder is closed after a line exceeded max_line_bytes"
            )
        if self._bom is not None:
            chunk = self._strip_bom(chunk)
        if not chunk:
            return [], [], []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return [], [], []
        if b"\r" in chunk:
            # A CR ending the chunk ends its line now (so its event is not held back); an LF
            # that may follow it at the start of the next chunk is then skipped.
            self._pending_cr = chunk[-1] == 0x0D
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = chunk.rfind(b"\n")
        partial = self._partial
        if cut < 0:
            # No line end in this chunk: keep the piece; nothing is complete.
            partial += chunk
            if len(partial) > self._max_line_bytes:
                self._fail(([], [], []))
            return [], [], []
        over = len(partial) + len(chunk) > self._max_line_bytes
        # `body` is the complete lines without their last terminator; `tail` the new partial.
        tail = chunk[cut + 1 :]
        if partial:
            partial += memoryview(chunk)[:cut]
            body: bytes | bytearray = partial
            self._partial = bytearray(tail)
        else:
            body = chunk[:cut]
            if tail:
                partial += tail
        # Splitting at LF commutes with UTF-8 decoding (errors="replace"): an ASCII byte never
        # belongs to a multibyte sequence and always ends an invalid one. So the complete lines
        # are decoded in one call, and a sequence cut by a line end becomes U+FFFD there.
        lines = body.decode("utf-8", "replace").split("\n")
        if over:
            # Only when this chunk could hold a line over the bound: find it (in bytes).
            self._check_lengths(body, tail, lines)
        return self._interpret(lines)

    def _check_lengths(self, body: bytes | bytearray, tail: bytes, lines: list[str]) -> None:
        limit = self._max_line_bytes
        for index, line in enumerate(body.split(b"\n")):
            if len(line) > limit:
                self._fail(self._interpret(lines[:index]))
        if len(tail) > limit:
            self._fail(self._interpret(lines))

    def _strip_bom(self, chunk: bytes) -> bytes:
        # The UTF-8 decode algorithm drops one leading BOM; it may arrive split across chunks.
        head = self._bom + chunk if self._bom else chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._bom = head
            return b""
        self._bom = None
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _fail(self, dispatched: _Dispatched) -> NoReturn:
        self._broken = True
        self._partial = bytearray()
        self._data = []
        raise SSELineTooLongError(
            f"an SSE line exceeded max_line_bytes={self._max_line_bytes}",
            events=list(map(_make_event, *dispatched)),
        )

    def _interpret(self, lines: list[str]) -> _Dispatched:
        # WHATWG 9.2.6 over complete lines, terminators removed. A busy stream is mostly a run
        # of same-shaped events, which `_run` takes whole; the rest goes line by line.
        out: _Dispatched = ([], [], [])
        start = 0
        if len(lines) >= _MIN_RUN_LINES and "" in lines:
            # Finish the event in progress, then look for a run from the next event's start.
            start = lines.index("") + 1
            self._lines(lines[:start], out)
            start = self._run(lines, start, out)
        self._lines(lines[start:] if start else lines, out)
        return out

    def _run(self, lines: list[str], start: int, out: _Dispatched) -> int:
        """Take the run of `id: X` / `data: Y` / blank (or `data: Y` / blank) events that starts
        at `start` and fills `lines` up to its last few lines; return where it ends (`start` if
        there is none). Such events need none of the line-by-line rules: each has type
        "message", data Y and id X (or the current last event id)."""
        if start == len(lines):
            return start
        if lines[start].startswith("id: "):
            period = 3
        elif lines[start].startswith("data: "):
            period = 2
        else:
            return start
        count = (len(lines) - start) // period
        if not count:
            return start
        end = start + count * period
        id_lines = lines[start:end:3] if period == 3 else None
        data_lines = lines[start + period - 2 : end : period]
        if (
            any(lines[start + period - 1 : end : period])  # a non-blank where a blank belongs
            or not all(map(str.startswith, data_lines, repeat("data: ")))
            or (
                id_lines is not None
                and (
                    not all(map(str.startswith, id_lines, repeat("id: ")))
                    or "\0" in "".join(id_lines)  # an id with NUL is ignored: go slowly
                )
            )
        ):
            return start
        types, datas, ids = out
        types += repeat("message", count)
        datas += map(_after_data_colon_space, data_lines)
        if id_lines is None:
            ids += repeat(self.last_event_id, count)
        else:
            ids += map(_after_id_colon_space, id_lines)
            self.last_event_id = ids[-1]
        return end

    def _lines(self, lines: list[str], out: _Dispatched) -> None:
        types, datas, ids = out
        data = self._data
        event_type = self._event_type
        last_event_id = self.last_event_id
        for line in lines:
            if not line:
                # A blank line dispatches. No data lines, no event; the type resets anyway.
                if data:
                    types.append(event_type or "message")
                    datas.append("\n".join(data))
                    ids.append(last_event_id)
                    data = []
                event_type = ""
                continue
            name, _, value = line.partition(":")
            if not name:
                continue  # a comment: the line starts with ':'
            if value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event_type = value
            elif name == "id":
                if "\0" not in value:  # an id with NUL is ignored
                    last_event_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                # str.isdigit alone accepts non-ASCII digits; both are false for "".
                with contextlib.suppress(ValueError):  # past Python's int-from-str digit limit
                    self.retry = int(value)
            # Any other field (and a retry that is not all ASCII digits) is ignored.
        self._data = data
        self._event_type = event_type
        self.last_event_id = last_event_id


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
