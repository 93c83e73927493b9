"""Server-sent events (`text/event-stream`), sans I/O.

`SSEDecoder` turns the bytes of an event stream into `ServerSentEvent`s following the WHATWG
HTML "Server-sent events" parsing and interpretation rules exactly
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
It does no I/O: the transport feeds it whatever chunks the socket produced, cut at any byte
boundary (inside a UTF-8 sequence, between CR and LF, inside the BOM), and gets back the events
those bytes completed, never an event later than the chunk that finished it.

It works on bytes: line ends are found with C-level `find`/`split`, a line cut across chunks is
kept as the chunks themselves and joined once when it ends, and event data stays bytes until a
caller wants text (JSON decoders read UTF-8 bytes directly). Splitting at ASCII line ends
commutes with UTF-8 decoding with replacement, so decoding per field gives exactly what decoding
the whole stream first would. The cost is linear in the input however it is cut. One line, and
one event's data, may be at most `max_line_bytes` long; more raises `SSELineTooLongError`
instead of growing memory without bound.

`encode_sse` writes events for the server side (the local emulator and tests).
"""

from __future__ import annotations

import contextlib
from itertools import repeat
from operator import itemgetter
from typing import Final, NoReturn, cast

import attrs

from ._exceptions import SSELineTooLongError
from ._streaming import DEFAULT_MAX_EVENT_BYTES
from ._wire import split_lines

__all__ = ["SSEDecoder", "ServerSentEvent", "encode_sse"]


@attrs.frozen
class ServerSentEvent:
    """One dispatched event: its type, data, and the last event ID at dispatch time."""

    event: str = "message"
    data: str = ""
    id: str = ""


_BOM: Final = b"\xef\xbb\xbf"
# Below this many complete lines in a chunk, looking for a run of events does not pay.
_MIN_RUN_LINES: Final = 8
_after_data_colon_space = itemgetter(slice(6, None))
_after_id_colon_space = itemgetter(slice(4, None))

Data = bytes | memoryview


class _Dispatched:
    """What one chunk dispatched, as parallel lists: each event's type, data (UTF-8 bytes),
    last event ID (the spec's persistent buffer) and the ID it set itself (None if none)."""

    __slots__ = ("datas", "fresh_ids", "ids", "types")

    def __init__(self) -> None:
        self.types: list[str] = []
        self.datas: list[Data] = []
        self.ids: list[str] = []
        self.fresh_ids: list[str | None] = []


class _TooLong(Exception):
    """A line or event passed the bound; carries what was dispatched before it."""

    def __init__(self, dispatched: _Dispatched) -> None:
        self.dispatched = dispatched


def _text(value: bytes | memoryview) -> str:
    return str(value, "utf-8", "replace")


def _events(out: _Dispatched) -> list[ServerSentEvent]:
    return list(map(ServerSentEvent, out.types, map(_text, out.datas), out.ids))


class SSEDecoder:
    """Incremental, spec-exact `text/event-stream` decoder: bytes in, `ServerSentEvent`s out.

    Call `feed` with each chunk as it arrives; it returns the events whose terminating blank
    line was completed by that chunk, in order. An event left unterminated when the stream
    ends is never dispatched (the spec discards it), so there is no `flush`.

    `retry` is the last valid `retry:` value in milliseconds (None until one arrives) and
    `last_event_id` the last event ID buffer, which persists across events; a reconnecting
    client sends it as `Last-Event-ID`.

    A line longer than `max_line_bytes` (terminator excluded), or an event whose data grows
    past it, raises `SSELineTooLongError` as soon as the buffered part passes the bound; events
    completed earlier in the same chunk are on the exception's `events`. The stream is out of
    sync after that, so the decoder is then closed: every later `feed` raises again (with no
    events). Reconnect with a new decoder, passing on `last_event_id`.
    """

    __slots__ = (
        "_bom",
        "_broken",
        "_data",
        "_data_len",
        "_event_type",
        "_fresh_id",
        "_max_line_bytes",
        "_pending_cr",
        "_pending_len",
        "_pieces",
        "last_event_id",
        "retry",
    )

    retry: int | None
    last_event_id: str

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        self._max_line_bytes = max_line_bytes
        self.retry = None
        self.last_event_id = ""
        # Bytes of a possible BOM seen so far at stream start; None once the start is decided.
        self._bom: bytes | None = b""
        # The last chunk ended in CR: an LF that starts the next chunk belongs to that CRLF.
        self._pending_cr = False
        # The unterminated line so far, as the pieces it arrived in (joined once, at its end).
        self._pieces: list[bytes] = []
        self._pending_len = 0
        # The data buffer as its lines (joined with LF at dispatch) and the event type buffer.
        self._data: list[Data] = []
        self._data_len = 0
        self._event_type = ""
        # The ID an `id:` field set since the last dispatch, if any.
        self._fresh_id: str | None = None
        self._broken = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode the next `chunk` of the stream; return the events it completed, in order.

        Raises `SSELineTooLongError` when a line or an event passes `max_line_bytes`.
        """
        try:
            out = self._decode(chunk)
        except _TooLong as failure:
            raise self._error(failure.dispatched) from None
        return _events(out)

    def feed_payloads(
        self, chunk: bytes
    ) -> tuple[list[Data], list[str | None], SSELineTooLongError | None]:
        """Like `feed`, for readers of JSON payloads: each completed event's data as UTF-8
        bytes, and the ID the event set itself (None when it set none), as two lists; then
        the error `feed` would raise, returned after the events completed before it."""
        try:
            out = self._decode(chunk)
        except _TooLong as failure:
            out = failure.dispatched
            # The caller has these events as payloads: the error need not carry them again.
            return out.datas, out.fresh_ids, self._error(_Dispatched())
        return out.datas, out.fresh_ids, None

    def _error(self, dispatched: _Dispatched) -> SSELineTooLongError:
        return SSELineTooLongError(
            f"an SSE line or event is longer than {self._max_line_bytes} bytes",
            events=_events(dispatched),
        )

    def _decode(self, chunk: bytes) -> _Dispatched:
        if self._broken:
            raise _TooLong(_Dispatched())
        if self._bom is not None:
            chunk = self._strip_bom(chunk)
        if not chunk:
            return _Dispatched()
        if self._pending_cr:
            self._pending_cr = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return _Dispatched()
        if b"\r" in chunk:
            # A CR ending the chunk ends its line now (so its event is not held back); an LF
            # that may follow it at the start of the next chunk is then skipped.
            self._pending_cr = chunk[-1] == 0x0D
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        limit = self._max_line_bytes
        lines, tail, copied = split_lines(chunk)
        if not lines:
            # No line end in this chunk: keep it as it is; nothing is complete.
            self._pieces.append(chunk)
            self._pending_len += len(chunk)
            if self._pending_len > limit:
                self._fail(_Dispatched())
            return _Dispatched()
        over = self._pending_len + len(chunk) > limit
        if self._pieces:
            self._pieces.append(lines[0])  # type: ignore[arg-type]  # bytes or a view
            lines[0] = b"".join(self._pieces)
            self._pieces = []
            self._pending_len = 0
        if tail:
            self._pieces.append(tail)
            self._pending_len = len(tail)
        if over:
            # Only when this chunk could hold a line over the bound: find it.
            for index, line in enumerate(lines):
                if len(line) > limit:
                    self._fail(self._interpret(lines[:index], copied))
            if len(tail) > limit:
                self._fail(self._interpret(lines, copied))
        return self._interpret(lines, copied)

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
        self._pieces = []
        self._data = []
        raise _TooLong(dispatched)

    def _interpret(self, lines: list[Data], copied: bool) -> _Dispatched:
        # WHATWG 9.2.6 over complete lines, terminators removed. A busy stream is mostly a run
        # of same-shaped events, which `_run` takes whole; the rest goes line by line, as do
        # chunks with long lines (views of the chunk, see `split_lines`).
        out = _Dispatched()
        start = 0
        if copied and len(lines) >= _MIN_RUN_LINES and b"" in lines:
            # Finish the event in progress, then look for a run from the next event's start.
            start = lines.index(b"") + 1
            self._lines(lines[:start], out)
            start = self._run(cast(list[bytes], lines), start, out)
        self._lines(lines[start:] if start else lines, out)
        return out

    def _run(self, lines: list[bytes], start: int, out: _Dispatched) -> int:
        """Take the run of `id: X` / `data: Y` / blank (or `data: Y` / blank) events that starts
        at `start` and fills `lines` up to its last few lines; return where it ends (`start` if
        there is none). Such events need none of the line-by-line rules: each has type
        "message", data Y and ID X (or the current last event ID, set by no event of the run).
        """
        if start == len(lines):
            return start
        if lines[start].startswith(b"id: "):
            period = 3
        elif lines[start].startswith(b"data: "):
            period = 2
        else:
            return start
        count = (len(lines) - start) // period
        if not count:
            return start
        end = start + count * period
        id_lines = lines[start:end:3] if period == 3 else None
        data_lines = lines[start + period - 2 : end : period]
        if any(lines[start + period - 1 : end : period]) or not all(  # a non-blank where a blank is
            map(bytes.startswith, data_lines, repeat(b"data: "))
        ):
            return start
        if id_lines is not None:
            if not all(map(bytes.startswith, id_lines, repeat(b"id: "))):
                return start
            joined = b"".join(id_lines)
            if b"\0" in joined or not joined.isascii():  # NUL is ignored, non-ASCII decoded
                return start
        out.types += repeat("message", count)
        out.datas += map(_after_data_colon_space, data_lines)
        if id_lines is None:
            out.ids += repeat(self.last_event_id, count)
            # Only the first event can carry an ID set by an earlier block without data.
            out.fresh_ids.append(self._fresh_id)
            out.fresh_ids += repeat(None, count - 1)
        else:
            # The ids as text: one decode and one split for the whole run ("id: " is 4 bytes).
            ids = b"\n".join(id_lines).decode("ascii")[4:].split("\nid: ")
            out.ids += ids
            out.fresh_ids += ids
            self.last_event_id = ids[-1]
        self._fresh_id = None
        return end

    def _lines(self, lines: list[Data], out: _Dispatched) -> None:
        data = self._data
        for line in lines:
            if isinstance(line, memoryview):  # a long line (see `split_lines`)
                head = line[:6].tobytes()
                if head.startswith(b"data:"):
                    data.append(line[6:] if head == b"data: " else line[5:])
                    self._data_len += len(data[-1]) + 1  # its LF when lines are joined
                    if self._data_len - 1 > self._max_line_bytes:
                        self._data = data
                        self._fail(out)
                    continue
                line = bytes(line)  # any other field: rare, and short once parsed
            if not line:
                # A blank line dispatches. No data lines, no event; the type resets anyway.
                if data:
                    out.types.append(self._event_type or "message")
                    out.datas.append(data[0] if len(data) == 1 else b"\n".join(data))
                    out.ids.append(self.last_event_id)
                    out.fresh_ids.append(self._fresh_id)
                    self._fresh_id = None
                    data = []
                    self._data_len = 0
                self._event_type = ""
                continue
            name, colon, value = line.partition(b":")
            if not name:
                continue  # a comment: the line starts with ':'
            skip = len(name) + len(colon)
            if value[:1] == b" ":
                skip += 1
            if name == b"data":
                data.append(line[skip:])
                self._data_len += len(line) - skip + 1  # its LF when lines are joined
                if self._data_len - 1 > self._max_line_bytes:
                    self._data = data
                    self._fail(out)
            elif name == b"event":
                self._event_type = _text(line[skip:])
            elif name == b"id":
                if b"\0" not in value:  # an id with NUL is ignored
                    self.last_event_id = self._fresh_id = _text(line[skip:])
            elif name == b"retry":
                value = line[skip:]
                if value.isdigit():  # bytes.isdigit is ASCII digits only; false for b""
                    with contextlib.suppress(ValueError):  # past Python's int digit limit
                        self.retry = int(value)
            # Any other field (and a retry that is not all ASCII digits) is ignored.
        self._data = data


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
