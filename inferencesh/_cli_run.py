"""The `run`, `attach`, `get` and `cancel` commands of the CLI, and what the CLI's commands share
(argparse lives in `inferencesh.cli`, the `agent` command in `inferencesh._cli_agent`).

`run` creates a task and shows its stream one of three ways: a live rich display on a terminal,
plain lines when stdout is a pipe or file, or one JSON object per update with `--json`. Only
the live display needs rich. `attach` shows an existing task's stream the same way. Exit codes:
0 completed, 1 the task did not complete or the API failed, 2 usage errors, 130 Ctrl-C (which
cancels the task `run` started; `attach` leaves it running unless `--cancel`), 141 stdout's
reader went away (a closed pipe: handled as Ctrl-C is, quietly).

Everything the server controls passes through `inferencesh._terminal.one_line` (or `neutralise`
where several lines are the point, or is JSON) before it is written, so escape sequences in logs
or outputs cannot act on the terminal, and a newline in an error cannot forge a line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from ._async_client import AsyncInference, TaskStream
from ._connection import ConnectionEvent
from ._events import TaskUpdate
from ._exceptions import InferenceshError, UsageError
from ._files import TransferProgress
from ._status import TaskStatus
from ._streaming import StreamingOptions
from ._terminal import (
    OUTPUT_CLOSED,
    OutputClosed,
    json_line,
    json_text,
    one_line,
    write_err,
    write_out,
)
from ._wire import json_kind
from .progress import PlainDisplay, reconnect_text, require_rich

if TYPE_CHECKING:
    from rich.console import Console

    from .progress import LiveDisplay

__all__ = [
    "attach_command",
    "cancel_command",
    "get_command",
    "run_command",
]

T = TypeVar("T")

# Exit codes (and OUTPUT_CLOSED, 141, after a closed pipe).
OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130

# The emulator accepts any key; --local uses this one unless --api-key names another.
LOCAL_API_KEY = "inf_local"


class _Usage(Exception):
    """A usage error found after argument parsing (bad --input, missing key, ...)."""


def _usage(args: argparse.Namespace, message: str) -> int:
    parser: argparse.ArgumentParser = args.parser
    write_err(parser.format_usage())
    write_err(f"{parser.prog}: error: {one_line(message)}\n")
    return USAGE


def _say(args: argparse.Namespace, message: str) -> None:
    """One line on stderr, `<prog>: message`, made safe for a terminal: one line whatever the
    message holds (a newline in it is shown as `\\x0a`)."""
    write_err(f"{args.parser.prog}: {one_line(message)}\n")


def _stopped(closed: bool) -> tuple[str, int]:
    """Why a command stopped early, as its lines on stderr say it, and its exit status:
    stdout's reader went away (`closed`: "output closed", 141) or Ctrl-C ("interrupted", 130)."""
    return ("output closed", OUTPUT_CLOSED) if closed else ("interrupted", INTERRUPTED)


def _line(text: str) -> None:
    """One line on stdout (`OutputClosed` if its reader has gone)."""
    write_out(f"{text}\n")


# -- settings -----------------------------------------------------------------------------------


def read_input(value: str | None) -> dict[str, Any]:
    """The app input from `--input`: inline JSON, or `@path` to read it from a file."""
    if value is None:
        return {}
    source = "--input"
    text = value
    if value.startswith("@"):
        path = value[1:]
        source = f"--input file {path!r}"
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise _Usage(f"cannot read {source}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise _Usage(f"{source} is not UTF-8 text: {exc}") from None
    return parse_object(text, source)


def parse_object(text: str, source: str) -> dict[str, Any]:
    """An app input given as JSON text: a JSON object, or `_Usage` naming `source`."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # too deep: the stack, not the syntax
        raise _Usage(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Usage(f"{source} must be a JSON object (the app input), got {json_kind(data)}")
    return data


@contextlib.contextmanager
def _target(args: argparse.Namespace) -> Iterator[tuple[str | None, str | None]]:
    """The base URL and key to use; with --local, an emulator served for the duration."""
    if not getattr(args, "local", False):  # get, cancel and attach have no --local
        if not (args.api_key or os.environ.get("INFERENCE_API_KEY")):
            raise _Usage("no API key: pass --api-key or set INFERENCE_API_KEY (or use --local)")
        yield args.base_url, args.api_key
        return
    if args.base_url is not None:
        raise _Usage("--local and --base-url cannot be combined")
    from .local import serve_in_thread

    with serve_in_thread() as url:
        yield url, args.api_key or LOCAL_API_KEY


def _client(base_url: str | None, api_key: str | None) -> AsyncInference:
    try:
        return AsyncInference(api_key, base_url=base_url)
    except UsageError as exc:
        raise _Usage(str(exc)) from None


class _Interrupted(Exception):
    """Ctrl-C cancelled the work `_Interrupts.guard` was running."""


class _Interrupts:
    """Ctrl-C as an event of the running loop: each SIGINT cancels the guarded work.

    The CLI handles SIGINT itself instead of letting KeyboardInterrupt land at an arbitrary
    point, so what runs next (cancelling the task, stopping the chat, closing the client) starts
    from a known state. Where the loop cannot take signal handlers (Windows), Ctrl-C raises
    KeyboardInterrupt as usual and the command only says it was interrupted.
    """

    def __init__(self) -> None:
        self._count = 0
        self._handled = 0
        self._target: asyncio.Future[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> Self:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        except (NotImplementedError, RuntimeError):
            return self
        self._loop = loop
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGINT)
            self._loop = None

    def _on_sigint(self) -> None:
        self._count += 1
        if self._target is not None:
            self._target.cancel()

    @property
    def repeated(self) -> bool:
        """Whether Ctrl-C came more than once."""
        return self._count > 1

    def _take(self) -> bool:
        if self._count > self._handled:
            self._handled = self._count
            return True
        return False

    async def guard(self, work: Awaitable[T]) -> T:
        """Await `work`; raise `_Interrupted` if Ctrl-C came before or during it (then a
        coroutine not started is closed, not left to warn that it was never awaited)."""
        if self._take():
            if asyncio.iscoroutine(work):
                work.close()
            raise _Interrupted
        target = asyncio.ensure_future(work)
        self._target = target
        try:
            return await target
        except asyncio.CancelledError:
            if self._take():
                raise _Interrupted from None
            raise
        finally:
            self._target = None


class _NeedRich(Exception):
    """Stdout is a terminal but rich, which draws the live display, is not installed."""


def _live_console() -> Console | None:
    """A rich console when stdout is a terminal; None for plain output."""
    if not sys.stdout.isatty():
        return None
    try:
        require_rich()
    except UsageError as exc:  # its text names the extra to install
        raise _NeedRich(str(exc)) from None
    from rich.console import Console

    return Console()


def _need_rich(args: argparse.Namespace, exc: _NeedRich, alternative: str) -> int:
    _say(args, f"{exc} (or {alternative})")
    return USAGE


# -- run ------------------------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    """`inferencesh run APP`: create a task and show it until it ends."""
    try:
        params = {"app": args.app, "input": read_input(args.input)}
    except _Usage as exc:
        return _usage(args, str(exc))

    def start(client: AsyncInference, options: StreamingOptions) -> TaskStream:
        return client.run(params, stream=True, options=options)

    return _follow_command(args, start, started=True)


def attach_command(args: argparse.Namespace) -> int:
    """`inferencesh attach TASK_ID`: show an existing task until it ends, as `run` does."""

    def start(client: AsyncInference, options: StreamingOptions) -> TaskStream:
        return client.stream_task(args.task_id, options)

    # Ctrl-C cancels only a task this command started, or one it was told it may cancel.
    return _follow_command(args, start, started=args.cancel)


def _follow_command(args: argparse.Namespace, start: _Start, *, started: bool) -> int:
    """What `run` and `attach` share: the output mode, the server, the exit status."""
    try:
        console = None if args.json else _live_console()
        with _target(args) as (base_url, api_key):
            client = _client(base_url, api_key)
            return asyncio.run(_follow(args, client, start, console, started=started))
    except _Usage as exc:
        return _usage(args, str(exc))
    except _NeedRich as exc:
        return _need_rich(args, exc, "pass --json, or pipe the output")
    except KeyboardInterrupt:  # before the handler was installed, or where there is none
        _say(args, "interrupted")
        return INTERRUPTED


# How `run` and `attach` open their stream, given the options to open it with.
_Start = Callable[[AsyncInference, StreamingOptions], TaskStream]


class _Reconnects:
    """Shows a stream's reconnects as they happen: in the live display's status column, or as
    one line on stderr (so `--json` output stays one object per line)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self.live: LiveDisplay | None = None

    def __call__(self, event: ConnectionEvent) -> None:
        if self.live is not None:
            self.live.connection(event)
        elif event.state == "reconnecting":
            _say(self._args, f"{reconnect_text(event)}: {event.cause}")


@contextlib.contextmanager
def _live(console: Console | None) -> Iterator[LiveDisplay | None]:
    """The live display on `console` for the duration (None without a console)."""
    if console is None:
        yield None
        return
    from .progress import LiveDisplay

    with LiveDisplay(console) as display:
        yield display


async def _follow(
    args: argparse.Namespace,
    client: AsyncInference,
    start: _Start,
    console: Console | None,
    *,
    started: bool,
) -> int:
    """Show the task's stream to its end, then its outcome; `started`: Ctrl-C cancels it."""
    async with client:
        with _Interrupts() as interrupts:
            reconnects = _Reconnects(args)
            try:
                stream = start(client, StreamingOptions(on_connection=reconnects))
            except UsageError as exc:  # e.g. a task id that cannot be one
                raise _Usage(str(exc)) from None
            # The display outlives the stream, so that after Ctrl-C its last frame can say what
            # became of the task.
            with _live(console) as live:
                reconnects.live = live
                try:
                    last = await interrupts.guard(_show(stream, args, live))
                except (_Interrupted, OutputClosed) as exc:
                    await stream.aclose()
                    task_id = stream.task_id or getattr(args, "task_id", None)
                    closed = isinstance(exc, OutputClosed)
                    return await _leave(args, client, task_id, interrupts, live,
                                        cancel=started, closed=closed)  # fmt: skip
                except UsageError as exc:
                    raise _Usage(str(exc)) from None
                except InferenceshError as exc:
                    if live is not None:
                        live.conclude("stopped by an error", TaskStatus.FAILED)
                    _say(args, f"error: {exc}")
                    return FAILED
                finally:
                    await stream.aclose()
            status = _finish(args, last, console)
            if status == OK and args.download is not None and last is not None:
                try:
                    await interrupts.guard(_download(args, client, last, console))
                except (_Interrupted, OutputClosed) as exc:
                    why, code = _stopped(isinstance(exc, OutputClosed))
                    _say(args, f"{why}; the files not saved yet were left out")
                    return code
                except UsageError as exc:
                    raise _Usage(str(exc)) from None
                except InferenceshError as exc:
                    _say(args, f"error: could not save the output files: {exc}")
                    return FAILED
    return status


async def _download(
    args: argparse.Namespace, client: AsyncInference, last: TaskUpdate, console: Console | None
) -> None:
    """Save the task's output files in `--download DIR`, with a bar per file on a terminal."""
    folder = Path(args.download)
    try:
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--download: cannot use {str(folder)!r}: {exc.strerror or exc}") from None
    files = last.files
    if not files:
        _say(args, "the output has no files to save")
        return
    if console is None:
        for file in files:
            path = await client.download(file, folder)
            if args.json:
                _line(json_line({"saved": str(path), "uri": file.uri}))
            else:
                _line(f"saved {one_line(str(path))}")
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (
        TextColumn("{task.description}", markup=False),  # a file name is not rich markup
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console) as bars:
        for file in files:
            name = file.filename or file.uri.rsplit("/", 1)[-1]
            bar = bars.add_task(one_line(name), total=file.size)

            def moved(state: TransferProgress, bar: Any = bar) -> None:
                bars.update(bar, completed=state.done, total=state.total)

            path = await client.download(file, folder, progress=moved)
            bars.update(bar, description=one_line(str(path)))


async def _show(
    stream: TaskStream, args: argparse.Namespace, live: LiveDisplay | None
) -> TaskUpdate | None:
    last = None
    if args.json:
        async for update in stream:
            _line(json_line(update.to_dict()))
            last = update
    elif live is None:
        with PlainDisplay(_line) as display:
            async for update in stream:
                display.show(update)
                last = update
    else:
        async for update in stream:
            live.show(update)
            last = update
    return last


def _print_output(output: Any, console: Console | None) -> None:
    """A completed task's output: `output:` then its JSON, highlighted on a terminal."""
    text = json_text(output, indent=2)
    if console is None:
        _line("output:")
        _line(text)
        return
    from rich.highlighter import JSONHighlighter
    from rich.text import Text

    console.print(Text("output", style="bold"))
    shown = JSONHighlighter()(Text(text))  # a Text: server text is never read as markup
    shown.no_wrap = True
    console.print(shown, soft_wrap=True)


def _finish(args: argparse.Namespace, last: TaskUpdate | None, console: Console | None) -> int:
    """Show how the task ended (its output when it completed); the exit status."""
    if last is None:
        _say(args, "error: the stream ended without any update")
        return FAILED
    if last.status is TaskStatus.COMPLETED:
        if not args.json:  # with --json, the last JSON line already holds the output
            _print_output(last.output, console)
        return OK
    if not last.status.is_terminal:
        _say(args, f"error: the stream of task {last.id} ended while it was {last.status.value}")
        return FAILED
    detail = f": {last.error}" if last.error else ""
    _say(args, f"task {last.id} {last.status.value}{detail}")
    return FAILED


async def _leave(
    args: argparse.Namespace,
    client: AsyncInference,
    task_id: str | None,
    interrupts: _Interrupts,
    live: LiveDisplay | None,
    *,
    cancel: bool,
    closed: bool,
) -> int:
    """Ctrl-C, or stdout's reader gone (`closed`), while following a task: cancel the task
    (`cancel`) or leave it running. One line on stderr says which, with the task's id; the live
    display's last frame says it too, in short (the id is above it). Exit 130 (141 when
    `closed`)."""
    why, code = _stopped(closed)

    def end(frame: str, line: str, status: TaskStatus | None = None) -> int:
        _say(args, line)  # while the display runs, rich prints it above the display
        if live is not None:
            live.conclude(f"{why}: {frame}", status)
        return code

    if task_id is None:
        return end("nothing to cancel", f"{why} before the task was created; nothing to cancel")
    if not cancel:
        return end("detached, the task goes on", f"{why}: detached from task {task_id}, which "
                   f"goes on (inferencesh cancel {task_id} stops it)")  # fmt: skip
    if live is not None:
        live.conclude(f"{why}: cancelling the task…")
        live.refresh()
    try:
        await interrupts.guard(client.cancel_task(task_id))
    except _Interrupted:
        line = f"{why} again; task {task_id} may still be running"
        return end("the task may still be running", line, TaskStatus.FAILED)
    except InferenceshError as exc:
        line = f"{why}; could not cancel task {task_id}: {exc}"
        return end("could not cancel the task", line, TaskStatus.FAILED)
    # Ctrl-C in a pipe keeps the line the CLI has always printed: `cancelled task <id>`.
    line = f"{why}: cancelled task {task_id}" if closed else f"cancelled task {task_id}"
    return end("task cancelled", line, TaskStatus.CANCELLED)


# -- get and cancel ----------------------------------------------------------------------------


def get_command(args: argparse.Namespace) -> int:
    """`inferencesh get TASK_ID`: print the task's current state once."""
    return _call_command(args, _get)


def cancel_command(args: argparse.Namespace) -> int:
    """`inferencesh cancel TASK_ID`: cancel the task and say what became of it."""
    return _call_command(args, _cancel)


_Call = Callable[[argparse.Namespace, AsyncInference, _Interrupts], Awaitable[int]]


def _call_command(args: argparse.Namespace, work: _Call) -> int:
    """What `get` and `cancel` share: the server, `work`'s typed errors as exit statuses."""
    try:
        with _target(args) as (base_url, api_key):
            client = _client(base_url, api_key)
            return asyncio.run(_call(args, client, work))
    except _Usage as exc:
        return _usage(args, str(exc))
    except KeyboardInterrupt:  # before the handler was installed, or where there is none
        _say(args, "interrupted")
        return INTERRUPTED


async def _call(args: argparse.Namespace, client: AsyncInference, work: _Call) -> int:
    async with client:
        with _Interrupts() as interrupts:
            try:
                return await work(args, client, interrupts)
            except _Interrupted:
                _say(args, "interrupted")
                return INTERRUPTED
            except UsageError as exc:
                raise _Usage(str(exc)) from None
            except InferenceshError as exc:
                _say(args, f"error: {exc}")
                return FAILED


async def _get(args: argparse.Namespace, client: AsyncInference, interrupts: _Interrupts) -> int:
    """The task's state as plain lines (`task:`, `log:`, `progress:`, `status:`, then `output:`
    when it completed) or one JSON object; exit 0 whatever its status, since it was read."""
    update = await interrupts.guard(client.get_task(args.task_id))
    if args.json:
        _line(json_line(update.to_dict()))
        return OK
    with PlainDisplay(_line) as display:
        display.show(update)
    if update.status is TaskStatus.COMPLETED:
        _print_output(update.output, None)
    return OK


async def _cancel(args: argparse.Namespace, client: AsyncInference, interrupts: _Interrupts) -> int:
    """Cancel, then read the task back: 0 when it is cancelled or cancelling (or still going,
    the server's cancellation under way), 1 when it had already ended otherwise."""
    task_id = args.task_id
    await interrupts.guard(client.cancel_task(task_id))
    status = (await interrupts.guard(client.get_task(task_id))).status
    if status is TaskStatus.CANCELLED:
        _line(f"cancelled task {task_id}")
    elif not status.is_terminal:
        _line(f"cancelling task {task_id} (now {status.value})")
    else:
        _say(args, f"task {task_id} had already ended ({status.value}); nothing to cancel")
        return FAILED
    return OK
