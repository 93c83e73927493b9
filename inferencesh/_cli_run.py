"""The `run` and `agent` commands of the CLI (argparse lives in `inferencesh.cli`).

`run` creates a task and shows its stream one of three ways: a live rich display on a terminal,
plain lines when stdout is a pipe or file, or one JSON object per update with `--json`. Only
the live display needs rich. Exit codes: 0 completed, 1 the task did not complete or the API
failed, 2 usage errors, 130 Ctrl-C (which cancels the task on the server first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from ._agent import AsyncAgent, MessageEvent, ToolCall
from ._async_client import AsyncInference, TaskStream
from ._events import TaskUpdate
from ._exceptions import InferenceshError, UsageError
from ._files import TransferProgress
from ._status import TaskStatus
from ._wire import json_kind
from .progress import INSTALL_HINT, PlainDisplay, require_rich

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["agent_command", "run_command", "update_to_json"]

T = TypeVar("T")

# Exit codes.
OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130

# The emulator accepts any key; --local uses this one unless --api-key names another.
LOCAL_API_KEY = "inf_local"


class _Usage(Exception):
    """A usage error found after argument parsing (bad --input, missing key, ...)."""


def _usage(args: argparse.Namespace, message: str) -> int:
    parser: argparse.ArgumentParser = args.parser
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return USAGE


def _say(args: argparse.Namespace, message: str) -> None:
    print(f"{args.parser.prog}: {message}", file=sys.stderr, flush=True)


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
    if not args.local:
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

    def _take(self) -> bool:
        if self._count > self._handled:
            self._handled = self._count
            return True
        return False

    async def guard(self, work: Awaitable[T]) -> T:
        """Await `work`; raise `_Interrupted` if Ctrl-C came before or during it."""
        if self._take():
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
    except UsageError:
        raise _NeedRich from None
    from rich.console import Console

    return Console()


def _need_rich(args: argparse.Namespace, alternative: str) -> int:
    _say(args, f"the live display needs rich: {INSTALL_HINT} (or {alternative})")
    return USAGE


# -- run ------------------------------------------------------------------------------------------


def update_to_json(update: TaskUpdate) -> dict[str, Any]:
    """One update as the `--json` line: id, status name and code, logs, progress, outputs."""
    progress = update.progress
    return {
        "id": update.id,
        "status": update.status.value,
        "status_code": update.status.code,
        "logs": list(update.logs),
        "progress": (
            None if progress is None else {"current": progress.current, "total": progress.total}
        ),
        "partial_output": update.partial_output,
        "output": update.output,
        "error": update.error,
    }


def run_command(args: argparse.Namespace) -> int:
    """`inferencesh run APP`: create a task and show it until it ends."""
    try:
        params = {"app": args.app, "input": read_input(args.input)}
        console = None if args.json else _live_console()
        with _target(args) as (base_url, api_key):
            client = _client(base_url, api_key)
            return asyncio.run(_run(args, client, params, console))
    except _Usage as exc:
        return _usage(args, str(exc))
    except _NeedRich:
        return _need_rich(args, "pass --json, or pipe the output")
    except KeyboardInterrupt:  # before the handler was installed, or where there is none
        _say(args, "interrupted")
        return INTERRUPTED


async def _run(
    args: argparse.Namespace,
    client: AsyncInference,
    params: dict[str, Any],
    console: Console | None,
) -> int:
    async with client:
        with _Interrupts() as interrupts:
            stream = client.run(params, stream=True)
            try:
                last = await interrupts.guard(_show(stream, args, console))
            except _Interrupted:
                await stream.aclose()
                return await _cancel(args, client, stream.task_id, interrupts)
            except UsageError as exc:
                raise _Usage(str(exc)) from None
            except InferenceshError as exc:
                _say(args, f"error: {exc}")
                return FAILED
            finally:
                await stream.aclose()
            status = _finish(args, last, console)
            if status == OK and args.download is not None and last is not None:
                try:
                    await interrupts.guard(_download(args, client, last, console))
                except _Interrupted:
                    _say(args, "interrupted; the files not saved yet were left out")
                    return INTERRUPTED
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
                print(json.dumps({"saved": str(path), "uri": file.uri}), flush=True)
            else:
                print(f"saved {path}", flush=True)
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=console) as bars:
        for file in files:
            bar = bars.add_task(file.filename or file.uri.rsplit("/", 1)[-1], total=file.size)

            def moved(state: TransferProgress, bar: Any = bar) -> None:
                bars.update(bar, completed=state.done, total=state.total)

            path = await client.download(file, folder, progress=moved)
            bars.update(bar, description=str(path))


async def _show(
    stream: TaskStream, args: argparse.Namespace, console: Console | None
) -> TaskUpdate | None:
    last = None
    if args.json:
        async for update in stream:
            print(json.dumps(update_to_json(update), default=str), flush=True)
            last = update
    elif console is None:

        def write(line: str) -> None:
            print(line, flush=True)

        with PlainDisplay(write) as display:
            async for update in stream:
                display.show(update)
                last = update
    else:
        from .progress import atrack

        last = await atrack(stream, console=console)
    return last


def _finish(args: argparse.Namespace, last: TaskUpdate | None, console: Console | None) -> int:
    """Show how the task ended (its output when it completed); the exit status."""
    if last is None:
        _say(args, "error: the stream ended without any update")
        return FAILED
    if last.status is TaskStatus.COMPLETED:
        if args.json:
            pass  # the last JSON line already holds the output
        elif console is not None:
            console.print("[bold]output[/]")
            console.print_json(data=last.output, default=str)
        else:
            print("output:")
            print(json.dumps(last.output, indent=2, ensure_ascii=False, default=str), flush=True)
        return OK
    if not last.status.is_terminal:
        _say(args, f"error: the stream of task {last.id} ended while it was {last.status.value}")
        return FAILED
    detail = f": {last.error}" if last.error else ""
    _say(args, f"task {last.id} {last.status.value}{detail}")
    return FAILED


async def _cancel(
    args: argparse.Namespace, client: AsyncInference, task_id: str | None, interrupts: _Interrupts
) -> int:
    """Ctrl-C: cancel the task on the server, say so, exit 130."""
    if task_id is None:
        _say(args, "interrupted before the task was created; nothing to cancel")
        return INTERRUPTED
    try:
        await interrupts.guard(client.cancel_task(task_id))
    except _Interrupted:
        _say(args, f"interrupted again; task {task_id} may still be running")
        return INTERRUPTED
    except InferenceshError as exc:
        _say(args, f"could not cancel task {task_id}: {exc}")
        return INTERRUPTED
    _say(args, f"cancelled task {task_id}")
    return INTERRUPTED


# -- agent ----------------------------------------------------------------------------------------


def rejection(name: str) -> str:
    """The tool result the CLI sends for a client tool it cannot run."""
    return f"error: the inferencesh CLI cannot run client tool '{name}'"


class _ChatWriter:
    """Writes an agent's answer as it streams: the text, thinking dimmed, notes in yellow.

    Without a console (stdout is not a terminal) the answer goes to stdout and thinking and
    notes to stderr, so a pipe receives only the answer.
    """

    def __init__(self, console: Console | None) -> None:
        self._console = console
        self._kind: str | None = None  # what the current line holds: "text" or "thinking"
        self.wrote_text = False

    def _write(self, text: str, kind: str) -> None:
        if self._console is not None:
            style = "dim italic" if kind == "thinking" else None
            if kind == "note":
                style = "yellow"
            self._console.print(
                text, style=style, end="", markup=False, highlight=False, soft_wrap=True
            )
            return
        stream = sys.stdout if kind == "text" else sys.stderr
        stream.write(text)
        stream.flush()

    def _switch(self, kind: str) -> None:
        if self._kind is not None and self._kind != kind:
            self._write("\n", self._kind)
            self._kind = None
        if self._kind is None and kind == "thinking" and self._console is None:
            self._write("[thinking] ", kind)
        self._kind = kind

    def message(self, event: MessageEvent) -> None:
        """A piece of text or thinking."""
        self._switch(event.type)
        self._write(event.content, event.type)
        if event.type == "text":
            self.wrote_text = True

    def note(self, text: str) -> None:
        """A line of its own, between pieces of the answer."""
        self.end()
        self._write(f"[{text}]\n", "note")

    def end(self) -> None:
        """End the current line, if one is open."""
        if self._kind is not None:
            self._write("\n", self._kind)
            self._kind = None


def agent_command(args: argparse.Namespace) -> int:
    """`inferencesh agent REF MESSAGE`: send one message and stream the answer."""
    try:
        console = _live_console()
        with _target(args) as (base_url, api_key):
            client = _client(base_url, api_key)
            return asyncio.run(_chat(args, client, _ChatWriter(console)))
    except _Usage as exc:
        return _usage(args, str(exc))
    except _NeedRich:
        return _need_rich(args, "pipe the output")
    except KeyboardInterrupt:
        _say(args, "interrupted")
        return INTERRUPTED


async def _chat(args: argparse.Namespace, client: AsyncInference, writer: _ChatWriter) -> int:
    async with client:
        try:
            agent = client.agent(args.ref)
        except UsageError as exc:
            raise _Usage(str(exc)) from None

        async def on_tool_call(call: ToolCall) -> None:
            writer.note(f"the agent called client tool '{call.name}', which the CLI cannot run")
            await agent.submit_tool_result(call.id, rejection(call.name))

        with _Interrupts() as interrupts:
            try:
                final = await interrupts.guard(
                    agent.send_message(
                        args.message, on_message=writer.message, on_tool_call=on_tool_call
                    )
                )
            except _Interrupted:
                writer.end()
                return await _stop(args, agent, interrupts)
            except InferenceshError as exc:
                writer.end()
                _say(args, f"error: {exc}")
                return FAILED
    if not writer.wrote_text and final.text:
        writer.message(MessageEvent("text", final.text, final.id))
    writer.end()
    return OK


async def _stop(args: argparse.Namespace, agent: AsyncAgent, interrupts: _Interrupts) -> int:
    if agent.chat_id is None:
        _say(args, "interrupted before the chat started")
        return INTERRUPTED
    try:
        await interrupts.guard(agent.stop())
    except _Interrupted:
        _say(args, f"interrupted again; chat {agent.chat_id} may still be running")
        return INTERRUPTED
    except InferenceshError as exc:
        _say(args, f"could not stop chat {agent.chat_id}: {exc}")
        return INTERRUPTED
    _say(args, f"stopped chat {agent.chat_id}")
    return INTERRUPTED
