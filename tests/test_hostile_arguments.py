"""Hostile arguments to the public API: each is a `UsageError` that names the argument, raised
before anything is sent, never a raw TypeError / AttributeError / OverflowError / ValueError,
a request to another endpoint, or a hang. Real emulator on loopback (the `server` fixture)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferencesh import (
    AsyncInference,
    Inference,
    RetryPolicy,
    StreamingOptions,
    UsageError,
)

pytestmark = pytest.mark.anyio

KEY = "sk-hostile-SECRET"
SIM = {"app": "infsh/sim", "input": {}}
HUGE = 10**400  # an int no float can hold
UNPRINTABLE = -(10**5000)  # an int whose repr raises ValueError (past 4300 digits)


async def bounded(awaitable: Any) -> Any:
    """A hang is a failure, not a stuck test run."""
    async with asyncio.timeout(10):
        return await awaitable


# -- the client's constructor ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("timeout", "30"),
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", False),
        ("timeout", float("nan")),
        pytest.param("timeout", HUGE, id="timeout-huge"),
        ("max_connections", -1),  # aiohttp's pool waited forever for a slot
        ("max_connections", 0),
        ("max_connections", "8"),
        ("max_connections", 2.5),
        ("streaming_options", "fast"),
        ("streaming_options", {}),
        ("retry", None),
        ("retry", 3),
        ("base_url", b"http://127.0.0.1"),
        ("base_url", 8080),
        ("on_messages", "print"),
    ],
)
async def test_constructor_refuses_wrong_values(server: str, name: str, value: Any) -> None:
    settings_ = {"base_url": server, name: value}
    with pytest.raises(UsageError, match=name) as caught:
        async with AsyncInference(KEY, **settings_) as client:
            await bounded(client.list_sessions())
    assert KEY not in str(caught.value)


def test_blocking_constructor_refuses_wrong_values(server: str) -> None:
    with pytest.raises(UsageError, match="retry"):
        Inference(KEY, base_url=server, retry="twice")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="timeout"):
        Inference(KEY, base_url=server, timeout="soon")  # type: ignore[arg-type]


# -- numbers no float can hold ---------------------------------------------------------------


@pytest.mark.parametrize("value", [HUGE, -HUGE, UNPRINTABLE], ids=["huge", "-huge", "unprintable"])
@pytest.mark.parametrize(
    "field", ["retry_delay", "retry_backoff", "max_retry_delay", "retry_jitter", "max_retry_after"]
)
def test_retry_policy_refuses_ints_too_large_for_a_float(field: str, value: int) -> None:
    with pytest.raises(UsageError, match=field):
        RetryPolicy(**{field: value})


@pytest.mark.parametrize("value", [HUGE, -HUGE, UNPRINTABLE], ids=["huge", "-huge", "unprintable"])
@pytest.mark.parametrize(
    "field", ["connect_timeout", "headers_timeout", "idle_timeout", "total_timeout"]
)
def test_streaming_options_refuse_huge_ints(field: str, value: int) -> None:
    with pytest.raises(UsageError, match=field):
        StreamingOptions(**{field: value})


def test_counts_too_long_to_print_are_still_said() -> None:
    """The message showed the value with `!r`, which raises ValueError past 4300 digits."""
    with pytest.raises(UsageError, match="chunk_size"):
        StreamingOptions(chunk_size=UNPRINTABLE)
    with pytest.raises(UsageError, match="max_retries"):
        RetryPolicy(max_retries=UNPRINTABLE)
    with pytest.raises(UsageError, match="agent reference"):
        AsyncInference(KEY, base_url="http://127.0.0.1:9").agent(UNPRINTABLE)  # type: ignore[arg-type]


@given(
    st.one_of(
        st.integers(min_value=2**1024),
        st.integers(max_value=0),
        st.floats(allow_nan=True).filter(lambda x: not 0 < x < float("inf")),
        st.text(max_size=5),
        st.binary(max_size=5),
        st.booleans(),
    )
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_wrong_timeout_is_a_usage_error(value: Any) -> None:
    with pytest.raises(UsageError, match="timeout"):
        AsyncInference(KEY, base_url="http://127.0.0.1:9", timeout=value)
    with pytest.raises(UsageError, match="total_timeout"):
        StreamingOptions(total_timeout=value)


async def test_a_call_timeout_too_large_for_a_float(server: str) -> None:
    async with AsyncInference(KEY, base_url=server) as client:
        with pytest.raises(UsageError, match="timeout"):
            await bounded(client.get_task("task_1", timeout=HUGE))
        with pytest.raises(UsageError, match="timeout"):
            await bounded(client.run(SIM, timeout=-HUGE))
        with pytest.raises(UsageError, match="timeout"):
            client.stream_task("task_1", timeout=UNPRINTABLE)
        with pytest.raises(UsageError, match="idle_timeout"):
            client.session("infsh/sim", idle_timeout=HUGE)
        with pytest.raises(UsageError, match="app reference"):
            client.session(UNPRINTABLE)  # type: ignore[arg-type]


# -- `options=` must be StreamingOptions -----------------------------------------------------


async def test_options_must_be_streaming_options(server: str) -> None:
    async with AsyncInference(KEY, base_url=server) as client:
        with pytest.raises(UsageError, match="options"):
            await bounded(client.run(SIM, options="fast"))  # type: ignore[call-overload]
        with pytest.raises(UsageError, match="options"):
            client.run(SIM, stream=True, options=5)  # type: ignore[call-overload]
        with pytest.raises(UsageError, match="options"):
            client.stream_task("task_1", {"idle_timeout": 1})  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="options"):
            client.run_many([SIM], options="fast")  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="options"):
            client.agent("infsh/echo", options=object())  # type: ignore[arg-type]


# -- ids that go into URL paths --------------------------------------------------------------


@pytest.mark.parametrize("bad", [".", ".."])
async def test_dot_segment_ids_do_not_reach_another_endpoint(server: str, bad: str) -> None:
    """`/tasks/..` is `/` to a URL: the call went to another endpoint of the API."""
    async with AsyncInference(KEY, base_url=server) as client:
        with pytest.raises(UsageError, match="task_id"):
            await bounded(client.get_task(bad))
        with pytest.raises(UsageError, match="task_id"):
            await bounded(client.cancel_task(bad))
        with pytest.raises(UsageError, match="task_id"):
            await bounded(client.delete_task(bad))
        with pytest.raises(UsageError, match="session id"):
            await bounded(client.get_session(bad))
        with pytest.raises(UsageError, match="chat_id"):
            client.agent("infsh/echo", chat_id=bad)
        agent = client.agent("infsh/echo", chat_id="chat_1")
        with pytest.raises(UsageError, match="call_id"):
            await bounded(agent.submit_tool_result(bad, "done"))


@pytest.mark.parametrize("bad", ["\ud800", "a\nb", "\x00"])
async def test_tool_call_ids_are_checked(server: str, bad: str) -> None:
    """A lone surrogate raised UnicodeEncodeError from `quote`."""
    async with AsyncInference(KEY, base_url=server) as client:
        agent = client.agent("infsh/echo", chat_id="chat_1")
        with pytest.raises(UsageError, match="call_id"):
            await bounded(agent.submit_tool_result(bad, "done"))


# -- files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["bad\x00name", Path("bad\x00name"), "\ud800.txt"])
async def test_upload_of_an_impossible_path(server: str, path: Any) -> None:
    async with AsyncInference(KEY, base_url=server) as client:
        with pytest.raises(UsageError, match="cannot upload"):
            await bounded(client.upload_file(path))
        with pytest.raises(UsageError, match="cannot upload"):
            await bounded(client.run({"app": "infsh/sim", "input": {"f": Path(path)}}))


@pytest.mark.parametrize(
    ("name", "value"), [("filename", True), ("filename", {}), ("content_type", 7)]
)
async def test_upload_names_must_be_strings(server: str, name: str, value: Any) -> None:
    async with AsyncInference(KEY, base_url=server) as client:
        with pytest.raises(UsageError, match=name):
            await bounded(client.upload_file(b"abc", **{name: value}))


# -- callbacks ---------------------------------------------------------------------------------


async def test_callbacks_must_be_callable(server: str, tmp_path: Path) -> None:
    async with AsyncInference(KEY, base_url=server) as client:
        with pytest.raises(UsageError, match="progress"):
            await bounded(client.upload_file(b"abc", progress="bar"))  # type: ignore[arg-type]
        uploaded = await bounded(client.upload_file(b"abc", filename="a.txt"))
        with pytest.raises(UsageError, match="progress"):
            await bounded(client.download(uploaded, tmp_path, progress=1))  # type: ignore[arg-type]
        for name in ("on_update", "on_submit"):
            with pytest.raises(UsageError, match=name):
                await bounded(client.run_many([SIM], **{name: "log"}).results())
        agent = client.agent("infsh/echo")
        for name in ("on_message", "on_tool_call"):
            with pytest.raises(UsageError, match=name):
                await bounded(agent.send_message("hi", **{name: "print"}))


def test_blocking_callbacks_must_be_callable(server: str, tmp_path: Path) -> None:
    """The blocking client wrapped any callback in a callable of its own, so the wrong one
    raised TypeError only when first called, mid-transfer."""
    with Inference(KEY, base_url=server) as client:
        with pytest.raises(UsageError, match="progress"):
            client.upload_file(b"abc", progress="bar")  # type: ignore[arg-type]
        uploaded = client.upload_file(b"abc", filename="a.txt")
        with pytest.raises(UsageError, match="progress"):
            client.download(uploaded, tmp_path, progress=[])  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="on_message"):
            client.agent("infsh/echo").send_message("hi", on_message=3)  # type: ignore[arg-type]


# -- run_many ----------------------------------------------------------------------------------


@pytest.mark.parametrize("configs", [None, 5, object()])
async def test_run_many_of_something_not_iterable(server: str, configs: Any) -> None:
    async with AsyncInference(KEY, base_url=server) as client:
        with pytest.raises(UsageError, match="iterable"):
            await bounded(client.run_many(configs).results())


@pytest.mark.parametrize("total", ["3", -1, 2.5, True])
async def test_run_many_total_is_a_count(server: str, total: Any) -> None:
    async with AsyncInference(KEY, base_url=server) as client:
        with pytest.raises(UsageError, match="total"):
            client.run_many([SIM], total=total)
