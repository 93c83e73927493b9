"""The progress displays against whatever a server (or a caller's own updates) can feed them.

Progress of any numbers (0, negative, past the total, 1e308, 5e-324, ints of hundreds of digits,
a caller's NaN), server text of any characters (lone surrogates, text an output encoding
cannot write), thousands of log lines, a task that stops reporting, a total that grows: the
displays neither raise nor draw a bar past 100 %, a `nan%`, or an ETA that is stale or absurd.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from support import fast_emulator, plain

from inferencesh import inference
from inferencesh._batch import BatchProgress
from inferencesh._events import Progress, TaskUpdate
from inferencesh._status import TaskStatus
from inferencesh.local import AppContext, serve_in_thread
from inferencesh.progress import BatchDisplay, LiveDisplay, PlainDisplay, track

# Numbers a server can send (JSON: ints of any size, finite floats) and a caller can build.
SERVER_NUMBERS = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1, 1e308, -1e308, 5e-324, 10**400, 10**400 + 1, -(10**400)]),
)
CALLER_NUMBERS = st.one_of(SERVER_NUMBERS, st.sampled_from([math.nan, math.inf, -math.inf]))
PERCENT = re.compile(r"(-?\d+)%")
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"  # rich's "dots"


class Clock:
    """A clock the test moves: the console's `get_time`, which rich's progress reads."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def terminal(width: int = 100, clock: Clock | None = None) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    console = Console(
        file=out,
        force_terminal=True,
        width=width,
        color_system=None,
        get_time=clock if clock is not None else Clock(),
    )
    return console, out


def frames(text: str, status: str = "running") -> list[str]:
    """Each redraw of the live display's bar line (the task in `status`), without colours and
    cursor movements."""
    return [plain(part).strip() for part in text.split("\x1b[2K") if status in part]


def running(progress: Progress | None = None, logs: tuple[str, ...] = ()) -> TaskUpdate:
    return TaskUpdate(id="t", status=TaskStatus.RUNNING, logs=logs, progress=progress)


def check_drawn(text: str) -> None:
    """No `nan`, no percentage outside 0-100, no negative ETA in what a display drew."""
    assert "nan" not in text.lower()
    for match in PERCENT.finditer(text):
        assert 0 <= int(match.group(1)) <= 100, text
    assert "eta -" not in text


# -- numbers ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(CALLER_NUMBERS, CALLER_NUMBERS), min_size=1, max_size=4))
def test_the_plain_display_writes_any_progress_as_a_percentage_from_0_to_100(
    steps: list[tuple[float, float]],
) -> None:
    lines: list[str] = []
    with PlainDisplay(lines.append) as display:
        for current, total in steps:
            display.show(running(Progress(current, total)))
    check_drawn("\n".join(lines))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(CALLER_NUMBERS, CALLER_NUMBERS), min_size=1, max_size=4),
    st.sampled_from(list(TaskStatus)),
)
def test_the_live_display_draws_any_progress_without_raising(
    steps: list[tuple[float, float]], last: TaskStatus
) -> None:
    clock = Clock()
    console, out = terminal(clock=clock)
    with LiveDisplay(console) as display:
        for current, total in steps:
            clock.now += 1.0
            display.show(running(Progress(current, total)))
            display.refresh()
        display.show(TaskUpdate(id="t", status=last))
    check_drawn(plain(out.getvalue()))


def test_a_task_reporting_1e308_steps_is_drawn_live_from_the_emulator() -> None:
    async def huge(input: dict[str, Any], ctx: AppContext) -> dict[str, Any]:
        ctx.progress(1.0, 1e308)
        ctx.progress(1e308, 1e308)
        return {}

    emu = fast_emulator()
    emu.register_app("acme/huge", huge)
    console, out = terminal()
    with serve_in_thread(emu) as url, inference(api_key="k", base_url=url) as client:
        last = track(client.run({"app": "acme/huge", "input": {}}, stream=True), console=console)
    assert last is not None
    assert last.status is TaskStatus.COMPLETED
    assert "1e+308/1e+308" in plain(out.getvalue())


def test_an_app_reporting_steps_past_the_range_of_a_float_is_told_so() -> None:
    """An emulator app reporting an int of 400 digits gets the documented ValueError (it got
    an OverflowError): no JSON reader takes such a number, so it is never sent."""
    refused: list[BaseException] = []

    async def steps(input: dict[str, Any], ctx: AppContext) -> dict[str, Any]:
        try:
            ctx.progress(10**400, 3 * 10**400)
        except Exception as exc:
            refused.append(exc)
        ctx.progress(1, 3)
        return {}

    emu = fast_emulator()
    emu.register_app("acme/steps", steps)
    with serve_in_thread(emu) as url, inference(api_key="k", base_url=url) as client:
        updates = list(client.run({"app": "acme/steps", "input": {}}, stream=True))
    assert updates[-1].status is TaskStatus.COMPLETED
    assert [ValueError] == [type(exc) for exc in refused]
    assert "must be finite" in str(refused[0])


def test_ints_past_the_range_of_a_float_are_written_as_numbers() -> None:
    lines: list[str] = []
    with PlainDisplay(lines.append) as display:
        display.show(running(Progress(10**400, 3 * 10**400)))
    assert "progress: 1e+400/3e+400 (33%)" in lines


# -- the ETA ------------------------------------------------------------------------------------


def test_the_eta_goes_once_the_task_stops_reporting() -> None:
    clock = Clock()
    console, out = terminal(clock=clock)
    with LiveDisplay(console) as display:
        for step in range(6):  # one step a second: 5 of 10 done, "eta 0:05"
            display.show(running(Progress(step, 10)))
            clock.now += 1.0
        display.refresh()
        assert "eta 0:0" in frames(out.getvalue())[-1]
        clock.now += 300  # five minutes without a word: the estimate has long passed
        display.refresh()
        assert "eta" not in frames(out.getvalue())[-1]


def test_a_task_with_all_its_steps_done_still_spins_while_it_runs() -> None:
    clock = Clock()
    console, out = terminal(clock=clock)
    with LiveDisplay(console) as display:
        for current, total in [(0, 10), (5, 10), (10, 10)]:
            display.show(running(Progress(current, total)))
            clock.now += 1.0
        display.show(TaskUpdate(id="t", status=TaskStatus.UPLOADING))
        clock.now += 1.0
        display.refresh()
        done = frames(out.getvalue(), "uploading")[-1]
        for current, total in [(11, 100), (12, 100)]:  # and a total that grows after that
            display.show(running(Progress(current, total)))
            clock.now += 1.0
        display.refresh()
        grown = frames(out.getvalue())[-1]
    # rich took the task for done at 10/10: no spinner, "eta 0:00", as if it had ended
    assert done[0] in SPINNER, done
    assert "eta 0:00" not in done
    assert grown[0] in SPINNER, grown
    assert "12/100" in grown


def test_an_eta_in_centuries_is_shown_as_long() -> None:
    clock = Clock()
    console, out = terminal(clock=clock)
    with LiveDisplay(console) as display:
        display.show(running(Progress(0, 10**12)))
        clock.now += 1.0
        display.show(running(Progress(1, 10**12)))
        clock.now += 1.0
        display.show(running(Progress(2, 10**12)))
        display.refresh()
        assert "eta >99:59:59" in frames(out.getvalue())[-1]


# -- text -------------------------------------------------------------------------------------

SERVER_TEXT = st.text(
    st.characters(codec=None, exclude_categories=()), min_size=1, max_size=40
) | st.sampled_from(["a\ud800b", "\udfff", "漢字😀", "\u202eabc", "e\u0301", "\x1b[2J\u2028x"])


def strict(encoding: str) -> tuple[io.BytesIO, io.TextIOWrapper]:
    raw = io.BytesIO()
    return raw, io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="\n")


def updates_with(text: str) -> list[TaskUpdate]:
    return [
        TaskUpdate(id=text, status=TaskStatus.RUNNING, logs=(text,), partial_output=text),
        TaskUpdate(id=text, status=TaskStatus.FAILED, error=text),
    ]


@settings(max_examples=100, deadline=None)
@given(SERVER_TEXT, st.booleans())
def test_server_text_with_lone_surrogates_reaches_a_utf8_console(text: str, live: bool) -> None:
    raw, file = strict("utf-8")
    console = Console(file=file, force_terminal=live, width=80, color_system=None)
    track(updates_with(text), console=console)
    file.flush()
    raw.getvalue().decode("utf-8")  # what was written is UTF-8 (no surrogate made it through)


@settings(max_examples=100, deadline=None)
@given(SERVER_TEXT, st.sampled_from(["cp1252", "ascii", "latin-1"]))
def test_the_plain_display_writes_any_text_on_a_narrow_encoding(text: str, encoding: str) -> None:
    raw, file = strict(encoding)
    console = Console(file=file, force_terminal=False, width=20, color_system=None)
    track(updates_with(text), console=console)
    file.flush()
    written = raw.getvalue().decode(encoding)
    assert "\x1b" not in written
    assert "\u2028" not in written
    assert len(written.splitlines()) == 4  # task, log, status running, status failed


# -- many updates -------------------------------------------------------------------------------


def test_thousands_of_log_lines_do_not_redraw_the_bar_once_each() -> None:
    console, out = terminal()
    lines = 2000
    with LiveDisplay(console) as display:
        for index in range(lines):
            display.show(running(Progress(index, lines), logs=(f"line {index}",)))
    text = plain(out.getvalue())
    assert all(f"line {index}\n" in text for index in (0, 999, lines - 1))
    # Ten refreshes a second: a loop this short redraws the bar a few times, not 2000.
    assert len(frames(out.getvalue())) < 100


# -- a batch ------------------------------------------------------------------------------------


def batch(finished: int, total: int | None, elapsed: float) -> BatchProgress:
    return BatchProgress(
        total=total,
        started=finished,
        finished=finished,
        succeeded=finished,
        failed=0,
        by_status={"completed": finished},
        elapsed=elapsed,
        recent_failures=(),
    )


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=0, max_value=10**6),
    st.none() | st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, max_value=1e9),
)
def test_the_batch_display_shows_a_percentage_to_100_and_a_bounded_eta(
    finished: int, total: int | None, elapsed: float
) -> None:
    console, out = terminal(width=120)
    with BatchDisplay(console) as display:
        display.show(batch(finished, total, elapsed))
        display.refresh()
        text = plain(out.getvalue())
    check_drawn(text)
    for eta in re.findall(r"eta (\S+)", text):
        assert len(eta) <= len(">99:59:59"), eta
