"""The hosted API's official Python client (0.36.0) works against our emulator unchanged.

The official package is also called `inferencesh`, so it is installed into its own folder and
run in a subprocess whose `sys.path` puts that folder first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import fast_emulator

from inferencesh.local import serve_in_thread

SCRIPT = """
import asyncio, sys
import inferencesh
from inferencesh import AsyncInference, Inference

assert "official" in inferencesh.__file__, inferencesh.__file__
url = sys.argv[1]
client = Inference(api_key="k", base_url=url)

updates = list(client.run({"app": "infsh/flux-schnell", "input": {"prompt": "x"}}, stream=True))
print("stream", len(updates), updates[-1]["status"], updates[-1]["output"]["text"])
print("run", client.run({"app": "infsh/flux-schnell", "input": {"prompt": "y"}})["status"])

held = client.run({"app": "a/b", "input": {"sim": {"hold": True}}}, wait=False)
print("created", held["status"])
client.cancel(held["id"])
try:
    client.wait_for_completion(held["id"])
except RuntimeError as exc:
    print("cancelled", exc)

async def main():
    result = await AsyncInference(api_key="k", base_url=url).run(
        {"app": "infsh/flux-schnell", "input": {"prompt": "z"}}
    )
    print("async", result["status"])

asyncio.run(main())

agent = client.agent("my-org/assistant@latest")
calls = []

def on_tool_call(call):
    calls.append(call.name)
    agent.submit_tool_result(call.id, "42")

agent.send_message("what is the answer?", on_message=lambda m: None, on_tool_call=on_tool_call)
print("agent", calls)
"""


@pytest.mark.parametrize("persistent", [False, True], ids=["in-memory", "data-dir"])
def test_official_client_against_emulator(official: Path, tmp_path: Path, persistent: bool) -> None:
    """Stream, run, create, cancel, async run and an agent chat all work unchanged, with and
    without persistence."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERENCE_", "PYTHON"))}
    env["PYTHONPATH"] = str(official)  # first on sys.path: its `inferencesh` shadows ours
    emulator = fast_emulator(data_dir=tmp_path) if persistent else fast_emulator()
    with serve_in_thread(emulator) as server:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(SCRIPT), server],
            capture_output=True, text=True, env=env, timeout=120, check=False,
            cwd=official.parent,
        )  # fmt: skip
    assert 0 == proc.returncode, proc.stderr
    lines = proc.stdout.splitlines()
    stream = lines[0].split(" ", 3)
    assert ["stream", "10", "simulated infsh/flux-schnell output for x"] == [
        stream[0], stream[2], stream[3]
    ]  # fmt: skip
    assert int(stream[1]) >= 10
    assert "run 10" == lines[1]
    assert "created 1" == lines[2]
    assert "cancelled task cancelled" == lines[3]
    assert "async 10" == lines[4]
    assert "agent ['search']" == lines[5]
