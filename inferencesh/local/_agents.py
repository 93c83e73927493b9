"""Local agents: the context an agent writes through, the scripted agent, the registry, runs.

An agent is `async def agent(text: str, ctx: AgentContext) -> str | None`. It streams reasoning
with `ctx.think`, answer text with `ctx.say`, and asks the client to run a tool with
`await ctx.call_tool(name, args)`. Its return value, if any, is appended to the answer; raising
fails the run with the exception's message; stopping the chat cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import re
from collections.abc import Mapping
from typing import Any, cast

import attrs

from ._apps import AppRef, InvalidField, load_app, parse_app_ref
from ._chats import Chat, ChatError, Run
from ._eventlog import encode_json
from ._options import AgentFunction

__all__ = [
    "AgentContext",
    "AgentRegistry",
    "RunRequest",
    "ToolResult",
    "ToolTimeoutError",
    "load_agent",
    "parse_attachments",
    "parse_run_request",
    "scripted_agent",
    "launch_run",
]

_REASONING = "Let me look that up with the search tool."
_ANSWER_PIECES = 8
#: Files one message or one tool result may carry (protocol: section 3.3).
MAX_ATTACHMENTS = 20


class ToolTimeoutError(Exception):
    """A client tool got no result within the emulator's `tool_timeout`."""


@attrs.frozen
class ToolResult:
    """What a client tool answered: its result text and the file objects attached to it."""

    text: str
    attachments: tuple[dict[str, Any], ...] = ()


class AgentContext:
    """What a local agent gets besides the message text: a way to write its answer.

    `history` holds the chat's earlier messages as `{"role", "text"}`; `context` and
    `attachments` are what the request sent. Once the run has ended (stopped, failed), `think`
    and `say` are ignored and `call_tool` raises.
    """

    def __init__(
        self,
        chat: Chat,
        run: Run,
        *,
        context: Any,
        attachments: list[Any],
        tool_timeout: float,
    ) -> None:
        self._chat = chat
        self._run = run
        self._tool_timeout = tool_timeout
        self.chat_id = chat.id
        self.run_id = run.id
        self.agent = run.agent
        self.history = chat.history(run)
        self.context = context
        self.attachments = attachments

    def think(self, piece: str) -> None:
        """Stream a piece of reasoning (a `reasoning` delta)."""
        self._chat.add_piece(self._run, "reasoning", _text(piece, "think"))

    def say(self, piece: str) -> None:
        """Stream a piece of the answer (a `response` delta)."""
        self._chat.add_piece(self._run, "response", _text(piece, "say"))

    async def call_tool(self, name: str, args: Mapping[str, Any] | None = None) -> str:
        """Ask the client to run tool `name` with `args`; return its result text.

        Raises `ToolTimeoutError` when no result arrives within the emulator's `tool_timeout`.
        A rejected call returns the rejection as text.
        """
        return (await self.call_tool_result(name, args)).text

    async def call_tool_result(
        self, name: str, args: Mapping[str, Any] | None = None
    ) -> ToolResult:
        """As `call_tool`, and also the files the client attached to its result."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"a tool name must be a non-empty string, got {name!r}")
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise TypeError(f"tool arguments must be a mapping, got {type(args).__name__}")
        arguments = copy.deepcopy(dict(args))
        encode_json(arguments)  # raise to the agent now if they cannot travel as JSON
        try:
            invocation = self._chat.open_invocation(self._run, name, arguments)
        except ChatError as exc:
            raise RuntimeError(exc.detail) from None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._tool_timeout):
                await invocation.answered
        if invocation.result is not None:  # also when it arrived just as the timeout fired
            return ToolResult(invocation.result, tuple(invocation.attachments))
        self._chat.give_up(invocation)
        raise ToolTimeoutError(
            f"client tool {name!r} got no result within {self._tool_timeout:g} s"
        )


def _text(piece: Any, method: str) -> str:
    if not isinstance(piece, str):
        raise TypeError(f"ctx.{method}() takes a string, got {type(piece).__name__}")
    return piece


def _pieces(text: str, count: int) -> list[str]:
    """Split `text` at word starts into at most `count` pieces that join back to it exactly."""
    words = [word for word in re.split(r"(?<=\s)(?=\S)", text) if word]
    size = max(1, -(-len(words) // count))
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


async def scripted_agent(text: str, ctx: AgentContext, *, step_delay: float) -> None:
    """The built-in stand-in for any unregistered agent.

    It thinks aloud word by word, asks the client to run `search` with `{"query": text}`, then
    answers with a sentence that quotes the message and the tool result verbatim and counts the
    chat's turns (so tests can see the history is kept). Each piece follows a `step_delay` pause.
    """
    for piece in _pieces(_REASONING, len(_REASONING)):
        await asyncio.sleep(step_delay)
        ctx.think(piece)
    await asyncio.sleep(step_delay)
    result = await ctx.call_tool("search", {"query": text})
    turn = 1 + sum(1 for message in ctx.history if message["role"] == "user")
    answer = (
        f'You asked "{text}". The search tool returned: {result}. This is turn {turn} of this chat.'
    )
    for piece in _pieces(answer, _ANSWER_PIECES):
        await asyncio.sleep(step_delay)
        ctx.say(piece)


def scripted(step_delay: float) -> AgentFunction:
    """The scripted agent with its pacing bound."""
    return functools.partial(scripted_agent, step_delay=step_delay)


# -- running ------------------------------------------------------------------------------------


def launch_run(
    chat: Chat,
    run: Run,
    fn: AgentFunction,
    *,
    context: Any,
    attachments: list[Any],
    tool_timeout: float,
) -> None:
    """Start the coroutine that runs `fn` for `run` (the run is already `working`)."""
    ctx = AgentContext(
        chat, run, context=context, attachments=attachments, tool_timeout=tool_timeout
    )
    runner = asyncio.get_running_loop().create_task(
        _run(chat, run, fn, ctx), name=f"inferencesh.local {chat.id} {run.id}"
    )
    run.runner = runner
    runner.add_done_callback(functools.partial(_runner_done, chat, run))


async def _run(chat: Chat, run: Run, fn: AgentFunction, ctx: AgentContext) -> None:
    try:
        result: Any = fn(run.user.text, ctx)
        if inspect.isawaitable(result):
            result = await result
        if result is not None and not isinstance(result, str):
            raise TypeError(f"the agent returned {type(result).__name__}, not a string or None")
    except Exception as exc:  # the agent failed: that is the run's outcome, not ours
        chat.finish_run(run, "failed", error=str(exc) or type(exc).__name__)
        return
    if result:
        ctx.say(result)
    chat.finish_run(run, "completed", output=run.message.text)


def _runner_done(chat: Chat, run: Run, runner: asyncio.Task[None]) -> None:
    """End a run whose coroutine stopped without ending it (shutdown, crash)."""
    if runner.cancelled():
        chat.finish_run(run, "failed", error="the emulator stopped")
        return
    exc = runner.exception()
    if exc is not None:
        chat.finish_run(run, "failed", error=f"emulator error: {exc!r}")


# -- requests and the registry ------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class RunRequest:
    """A validated `POST /agents/run` body; `ref` is None for an ad-hoc `agent_config`."""

    chat_id: str | None
    text: str
    agent: str
    ref: AppRef | None
    attachments: list[Any]
    context: Any


def parse_attachments(value: Any, field: str, *, unit: str = "") -> list[dict[str, Any]]:
    """Validate a list of attached file objects (none if `value` is null); `InvalidField`
    names `field`. `unit`, if given, follows the limit in its error text ("at most 20 files")."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ATTACHMENTS:
        limit = f"{MAX_ATTACHMENTS} {unit}" if unit else str(MAX_ATTACHMENTS)
        raise InvalidField(field, f"must be a list of at most {limit}")
    if not all(isinstance(item, dict) for item in value):
        raise InvalidField(field, "must hold file objects")
    return value


def parse_run_request(body: Mapping[str, Any]) -> RunRequest:
    """Validate a `POST /agents/run` body; `InvalidField` names the first bad field."""
    chat_id = body.get("chat_id")
    if chat_id is not None and (not isinstance(chat_id, str) or not chat_id):
        raise InvalidField("chat_id", "must be null or a chat id")
    input = body.get("input")
    if not isinstance(input, dict):
        raise InvalidField("input", "must be an object with a text field")
    text = input.get("text")
    if not isinstance(text, str):
        raise InvalidField("input.text", "is required" if text is None else "must be a string")
    attachments = parse_attachments(input.get("attachments"), "input.attachments")
    config = body.get("agent_config")
    ref = None
    if body.get("agent") is None and isinstance(config, dict):
        name = body.get("agent_name") or config.get("name")
        agent = f"adhoc/{name}" if isinstance(name, str) and name else "adhoc/agent"
    else:
        ref = parse_app_ref(body.get("agent"), field="agent")
        if ref.function is not None:
            raise InvalidField("agent", "an agent reference has no :function suffix")
        agent = body["agent"]
    return RunRequest(
        chat_id=chat_id,
        text=text,
        agent=agent,
        ref=ref,
        attachments=copy.deepcopy(attachments),
        context=copy.deepcopy(body.get("context")),
    )


class AgentRegistry:
    """Local agents by `namespace/name` (optionally `namespace/name@version`)."""

    def __init__(self, agents: Mapping[str, AgentFunction] | None = None) -> None:
        self._agents: dict[str, AgentFunction] = {}
        for ref, fn in (agents or {}).items():
            self.register(ref, fn)

    def register(self, ref: str, fn: AgentFunction) -> None:
        """Register `fn` as the agent `ref` (`namespace/name` or `namespace/name@version`)."""
        parsed = parse_app_ref(ref, field="ref")
        if parsed.function is not None:
            raise ValueError(f"register an agent without a function suffix, got {ref!r}")
        if not callable(fn):
            raise TypeError(f"agent {ref!r} must be callable, got {fn!r}")
        self._agents[ref] = fn

    def lookup(self, ref: AppRef) -> AgentFunction | None:
        """The agent registered for `ref` (its exact version first), or None."""
        if ref.version is not None:
            found = self._agents.get(f"{ref.key}@{ref.version}")
            if found is not None:
                return found
        return self._agents.get(ref.key)

    def __contains__(self, ref: str) -> bool:
        return ref in self._agents


def load_agent(spec: str) -> tuple[str, AgentFunction]:
    """Load `ns/name=package.module:function`; ValueError with a readable message otherwise."""
    ref, fn = load_app(spec)
    return ref, cast("AgentFunction", fn)
