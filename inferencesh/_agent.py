"""Agent chats: stream an agent's answer as it is written and serve the tools it asks for.

A message is sent with `POST /agents/run`; the chat's stream then carries `chats`,
`chat_messages` and `delta` events. `ChatTracker` turns them into what a caller wants to see:
`MessageEvent`s (text and thinking pieces), `ToolCall`s (client tools the agent waits on,
each once), and finally the finished assistant `ChatMessage`. It reconnects through the same
resumable machinery as task streams; a snapshot after a reconnect yields only the text that
had not been delivered yet.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import attrs

from ._events import MappingReads
from ._exceptions import AgentError, ProtocolError, ToolCallError, UsageError
from ._resumable import Frames, ItemStream, resumable_stream
from ._streaming import StreamingOptions

if TYPE_CHECKING:
    from ._async_client import AsyncInference

__all__ = [
    "AgentEvent",
    "AsyncAgent",
    "ChatMessage",
    "ChatTracker",
    "MessageEvent",
    "ToolCall",
    "await_callback",
    "dispatch",
    "require_final",
]

logger = logging.getLogger("inferencesh.agent")

# Run states during which the agent is still at work (protocol.md 5.2).
_RUNNING_STATES = frozenset({"submitted", "working", "input_required", "auth_required"})


@attrs.frozen
class MessageEvent(MappingReads):
    """A piece of the assistant's message as it is written.

    `type` is "text" for answer text and "thinking" for reasoning; `content` is the new piece.
    """

    type: Literal["text", "thinking"]
    content: str
    message_id: str
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class ToolCall(MappingReads):
    """A client tool the agent wants run: answer with `agent.submit_tool_result(call.id, ...)`.

    `id` is the tool invocation id, `name` the tool's name and `args` its parsed arguments.
    """

    id: str
    name: str
    args: Any
    message_id: str = ""
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class ChatMessage(MappingReads):
    """A finished chat message: its full text, its reasoning and the tool calls it made."""

    id: str
    chat_id: str
    role: str
    status: str
    text: str
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


AgentEvent = MessageEvent | ToolCall | ChatMessage
MessageCallback = Callable[[MessageEvent], Any]
ToolCallCallback = Callable[[ToolCall], Any]


@attrs.define
class _MessageState:
    # Named after the delta keys: what was delivered so far of each kind of text.
    response: str = ""
    reasoning: str = ""
    snapshot: Mapping[str, Any] = attrs.field(factory=dict)
    order: int = 0


class ChatTracker:
    """What the caller of one `send_message` has been given, across reconnects."""

    def __init__(self, chat_id: str, *, user_order: int | None, assistant_id: str) -> None:
        self.chat_id = chat_id
        self.path = f"/chats/{quote(chat_id, safe='')}/stream"
        self.label = f"chat {chat_id}"
        self.last_event_id = ""
        self.server_retry: float | None = None
        self._user_order = user_order
        self._assistant_id = assistant_id
        self._messages: dict[str, _MessageState] = {}
        self._dispatched: set[str] = set()
        self.finished = False
        """Whether the run has ended (completed, failed or stopped)."""
        self.delivered = 0

    def absorb(self, payload: Any) -> Sequence[AgentEvent]:
        """Fold one chat-stream payload in; return the events that are new to the caller."""
        if not isinstance(payload, Mapping):
            raise ProtocolError(f"chat payload must be a JSON object, got {type(payload).__name__}")
        if payload.get("type") == "heartbeat":
            return []
        event = payload.get("event", "message")
        data = payload.get("data", payload)
        if not isinstance(data, Mapping):
            raise ProtocolError(f"chat event {event!r} has data that is not an object")
        if event == "delta":
            return self._delta(data)
        if event == "chat_messages":
            return self._message(data)
        if event == "chats":
            return self._chat(data)
        return []

    def _in_run(self, message: Mapping[str, Any]) -> bool:
        if message.get("id") == self._assistant_id or message.get("id") in self._messages:
            return True
        order = message.get("order")
        return (
            message.get("role") == "assistant"
            and isinstance(order, int)
            and self._user_order is not None
            and order > self._user_order
        )

    def _state(self, message_id: str) -> _MessageState:
        return self._messages.setdefault(message_id, _MessageState())

    def _delta(self, data: Mapping[str, Any]) -> list[AgentEvent]:
        message_id = data.get("resource_id")
        delta = data.get("delta")
        if not isinstance(message_id, str) or not isinstance(delta, Mapping):
            return []
        if message_id != self._assistant_id and message_id not in self._messages:
            return []
        state = self._state(message_id)
        events: list[AgentEvent] = []
        for kind, key in (("thinking", "reasoning"), ("text", "response")):
            piece = delta.get(key)
            if isinstance(piece, str) and piece:
                setattr(state, key, getattr(state, key) + piece)
                events.append(MessageEvent(kind, piece, message_id, data))  # type: ignore[arg-type]
        return events

    def _message(self, message: Mapping[str, Any]) -> list[AgentEvent]:
        message_id = message.get("id")
        if not isinstance(message_id, str) or not self._in_run(message):
            return []
        state = self._state(message_id)
        state.snapshot = message
        if isinstance(message.get("order"), int):
            state.order = message["order"]
        events: list[AgentEvent] = []
        reasoning, text = _content_text(message)
        # A snapshot repeats what deltas already delivered; hand out only what is beyond it.
        for kind, key, full in (("thinking", "reasoning", reasoning), ("text", "response", text)):
            delivered = getattr(state, key)
            if len(full) > len(delivered) and full.startswith(delivered):
                setattr(state, key, full)
                piece = full[len(delivered) :]
                events.append(MessageEvent(kind, piece, message_id, message))  # type: ignore[arg-type]
        for call in _tool_calls(message, message_id):
            pending = (
                call.raw.get("type") == "client" and call.raw.get("status") == "awaiting_input"
            )
            if pending and call.id not in self._dispatched:
                self._dispatched.add(call.id)
                events.append(call)
        return events

    def _chat(self, chat: Mapping[str, Any]) -> list[AgentEvent]:
        run = chat.get("active_run")
        state = run.get("state") if isinstance(run, Mapping) else None
        if state in _RUNNING_STATES:
            return []
        self.finished = True
        if state == "failed":
            error = run.get("error") if isinstance(run, Mapping) else None
            raise AgentError(f"the agent run in chat {self.chat_id} failed: {error or 'no reason'}")
        return [self._final(chat)]

    def _final(self, chat: Mapping[str, Any]) -> ChatMessage:
        if not self._messages:
            return ChatMessage(
                id=self._assistant_id, chat_id=self.chat_id, role="assistant",
                status=str(chat.get("status", "")), text="", raw=chat,
            )  # fmt: skip
        message_id, state = max(self._messages.items(), key=lambda item: item[1].order)
        snapshot = state.snapshot
        return ChatMessage(
            id=message_id,
            chat_id=self.chat_id,
            role=str(snapshot.get("role", "assistant")),
            status=str(snapshot.get("status", "ready")),
            text=state.response,
            reasoning=state.reasoning,
            tool_calls=tuple(_tool_calls(snapshot, message_id)),
            raw=snapshot,
        )


def _content_text(message: Mapping[str, Any]) -> tuple[str, str]:
    reasoning, text = [], []
    content = message.get("content")
    for part in content if isinstance(content, list) else []:
        if isinstance(part, Mapping) and isinstance(part.get("text"), str):
            if part.get("type") == "reasoning":
                reasoning.append(part["text"])
            elif part.get("type") == "text":
                text.append(part["text"])
    return "".join(reasoning), "".join(text)


def _tool_calls(message: Mapping[str, Any], message_id: str) -> list[ToolCall]:
    calls = []
    invocations = message.get("tool_invocations")
    for inv in invocations if isinstance(invocations, list) else []:
        if not isinstance(inv, Mapping) or not isinstance(inv.get("id"), str):
            continue
        found = inv.get("function")
        function: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        args = function.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                logger.debug("tool call %s has arguments that are not JSON", inv["id"])
        calls.append(ToolCall(inv["id"], str(function.get("name", "")), args, message_id, inv))
    return calls


def dispatch(
    event: MessageEvent | ToolCall,
    on_message: MessageCallback | None,
    on_tool_call: ToolCallCallback | None,
) -> Any:
    """Hand an event to its callback and return what the callback returned.

    Raises `ToolCallError` for a tool call that has no handler or whose handler raises; the
    caller then stops the run, so the chat is not left waiting for a result.
    """
    if isinstance(event, MessageEvent):
        return on_message(event) if on_message is not None else None
    if on_tool_call is None:
        raise ToolCallError(
            f"the agent asked the client to run tool {event.name!r} (call {event.id}), "
            "but send_message was given no on_tool_call handler"
        )
    try:
        return on_tool_call(event)
    except Exception as exc:
        raise _handler_error(event, exc) from exc


async def await_callback(event: MessageEvent | ToolCall, result: Any) -> None:
    """Await an async callback's result, with the same error translation as `dispatch`."""
    try:
        await result
    except Exception as exc:
        if isinstance(event, ToolCall):
            raise _handler_error(event, exc) from exc
        raise


def _handler_error(call: ToolCall, exc: Exception) -> ToolCallError:
    return ToolCallError(f"the handler for tool {call.name!r} (call {call.id}) raised: {exc!r}")


def encode_tool_result(result: Any) -> dict[str, Any]:
    """The body of `POST /tools/{id}`: strings as they are, anything else as JSON text."""
    if isinstance(result, str):
        return {"result": result}
    try:
        return {"result": json.dumps(result)}
    except (TypeError, ValueError) as exc:
        raise UsageError(f"a tool result must be a string or JSON-serialisable: {exc}") from exc


class AsyncAgent:
    """A conversation with an agent: send messages, watch the answers, serve client tools."""

    def __init__(
        self,
        client: AsyncInference,
        ref: str,
        *,
        chat_id: str | None = None,
        options: StreamingOptions | None = None,
    ) -> None:
        if not isinstance(ref, str) or not ref:
            raise UsageError(f"an agent reference must be a non-empty string, got {ref!r}")
        self._client = client
        self.ref = ref
        self._chat_id = chat_id
        self._options = options

    def __repr__(self) -> str:
        return f"<AsyncAgent {self.ref!r} chat_id={self._chat_id!r}>"

    @property
    def chat_id(self) -> str | None:
        """The chat this agent talks in; set by the first message."""
        return self._chat_id

    def stream(self, text: str) -> ItemStream[AgentEvent]:
        """Send `text` and yield what happens: text and thinking pieces, tool calls, and last
        the finished assistant `ChatMessage`. Raises `AgentError` if the run fails."""
        return ItemStream(self._frames(text))

    async def _frames(self, text: str) -> AsyncGenerator[Frames[AgentEvent], None]:
        if not isinstance(text, str):
            raise UsageError(f"message text must be a string, got {type(text).__name__}")
        reply = await self._client._request(
            "POST",
            "/agents/run",
            {"chat_id": self._chat_id, "input": {"text": text}, "agent": self.ref},
        )
        user, assistant = _reply_messages(reply)
        chat_id = assistant.get("chat_id") or user.get("chat_id")
        if not isinstance(chat_id, str) or not chat_id:
            raise ProtocolError("the answer to POST /agents/run names no chat_id")
        if self._chat_id is None:
            self._chat_id = chat_id
        tracker = ChatTracker(
            chat_id,
            user_order=user.get("order") if isinstance(user.get("order"), int) else None,
            assistant_id=str(assistant.get("id", "")),
        )
        options = self._options or self._client.streaming_options
        stream = resumable_stream(self._client._transport, tracker, options)
        async with aclosing(stream) as frames:
            async for batch in frames:
                yield batch

    async def send_message(
        self,
        text: str,
        *,
        on_message: MessageCallback | None = None,
        on_tool_call: ToolCallCallback | None = None,
    ) -> ChatMessage:
        """Send `text`, run the callbacks as the answer streams, return the final message.

        Callbacks may be plain functions or coroutine functions. A tool call with no handler,
        or whose handler raises, stops the run and raises `ToolCallError`.
        """
        final: ChatMessage | None = None
        events = self.stream(text)
        try:
            async for event in events:
                if isinstance(event, ChatMessage):
                    final = event
                    continue
                try:
                    result = dispatch(event, on_message, on_tool_call)
                    if inspect.isawaitable(result):
                        await await_callback(event, result)
                except ToolCallError:
                    await self._stop_after_failure()
                    raise
        finally:
            await events.aclose()
        return require_final(final, self._chat_id)

    async def _stop_after_failure(self) -> None:
        try:
            await self.stop()
        except Exception as exc:  # the original failure matters more; keep it, log this
            logger.warning("could not stop chat %s after a tool failure: %r", self._chat_id, exc)

    async def submit_tool_result(self, call_id: str, result: Any) -> None:
        """Answer a client tool call; a non-string result is sent as JSON."""
        if not isinstance(call_id, str) or not call_id:
            raise UsageError(f"call_id must be a non-empty string, got {call_id!r}")
        body = encode_tool_result(result)
        await self._client._request("POST", f"/tools/{quote(call_id, safe='')}", body)

    async def stop(self) -> None:
        """Stop the agent's current run in this chat."""
        if self._chat_id is None:
            raise UsageError("this agent has no chat yet: send a message first")
        await self._client._request("POST", f"/chats/{quote(self._chat_id, safe='')}/stop")


def require_final(final: ChatMessage | None, chat_id: str | None) -> ChatMessage:
    """The run's final message; a stream that ended without one broke the protocol."""
    if final is None:
        raise ProtocolError(f"the stream of chat {chat_id} ended without a result")
    return final


def _reply_messages(reply: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    if not isinstance(reply, Mapping):
        raise ProtocolError(f"POST /agents/run answered {reply!r:.80} instead of an object")
    user, assistant = reply.get("user_message"), reply.get("assistant_message")
    if not isinstance(assistant, Mapping):
        raise ProtocolError("the answer to POST /agents/run has no assistant_message")
    return (user if isinstance(user, Mapping) else {}), assistant
