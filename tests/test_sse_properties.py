"""Property tests for `inferencesh.sse`: round trips, any chunking, and the line bound.

The oracle `reference` is a deliberately naive transcription of WHATWG HTML 9.2.6 over the
whole stream as one string (decode with BOM stripping, split with a regex, a string data
buffer), sharing no code with the decoder.
"""

from __future__ import annotations

import itertools
import re
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferencesh._exceptions import SSELineTooLongError
from inferencesh.sse import ServerSentEvent, SSEDecoder, encode_sse

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)

_TEXT_LINE_END = re.compile(r"\r\n|\r|\n")
_BYTES_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


def reference(stream: bytes) -> tuple[list[ServerSentEvent], int | None, str]:
    """Events, reconnection time and last event ID per the spec, for a whole stream."""
    text = stream.decode("utf-8-sig", "replace")  # the UTF-8 decode algorithm strips one BOM
    *lines, _unterminated = _TEXT_LINE_END.split(text)
    events: list[ServerSentEvent] = []
    data = event_type = last_event_id = ""
    retry: int | None = None
    for line in lines:
        if line == "":
            if data == "":
                event_type = ""
                continue
            if data.endswith("\n"):
                data = data[:-1]
            events.append(ServerSentEvent(event_type or "message", data, last_event_id))
            data = event_type = ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            field, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            field, value = line, ""
        if field == "event":
            event_type = value
        elif field == "data":
            data += value + "\n"
        elif field == "id":
            if "\0" not in value:
                last_event_id = value
        elif field == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return events, retry, last_event_id


def reference_fresh_ids(stream: bytes) -> list[str | None]:
    """For each event of `reference(stream)`, the ID an `id:` field set since the previous
    event was dispatched (None when none did): what a reader needs to tell replays apart."""
    text = stream.decode("utf-8-sig", "replace")
    *lines, _unterminated = _TEXT_LINE_END.split(text)
    fresh: list[str | None] = []
    has_data = False
    current: str | None = None
    for line in lines:
        if line == "":
            if has_data:
                fresh.append(current)
                current = None
            has_data = False
            continue
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            has_data = True
        elif field == "id" and "\0" not in value:
            current = value
    return fresh


def payloads_of(decoder: SSEDecoder, chunks: list[bytes]) -> list[tuple[str, str | None]]:
    """Each event's data (as text) and fresh id, through `feed_payloads`."""
    found: list[tuple[str, str | None]] = []
    for chunk in chunks:
        datas, ids, error = decoder.feed_payloads(chunk)
        assert error is None
        found += zip([str(d, "utf-8", "replace") for d in datas], ids, strict=True)
    return found


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(min(cut, len(stream)) for cut in cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def draw_chunks(data: st.DataObject, stream: bytes, max_cuts: int | None = None) -> list[bytes]:
    """`stream` cut at drawn points (repeats give empty chunks), often between CR and LF."""
    crlf = [i + 1 for i in range(len(stream) - 1) if stream[i : i + 2] == b"\r\n"]
    point = st.integers(min_value=0, max_value=len(stream))
    if crlf:
        point = point | st.sampled_from(crlf)
    max_size = len(stream) + 1 if max_cuts is None else max_cuts
    return split_at(stream, data.draw(st.lists(point, max_size=max_size), label="cuts"))


# --- 1. encode_sse then decode gives the events back -----------------------------------------

_SPECIAL = st.sampled_from(
    ["\r", "\n", "\r\n", " ", "  ", ":", "\0", "\ufeff", "\u2028", "\x85", "é", "€", "😀"]
)
_ANY_CHAR = st.characters(codec="utf-8")  # any scalar value (no lone surrogates)


def _text(alphabet: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    return st.lists(alphabet, max_size=max_size).map("".join)


_DATA = _text(st.one_of(_SPECIAL, _ANY_CHAR), 24)
_EVENT_TYPE = _text(
    st.one_of(_SPECIAL, _ANY_CHAR).filter(lambda s: "\r" not in s and "\n" not in s), 12
)
_ID = _text(st.one_of(_SPECIAL, _ANY_CHAR).filter(lambda s: not set(s) & {"\r", "\n", "\0"}), 12)


class Block(NamedTuple):
    """The arguments of one `encode_sse` call."""

    data: str | None
    event: str | None
    id: str | None
    retry: int | None
    comment: str | None


_BLOCK = st.builds(
    Block,
    data=st.none() | _DATA,
    event=st.none() | _EVENT_TYPE,
    id=st.none() | _ID,
    retry=st.none() | st.integers(min_value=0, max_value=2**40),
    comment=st.none() | _DATA,
)


def _normalized(data: str) -> str:
    return data.replace("\r\n", "\n").replace("\r", "\n")


@PROPERTY_SETTINGS
@given(
    blocks=st.lists(_BLOCK, max_size=8),
    line_end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    bom=st.booleans(),
    data=st.data(),
)
def test_encode_decode_round_trip(
    blocks: list[Block], line_end: bytes, bom: bool, data: st.DataObject
) -> None:
    """Encoded events, with any line ends, optional BOM and any chunking, decode back."""
    expected: list[ServerSentEvent] = []
    last_id = ""
    retry: int | None = None
    encoded: list[bytes] = []
    for block in blocks:
        encoded.append(
            encode_sse(
                block.data, event=block.event, id=block.id, retry=block.retry, comment=block.comment
            )
        )
        if block.id is not None:
            last_id = block.id
        if block.retry is not None:
            retry = block.retry
        # A `data:` line is present, so the event dispatches, even when data is "" (the data
        # buffer is then "\n", which is not empty).
        if block.data is not None:
            event_type = block.event or "message"
            expected.append(ServerSentEvent(event_type, _normalized(block.data), last_id))
    stream = (_BOM if bom else b"") + b"".join(encoded).replace(b"\n", line_end)

    decoder = SSEDecoder()
    actual = [event for chunk in draw_chunks(data, stream) for event in decoder.feed(chunk)]

    assert expected == actual
    assert (retry, last_id) == (decoder.retry, decoder.last_event_id)


# --- 2. any bytes, any chunking: the spec's events, each as early as possible ----------------

_TOKENS = st.one_of(
    st.sampled_from(
        [
            b"data",
            b"data:",
            b"data: ",
            b"event:",
            b"id:",
            b"id",
            b"retry:",
            b"retry: 1",
            b":",
            b" ",
            b"\r",
            b"\n",
            b"\r\n",
            b"\n\n",
            b"\x00",
            _BOM,
            b"\xef\xbb",
            b"\xe2\x82",
            b"\xac",
            b"\xff",
            b"\xf0\x9f\x98\x80",
            b"x",
            b"12",
            "\u2028".encode(),
            "١".encode(),  # a digit, but not an ASCII one
            # Whole lines and blocks, so that events actually get dispatched.
            b"data: ab\n\n",
            b"data:\r\n\r\n",
            b"data: c\r\r",
            b"event: t\r",
            b"id: 7\n",
            b"id: a\x00\n",
            b"retry: 34\n",
            "retry: ١٢\n".encode(),  # Arabic-Indic digits: not ASCII, so ignored
        ]
    ),
    st.binary(max_size=3),
)


def _streams(tokens: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Lines of a few tokens, each ended by CR, LF or CRLF, then maybe an unterminated rest."""
    line_end = st.sampled_from([b"\n", b"\r", b"\r\n"])
    # Lines mostly start like fields (or are blank), so that events really get dispatched.
    start = st.sampled_from([b"", b"", b"", b"data", b"data:", b"data: ", b"id: ", b"retry:"])
    content = st.lists(tokens, max_size=3).map(b"".join)
    line = st.tuples(start | tokens, content, line_end).map(b"".join)
    rest = st.lists(tokens, max_size=3).map(b"".join)
    bom = st.sampled_from([b"", b"", _BOM])
    return st.tuples(bom, st.lists(line, max_size=16).map(b"".join), rest).map(b"".join)


_STREAM = _streams(_TOKENS)


@PROPERTY_SETTINGS
@given(stream=_STREAM, data=st.data())
def test_any_chunking_matches_reference_and_is_timely(stream: bytes, data: st.DataObject) -> None:
    """After every feed, the events so far are exactly the spec's events for that prefix."""
    decoder = SSEDecoder()
    so_far: list[ServerSentEvent] = []
    delivered = 0
    for chunk in draw_chunks(data, stream):
        so_far += decoder.feed(chunk)
        delivered += len(chunk)
        expected, _, _ = reference(stream[:delivered])
        assert expected == so_far
    _, retry, last_event_id = reference(stream)
    assert (retry, last_event_id) == (decoder.retry, decoder.last_event_id)


# --- 3. the line bound ----------------------------------------------------------------------


def _first_overlong_line(stream: bytes, limit: int) -> tuple[int, int] | None:
    """(start offset of the line, offset of the byte that passes `limit`) of the first line
    longer than `limit`, or of the first data line that makes its event's data (lines
    joined by LF) longer than `limit`: that one passes the bound at its terminator."""
    start = len(_BOM) if stream.startswith(_BOM) else 0
    data_len = -1  # the event's data so far, joined: -1 when it has no data line yet
    for match in _BYTES_LINE_END.finditer(stream, start):
        line = stream[start : match.start()]
        if len(line) > limit:
            return start, start + limit
        if not line:
            data_len = -1  # a blank line ends the event
        elif line.startswith(b"data"):
            name, _, value = line.partition(b":")
            if name == b"data":
                value = value[1:] if value.startswith(b" ") else value
                data_len += len(value) + 1
                if data_len > limit:
                    return start, match.start()
        start = match.end()
    if len(stream) - start > limit:  # the unterminated last line counts too
        return start, start + limit
    return None


_BOUND_TOKENS = st.sampled_from(
    [
        b"data: a\n\n",
        b"data: b\r\n\r\n",
        b"id: 1\rdata: c\r\r",
        b": comment\n",
        b"data: ",
        b"y" * 9,
        b"\r",
        b"\n",
        b"\r\n",
        _BOM,
        b"\xe2\x82",
        b"x",
    ]
)


@PROPERTY_SETTINGS
@given(
    stream=st.lists(_BOUND_TOKENS, max_size=24).map(b"".join),
    limit=st.integers(min_value=3, max_value=20),
    data=st.data(),
)
def test_line_bound(stream: bytes, limit: int, data: st.DataObject) -> None:
    """The feed delivering the byte past the bound raises, and no earlier event is lost."""
    # limit >= 3: below that, a stream opening with part of a BOM could only be judged once
    # the BOM question is settled.
    overlong = _first_overlong_line(stream, limit)
    decoder = SSEDecoder(max_line_bytes=limit)
    events: list[ServerSentEvent] = []
    raised: SSELineTooLongError | None = None
    delivered = 0
    # Few cuts, so that chunks often complete events before the overlong line.
    for chunk in draw_chunks(data, stream, max_cuts=4):
        try:
            events += decoder.feed(chunk)
        except SSELineTooLongError as error:
            raised = error
            break
        delivered += len(chunk)
    if overlong is None:
        assert raised is None
        expected, _, _ = reference(stream)
        assert expected == events
    else:
        assert raised is not None
        line_start, passing_byte = overlong
        # The feed that raised delivered bytes [delivered, delivered + len(chunk)).
        assert delivered <= passing_byte < delivered + len(chunk)
        expected, _, _ = reference(stream[:line_start])
        assert expected == events + raised.events
        # After the error the decoder stays closed.
        with pytest.raises(SSELineTooLongError) as again:
            decoder.feed(b"data: x\n\n")
        assert again.value.events == []


# --- 4. runs of same-shaped events (the decoder's fast path for busy streams) ---------------

_RUN_EVENT = st.one_of(
    st.builds(
        lambda n, d: b"id: %d\ndata: %s\n\n" % (n, d), st.integers(0, 99), st.binary(max_size=6)
    ),
    st.builds(lambda d: b"data: %s\n\n" % d, st.binary(max_size=6)),
)
# What may break a run: comments, other fields, multi-line data, ids with NUL or no space,
# the other line ends, and bytes that are not UTF-8.
_RUN_BREAKER = st.sampled_from(
    [
        b": ping\n\n",
        b"event: x\ndata: e\n\n",
        b"data: a\ndata: b\n\n",
        b"id: 1\x002\ndata: n\n\n",
        b"id:3\ndata: s\n\n",
        b"data:t\n\n",
        b"retry: 5\n",
        b"id: 4\r\ndata: c\r\n\r\n",
        b"data: \xff\xfe\n\n",
        b"id: \n\n",
        b"\n",
    ]
)
_RUN_STREAM = st.lists(
    st.one_of(st.lists(_RUN_EVENT, min_size=1, max_size=12).map(b"".join), _RUN_BREAKER),
    max_size=8,
).map(b"".join)


@PROPERTY_SETTINGS
@given(stream=_RUN_STREAM, data=st.data())
def test_runs_of_events_match_reference_under_any_chunking(
    stream: bytes, data: st.DataObject
) -> None:
    """Streams made mostly of runs of `id`/`data` events decode exactly, however cut, through
    both `feed` and `feed_payloads` (which gives each event's own id, not the persisted one)."""
    chunks = draw_chunks(data, stream)
    decoder, plain = SSEDecoder(), SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    expected, retry, last_event_id = reference(stream)
    assert expected == events
    pairs = list(zip([e.data for e in expected], reference_fresh_ids(stream), strict=True))
    assert pairs == payloads_of(plain, chunks)
    assert (retry, last_event_id) == (decoder.retry, decoder.last_event_id)
    assert (retry, last_event_id) == (plain.retry, plain.last_event_id)


@pytest.mark.parametrize("with_ids", [True, False])
def test_a_long_run_skips_the_line_by_line_rules(
    with_ids: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path really is taken: only the lines around the run go line by line."""
    seen: list[int] = []
    original = SSEDecoder._lines

    def counting(self: SSEDecoder, lines: list[bytes], out: object) -> None:
        seen.append(len(lines))
        original(self, lines, out)  # type: ignore[arg-type]

    monkeypatch.setattr(SSEDecoder, "_lines", counting)
    block = b'id: %d\ndata: {"n": %d}\n\n' if with_ids else b'data: {"n": %d}\n\n'
    body = b"".join(block % ((n, n) if with_ids else (n,)) for n in range(1000))
    # The last blank line is still to come.
    datas, ids, error = SSEDecoder().feed_payloads(body[:-1])
    assert [b'{"n": %d}' % n for n in range(999)] == datas
    assert ([str(n) for n in range(999)] if with_ids else [None] * 999) == ids
    assert error is None
    assert sum(seen) < 10


@pytest.mark.parametrize(
    "odd",
    [
        b"id: 1\x002\ndata: nul\n\n",  # the id is ignored; the event keeps the previous id
        b"id:7\ndata: no space\n\n",
        b"id: 8\ndata:no space\n\n",
        b"id: 9\nevent: typed\n\n",
        b"id: 10\ndata: two\ndata: lines\n\n",
        b"id: 11\n:comment\n\n",
        b"id: 12\ndata: x\nretry: 50\n\n",
    ],
)
def test_an_odd_event_inside_a_run_at_every_cut(odd: bytes) -> None:
    """One event that is not the run's shape, in the middle of runs, cut at every byte."""
    run = b"".join(b"id: %d\ndata: r%d\n\n" % (n, n) for n in range(6))
    stream = run + odd + run + b"data: a\n\ndata: b\n\n" + odd + run
    expected, _, last_event_id = reference(stream)
    fresh = reference_fresh_ids(stream)
    for cut in range(len(stream) + 1):
        decoder = SSEDecoder()
        pairs = payloads_of(decoder, [stream[:cut], stream[cut:]])
        assert list(zip([e.data for e in expected], fresh, strict=True)) == pairs, cut
        assert last_event_id == decoder.last_event_id
