"""Everything the SDK raises, in one tree.

```
InferenceshError                      base of every exception the SDK raises
├── TransportError                    the network failed; retryable
│   ├── ConnectError                  could not connect (DNS, refused, timeout, proxy refused)
│   ├── HeadersTimeoutError           no response headers within the headers timeout
│   ├── IdleTimeoutError              no byte (heartbeats included) within the idle timeout
│   ├── RequestTimeoutError           a REST call, retries included, passed its timeout
│   └── StreamInterruptedError        the connection dropped mid-response
├── APIStatusError                    the server answered with a non-2xx status
│   ├── BadRequestError               400 and other 4xx without a class of their own
│   ├── AuthenticationError           401 / 403
│   ├── NotFoundError                 404
│   ├── ConflictError                 409
│   ├── RequirementsNotMetError       412, with `.errors`
│   ├── RateLimitError                429, with `.retry_after`
│   ├── ServerError                   5xx
│   └── SessionError                  a session cannot take the call
│       ├── SessionNotFoundError      404 `session_not_found` (also a NotFoundError)
│       ├── SessionEndedError         410 `session_ended`
│       └── SessionExpiredError       410 `session_expired`
├── ProtocolError                     the server sent something that breaks the protocol
│   ├── EventTooLargeError            an event or line exceeded `max_event_bytes`
│   │   └── SSELineTooLongError       an SSE line or event exceeded the decoder's bound
│   └── EventGapError                 the server skipped events and offered no way to recover
├── RetriesExhaustedError             a stream gave up reconnecting; `__cause__` is the last failure
├── TaskError                         the task ended without completing; `.task` is its last state
│   ├── TaskFailedError               status FAILED (`.error` holds the app's message)
│   │   └── TaskRejectedError         status REJECTED (admission refused)
│   └── TaskCancelledError            status CANCELLED
├── TaskTimeoutError (TimeoutError)   a stream's `total_timeout` or `wait_for_completion`'s
│                                     deadline passed before the task ended
├── AgentError                        an agent run failed or a tool call could not be served
│   └── ToolCallError                 a client tool call had no handler or its handler raised
└── UsageError (RuntimeError)         the SDK was used wrongly: closed client, missing API key, ...
```

Foreign exceptions (aiohttp, asyncio) are mapped to these in one place, the transport, and
chained with `raise ... from exc`, so callers never have to catch library types. Local file
errors of uploads and downloads (a missing file, a folder that cannot be written) are
`UsageError`s.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._requirements import RequirementError, requirement_of

if TYPE_CHECKING:
    from ._events import TaskUpdate
    from .sse import ServerSentEvent

__all__ = [
    "AgentError",
    "APIError",
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectError",
    "EventGapError",
    "EventTooLargeError",
    "HeadersTimeoutError",
    "IdleTimeoutError",
    "InferenceshError",
    "NotFoundError",
    "ProtocolError",
    "RateLimitError",
    "RequestTimeoutError",
    "RequirementsNotMetError",
    "RetriesExhaustedError",
    "ServerError",
    "SessionEndedError",
    "SessionError",
    "SessionExpiredError",
    "SessionNotFoundError",
    "SSELineTooLongError",
    "StreamInterruptedError",
    "TaskCancelledError",
    "TaskError",
    "TaskFailedError",
    "TaskRejectedError",
    "TaskTimeoutError",
    "ToolCallError",
    "TransportError",
    "UsageError",
]


class InferenceshError(Exception):
    """Base class of every exception the SDK raises."""


class TransportError(InferenceshError):
    """The network failed before a complete answer arrived; safe to retry."""


class ConnectError(TransportError):
    """The connection could not be established (refused, DNS, connect timeout), or the proxy
    could not be reached or refused to connect to the server."""


class HeadersTimeoutError(TransportError):
    """The server took the request but sent no response headers within
    `StreamingOptions.headers_timeout` (a frozen server process, say)."""


class IdleTimeoutError(TransportError):
    """No byte arrived on a stream within `StreamingOptions.idle_timeout`."""


class RequestTimeoutError(TransportError, TimeoutError):
    """A REST call, its retries and the waits between them included, took longer than its
    `timeout=` (the client's `timeout` unless the call gave its own)."""


class StreamInterruptedError(TransportError):
    """The connection dropped in the middle of a response."""


class APIStatusError(InferenceshError):
    """The server answered with a non-2xx HTTP status.

    `status` is the HTTP status, `code` the API's machine-readable error code (for example
    `not_found`), `message` the human-readable detail and `body` the decoded error body.
    """

    status: int
    code: str | None
    message: str
    body: Any
    retry_after: float | None

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Whether repeating the same request may succeed (429 and 5xx)."""
        return self.status == 429 or self.status >= 500

    @property
    def status_code(self) -> int:
        """`status` under the official client's name."""
        return self.status


APIError = APIStatusError
"""`APIStatusError` under the official client's name (the same class)."""


class BadRequestError(APIStatusError):
    """A 4xx answer without a more specific class (400, 405, 422, ...)."""


class AuthenticationError(APIStatusError):
    """401 or 403: the API key is missing, wrong, or not allowed to do this."""


class NotFoundError(APIStatusError):
    """404: the task, chat, or app does not exist."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the resource's current state."""


class RequirementsNotMetError(APIStatusError):
    """412: the app needs secrets, integrations or scopes that are not set up.

    `errors` lists them as `RequirementError`s, each with the `SetupAction` that meets it.
    """

    @property
    def errors(self) -> list[RequirementError]:
        """The unmet requirements, in the server's order."""
        body = self.body if isinstance(self.body, Mapping) else {}
        found = body.get("errors")
        if not isinstance(found, list):
            return []
        return [requirement_of(item) for item in found if isinstance(item, Mapping)]


class RateLimitError(APIStatusError):
    """429: too many requests; `retry_after` is the server's hint in seconds, if any."""


class ServerError(APIStatusError):
    """5xx: the server failed; retryable."""


class SessionError(APIStatusError):
    """A session cannot take the call: unknown, ended or expired."""


class SessionNotFoundError(SessionError, NotFoundError):
    """404 `session_not_found`: no such session (never opened, or forgotten)."""


class SessionEndedError(SessionError):
    """410 `session_ended`: the session was ended; open a new one."""


class SessionExpiredError(SessionError):
    """410 `session_expired`: the session was idle past its timeout; open a new one."""


class ProtocolError(InferenceshError):
    """The server sent something the protocol does not allow (framing, JSON, shape)."""


class EventTooLargeError(ProtocolError):
    """One event (or one line of a stream) grew past `StreamingOptions.max_event_bytes`, the
    bound that keeps a server from growing the client's memory without limit."""


class EventGapError(ProtocolError):
    """The server skipped events of a stream and offered no snapshot to recover them from, so
    what the consumer was given cannot be completed without guessing."""


class SSELineTooLongError(EventTooLargeError):
    """An SSE line, or one event's data, grew past the decoder's `max_line_bytes` bound.

    `events` holds the events the same `feed` call completed before the long line, so nothing
    before it is lost.
    """

    events: list[ServerSentEvent]

    def __init__(
        self,
        message: str = "an SSE line exceeded max_line_bytes",
        *,
        events: list[ServerSentEvent] | None = None,
    ) -> None:
        super().__init__(message)
        self.events = list(events) if events is not None else []


class RetriesExhaustedError(InferenceshError):
    """A stream gave up after `StreamingOptions.max_retries` reconnects.

    The last failure is chained as `__cause__`.
    """

    attempts: int

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class TaskError(InferenceshError):
    """A task ended without completing; `task` is its last known state."""

    task: TaskUpdate

    def __init__(self, message: str, task: TaskUpdate) -> None:
        super().__init__(message)
        self.task = task

    @property
    def task_id(self) -> str:
        """The id of the task that ended."""
        return self.task.id


class TaskFailedError(TaskError):
    """The task failed; `error` is the app's error message."""

    @property
    def error(self) -> Any:
        """The error the task reported."""
        return self.task.error


class TaskRejectedError(TaskFailedError):
    """The API refused to admit the task (for example, no balance)."""


class TaskCancelledError(TaskError):
    """The task was cancelled."""


class TaskTimeoutError(InferenceshError, TimeoutError):
    """The task (or agent run) did not end within the time given: a stream's
    `total_timeout`, or the `timeout` of `wait_for_completion`. It keeps running."""


class AgentError(InferenceshError):
    """An agent run failed or ended in a state the caller cannot use."""


class ToolCallError(AgentError):
    """A client tool call could not be served: no handler, or the handler raised."""


class UsageError(InferenceshError, RuntimeError):
    """The SDK was used in a way it does not support (closed client, missing key, ...)."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    412: RequirementsNotMetError,
    429: RateLimitError,
}
# Error codes that name a more specific class than the status does.
_CODE_CLASSES: dict[str, type[APIStatusError]] = {
    "session_not_found": SessionNotFoundError,
    "session_ended": SessionEndedError,
    "session_expired": SessionExpiredError,
}


def status_error(
    status: int, body: bytes | str, *, retry_after: float | None = None
) -> APIStatusError:
    """Build the most specific `APIStatusError` for an HTTP error answer.

    The message is the first of problem+json `detail`, the legacy `error.message` (more specific
    than a generic `title`), `title` and `message`; failing those, the first 500 characters of
    the body, then the HTTP reason phrase.
    """
    from ._wire import loads  # here, not at the top: _wire raises this module's errors

    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    decoded: Any = None
    try:
        decoded = loads(text) if text.strip() else None
    except ProtocolError:
        decoded = None
    message, code = _problem_message(decoded)
    if not message:
        message = text.strip()[:500] or _reason(status)
    if code in _CODE_CLASSES:
        cls = _CODE_CLASSES[code]
    elif status in _STATUS_CLASSES:
        cls = _STATUS_CLASSES[status]
    elif status >= 500:
        cls = ServerError
    else:
        cls = BadRequestError
    return cls(
        status,
        message,
        code=code,
        body=decoded if decoded is not None else text,
        retry_after=retry_after,
    )


def envelope_error(status: int, envelope: Mapping[str, Any]) -> APIStatusError:
    """The error for a 2xx answer whose envelope says `success: false`: its `error.message`
    (or problem+json `detail`, ...) and `error.code`, as `status_error` reads them."""
    message, code = _problem_message(envelope)
    return APIStatusError(
        status, message or "the server reported success: false", code=code, body=envelope
    )


# S3, GCS and Azure all name an error with `<Code>` and explain it with `<Message>`.
_STORAGE_FIELD = re.compile(r"<(Code|Message|title)>([^<]{1,300})</(?:Code|Message|title)>")
_STORAGE_CLASSES: dict[int, type[APIStatusError]] = {404: NotFoundError, 429: RateLimitError}


def storage_error(
    status: int, body: bytes | str, *, retry_after: float | None = None
) -> APIStatusError:
    """Build the error for a failed answer from file storage (a presigned upload or download).

    Storage's error body may quote the signed request, credentials included (an S3
    `SignatureDoesNotMatch` lists the string it signed and the access key), so little of it
    is kept: from markup, its `<Code>` and `<Message>` (or an HTML page's `<title>`); from
    JSON, the error's code and message; from plain text, its first line, URLs masked. `body`
    holds what was kept. The class follows the status alone (a storage 401, 403 or 412 says
    nothing of the API key or an app's requirements: `BadRequestError`).
    """
    from ._transport import masked  # here: the transport builds on this module
    from ._wire import loads

    text = (body.decode("utf-8", "replace") if isinstance(body, bytes) else body).strip()
    kept: dict[str, str] = {}
    if text.startswith("<"):
        for name, value in _STORAGE_FIELD.findall(text):
            kept.setdefault(name, html.unescape(value).strip())
        code = kept.get("Code")
        detail = ": ".join(part for part in (code, kept.get("Message")) if part)
        detail = detail or kept.get("title", "")
    elif text.startswith("{"):
        try:
            found, code = _problem_message(loads(text))
        except ProtocolError:
            found, code = "", None
        detail = found = found[:300]
        kept = {key: value for key, value in (("Code", code), ("Message", found)) if value}
    else:
        code, detail = None, masked(text.partition("\n")[0][:200])
        kept = {"Message": detail} if detail else {}
    cls = _STORAGE_CLASSES.get(status) or (ServerError if status >= 500 else BadRequestError)
    return cls(
        status,
        f"file storage answered {detail or _reason(status)}",
        code=code or None,
        body=kept or None,
        retry_after=retry_after,
    )


def _problem_message(body: Any) -> tuple[str, str | None]:
    if not isinstance(body, Mapping):
        return "", None
    legacy = body.get("error")
    legacy = legacy if isinstance(legacy, Mapping) else {}
    message = ""
    for candidate in (
        body.get("detail"),
        legacy.get("message"),
        body.get("title"),
        body.get("message"),
    ):
        if isinstance(candidate, str) and candidate:
            message = candidate
            break
    code: str | None = None
    problem_type = body.get("type")
    if isinstance(problem_type, str) and "/errors/" in problem_type:
        code = problem_type.rsplit("/errors/", 1)[1] or None
    if code is None and isinstance(legacy.get("code"), str):
        code = legacy["code"]
    return message, code


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Request failed"
