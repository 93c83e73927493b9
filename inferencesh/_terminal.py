"""What the CLI and the live display write to a terminal, made safe: one place for it.

- `neutralise(text)` makes text from the server (log lines, statuses, errors, outputs, agent
  text, tool names, ids) inert before it reaches a terminal: every C0 control character but
  newline and tab, DEL, and every C1 control character (U+0080-U+009F, the 8-bit CSI U+009B
  among them) becomes the four visible characters of its `\\xNN` escape (a lone surrogate,
  which JSON can carry and no encoding can write, its `\\udNNN` escape). An escape sequence
  (`ESC[2J` clears the screen, `ESC]0;...BEL` retitles the window), a carriage return that
  would overwrite a line with fake text, and a bell are then shown for what they are instead
  of acting. The escape is plain ASCII, so it survives any output encoding, and it names the
  byte the server sent (U+FFFD would hide it).
- `one_line(text)` is `neutralise` for text that must stay one line (a line on stderr, a status,
  an id, a log line): the newline is escaped too (`\\x0a`), and so are the Unicode line and
  paragraph separators (`\\u2028`, `\\u2029`, which `str.splitlines` breaks at), so server text
  cannot forge a line of its own under it. Tabs stay.
- `json_text(value)` is JSON for people to read (non-ASCII kept), with DEL and the C1 controls
  escaped as `\\u00NN` too (`json.dumps` escapes only C0), and U+2028 and U+2029 as well, so
  each line of it is one line for every reader; `--json` lines are ASCII JSON.
- `setup_streams()` makes stdout and stderr replace what their encoding cannot write (`?`),
  so `PYTHONIOENCODING=cp1252` or a C locale never turns a `✓` into a `UnicodeEncodeError`.
- `write_out(text)` writes to stdout and raises `OutputClosed` when its reader has gone (a
  closed pipe, as in `inferencesh run ... | head -1`); `write_err(text)` writes to stderr and
  stays quiet if that pipe is closed. Either way the closed stream is pointed at the null
  device, so the interpreter's last flush does not fail again (Python's documented pattern
  for `BrokenPipeError`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from typing import Any, TextIO

__all__ = [
    "OUTPUT_CLOSED",
    "OutputClosed",
    "encodable",
    "json_line",
    "json_text",
    "neutralise",
    "one_line",
    "setup_streams",
    "silence",
    "write_err",
    "write_out",
]

# The exit status after a closed pipe: 128 + SIGPIPE (13), what a shell shows for a command
# that SIGPIPE ended (written out: Windows has no SIGPIPE).
OUTPUT_CLOSED = 141

# C0 controls but tab (09) and newline (0A), DEL, the C1 controls, and the lone surrogates
# (U+D800-U+DFFF: JSON's `"\ud800"` decodes to one, which no encoding can write).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
# The same and newline, and the Unicode line and paragraph separators: what breaks a line.
_LINE_BREAK = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# What `json.dumps(ensure_ascii=False)` leaves unescaped of those: DEL, C1, the separators
# and the lone surrogates (it escapes C0); `\uNNNN` is valid JSON for each.
_JSON_CONTROL = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def neutralise(text: str) -> str:
    """`text` with its terminal control characters shown as `\\xNN` escapes instead of acting.

    Newlines and tabs are kept. The result holds no control character, so neutralising it again
    changes nothing. Apply it to every string the server controls before a terminal gets it.
    """
    if _CONTROL.search(text) is None:  # the common case: one scan, no copy
        return text
    return _CONTROL.sub(_escape, text)


def one_line(text: str) -> str:
    """`neutralise(text)` that stays one line: newlines (`\\x0a`) and U+2028 and U+2029
    (`\\u2028`, `\\u2029`) are escaped too; tabs are kept.

    Use it for text meant as one line: a line on stderr, a status, an id, a log line, so that
    "boom\\nfake line" from the server cannot draw a line the CLI did not write.
    """
    if _LINE_BREAK.search(text) is None:
        return text
    return _LINE_BREAK.sub(_escape, text)


def encodable(text: str, encoding: str) -> str:
    """`text` with what `encoding` cannot write (a CJK log line on cp1252, any non-ASCII text
    on ascii) as its `\\uNNNN` escape (`\\xNN`, `\\UNNNNNNNN`), so that writing it cannot
    raise `UnicodeEncodeError`; unchanged on UTF-8 (an unknown encoding counts as one)."""
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        return text


def json_text(value: Any, *, indent: int | None = None) -> str:
    """`value` as JSON for a terminal: non-ASCII text kept, every control character escaped."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, default=str)
    return _JSON_CONTROL.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def json_line(value: Any) -> str:
    """`value` as one `--json` line: ASCII only, so no control character and no encoding issue."""
    return json.dumps(value, default=str)


class OutputClosed(Exception):
    """Stdout's reader has gone (a closed pipe): the command stops as if interrupted."""


def setup_streams() -> None:
    """Make stdout and stderr replace the characters their encoding cannot write.

    Their encoding is kept. Streams that are not text files (replaced by a test harness, or
    None under pythonw) are left alone.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors != "replace":
            with contextlib.suppress(ValueError):  # a closed stream: nothing will be written
                stream.reconfigure(errors="replace")


def silence(stream: TextIO | None) -> None:
    """Point `stream`'s file descriptor at the null device, so that what it still holds (and
    the interpreter's flush at exit) goes nowhere instead of failing with `BrokenPipeError`."""
    if stream is None:
        return
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # no descriptor (a test's capture): nothing to redirect
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def write_out(text: str) -> None:
    """Write `text` to stdout and flush; `OutputClosed` if its reader has gone."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        silence(sys.stdout)
        raise OutputClosed from None


def write_err(text: str) -> None:
    """Write `text` to stderr and flush; nothing happens if its reader has gone."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except BrokenPipeError:
        silence(sys.stderr)
