"""Chats: messages, agent runs, client tool invocations, the chat event log, and retention.

Every mutation happens on the server's loop while holding the hub's lock, appends its events to
the chat's log and notifies the hub. Each event is `{"event": name, "data": {...}}` with name
`chats` (the chat without its messages), `chat_messages` (one message) or `delta` (a piece of
the assistant's reasoning or answer). A chat's log never closes: a chat lives on across runs.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from ._eventlog import EventLog, Frame, Snapshot, encode_json
from ._hub import ChangeHub

__all__ = ["Chat", "ChatError", "ChatStore", "Message", "Run", "ToolInvocation"]

RunState = Literal["working", "completed", "failed", "canceled"]

# The assistant message's status once its run has ended in each state.
_MESSAGE_STATUS = {"completed": "ready", "failed": "failed", "canceled": "cancelled"}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class ChatError(Exception):
    """A chat request that cannot be served; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ToolInvocation:
    """One client tool call of an assistant message: waiting for its result, or answered."""

    def __init__(self, name: str, arguments: dict[str, Any], run: Run) -> None:
        self.id = _new_id("ti")
        self.call_id = _new_id("call")
        self.name = name
        self.arguments = arguments
        self.run = run
        self.status = "awaiting_input"
        self.result: str | None = None
        self.attachments: list[Any] = []
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def waiting(self) -> bool:
        """Whether the invocation still waits for its result."""
        return self.status == "awaiting_input" and not self.run.ended

    def to_dict(self) -> dict[str, Any]:
        """The `ToolInvocationDTO` of the wire contract."""
        data: dict[str, Any] = {
            "id": self.id,
            "tool_invocation_id": self.call_id,
            "type": "client",
            "status": self.status,
            "display_name": self.name,
            "function": {"name": self.name, "arguments": copy.deepcopy(self.arguments)},
        }
        if self.result is not None:
            data["result"] = self.result
        return data


class Message:
    """One chat message; an assistant message grows as its run writes."""

    def __init__(
        self, *, chat_id: str, run_id: str, order: int, role: str, status: str, text: str = ""
    ) -> None:
        self.id = _new_id("msg")
        self.chat_id = chat_id
        self.run_id = run_id
        self.order = order
        self.role = role
        self.status = status
        self.text = text
        self.reasoning = ""
        self.tool_invocations: list[ToolInvocation] = []

    def to_dict(self) -> dict[str, Any]:
        """The `ChatMessageDTO` of the wire contract."""
        content: list[dict[str, str]] = []
        if self.reasoning:
            content.append({"type": "reasoning", "text": self.reasoning})
        if self.text or self.role == "user":
            content.append({"type": "text", "text": self.text})
        return {
            "id": self.id,
            "chat_id": self.chat_id,
            "agent_run_id": self.run_id,
            "order": self.order,
            "status": self.status,
            "role": self.role,
            "content": content,
            "tool_invocations": [inv.to_dict() for inv in self.tool_invocations],
        }


class Run:
    """One agent run: answers one user message with one assistant message."""

    def __init__(self, run_id: str, agent: str, user: Message, message: Message) -> None:
        self.id = run_id
        self.agent = agent
        self.user = user
        self.message = message
        self.state: RunState = "working"
        self.error: str | None = None
        self.output: str | None = None
        self.runner: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        """Whether the run has completed, failed or been stopped."""
        return self.state != "working"

    def to_dict(self) -> dict[str, Any]:
        """The `AgentRunDTO` of the wire contract."""
        data: dict[str, Any] = {"id": self.id, "state": self.state}
        if self.error is not None:
            data["error"] = self.error
        if self.state == "completed":
            data["output"] = self.output
        return data


class Chat:
    """One chat: its messages, its current (or last) run, and its event log."""

    def __init__(self, store: ChatStore, agent: str) -> None:
        self.id = _new_id("chat")
        self.agent = agent
        self.messages: list[Message] = []
        self.run: Run | None = None
        self.log = EventLog(store.max_events)
        self._store = store
        self._hub = store.hub

    # -- reading ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a run is in progress."""
        return self.run is not None and not self.run.ended

    def to_dict(self, *, messages: bool = True) -> dict[str, Any]:
        """The `ChatDTO` of the wire contract (a consistent copy, from any thread)."""
        with self._hub.lock:
            return self._to_dict(messages=messages)

    def _to_dict(self, *, messages: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "status": "busy" if self.busy else "idle",
            "active_run": self.run.to_dict() if self.run is not None else None,
            "output": self._output(),
            "pending_interrupts": [],
        }
        if messages:
            data["messages"] = [message.to_dict() for message in self.messages]
        return data

    def _output(self) -> str | None:
        for message in reversed(self.messages):
            if message.role == "assistant" and message.status == "ready":
                return message.text
        return None

    def snapshot(self) -> Snapshot:
        """Each message, then the chat, as of `log.last_seq` (never terminal).

        The chat comes last: clients stop reading at a `chats` event whose run has ended, so
        the messages must already be in hand when a client connects after the run.
        """
        with self._hub.lock:
            frames = [_frame("chat_messages", message.to_dict()) for message in self.messages]
            frames.append(_frame("chats", self._to_dict(messages=False)))
            return Snapshot(self.log.last_seq, tuple(frames), False)

    def history(self, run: Run) -> list[dict[str, str]]:
        """The messages before `run`'s user message, as `{"role", "text"}`."""
        with self._hub.lock:
            return [
                {"role": message.role, "text": message.text}
                for message in self.messages
                if message.order < run.user.order
            ]

    # -- runs ------------------------------------------------------------------------------

    def start_run(self, text: str, agent: str) -> Run:
        """Add the user message and a pending assistant message; 409 if a run is in progress."""
        with self._hub.lock:
            if self.busy:
                assert self.run is not None
                raise ChatError(
                    409, f"chat {self.id} already has a run in progress ({self.run.id})"
                )
            order = self.messages[-1].order + 1 if self.messages else 1
            run_id = _new_id("run")
            user = Message(
                chat_id=self.id, run_id=run_id, order=order, role="user", status="ready", text=text
            )
            assistant = Message(
                chat_id=self.id, run_id=run_id, order=order + 1, role="assistant", status="pending"
            )
            run = Run(run_id, agent, user, assistant)
            self.messages += [user, assistant]
            self.run = run
            self._store.went_busy(self)
            self._emit("chats", self._to_dict(messages=False))
            self._emit("chat_messages", user.to_dict())
            self._emit("chat_messages", assistant.to_dict())
        self._hub.notify()
        return run

    def add_piece(self, run: Run, key: Literal["reasoning", "response"], piece: str) -> None:
        """Append reasoning or answer text to the run's message and log it as a delta."""
        if not piece:
            return
        with self._hub.lock:
            if run.ended:
                return
            message = run.message
            if key == "reasoning":
                message.reasoning += piece
            else:
                message.text += piece
            data = {"delta": {key: piece}, "seq": self.log.last_seq + 1, "resource_id": message.id}
            self._emit("delta", data)
        self._hub.notify()

    def open_invocation(self, run: Run, name: str, arguments: dict[str, Any]) -> ToolInvocation:
        """Ask the client to run a tool: log the message with the new invocation."""
        with self._hub.lock:
            if run.ended:
                raise ChatError(409, f"run {run.id} has ended")
            invocation = ToolInvocation(name, arguments, run)
            run.message.tool_invocations.append(invocation)
            self._store.index(invocation, self)
            self._emit("chat_messages", run.message.to_dict())
        self._hub.notify()
        return invocation

    def answer(self, invocation: ToolInvocation, result: str, *, status: str = "completed") -> None:
        """Deliver a tool result; 409 if the invocation no longer waits for one."""
        with self._hub.lock:
            if not invocation.waiting:
                raise ChatError(
                    409,
                    f"tool invocation {invocation.id} is not waiting for a result "
                    f"(it is {invocation.status}, its run is {invocation.run.state})",
                )
            invocation.status = status
            invocation.result = result
            self._emit("chat_messages", invocation.run.message.to_dict())
        self._hub.notify()
        if not invocation.answered.done():
            invocation.answered.set_result(None)

    def give_up(self, invocation: ToolInvocation) -> None:
        """Mark an invocation that got no result in time as failed (logged with the message)."""
        with self._hub.lock:
            if invocation.status == "awaiting_input":
                invocation.status = "failed"

    def finish_run(
        self, run: Run, state: RunState, *, output: str | None = None, error: str | None = None
    ) -> bool:
        """End `run`: log its message, then the idle chat; False if it had ended already."""
        with self._hub.lock:
            if run.ended:
                return False
            run.state = state
            run.output = output
            run.error = error
            message = run.message
            message.status = _MESSAGE_STATUS[state]
            for invocation in message.tool_invocations:
                if invocation.status == "awaiting_input":
                    invocation.status = "cancelled" if state == "canceled" else "failed"
                    invocation.answered.cancel()
            self._emit("chat_messages", message.to_dict())
            self._emit("chats", self._to_dict(messages=False))
            self._store.went_idle(self)
        self._hub.notify()
        return True

    def stop(self) -> None:
        """Stop the run in progress, if any: its message is cancelled, its coroutine too."""
        run = self.run
        if run is None or not self.finish_run(run, "canceled"):
            return
        if run.runner is not None and not run.runner.done():
            run.runner.cancel()

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        self.log.append(_frame(event, data))


def _frame(event: str, data: dict[str, Any]) -> Frame:
    # The same JSON in both framings: no SSE event name, the name travels in the payload.
    return Frame(encode_json({"event": event, "data": data}))


class ChatStore:
    """All chats by id, and tool invocations by id; idle chats expire like finished tasks."""

    def __init__(self, hub: ChangeHub, *, ttl: float, max_idle: int, max_events: int) -> None:
        self.hub = hub
        self.max_events = max_events
        self._ttl = ttl
        self._max_idle = max_idle
        self._chats: dict[str, Chat] = {}
        self._idle: OrderedDict[str, float] = OrderedDict()
        self._invocations: dict[str, tuple[Chat, ToolInvocation]] = {}
        self.on_idle: list[Callable[[], None]] = []

    def create(self, agent: str) -> Chat:
        """A new, empty chat (its first run makes it busy)."""
        with self.hub.lock:
            chat = Chat(self, agent)
            self._chats[chat.id] = chat
            self.expire()
            return chat

    def get(self, chat_id: str) -> Chat | None:
        """The chat with this id, unless unknown or expired."""
        with self.hub.lock:
            self.expire()
            return self._chats.get(chat_id)

    def invocation(self, invocation_id: str) -> tuple[Chat, ToolInvocation] | None:
        """The tool invocation with this id and its chat, unless unknown or expired."""
        with self.hub.lock:
            self.expire()
            return self._invocations.get(invocation_id)

    def __len__(self) -> int:
        with self.hub.lock:
            return len(self._chats)

    def index(self, invocation: ToolInvocation, chat: Chat) -> None:
        """Make an invocation findable by id (called by its chat)."""
        self._invocations[invocation.id] = (chat, invocation)

    def went_busy(self, chat: Chat) -> None:
        """A run started: the chat does not expire while it runs."""
        self._idle.pop(chat.id, None)

    def went_idle(self, chat: Chat) -> None:
        """A run ended: start the chat's retention clock; drop the oldest over the cap."""
        with self.hub.lock:
            self._idle[chat.id] = time.monotonic()
            self.expire()
        for callback in self.on_idle:
            callback()

    def expire(self) -> int:
        """Forget idle chats past their ttl or over the count cap; return how many."""
        dropped = 0
        with self.hub.lock:
            deadline = time.monotonic() - self._ttl
            while self._idle:
                chat_id, since = next(iter(self._idle.items()))
                if since > deadline and len(self._idle) <= self._max_idle:
                    break
                self._idle.popitem(last=False)
                chat = self._chats.pop(chat_id, None)
                for message in chat.messages if chat is not None else []:
                    for invocation in message.tool_invocations:
                        self._invocations.pop(invocation.id, None)
                dropped += 1
        if dropped:
            self.hub.notify()
        return dropped

    def next_expiry_in(self) -> float | None:
        """Seconds until the oldest idle chat expires, or None when none is idle."""
        with self.hub.lock:
            if not self._idle:
                return None
            oldest = next(iter(self._idle.values()))
            return max(0.0, oldest + self._ttl - time.monotonic())

    def runners(self) -> list[asyncio.Task[None]]:
        """The agent coroutines still going (for shutdown)."""
        with self.hub.lock:
            return [
                chat.run.runner
                for chat in self._chats.values()
                if chat.run is not None and chat.run.runner is not None
                if not chat.run.runner.done()
            ]
