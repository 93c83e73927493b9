"""Tests for the typed events (`TaskUpdate`, `Progress`) and the wire converter."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferencesh import Progress, ProtocolError, TaskStatus, TaskUpdate
from inferencesh._converters import PARTIAL, TaskEvent, structure_task
from inferencesh._events import new_progress, new_update
from inferencesh._task_stream import update_of


def _event(payload: Any, task_id: str = "t") -> TaskEvent:
    event = structure_task(payload, task_id)
    assert event is not None
    return event


def _read(payload: Any, task_id: str = "t") -> TaskUpdate:
    """A payload read on its own, as a REST answer is."""
    return update_of(structure_task(payload, task_id), task_id)


FIELD_NAMES = [
    "id",
    "status",
    "logs",
    "progress",
    "partial_output",
    "output",
    "error",
    "session_id",
]
# Keys structure_task gives meaning to; `data` + `fields` together mark a partial update, and
# `event` and `type` name other kinds of payload (a delta, a heartbeat).
KNOWN_KEYS = {*FIELD_NAMES, "data", "fields", "event", "type"}


def _update(**raw_extra: Any) -> TaskUpdate:
    return TaskUpdate(
        id="t_1",
        status=TaskStatus.RUNNING,
        logs=("a", "b"),
        progress=Progress(current=3, total=4),
        partial_output={"text": "hel"},
        error=None,
        session_id="s_1",
        raw={"id": "t_1", "status": 7, **raw_extra},
    )


# --- TaskUpdate / Progress mapping reads -------------------------------------------------------


def test_getitem_reads_fields() -> None:
    """`update[name]` returns the attribute of that name."""
    update = _update()
    assert ("t_1", TaskStatus.RUNNING, ("a", "b"), {"text": "hel"}, "s_1") == (
        update["id"],
        update["status"],
        update["logs"],
        update["partial_output"],
        update["session_id"],
    )


def test_status_read_compares_to_plain_string() -> None:
    """`update["status"]` compares equal to the plain status name, as dict-based code expects."""
    assert "running" == _update()["status"]


def test_nested_progress_read() -> None:
    """`update["progress"]["current"]` reaches through to the Progress."""
    update = _update()
    assert (3, 4) == (update["progress"]["current"], update["progress"]["total"])


def test_getitem_returns_none_valued_field() -> None:
    """A field whose value is None is present: it reads as None, not KeyError."""
    assert None is _update()["output"]


def test_getitem_missing_key_raises_keyerror() -> None:
    """A key that is neither a field nor in raw raises KeyError carrying the key."""
    with pytest.raises(KeyError) as info:
        _update()["nope"]
    assert ("nope",) == info.value.args


def test_getitem_raw_name_is_not_a_key() -> None:
    """`raw` itself is not readable as a key (it is the container of the extras)."""
    with pytest.raises(KeyError):
        _update()["raw"]


def test_get_returns_default_for_missing_key() -> None:
    """`get` returns None, or the given default, for a missing key."""
    update = _update()
    assert (None, 5) == (update.get("nope"), update.get("nope", 5))


def test_get_returns_value_for_present_key() -> None:
    """`get` returns the value, not the default, for a present key (even a None one)."""
    update = _update()
    assert (("a", "b"), None) == (update.get("logs", "dflt"), update.get("output", "dflt"))


def test_raw_extras_readable() -> None:
    """Keys of the raw payload that are not fields read through `[]`, `get` and `in`."""
    update = _update(created_at="2024-01-01", short_id="abc")
    assert ("2024-01-01", "abc", True) == (
        update["created_at"],
        update.get("short_id"),
        "created_at" in update,
    )


def test_fields_take_precedence_over_raw() -> None:
    """A raw key that shares a field's name reads as the typed field, not the raw value."""
    update = _update()
    assert (TaskStatus.RUNNING, "t_1") == (update["status"], update["id"])
    assert 7 == update.raw["status"]


def test_contains() -> None:
    """`in` is true for fields (even None-valued) and raw keys, false otherwise."""
    update = _update(extra=1)
    assert (True, True, True, False, False, False) == (
        "id" in update,
        "output" in update,
        "extra" in update,
        "nope" in update,
        "raw" in update,
        1 in update,
    )


def test_keys_are_fields_in_order_then_raw_extras() -> None:
    """`keys()` lists fields in declaration order, then raw extras, with no duplicates."""
    update = _update(zeta=1, alpha=2)
    assert [*FIELD_NAMES, "zeta", "alpha"] == update.keys()


def test_iter_and_dict_conversion() -> None:
    """Iteration yields `keys()`, so `dict(update)` gives every field and extra."""
    update = _update(extra=1)
    as_dict = dict(update)
    assert (update.keys(), "t_1", 1) == (list(update), as_dict["id"], as_dict["extra"])


def test_progress_mapping_reads() -> None:
    """Progress answers `[]`, `get`, `in` and `keys()` from its two fields."""
    progress = Progress(current=1, total=2)
    assert (1, 2, None, True, False, ["current", "total"]) == (
        progress["current"],
        progress.get("total"),
        progress.get("fraction"),
        "current" in progress,
        "nope" in progress,
        progress.keys(),
    )


def test_progress_missing_key_raises_keyerror() -> None:
    """Progress raises KeyError for a key it does not have."""
    with pytest.raises(KeyError):
        Progress(current=1, total=2)["raw"]


@pytest.mark.parametrize(
    ("current", "total", "expected"),
    [
        (1, 4, 0.25), (0, 4, 0.0), (5, 4, 1.0), (-1, 4, 0.0), (1, 0, None), (1, -2, None),
        # What a caller's own Progress may hold (JSON cannot): unknown, never a raw error
        # (a huge int against an infinity or a NaN raised OverflowError or ValueError).
        (math.nan, 10, None), (5, math.nan, None), (10**400, math.inf, None),
        (math.inf, 10**400, None), (-math.inf, 10, None), (10**400, 10**401, 0.1),
    ],
)  # fmt: skip
def test_progress_fraction(current: float, total: float, expected: float | None) -> None:
    """`fraction` is current/total clamped to [0, 1], None when total is not positive or
    either is not finite."""
    assert expected == Progress(current=current, total=total).fraction


def test_task_update_is_frozen() -> None:
    """Assigning to a TaskUpdate attribute raises FrozenInstanceError."""
    update = _update()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        update.status = TaskStatus.COMPLETED  # type: ignore[misc]


def test_progress_is_frozen() -> None:
    """Assigning to a Progress attribute raises FrozenInstanceError."""
    progress = Progress(current=1, total=2)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        progress.current = 2  # type: ignore[misc]


def test_repr_omits_raw() -> None:
    """The repr shows the typed fields but not the raw payload."""
    text = repr(_update(secret_marker="zz_secret_zz"))
    assert (True, False, False) == ("id='t_1'" in text, "raw=" in text, "zz_secret_zz" in text)


def test_equality_ignores_raw() -> None:
    """Two updates with the same fields but different raw payloads are equal."""
    assert _update(a=1) == _update(b=2)


def test_equality_uses_fields() -> None:
    """Updates that differ in a field are not equal."""
    assert _update() != attrs.evolve(_update(), logs=("a",))


def test_defaults() -> None:
    """A TaskUpdate built from an id alone has empty, UNKNOWN defaults."""
    update = TaskUpdate(id="t")
    assert (TaskStatus.UNKNOWN, (), None, None, None, None, None, {}) == (
        update.status,
        update.logs,
        update.progress,
        update.partial_output,
        update.output,
        update.error,
        update.session_id,
        update.raw,
    )


@pytest.mark.parametrize(("status", "expected"), [(TaskStatus.RUNNING, False), ("failed", True)])
def test_update_is_terminal(status: Any, expected: bool) -> None:
    """`TaskUpdate.is_terminal` follows its status."""
    assert expected is _read({"id": "t", "status": status}).is_terminal


# --- structure_task ------------------------------------------------------------------------


def test_snapshot_of_running_task() -> None:
    """A full running snapshot becomes a non-partial update; its output is partial_output."""
    payload = {
        "id": "t_1",
        "status": 7,
        "logs": ["one", "two"],
        "progress": {"current": 1, "total": 4},
        "output": {"text": "he"},
        "session_id": "s_9",
    }
    event = _event(payload, "t_1")
    expected = TaskUpdate(
        id="t_1",
        status=TaskStatus.RUNNING,
        logs=("one", "two"),
        progress=Progress(current=1, total=4),
        partial_output={"text": "he"},
        output=None,
        session_id="s_9",
    )
    assert (expected, True, ["one", "two"]) == (
        update_of(event, "t_1"),
        event.absolute,
        event.logs,
    )


def test_snapshot_keeps_payload_as_raw() -> None:
    """The update's raw is the payload as received."""
    payload = {"id": "t_1", "status": "running"}
    assert payload == _read(payload, "t_1").raw


@pytest.mark.parametrize("status", [10, 11, 12, 13, "completed"])
def test_terminal_output_goes_to_output(status: Any) -> None:
    """For a terminal task, `output` is the final output and partial_output is None."""
    update = _read({"id": "t", "status": status, "output": {"r": 1}})
    assert ({"r": 1}, None) == (update.output, update.partial_output)


@pytest.mark.parametrize("status", [0, 1, 7, 9, "running", "bogus", None])
def test_non_terminal_output_goes_to_partial_output(status: Any) -> None:
    """For a non-terminal (or unknown) status, `output` becomes partial_output."""
    update = _read({"id": "t", "status": status, "output": [1, 2]})
    assert ([1, 2], None) == (update.partial_output, update.output)


def test_explicit_partial_output_wins_for_running_task() -> None:
    """A running payload's own `partial_output` field is preferred over its `output`."""
    update = _read({"id": "t", "status": 7, "output": "final?", "partial_output": "so far"})
    assert "so far" == update.partial_output


def test_status_string_and_code_parse_the_same() -> None:
    """A string status and its wire code produce the same TaskStatus."""
    by_code = _read({"id": "t", "status": 4}).status
    by_name = _read({"id": "t", "status": "PREPARING"}).status
    assert (TaskStatus.PREPARING, TaskStatus.PREPARING) == (by_code, by_name)


def test_unknown_status_is_unknown_not_error() -> None:
    """An unrecognised status value is UNKNOWN and does not raise."""
    assert TaskStatus.UNKNOWN is _read({"id": "t", "status": {"x": 1}}).status


def test_error_passes_through() -> None:
    """The `error` field is kept as sent."""
    assert {"msg": "boom"} == _read({"id": "t", "status": 11, "error": {"msg": "boom"}}).error


def test_partial_update_is_unwrapped() -> None:
    """`{"data": ..., "fields": [...]}` is unwrapped and marked partial."""
    payload = {"data": {"id": "t_2", "status": 7, "logs": ["new"]}, "fields": ["status", "logs"]}
    event = _event(payload, "t_2")
    update = update_of(event, "t_2")
    assert ("t_2", TaskStatus.RUNNING, ("new",), PARTIAL, False) == (
        update.id,
        update.status,
        update.logs,
        event.kind,
        event.absolute,
    )


def test_partial_update_raw_is_the_inner_data() -> None:
    """A partial update's raw is the inner `data` object, not the wrapper."""
    inner = {"id": "t_2", "status": 2, "extra": 1}
    assert inner == _read({"data": inner, "fields": ["status"]}, "t_2").raw


def test_partial_update_without_id_uses_task_id() -> None:
    """A partial update lacking `id` takes the `task_id` the caller supplies."""
    event = _event({"data": {"status": 7}, "fields": ["status"]}, "t_3")
    assert ("t_3", PARTIAL) == (update_of(event, "t_3").id, event.kind)


def test_payload_naming_another_task_is_a_protocol_error() -> None:
    """An event of another task in this task's stream breaks the protocol: never trusted."""
    with pytest.raises(ProtocolError, match="another task"):
        structure_task({"id": "t_own"}, "t_other")


def test_data_without_fields_is_not_unwrapped() -> None:
    """A `data` key alone does not mark a partial update; it stays a raw extra."""
    event = _event({"id": "t", "data": {"id": "inner"}})
    assert (True, {"id": "inner"}) == (event.absolute, update_of(event, "t")["data"])


def test_hosted_api_log_records_become_strings() -> None:
    """Log records `{"content": ...}` become their content; plain strings are kept."""
    payload = {
        "id": "t",
        "logs": [
            {"id": "l1", "task_id": "t", "log_type": 1, "content": "first"},
            "second",
            {"content": ""},
        ],
    }
    assert ("first", "second", "") == _read(payload).logs


def test_no_logs_key() -> None:
    """Without a `logs` key the update has no lines and the event says the log is unknown."""
    event = _event({"id": "t"})
    assert ((), None) == (update_of(event, "t").logs, event.logs)


def test_null_logs() -> None:
    """`logs: null` gives no lines and, like a missing key, says nothing of the log."""
    event = _event({"id": "t", "logs": None})
    assert ((), None) == (update_of(event, "t").logs, event.logs)


def test_null_progress_and_session_id() -> None:
    """Null progress and session_id become None."""
    update = _read({"id": "t", "progress": None, "session_id": None})
    assert (None, None) == (update.progress, update.session_id)


def test_float_progress() -> None:
    """Float progress values are accepted."""
    assert (
        Progress(0.5, 1.5)
        == _read({"id": "t", "progress": {"current": 0.5, "total": 1.5}}).progress
    )


def test_unknown_fields_kept_in_raw() -> None:
    """Fields the SDK does not name survive in raw and read through the mapping interface."""
    payload = {
        "id": "t",
        "status": 7,
        "short_id": "abc",
        "events": [{"status": 2}],
        "usage_events": None,
        "progress_extra": {"nested": [1, 2]},
    }
    update = _read(payload)
    assert ("abc", [{"status": 2}], None, {"nested": [1, 2]}) == (
        update["short_id"],
        update["events"],
        update["usage_events"],
        update.raw["progress_extra"],
    )


def test_progress_extra_keys_are_ignored() -> None:
    """Unknown keys inside `progress` do not break parsing."""
    progress = _read({"id": "t", "progress": {"current": 1, "total": 2, "unit": "steps"}}).progress
    assert Progress(1, 2) == progress


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"id": 123}, "another task"),
        ({"id": ""}, "another task"),
        ({"id": None}, "another task"),
        ({"id": ["t"]}, "another task"),
        ({"id": "t", "logs": "one line"}, "logs"),
        ({"id": "t", "logs": {"a": "b"}}, "logs"),
        ({"id": "t", "logs": [1]}, "logs"),
        ({"id": "t", "logs": [None]}, "logs"),
        ({"id": "t", "logs": [{"text": "no content key"}]}, "logs"),
        ({"id": "t", "logs": [{"content": 5}]}, "logs"),
        ({"id": "t", "progress": 5}, "progress"),
        ({"id": "t", "progress": "half"}, "progress"),
        ({"id": "t", "progress": [1, 2]}, "progress"),
        ({"id": "t", "progress": {"current": 1}}, "progress"),
        ({"id": "t", "progress": {"current": "1", "total": 2}}, "progress"),
        ({"id": "t", "progress": {"current": True, "total": 2}}, "progress"),
        ({"id": "t", "progress": {"current": 1, "total": None}}, "progress"),
        ({"id": "t", "session_id": 42}, "session_id"),
        ({"id": "t", "session_id": ["s"]}, "session_id"),
        ({"id": "t", "session_id": {"id": "s"}}, "session_id"),
        ({"data": {"id": "t", "logs": "x"}, "fields": ["logs"]}, "logs"),
    ],
    ids=repr,
)
def test_malformed_field_raises_protocol_error_naming_it(
    payload: dict[str, Any], field: str
) -> None:
    """A known field with the wrong shape raises ProtocolError whose message names the field."""
    with pytest.raises(ProtocolError, match=field if " " in field else f"'{field}'"):
        structure_task(payload, "t")


@pytest.mark.parametrize("value", [0, False, [], {}], ids=repr)
def test_falsy_non_string_session_id_raises(value: object) -> None:
    """A falsy session_id of the wrong type is malformed, like a truthy one."""
    with pytest.raises(ProtocolError, match="'session_id'"):
        structure_task({"id": "t", "session_id": value}, "t")


def test_malformed_field_error_chains_cause() -> None:
    """The ProtocolError for a malformed field chains the underlying error."""
    with pytest.raises(ProtocolError) as info:
        structure_task({"id": "t", "progress": "half"}, "t")
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        [{"id": "t"}],
        "t",
        7,
        1.5,
        True,
        {"data": [1], "fields": []},
        {"data": None, "fields": []},
    ],
    ids=repr,
)
def test_non_object_payload_raises_protocol_error(payload: Any) -> None:
    """A payload (or partial `data`) that is not a JSON object raises ProtocolError."""
    with pytest.raises(ProtocolError, match="JSON object"):
        structure_task(payload, "t")


def test_structure_task_returns_a_task_event() -> None:
    """The converter returns a TaskEvent; a heartbeat or an empty delta carries nothing."""
    assert type(structure_task({"id": "t"}, "t")) is TaskEvent
    assert structure_task({"type": "heartbeat"}, "t") is None
    assert structure_task({"event": "delta", "data": {"delta": {}}}, "t") is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_progress_is_a_protocol_error(bad: float) -> None:
    """A progress number that is not finite is malformed, never a NaN fraction downstream."""
    with pytest.raises(ProtocolError, match="'progress'"):
        structure_task({"id": "t", "progress": {"current": bad, "total": 2}}, "t")


def test_huge_progress_numbers_give_a_sane_fraction() -> None:
    """A 400-digit count (the stdlib decoder keeps big ints) never overflows the fraction."""
    huge = 10**400
    assert 0.5 == Progress(huge // 2, huge).fraction
    assert 1.0 == Progress(huge, 3).fraction
    assert 0.0 == Progress(-huge, huge).fraction
    assert None is Progress(1, -huge).fraction


# --- properties --------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
extra_keys = st.text(max_size=12).filter(lambda k: k not in KNOWN_KEYS)
extras = st.dictionaries(extra_keys, json_values, max_size=5)

numbers = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))
log_line = st.one_of(
    st.text(max_size=20),
    st.fixed_dictionaries({"content": st.text(max_size=20)}, optional={"log_type": st.integers()}),
)
valid_fields: dict[str, st.SearchStrategy[Any]] = {
    "status": st.one_of(
        st.none(),
        st.integers(),
        st.sampled_from(list(TaskStatus)),
        st.sampled_from([s.value for s in TaskStatus] + ["scheduled", "QUEUED", "7", "bogus"]),
    ),
    "logs": st.one_of(st.none(), st.lists(log_line, max_size=4)),
    "progress": st.one_of(st.none(), st.fixed_dictionaries({"current": numbers, "total": numbers})),
    "output": json_values,
    "partial_output": json_values,
    "error": json_values,
    "session_id": st.one_of(st.none(), st.text(max_size=10)),
}
valid_payloads = st.tuples(
    st.text(min_size=1, max_size=10),
    st.fixed_dictionaries({}, optional=valid_fields),
    extras,
).map(lambda parts: {**parts[2], **parts[1], "id": parts[0]})


def _hits_status_digit_bug(value: Any) -> bool:
    """Whether the (partial) payload's status trips the known TaskStatus.parse digit bug."""
    if not isinstance(value, dict):
        return False
    if "fields" in value and isinstance(value.get("data"), dict):
        value = value["data"]
    status = value.get("status")
    if not isinstance(status, str):
        return False
    text = status.strip().lower().replace("-", "_")
    return text.isdigit() and not text.isdecimal()


any_fields = st.fixed_dictionaries(
    {}, optional=dict.fromkeys([*FIELD_NAMES, "data", "fields"], json_values)
)
any_payloads = st.tuples(any_fields, extras).map(lambda parts: {**parts[1], **parts[0]})


@given(valid_payloads)
def test_well_formed_payload_never_raises(payload: dict[str, Any]) -> None:
    """A payload of well-formed known fields plus arbitrary extras always parses, keeping extras."""
    update = _read(payload, payload["id"])
    extras_seen = {k: update[k] for k in payload if k not in KNOWN_KEYS}
    assert (payload["id"], {k: v for k, v in payload.items() if k not in KNOWN_KEYS}) == (
        update.id,
        extras_seen,
    )


@given(st.one_of(json_values, any_payloads).filter(lambda v: not _hits_status_digit_bug(v)))
def test_arbitrary_payload_raises_only_protocol_error(value: Any) -> None:
    """Any JSON value, or arbitrary JSON in the known fields, parses or raises ProtocolError."""
    try:
        update = update_of(structure_task(value, "t"), "t")
    except ProtocolError:
        return
    assert isinstance(update, TaskUpdate)


def test_odd_digit_status_string_does_not_escape_converter() -> None:
    """A status like '²' is UNKNOWN and does not raise out of structure_task."""
    assert TaskStatus.UNKNOWN is _read({"id": "t", "status": "²"}).status


_ANY = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@given(
    task_id=st.text(min_size=1, max_size=4),
    status=st.sampled_from(list(TaskStatus)),
    logs=st.lists(st.text(max_size=3), max_size=3).map(tuple),
    progress=st.none() | st.builds(Progress, st.integers(0, 9), st.integers(0, 9)),
    partial_output=_ANY,
    output=_ANY,
    error=_ANY,
    session_id=st.none() | st.text(max_size=3),
    raw=st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)
def test_fast_constructors_build_what_init_builds(
    task_id: str,
    status: TaskStatus,
    logs: tuple[str, ...],
    progress: Progress | None,
    partial_output: Any,
    output: Any,
    error: Any,
    session_id: str | None,
    raw: dict[str, Any],
) -> None:
    """`new_update`/`new_progress` (the streams' constructors) and `__init__` agree on every
    field, default or not, and on everything built from the fields."""
    args = (task_id, status, logs, progress, partial_output, output, error, session_id, raw)
    fast, slow = new_update(*args), TaskUpdate(*args)
    assert type(fast) is TaskUpdate
    assert attrs.astuple(slow, recurse=False) == attrs.astuple(fast, recurse=False)
    assert (slow, repr(slow), list(slow.keys())) == (fast, repr(fast), list(fast.keys()))
    assert attrs.evolve(slow, logs=("x",)) == attrs.evolve(fast, logs=("x",))
    if progress is not None:
        assert Progress(progress.current, progress.total) == new_progress(
            progress.current, progress.total
        )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.status = TaskStatus.FAILED  # type: ignore[misc]


def test_to_dict_of_output_nested_as_deep_as_loads_allows() -> None:
    """Output nested 511 deep (`loads` accepts up to 512) converts without RecursionError,
    into new containers (the update's own output is not shared), in the keys' order."""
    from inferencesh._wire import MAX_JSON_DEPTH, loads

    depth = MAX_JSON_DEPTH - 1
    text = '{"a": 1, "b": ' * (depth - 1) + '[1, "x"]' + "}" * (depth - 1)
    output = loads(text.encode())
    update = _read({"id": "t", "status": "completed", "output": output})
    data = update.to_dict()
    level, seen = data["output"], 1
    while isinstance(level, dict):
        assert list(level) == ["a", "b"]
        level, seen = level["b"], seen + 1
    assert (level, seen) == ([1, "x"], depth)
    assert data["output"] is not update.output
    assert data["status"] == TaskStatus.COMPLETED.value
