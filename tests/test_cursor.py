"""The reader's resume state on its own: which events it takes, by their ids."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferencesh._reader import _Cursor, _Gap


class Event(NamedTuple):
    absolute: bool
    final: bool = False


SNAPSHOT, PARTIAL = Event(True), Event(False)


def take(cursor: _Cursor, event: Event, event_id: str | None, data: bytes = b"{}") -> bool:
    return cursor.admit(event, event_id, data)


def test_in_sequence_events_are_taken_and_replays_dropped() -> None:
    """Consecutive ids are taken; an id already passed (replay, repeat, rewind) is not."""
    cursor = _Cursor()
    assert [True, True, True] == [take(cursor, PARTIAL, str(n)) for n in (1, 2, 3)]
    assert [False, False] == [take(cursor, PARTIAL, "3"), take(cursor, PARTIAL, "1")]
    assert take(cursor, PARTIAL, "4")
    assert "4" == cursor.last_id


def test_a_gap_raises_and_a_snapshot_whatever_its_id_is_taken() -> None:
    """Skipping ahead is a gap; a snapshot is taken even behind or ahead, and re-anchors."""
    cursor = _Cursor()
    take(cursor, PARTIAL, "5")
    with pytest.raises(_Gap, match="6 to 6"):
        take(cursor, PARTIAL, "7")
    assert take(cursor, SNAPSHOT, "2")  # ids that went backwards: the snapshot re-anchors
    assert take(cursor, PARTIAL, "3")
    assert not take(cursor, PARTIAL, "3")
    assert take(cursor, SNAPSHOT, "40")
    assert take(cursor, PARTIAL, "41")


def test_resync_ends_once_an_event_is_taken_in_sequence() -> None:
    """After a gap the next connection starts fresh; once an event is taken (a snapshot, or
    the next id) the stream is whole again, so a later gap is healed again too."""
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
        except _Gap:
            break
    first = taken[0] if taken else 1
    assert list(range(first, first + len(taken))) == taken
