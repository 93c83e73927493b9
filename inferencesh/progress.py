"""A live terminal display of a task's updates, for people who prefer a helper to the CLI.

```python
from inferencesh import inference
from inferencesh.progress import track

client = inference()
last = track(client.run({"app": "infsh/flux-schnell", "input": {}}, stream=True))
print(last.output if last else None)
```

`track` (any iterable of `TaskUpdate`s) and `atrack` (any async iterable) draw the current
status, a progress bar with rate and ETA once the task reports progress, its log lines
scrolling above the bar and its latest partial output below it; they return the last update.
On a console that is not a terminal they print plain lines instead (one per status change,
log line and progress step); in a Jupyter notebook they show one output redrawn in place, the
log lines printed below it as text. `BatchDisplay` draws a whole batch (`client.run_many`): one bar,
the count of tasks in each status, the rate, the ETA and the last failures. The display uses
rich, the optional `cli` extra (`pip install 'inferencesh[cli]'`); it is imported only when a
display starts, so importing this module never needs it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import sys
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, Self

from ._connection import ConnectionEvent
from ._events import Progress, TaskUpdate
from ._exceptions import UsageError
from ._notebook import NotebookRegion, in_notebook
from ._status import TaskStatus
from ._terminal import encodable, one_line

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
    from rich.live import Live
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from ._batch import BatchProgress

__all__ = ["BatchDisplay", "atrack", "track"]

INSTALL_HINT = "pip install 'inferencesh[cli]'"
"""The command that installs what the live display needs."""

# A partial output is shown on one line, cut to this many characters before the terminal's
# own ellipsis: a long generated text must not make every refresh serialise megabytes.
_PARTIAL_CHARS = 2000

# The mark of a display stopped before its task ended (detached, interrupted).
_STOPPED = ("■", "yellow")

_OUTCOME_STYLES = {
    TaskStatus.COMPLETED: ("✓", "green"),
    TaskStatus.FAILED: ("✗", "red"),
    TaskStatus.REJECTED: ("✗", "red"),
    TaskStatus.CANCELLED: ("■", "yellow"),
}


def track(
    updates: Iterable[TaskUpdate],
    *,
    console: Console | None = None,
    transient: bool = False,
) -> TaskUpdate | None:
    """Show `updates` live on `console` (default: a rich Console on stdout) as they arrive.

    Returns the last update, or None when there was none. With `transient=True` the status
    line and progress bar are removed at the end (log lines printed above them stay).
    Raises `UsageError` when rich is not installed. Exceptions of the iterable propagate, so
    Ctrl-C stops the display and reaches the caller.
    """
    last: TaskUpdate | None = None
    with _display_for(console, transient) as display:
        for update in updates:
            display.show(update)
            last = update
    return last


async def atrack(
    updates: AsyncIterable[TaskUpdate],
    *,
    console: Console | None = None,
    transient: bool = False,
) -> TaskUpdate | None:
    """The async twin of `track`: show an async iterable of updates (a `TaskStream`) live."""
    last: TaskUpdate | None = None
    with _display_for(console, transient) as display:
        async for update in updates:
            display.show(update)
            last = update
    return last


class Display(Protocol):
    """What a display does with a stream: show each update, then stop (as a context)."""

    def show(self, update: TaskUpdate) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def require_rich() -> None:
    """Raise `UsageError` naming the extra to install when rich is not importable."""
    try:
        import rich  # noqa: F401
    except ImportError:
        raise UsageError(f"the live display needs rich: {INSTALL_HINT}") from None


def _display_for(console: Console | None, transient: bool) -> Display:
    require_rich()
    from rich.console import Console

    console = console if console is not None else Console()
    if in_notebook(console):
        return NotebookDisplay(console, transient=transient)
    if not console.is_terminal or console.is_dumb_terminal:
        shown = console

        def write(line: str) -> None:
            # Escaped as `\\uNNNN` where the output's encoding (cp1252, ascii) cannot write it.
            line = encodable(line, shown.encoding)
            shown.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)

        return PlainDisplay(write)
    return LiveDisplay(console, transient=transient)


# -- shared formatting ------------------------------------------------------------------------


def status_text(update: TaskUpdate) -> str:
    """The status as shown: its name, plus the error of a task that did not complete (one
    inert line: the server's text can neither act on the terminal nor add a line)."""
    if update.status.is_terminal and update.status is not TaskStatus.COMPLETED and update.error:
        return one_line(f"{update.status.value}: {update.error}")
    return update.status.value


def reconnect_text(event: ConnectionEvent) -> str:
    """A reconnect as the CLI and the live display say it: `reconnecting in 1.0s (attempt 2)`
    (without the wait when there is none)."""
    wait = f" in {event.delay:.1f}s" if event.delay is not None else ""
    return f"reconnecting{wait} (attempt {event.attempt})"


def format_number(value: float) -> str:
    """`3` for 3.0, `2.5` for 2.5: progress counts as people write them (an int past the
    range of a float, which a server may send, as `1e+400`)."""
    try:
        return f"{value:g}"
    except OverflowError:  # an int too large for a float: six digits, as `g` writes them
        mantissa, _, exponent = f"{Decimal(value):.6e}".partition("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def compact_json(value: Any, limit: int = _PARTIAL_CHARS) -> str:
    """A value on one line: strings as they are (their newlines as spaces), anything else as
    compact JSON, cut to `limit` and made one inert line (`one_line`: control characters shown
    as `\\xNN`, so they cannot act on a terminal)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = one_line(" ".join(text.split("\n")))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Step(NamedTuple):
    """A task's progress as every display draws it: `fraction` is a finite number from 0 to 1
    (what the bar, the percentage and the ETA use), `current` and `total` the counts the
    server sent, as text."""

    fraction: float
    current: str
    total: str

    @property
    def percent(self) -> str:
        """`42%`: the fraction as a whole percentage, never past 100 nor below 0."""
        return f"{self.fraction * 100:.0f}%"


def progress_step(progress: Progress | None) -> Step | None:
    """`progress` as the displays draw it, or None when it says nothing about how far the
    task is (no progress, a total that is not positive, a NaN a caller's `Progress` holds).

    The one rule for every display: whatever the numbers (negative, past the total, 1e308,
    ints of hundreds of digits), the fraction stays within [0, 1] and the counts format."""
    if progress is None:
        return None
    fraction = progress.fraction
    if fraction is None:
        return None
    return Step(fraction, format_number(progress.current), format_number(progress.total))


def _as_float(value: float) -> float:
    """`float(value)`, or an infinity of its sign for an int past the range of a float."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


# -- plain lines --------------------------------------------------------------------------------


class PlainDisplay:
    """Plain lines for pipes and logs: the task id, each status change, log line and step.

    Needs nothing but a function that writes one line; the CLI uses it without rich. What the
    server sent is made one inert line (`\\x1b` for ESC, `\\x0a` for a newline, ...), so it
    cannot act on a terminal nor pass for a line of its own: a log line is one line.
    """

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._task_id: str | None = None
        self._status: TaskStatus | None = None
        self._step: Step | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def show(self, update: TaskUpdate) -> None:
        """Write the lines this update adds."""
        if update.id != self._task_id:
            self._task_id = update.id
            self._write(f"task: {one_line(update.id)}")
        for line in update.logs:
            self._write(f"log: {one_line(line)}")
        step = progress_step(update.progress)
        if step is not None and step != self._step:
            self._step = step
            self._write(f"progress: {step.current}/{step.total} ({step.percent})")
        # A partial update may carry no status; it does not send the task back to "unknown".
        if update.status is not TaskStatus.UNKNOWN and update.status is not self._status:
            self._status = update.status
            self._write(f"status: {status_text(update)}")


# -- the live display -----------------------------------------------------------------------------


class _PartialLine:
    """The line under the bar: the latest partial output, cut to the terminal's width."""

    def __init__(self) -> None:
        self.text: str | None = None

    def __rich_console__(
        self, console: Console, options: ConsoleOptions
    ) -> Iterator[RenderableType]:
        from rich.text import Text

        if self.text is None:
            return  # no line at all, rather than an empty one
        line = Text("  partial: ", style="dim")
        line.append(self.text, style="cyan")
        line.no_wrap = True
        line.overflow = "ellipsis"
        yield line


def _columns() -> list[Any]:
    """The progress bar's columns: outcome or spinner, status, bar, %, steps, rate, ETA."""
    from rich.progress import BarColumn, ProgressColumn, SpinnerColumn, Task, TaskProgressColumn
    from rich.table import Column
    from rich.text import Text

    class OutcomeColumn(SpinnerColumn):
        """A spinner while the task runs, then a mark for how it ended."""

        def render(self, task: Task) -> RenderableType:
            outcome = task.fields.get("outcome")
            if outcome is not None:
                mark, style = outcome
                return Text(mark, style=style)
            # Spinning while the task runs, even with all its steps done (still uploading).
            return self.spinner.render(task.get_time())

    class StatusColumn(ProgressColumn):
        """The task's current status (and the error once it has failed)."""

        def render(self, task: Task) -> Text:
            outcome = task.fields.get("outcome")
            style = outcome[1] if outcome is not None else "bold"
            return Text(str(task.fields.get("status", "")), style=style)

    # The bar's task counts in fractions of the whole (`progress_step`), its total 1: the
    # counts the server sent are in the `step` field, and its total in `scale`.

    class StepsColumn(ProgressColumn):
        """`current/total` steps, when the task reports them."""

        def render(self, task: Task) -> Text:
            step: Step | None = task.fields.get("step")
            if step is None:
                return Text("")
            return Text(f"{step.current}/{step.total}", style="progress.download")

    class RateColumn(ProgressColumn):
        """Steps per second, from rich's moving estimate."""

        def render(self, task: Task) -> Text:
            speed = task.speed
            if speed is None or task.fields.get("outcome") is not None:
                return Text("")
            rate = speed * task.fields.get("scale", math.nan)
            if not math.isfinite(rate):
                return Text("")
            shown = f"{rate:.2f}" if abs(rate) < 1e6 else format_number(rate)
            return Text(f"{shown} steps/s", style="progress.data.speed")

    class TimeColumn(ProgressColumn):
        """The ETA while the task runs; how long it took once it has ended."""

        max_refresh = 0.5

        def render(self, task: Task) -> Text:
            took = task.fields.get("took")
            if took is not None:
                return Text(f"in {took:.1f}s", style="progress.elapsed")
            return Text(_eta(task), style="progress.remaining")

    return [
        OutcomeColumn(),
        StatusColumn(table_column=Column(no_wrap=True, overflow="ellipsis")),
        BarColumn(bar_width=32),
        TaskProgressColumn(),
        StepsColumn(),
        RateColumn(),
        TimeColumn(),
    ]


def _eta(task: Any) -> str:
    """`eta 1:05` for the bar's rich task (counted in fractions of the whole): the part left
    at rich's moving rate, counted down since the last step; nothing when unknown, or when the
    time since the last step has overtaken the estimate (a task that stopped reporting)."""
    speed = task.speed
    moved = task.fields.get("moved")
    if task.fields.get("step") is None or moved is None or not speed or speed <= 0:
        return ""
    remaining = (1 - task.completed) / speed - (task.get_time() - moved)
    return f"eta {_clock(remaining)}" if remaining >= 0 else ""


def _live_printing(
    flush: Callable[[], None], renderable: RenderableType, *, console: Console, transient: bool
) -> Live:
    """A rich `Live` refreshed ten times a second that calls `flush` (to print what waits above
    it) before each refresh, its last included."""
    from rich.live import Live

    class PrintingLive(Live):
        def refresh(self) -> None:
            with self._lock:
                flush()
                super().refresh()

    return PrintingLive(renderable, console=console, transient=transient, refresh_per_second=10)


class _Margin:
    """Draws its content two columns narrower than the console.

    A terminal echoes Ctrl-C as `^C` where the cursor is: at the end of the display's last line.
    Were that line as wide as the terminal, the echo would wrap onto a new line, and the next
    redraw, which moves the cursor up by the display's height, would leave the old bar above
    the new one. Two spare columns keep the echo on the line the redraw erases.
    """

    def __init__(self, content: RenderableType) -> None:
        self._content = content

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from console.render(self._content, _narrower(options))


def _narrower(options: ConsoleOptions) -> ConsoleOptions:
    return options.update_width(max(1, options.max_width - 2))


class LiveDisplay:
    """The rich display: status and bar redrawn in place, log lines printed above them.

    What the server sent (ids, log lines, errors, partial outputs) is made one inert line each
    (`one_line`) and drawn as `Text`, never read as markup, so it cannot act on the terminal.
    If the block it is used in ends early (Ctrl-C, an error), its last frame says so instead of
    showing a running task; `conclude` says more precisely what happened.
    """

    def __init__(self, console: Console, *, transient: bool = False) -> None:
        from rich.console import Group
        from rich.progress import Progress as RichProgress

        self._console = console
        self._bar: RichProgress = RichProgress(*_columns(), console=console)
        self._row: TaskID = self._bar.add_task("", total=None, status="starting")
        self._partial = _PartialLine()
        # Log lines wait here for the next refresh, which prints them all at once: rich redraws
        # the bar after each print, so a print per line would redraw it once per line.
        self._lines: collections.deque[RenderableType] = collections.deque()
        self._live: Live = _live_printing(
            self._flush,
            _Margin(Group(self._bar, self._partial)),
            console=console,
            transient=transient,
        )
        self._scale: float | None = None  # the total of the steps, as the bar last counted them
        self._task_id: str | None = None
        self._status = "starting"  # the task's, as last shown (a reconnect shows over it)
        self._started = time.monotonic()
        self._ended = False  # the task ended, or `conclude` said what became of it

    def __enter__(self) -> Self:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not self._ended:
            if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
                self.conclude("interrupted")
            else:
                self.conclude("stopped by an error", TaskStatus.FAILED)
        self._live.stop()  # prints the lines still waiting, then draws the last frame, once
        self._flush()  # (never started: the lines alone)

    def _flush(self) -> None:
        """Print the log lines waiting, in one print (one redraw of the bar below them)."""
        from rich.console import Group

        lines: list[RenderableType] = []
        while self._lines:
            lines.append(self._lines.popleft())
        if lines:
            self._console.print(Group(*lines), soft_wrap=True)

    def _print(self, line: RenderableType) -> None:
        self._lines.append(line)
        if not self._live.is_started:  # no refresh to print it: now, then
            self._flush()

    def conclude(self, message: str, status: TaskStatus | None = None) -> None:
        """End the display before the task ended: `message` takes the status's place (e.g.
        "interrupted: cancelled task …"), with the mark of `status` (none: a yellow square),
        and the partial output line goes. Drawn at the next refresh, or as the last frame."""
        self._ended = True
        self._partial.text = None
        self._bar.update(
            self._row,
            status=one_line(message),
            outcome=_OUTCOME_STYLES.get(status, _STOPPED) if status is not None else _STOPPED,
            took=time.monotonic() - self._started,
        )

    def refresh(self) -> None:
        """Redraw now (the display also redraws itself ten times a second)."""
        self._live.refresh()

    def connection(self, event: ConnectionEvent) -> None:
        """Show a change of the stream's connection in the status column: a reconnect (its
        wait and attempt) until the stream is connected again, or that the connection is lost."""
        if self._ended:
            return
        if event.state == "reconnecting":
            status = reconnect_text(event)
        elif event.state == "connected":
            status = self._status
        else:
            status = "connection lost"
        self._bar.update(self._row, status=status)

    def show(self, update: TaskUpdate) -> None:
        """Fold one update into the display."""
        from rich.text import Text

        if update.id != self._task_id:
            self._task_id = update.id
            self._print(Text(f"task {one_line(update.id)}", style="dim"))
        for line in update.logs:
            self._print(Text(one_line(line)))
        if update.status is not TaskStatus.UNKNOWN:
            self._status = status_text(update)
        fields: dict[str, Any] = {"status": self._status}  # also ends a "reconnecting"
        step = progress_step(update.progress)
        if step is not None and update.progress is not None:
            self._count(step, _as_float(update.progress.total))
            fields["step"] = step
        if update.partial_output is not None:
            self._partial.text = compact_json(update.partial_output)
        if update.status.is_terminal:
            self._ended = True
            self._partial.text = None
            fields["outcome"] = _OUTCOME_STYLES.get(update.status, _STOPPED)
            fields["took"] = time.monotonic() - self._started
            if update.status is TaskStatus.COMPLETED:
                # 100 % done, and all its steps when it reported some.
                fields.update(total=1, completed=1)
                shown: Step | None = self._bar.tasks[0].fields.get("step")
                if step is None and shown is not None:
                    step = shown
                if step is not None:
                    fields["step"] = Step(1.0, step.total, step.total)
        # Drawn by the live display's own refresh (10 per second), not once per update: a
        # chatty task must not pay for a redraw per line.
        self._bar.update(self._row, **fields)

    def _count(self, step: Step, scale: float) -> None:
        """Move the bar to `step`. A new total, or a step back from the end, starts the rate and
        the ETA afresh (rich would keep its old rate, and a task it saw done as done)."""
        task = self._bar.tasks[0]
        if scale != self._scale or (task.finished and step.fraction < 1):
            self._bar.reset(self._row, total=1.0, completed=0)
            self._scale = scale
        if step.fraction > task.completed or task.fields.get("moved") is None:
            self._bar.update(self._row, moved=self._bar.get_time(), scale=scale)
        self._bar.update(self._row, completed=step.fraction)


# -- in a Jupyter notebook -------------------------------------------------------------------------


class NotebookDisplay:
    """`track` in a Jupyter notebook: one output redrawn in place (status, bar, partial output)
    and, written below it as plain text, what the terminal display prints above its bar (the
    task id and the log lines), which the notebook gathers into one text block.

    The terminal display keeps the state, drawing on a console that only collects its lines;
    a `NotebookRegion` shows its bar (at most ten redraws a second, and a last one at the end).
    """

    def __init__(self, console: Console, *, transient: bool = False) -> None:
        from io import StringIO

        from rich.console import Console

        self._lines = StringIO()
        lines = Console(
            file=self._lines,
            width=console.width,
            color_system=None,
            force_terminal=False,
            force_jupyter=False,
        )
        self._state = LiveDisplay(lines, transient=transient)
        self._region = NotebookRegion(
            self._state._live.get_renderable(), width=console.width, transient=transient
        )

    def __enter__(self) -> Self:
        self._region.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._state.__exit__(exc_type, exc, tb)  # its last state (never started: no output)
            self._write_lines()
        finally:
            self._region.stop()
            sys.stdout.flush()

    def show(self, update: TaskUpdate) -> None:
        """Fold one update into the display."""
        self._state.show(update)
        self._write_lines()
        self._region.invalidate()

    def _write_lines(self) -> None:
        lines = self._lines.getvalue()
        if lines:
            self._lines.seek(0)
            self._lines.truncate()
            sys.stdout.write(lines)


# -- a batch of tasks ------------------------------------------------------------------------------

# How each status is drawn in a batch's counts; the statuses of tasks still going are cyan.
_COUNT_STYLES = {
    "completed": "green",
    "failed": "red",
    "rejected": "red",
    "error": "red",
    "cancelled": "yellow",
}
# The order of the counts: how tasks ended first, then the live statuses in flow order.
_COUNT_ORDER = {
    name: position
    for position, name in enumerate(
        ["completed", "failed", "rejected", "cancelled", "error", "starting"]
        + [status.value for status in TaskStatus if not status.is_terminal]
    )
}


# Past this many seconds an estimate says only that it is long.
_LONG = 100 * 3600 - 1


def _clock(seconds: float) -> str:
    """`1:05`, `2:03:04`; `>99:59:59` for more (or an infinity)."""
    if not seconds < _LONG:
        return ">99:59:59"
    minutes, whole = divmod(int(max(0.0, seconds) + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{whole:02d}" if hours else f"{minutes}:{whole:02d}"


class BatchDisplay:
    """A live view of a batch of tasks (`client.run_many`): one bar for the whole batch, how
    many tasks are in each status, the rate, the ETA and the last failures.

    ```python
    with BatchDisplay() as display:
        async for outcome in batch:
            display.show(batch.progress)
    ```

    `show` only keeps the tally it is given; the display redraws itself ten times a second,
    so call it as often as convenient (from the thread that owns the batch). `earlier` counts
    tasks that ended before this batch started, by status (a resumed run): they are part of
    the bar and of the counts. With `transient=True` the display is removed at the end.
    Raises `UsageError` when rich is not installed.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        earlier: Mapping[str, int] | None = None,
        transient: bool = False,
    ) -> None:
        require_rich()
        from rich.console import Console
        from rich.live import Live
        from rich.spinner import Spinner

        self._console = console if console is not None else Console()
        self._earlier = {name: count for name, count in (earlier or {}).items() if count}
        self._before = sum(self._earlier.values())
        self._progress: BatchProgress | None = None
        self._ended = False
        self._spinner = Spinner("dots", style="progress.spinner")
        self._live: Live | NotebookRegion
        if in_notebook(self._console):  # one output redrawn in place, not one per refresh
            self._live = NotebookRegion(
                _BatchView(self), width=self._console.width, transient=transient
            )
        else:
            self._live = Live(
                _BatchView(self), console=self._console, transient=transient, refresh_per_second=10
            )

    def __enter__(self) -> Self:
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ended = True
        self._live.stop()  # draws the last frame (the outcome mark and the time taken)

    def show(self, progress: BatchProgress) -> None:
        """Keep the batch's latest tally (drawn at the next refresh)."""
        self._progress = progress
        if isinstance(self._live, NotebookRegion):
            self._live.invalidate()

    def refresh(self) -> None:
        """Redraw now."""
        self._live.refresh()

    # -- drawing (on rich's refresh thread, from the last tally kept) ----------------------------

    def _lines(self) -> list[RenderableType]:
        """The bar row, the counts by status, then the last failures."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        progress = self._progress
        finished = self._before + (progress.finished if progress is not None else 0)
        total = None
        if progress is not None and progress.total is not None:
            total = self._before + progress.total
        row = Table.grid(padding=(0, 1))
        cells: list[RenderableType] = []
        failed = self._failed()
        if self._ended:
            mark, style = ("✗", "red") if failed else ("✓", "green")
            cells.append(Text(mark, style=style))
        else:
            cells.append(self._spinner)
        cells.append(Text("batch", style="bold"))
        step = progress_step(Progress(finished, total)) if total else None
        fraction = step.fraction if step is not None else 0
        cells.append(ProgressBar(total=1 if step else None, completed=fraction, width=32))
        if step is not None:
            cells.append(Text(f"{step.percent:>4}", style="progress.percentage"))
            cells.append(Text(f"{step.current}/{step.total}", style="progress.download"))
        else:
            cells.append(Text(f"{finished} done", style="progress.download"))
        if progress is not None:
            cells.append(Text(f"{progress.rate:.2f} tasks/s", style="progress.data.speed"))
            if self._ended:
                cells.append(Text(f"in {_clock(progress.elapsed)}", style="progress.elapsed"))
            elif progress.eta is not None:
                cells.append(Text(f"eta {_clock(progress.eta)}", style="progress.remaining"))
        for _ in cells:
            row.add_column(no_wrap=True)
        row.add_row(*cells)
        lines: list[RenderableType] = [row, self._counts()]
        recent = progress.recent_failures if progress is not None else ()
        if recent:
            lines.append(Text("  last failures:", style="dim"))
            for index, message in recent:
                line = Text(f"    ✗ input {index}: ", style="red")
                line.append(compact_json(message, 500), style="dim")
                line.no_wrap = True
                line.overflow = "ellipsis"
                lines.append(line)
        return lines

    def _failed(self) -> int:
        counts = self._counts_by_status()
        return sum(count for name, count in counts.items() if name in _COUNT_STYLES
                   and name != "completed")  # fmt: skip

    def _counts_by_status(self) -> dict[str, int]:
        counts = dict(self._earlier)
        if self._progress is not None:
            for name, count in self._progress.by_status.items():
                counts[name] = counts.get(name, 0) + count
        return counts

    def _counts(self) -> RenderableType:
        from rich.text import Text

        counts = self._counts_by_status()
        line = Text("  ")
        ordered = sorted(counts, key=lambda name: (_COUNT_ORDER.get(name, len(_COUNT_ORDER)), name))
        for position, name in enumerate(ordered):
            if position:
                line.append(" · ", style="dim")
            line.append(f"{name} {counts[name]}", style=_COUNT_STYLES.get(name, "cyan"))
        if not ordered:
            line.append("starting", style="dim")
        line.no_wrap = True
        line.overflow = "ellipsis"
        return line


class _BatchView:
    """What the batch display's `Live` renders: the display's lines, built at each refresh."""

    def __init__(self, display: BatchDisplay) -> None:
        self._display = display

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.console import Group

        # Two columns to spare, as `_Margin` explains.
        yield from console.render(Group(*self._display._lines()), _narrower(options))
