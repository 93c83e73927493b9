"""The one diff, without I/O: what each task payload adds to what the consumer was given."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferencesh import ProtocolError, TaskStatus, TaskUpdate
from inferencesh._converters import structure_task
from inferencesh._task_stream import TaskView, merge_delta


class Tracker:
    """Structure then diff, as a stream does for each payload."""

    def __init__(self) -> None:
        self.view = TaskView("t")

    def absorb(self, payload: Any) -> tuple[TaskUpdate, ...]:
        event = structure_task(payload, "t")
        return () if event is None else self.view.apply(event)


def test_merge_delta_worked_example_from_the_protocol() -> None:
    """protocol.md 4.4's six deltas merge into its stated state."""
    deltas: list[dict[str, Any]] = [
        {"reasoning": "Let me check"},
        {"response": "Hel"},
        {"response": "lo"},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"ci'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Paris"}'}}]},
        {"usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]  # fmt: skip
    state: dict[str, Any] = {}
    states = []
    for delta in deltas:
        state = merge_delta(state, delta)
        states.append(state)
    assert {"response": "Hel", "reasoning": "Let me check"} == states[1]  # never changed later
    assert {
        "reasoning": "Let me check",
        "response": "Hello",
        "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    } == state  # fmt: skip


def test_deltas_accumulate_and_never_overwrite_the_final_output() -> None:
    """Delta events yield the text so far; the completed task keeps the server's output."""
    tracker = Tracker()
    tracker.absorb({"id": "t", "status": 7})
    pieces = []
    for text in ("Hel", "lo", " world"):
        [update] = tracker.absorb({"event": "delta", "data": {"delta": {"response": text}}})
        pieces.append(update.partial_output["response"])
    assert ["Hel", "Hello", "Hello world"] == pieces
    [final] = tracker.absorb({"id": "t", "status": 10, "output": {"response": "Hello world!"}})
    assert {"response": "Hello world!"} == final.output
    assert final.is_terminal


def test_heartbeats_and_unknown_events_yield_nothing() -> None:
    """Heartbeats and other named events are not updates; a non-object is a protocol error."""
    tracker = Tracker()
    assert () == tuple(tracker.absorb({"type": "heartbeat"}))
    assert () == tuple(tracker.absorb({"event": "something_else", "data": {}}))
    with pytest.raises(ProtocolError):
        tracker.absorb([1, 2])


FLOW = [1, 2, 3, 4, 5, 6, 7, 9, 10]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[str], list[dict[str, Any]]]:
    """A task's log lines, and its payloads as connections to a server without event ids
    deliver them: each connection starts with a snapshot whose cumulative logs reach some
    point (the current one, an older one after a rewind, or none at all for a server that
    replays from the start), then per-step partial updates with only the lines after it."""
    lines = [f"line {i}" for i in range(draw(st.integers(0, 30)))]
    payloads: list[dict[str, Any]] = []
    reached = 0  # lines the server has produced so far
    status = 0
    while True:
        start = draw(st.integers(0, reached))
        status = min(status + draw(st.integers(0, 1)), len(FLOW) - 2)
        payloads.append({"id": "t", "status": FLOW[status], "logs": lines[:start]})
        sent = start
        stop = draw(st.integers(min(reached + 1, len(lines)), len(lines)))
        while sent < stop:
            chunk = lines[sent : sent + draw(st.integers(1, 4))]
            sent += len(chunk)
            payloads.append({"data": {"id": "t", "status": 7, "logs": chunk}, "fields": ["logs"]})
        reached = max(reached, sent)
        if reached == len(lines) and not draw(st.booleans()):
            break
    payloads.append({"id": "t", "status": 10, "logs": lines, "output": {"n": len(lines)}})
    return lines, payloads


@settings(max_examples=200, deadline=None)
@given(histories())
def test_every_log_line_exactly_once_and_status_never_backwards(
    history: tuple[list[str], list[dict[str, Any]]],
) -> None:
    """Whatever a reconnect replays, collected logs equal the task's logs, in order."""
    lines, payloads = history
    tracker = Tracker()
    collected: list[str] = []
    ranks: list[int] = []
    for payload in payloads:
        for update in tracker.absorb(payload):
            collected.extend(update.logs)
            ranks.append(update.status.rank)
    assert lines == collected
    assert sorted(ranks) == ranks
    assert TaskStatus.COMPLETED == tracker.view.status


_OUTPUTS = st.one_of(
    st.none(), st.integers(0, 3), st.fixed_dictionaries({"text": st.sampled_from(["a", "b"])})
)


@st.composite
def payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A task payload, snapshot or partial update, with the optional fields drawn freely."""
    task: dict[str, Any] = {"id": "t"}
    if draw(st.booleans()):
        task["status"] = draw(st.sampled_from([1, 2, 7, 7, 7, 9, 10, 11, 12, 99]))
    if draw(st.booleans()):
        task["logs"] = draw(st.lists(st.sampled_from(["l1", "l2", "l3"]), max_size=3))
    if draw(st.booleans()):
        current = draw(st.integers(0, 3) | st.floats(0, 3))
        task["progress"] = {"current": current, "total": draw(st.sampled_from([3, 3.0]))}
    for key in ("output", "partial_output", "error"):
        if draw(st.booleans()):
            task[key] = draw(_OUTPUTS)
    if draw(st.booleans()):
        task["session_id"] = draw(st.sampled_from(["", "s1"]))
    if draw(st.booleans()):
        return {"data": task, "fields": sorted(task)}
    return task


def _validated_path(payload: dict[str, Any]) -> Any:
    """The same payload, but not a dict: it takes the path that validates with cattrs first."""
    if "fields" in payload:
        return {**payload, "data": MappingProxyType(payload["data"])}
    return MappingProxyType(payload)


@settings(max_examples=300, deadline=None)
@given(st.lists(payloads(), max_size=12))
def test_fast_path_and_validated_path_yield_the_same_updates(stream: list[dict[str, Any]]) -> None:
    """Well-formed payloads are read directly; any other shape is validated first. Both must
    make the same decisions, so the same stream gives equal updates either way."""
    fast, validated = Tracker(), Tracker()
    for payload in stream:
        expected = list(validated.absorb(_validated_path(payload)))
        assert expected == list(fast.absorb(payload))
        assert validated.view.status == fast.view.status
        if validated.view.status.is_terminal:
            break


def test_hosted_shapes_are_read_like_the_plain_ones() -> None:
    """Status names, log records and float progress take the validated path to the same result."""
    plain, hosted = Tracker(), Tracker()
    [expected] = plain.absorb(
        {"id": "t", "status": 7, "logs": ["a"], "progress": {"current": 1, "total": 2}}
    )
    [update] = hosted.absorb(
        {
            "id": "t",
            "status": "running",
            "logs": [{"content": "a"}],
            "progress": {"current": 1.0, "total": 2},
        }
    )
    assert expected == update
    assert [] == list(hosted.absorb({"id": "t", "status": 7, "logs": ["a"]}))


def test_partial_output_field_wins_over_a_running_tasks_output() -> None:
    """A running task's intermediate result is `partial_output` when the payload names one,
    else its `output`; an unchanged one is not repeated; a finished task's `output` is final."""
    tracker = Tracker()
    [first] = tracker.absorb({"id": "t", "status": 7, "output": "o", "partial_output": "p"})
    [second] = tracker.absorb({"id": "t", "status": 7, "output": "o2"})
    assert [] == list(tracker.absorb({"id": "t", "status": 7, "output": "o2"}))
    [final] = tracker.absorb({"id": "t", "status": 10, "output": "done", "partial_output": "p"})
    assert ("p", None) == (first.partial_output, first.output)
    assert ("o2", None) == (second.partial_output, second.output)
    assert (None, "done") == (final.partial_output, final.output)
