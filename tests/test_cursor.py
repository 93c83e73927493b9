"""The reader's resume state on its own: which events it takes, by their ids."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferencesh._reader import _Cursor, _Resync


class Event(NamedTuple):
    absolute: bool
    final: bool = False


SNAPSHOT, PARTIAL = Event(True), Event(False)


def take(
    cursor: _Cursor, event: Event, event_id: str | None, data: bytes | memoryview = b"{}"
) -> bool:
    return cursor.admit(event, event_id, data)


def test_in_sequence_events_are_taken_and_replays_dropped() -> None:
    """Consecutive ids are taken; an id already passed (replay, repeat, rewind) is not."""
    cursor = _Cursor()
    assert [True, True, True] == [take(cursor, PARTIAL, str(n), b"%d" % n) for n in (1, 2, 3)]
    assert [False, False] == [take(cursor, PARTIAL, "3", b"3"), take(cursor, PARTIAL, "1", b"1")]
    assert take(cursor, PARTIAL, "4")
    assert "4" == cursor.last_id


def test_a_stale_snapshot_is_dropped_and_a_newer_one_taken() -> None:
    """A snapshot behind the stream (a replay from the start) gives nothing; one at or past
    the current position is taken; the final one is taken whatever its id."""
    cursor = _Cursor()
    assert take(cursor, SNAPSHOT, "1", b"s1")
    assert [True, True] == [take(cursor, PARTIAL, str(n), b"%d" % n) for n in (2, 3)]
    assert not take(cursor, SNAPSHOT, "1", b"s1")
    assert not take(cursor, PARTIAL, "2", b"2")
    assert take(cursor, SNAPSHOT, "3", b"s3")  # at the current position: harmless
    assert take(cursor, SNAPSHOT, "9")
    assert not take(cursor, PARTIAL, "9", b"{}")
    assert take(cursor, Event(True, final=True), "2")


def test_a_gap_or_another_event_under_a_passed_id_starts_afresh() -> None:
    """Skipping ahead, or a different payload under the id last taken (the server numbers its
    events afresh), needs a fresh start; its first snapshot anchors, whatever its id."""
    cursor = _Cursor()
    take(cursor, PARTIAL, "5", b"five")
    with pytest.raises(_Resync, match="6 to 6"):
        take(cursor, PARTIAL, "7")
    with pytest.raises(_Resync, match="another event under id 5"):
        take(cursor, PARTIAL, "5", b"not five")
    assert not take(cursor, PARTIAL, "5", b"five")  # the same payload: a repeat
    cursor.resync = True
    assert not take(cursor, PARTIAL, "3")  # cannot be placed before the anchor
    assert take(cursor, SNAPSHOT, "2")  # ids that went backwards: the snapshot re-anchors
    assert not cursor.resync
    assert take(cursor, PARTIAL, "3")
    assert not take(cursor, SNAPSHOT, "1")


def test_chat_snapshot_frames_share_an_id() -> None:
    """Several snapshot frames under one id (a chat's messages, then the chat) are all taken."""
    cursor = _Cursor()
    take(cursor, PARTIAL, "4", b"delta")
    assert [True, True, True] == [take(cursor, SNAPSHOT, "7", b"m%d" % n) for n in range(3)]


def test_resync_ends_once_an_event_is_taken() -> None:
    """After a fresh start, once an event is taken (a snapshot, or the next id) the stream is
    whole again, so a later gap is healed again too."""
    cursor = _Cursor()
    take(cursor, PARTIAL, "1")
    cursor.resync = True
    assert take(cursor, SNAPSHOT, "9")
    assert not cursor.resync
    cursor.resync = True
    assert take(cursor, PARTIAL, "10")
    assert not cursor.resync


@pytest.mark.parametrize("bad", ["4\x01x", " 4", "a" * 1025, "é", "4\n"])
def test_an_id_that_is_no_header_is_not_echoed(bad: str) -> None:
    """An id with control characters, surrounding space, non-ASCII or over 1 KiB is never
    sent back as Last-Event-ID: the next connection starts from a snapshot instead."""
    cursor = _Cursor()
    take(cursor, PARTIAL, "3")
    assert take(cursor, PARTIAL, bad)
    assert "" == cursor.last_id


def test_novelty_tells_a_connection_that_only_repeats_itself() -> None:
    """A connection that brings only the snapshot seen before is not progress; a new id, a new
    snapshot without ids, or any relative event without ids is."""
    cursor = _Cursor()
    take(cursor, SNAPSHOT, None, b'{"status":7}')
    cursor.novel = False
    take(cursor, SNAPSHOT, None, b'{"status":7}')
    assert not cursor.novel
    take(cursor, SNAPSHOT, None, b'{"status":8}')
    assert cursor.novel
    cursor.novel = False
    take(cursor, SNAPSHOT, "5")
    assert cursor.novel
    cursor.novel = False
    take(cursor, SNAPSHOT, "5")
    assert not cursor.novel


@given(st.lists(st.integers(1, 30), max_size=60))
def test_taken_ids_only_ever_go_up_by_one(ids: list[int]) -> None:
    """Whatever order relative events arrive in, the taken ones are 1, 2, 3, ... from the
    first, with nothing skipped and nothing twice (a gap stops the connection)."""
    cursor = _Cursor()
    taken: list[int] = []
    for n in ids:
        try:
            if take(cursor, PARTIAL, str(n)):
                taken.append(n)
        except _Resync:
            break
    first = taken[0] if taken else 1
    assert list(range(first, first + len(taken))) == taken


def test_a_repeat_is_known_whether_it_comes_as_bytes_or_as_a_view() -> None:
    """A long event is a view of its network read when the read holds all of it, and joined
    bytes when it was cut across reads: a repeat is the same payload either way."""
    payload = b'{"data": {"logs": ["' + b"x" * 3000 + b'"]}, "fields": ["logs"]}'
    for first, again in ((payload, memoryview(payload)), (memoryview(payload), payload)):
        cursor = _Cursor()
        assert take(cursor, PARTIAL, "2", first)
        assert not take(cursor, PARTIAL, "2", again)
