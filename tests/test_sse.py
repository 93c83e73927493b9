"""Tests for `inferencesh.sse`: the WHATWG examples, chunking, edge cases, bounds, encoding."""

from __future__ import annotations

import itertools

import attrs
import pytest

from inferencesh._exceptions import ProtocolError, SSELineTooLongError
from inferencesh.sse import ServerSentEvent, SSEDecoder, encode_sse

E = ServerSentEvent


def decode(stream: bytes, **kwargs: int) -> list[ServerSentEvent]:
    return SSEDecoder(**kwargs).feed(stream)


def feed_each(
    chunks: list[bytes], decoder: SSEDecoder | None = None
) -> list[list[ServerSentEvent]]:
    decoder = decoder if decoder is not None else SSEDecoder()
    return [decoder.feed(chunk) for chunk in chunks]


# --- every worked example of WHATWG HTML 9.2 ------------------------------------------------


def test_spec_intro_messages() -> None:
    """9.2.1: three messages, the second with two data lines joined by LF."""
    stream = (
        b"data: This is the first message.\n\n"
        b"data: This is the second message, it\n"
        b"data: has two lines.\n\n"
        b"data: This is the third message.\n\n"
    )
    expected = [
        E("message", "This is the first message."),
        E("message", "This is the second message, it\nhas two lines."),
        E("message", "This is the third message."),
    ]
    assert expected == decode(stream)


def test_spec_intro_event_types() -> None:
    """9.2.1: the `add`/`remove` stream gives each event its type."""
    stream = (
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n"
    )
    expected = [E("add", "73857293"), E("remove", "2153"), E("add", "113411")]
    assert expected == decode(stream)


def test_spec_stock_ticker() -> None:
    """9.2.6: `data: YHOO` / `+2` / `10` followed by a blank line is one message."""
    expected = [E("message", "YHOO\n+2\n10", "")]
    assert expected == decode(b"data: YHOO\ndata: +2\ndata: 10\n\n")


def test_spec_test_stream_with_ids() -> None:
    """9.2.6: comment block fires nothing; id 1 then reset by `id`; one leading space removed."""
    stream = (
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n\n"
    )
    expected = [
        E("message", "first event", "1"),
        E("message", "second event", ""),
        E("message", " third event", ""),
    ]
    decoder = SSEDecoder()
    assert expected == decoder.feed(stream)
    assert decoder.last_event_id == ""


def test_spec_test_stream_needs_final_blank_line() -> None:
    """9.2.6: the end of the stream alone does not dispatch the last block."""
    stream = (
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n"
    )
    expected = [E("message", "first event", "1"), E("message", "second event", "")]
    assert expected == decode(stream)


def test_spec_empty_data_lines() -> None:
    """9.2.6: `data` gives "", `data`+`data` gives "\\n", a trailing `data:` is discarded."""
    expected = [E("message", ""), E("message", "\n")]
    assert expected == decode(b"data\n\ndata\ndata\n\ndata:")


def test_spec_data_colon_space_is_optional() -> None:
    """9.2.6: `data:test` and `data: test` fire two identical events."""
    expected = [E("message", "test"), E("message", "test")]
    assert expected == decode(b"data:test\n\ndata: test\n\n")


def test_id_persists_across_events() -> None:
    """The last event ID buffer is not reset at dispatch: later events keep it."""
    expected = [E("message", "a", "42"), E("message", "b", "42"), E("message", "c", "43")]
    actual = decode(b"id: 42\ndata: a\n\ndata: b\n\nid: 43\ndata: c\n\n")
    assert expected == actual


# --- a sample stream cut at every byte --------------------------------------------------------

# (bytes, event): `event` is dispatched by the LAST byte of its part, so it must come out of the
# `feed` call that delivers that byte.
SAMPLE_PARTS: list[tuple[bytes, ServerSentEvent | None]] = [
    (b"\xef\xbb\xbf: a comment after the BOM\r\n", None),
    (b"retry: 2500\r\nid: 1\r\nevent: greet\r\n", None),
    (b"data: caf\xc3\xa9 \xe2\x82\xac\xf0\x9f\x98\x80\r\ndata:  two spaces\r\n", None),
    (b"\r", E("greet", "café €😀\n two spaces", "1")),
    (b"\ndata: \xf0\x9f\x98\x80 cr only\rdata\r", None),
    (b"\r", E("message", "😀 cr only\n", "1")),
    (b"id: 2\ndata: lf only\n:\n", None),
    (b"\n", E("message", "lf only", "2")),
    (b": keepalive\r\n\r\n: another\n\n", None),
    (b"event: mixed\rdata: a\r\ndata: b\xe2\x80\xa8\xc2\x85\ndata: c\r\n", None),
    (b"\n", E("mixed", "a\nb\u2028\u0085\nc", "2")),
    (b"id: bad\x00id\r\nretry: soon\r\ndata: still two\r\n", None),
    (b"\r", E("message", "still two", "2")),
    (b"\nid\ndata:x\n", None),
    (b"\n", E("message", "x", "")),
    (b"event: unterminated\ndata: never dispatched\n", None),
]
SAMPLE = b"".join(part for part, _ in SAMPLE_PARTS)
SAMPLE_EVENTS = [event for _, event in SAMPLE_PARTS if event is not None]


def _dispatch_offsets() -> list[int]:
    offsets: list[int] = []
    end = 0
    for part, event in SAMPLE_PARTS:
        end += len(part)
        if event is not None:
            offsets.append(end - 1)
    return offsets


def expected_per_feed(chunks: list[bytes]) -> list[list[ServerSentEvent]]:
    """The events each feed must return: those whose dispatching byte it delivers."""
    result: list[list[ServerSentEvent]] = []
    start = 0
    pending = list(zip(_dispatch_offsets(), SAMPLE_EVENTS, strict=True))
    for chunk in chunks:
        end = start + len(chunk)
        result.append([event for offset, event in pending if start <= offset < end])
        start = end
    return result


def test_sample_stream_whole() -> None:
    """Fed whole, the sample stream gives the hand-written events and final state."""
    decoder = SSEDecoder()
    assert decoder.feed(SAMPLE) == SAMPLE_EVENTS
    assert decoder.retry == 2500
    assert decoder.last_event_id == ""


@pytest.mark.parametrize("cut", range(len(SAMPLE) + 1))
def test_sample_stream_split_once(cut: int) -> None:
    """Cut anywhere in two: same events, each from the feed that delivered its line end."""
    chunks = [SAMPLE[:cut], SAMPLE[cut:]]
    assert expected_per_feed(chunks) == feed_each(chunks)


def test_sample_stream_split_twice() -> None:
    """Every pair of cut points (three chunks, some empty) gives the same timely events."""
    for first, second in itertools.combinations_with_replacement(range(len(SAMPLE) + 1), 2):
        chunks = [SAMPLE[:first], SAMPLE[first:second], SAMPLE[second:]]
        assert expected_per_feed(chunks) == feed_each(chunks), (first, second)


def test_sample_stream_byte_by_byte() -> None:
    """One byte per feed: every event comes out exactly at its dispatching byte."""
    chunks = [SAMPLE[i : i + 1] for i in range(len(SAMPLE))]
    actual = feed_each(chunks)
    assert expected_per_feed(chunks) == actual
    assert [event for events in actual for event in events] == SAMPLE_EVENTS


def test_expected_per_feed_is_not_trivial() -> None:
    """The timing oracle places events in different feeds, so a late event would be caught."""
    chunks = [SAMPLE[i : i + 1] for i in range(len(SAMPLE))]
    non_empty = [i for i, events in enumerate(expected_per_feed(chunks)) if events]
    assert len(non_empty) == len(SAMPLE_EVENTS)
    assert SAMPLE[non_empty[0]] == ord("\r")


# --- BOM ----------------------------------------------------------------------------------


def test_bom_stripped_once_only() -> None:
    """A second BOM is part of the first line: the field `\\ufeffdata` is unknown, ignored."""
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []
    assert [E("message", "y")] == decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n")


def test_bom_only_at_stream_start() -> None:
    """A BOM after the start is an ordinary character, in a field name or in data."""
    decoder = SSEDecoder()
    assert [E("message", "a")] == decoder.feed(b"data: a\n\n")
    assert decoder.feed(b"\xef\xbb\xbfdata: b\n\n") == []
    assert [E("message", "\ufeffc")] == decoder.feed(b"data: \xef\xbb\xbfc\n\n")


def test_bom_split_across_chunks() -> None:
    """A BOM delivered one byte per chunk is still stripped."""
    expected = [[], [], [E("message", "x")]]
    assert expected == feed_each([b"\xef", b"\xbb", b"\xbfdata: x\n\n"])


def test_partial_bom_is_kept() -> None:
    """Bytes that start like a BOM but are not one stay at the start of the first line."""
    # Held back while undecided, they must not be dropped: "\ufffddata" is an unknown field.
    assert feed_each([b"\xef\xbb", b"data: z\n\n"]) == [[], []]
    assert feed_each([b"\xef", b"\xbb\xbedata: z\n\n"]) == [[], []]
    assert [[], [E("message", "z")]] == feed_each([b"\xef\xbb", b"\ndata: z\n\n"])


def test_bom_then_empty_chunks() -> None:
    """Empty chunks while the BOM is incomplete change nothing."""
    expected = [[], [], [], [E("message", "x")]]
    assert expected == feed_each([b"\xef\xbb", b"", b"\xbf", b"data: x\n\n"])


# --- line ends --------------------------------------------------------------------------------


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    """CR ending a chunk and LF starting the next are one line end, not an extra blank line."""
    # An extra blank line would dispatch "a" and "b" separately.
    expected = [[], [], [E("message", "a\nb")]]
    assert expected == feed_each([b"data: a\r", b"\ndata: b\r", b"\n\n"])


def test_blank_crlf_dispatches_on_cr() -> None:
    """A blank line ending in CR dispatches at once; its LF in the next chunk is skipped."""
    expected = [[E("message", "a")], [], [E("message", "b")]]
    assert expected == feed_each([b"data: a\r\n\r", b"\n", b"data: b\n\n"])


def test_pending_cr_survives_empty_chunk() -> None:
    """An empty chunk between CR and LF does not forget the pending CR."""
    expected = [[], [], [], [E("message", "a\nb")]]
    assert expected == feed_each([b"data: a\r", b"", b"\ndata: b", b"\n\n"])


def test_cr_then_cr_is_blank_line() -> None:
    """CR at a chunk end followed by another CR is a line end plus a blank line."""
    assert [[], [E("message", "a")]] == feed_each([b"data: a\r", b"\r"])


def test_mixed_line_ends() -> None:
    """CR, LF and CRLF may be mixed freely, even inside one event."""
    expected = [E("message", "1\n2\n3"), E("message", "4")]
    assert expected == decode(b"data: 1\rdata: 2\ndata: 3\r\n\ndata: 4\r\r")


def test_unicode_line_separators_are_not_line_ends() -> None:
    """U+2028, U+2029, U+0085, VT, FF and FS stay in the data (unlike str.splitlines)."""
    text = "a\u2028b\u2029c\u0085d\x0be\x0cf\x1cg"
    assert [E("message", text)] == decode(b"data: " + text.encode() + b"\n\n")


# --- fields -------------------------------------------------------------------------------


def test_comment_blocks_dispatch_nothing() -> None:
    """Blocks of only comments (even after an id or retry) are not events."""
    assert decode(b": one\n\n:two\n\n:\n\n") == []
    assert [E("message", "x", "7")] == decode(b"id: 7\ndata: x\n\n: ping\n\nretry: 5\n\n")


def test_event_type_resets_without_dispatch() -> None:
    """A block with a type but no data dispatches nothing, and the type does not leak on."""
    assert [E("message", "y")] == decode(b"event: x\n\ndata: y\n\n")


def test_field_without_colon() -> None:
    """A line without a colon is a field with an empty value; unknown fields are ignored."""
    expected = [E("message", "", "")]
    assert expected == decode(b"id: 3\nid\nevent\nfoo\ndata\n\n")


def test_field_names_are_case_sensitive() -> None:
    """`Data:` and `data :` are unknown fields, not data."""
    assert decode(b"Data: x\n\ndata : y\n\n") == []


def test_only_one_leading_space_removed() -> None:
    """Exactly one space after the colon is removed, nothing else is trimmed."""
    assert [E(" t ", "  x\t ", " i")] == decode(b"event:  t \nid:  i\ndata:   x\t \n\n")


def test_colon_in_value_kept() -> None:
    """Only the first colon separates name and value."""
    assert [E("message", "a: b:c")] == decode(b"data: a: b:c\n\n")


@pytest.mark.parametrize(
    "value", [b"12a", b"-1", b"", b" ", b" 5", b"1.5", b"+5", "١٢".encode(), b"1_0", b"0x10"]
)
def test_retry_not_all_ascii_digits_ignored(value: bytes) -> None:
    """`retry` is used only when its value is one or more ASCII digits."""
    decoder = SSEDecoder()
    decoder.feed(b"retry: 1000\n")
    decoder.feed(b"retry: " + value + b"\n")
    assert decoder.retry == 1000


def test_retry_valid_values() -> None:
    """Valid `retry` values update `retry` (leading zeros fine); no event is dispatched."""
    assert SSEDecoder().retry is None
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: 3000\n\n") == []
    assert decoder.retry == 3000
    decoder.feed(b"retry:0042\n")
    assert decoder.retry == 42


def test_retry_too_many_digits_ignored() -> None:
    """A retry past Python's int-from-str digit limit is ignored rather than crashing."""
    decoder = SSEDecoder()
    assert [E("message", "x")] == decoder.feed(b"retry: " + b"9" * 10_000 + b"\ndata: x\n\n")
    assert decoder.retry is None


def test_id_with_nul_ignored() -> None:
    """An `id` containing NUL leaves the last event ID unchanged."""
    decoder = SSEDecoder()
    assert [E("message", "x", "7")] == decoder.feed(b"id: 7\nid: a\x00b\ndata: x\n\n")
    assert decoder.last_event_id == "7"


def test_id_nul_elsewhere_kept() -> None:
    """NUL is only special in `id`: it is kept in data and event types."""
    assert [E("a\x00b", "c\x00d")] == decode(b"event: a\x00b\ndata: c\x00d\n\n")


def test_empty_id_resets_last_event_id() -> None:
    """`id:` with an empty value resets the last event ID to ""."""
    decoder = SSEDecoder()
    decoder.feed(b"id: 5\n")
    assert decoder.last_event_id == "5"
    assert [E("message", "x", "")] == decoder.feed(b"id:\ndata: x\n\n")
    assert decoder.last_event_id == ""


def test_last_event_id_set_without_dispatch() -> None:
    """An id in a block without data still updates `last_event_id` for a reconnect."""
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 9\n\n") == []
    assert decoder.last_event_id == "9"
    assert [E("message", "x", "9")] == decoder.feed(b"data: x\n\n")


# --- UTF-8 --------------------------------------------------------------------------------


def test_invalid_utf8_replaced() -> None:
    """Invalid UTF-8 becomes U+FFFD, as in the UTF-8 decode algorithm."""
    stream = b"event: \xff\ndata: \xc3(\xed\xa0\x80 ok \xe2\x82\n\n"
    assert [E("\ufffd", "\ufffd(\ufffd\ufffd\ufffd ok \ufffd")] == decode(stream)


def test_line_end_inside_sequence_gives_replacement() -> None:
    """A line end in the middle of a multibyte sequence cuts it: both halves become U+FFFD."""
    assert [E("message", "\ufffd\n\ufffd")] == decode(b"data: \xe2\x82\ndata: \xac\n\n")


def test_multibyte_split_across_chunks() -> None:
    """A character split between chunks (without a line end) decodes whole."""
    chunks = [b"data: \xf0", b"\x9f\x98", b"\x80\n\n"]
    assert [[], [], [E("message", "😀")]] == feed_each(chunks)


def test_messy_bytes_match_whole_stream_decoding() -> None:
    """Decoding per line equals decoding the whole stream with errors='replace'."""
    junk = b"\xff\xfe\xc0\x80\xe0\x80\xed\xbf\xbf\xf4\x90\x80\x80\xf0\x9f\x98 \xc3"
    expected_data = junk.decode("utf-8", "replace")
    for size in (1, 2, 3, 5):
        stream = b"data:" + junk + b"\n\n"
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        events = [e for batch in feed_each(chunks) for e in batch]
        assert [E("message", expected_data)] == events


# --- end of stream ------------------------------------------------------------------------


def test_unterminated_event_discarded() -> None:
    """An event without its blank line is never dispatched."""
    assert decode(b"data: x\n") == []
    assert decode(b"data: x") == []
    assert [E("message", "a")] == decode(b"data: a\n\nevent: b\ndata: b\r\n")


def test_empty_feed() -> None:
    """Feeding b"" returns no events and changes nothing."""
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert [E("message", "x")] == decoder.feed(b"data: x\n\n")


# --- max_line_bytes -------------------------------------------------------------------------


def test_line_at_limit_is_fine() -> None:
    """A line of exactly max_line_bytes (terminator excluded) is accepted."""
    line = b"data: " + b"x" * 10  # 16 bytes
    assert [E("message", "x" * 10)] == decode(line + b"\r\n\r\n", max_line_bytes=16)


def test_long_line_in_one_chunk_keeps_earlier_events() -> None:
    """A too-long line raises; events before it in the same chunk are on the exception."""
    decoder = SSEDecoder(max_line_bytes=16)
    with pytest.raises(SSELineTooLongError) as info:
        decoder.feed(b"data: a\n\ndata: b\n\ndata: " + b"x" * 11 + b"\n\ndata: c\n\n")
    assert [E("message", "a"), E("message", "b")] == info.value.events


def test_long_line_unterminated_in_one_chunk() -> None:
    """The bound applies to the partial line too, before its line end arrives."""
    decoder = SSEDecoder(max_line_bytes=16)
    with pytest.raises(SSELineTooLongError) as info:
        decoder.feed(b"data: a\n\ndata: " + b"x" * 11)
    assert [E("message", "a")] == info.value.events


def test_long_line_in_small_chunks() -> None:
    """Delivered a byte at a time, the error comes on the byte that passes the bound."""
    decoder = SSEDecoder(max_line_bytes=16)
    assert [E("message", "a")] == decoder.feed(b"data: a\n\n")
    line = b"data: " + b"x" * 20
    for index in range(16):
        assert decoder.feed(line[index : index + 1]) == []
    with pytest.raises(SSELineTooLongError) as info:
        decoder.feed(line[16:17])
    assert info.value.events == []


def test_long_line_small_chunks_after_events_in_same_chunk() -> None:
    """Events completed in the chunk that pushes a buffered line over are not lost."""
    decoder = SSEDecoder(max_line_bytes=16)
    assert decoder.feed(b"data: a\n") == []
    with pytest.raises(SSELineTooLongError) as info:
        decoder.feed(b"\ndata: b\n\n" + b"data: " + b"x" * 11)
    assert [E("message", "a"), E("message", "b")] == info.value.events


def test_long_line_completing_partial() -> None:
    """A partial line that grows past the bound in the chunk holding its line end raises."""
    decoder = SSEDecoder(max_line_bytes=16)
    assert decoder.feed(b"data: " + b"x" * 8) == []
    with pytest.raises(SSELineTooLongError) as info:
        decoder.feed(b"y" * 8 + b"\n\n")
    assert info.value.events == []


def test_decoder_refuses_input_after_line_too_long() -> None:
    """After the error the decoder stays closed: every later feed raises again."""
    decoder = SSEDecoder(max_line_bytes=8)
    with pytest.raises(SSELineTooLongError):
        decoder.feed(b"data: 123456789")
    for chunk in (b"", b"\n\n", b"data: x\n\n"):
        with pytest.raises(SSELineTooLongError) as info:
            decoder.feed(chunk)
        assert info.value.events == []


def test_default_limit_is_32_mebibytes() -> None:
    """The default bound is 32 MiB: that line passes, one byte more raises."""
    size = 32 * 1024 * 1024
    line = b"data: " + b"x" * (size - 6)
    [event] = decode(line + b"\n\n")
    assert size - 6 == len(event.data)
    with pytest.raises(SSELineTooLongError):
        decode(line + b"x\n\n")


def test_multi_line_data_is_bounded_too() -> None:
    """Many short data lines cannot grow one event past the bound either."""
    decoder = SSEDecoder(max_line_bytes=16)
    with pytest.raises(SSELineTooLongError) as info:
        decoder.feed(b"data: ok\n\n" + b"data: 12345\n" * 4)
    assert [E("message", "ok")] == info.value.events


def test_invalid_max_line_bytes() -> None:
    """A bound below one byte is refused."""
    with pytest.raises(ValueError, match="max_line_bytes"):
        SSEDecoder(max_line_bytes=0)


def test_line_too_long_error_shape() -> None:
    """The error is a ProtocolError whose `events` defaults to an empty list."""
    error = SSELineTooLongError("too long")
    assert isinstance(error, ProtocolError)
    assert error.events == []
    assert str(error) == "too long"


# --- ServerSentEvent ----------------------------------------------------------------------


def test_decoded_events_are_ordinary_instances() -> None:
    """Decoded events compare, hash and repr like constructed ones, and stay frozen."""
    assert [f.name for f in attrs.fields(ServerSentEvent)] == ["event", "data", "id"]
    (event,) = decode(b"event: t\nid: i\ndata: d\n\n")
    built = ServerSentEvent(event="t", data="d", id="i")
    assert event == built
    assert hash(event) == hash(built)
    assert repr(event) == repr(built)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.data = "changed"  # type: ignore[misc]


# --- encode_sse ---------------------------------------------------------------------------


def test_encode_value_starting_with_space() -> None:
    """A value starting with a space gets the separator space so it survives decoding."""
    encoded = encode_sse(" x", event=" t", id=" i")
    assert encoded == b"id:  i\nevent:  t\ndata:  x\n\n"
    assert [E(" t", " x", " i")] == decode(encoded)


def test_encode_multiline_data_any_line_end() -> None:
    """CR, LF and CRLF in data each become a line break (one `data:` line per line)."""
    encoded = encode_sse("a\rb\r\nc\nd")
    assert encoded == b"data:a\ndata:b\ndata:c\ndata:d\n\n"
    assert [E("message", "a\nb\nc\nd")] == decode(encoded)


def test_encode_trailing_line_break_kept() -> None:
    """Data ending in a line break decodes back with that LF (an empty last data line)."""
    assert [E("message", "a\n")] == decode(encode_sse("a\n"))
    assert [E("message", "\n\n")] == decode(encode_sse("\r\n\r"))


def test_encode_empty_data_is_an_event() -> None:
    """data="" writes `data:`, which dispatches an event with empty data."""
    assert encode_sse("") == b"data:\n\n"
    assert [E("message", "")] == decode(encode_sse(""))


def test_encode_comment_only_block() -> None:
    """A comment-only block (multi-line too) encodes to comment lines and decodes to nothing."""
    encoded = encode_sse(comment="keep\nalive")
    assert encoded == b":keep\n:alive\n\n"
    assert decode(encoded) == []


def test_encode_retry_only_block() -> None:
    """A retry-only block sets retry and dispatches nothing."""
    decoder = SSEDecoder()
    assert decoder.feed(encode_sse(retry=1500)) == []
    assert decoder.retry == 1500


def test_encode_nothing() -> None:
    """With no arguments there is nothing to send."""
    assert encode_sse() == b""


@pytest.mark.parametrize("bad_id", ["a\x00b", "a\nb", "a\rb", "\r\n"])
def test_encode_invalid_id_raises(bad_id: str) -> None:
    """An id with NUL, CR or LF could not come back, so it is refused."""
    with pytest.raises(ValueError, match="id"):
        encode_sse("x", id=bad_id)


@pytest.mark.parametrize("bad_event", ["a\nb", "a\rb"])
def test_encode_invalid_event_raises(bad_event: str) -> None:
    """An event type with a line break is refused."""
    with pytest.raises(ValueError, match="event type"):
        encode_sse("x", event=bad_event)


def test_encode_negative_retry_raises() -> None:
    """A negative retry is refused."""
    with pytest.raises(ValueError, match="retry"):
        encode_sse(retry=-1)


def test_encode_full_block_round_trip() -> None:
    """All fields together round-trip, in the order comment, retry, id, event, data."""
    encoded = encode_sse("é\n😀", event="update", id="42", retry=10, comment="c")
    assert encoded == ":c\nretry:10\nid:42\nevent:update\ndata:é\ndata:😀\n\n".encode()
    decoder = SSEDecoder()
    assert [E("update", "é\n😀", "42")] == decoder.feed(encoded)
    assert (decoder.retry, decoder.last_event_id) == (10, "42")
