"""Tests for `inferencesh.TaskStatus`: wire codes, names, parsing and ordering."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from inferencesh import TaskStatus

# The hosted API's numbering (protocol.md 4.1), written out independently of the library.
WIRE_CODES = [
    (0, "unknown"),
    (1, "received"),
    (2, "queued"),
    (3, "dispatched"),
    (4, "preparing"),
    (5, "serving"),
    (6, "setting_up"),
    (7, "running"),
    (8, "cancelling"),
    (9, "uploading"),
    (10, "completed"),
    (11, "failed"),
    (12, "cancelled"),
    (13, "rejected"),
]
TERMINAL = {"completed", "failed", "cancelled", "rejected"}
# The order a task that runs to completion passes through.
NORMAL_FLOW = [
    TaskStatus.RECEIVED,
    TaskStatus.QUEUED,
    TaskStatus.DISPATCHED,
    TaskStatus.PREPARING,
    TaskStatus.SERVING,
    TaskStatus.SETTING_UP,
    TaskStatus.RUNNING,
    TaskStatus.UPLOADING,
    TaskStatus.COMPLETED,
]

JSON_LIKE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(),
    st.floats(),
    st.lists(st.integers()),
)


def _hits_digit_string_bug(value: object) -> bool:
    """Whether `value` is a string `parse` crashes on (see test_parse_non_decimal_digits...)."""
    if not isinstance(value, str):
        return False
    text = value.strip().lower().replace("-", "_")
    return text.isdigit() and not text.isdecimal()


def test_members_are_the_fourteen_api_statuses() -> None:
    """Iterating the enum yields exactly the API's statuses, in code order, without aliases."""
    assert [name for _, name in WIRE_CODES] == [s.value for s in TaskStatus]


@pytest.mark.parametrize(("code", "name"), WIRE_CODES)
def test_code_of_each_member(code: int, name: str) -> None:
    """Each member's `.code` is the API's wire integer."""
    assert code == TaskStatus[name.upper()].code


@pytest.mark.parametrize(("code", "name"), WIRE_CODES)
def test_parse_each_code(code: int, name: str) -> None:
    """Each wire integer parses to the member of that name, by `parse` and by the constructor."""
    assert (name, name) == (TaskStatus.parse(code).value, TaskStatus(code).value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("code", "name"), WIRE_CODES)
def test_parse_each_name(code: int, name: str) -> None:
    """Each lower-case name parses to the member with that code."""
    assert (code, code) == (TaskStatus.parse(name).code, TaskStatus(name).code)


@pytest.mark.parametrize(("code", "name"), WIRE_CODES)
def test_member_equals_and_formats_as_its_name(code: int, name: str) -> None:
    """A member compares equal to its lower-case name and formats as it."""
    member = TaskStatus[name.upper()]
    assert (True, name, name, name) == (member == name, f"{member}", str(member), format(member))


def test_member_is_a_str() -> None:
    """Members are strings, so string-based code keeps working."""
    assert (True, "queued!") == (isinstance(TaskStatus.QUEUED, str), TaskStatus.QUEUED + "!")


def test_member_not_equal_to_other_names_or_its_code() -> None:
    """A member equals only its own name, not another status or its integer code."""
    queued: object = TaskStatus.QUEUED
    assert (False, False) == (queued == "running", queued == 2)


def test_scheduled_is_an_alias_of_dispatched() -> None:
    """The seed's SCHEDULED is the same member as the API's DISPATCHED."""
    assert TaskStatus.DISPATCHED is TaskStatus.SCHEDULED  # type: ignore[comparison-overlap]
    assert TaskStatus.DISPATCHED is TaskStatus["SCHEDULED"]


def test_scheduled_alias_has_code_three_and_dispatched_name() -> None:
    """SCHEDULED carries code 3 and formats as `dispatched`."""
    assert (3, "dispatched") == (TaskStatus.SCHEDULED.code, f"{TaskStatus.SCHEDULED}")


@pytest.mark.parametrize("text", ["scheduled", "SCHEDULED", " Scheduled "])
def test_parse_scheduled_name(text: str) -> None:
    """The string `scheduled` parses to DISPATCHED."""
    assert TaskStatus.DISPATCHED is TaskStatus.parse(text)
    assert TaskStatus.DISPATCHED is TaskStatus(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("QUEUED", TaskStatus.QUEUED),
        ("Running", TaskStatus.RUNNING),
        ("  completed\n", TaskStatus.COMPLETED),
        ("SETTING_UP", TaskStatus.SETTING_UP),
        ("setting-up", TaskStatus.SETTING_UP),
        ("canceled", TaskStatus.CANCELLED),
        ("canceling", TaskStatus.CANCELLING),
        ("setup", TaskStatus.SETTING_UP),
    ],
)
def test_parse_name_variants(value: str, expected: TaskStatus) -> None:
    """Case, surrounding space, hyphens and US spellings are accepted."""
    assert expected is TaskStatus.parse(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", TaskStatus.UNKNOWN),
        ("7", TaskStatus.RUNNING),
        ("10", TaskStatus.COMPLETED),
        ("13", TaskStatus.REJECTED),
        (" 3 ", TaskStatus.DISPATCHED),
        ("007", TaskStatus.RUNNING),
        ("14", TaskStatus.UNKNOWN),
        ("404", TaskStatus.UNKNOWN),
        ("-1", TaskStatus.UNKNOWN),
        ("7.0", TaskStatus.UNKNOWN),
    ],
)
def test_parse_digit_strings(value: str, expected: TaskStatus) -> None:
    """A string of digits is read as a wire code; an unknown code is UNKNOWN."""
    assert expected is TaskStatus.parse(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        -1,
        14,
        404,
        2**70,
        -(2**70),
        7.0,
        float("nan"),
        "",
        "   ",
        "bogus",
        "queued!",
        "task_status_queued",
        [7],
        {"status": 7},
        (),
        b"queued",
        object(),
    ],
    ids=lambda value: "object()" if type(value) is object else repr(value),  # stable for xdist
)
def test_parse_garbage_is_unknown(value: object) -> None:
    """Anything that is not a known code or name parses to UNKNOWN without raising."""
    assert TaskStatus.UNKNOWN is TaskStatus.parse(value)


@pytest.mark.parametrize("value", [None, True, 404, "bogus", [7], {"a": 1}], ids=repr)
def test_constructor_garbage_is_unknown(value: object) -> None:
    """`TaskStatus(x)` follows `parse`: garbage (even unhashable) is UNKNOWN, not ValueError."""
    assert TaskStatus.UNKNOWN is TaskStatus(value)  # type: ignore[arg-type]


def test_bool_is_not_a_code() -> None:
    """`True` is not read as code 1 (RECEIVED), nor `False` as code 0 by accident of int-ness."""
    assert (TaskStatus.UNKNOWN, TaskStatus.UNKNOWN) == (
        TaskStatus.parse(True),
        TaskStatus.parse(False),
    )


@pytest.mark.parametrize("member", list(TaskStatus))
def test_parse_member_is_identity(member: TaskStatus) -> None:
    """Parsing a member returns that same member."""
    assert member is TaskStatus.parse(member)


@pytest.mark.parametrize(("code", "name"), WIRE_CODES)
def test_is_terminal(code: int, name: str) -> None:
    """Exactly COMPLETED, FAILED, CANCELLED and REJECTED (codes 10-13) are terminal."""
    assert (name in TERMINAL) == TaskStatus.parse(code).is_terminal


def test_terminal_codes_are_ten_to_thirteen() -> None:
    """The terminal members are those with codes 10 to 13."""
    assert {10, 11, 12, 13} == {s.code for s in TaskStatus if s.is_terminal}


def test_rank_strictly_increases_along_normal_flow() -> None:
    """Along received → ... → uploading → completed, each rank is above the previous one."""
    ranks = [s.rank for s in NORMAL_FLOW]
    assert sorted(set(ranks)) == ranks


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (TaskStatus.UNKNOWN, TaskStatus.RECEIVED),
        (TaskStatus.RUNNING, TaskStatus.CANCELLING),
        (TaskStatus.UPLOADING, TaskStatus.CANCELLING),
        (TaskStatus.CANCELLING, TaskStatus.CANCELLED),
        (TaskStatus.RUNNING, TaskStatus.FAILED),
        (TaskStatus.QUEUED, TaskStatus.REJECTED),
    ],
)
def test_rank_increases_on_other_transitions(before: TaskStatus, after: TaskStatus) -> None:
    """Cancellation, failure and rejection paths also move rank forward."""
    assert before.rank < after.rank


def test_terminal_ranks_exceed_every_non_terminal_rank() -> None:
    """No non-terminal status ranks at or above a terminal one."""
    non_terminal = max(s.rank for s in TaskStatus if not s.is_terminal)
    terminal = min(s.rank for s in TaskStatus if s.is_terminal)
    assert non_terminal < terminal


@given(JSON_LIKE.filter(lambda v: not _hits_digit_string_bug(v)))
def test_parse_never_raises(value: object) -> None:
    """`parse` returns a member for any JSON-like value (known digit-string bug excluded)."""
    assert isinstance(TaskStatus.parse(value), TaskStatus)


@given(JSON_LIKE)
@example("²")
def test_parse_never_raises_unfiltered(value: object) -> None:
    """`parse` returns a member for any JSON-like value, including odd digit strings."""
    assert isinstance(TaskStatus.parse(value), TaskStatus)


@pytest.mark.parametrize("value", ["²", "①", "1²"])
def test_parse_non_decimal_digit_strings_is_unknown(value: str) -> None:
    """Strings of non-decimal digits (superscripts, circled) parse to UNKNOWN."""
    assert TaskStatus.UNKNOWN is TaskStatus.parse(value)


def test_parse_huge_digit_string_is_unknown() -> None:
    """A digit string too long for int() parses to UNKNOWN."""
    assert TaskStatus.UNKNOWN is TaskStatus.parse("1" * 5000)
