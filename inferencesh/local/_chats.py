"""Chats: messages, agent runs, client tool invocations, the chat event log, and retention.

Every mutation happens on the server's loop while holding the hub's lock, appends its events to
the chat's log and notifies the hub. Each event is `{"event": name, "data": {...}}` with name
`chats` (the chat without its messages), `chat_messages` (one message) or `delta` (a piece of
the assistant's reasoning or answer). A chat's log never closes: a chat lives on across runs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

from ._budget import OVERHEAD, MemoryBudget, Overloaded, Retention
from ._eventlog import Frame, LogEvent, LogSettings, Snapshot, encode_json
from ._hub import ChangeHub
from ._journal import Record

__all__ = ["Chat", "ChatError", "ChatStore", "Message", "Run", "ToolInvocation"]

RunState = Literal["working", "completed", "failed", "canceled"]

# The assistant message's status once its run has ended in each state.
_MESSAGE_STATUS = {"completed": "ready", "failed": "failed", "canceled": "cancelled"}


def _message_cost(text: str) -> int:
    """The bytes a message text counts for in the memory budget (with its message overhead)."""
    return len(text) + 3 * OVERHEAD


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

    def record(self) -> dict[str, Any]:
        """What persistence keeps of this invocation."""
        return {
            "id": self.id, "call_id": self.call_id, "name": self.name,
            "arguments": self.arguments, "status": self.status, "result": self.result,
            "attachments": self.attachments,
        }  # fmt: skip

    @classmethod
    def reload(cls, data: dict[str, Any], run: Run) -> ToolInvocation:
        """An invocation persisted before a restart."""
        invocation = cls(str(data["name"]), dict(data.get("arguments") or {}), run)
        invocation.id, invocation.call_id = str(data["id"]), str(data["call_id"])
        invocation.status, invocation.result = str(data["status"]), data.get("result")
        invocation.attachments = list(data.get("attachments") or [])
        return invocation

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
        self,
        *,
        chat_id: str,
        run_id: str,
        order: int,
        role: str,
        status: str,
        text: str = "",
        message_id: str | None = None,
    ) -> None:
        self.id = message_id or _new_id("msg")
        self.chat_id = chat_id
        self.run_id = run_id
        self.order = order
        self.role = role
        self.status = status
        self.text = text
        self.reasoning = ""
        self.tool_invocations: list[ToolInvocation] = []

    def record(self) -> dict[str, Any]:
        """What persistence keeps of this message."""
        return {
            "id": self.id, "run_id": self.run_id, "order": self.order, "role": self.role,
            "status": self.status, "text": self.text, "reasoning": self.reasoning,
            "invocations": [invocation.record() for invocation in self.tool_invocations],
        }  # fmt: skip

    @classmethod
    def reload(cls, chat_id: str, data: dict[str, Any]) -> Message:
        """A message persisted before a restart (its invocations are added by the chat)."""
        message = cls(
            chat_id=chat_id, run_id=str(data["run_id"]), order=int(data["order"]),
            role=str(data["role"]), status=str(data["status"]), text=str(data["text"]),
            message_id=str(data["id"]),
        )  # fmt: skip
        message.reasoning = str(data.get("reasoning", ""))
        return message

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
        self.started_at = time.monotonic()

    def record(self) -> dict[str, Any]:
        """What persistence keeps of this run (its messages are kept by the chat)."""
        return {
            "id": self.id, "agent": self.agent, "state": self.state, "error": self.error,
            "output": self.output, "user": self.user.id, "message": self.message.id,
        }  # fmt: skip

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

    def __init__(self, store: ChatStore, agent: str, record: Record | None = None) -> None:
        self.id = record.id if record is not None else _new_id("chat")
        self.agent = agent
        self.messages: list[Message] = []
        self.runs: dict[str, Run] = {}
        self.run: Run | None = None
        self._store = store
        self._hub = store.hub
        self._held = 0  # bytes of message text charged to the budget (the log charges its own)
        if record is not None:
            self._reload(record)
        else:
            self.log = store.logs.new_log(self)

    def record(self) -> dict[str, Any]:
        """What persistence keeps of this chat as a whole: which run is current. Each run is
        kept apart (`run_record`), so a change writes the run it touched, not the whole chat."""
        return {"current": self.run.id if self.run is not None else None}

    @staticmethod
    def run_record(run: Run) -> dict[str, Any]:
        """What persistence keeps of one run: the run, its user message and its answer."""
        return {"run": run.record(), "user": run.user.record(), "message": run.message.record()}

    def _reload(self, record: Record) -> None:
        """Take the messages, runs and events persisted before a restart (what can fail,
        reading it back, comes before anything is indexed or charged to the budget)."""
        state = record.state
        by_id: dict[str, Message] = {}
        for data in state.get("messages") or []:
            message = Message.reload(self.id, data)
            by_id[message.id] = message
            self.messages.append(message)
        for data in state.get("runs") or []:
            user, message = by_id[data["user"]], by_id[data["message"]]
            run = Run(str(data["id"]), str(data["agent"]), user, message)
            run.state, run.error, run.output = data["state"], data.get("error"), data.get("output")
            self.runs[run.id] = run
        invocations = []
        for data in state.get("messages") or []:
            message = by_id[data["id"]]
            for item in data.get("invocations") or []:
                invocation = ToolInvocation.reload(item, self.runs[message.run_id])
                message.tool_invocations.append(invocation)
                invocations.append(invocation)
        self.run = self.runs.get(state.get("current") or "")
        for stored in record.events:  # the text pieces written after the checkpoint
            if stored.seq > record.state_seq:
                _replay(by_id, json.loads(stored.head + stored.tail))
        for invocation in invocations:
            self._store.index(invocation, self)
        self._hold(sum(_message_cost(m.text) + len(m.reasoning) for m in self.messages))
        start = record.events[0].seq - 1 if record.events else record.state_seq
        self.log = self._store.logs.new_log(self, start_seq=start)
        for stored in record.events:
            self.log.restore(LogEvent(stored.seq, stored.frame(""), stored.terminal))

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
            cost = _message_cost(text)
            self._store.admit(self, cost)
            self._hold(cost)
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
            self.run = self.runs[run_id] = run
            self._store.went_busy(self)
            self._emit("chats", self._to_dict(messages=False))
            self._emit("chat_messages", user.to_dict())
            self._emit("chat_messages", assistant.to_dict())
            self._store.changed(self, run)
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
            self._hold(len(piece))
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
            self._hold(len(encode_json(arguments)) + 4 * OVERHEAD)
            run.message.tool_invocations.append(invocation)
            self._store.index(invocation, self)
            self._emit("chat_messages", run.message.to_dict())
            self._store.changed(self, run)
        self._hub.notify()
        return invocation

    def answer(
        self,
        invocation: ToolInvocation,
        result: str,
        *,
        status: str = "completed",
        attachments: list[dict[str, Any]] | None = None,
    ) -> None:
        """Deliver a tool result (and files); 409 if the invocation no longer waits for one."""
        with self._hub.lock:
            if not invocation.waiting:
                raise ChatError(
                    409,
                    f"tool invocation {invocation.id} is not waiting for a result "
                    f"(it is {invocation.status}, its run is {invocation.run.state})",
                )
            invocation.status = status
            invocation.result = result
            invocation.attachments = copy.deepcopy(attachments or [])
            self._hold(len(result) + len(encode_json(invocation.attachments)))
            self._emit("chat_messages", invocation.run.message.to_dict())
            self._store.changed(self, invocation.run)
        self._hub.notify()
        if not invocation.answered.done():
            invocation.answered.set_result(None)

    def give_up(self, invocation: ToolInvocation) -> None:
        """Mark an invocation that got no result in time as failed (logged with the message)."""
        with self._hub.lock:
            if invocation.status == "awaiting_input":
                invocation.status = "failed"
                self._store.changed(self, invocation.run)

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
            self._store.changed(self, run)
        self._hub.notify()
        return True

    def stop(self) -> None:
        """Stop the run in progress, if any: its message is cancelled, its coroutine too."""
        run = self.run
        if run is None or not self.finish_run(run, "canceled"):
            return
        if run.runner is not None and not run.runner.done():
            run.runner.cancel()

    def reap(self, reason: str) -> None:
        """Fail the run in progress, if any, that has outlived its lifetime."""
        run = self.run
        if run is None or not self.finish_run(run, "failed", error=reason):
            return
        if run.runner is not None and not run.runner.done():
            run.runner.cancel()

    def _hold(self, size: int) -> None:
        self._held += size
        self._store.budget.charge(size)

    def release(self) -> None:
        """Give back every byte this chat holds (it is forgotten)."""
        self._store.budget.charge(-self._held)
        self._held = 0
        self.log.release()

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        self.log.append(_frame(event, data))


def _replay(messages: dict[str, Message], payload: Any) -> None:
    """Apply one logged chat event to the reloaded messages (the reload of a restart)."""
    event = payload.get("event") if isinstance(payload, dict) else None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        return
    if event == "delta":
        message = messages.get(str(data.get("resource_id")))
        delta = data.get("delta")
        if message is not None and isinstance(delta, dict):
            message.reasoning += str(delta.get("reasoning", ""))
            message.text += str(delta.get("response", ""))
    elif event == "chat_messages":
        message = messages.get(str(data.get("id")))
        if message is not None:
            message.status = str(data.get("status", message.status))


def _frame(event: str, data: dict[str, Any]) -> Frame:
    # The same JSON in both framings: no SSE event name, the name travels in the payload.
    return Frame(encode_json({"event": event, "data": data}))


class ChatStore:
    """All chats by id, and tool invocations by id; idle chats expire like finished tasks,
    busy ones are capped in number and in how long a run may last, and every byte they hold
    is charged to `budget`."""

    def __init__(
        self,
        hub: ChangeHub,
        budget: MemoryBudget,
        *,
        ttl: float,
        max_idle: int,
        max_events: int,
        max_event_bytes: int,
        max_live: int,
        lifetime: float,
    ) -> None:
        self.hub = hub
        self.budget = budget
        self.logs = LogSettings[Chat](
            max_events=max_events, max_bytes=max_event_bytes, budget=budget
        )
        self._max_live = max_live
        self._lifetime = lifetime
        self._chats: dict[str, Chat] = {}
        self._idle = Retention(ttl=ttl, max_count=max_idle, drop=self._forget)
        self._busy: dict[str, Chat] = {}  # in the order their runs started
        self._invocations: dict[str, tuple[Chat, ToolInvocation]] = {}
        self.on_idle: list[Callable[[], None]] = []
        self.on_change: Callable[[Chat, Run], None] | None = None
        self.on_forget: Callable[[str], None] | None = None
        budget.add_source(self._idle.oldest)

    def changed(self, chat: Chat, run: Run) -> None:
        """`run` of `chat` changed as a whole: started, asked for a tool, got its result,
        ended (persistence checkpoints that run, whatever the chat's size)."""
        if self.on_change is not None:
            self.on_change(chat, run)

    def reload(self, record: Record) -> Chat | None:
        """Keep a chat persisted before a restart; a run it had going fails ("worker lost").

        None when it had expired meanwhile.
        """
        ago = record.ended_ago()
        if ago is not None and ago >= self._idle.ttl:
            return None
        with self.hub.lock:
            chat = Chat(self, str(record.meta.get("agent", "")), record)
            self._chats[chat.id] = chat
            run = chat.run
            if run is not None and not run.ended:
                self._busy[chat.id] = chat
            else:
                self._idle.add(chat.id, time.monotonic() - (ago or 0.0))
        if run is not None and not run.ended:
            chat.finish_run(run, "failed", error="worker lost: the emulator stopped during the run")
        return chat

    def create(self, agent: str) -> Chat:
        """A new, empty chat (its first run makes it busy)."""
        with self.hub.lock:
            chat = Chat(self, agent)
            self._chats[chat.id] = chat
            self.expire()
            return chat

    def discard(self, chat: Chat) -> None:
        """Forget a chat that never ran (its first message was refused)."""
        with self.hub.lock:
            if not chat.busy and not chat.messages:
                self._forget(chat.id)

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

    def admit(self, chat: Chat, size: int) -> None:
        """Let `chat` start a run holding `size` more bytes, or raise `Overloaded`."""
        if chat.id not in self._busy and len(self._busy) >= self._max_live:
            raise Overloaded(
                f"too many agent runs: the emulator runs at most {self._max_live} at once"
            )
        since = self._idle.discard(chat.id)  # not droppable while its run is admitted
        try:
            self.budget.admit(size, "the new message")
        except Overloaded:
            if since is not None:  # idle as before, in its place in the retention order
                self._idle.add(chat.id, since)
            raise

    def went_busy(self, chat: Chat) -> None:
        """A run started: the chat does not expire while it runs."""
        self._idle.discard(chat.id)
        self._busy[chat.id] = chat

    def went_idle(self, chat: Chat) -> None:
        """A run ended: start the chat's retention clock; drop the oldest over the cap."""
        with self.hub.lock:
            self._busy.pop(chat.id, None)
            self._idle.add(chat.id, time.monotonic())
            self.expire()
        for callback in self.on_idle:
            callback()

    def _forget(self, chat_id: str) -> None:
        chat = self._chats.pop(chat_id, None)
        if chat is None:
            return
        for message in chat.messages:
            for invocation in message.tool_invocations:
                self._invocations.pop(invocation.id, None)
        chat.release()
        if self.on_forget is not None:
            self.on_forget(chat_id)

    def expire(self) -> int:
        """Forget idle chats past their ttl or over the count cap; return how many."""
        with self.hub.lock:
            dropped = self._idle.expire()
        if dropped:
            self.hub.notify()
        return dropped

    def reap(self) -> int:
        """Fail the runs that have lasted longer than their lifetime; return how many."""
        with self.hub.lock:
            deadline = time.monotonic() - self._lifetime
            due = [
                chat
                for chat in self._busy.values()
                if chat.run is not None and chat.run.started_at <= deadline
            ]
        reason = f"the run lasted longer than the emulator's task lifetime ({self._lifetime:g} s)"
        for chat in due:
            chat.reap(reason)
        return len(due)

    def next_due_in(self) -> float | None:
        """Seconds until the oldest idle chat expires or the oldest run is reaped."""
        with self.hub.lock:
            dues = [self._idle.next_due_in()]
            for chat in self._busy.values():  # the first is the oldest run
                if chat.run is not None:
                    started = chat.run.started_at
                    dues.append(max(0.0, started + self._lifetime - time.monotonic()))
                break
            return min((due for due in dues if due is not None), default=None)

    def runners(self) -> list[asyncio.Task[None]]:
        """The agent coroutines still going (for shutdown)."""
        with self.hub.lock:
            return [
                chat.run.runner
                for chat in self._chats.values()
                if chat.run is not None and chat.run.runner is not None
                if not chat.run.runner.done()
            ]
