"""In Jupyter, `inferencesh.progress` shows one live output, updated in place.

A real IPython kernel (ipykernel, driven by jupyter_client as a notebook server drives it) runs
`track`, `atrack` and `BatchDisplay` against the emulator, and the tests read what the kernel
publishes on its iopub channel, which is what a notebook frontend turns into outputs: one
`display_data` with a display id, then only `update_display_data` for that id, plus the log
lines as stdout text, where the plain fallback used to publish one output per line.
"""

from __future__ import annotations

import io
import json
import os
import queue
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console
from support import fast_emulator

from inferencesh.local import Emulator
from inferencesh.progress import _display_for

# Both come with the dev extra; without them there is no kernel to run.
pytest.importorskip("ipykernel", reason="the notebook tests run a real ipykernel")
pytest.importorskip("jupyter_client", reason="the notebook tests drive a kernel")

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

STEPS = 20
CELL_TIMEOUT = 20.0  # seconds a cell may take, kernel messages included
OUTPUTS = {"display_data", "update_display_data", "stream", "error", "clear_output"}


@pytest.fixture
def emu() -> Emulator:
    """Tasks of STEPS steps, a log line and a progress report each, in about 0.3 s."""
    return fast_emulator(sim_steps=STEPS, sim_step_delay=0.015)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlockingKernelClient]:
    """An IPython kernel on this interpreter, isolated from the user's Jupyter and IPython
    settings, started once for the module (about a second)."""
    folder = tmp_path_factory.mktemp("kernel")
    spec = folder / "kernels" / "inferencesh-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "inferencesh tests", "language": "python"})
    )
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("INFERENCE_", "JUPYTER_", "IPYTHON", "COLUMNS"))
    }
    env.update(
        IPYTHONDIR=str(folder / "ipython"),
        JUPYTER_CONFIG_DIR=str(folder / "config"),
        JUPYTER_DATA_DIR=str(folder / "data"),
        JUPYTER_RUNTIME_DIR=str(folder / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    manager = KernelManager(
        kernel_name="inferencesh-test",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]),
        connection_file=str(folder / "connection.json"),
    )
    manager.start_kernel(env=env)
    client = manager.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=60)
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def run_cell(kernel: BlockingKernelClient, code: str) -> list[dict[str, Any]]:
    """Execute `code` and return the output messages it published, in order."""
    msg_id = kernel.execute(code)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + CELL_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        try:
            message = kernel.get_iopub_msg(timeout=max(remaining, 0.01))
        except queue.Empty:
            pytest.fail(f"the cell did not finish in {CELL_TIMEOUT}s: {found}")
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "status" and content["execution_state"] == "idle":
            break
        if kind in OUTPUTS:
            found.append(message)
    errors = [m["content"] for m in found if m["msg_type"] == "error"]
    assert not errors, "\n".join("\n".join(error["traceback"]) for error in errors)
    return found


def the_display(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The frames of the cell's one display, first to last, after checking that it is one:
    a single `display_data` with a display id, then updates of that id and nothing else."""
    shown = [m for m in messages if m["msg_type"] != "stream"]
    assert shown, messages
    first, updates = shown[0], shown[1:]
    assert "display_data" == first["msg_type"]
    display_id = first["content"]["transient"]["display_id"]
    assert display_id
    for message in updates:
        assert "update_display_data" == message["msg_type"], message
        assert display_id == message["content"]["transient"]["display_id"]
    return [m["content"]["data"] for m in shown]


def stdout(messages: list[dict[str, Any]]) -> str:
    streams = [m["content"] for m in messages if m["msg_type"] == "stream"]
    assert all("stdout" == stream["name"] for stream in streams), streams  # no warnings
    return "".join(stream["text"] for stream in streams)


def at_most_ten_a_second(messages: list[dict[str, Any]]) -> None:
    """Redraws are throttled: no more than ten a second, plus the first and the last frame."""
    frames = [m for m in messages if m["msg_type"] != "stream"]
    took = (frames[-1]["header"]["date"] - frames[0]["header"]["date"]).total_seconds()
    assert len(frames) <= 2 + 10 * took + 1, (len(frames), took)


def logs(task_id: str) -> str:
    steps = [f"step {n}/{STEPS}: working on a fox" for n in range(1, STEPS + 1)]
    return "".join(f"{line}\n" for line in [f"task {task_id}", *steps])


def test_track_in_a_notebook_is_one_display_updated_in_place(
    kernel: BlockingKernelClient, server: str
) -> None:
    started = time.monotonic()
    messages = run_cell(
        kernel,
        f"""
from inferencesh import inference
from inferencesh.progress import track

with inference("k", base_url={server!r}) as client:
    config = {{"app": "infsh/flux-schnell", "input": {{"prompt": "a fox"}}}}
    last = track(client.run(config, stream=True))
print(last.status.value, last.id)
""",
    )
    assert time.monotonic() - started < 10

    frames = the_display(messages)
    assert len(frames) >= 2  # it was redrawn, not drawn once at the end
    assert "starting" in frames[0]["text/plain"]
    final = frames[-1]
    assert "✓ completed" in final["text/plain"]
    assert f"100% {STEPS}/{STEPS}" in final["text/plain"]
    assert final["text/html"].startswith("<pre")
    assert "completed" in final["text/html"]
    at_most_ten_a_second(messages)

    # The task id and the log lines are text below the display (one block in the notebook).
    text = stdout(messages)
    assert text.splitlines()[-1].startswith("completed task_")
    task_id = text.splitlines()[-1].split()[1]
    assert logs(task_id) + f"completed {task_id}\n" == text


def test_atrack_in_a_notebook_transient(kernel: BlockingKernelClient, server: str) -> None:
    """The async twin, from a cell's top-level await; `transient=True` empties the display."""
    messages = run_cell(
        kernel,
        f"""
from inferencesh import async_inference
from inferencesh.progress import atrack

async with async_inference("k", base_url={server!r}) as client:
    config = {{"app": "infsh/flux-schnell", "input": {{"prompt": "a fox"}}}}
    last = await atrack(client.run(config, stream=True), transient=True)
print(last.status.value, last.id)
""",
    )
    frames = the_display(messages)
    assert len(frames) >= 3
    assert any("running" in frame["text/plain"] for frame in frames)
    assert {"text/plain": "", "text/html": ""} == frames[-1]
    task_id = stdout(messages).splitlines()[-1].split()[1]
    assert logs(task_id) + f"completed {task_id}\n" == stdout(messages)


def test_batch_display_in_a_notebook(kernel: BlockingKernelClient, server: str) -> None:
    messages = run_cell(
        kernel,
        f"""
from inferencesh import inference
from inferencesh.progress import BatchDisplay

configs = [{{"app": "infsh/flux-schnell", "input": {{"prompt": p}}}} for p in "abcd"]
with inference("k", base_url={server!r}) as client:
    with client.run_many(configs, concurrency=2) as batch, BatchDisplay() as display:
        for outcome in batch:
            display.show(batch.progress)
""",
    )
    frames = the_display(messages)
    assert len(frames) >= 2
    final = frames[-1]["text/plain"]
    assert "✓ batch" in final
    assert "100% 4/4" in final
    assert "completed 4" in final
    assert "" == stdout(messages)
    at_most_ten_a_second(messages)


def test_outside_a_notebook_the_terminal_displays_are_kept() -> None:
    """rich's own detection says "not Jupyter" here: plain lines and the live bar as before."""
    from inferencesh.progress import LiveDisplay, PlainDisplay

    assert isinstance(_display_for(Console(file=io.StringIO()), False), PlainDisplay)
    terminal = Console(force_terminal=True, file=io.StringIO())
    assert isinstance(_display_for(terminal, False), LiveDisplay)
