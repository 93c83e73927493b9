"""HTTP: routes, the success envelope, problem+json errors, auth and fault middlewares."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import math
import operator
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ._agents import parse_attachments, parse_run_request
from ._apps import InvalidField, parse_app_ref, parse_sim
from ._budget import Overloaded
from ._chats import Chat, ChatError
from ._emulator import Emulator
from ._files import KEYLESS_ROUTES, FileError
from ._gate import BodyGate, GateTimeoutError
from ._requirements import parse_requirements, requirements_body
from ._sessions import MAX_LISTED_SESSIONS, SessionError, parse_call
from ._streaming import (
    Connection,
    StreamSettings,
    StreamSource,
    negotiate_framing,
    parse_last_event_id,
)
from ._tasks import Task

__all__ = ["RequestBodyTimeout", "build_application", "log_rejected", "problem", "serve_stream"]

logger = logging.getLogger("inferencesh.local")

EMULATOR: web.AppKey[Emulator] = web.AppKey("inferencesh_emulator", Emulator)

# The detail of a problem+json answer, kept on the response so the one log line can name it.
_DETAIL: web.ResponseKey[str] = web.ResponseKey("inferencesh_problem_detail", str)

# Request bodies handled at once, in units of the largest body (the memory they may take).
_BODY_GATE_BODIES = 16

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Codes of the hosted API's `ErrorCode` for the statuses the emulator answers with.
_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    414: "uri_too_long",
    429: "rate_limited",
    431: "request_header_fields_too_large",
    500: "internal_error",
}


class RequestBodyTimeout(Exception):
    """Set on a request's payload when its body did not arrive within `body_timeout`."""


class _Problem(Exception):
    """Raised by a handler to answer with problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.extra = extra


def problem(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    """An RFC 9457 problem+json answer that also carries the legacy `error` object.

    `extra` members are merged into the body (the 412's `errors` array, say).
    """
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    code = code or _CODES.get(status) or title.lower().replace(" ", "_").replace("-", "_")
    body = {
        "type": f"https://inference.sh/errors/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "success": False,
        "error": {"code": code, "message": detail},
    }
    if extra:
        body.update(extra)
    response = web.Response(
        status=status,
        body=json.dumps(body).encode("ascii"),
        content_type="application/problem+json",
        headers=headers,
    )
    response[_DETAIL] = detail
    return response


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, control characters escaped: one log line stays one."""
    text = _shorten(text, limit)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def log_rejected(method: str, path: str, status: int, detail: str) -> None:
    """The one log line for a request answered with an error: method, path, status, reason.

    A client's mistake is not the emulator's: no traceback, and INFO so a default logging
    setup stays quiet.
    """
    logger.info(
        "rejected %s %s: %d %s",
        _printable(method, 16),
        _printable(path, 100),
        status,
        _printable(detail, 200),
    )


def _envelope(data: Any) -> web.Response:
    return _envelope_json(json.dumps(data))


def _envelope_json(data: str) -> web.Response:
    """The success envelope around `data`, JSON text already encoded (a task's state)."""
    body = '{"success":true,"data":' + data + ',"messages":[]}'
    return web.Response(body=body.encode("ascii"), content_type="application/json")


# -- middlewares (outermost first) ----------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Turn every error into problem+json and log it in one line; tracebacks only for bugs."""
    try:
        response = await _answer_or_problem(request, handler)
    except web.HTTPException:
        raise  # a redirect or other non-error answer: aiohttp sends it
    except Exception:
        logger.exception("internal error handling %s %s", request.method, request.path)
        return problem(500, "internal error in the emulator")
    if response.status >= 400:
        detail = response.get(_DETAIL, response.reason or "")
        log_rejected(request.method, request.path, response.status, detail)
    return response


async def _answer_or_problem(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Problem as exc:
        return problem(exc.status, exc.detail, code=exc.code, extra=exc.extra)
    except SessionError as exc:
        return problem(exc.status, exc.detail, code=exc.code)
    except FileError as exc:
        return problem(exc.status, exc.detail)
    except Overloaded as exc:
        return problem(429, exc.detail, headers={"Retry-After": str(exc.retry_after)})
    except GateTimeoutError as exc:
        return problem(503, str(exc), headers={"Retry-After": "1"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        if exc.status == 404:
            detail = f"no route for {request.method} {request.path}"
        elif exc.status == 405:
            detail = f"method {request.method} is not allowed for {request.path}"
        else:
            detail = exc.reason
        return problem(exc.status, detail, headers=headers)
    except RequestBodyTimeout as exc:
        return problem(408, str(exc))
    except web.RequestPayloadError as exc:
        return problem(400, f"field 'body': malformed request body ({exc})")
    except ConnectionError:  # the client hung up mid-body; the answer is for the log only
        return problem(400, "field 'body': the connection closed before the body arrived")


@web.middleware
async def _body_size(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """413 for a declared body over the limit, on every route but file uploads (they stream
    to disk under their own limit), before anything else."""
    if _keyless(request):
        return await handler(request)
    limit = request.app[EMULATOR].options.http.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _Problem(413, _too_large(request.content_length, limit))
    return await handler(request)


def _keyless(request: web.Request) -> bool:
    """A file upload or download URL: its secret token authorises it (no API key), and its
    bytes stream to or from disk (no JSON body limit, no body gate)."""
    return request.match_info.route.name in KEYLESS_ROUTES


def _too_large(size: int | None, limit: int) -> str:
    body = "request body" if size is None else f"request body of {size} bytes"
    return f"field 'body': {body} is over the limit of {limit} bytes"


@web.middleware
async def _faults(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Injected failures and delays, before any other handling (auth included)."""
    emulator = request.app[EMULATOR]
    failure = emulator.faults.take_failure()
    delay = emulator.faults.delay
    if delay:
        await asyncio.sleep(delay)
    if failure is not None:
        headers = None
        if failure.retry_after is not None:
            headers = {"Retry-After": str(failure.retry_after)}
        return problem(failure.status, f"injected failure ({failure.status})", headers=headers)
    return await handler(request)


@web.middleware
async def _auth(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Any non-empty bearer key, or exactly the configured one (none on file URLs)."""
    if _keyless(request):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return problem(401, "missing API key: send Authorization: Bearer <key>")
    expected = request.app[EMULATOR].options.api_key
    if expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
        return problem(401, "invalid API key")
    return await handler(request)


# -- handlers -----------------------------------------------------------------------------------


# A JSON string, and the bytes that are not brackets. Possessive quantifiers never backtrack,
# so an unterminated string (`"` + `\"` * n) costs linear time, not quadratic; one that runs
# to the end of the body is cut out too (it holds no brackets either way).
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# An opening bracket steps the depth up by one, a closing one down: 2 and 0, minus 1 each.
_DEPTH_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
# A \uD800-\uDFFF escape: the body may hold a lone surrogate, which is not text.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in `raw`, counting no bracket inside a string.

    No recursion and no Python loop per byte: strings are cut out, the brackets left become
    +1/-1 steps, and the depth is the highest running sum.
    """
    steps = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS).translate(_DEPTH_STEPS)
    return max(map(operator.sub, itertools.accumulate(steps), itertools.count(1)), default=0)


class _BadValue:
    """A value json.loads met that the emulator refuses; found and named after parsing."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _first_bad_value(body: Any) -> tuple[str, str] | None:
    """The path and problem of the first refused value (or lone surrogate), walked iteratively."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _BadValue):
            return path or "body", value.problem
        if isinstance(value, str):
            if not _is_text(value):
                return path or "body", "string holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
        elif isinstance(value, dict):
            children: list[tuple[str, Any]] = []
            for key, item in value.items():
                here = f"{path}.{key}" if path else str(key)
                if not _is_text(key):
                    return _shorten(here, 100), "key holds a lone UTF-16 surrogate"
                children.append((_shorten(here, 100), item))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(
                (f"{path or 'body'}[{i}]", item) for i, item in reversed(list(enumerate(value)))
            )
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _json_object(request: web.Request, *, empty: dict[str, Any] | None = None) -> Any:
    """The request body as a JSON object, else a 4xx naming the problem; `empty` stands in for
    no body. The one decoder of request bodies.

    It refuses what the emulator cannot hold or the hosted API would not take: a body over
    `max_body_bytes` (413) or late (408), bytes that are not UTF-8, nesting deeper than
    `max_json_depth` (checked on the bytes before parsing, so parsing cannot recurse too
    deep), NaN and infinities (`1e999` included), integers too long for `int`, and strings with
    lone surrogates (400, naming the field).
    """
    limits = request.app[EMULATOR].options.http
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _Problem(413, _too_large(None, limits.max_body_bytes)) from None
    # A body that times out, breaks or is cut off is answered where every reader's is:
    # `_answer_or_problem`.
    if empty is not None and not raw.strip():
        return empty
    if _nesting_depth(raw) > limits.max_json_depth:
        raise _Problem(400, f"field 'body': JSON nested deeper than {limits.max_json_depth} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Problem(
            400, f"field 'body': request body is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    refused: list[_BadValue] = []

    def refuse(problem: str) -> _BadValue:
        refused.append(_BadValue(problem))
        return refused[-1]

    def parse_constant(name: str) -> _BadValue:
        return refuse(f"{name} is not a JSON number (numbers must be finite)")

    def parse_float(literal: str) -> float | _BadValue:
        value = float(literal)
        if math.isfinite(value):
            return value
        return refuse(f"number {_shorten(literal, 40)} is out of range (numbers must be finite)")

    def parse_int(literal: str) -> int | _BadValue:
        try:
            return int(literal)
        except ValueError:
            return refuse(f"integer of {len(literal)} digits is too long")

    try:
        body = json.loads(
            text, parse_constant=parse_constant, parse_float=parse_float, parse_int=parse_int
        )
    except (ValueError, RecursionError) as exc:
        detail = _shorten(str(exc), 200)
        raise _Problem(400, f"field 'body': request body is not valid JSON ({detail})") from None
    if refused or _SURROGATE_ESCAPE.search(raw):
        found = _first_bad_value(body)
        if found is not None:
            raise _Problem(400, f"field '{found[0]}': {found[1]}")
    if not isinstance(body, dict):
        raise _Problem(400, "field 'body': request body must be a JSON object")
    return body


async def _run_app(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    if emulator.stopping:
        raise _Problem(503, "the emulator is shutting down")
    body = await _json_object(request)
    try:
        ref = parse_app_ref(body.get("app"))
        input = body.get("input")
        if input is None:
            input = {}
        elif not isinstance(input, dict):
            raise InvalidField("input", "must be a JSON object")
        call = parse_call(body, ref)
        fn = emulator.apps.lookup(ref)
        sim = None
        requirements = emulator.requirements.lookup(ref)
        if fn is None:
            if emulator.options.strict_apps:
                raise _Problem(404, f"app {ref.key} not found")
            sim = parse_sim(
                input.get("sim"),
                steps=emulator.options.sim_steps,
                step_delay=emulator.options.sim_step_delay,
            )
            if not requirements and isinstance(input.get("sim"), dict):
                requirements = parse_requirements(
                    input["sim"].get("require"), field="input.sim.require"
                )
    except InvalidField as exc:
        raise _Problem(400, str(exc)) from None
    if requirements:
        detail, extra = requirements_body(requirements)
        raise _Problem(412, detail, code="requirements_not_met", extra=extra)
    session = emulator.sessions.open(call, ref)
    try:
        task = emulator._start_task(
            body["app"], input, fn=fn, sim=sim, session_id=None, session=session,
            function=call.function,
        )  # fmt: skip
    except BaseException:
        if session is not None:
            emulator.sessions.abandon(session)  # a new session whose first call was refused
        raise
    return _envelope_json(task.state_frame().data)


def task_or_404(request: web.Request) -> Task:
    """The task the path names (its `task_id`), or a 404 problem."""
    task_id = request.match_info["task_id"]
    task = request.app[EMULATOR].tasks.get(task_id)
    if task is None:
        raise _Problem(404, f"task {task_id} not found")
    return task


async def _get_task(request: web.Request) -> web.Response:
    return _envelope_json(task_or_404(request).state_frame().data)


async def _cancel_task(request: web.Request) -> web.Response:
    task_or_404(request).request_cancel()
    return _envelope(None)


async def _stream_task(request: web.Request) -> web.StreamResponse:
    return await serve_stream(request, task_or_404(request))


async def _get_session(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    found = request.app[EMULATOR].sessions.snapshot(session_id)
    if found is None:
        raise SessionError(404, "session_not_found", f"session {session_id} not found")
    return _envelope(found)


async def _list_sessions(request: web.Request) -> web.Response:
    return _envelope(request.app[EMULATOR].sessions.list(MAX_LISTED_SESSIONS))


async def _keepalive_session(request: web.Request) -> web.Response:
    sessions = request.app[EMULATOR].sessions
    session = sessions.keepalive(request.match_info["session_id"])
    with sessions.hub.lock:
        return _envelope(session.to_dict())


async def _end_session(request: web.Request) -> web.Response:
    sessions = request.app[EMULATOR].sessions
    session = sessions.end(request.match_info["session_id"])
    with sessions.hub.lock:
        return _envelope(session.to_dict())


async def _run_agent(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    if emulator.stopping:
        raise _Problem(503, "the emulator is shutting down")
    body = await _json_object(request)
    try:
        run_request = parse_run_request(body)
    except InvalidField as exc:
        raise _Problem(400, str(exc)) from None
    try:
        return _envelope(emulator._start_run(run_request))
    except ChatError as exc:
        raise _Problem(exc.status, exc.detail) from None


def _chat_or_404(request: web.Request) -> Chat:
    chat_id = request.match_info["chat_id"]
    chat = request.app[EMULATOR].chats.get(chat_id)
    if chat is None:
        raise _Problem(404, f"chat {chat_id} not found")
    return chat


async def _get_chat(request: web.Request) -> web.Response:
    return _envelope(_chat_or_404(request).to_dict())


async def _stop_chat(request: web.Request) -> web.Response:
    chat = _chat_or_404(request)
    chat.stop()
    return _envelope(chat.to_dict(messages=False))


async def _stream_chat(request: web.Request) -> web.StreamResponse:
    return await serve_stream(request, _chat_or_404(request))


async def _answer_tool(request: web.Request, *, reject: bool) -> web.Response:
    invocation_id = request.match_info["invocation_id"]
    body = await _json_object(request, empty={} if reject else None)
    attachments: list[dict[str, Any]] = []
    if reject:
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise _Problem(400, "field 'reason': must be a string")
        result = "The user rejected this tool call." + (f" Reason: {reason}" if reason else "")
    else:
        result = body.get("result")
        if not isinstance(result, str):
            raise _Problem(400, "field 'result': must be a string (encode objects as JSON)")
        try:
            attachments = parse_attachments(body.get("attachments"), "attachments", unit="files")
        except InvalidField as exc:
            raise _Problem(400, str(exc)) from None
    found = request.app[EMULATOR].chats.invocation(invocation_id)
    if found is None:
        raise _Problem(404, f"tool invocation {invocation_id} not found")
    chat, invocation = found
    try:
        status = "cancelled" if reject else "completed"
        chat.answer(invocation, result, status=status, attachments=attachments)
    except ChatError as exc:
        raise _Problem(exc.status, exc.detail) from None
    return _envelope(invocation.to_dict())


async def _tool_result(request: web.Request) -> web.Response:
    return await _answer_tool(request, reject=False)


async def _reject_tool(request: web.Request) -> web.Response:
    return await _answer_tool(request, reject=True)


async def serve_stream(request: web.Request, source: StreamSource) -> web.StreamResponse:
    """Stream `source`'s events in the framing `Accept` asks for, counted as an open stream."""
    emulator = request.app[EMULATOR]
    framing = negotiate_framing(request.headers.get("Accept"))
    # Both framings resume: SSE events carry `id:`, NDJSON lines an `event_id` key.
    last_event_id = parse_last_event_id(request.headers.get("Last-Event-ID"))
    settings = StreamSettings(
        heartbeat_interval=emulator.options.heartbeat_interval,
        write_timeout=emulator.options.http.write_timeout,
        retry_ms=emulator.options.retry_ms,
        drop_after=emulator.faults.drop_after,
        stopping=lambda: emulator.stopping,
        on_event_sent=emulator._stream_progressed,
    )
    conn = Connection(request, source, settings, framing=framing, last_event_id=last_event_id)
    emulator._connection_opened(conn)
    try:
        return await conn.serve()
    finally:
        emulator._connection_closed(conn)


def build_application(emulator: Emulator) -> web.Application:
    """The aiohttp application for `emulator` (see `Emulator.make_app`)."""
    limits = emulator.options.http
    gate = BodyGate(
        _BODY_GATE_BODIES * limits.max_body_bytes,
        max_body=limits.max_body_bytes,
        timeout=limits.body_timeout,
    )

    @web.middleware
    async def _gate(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if _keyless(request):
            return await handler(request)
        return await gate.handle(request, handler)

    app = web.Application(
        middlewares=[_errors, _body_size, _gate, _faults, _auth],
        client_max_size=limits.max_body_bytes,
    )
    app[EMULATOR] = emulator
    from ._filehttp import install_files  # it uses this module's helpers

    install_files(app)
    app.router.add_post("/apps/run", _run_app)
    app.router.add_get("/tasks/{task_id}", _get_task, allow_head=False)
    app.router.add_post("/tasks/{task_id}/cancel", _cancel_task)
    app.router.add_get("/tasks/{task_id}/stream", _stream_task, allow_head=False)
    app.router.add_get("/sessions", _list_sessions, allow_head=False)
    app.router.add_get("/sessions/{session_id}", _get_session, allow_head=False)
    app.router.add_post("/sessions/{session_id}/keepalive", _keepalive_session)
    app.router.add_delete("/sessions/{session_id}", _end_session)
    app.router.add_post("/agents/run", _run_agent)
    app.router.add_get("/chats/{chat_id}", _get_chat, allow_head=False)
    app.router.add_post("/chats/{chat_id}/stop", _stop_chat)
    app.router.add_get("/chats/{chat_id}/stream", _stream_chat, allow_head=False)
    app.router.add_post("/tools/{invocation_id}", _tool_result)
    app.router.add_post("/tools/{invocation_id}/reject", _reject_tool)

    async def on_startup(_: web.Application) -> None:
        await emulator._startup()

    async def on_shutdown(_: web.Application) -> None:
        await emulator._shutdown()

    async def on_cleanup(_: web.Application) -> None:
        await emulator._cleanup()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
