"""The emulator's HTTP surface with plain aiohttp: envelope, errors, auth and fault injection."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from inferencesh.local import EmulatorOptions, Faults

pytestmark = pytest.mark.anyio


async def problem_of(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    """Assert a problem+json answer with the legacy error object; return its body."""
    assert resp.status == status
    assert resp.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["type"] == f"https://inference.sh/errors/{code}"
    assert body["status"] == status
    assert body["success"] is False
    assert body["error"] == {"code": code, "message": body["detail"]}
    assert isinstance(body["title"], str)
    assert body["title"]
    assert "Traceback" not in body["detail"]
    return body


async def test_success_envelope(local_server: Any) -> None:
    """Success answers are 200 application/json {success, data, messages}."""
    async with local_server() as srv:
        async with srv.session.post(
            "/apps/run",
            json={"app": "a/b", "input": {"x": 1}},
            headers={"User-Agent": "odd/1.0", "X-API-Version": "2"},
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            body = await resp.json()
        assert body["success"] is True
        assert body["messages"] == []
        assert body["data"]["input"] == {"x": 1}
        async with srv.session.get(f"/tasks/{body['data']['id']}") as resp:
            got = await resp.json()
            assert got["success"] is True
            assert got["data"]["id"] == body["data"]["id"]


async def test_missing_key_is_401(local_server: Any) -> None:
    """No key, an empty key or another scheme is 401 on every endpoint."""
    async with local_server() as srv, aiohttp.ClientSession(srv.url) as anonymous:
        task = await srv.create()
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
            async with anonymous.post("/apps/run", json={"app": "a/b"}, headers=headers) as resp:
                await problem_of(resp, 401, "unauthorized")
            async with anonymous.get(f"/tasks/{task['id']}", headers=headers) as resp:
                await problem_of(resp, 401, "unauthorized")
            async with anonymous.get(f"/tasks/{task['id']}/stream", headers=headers) as resp:
                await problem_of(resp, 401, "unauthorized")
            async with anonymous.post(f"/tasks/{task['id']}/cancel", headers=headers) as resp:
                await problem_of(resp, 401, "unauthorized")


async def test_any_key_without_api_key_option(local_server: Any) -> None:
    """Without api_key, any non-empty bearer key is accepted."""
    async with local_server() as srv, aiohttp.ClientSession(srv.url) as other:
        for key in ("x", "inf_live_something", "another key"):
            headers = {"Authorization": f"Bearer {key}"}
            async with other.post("/apps/run", json={"app": "a/b"}, headers=headers) as resp:
                assert resp.status == 200


async def test_configured_api_key_is_the_only_one(local_server: Any) -> None:
    """With api_key set, a wrong key is 401 and the right one works."""
    async with local_server(api_key="s3cret") as srv:
        async with srv.session.post("/apps/run", json={"app": "a/b"}) as resp:
            body = await problem_of(resp, 401, "unauthorized")
            assert "invalid" in body["detail"]
        good = {"Authorization": "Bearer s3cret"}
        async with srv.session.post("/apps/run", json={"app": "a/b"}, headers=good) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "'body'"),
        (b"\xff\xfe\x00garbage", "'body'"),
        (b"", "'body'"),
        (b"[1, 2]", "'body'"),
        (b'"app"', "'body'"),
        (b"{}", "'app'"),
        (b'{"app": null}', "'app'"),
        (b'{"app": 5}', "'app'"),
        (b'{"app": "noslash"}', "'app'"),
        (b'{"app": "a/b@"}', "'app'"),
        (b'{"app": "a/b/c"}', "'app'"),
        (b'{"app": "a/b:"}', "'app'"),
        (b'{"app": " a/b"}', "'app'"),
        (b'{"app": "a/b", "input": [1]}', "'input'"),
        (b'{"app": "a/b", "input": "x"}', "'input'"),
        (b'{"app": "a/b", "session": 5}', "'session'"),
        (b'{"app": "a/b", "input": {"sim": 3}}', "'input.sim'"),
        (b'{"app": "a/b", "input": {"sim": {"steps": "x"}}}', "'input.sim.steps'"),
        (b'{"app": "a/b", "input": {"sim": {"steps": -1}}}', "'input.sim.steps'"),
        (b'{"app": "a/b", "input": {"sim": {"step_delay": 1e999}}}', "'input.sim.step_delay'"),
        (b'{"app": "a/b", "input": {"sim": {"hold": "yes"}}}', "'input.sim.hold'"),
        (b'{"app": "a/b", "input": {"sim": {"hold_at": "completed"}}}', "'input.sim.hold_at'"),
        (b'{"app": "a/b", "input": {"sim": {"bogus": 1}}}', "'input.sim.bogus'"),
        (b"[" * 100_000, "'body'"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    local_server: Any, body: bytes, field: str
) -> None:
    """Malformed requests get 400 problem+json whose detail names the offending field."""
    async with local_server() as srv:
        headers = {"Content-Type": "application/json"}
        async with srv.session.post("/apps/run", data=body, headers=headers) as resp:
            problem = await problem_of(resp, 400, "invalid_request")
        assert f"field {field}" in problem["detail"]
        assert problem["title"] == "Bad Request"


async def test_unknown_task_ids_are_404(local_server: Any) -> None:
    """GET, cancel and stream of an unknown id answer 404 problem+json."""
    async with local_server() as srv:
        async with srv.session.get("/tasks/task_nope") as resp:
            body = await problem_of(resp, 404, "not_found")
            assert body["detail"] == "task task_nope not found"
        async with srv.session.post("/tasks/task_nope/cancel") as resp:
            await problem_of(resp, 404, "not_found")
        for accept in ("text/event-stream", "application/x-ndjson"):
            async with srv.session.get(
                "/tasks/task_nope/stream", headers={"Accept": accept}
            ) as resp:
                await problem_of(resp, 404, "not_found")


async def test_unknown_routes_and_methods(local_server: Any) -> None:
    """Unknown paths are 404 and wrong methods 405, both problem+json."""
    async with local_server() as srv:
        async with srv.session.get("/nowhere") as resp:
            await problem_of(resp, 404, "not_found")
        async with srv.session.get("/apps/run") as resp:
            await problem_of(resp, 405, "method_not_allowed")
            assert "POST" in resp.headers["Allow"]
        async with srv.session.delete("/tasks/task_x/stream") as resp:
            await problem_of(resp, 405, "method_not_allowed")


async def test_fail_next_503_then_normal(local_server: Any) -> None:
    """fail_next answers the next K requests with the status, before auth; then all is normal."""
    async with local_server() as srv, aiohttp.ClientSession(srv.url) as anonymous:
        srv.emu.faults.fail_next(2, status=503)
        assert srv.emu.faults.pending_failures == 2
        async with srv.session.post("/apps/run", json={"app": "a/b"}) as resp:
            await problem_of(resp, 503, "service_unavailable")
            assert "Retry-After" not in resp.headers
        async with anonymous.get("/tasks/whatever") as resp:  # no key: the fault comes first
            await problem_of(resp, 503, "service_unavailable")
        assert srv.emu.faults.pending_failures == 0
        async with anonymous.get("/tasks/whatever") as resp:
            await problem_of(resp, 401, "unauthorized")
        task = await srv.create()
        assert task["status"] == 1


async def test_fail_next_429_with_retry_after(local_server: Any) -> None:
    """A 429 fault carries Retry-After and the rate_limited code; streams are affected too."""
    async with local_server() as srv:
        task = await srv.create()
        srv.emu.faults.fail_next(1, status=429, retry_after=2)
        async with srv.session.get(f"/tasks/{task['id']}/stream") as resp:
            await problem_of(resp, 429, "rate_limited")
            assert resp.headers["Retry-After"] == "2"
        srv.emu.faults.fail_next(1, status=429, retry_after=0)
        async with srv.session.get(f"/tasks/{task['id']}") as resp:
            await problem_of(resp, 429, "rate_limited")
            assert resp.headers["Retry-After"] == "0"
        async with srv.session.get(f"/tasks/{task['id']}") as resp:
            assert resp.status == 200


async def test_delay_holds_every_answer(local_server: Any) -> None:
    """faults.delay delays responses; setting it back to 0 removes the delay."""
    async with local_server(delay=0.3) as srv:
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = await srv.create()
        assert loop.time() - started >= 0.3
        srv.emu.faults.delay = 0.0
        started = loop.time()
        await srv.get(task["id"])
        assert loop.time() - started < 0.3


def test_fault_and_option_validation() -> None:
    """Bad fault settings and options are refused with ValueError/TypeError."""
    faults = Faults()
    with pytest.raises(ValueError, match="status"):
        faults.fail_next(1, status=200)
    with pytest.raises(ValueError, match="count"):
        faults.fail_next(-1)
    with pytest.raises(ValueError, match="retry_after"):
        faults.fail_next(1, retry_after=-1)
    with pytest.raises(ValueError, match="retry_after"):
        faults.fail_next(1, retry_after=0.5)  # type: ignore[arg-type]  # delta-seconds are whole
    with pytest.raises(ValueError, match="drop_after"):
        faults.drop_after = 0
    with pytest.raises(ValueError, match="delay"):
        faults.delay = -0.5
    faults.fail_next(2, status=500)
    faults.drop_after = 3
    faults.clear()
    assert (faults.pending_failures, faults.drop_after, faults.delay) == (0, None, 0.0)
    with pytest.raises(ValueError, match="sim_steps"):
        EmulatorOptions(sim_steps=0)
    with pytest.raises(ValueError, match="api_key"):
        EmulatorOptions(api_key="")
    with pytest.raises(TypeError, match="heartbeat_interval"):
        EmulatorOptions(heartbeat_interval=float("nan"))
    assert "s3cret" not in repr(EmulatorOptions(api_key="s3cret"))
