# pyright: strict
# ruff: noqa: RET503, RET504  (the document's code, kept as it is written)
"""The seed document's examples (tests/seed_streaming_reference.md) type-check as written.

Each section's code is kept as the document has it; only the functions it defines are given
annotations (strict checking asks for them) and its free names (`config`, `should_cancel`,
`execute_tool`) become parameters. The `assert_type` lines say what a reader of the document
gets from each dict-style read. Checked by `scripts/test`, never run.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any, assert_type

from inferencesh import (
    ChatMessage,
    MessageEvent,
    Progress,
    StreamingOptions,
    TaskStatus,
    TaskUpdate,
    ToolCall,
    async_inference,
    inference,
)


def basic_streaming() -> None:
    client = inference(api_key="inf_...")

    for update in client.run(
        {"app": "google/veo-3-1-fast", "input": {"prompt": "A sunset timelapse"}}, stream=True
    ):
        print(f"Status: {update['status']}")
        assert_type(update["status"], TaskStatus)


def handling_different_update_types(config: dict[str, Any]) -> None:
    client = inference()
    for update in client.run(config, stream=True):
        status = update.get("status")
        assert_type(status, TaskStatus)

        # Task state changes
        if status == "queued":
            print("Task queued, waiting for worker...")
        elif status == "running":
            print("Task is running...")
        elif status == "completed":
            print("Done!")
            print(f"Output: {update.get('output')}")
        elif status == "failed":
            print(f"Error: {update.get('error')}")

        # Progress logs
        if update.get("logs"):
            for log in update["logs"]:
                assert_type(log, str)
                print(f"  Log: {log}")

        # Partial outputs
        if update.get("partial_output"):
            print(f"  Partial: {update['partial_output']}")


def progress_tracking_with_ui(config: dict[str, Any]) -> None:
    client = inference()

    def progress_bar(current: float, total: float, width: int = 50) -> None:
        filled = int(width * current / total)
        bar = "█" * filled + "░" * (width - filled)
        percent = current / total * 100
        sys.stdout.write(f"\r[{bar}] {percent:.1f}%")
        sys.stdout.flush()

    for update in client.run(config, stream=True):
        if update.get("progress"):
            assert_type(update.get("progress"), Progress | None)
            progress_bar(update["progress"]["current"], update["progress"]["total"])

        if update.get("status") == "completed":
            print("\n✓ Complete!")


def streaming_with_timeout(config: dict[str, Any]) -> None:
    client = inference()
    start = time.time()
    timeout = 300  # 5 minutes

    for update in client.run(config, stream=True):
        if time.time() - start > timeout:
            print("Timeout reached")
            break
        print(f"Status: {update['status']}")
        if update.get("status") in ["completed", "failed"]:
            break


def async_streaming() -> None:
    async def stream_task() -> Any:
        client = async_inference(api_key="inf_...")
        async for update in client.run(
            {"app": "google/veo-3-1-fast", "input": {"prompt": "Ocean waves"}}, stream=True
        ):
            print(f"Status: {update['status']}")
            if update.get("status") == "completed":
                return update.get("output")

    result = asyncio.run(stream_task())
    print(result)


def agent_streaming(execute_tool: Callable[[str, Any], Any]) -> None:
    client = inference()
    agent = client.agent("my-org/assistant@latest")

    def on_message(msg: MessageEvent) -> None:
        if msg.get("content"):
            # Stream text as it arrives
            print(msg["content"], end="", flush=True)
        if msg.get("type") == "thinking":
            print(f"\n[Thinking: {msg.get('content')}]")

    def on_tool_call(call: ToolCall) -> None:
        print(f"\n[Calling tool: {call.name}]")
        result = execute_tool(call.name, call.args)
        agent.submit_tool_result(call.id, result)

    response = agent.send_message(
        "Explain quantum entanglement", on_message=on_message, on_tool_call=on_tool_call
    )
    assert_type(response, ChatMessage)


def reconnection_handling(config: dict[str, Any]) -> None:
    client = inference(api_key="inf_...")

    options = StreamingOptions(
        max_retries=3,
        retry_delay=1.0,  # seconds
        chunk_size=1024,
    )

    for update in client.run(config, stream=True, options=options):
        print(update)


def multiple_streams_in_parallel() -> None:
    async def run_parallel() -> list[Any]:
        client = async_inference(api_key="inf_...")

        configs = [
            {"app": "infsh/flux-schnell", "input": {"prompt": "A mountain"}},
            {"app": "infsh/flux-schnell", "input": {"prompt": "An ocean"}},
            {"app": "infsh/flux-schnell", "input": {"prompt": "A forest"}},
        ]

        async def stream_one(config: dict[str, Any], index: int) -> Any:
            async for update in client.run(config, stream=True):
                print(f"[{index}] {update['status']}")
                if update.get("status") == "completed":
                    return update.get("output")

        results = await asyncio.gather(*[stream_one(c, i) for i, c in enumerate(configs)])
        return results

    results = asyncio.run(run_parallel())
    print(results)


def cancelling_a_stream(config: dict[str, Any], should_cancel: Callable[[], bool]) -> None:
    client = inference()
    task_id = None
    try:
        for update in client.run(config, stream=True):
            task_id = update.get("id")
            assert_type(task_id, str)
            print(f"Status: {update['status']}")
            if should_cancel():
                break
    finally:
        if task_id:
            client.cancel_task(task_id)
            print("Task cancelled")


def collecting_all_logs(config: dict[str, Any]) -> None:
    client = inference()
    all_logs: list[str] = []

    for update in client.run(config, stream=True):
        if update.get("logs"):
            all_logs.extend(update["logs"])
        if update.get("status") == "completed":
            print("Final logs:")
            for log in all_logs:
                print(f"  {log}")


def custom_stream_processing(config: dict[str, Any]) -> None:
    client = inference()

    class StreamProcessor:
        def __init__(self) -> None:
            self.logs: list[str] = []
            self.start_time: float | None = None
            self.end_time: float | None = None

        def process(self, update: TaskUpdate) -> bool:
            if self.start_time is None:
                self.start_time = time.time()
            if update.get("logs"):
                self.logs.extend(update["logs"])
            if update.get("status") in ["completed", "failed"]:
                self.end_time = time.time()
                return True  # Done
            return False  # Continue

        @property
        def duration(self) -> float | None:
            if self.start_time and self.end_time:
                return self.end_time - self.start_time
            return None

    processor = StreamProcessor()
    for update in client.run(config, stream=True):
        if processor.process(update):
            break

    print(f"Duration: {processor.duration:.2f}s")
    print(f"Logs: {len(processor.logs)}")
