"""Agent chats: stream an agent's answer as it is written and serve the tools it asks for.

A message is sent with `POST /agents/run`; the chat's stream then carries `chats`,
`chat_messages` and `delta` events. `ChatCodec` structures them for the same `StreamReader`
that reads task streams, and `ChatView` turns them into what a caller wants to see:
`MessageEvent`s (text and thinking pieces), `ToolCall`s (client tools the agent waits on,
each once), and finally the finished assistant `ChatMessage`. A snapshot after a reconnect
yields only the text that had not been delivered yet. `AsyncAgent.send_message` is the one
loop that hands events to callbacks; the blocking `Agent` runs it too.

What the caller is given is append-only: a piece of text, once delivered, is never taken back
or delivered again, and the final message's `text` (and `reasoning`) is exactly the
concatenation of the pieces delivered. The rules that keep it so are `ChatView`'s.
"""

from __future__ import annotations

import inspect
import json
import logging
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import attrs

from ._defaults import USE_CLIENT_DEFAULT, Timeout, check_callback, path_id, path_segment, shown_arg
from ._events import MappingReads
from ._exceptions import (
    AgentError,
    APIStatusError,
    ConnectError,
    ProtocolError,
    ToolCallError,
    UsageError,
)
from ._files import file_ref, is_uploadable, upload, upload_all
from ._reader import Codec, StreamReader
from ._stream import ItemStream
from ._streaming import StreamingOptions, timed
from ._transport import Transport
from ._wire import loads, preview, usable_id

__all__ = [
    "AgentEvent",
    "AsyncAgent",
    "ChatCodec",
    "ChatMessage",
    "ChatView",
    "MessageEvent",
    "ToolCall",
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

    if TYPE_CHECKING:  # the types of `event["content"]`, `event.get("type")`, ...

        @overload
        def __getitem__(self, key: Literal["type"]) -> Literal["text", "thinking"]: ...
        @overload
        def __getitem__(self, key: Literal["content", "message_id"]) -> str: ...
        @overload
        def __getitem__(self, key: str) -> Any: ...
        def __getitem__(self, key: str) -> Any: ...
        @overload
        def get(
            self, key: Literal["type"], default: object = None
        ) -> Literal["text", "thinking"]: ...
        @overload
        def get(self, key: Literal["content", "message_id"], default: object = None) -> str: ...
        @overload
        def get(self, key: str, default: Any = None) -> Any: ...
        def get(self, key: str, default: Any = None) -> Any:
            """Return the value for `key`, or `default` when there is no such key."""


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

    if TYPE_CHECKING:  # the types of `call["name"]`, `call.get("id")`, ...

        @overload
        def __getitem__(self, key: Literal["id", "name", "message_id"]) -> str: ...
        @overload
        def __getitem__(self, key: str) -> Any: ...
        def __getitem__(self, key: str) -> Any: ...
        @overload
        def get(self, key: Literal["id", "name", "message_id"], default: object = None) -> str: ...
        @overload
        def get(self, key: str, default: Any = None) -> Any: ...
        def get(self, key: str, default: Any = None) -> Any:
            """Return the value for `key`, or `default` when there is no such key."""


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

    if TYPE_CHECKING:  # the types of `message["text"]`, `message.get("tool_calls")`, ...

        @overload
        def __getitem__(self, key: _MessageText) -> str: ...
        @overload
        def __getitem__(self, key: Literal["tool_calls"]) -> tuple[ToolCall, ...]: ...
        @overload
        def __getitem__(self, key: str) -> Any: ...
        def __getitem__(self, key: str) -> Any: ...
        @overload
        def get(self, key: _MessageText, default: object = None) -> str: ...
        @overload
        def get(
            self, key: Literal["tool_calls"], default: object = None
        ) -> tuple[ToolCall, ...]: ...
        @overload
        def get(self, key: str, default: Any = None) -> Any: ...
        def get(self, key: str, default: Any = None) -> Any:
            """Return the value for `key`, or `default` when there is no such key."""


# The keys of a `ChatMessage` whose values are strings.
_MessageText = Literal["id", "chat_id", "role", "status", "text", "reasoning"]


AgentEvent = MessageEvent | ToolCall | ChatMessage
"""What an agent run streams: a piece of the message, a client tool call, or a finished message."""

MessageCallback = Callable[[MessageEvent], Any]
ToolCallCallback = Callable[[ToolCall], Any]


@attrs.define
class _MessageState:
    # Named after the delta keys: what was delivered so far of each kind of text.
    response: str = ""
    reasoning: str = ""
    snapshot: Mapping[str, Any] = attrs.field(factory=dict)
    order: int = 0
    # The deltas applied by their `seq`, and the highest seq, while the message's seqs read
    # as positions (`ChatView._replayed`); None once they do not.
    seqs: dict[int, Mapping[str, Any]] | None = attrs.field(factory=dict)
    top_seq: int = -1


_CHAT, _MESSAGE, _DELTA = 0, 1, 2


@attrs.define(slots=True, eq=False)
class ChatEvent:
    """One structured chat-stream payload. `chats` and `chat_messages` events carry a whole
    chat or message (absolute); a `delta` is a piece to add to what came before."""

    kind: int
    absolute: bool
    final: bool
    data: Mapping[str, Any]


class ChatCodec:
    """What a `StreamReader` needs to follow one run of a chat: the one place its payloads are
    structured, and what the answer to `POST /agents/run` said about the run."""

    def __init__(self, chat_id: str, *, user_order: int | None, assistant_id: str) -> None:
        self.chat_id = chat_id
        self.path = f"/chats/{path_segment(chat_id)}/stream"
        self.label = f"chat {chat_id}"
        self.user_order = user_order
        self.assistant_id = assistant_id

    def structure(self, payload: Any) -> ChatEvent | None:
        """The chat event in a decoded payload; None for heartbeats and other events."""
        if not isinstance(payload, Mapping):
            raise ProtocolError(f"chat payload must be a JSON object, got {type(payload).__name__}")
        if payload.get("type") == "heartbeat":
            return None
        event = payload.get("event", "message")
        data = payload.get("data", payload)
        if not isinstance(data, Mapping):
            raise ProtocolError(f"chat event {preview(event)} has data that is not an object")
        if event == "delta":
            return ChatEvent(_DELTA, False, False, data)
        if event == "chat_messages":
            return ChatEvent(_MESSAGE, True, False, data)
        if event == "chats":
            run = data.get("active_run")
            if run is not None and not isinstance(run, Mapping):
                raise ProtocolError(
                    f"a chats event of {self.label} has an active_run of {preview(run)}"
                )
            state = None if run is None else run.get("state")
            if state is not None and not isinstance(state, str):
                raise ProtocolError(
                    f"a chats event of {self.label} has a run state of {preview(state)}"
                )
            return ChatEvent(_CHAT, True, state not in _RUNNING_STATES, data)
        return None


class ChatView:
    """What the caller of one `send_message` has been given, across reconnects.

    The reader drops events it has already handed on when the server numbers its events; a
    stream without ids (NDJSON, the hosted API) comes as it is sent, and these rules keep the
    caller's view append-only whatever the server replays:

    * A delta's `seq` is its position among the message's deltas: the very delta already
      applied under its seq is a replay and dropped. Another delta under a seq already applied,
      or under a new seq below the highest (a server that numbers each connection's deltas
      afresh), means the server's seqs are not positions: from then on that message's deltas
      are taken as they come, as deltas without a seq are.
    * A `chat_messages` snapshot hands out only the text beyond what was delivered, when its
      text extends it. A snapshot that holds less (it lags the deltas) adds nothing. A snapshot
      that contradicts what was delivered (the server corrected its text) cannot take back
      what the caller has: it adds nothing, later pieces are added to what was delivered, and
      the final message's `text` stays the streamed text (the server's is in its `raw`).
      Without ids, a snapshot is taken as of the live position: the deltas after it are new.
    * A client tool call awaiting input is dispatched once per invocation id. The same call
      seen again (after a reconnect, in another snapshot or message, or when the server still
      shows it awaiting input) is not dispatched again. A different call (another name or
      arguments) under an id already dispatched cannot be answered (`/tools/{id}` takes one
      result) and is a `ProtocolError`, as is a call awaiting input without a usable id.
    * A final `chats` event ends the run where it arrives: a delta sent after it is not read.
    """

    def __init__(self, codec: ChatCodec) -> None:
        self.chat_id = codec.chat_id
        self._user_order = codec.user_order
        self._assistant_id = codec.assistant_id
        self._messages: dict[str, _MessageState] = {}
        self._dispatched: dict[str, ToolCall] = {}

    def apply(self, event: ChatEvent) -> list[AgentEvent]:
        """The items `event` adds to what the caller was given."""
        if event.kind == _DELTA:
            return self._delta(event.data)
        if event.kind == _MESSAGE:
            return self._message(event.data)
        if event.final:
            return [self._final(event.data)]
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
        if self._replayed(state, data.get("seq"), delta):
            return []
        events: list[AgentEvent] = []
        for kind, key in (("thinking", "reasoning"), ("text", "response")):
            piece = delta.get(key)
            if isinstance(piece, str) and piece:
                setattr(state, key, getattr(state, key) + piece)
                events.append(MessageEvent(kind, piece, message_id, data))  # type: ignore[arg-type]
        return events

    @staticmethod
    def _replayed(state: _MessageState, seq: Any, delta: Mapping[str, Any]) -> bool:
        """Whether a delta under `seq` was applied already (the class's first rule)."""
        seqs = state.seqs
        if type(seq) is not int or seqs is None:
            return False
        if seqs.get(seq) == delta:
            return True
        if seq in seqs or seq < state.top_seq:
            state.seqs = None  # another delta under a seq passed: seqs are not positions
            return False
        seqs[seq] = delta
        state.top_seq = seq
        return False

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
            if not _awaits_client(call.raw):
                continue
            seen = self._dispatched.get(call.id)
            if seen is None:
                self._dispatched[call.id] = call
                events.append(call)
            elif (seen.name, seen.args) != (call.name, call.args):
                raise ProtocolError(
                    f"chat {self.chat_id} asked for two different tool calls under one id, "
                    f"{preview(call.id)}: {preview(seen.name)} and then {preview(call.name)} "
                    f"(arguments {preview(seen.args)}, then {preview(call.args)})"
                )
        return events

    def _final(self, chat: Mapping[str, Any]) -> ChatMessage:
        run = chat.get("active_run")
        if isinstance(run, Mapping) and run.get("state") == "failed":
            error = run.get("error")
            reason = error if isinstance(error, str) and error else reprlib.repr(error)
            raise AgentError(f"the agent run in chat {self.chat_id} failed: {reason}")
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


def _awaits_client(invocation: Mapping[str, Any]) -> bool:
    """Whether a tool invocation is a client tool call waiting for this client's result."""
    return invocation.get("type") == "client" and invocation.get("status") == "awaiting_input"


def _tool_calls(message: Mapping[str, Any], message_id: str) -> list[ToolCall]:
    calls = []
    invocations = message.get("tool_invocations")
    for inv in invocations if isinstance(invocations, list) else []:
        if not isinstance(inv, Mapping):
            continue
        if _awaits_client(inv) and not usable_id(inv.get("id")):
            # It could never be answered: the run would wait for its result forever.
            raise ProtocolError(
                f"message {preview(message_id)} awaits a client tool call with no usable id: "
                f"{preview(inv.get('id'))}"
            )
        if not isinstance(inv.get("id"), str):
            continue
        found = inv.get("function")
        function: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        args = function.get("arguments")
        if isinstance(args, str):
            try:
                args = loads(args)
            except ProtocolError:
                logger.debug("tool call %s has arguments that are not JSON", inv["id"])
        calls.append(ToolCall(inv["id"], str(function.get("name", "")), args, message_id, inv))
    return calls


async def dispatch(
    event: MessageEvent | ToolCall,
    on_message: MessageCallback | None,
    on_tool_call: ToolCallCallback | None,
) -> None:
    """Hand an event to its callback, awaiting what the callback returns if it is awaitable.

    Raises `ToolCallError` for a tool call that has no handler or whose handler raises; the
    caller then stops the run, so the chat is not left waiting for a result.
    """
    if isinstance(event, MessageEvent):
        if on_message is not None:
            result = on_message(event)
            if inspect.isawaitable(result):
                await result
        return
    if on_tool_call is None:
        raise ToolCallError(
            f"the agent asked the client to run tool {event.name!r} (call {event.id}), "
            "but send_message was given no on_tool_call handler"
        )
    try:
        result = on_tool_call(event)
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        raise ToolCallError(
            f"the handler for tool {event.name!r} (call {event.id}) raised: {exc!r}"
        ) from exc


def encode_tool_result(result: Any) -> dict[str, Any]:
    """The body of `POST /tools/{id}`: strings as they are, anything else as JSON text."""
    if isinstance(result, str):
        return {"result": result}
    try:
        return {"result": json.dumps(result, allow_nan=False)}  # NaN is not JSON
    except (TypeError, ValueError, RecursionError) as exc:
        raise UsageError(f"a tool result must be a string or JSON-serialisable: {exc}") from None


def _chat_view(codec: Codec[Any]) -> ChatView:
    assert isinstance(codec, ChatCodec)
    return ChatView(codec)


class AsyncAgent:
    """A conversation with an agent: send messages, watch the answers, serve client tools."""

    def __init__(
        self,
        transport: Transport,
        ref: str,
        *,
        chat_id: str | None = None,
        options: StreamingOptions,
    ) -> None:
        if not isinstance(ref, str) or not ref:
            raise UsageError(f"an agent reference must be a non-empty string, got {shown_arg(ref)}")
        if chat_id is not None:
            path_id(chat_id, "chat_id")  # it goes into URL paths: a task id's rule is its rule
        self._transport = transport
        self.ref = ref
        self._chat_id = chat_id
        self._options = options

    def __repr__(self) -> str:
        return f"<AsyncAgent {self.ref!r} chat_id={self._chat_id!r}>"

    @property
    def chat_id(self) -> str | None:
        """The chat this agent talks in; set by the first message."""
        return self._chat_id

    def stream(
        self, text: str, *, files: Sequence[Any] = (), timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> ItemStream[AgentEvent]:
        """Send `text` and yield what happens: text and thinking pieces, tool calls, and last
        the finished assistant `ChatMessage`. Raises `AgentError` if the run fails.

        `files` are attached to the message: `File`s as they are, and paths, bytes, binary
        file objects and `data:` URIs uploaded first (as in a task's input). `timeout` bounds
        the whole exchange, sending included (it replaces the options' `total_timeout`).
        """
        return self._stream(text, files, timeout, _Posting())

    def _stream(
        self, text: str, files: Sequence[Any], timeout: Timeout, posting: _Posting
    ) -> ItemStream[AgentEvent]:
        if not isinstance(text, str):
            raise UsageError(f"message text must be a string, got {type(text).__name__}")
        attached = _attachable(files)
        options = timed(self._options, timeout)

        async def start() -> tuple[ChatCodec, Sequence[ChatEvent]]:
            return await self._send(text, await self._attachments(attached), posting), ()

        reader: StreamReader[ChatEvent] = StreamReader(self._transport, options, start)
        return ItemStream(reader, _chat_view)

    async def _attachments(
        self, files: Sequence[Any], timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> list[dict[str, Any]]:
        uploaded = await upload_all(
            files,
            lambda value: upload(
                self._transport, value, filename=None, content_type=None, progress=None,
                options=self._options, timeout=timeout,
            ),
        )  # fmt: skip
        return [file_ref(file) for file in uploaded]

    async def _send(
        self, text: str, attachments: list[dict[str, Any]], posting: _Posting
    ) -> ChatCodec:
        message: dict[str, Any] = {"text": text}
        if attachments:
            message["attachments"] = attachments
        posting.chat_id = self._chat_id  # from here on, the message may reach the server
        reply = await self._transport.request(
            "POST",
            "/agents/run",
            json_body={"chat_id": self._chat_id, "input": message, "agent": self.ref},
        )
        user, assistant = _reply_messages(reply)
        chat_id = assistant.get("chat_id") or user.get("chat_id")
        if not usable_id(chat_id):
            raise ProtocolError("the answer to POST /agents/run names no usable chat_id")
        if self._chat_id is None:
            self._chat_id = chat_id
        order = user.get("order")
        return ChatCodec(
            chat_id,
            user_order=order if type(order) is int else None,
            assistant_id=str(assistant.get("id", "")),
        )

    async def send_message(
        self,
        text: str,
        *,
        files: Sequence[Any] = (),
        on_message: MessageCallback | None = None,
        on_tool_call: ToolCallCallback | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> ChatMessage:
        """Send `text`, run the callbacks as the answer streams, return the final message.

        Callbacks may be plain functions or coroutine functions. A tool call with no handler,
        or whose handler raises, raises `ToolCallError`. Whatever ends this call early (an
        error, a callback that raises, cancellation, `timeout`), the run is stopped first, so
        the chat is never left waiting for this client. `timeout` is as `stream`'s.

        That holds while the message is being sent to an existing chat too: unless the server
        certainly did not get it (no connection, a 4xx answer), the chat's run is stopped, as
        the message may have started one. (A new chat has no id until the answer names it:
        nothing can be stopped there.) The error raised is still the one that ended the call,
        with a note saying that the run was stopped, or why it could not be.
        """
        check_callback(on_message, "on_message")
        check_callback(on_tool_call, "on_tool_call")
        final: ChatMessage | None = None
        posting = _Posting()
        events = self._stream(text, files, timeout, posting)
        try:
            async for event in events:
                if isinstance(event, ChatMessage):
                    final = event
                else:
                    await dispatch(event, on_message, on_tool_call)
        except BaseException as exc:
            await events.aclose()
            # Stop when the message was accepted, or when it went to an existing chat and
            # may have been (its answer never came, or said nothing about a refusal).
            if events.reader.codec is not None or (
                posting.chat_id is not None and not _never_arrived(exc)
            ):
                await self._stop_after_failure(exc)
            raise
        return require_final(final, self._chat_id)

    async def _stop_after_failure(self, failure: BaseException) -> None:
        """Stop the run after `failure` ended `send_message`. `failure` stays the error the
        caller gets; what became of the run is noted on it, one line (the server's text
        escaped and cut short): stopped, or why it could not be (also logged)."""
        chat = preview(self._chat_id)
        try:
            await self.stop(timeout=self._transport.cleanup_timeout)
        except Exception as exc:
            note = (
                f"could not stop the agent run in chat {chat}: "
                f"{type(exc).__name__}({preview(str(exc), 200)})"
            )
            failure.add_note(note)
            logger.warning("after %s, %s", type(failure).__name__, note)
        else:
            failure.add_note(f"stopped the agent run in chat {chat}")

    async def submit_tool_result(
        self,
        call_id: str,
        result: Any,
        *,
        attachments: Sequence[Any] = (),
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> None:
        """Answer a client tool call; a non-string result is sent as JSON. `attachments`
        (at most 20) go with it, uploaded first as `send_message`'s `files` are. `timeout`
        replaces the client's for each request this makes."""
        quoted = path_id(call_id, "call_id")
        body = encode_tool_result(result)
        attached = _attachable(attachments)
        if attached:
            body["attachments"] = await self._attachments(attached, timeout)
        path = f"/tools/{quoted}"
        await self._transport.request("POST", path, json_body=body, timeout=timeout)

    async def stop(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> None:
        """Stop the agent's current run in this chat."""
        if self._chat_id is None:
            raise UsageError("this agent has no chat yet: send a message first")
        path = f"/chats/{path_segment(self._chat_id)}/stop"
        await self._transport.request("POST", path, idempotent=True, timeout=timeout)


@attrs.define
class _Posting:
    """What one message's `POST /agents/run` may have done before its answer came: the
    existing chat it was sent to (None until it is sent, and for a new chat)."""

    chat_id: str | None = None


def _never_arrived(error: BaseException) -> bool:
    """Whether a `POST /agents/run` that failed with `error` certainly started no run: it was
    never sent (a closed client, a body that is not JSON), could not connect, or the server
    refused it (4xx: a busy chat, a bad request). After anything else (cancelled or timed out
    while waiting, a dropped connection, a 5xx a gateway may send for a message the API took,
    an answer that cannot be read) the message may have started a run."""
    if isinstance(error, ConnectError | UsageError):
        return True
    return isinstance(error, APIStatusError) and error.status < 500


# The most files one message or tool result may carry (protocol: section 3.3).
_MAX_ATTACHMENTS = 20


def _attachable(files: Sequence[Any]) -> list[Any]:
    if isinstance(files, str | bytes) or not isinstance(files, Sequence):
        raise UsageError("files must be a list of files (paths, bytes, file objects, Files)")
    if len(files) > _MAX_ATTACHMENTS:
        raise UsageError(f"at most {_MAX_ATTACHMENTS} files go with one message")
    for value in files:
        if not is_uploadable(value) and not isinstance(value, str):
            raise UsageError(f"cannot attach a {type(value).__name__}")
    return list(files)


def require_final(final: ChatMessage | None, chat_id: str | None) -> ChatMessage:
    """The run's final message; a stream that ended without one broke the protocol."""
    if final is None:
        raise ProtocolError(f"the stream of chat {chat_id} ended without a result")
    return final


def _reply_messages(reply: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    if not isinstance(reply, Mapping):
        raise ProtocolError(f"POST /agents/run answered {preview(reply)} instead of an object")
    user, assistant = reply.get("user_message"), reply.get("assistant_message")
    if not isinstance(assistant, Mapping):
        raise ProtocolError("the answer to POST /agents/run has no assistant_message")
    return (user if isinstance(user, Mapping) else {}), assistant
