"""App sessions (`/sessions`, `POST /apps/run` with `session`), `function`, and the 412
requirements answer of the emulator, over real loopback sockets."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support import fast_emulator

from inferencesh.local import AppContext, Emulator, serve_in_thread
from inferencesh.local._sessions import MAX_LISTED_SESSIONS, MAX_SESSION_CALLS

pytestmark = pytest.mark.anyio

DTO_KEYS = {
    "id",
    "short_id",
    "created_at",
    "updated_at",
    "worker_id",
    "app_id",
    "app_version_id",
    "status",
    "expires_at",
    "ended_at",
    "task_id",
    "call_count",
    "last_call_at",
    "idle_timeout",
}


async def call(srv: Any, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
    """One request: (status, JSON body, headers)."""
    async with srv.session.request(method, path, json=body) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def run(srv: Any, **body: Any) -> tuple[int, Any]:
    """POST /apps/run with `body` (the app defaults to acme/echo, the input to {})."""
    body.setdefault("app", "acme/echo")
    body.setdefault("input", {})
    status, payload, _ = await call(srv, "POST", "/apps/run", body)
    return status, payload


def assert_problem(payload: Any, status: int, code: str) -> None:
    """A problem+json body with this status and code, in both error forms."""
    assert payload["status"] == status, payload
    assert payload["type"] == f"https://inference.sh/errors/{code}", payload
    assert payload["error"]["code"] == code
    assert payload["success"] is False


async def session_of(srv: Any, session_id: str) -> Any:
    status, payload, _ = await call(srv, "GET", f"/sessions/{session_id}")
    assert status == 200, payload
    return payload["data"]


async def finished(srv: Any, task: Any, code: int = 10) -> Any:
    """Wait until the task has status `code` and return its snapshot."""
    await srv.wait_status(task["id"], code)
    return srv.emu.task_snapshot(task["id"])


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


async def test_session_lifecycle(local_server: Any) -> None:
    """new → calls → keepalive → DELETE: the DTO follows each step; then 410 session_ended."""
    async with local_server() as srv:
        status, payload = await run(srv, app="acme/echo@v1", session="new", function="run")
        assert status == 200, payload
        first = payload["data"]
        session_id = first["session_id"]
        assert session_id.startswith("sess_")
        read = await srv.read_stream(first["id"])  # the terminal event carries the session
        assert read.ndjson()[-1]["status"] == 10
        assert read.ndjson()[-1]["session_id"] == session_id
        assert read.ndjson()[-1]["output"]["function"] == "run"

        created = await session_of(srv, session_id)
        assert DTO_KEYS == set(created)
        assert created["status"] == "active"
        assert (created["app_id"], created["app_version_id"]) == ("acme/echo", "v1")
        assert created["task_id"] == first["id"]
        assert created["call_count"] == 1
        assert created["idle_timeout"] == 300
        assert created["worker_id"].startswith("worker_")
        assert created["ended_at"] is None
        assert when(created["expires_at"]) > when(created["last_call_at"])

        status, payload = await run(srv, session=session_id, input={"prompt": "again"})
        assert status == 200, payload
        second = await finished(srv, payload["data"])
        assert second["session_id"] == session_id
        after_call = await session_of(srv, session_id)
        assert after_call["call_count"] == 2
        assert after_call["task_id"] == first["id"]  # the task that created it
        assert when(after_call["last_call_at"]) >= when(created["last_call_at"])
        assert when(after_call["expires_at"]) >= when(created["expires_at"])

        status, payload, _ = await call(srv, "POST", f"/sessions/{session_id}/keepalive")
        assert status == 200, payload
        assert payload["data"]["status"] == "active"
        assert when(payload["data"]["expires_at"]) >= when(after_call["expires_at"])

        status, payload, _ = await call(srv, "DELETE", f"/sessions/{session_id}")
        assert status == 200, payload
        ended = payload["data"]
        assert ended["status"] == "ended"
        assert ended["ended_at"] is not None
        assert ended["call_count"] == 2
        assert (await session_of(srv, session_id))["status"] == "ended"

        status, payload = await run(srv, session=session_id)
        assert status == 410
        assert_problem(payload, 410, "session_ended")
        status, payload, _ = await call(srv, "POST", f"/sessions/{session_id}/keepalive")
        assert_problem(payload, 410, "session_ended")
        status, payload, _ = await call(srv, "DELETE", f"/sessions/{session_id}")
        assert (status, payload["data"]["status"]) == (200, "ended")  # ending again: no change


async def test_idle_session_expires_on_time(local_server: Any) -> None:
    """A session idle for its `session_timeout` turns expired without anyone reading it (the
    housekeeping), then calls and keepalives get 410 session_expired."""
    async with local_server() as srv:
        status, payload = await run(srv, session="new", session_timeout=1)
        assert status == 200, payload
        task = await finished(srv, payload["data"])
        session_id = task["session_id"]
        assert (await session_of(srv, session_id))["idle_timeout"] == 1
        assert srv.emu.sessions.active == 1
        swept = await srv.emu.async_wait_until(lambda emu: emu.sessions.active == 0, timeout=5)
        assert swept
        expired = await session_of(srv, session_id)
        assert expired["status"] == "expired"
        assert expired["ended_at"] == expired["expires_at"]
        status, payload = await run(srv, session=session_id)
        assert status == 410
        assert_problem(payload, 410, "session_expired")
        status, payload, _ = await call(srv, "POST", f"/sessions/{session_id}/keepalive")
        assert_problem(payload, 410, "session_expired")


async def test_unknown_sessions_are_404(local_server: Any) -> None:
    """A call, GET, keepalive or DELETE of an unknown session is 404 session_not_found."""
    async with local_server() as srv:
        status, payload = await run(srv, session="sess_nope")
        assert status == 404
        assert_problem(payload, 404, "session_not_found")
        assert "sess_nope" in payload["detail"]
        for method, path in [
            ("GET", "/sessions/sess_nope"),
            ("POST", "/sessions/sess_nope/keepalive"),
            ("DELETE", "/sessions/sess_nope"),
        ]:
            status, payload, _ = await call(srv, method, path)
            assert status == 404, (method, path)
            assert_problem(payload, 404, "session_not_found")
        assert len(srv.emu.tasks) == 0


async def test_a_session_of_another_app_is_400(local_server: Any) -> None:
    """Calls must name the session's app (and its version, when both name one)."""
    async with local_server() as srv:
        status, payload = await run(srv, app="acme/echo@v1", session="new")
        session_id = payload["data"]["session_id"]
        for app in ("acme/other", "acme/echo@v2"):
            status, payload = await run(srv, app=app, session=session_id)
            assert status == 400, app
            assert_problem(payload, 400, "session_app_mismatch")
        for app in ("acme/echo", "acme/echo@v1:resize"):
            status, payload = await run(srv, app=app, session=session_id)
            assert status == 200, (app, payload)
            await finished(srv, payload["data"])
        assert (await session_of(srv, session_id))["call_count"] == 3


async def test_list_sessions_most_recent_first_and_capped(local_server: Any) -> None:
    """GET /sessions lists the most recent first, ended ones included, at most 100."""
    async with local_server() as srv:
        status, payload, _ = await call(srv, "GET", "/sessions")
        assert (status, payload["data"]) == (200, [])
        ids = []
        for _ in range(MAX_LISTED_SESSIONS + 2):
            status, payload = await run(srv, session="new", input={"sim": {"steps": 0}})
            assert status == 200, payload
            ids.append(payload["data"]["session_id"])
        await call(srv, "DELETE", f"/sessions/{ids[-1]}")
        status, payload, _ = await call(srv, "GET", "/sessions")
        listed = payload["data"]
        assert [item["id"] for item in listed] == ids[::-1][:MAX_LISTED_SESSIONS]
        assert listed[0]["status"] == "ended"
        assert {item["status"] for item in listed[1:]} == {"active"}
        assert DTO_KEYS == set(listed[0])


async def test_function_and_session_reach_the_app(local_server: Any) -> None:
    """`function` (the key, or `:function` in the app reference) and the session id reach a
    registered app's context; naming two different functions is a 400."""
    seen: list[tuple[str | None, str | None]] = []

    async def app(input: dict[str, Any], ctx: AppContext) -> Any:
        seen.append((ctx.function, ctx.session_id))
        return {"function": ctx.function}

    async with local_server(apps={"acme/tool": app}) as srv:
        status, payload = await run(srv, app="acme/tool@v3:resize")
        await finished(srv, payload["data"])
        status, payload = await run(srv, app="acme/tool", function="crop", session="new")
        task = await finished(srv, payload["data"])
        assert task["output"] == {"function": "crop"}
        status, payload = await run(srv, app="acme/tool")
        await finished(srv, payload["data"])
        assert seen == [("resize", None), ("crop", task["session_id"]), (None, None)]

        status, payload = await run(srv, app="acme/tool:resize", function="crop")
        assert status == 400
        assert "field 'function'" in payload["detail"]
        for bad in ("", "no-dash", 5, "x" * 101):
            status, payload = await run(srv, app="acme/tool", function=bad)
            assert status == 400, bad
            assert "field 'function'" in payload["detail"]

        status, payload = await run(srv, app="acme/sim", function="describe")
        task = await finished(srv, payload["data"])
        assert task["output"]["function"] == "describe"  # the simulated app echoes it


@pytest.mark.parametrize("timeout", [0, 3601, "5", True, 1.5, None])
async def test_session_timeout_is_validated(local_server: Any, timeout: Any) -> None:
    """`session_timeout` is a whole number of seconds from 1 to 3600 (null: the default)."""
    async with local_server() as srv:
        status, payload = await run(srv, session="new", session_timeout=timeout)
        if timeout is None:
            assert status == 200, payload
            session = await session_of(srv, payload["data"]["session_id"])
            assert session["idle_timeout"] == 300
            return
        assert status == 400
        assert_problem(payload, 400, "invalid_request")
        assert "field 'session_timeout'" in payload["detail"]
        assert srv.emu.sessions.active == 0


async def test_calls_of_a_session_run_one_at_a_time(local_server: Any) -> None:
    """A call made while another runs waits its turn (still received), then runs."""
    async with local_server() as srv:
        status, payload = await run(srv, session="new", input={"sim": {"hold": True}})
        holding = payload["data"]
        await srv.wait_status(holding["id"], 7)
        status, payload = await run(srv, session=holding["session_id"], input={"prompt": "next"})
        assert status == 200, payload
        waiting = payload["data"]
        assert waiting["status"] == 1
        started = await srv.emu.async_wait_until(
            lambda emu: emu.task_snapshot(waiting["id"])["status"] != 1, timeout=0.3
        )
        assert not started  # the session is busy
        await srv.cancel(holding["id"])
        await srv.wait_status(holding["id"], 12)
        done = await finished(srv, waiting)
        assert done["output"]["input"] == {"prompt": "next"}
        session = await session_of(srv, holding["session_id"])
        assert (session["status"], session["call_count"]) == ("active", 2)


async def test_a_busy_session_bounds_the_wait(local_server: Any) -> None:
    """A call that cannot start within the idle timeout fails "session busy"; a busy session
    does not expire meanwhile; ending it fails the call still running."""
    async with local_server() as srv:
        status, payload = await run(
            srv, session="new", session_timeout=1, input={"sim": {"hold": True}}
        )
        holding = payload["data"]
        session_id = holding["session_id"]
        status, payload = await run(srv, session=session_id)
        assert status == 200, payload
        late = payload["data"]
        await srv.wait_status(late["id"], 11, timeout=5)
        assert "session busy" in srv.emu.task_snapshot(late["id"])["error"]
        assert (await session_of(srv, session_id))["status"] == "active"  # busy: no expiry
        _, payload, _ = await call(srv, "DELETE", f"/sessions/{session_id}")
        assert payload["data"]["status"] == "ended"
        await srv.wait_status(holding["id"], 11)
        assert "was ended" in srv.emu.task_snapshot(holding["id"])["error"]


async def test_a_busy_session_bounds_its_queue(local_server: Any) -> None:
    """Past MAX_SESSION_CALLS calls running or waiting, 409 session_busy; ending the session
    fails every call still going."""
    async with local_server() as srv:
        status, payload = await run(srv, session="new", input={"sim": {"hold": True}})
        holding = payload["data"]
        session_id = holding["session_id"]
        queued = []
        for _ in range(MAX_SESSION_CALLS - 1):
            status, payload = await run(srv, session=session_id)
            assert status == 200, payload
            queued.append(payload["data"])
        status, payload = await run(srv, session=session_id)
        assert status == 409
        assert_problem(payload, 409, "session_busy")

        status, payload, _ = await call(srv, "DELETE", f"/sessions/{session_id}")
        assert payload["data"]["status"] == "ended"
        for task in [holding, *queued]:
            await srv.wait_status(task["id"], 11)
            assert "was ended" in srv.emu.task_snapshot(task["id"])["error"]


async def test_live_session_cap_is_429(local_server: Any) -> None:
    """Past `max_sessions` active sessions, `session: "new"` gets 429 with Retry-After: 1;
    ending one makes room. A refused new session leaves no task behind."""
    async with local_server(max_sessions=2) as srv:
        ids = []
        for _ in range(2):
            status, payload = await run(srv, session="new")
            ids.append(payload["data"]["session_id"])
        tasks = len(srv.emu.tasks)
        status, payload, headers = await call(
            srv, "POST", "/apps/run", {"app": "acme/echo", "input": {}, "session": "new"}
        )
        assert status == 429
        assert_problem(payload, 429, "rate_limited")
        assert headers["Retry-After"] == "1"
        assert len(srv.emu.tasks) == tasks
        status, payload = await run(srv, session=ids[0])  # calls in existing ones still run
        assert status == 200, payload
        await call(srv, "DELETE", f"/sessions/{ids[1]}")
        status, payload = await run(srv, session="new")
        assert status == 200, payload


async def test_a_new_session_refused_with_its_task_is_forgotten(local_server: Any) -> None:
    """When the first call's task is refused (the live-task cap), no session is left."""
    async with local_server(max_live_tasks=1) as srv:
        status, payload = await run(srv, input={"sim": {"hold": True}})
        assert status == 200
        status, payload = await run(srv, session="new")
        assert status == 429, payload
        assert len(srv.emu.sessions) == 0


REQUIRE = [
    {"type": "secret", "key": "OPENAI_API_KEY", "action": {"provider": "openai"}},
    {
        "type": "scope",
        "key": "gmail",
        "message": "grant gmail.send",
        "action": {
            "type": "add_scopes",
            "provider": "google",
            "provider_name": "Google",
            "scopes": ["gmail.send"],
            "scope_descriptions": {"gmail.send": "Send mail"},
        },
    },
]


async def test_requirements_not_met_is_412(local_server: Any) -> None:
    """`input.sim.require` answers 412 with the documented body; no task is created."""
    async with local_server() as srv:
        status, payload = await run(srv, input={"sim": {"require": REQUIRE}}, session="new")
        assert status == 412
        assert payload == {
            "type": "https://inference.sh/errors/requirements_not_met",
            "title": "Requirements not met",
            "status": 412,
            "detail": "secret OPENAI_API_KEY is not set",
            "success": False,
            "error": {
                "code": "requirements_not_met",
                "message": "secret OPENAI_API_KEY is not set",
            },
            "errors": [
                {
                    "type": "secret",
                    "key": "OPENAI_API_KEY",
                    "message": "secret OPENAI_API_KEY is not set",
                    "action": {"type": "add_secret", "provider": "openai"},
                },
                {
                    "type": "scope",
                    "key": "gmail",
                    "message": "grant gmail.send",
                    "action": {
                        "type": "add_scopes",
                        "provider": "google",
                        "provider_name": "Google",
                        "scopes": ["gmail.send"],
                        "scope_descriptions": {"gmail.send": "Send mail"},
                    },
                },
            ],
        }
        assert (len(srv.emu.tasks), len(srv.emu.sessions)) == (0, 0)


R0 = "input.sim.require[0]"


@pytest.mark.parametrize(
    ("require", "field"),
    [
        ("x", "input.sim.require"),
        ([{"type": "secret", "key": "K"}] * 11, "input.sim.require"),
        ([{"type": "password", "key": "K"}], f"{R0}.type"),
        ([{"type": {}, "key": "K"}], f"{R0}.type"),
        ([{"type": [], "key": "K"}], f"{R0}.type"),
        ([{"type": "secret", "key": "K", "action": {"type": {}}}], f"{R0}.action.type"),
        ([{"type": "secret"}], f"{R0}.key"),
        ([{"type": "secret", "key": "K", "extra": 1}], f"{R0}.extra"),
        ([{"type": "secret", "key": "K", "action": {"type": "x"}}], f"{R0}.action.type"),
        ([{"type": "scope", "key": "K", "action": {"scopes": [1]}}], f"{R0}.action.scopes"),
    ],
)  # fmt: skip
async def test_malformed_requirements_are_400(local_server: Any, require: Any, field: str) -> None:
    """The `sim.require` knob is validated and capped (at most 10 requirements)."""
    async with local_server() as srv:
        status, payload = await run(srv, input={"sim": {"require": require}})
        assert status == 400
        assert f"field '{field}'" in payload["detail"]


async def test_registered_app_with_requirements_is_412_until_cleared(local_server: Any) -> None:
    """`register_app(ref, fn, requires=[...])` makes its runs 412; registering it again
    without them clears them."""

    async def app(input: dict[str, Any], ctx: AppContext) -> Any:
        return {"ok": True}

    emu = Emulator()
    emu.register_app("acme/mail", app, requires=[{"type": "credential", "key": "google"}])
    async with local_server(emu) as srv:
        status, payload = await run(srv, app="acme/mail@v2")
        assert status == 412
        assert payload["errors"] == [
            {
                "type": "credential",
                "key": "google",
                "message": "integration google is not connected",
                "action": {"type": "connect"},
            }
        ]
        emu.register_app("acme/mail", app)
        status, payload = await run(srv, app="acme/mail")
        assert status == 200, payload
    with pytest.raises(ValueError, match="requires"):
        emu.register_app("acme/mail", app, requires=[{"type": "nope", "key": "k"}])


OFFICIAL_SCRIPT = """
import sys
from inferencesh import APIError, Inference, RequirementsNotMetError

client = Inference(api_key="k", base_url=sys.argv[1])
session = client.session("acme/echo")
print("session", session.session_id.startswith("sess_"))
result = session.call("greet", {"prompt": "hi"})
print("call", result["status"], result["output"]["function"],
      result.get("session_id") == session.session_id)
info = session.info()
print("info", info["status"], info["call_count"], info["app_id"])
print("keepalive", session.keepalive()["status"])
print("listed", [s["id"] for s in client.sessions.list()] == [session.session_id])
session.end()
print("ended", client.sessions.get(session.session_id)["status"])
try:
    client.run({"app": "acme/echo", "input": {}, "session": session.session_id})
except APIError as exc:
    print("after", exc.status_code, exc.code)
try:
    client.run({"app": "acme/echo", "input": {"sim": {"require": [
        {"type": "secret", "key": "OPENAI_API_KEY", "action": {"provider": "openai"}}]}}})
except RequirementsNotMetError as exc:
    error = exc.errors[0]
    print("412", error.type, error.key, error.action.type, error.action.provider, exc)
"""


def test_official_client_sessions(official: Path) -> None:
    """The official 0.36.0 client's `client.session(app)`, a call on it, info, keepalive,
    list and end work against the emulator, and it reads the 412 as RequirementsNotMetError."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERENCE_", "PYTHON"))}
    env["PYTHONPATH"] = str(official)  # first on sys.path: its `inferencesh` shadows ours
    with serve_in_thread(fast_emulator()) as server:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(OFFICIAL_SCRIPT), server],
            capture_output=True, text=True, env=env, timeout=120, check=False,
            cwd=official.parent,
        )  # fmt: skip
    assert 0 == proc.returncode, proc.stderr
    assert [
        "session True",
        "call 10 greet True",
        "info active 2 acme/echo",
        "keepalive active",
        "listed True",
        "ended ended",
        "after 410 session_ended",
        "412 secret OPENAI_API_KEY add_secret openai secret OPENAI_API_KEY is not set",
    ] == proc.stdout.splitlines()
