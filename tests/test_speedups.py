"""The optional C accelerator of `TaskTracker.absorb` (`inferencesh/_speedups.c`).

The Python method is the reference: on any stream of payloads, well-formed or not, the compiled
method must return equal updates built the same way, leave the tracker in the same state and
raise the same errors. It must also hold no references it should not (a leak per event would
grow a long stream's memory without bound).
"""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import can_compile_c

from inferencesh._task_stream import SPEEDUPS, TaskTracker, _python_absorb

ROOT = Path(__file__).resolve().parent.parent
DISABLED = bool(os.environ.get("INFERENCESH_NO_EXTENSIONS"))

# Where a compiler is available, `test_the_accelerator_is_built_where_it_can_be` makes sure it
# was built, so these skip only when it could not be or was turned off on purpose.
needs_speedups = pytest.mark.skipif(
    not SPEEDUPS,
    reason="the accelerator is not in use (no C compiler, or INFERENCESH_NO_EXTENSIONS is set)",
)


class Text(str):
    """A str subclass: not the exact type the fast path reads."""


_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "t", "running", "heartbeat", Text("t"), Text("l1")]),
    st.lists(st.sampled_from(["l1", "l2", 3, None, {"content": "l3"}]), max_size=3),
    st.fixed_dictionaries({"current": st.integers(0, 3), "total": st.integers(0, 3)}),
    st.fixed_dictionaries({"current": st.sampled_from([True, "1", None]), "total": st.just(3)}),
    st.dictionaries(st.sampled_from(["text", "delta", "response"]), st.integers(0, 2), max_size=2),
)
_FIELDS = ["id", "status", "logs", "progress", "output", "partial_output", "error", "session_id"]


@st.composite
def task(draw: st.DrawFn) -> dict[str, Any]:
    """A task payload: mostly well formed, sometimes with a field of an odd type or value."""
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["id"] = draw(st.sampled_from(["t", "t", "other"]))
    if draw(st.booleans()):
        body["status"] = draw(st.sampled_from([1, 2, 7, 7, 7, 9, 10, 11, 12, 99]))
    if draw(st.booleans()):
        body["logs"] = draw(st.lists(st.sampled_from(["l1", "l2", "l3"]), max_size=3))
    if draw(st.booleans()):
        current = draw(st.integers(0, 3) | st.floats(0, 3))
        body["progress"] = {"current": current, "total": draw(st.sampled_from([3, 3.0]))}
    for key in ("output", "partial_output", "error"):
        if draw(st.booleans()):
            body[key] = draw(st.none() | st.integers(0, 2) | st.sampled_from(["a", "b", ""]))
    if draw(st.booleans()):
        body["session_id"] = draw(st.sampled_from(["", "s1", None]))
    if draw(st.integers(0, 3)) == 0:
        body[draw(st.sampled_from(_FIELDS))] = draw(_ODD)
    return body


@st.composite
def payload(draw: st.DrawFn) -> Any:
    """Anything a stream may carry: snapshots, partial updates, events, and wrong shapes."""
    kind = draw(st.integers(0, 9))
    if kind <= 4:
        return draw(task())
    if kind <= 6:
        data = draw(task()) if draw(st.integers(0, 5)) else draw(_ODD)
        return {"data": data, "fields": ["progress"]}
    if kind == 7:
        return {
            "type": draw(st.sampled_from(["heartbeat", "other", Text("heartbeat")]) | _ODD),
            **draw(task()),
        }
    if kind == 8:
        event = draw(st.sampled_from(["delta", "tasks", None]) | _ODD)
        data = {"delta": {"response": "x"}} if event == "delta" else draw(task())
        return {"event": event, "data": data, **({"fields": []} if draw(st.booleans()) else {})}
    return draw(_ODD)


def outcome(absorb: Any, tracker: TaskTracker, obj: Any) -> tuple[str, Any]:
    """What one call did: the updates with the exact fields each stores, or the error raised."""
    try:
        updates = absorb(tracker, obj)
    except Exception as exc:
        return "error", (type(exc), str(exc))
    built = [(type(u), vars(u), None if u.progress is None else vars(u.progress)) for u in updates]
    return "updates", (type(updates), built)


def state(tracker: TaskTracker) -> dict[str, Any]:
    fields = dict(vars(tracker))
    progress = fields.pop("progress")
    return {**fields, "progress": None if progress is None else vars(progress)}


def same(a: Any, b: Any) -> bool:
    """Equality in which a NaN equals a NaN (the same payload went to both trackers)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


@pytest.mark.skipif(DISABLED, reason="INFERENCESH_NO_EXTENSIONS is set")
def test_the_accelerator_is_built_where_it_can_be() -> None:
    """An install on a machine with a C compiler builds it and task streams use it (a failed
    build would otherwise go unnoticed, testing the Python path twice); without a compiler
    the install goes on without it."""
    assert can_compile_c() == SPEEDUPS
    if SPEEDUPS:
        assert TaskTracker.absorb is not _python_absorb
        assert "absorb" == TaskTracker.absorb.__name__
    else:
        assert TaskTracker.absorb is _python_absorb


def test_the_switch_turns_it_off() -> None:
    """INFERENCESH_NO_EXTENSIONS=1 runs the pure-Python method."""
    code = (
        "from inferencesh._task_stream import SPEEDUPS, TaskTracker, _python_absorb;"
        "print(SPEEDUPS, TaskTracker.absorb is _python_absorb)"
    )
    env = {**os.environ, "INFERENCESH_NO_EXTENSIONS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert "False True" == done.stdout.strip(), done.stderr


@needs_speedups
@settings(max_examples=1500, deadline=None)
@given(st.lists(payload(), max_size=16))
def test_compiled_and_python_absorb_agree_on_any_stream(stream: list[Any]) -> None:
    """Same updates (the same fields stored on each), same tracker state, same errors."""
    compiled, python = TaskTracker("t"), TaskTracker("t")
    for obj in stream:
        expected = outcome(_python_absorb, python, obj)
        got = outcome(TaskTracker.absorb, compiled, obj)
        assert same(expected, got), (obj, expected, got)
        assert same(state(python), state(compiled)), obj


@needs_speedups
def test_compiled_absorb_keeps_no_references() -> None:
    """Every object handed in goes back to its reference count once the update is dropped,
    and a long stream's memory stays flat."""
    tracker = TaskTracker("t")
    running = {"id": "t", "status": 7, "logs": ["a"], "progress": {"current": 1, "total": 9}}
    partial = {"data": {"id": "t", "logs": ["b"], "output": {"x": 1}}, "fields": ["logs"]}
    for obj in (running, partial):
        # The containers: the tracker keeps none of these (small ints and strings are shared).
        held = [o for o in (obj, *obj.values()) if isinstance(o, dict | list)]
        counts = [sys.getrefcount(o) for o in held]
        [update] = tracker.absorb(obj)
        del update
        assert counts == [sys.getrefcount(o) for o in held]

    def one(step: int) -> None:
        body = {"id": "t", "status": 7, "progress": {"current": step, "total": 10**6}}
        for update in tracker.absorb({"data": {**body, "output": [step]}, "fields": []}):
            assert update.progress is not None

    for step in range(2_000):  # warm: caches, free lists
        one(step)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for step in range(2_000, 52_000):
            one(step)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 50,000 events of several hundred bytes each: a leak of any of them would show as megabytes.
    assert grown < 64 * 1024, grown
