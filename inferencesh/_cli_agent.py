"""The `agent` command of the CLI: send one message to an agent and stream its answer.

The answer is written as it arrives (thinking dimmed on a terminal; in a pipe only the answer
goes to stdout, thinking and notes to stderr), every piece neutralised first. The CLI cannot
run client tools: it answers each call with an error result, so the agent carries on. The chat's
id goes to stderr (`chat: <id>`); `--chat ID` continues that chat. Exit codes: 0 answered, 1
the run failed, 2 usage errors, 130 Ctrl-C (the run is stopped first), 141 stdout's reader went
away (likewise).

The answer comes through `AsyncAgent.send_message`, which decides whether to stop the chat's
run when the answer ends early (Ctrl-C, a closed stdout, an error) and notes on the error what
became of the run; the line on stderr says it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from ._agent import AsyncAgent, MessageEvent, ToolCall
from ._async_client import AsyncInference
from ._cli_run import (
    FAILED,
    INTERRUPTED,
    OK,
    _client,
    _Interrupted,
    _Interrupts,
    _live_console,
    _need_rich,
    _NeedRich,
    _say,
    _stopped,
    _target,
    _Usage,
    _usage,
)
from ._exceptions import InferenceshError, UsageError
from ._terminal import OutputClosed, neutralise, one_line, write_err, write_out

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["agent_command", "rejection"]


def rejection(name: str) -> str:
    """The tool result the CLI sends for a client tool it cannot run."""
    return f"error: the inferencesh CLI cannot run client tool '{name}'"


class _ChatWriter:
    """Writes an agent's answer as it streams: the text, thinking dimmed, notes in yellow.

    Without a console (stdout is not a terminal) the answer goes to stdout and thinking and
    notes to stderr, so a pipe receives only the answer. Every piece is neutralised first (the
    answer keeps its newlines; a note is one line).
    """

    def __init__(self, console: Console | None) -> None:
        self._console = console
        self._kind: str | None = None  # what the current line holds: "text" or "thinking"
        self.wrote_text = False

    def _write(self, text: str, kind: str) -> None:
        text = neutralise(text)
        if self._console is not None:
            from rich.text import Text

            style = "dim italic" if kind == "thinking" else ""
            if kind == "note":
                style = "yellow"
            self._console.print(Text(text, style=style), end="", soft_wrap=True)
            return
        if kind == "text":
            write_out(text)
        else:
            write_err(text)

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
        self._write(f"[{one_line(text)}]\n", "note")

    def end(self) -> None:
        """End the current line, if one is open."""
        if self._kind is not None:
            self._write("\n", self._kind)
            self._kind = None


def agent_command(args: argparse.Namespace) -> int:
    """`inferencesh agent REF MESSAGE [--chat ID]`: send one message and stream the answer;
    the chat's id goes to stderr (`chat: <id>`), to continue it with `--chat`."""
    try:
        console = _live_console()
        with _target(args) as (base_url, api_key):
            client = _client(base_url, api_key)
            return asyncio.run(_chat(args, client, _ChatWriter(console)))
    except _Usage as exc:
        return _usage(args, str(exc))
    except _NeedRich as exc:
        return _need_rich(args, exc, "pipe the output")
    except KeyboardInterrupt:
        _say(args, "interrupted")
        return INTERRUPTED


async def _chat(args: argparse.Namespace, client: AsyncInference, writer: _ChatWriter) -> int:
    async with client:
        try:
            agent = client.agent(args.ref, chat_id=args.chat)
        except UsageError as exc:
            raise _Usage(str(exc)) from None
        code = await _send(args, agent, writer)
        # The chat used, to continue it with --chat; not after a failure in a chat the user
        # named (which may not exist).
        if agent.chat_id is not None and (code != FAILED or args.chat is None):
            write_err(f"chat: {one_line(agent.chat_id)}\n")
        return code


async def _send(args: argparse.Namespace, agent: AsyncAgent, writer: _ChatWriter) -> int:
    async def on_tool_call(call: ToolCall) -> None:
        writer.note(f"the agent called client tool '{call.name}', which the CLI cannot run")
        await agent.submit_tool_result(call.id, rejection(call.name))

    with _Interrupts() as interrupts:
        answer = agent.send_message(
            args.message, on_message=writer.message, on_tool_call=on_tool_call
        )
        try:
            final = await interrupts.guard(answer)
        except (_Interrupted, OutputClosed, InferenceshError) as exc:
            writer.end()
            return _ended_early(args, agent, interrupts, exc)
    if not writer.wrote_text and final.text:
        writer.message(MessageEvent("text", final.text, final.id))
    writer.end()
    return OK


def _ended_early(
    args: argparse.Namespace, agent: AsyncAgent, interrupts: _Interrupts, exc: BaseException
) -> int:
    """Say how the answer ended early (`exc`) and what became of the chat's run, which
    `send_message` stopped if the message may have started one (and noted so on its error).

    Ctrl-C, or stdout's reader gone (also while a tool note was written): exit 130 (141 when
    closed). Any other failure: exit 1.
    """
    closed = isinstance(exc, OutputClosed) or isinstance(exc.__cause__, OutputClosed)
    # Ctrl-C cancelled `send_message`: its error is the cancellation `_Interrupted` replaced.
    failure = exc.__context__ if isinstance(exc, _Interrupted) else exc
    notes: list[str] = getattr(failure, "__notes__", [])
    if isinstance(exc, InferenceshError) and not closed:
        _say(args, f"error: {exc}")
        for note in notes:
            _say(args, note)
        return FAILED
    why, code = _stopped(closed)
    if agent.chat_id is None:
        _say(args, f"{why} before the chat started")
    elif notes:
        _say(args, f"{why}; {notes[-1]}")
    elif interrupts.repeated:  # a second Ctrl-C cut the stop short
        _say(args, f"{why} again; chat {agent.chat_id} may still be running")
    else:
        _say(args, f"{why} before the message reached chat {agent.chat_id}")
    return code
