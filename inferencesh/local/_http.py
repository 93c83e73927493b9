"""HTTP: routes, the success envelope, problem+json errors, auth and fault middlewares."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ._agents import parse_run_request
from ._apps import InvalidField, parse_app_ref, parse_sim
from ._chats import Chat, ChatError
from ._emulator import Emulator
from ._streaming import (
    Connection,
    StreamSettings,
    StreamSource,
    negotiate_framing,
    parse_last_event_id,
)
from ._tasks import Task

__all__ = ["build_application", "problem", "serve_stream"]

logger = logging.getLogger("inferencesh.local")

EMULATOR: web.AppKey[Emulator] = web.AppKey("inferencesh_emulator", Emulator)

# Inputs travel inline (files are uploaded separately), but allow generous ones.
_MAX_BODY = 16 * 1024 * 1024

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Codes of the hosted API's `ErrorCode` for the statuses the emulator answers with.
_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    429: "rate_limited",
    500: "internal_error",
}


class _Problem(Exception):
    """Raised by a handler to answer with problem+json."""

    def __init__(self, status: int, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code


def problem(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An RFC 9457 problem+json answer that also carries the legacy `error` object."""
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
    return web.Response(
        status=status,
        body=json.dumps(body).encode("ascii"),
        content_type="application/problem+json",
        headers=headers,
    )


def _envelope(data: Any) -> web.Response:
    body = json.dumps({"success": True, "data": data, "messages": []})
    return web.Response(body=body.encode("ascii"), content_type="application/json")


# -- middlewares (outermost first) ----------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Turn every error into problem+json; never let a traceback reach the client."""
    try:
        return await handler(request)
    except _Problem as exc:
        return problem(exc.status, exc.detail, code=exc.code)
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
    except Exception:
        logger.exception("internal error handling %s %s", request.method, request.path)
        return problem(500, "internal error in the emulator")


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
    """Any non-empty bearer key, or exactly the configured one."""
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


async def _json_object(request: web.Request, *, empty: dict[str, Any] | None = None) -> Any:
    """The request body as a JSON object (400 otherwise); `empty` stands in for no body."""
    raw = await request.read()
    if empty is not None and not raw.strip():
        return empty
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _Problem(400, f"field 'body': request body is not valid JSON ({exc})") from None
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
        session = body.get("session")
        if session is not None and (not isinstance(session, str) or not session):
            raise InvalidField("session", 'must be "new" or a session id')
        fn = emulator.apps.lookup(ref)
        sim = None
        if fn is None:
            if emulator.options.strict_apps:
                raise _Problem(404, f"app {ref.key} not found")
            sim = parse_sim(
                input.get("sim"),
                steps=emulator.options.sim_steps,
                step_delay=emulator.options.sim_step_delay,
            )
    except InvalidField as exc:
        raise _Problem(400, str(exc)) from None
    session_id = None
    if session == "new":
        session_id = f"sess_{secrets.token_hex(10)}"
    elif session is not None:
        session_id = session
    task = emulator._start_task(body["app"], input, fn=fn, sim=sim, session_id=session_id)
    return _envelope(task.to_dict())


def _task_or_404(request: web.Request) -> Task:
    task_id = request.match_info["task_id"]
    task = request.app[EMULATOR].tasks.get(task_id)
    if task is None:
        raise _Problem(404, f"task {task_id} not found")
    return task


async def _get_task(request: web.Request) -> web.Response:
    return _envelope(_task_or_404(request).to_dict())


async def _cancel_task(request: web.Request) -> web.Response:
    _task_or_404(request).request_cancel()
    return _envelope(None)


async def _stream_task(request: web.Request) -> web.StreamResponse:
    return await serve_stream(request, _task_or_404(request))


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
    if reject:
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise _Problem(400, "field 'reason': must be a string")
        result = "The user rejected this tool call." + (f" Reason: {reason}" if reason else "")
    else:
        result = body.get("result")
        if not isinstance(result, str):
            raise _Problem(400, "field 'result': must be a string (encode objects as JSON)")
        attachments = body.get("attachments")
        if attachments is not None and not isinstance(attachments, list):
            raise _Problem(400, "field 'attachments': must be a list of files")
    found = request.app[EMULATOR].chats.invocation(invocation_id)
    if found is None:
        raise _Problem(404, f"tool invocation {invocation_id} not found")
    chat, invocation = found
    try:
        chat.answer(invocation, result, status="cancelled" if reject else "completed")
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
    app = web.Application(middlewares=[_errors, _faults, _auth], client_max_size=_MAX_BODY)
    app[EMULATOR] = emulator
    app.router.add_post("/apps/run", _run_app)
    app.router.add_get("/tasks/{task_id}", _get_task, allow_head=False)
    app.router.add_post("/tasks/{task_id}/cancel", _cancel_task)
    app.router.add_get("/tasks/{task_id}/stream", _stream_task, allow_head=False)
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
