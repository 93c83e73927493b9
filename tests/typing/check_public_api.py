# pyright: strict
"""What a type checker sees of the public API: every line is checked, none is ever run.

`scripts/test` runs `mypy --strict` and `pyright` (strict, by the comment above) on this folder.
Each `assert_type` states the type a call has for its users; a change to an annotation that
would turn a result into `Any`, or make a documented call match no overload, fails the check.
The module name does not start with `test_`, so pytest never collects it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal, assert_type

import attrs

import inferencesh
from inferencesh import (
    Agent,
    AgentEvent,
    APIError,
    APIStatusError,
    AsyncAgent,
    AsyncBatch,
    AsyncInference,
    AsyncSession,
    BatchItem,
    BatchProgress,
    ChatMessage,
    File,
    Inference,
    ItemStream,
    MessageEvent,
    Progress,
    RateLimitError,
    RequirementError,
    RequirementsNotMetError,
    RetriesExhaustedError,
    RetryPolicy,
    Session,
    SessionInfo,
    SetupAction,
    StreamingOptions,
    SyncBatch,
    SyncStream,
    TaskCancelledError,
    TaskError,
    TaskFailedError,
    TaskOutcome,
    TaskStatus,
    TaskStream,
    TaskUpdate,
    ToolCall,
    TransferProgress,
    async_inference,
    inference,
)

CONFIG = {"app": "infsh/flux-schnell", "input": {"prompt": "A sunset timelapse"}}


def blocking_client(flag: bool) -> None:
    client = inference(api_key="inf_...", base_url="http://127.0.0.1:8080", timeout=30)
    assert_type(client, Inference)
    assert_type(client.base_url, str)
    assert_type(client.timeout, float | None)
    assert_type(client.streaming_options, StreamingOptions)

    assert_type(client.run(CONFIG), TaskUpdate)
    assert_type(client.run(CONFIG, stream=False), TaskUpdate)
    assert_type(client.run(CONFIG, wait=False), TaskUpdate)
    assert_type(client.run(CONFIG, timeout=None), TaskUpdate)
    assert_type(client.run(CONFIG, stream=True), SyncStream[TaskUpdate])
    assert_type(client.run(CONFIG, stream=flag), SyncStream[TaskUpdate] | TaskUpdate)
    options = StreamingOptions(max_retries=3, retry_delay=1.0, chunk_size=1024)
    for update in client.run(CONFIG, stream=True, options=options, cancel_on_close=True):
        assert_type(update, TaskUpdate)
    with client.run(CONFIG, stream=True) as stream:
        assert_type(stream, SyncStream[TaskUpdate])
        assert_type(next(stream), TaskUpdate)
        stream.close()

    assert_type(client.get_task("task_1"), TaskUpdate)
    assert_type(client.wait_for_completion("task_1", timeout=120), TaskUpdate)
    assert_type(client.stream_task("task_1", options), SyncStream[TaskUpdate])
    assert_type(client.cancel_task("task_1"), None)
    assert_type(client.cancel("task_1"), None)
    assert_type(client.delete_task("task_1", files=True), None)
    assert_type(client.task_files("task_1", role="output"), list[File])

    with client:
        pass
    assert_type(client.closed, bool)


async def async_client(flag: bool) -> None:
    client = async_inference(api_key="inf_...", max_connections=None)
    assert_type(client, AsyncInference)

    assert_type(await client.run(CONFIG), TaskUpdate)
    assert_type(await client.run(CONFIG, stream=False), TaskUpdate)
    assert_type(await client.run(CONFIG, wait=False), TaskUpdate)
    assert_type(client.run(CONFIG, stream=True), TaskStream)
    either = client.run(CONFIG, stream=flag)
    if isinstance(either, TaskStream):
        async for update in either:
            assert_type(update, TaskUpdate)
    else:
        assert_type(await either, TaskUpdate)
    async with client.run(CONFIG, stream=True) as stream:
        assert_type(stream.task_id, str | None)
        async for update in stream:
            assert_type(update, TaskUpdate)

    assert_type(await client.get_task("task_1"), TaskUpdate)
    assert_type(await client.wait_for_completion("task_1", timeout=None), TaskUpdate)
    assert_type(client.stream_task("task_1", timeout=60), TaskStream)
    assert_type(await client.cancel_task("task_1"), None)
    assert_type(await client.cancel("task_1"), None)
    assert_type(await client.task_files("task_1"), list[File])
    await client.aclose()


def update_reads(update: TaskUpdate) -> None:
    # Attributes.
    assert_type(update.id, str)
    assert_type(update.status, TaskStatus)
    assert_type(update.status.code, int)
    assert_type(update.status.is_terminal, bool)
    assert_type(update.logs, tuple[str, ...])
    assert_type(update.progress, Progress | None)
    assert_type(update.output, Any)
    assert_type(update.session_id, str | None)
    assert_type(update.files, tuple[File, ...])
    assert_type(update.is_terminal, bool)
    # Dict-style reads of the documented keys, typed per key.
    assert_type(update["id"], str)
    assert_type(update["status"], TaskStatus)
    assert_type(update.get("status"), TaskStatus)
    assert_type(update["logs"], tuple[str, ...])
    assert_type(update.get("logs"), tuple[str, ...])
    assert_type(update["progress"], Progress)
    assert_type(update.get("progress"), Progress | None)
    assert_type(update["progress"]["current"], float)
    assert_type(update["progress"].get("total"), float)
    assert_type(update["session_id"], str)
    assert_type(update.get("session_id"), str | None)
    assert_type(update["output"], Any)
    assert_type(update.get("partial_output"), Any)
    assert_type(update.get("error"), Any)
    # Any other key reads the raw payload.
    assert_type(update["created_at"], Any)
    assert_type(update.get("created_at", ""), Any)
    key: str = "status" if update.logs else "logs"
    assert_type(update.get(key), Any)
    assert_type("logs" in update, bool)
    assert_type(update.keys(), list[str])
    # The JSON form.
    assert_type(update.to_dict(), dict[str, Any])
    assert_type(json.dumps(update.to_dict()), str)
    assert_type(update.progress.to_dict() if update.progress else None, dict[str, Any] | None)
    assert_type(attrs.evolve(update, logs=()), TaskUpdate)


def statuses(update: TaskUpdate) -> None:
    assert_type(TaskStatus.parse(10), TaskStatus)
    assert_type(update.status == "completed", bool)
    assert_type(update.status is TaskStatus.COMPLETED, bool)
    assert_type(update.status.code == 10, bool)
    assert_type(update["status"] in ("completed", "failed"), bool)
    assert_type(update.status.rank, int)


def agents(client: Inference, aclient: AsyncInference) -> None:
    agent = client.agent("my-org/assistant@latest")
    assert_type(agent, Agent)
    assert_type(agent.chat_id, str | None)

    def on_message(event: MessageEvent) -> None:
        assert_type(event.type, Literal["text", "thinking"])
        assert_type(event["content"], str)
        assert_type(event.get("type"), Literal["text", "thinking"])
        assert_type(event.get("message_id"), str)
        assert_type(event.to_dict(), dict[str, Any])

    def on_tool_call(call: ToolCall) -> None:
        assert_type(call.id, str)
        assert_type(call["name"], str)
        assert_type(call.args, Any)
        agent.submit_tool_result(call.id, {"ok": True})

    reply = agent.send_message("Hi", on_message=on_message, on_tool_call=on_tool_call)
    assert_type(reply, ChatMessage)
    assert_type(reply.text, str)
    assert_type(reply["text"], str)
    assert_type(reply.get("status"), str)
    assert_type(reply["tool_calls"], tuple[ToolCall, ...])
    assert_type(reply.to_dict(), dict[str, Any])
    for event in agent.stream("Hello", files=[Path("photo.png")]):
        assert_type(event, MessageEvent | ToolCall | ChatMessage)
    assert_type(agent.stream("Hello"), SyncStream[AgentEvent])
    assert_type(agent.stop(), None)

    async_agent = aclient.agent("my-org/assistant@latest", chat_id="chat_1")
    assert_type(async_agent, AsyncAgent)
    assert_type(async_agent.stream("Hello"), ItemStream[AgentEvent])


async def async_agents(agent: AsyncAgent) -> None:
    async def on_message(event: MessageEvent) -> None:
        assert_type(event.content, str)

    assert_type(await agent.send_message("Hi", on_message=on_message), ChatMessage)
    async for event in agent.stream("Hello"):
        assert_type(event, MessageEvent | ToolCall | ChatMessage)
    assert_type(await agent.submit_tool_result("call_1", "42"), None)


def sessions(client: Inference, flag: bool) -> None:
    with client.session("acme/upscaler", idle_timeout=60) as session:
        assert_type(session, Session)
        assert_type(session.id, str)
        assert_type(session.run({"image": "x"}), TaskUpdate)
        assert_type(session.run({"image": "x"}, function="upscale"), TaskUpdate)
        assert_type(session.run({"image": "x"}, stream=True), SyncStream[TaskUpdate])
        assert_type(session.run({}, stream=flag), SyncStream[TaskUpdate] | TaskUpdate)
        assert_type(session.info(), SessionInfo)
        assert_type(session.keepalive().active, bool)
    assert_type(client.get_session("sess_1"), SessionInfo)
    assert_type(client.list_sessions(), list[SessionInfo])


async def async_sessions(client: AsyncInference, flag: bool) -> None:
    async with client.session("acme/upscaler") as session:
        assert_type(session, AsyncSession)
        assert_type(await session.run({"image": "x"}), TaskUpdate)
        assert_type(session.run({"image": "x"}, stream=True), TaskStream)
        assert_type(session.run({}, stream=flag), TaskStream | Awaitable[TaskUpdate])
        assert_type(await session.info(), SessionInfo)
    assert_type(await client.list_sessions(), list[SessionInfo])


def batches(client: Inference, configs: list[dict[str, Any]]) -> None:
    batch = client.run_many(configs, concurrency=2, fail_fast=False)
    assert_type(batch, SyncBatch)
    for outcome in batch:
        assert_type(outcome, TaskOutcome)
        assert_type(outcome.ok, bool)
        assert_type(outcome.index, int)
        assert_type(outcome.task, TaskUpdate | None)
        assert_type(outcome.task_id, str | None)
        assert_type(outcome.error, inferencesh.InferenceshError | None)
    assert_type(batch.progress, BatchProgress)
    assert_type(batch.progress.eta, float | None)
    assert_type(batch.results(), list[TaskOutcome])
    items = [BatchItem(0, configs[0], task_id="task_1")]
    assert_type(client.run_many(items), SyncBatch)


async def async_batches(client: AsyncInference, configs: list[dict[str, Any]]) -> None:
    async with client.run_many(configs) as batch:
        assert_type(batch, AsyncBatch)
        async for outcome in batch:
            assert_type(outcome, TaskOutcome)
        assert_type(await batch.results(), list[TaskOutcome])


def files(client: Inference, update: TaskUpdate) -> None:
    def progress(state: TransferProgress) -> None:
        assert_type(state.done, int)

    uploaded = client.upload_file(b"bytes", filename="a.bin", progress=progress)
    assert_type(uploaded, File)
    assert_type(uploaded.uri, str)
    assert_type(uploaded.content_type, str | None)
    assert_type(uploaded["uri"], Any)
    assert_type(uploaded.to_dict(), dict[str, Any])
    for file in update.files:
        assert_type(client.download(file, "out/"), Path)
    assert_type(client.download("https://example.com/a.png", Path("a.png")), Path)


def errors(exc: Exception) -> None:
    if isinstance(exc, APIStatusError):
        assert_type(exc.status, int)
        assert_type(exc.status_code, int)
        assert_type(exc.code, str | None)
        assert_type(exc.message, str)
        assert_type(exc.body, Any)
        assert_type(exc.retryable, bool)
    if isinstance(exc, APIError):
        assert_type(exc, APIStatusError)
    if isinstance(exc, RateLimitError):
        assert_type(exc.retry_after, float | None)
    if isinstance(exc, RequirementsNotMetError):
        assert_type(exc.errors, list[RequirementError])
        assert_type(exc.errors[0].action, SetupAction | None)
    if isinstance(exc, TaskError):
        assert_type(exc.task, TaskUpdate)
        assert_type(exc.task_id, str)
    if isinstance(exc, TaskFailedError):
        assert_type(exc.error, Any)
    if isinstance(exc, TaskCancelledError):
        assert_type(exc.task.status, TaskStatus)
    if isinstance(exc, RetriesExhaustedError):
        assert_type(exc.attempts, int)


def options() -> None:
    streaming = StreamingOptions(max_retries=3, retry_delay=1.0, total_timeout=300)
    assert_type(streaming.total_timeout, float | None)
    assert_type(streaming.chunk_size, int)
    assert_type(attrs.evolve(streaming, idle_timeout=None), StreamingOptions)
    assert_type(RetryPolicy(max_retries=2).max_retries, int)
    client = AsyncInference(streaming_options=streaming, retry=RetryPolicy(max_retries=0))
    assert_type(client.streaming_options, StreamingOptions)
