"""The task stream's state machine, without I/O: what is new in each payload, across reconnects."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferencesh import ProtocolError, TaskStatus
from inferencesh._task_stream import TaskTracker, merge_delta


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
    for delta in deltas:
        merge_delta(state, delta)
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
    tracker = TaskTracker("t")
    tracker.absorb({"id": "t", "status": 7})
    pieces = []
    for text in ("Hel", "lo", " world"):
        [update] = tracker.absorb({"event": "delta", "data": {"delta": {"response": text}}})
        pieces.append(update.partial_output["response"])
    assert ["Hel", "Hello", "Hello world"] == pieces
    [final] = tracker.absorb({"id": "t", "status": 10, "output": {"response": "Hello world!"}})
    assert {"response": "Hello world!"} == final.output
    assert tracker.finished


def test_heartbeats_and_unknown_events_yield_nothing() -> None:
    """Heartbeats and other named events are not updates; a non-object is a protocol error."""
    tracker = TaskTracker("t")
    assert () == tuple(tracker.absorb({"type": "heartbeat"}))
    assert () == tuple(tracker.absorb({"event": "something_else", "data": {}}))
    with pytest.raises(ProtocolError):
        tracker.absorb([1, 2])


FLOW = [1, 2, 3, 4, 5, 6, 7, 9, 10]


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[str], list[dict[str, Any]]]:
    """A task's log lines, and a stream of payloads as a flaky connection would deliver them:
    per-step partial updates with only the new lines, full snapshots (cumulative logs) repeated
    at random points as after reconnects, and status snapshots that may arrive late."""
    lines = [f"line {i}" for i in range(draw(st.integers(0, 30)))]
    payloads: list[dict[str, Any]] = [{"id": "t", "status": 1, "logs": []}]
    sent = 0
    status_index = 0
    while sent < len(lines):
        take = draw(st.integers(1, 4))
        chunk = lines[sent : sent + take]
        sent += len(chunk)
        payloads.append({"data": {"id": "t", "status": 7, "logs": chunk}, "fields": ["logs"]})
        if draw(st.booleans()):
            status_index = min(status_index + 1, len(FLOW) - 2)
            # A reconnect: the full snapshot repeats every line so far...
            payloads.append({"id": "t", "status": FLOW[status_index], "logs": lines[:sent]})
        if draw(st.booleans()):
            # ...and an older snapshot may still arrive (a status that would go backwards).
            payloads.append({"id": "t", "status": 2, "logs": lines[: max(0, sent - 1)]})
    payloads.append({"id": "t", "status": 10, "logs": lines, "output": {"n": len(lines)}})
    return lines, payloads


@settings(max_examples=200, deadline=None)
@given(histories())
def test_every_log_line_exactly_once_and_status_never_backwards(
    history: tuple[list[str], list[dict[str, Any]]],
) -> None:
    """Whatever repeats and reorders the stream brings, collected logs equal the task's logs."""
    lines, payloads = history
    tracker = TaskTracker("t")
    collected: list[str] = []
    ranks: list[int] = []
    for payload in payloads:
        for update in tracker.absorb(payload):
            collected.extend(update.logs)
            ranks.append(update.status.rank)
    assert lines == collected
    assert sorted(ranks) == ranks
    assert tracker.finished
    assert TaskStatus.COMPLETED == tracker.status


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
    fast, validated = TaskTracker("t"), TaskTracker("t")
    for payload in stream:
        expected = list(validated.absorb(_validated_path(payload)))
        assert expected == list(fast.absorb(payload))
        assert (validated.status, validated.finished) == (fast.status, fast.finished)
        if validated.finished:
            break


def test_hosted_shapes_are_read_like_the_plain_ones() -> None:
    """Status names, log records and float progress take the validated path to the same result."""
    plain, hosted = TaskTracker("t"), TaskTracker("t")
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
    tracker = TaskTracker("t")
    [first] = tracker.absorb({"id": "t", "status": 7, "output": "o", "partial_output": "p"})
    [second] = tracker.absorb({"id": "t", "status": 7, "output": "o2"})
    assert [] == list(tracker.absorb({"id": "t", "status": 7, "output": "o2"}))
    [final] = tracker.absorb({"id": "t", "status": 10, "output": "done", "partial_output": "p"})
    assert ("p", None) == (first.partial_output, first.output)
    assert ("o2", None) == (second.partial_output, second.output)
    assert (None, "done") == (final.partial_output, final.output)
