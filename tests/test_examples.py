"""Every script in examples/ runs against an emulator with only INFERENCE_BASE_URL set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support import FLOW, seed_examples

from inferencesh.local import Emulator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The seed document's sections and the script that answers each.
SECTIONS = {
    "Basic Streaming": "basic_streaming.py",
    "Handling Different Update Types": "update_types.py",
    "Progress Tracking with UI": "progress_ui.py",
    "Streaming with Timeout": "streaming_timeout.py",
    "Async Streaming": "async_streaming.py",
    "Agent Streaming": "agent_streaming.py",
    "Reconnection Handling": "reconnection.py",
    "Multiple Streams in Parallel": "parallel_streams.py",
    "Cancelling a Stream": "cancel_stream.py",
    "Collecting All Logs": "collect_logs.py",
    "Custom Stream Processing": "custom_processing.py",
}


def run_example(name: str, server: str, *args: str) -> str:
    """Run one script with only INFERENCE_BASE_URL set; assert it succeeded quietly."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    env["INFERENCE_BASE_URL"] = server
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert "" == result.stderr
    return result.stdout


def statuses(out: str, prefix: str = "Status: ") -> list[str]:
    """The statuses printed as `<prefix><status>`, consecutive repeats folded."""
    found = [line.removeprefix(prefix).split(",")[0] for line in out.splitlines()]
    found = [s for line, s in zip(out.splitlines(), found, strict=True) if line.startswith(prefix)]
    return [s for i, s in enumerate(found) if i == 0 or found[i - 1] != s]


def test_every_seed_section_has_a_script_and_every_script_is_listed() -> None:
    assert set(SECTIONS) == set(seed_examples())
    scripts = {path.name for path in EXAMPLES.glob("*.py")}
    extra = {"live_progress.py", "files_roundtrip.py", "batch_prompts.py"}
    assert set(SECTIONS.values()) | extra == scripts
    listing = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for section, script in SECTIONS.items():
        assert re.search(rf"\| {re.escape(section)} \| `{re.escape(script)}", listing), section


def test_basic_streaming(server: str) -> None:
    out = run_example("basic_streaming.py", server)
    assert FLOW == statuses(out)


def test_update_types(server: str) -> None:
    out = run_example("update_types.py", server)
    lines = out.splitlines()
    assert "Task queued, waiting for worker..." in lines
    assert "Task is running..." in lines
    subject = "A mountain lake at dawn"
    logs = [line for line in lines if line.startswith("  Log: ")]
    assert [f"  Log: step {n}/5: working on {subject}" for n in range(1, 6)] == logs
    assert "  Partial: {'text': 'part1 part2', 'step': 2}" in lines
    assert "Done!" == lines[-2]
    output = f"Output: {{'text': 'simulated infsh/flux-schnell output for {subject}'"
    assert lines[-1].startswith(output)


def test_progress_ui(server: str) -> None:
    out = run_example("progress_ui.py", server)
    assert "[" + "█" * 10 + "░" * 40 + "] 20.0%" in out
    assert "[" + "█" * 50 + "] 100.0%" in out
    assert out.endswith("\n✓ Complete!\n")


def test_streaming_timeout_completes_within_the_deadline(server: str) -> None:
    out = run_example("streaming_timeout.py", server)
    assert FLOW == statuses(out)
    assert "Timeout reached" not in out


def test_streaming_timeout_cancels_the_task_when_the_deadline_passes(
    server: str, emu: Emulator
) -> None:
    out = run_example("streaming_timeout.py", server, "0")
    lines = out.splitlines()
    assert "Timeout reached" == lines[0]
    match = re.fullmatch(r"Cancelled task (task_\w+)", lines[1])
    assert match is not None, out
    task_id = match.group(1)
    assert emu.wait_until(lambda e: (e.task_snapshot(task_id) or {}).get("status") == 12)


def test_async_streaming(server: str) -> None:
    out = run_example("async_streaming.py", server)
    assert FLOW == statuses(out)
    expected = "Result: {'text': 'simulated google/veo-3-1-fast output for Ocean waves'"
    assert out.splitlines()[-1].startswith(expected)


def test_agent_streaming(server: str) -> None:
    out = run_example("agent_streaming.py", server)
    assert "[Thinking: " in out
    assert 1 == out.count("[Calling tool: search]")
    # The emulator's scripted agent quotes the tool result it received.
    assert "'tool': 'search'" in out or '"tool": "search"' in out
    assert "Explain quantum entanglement" in out
    assert re.search(r"^Chat chat_\w+: \d+ characters, status ready$", out, re.M), out


def test_reconnection_survives_dropped_connections(server: str, emu: Emulator) -> None:
    emu.faults.drop_after = 3
    out = run_example("reconnection.py", server)
    assert FLOW == statuses(out)
    logs = re.findall(r"'(step \d/5: [^']+)'", out)
    assert [f"step {n}/5: working on A stormy sea" for n in range(1, 6)] == logs
    assert emu.streams_opened > 2


def test_parallel_streams(server: str) -> None:
    out = run_example("parallel_streams.py", server)
    for index, subject in enumerate(["A mountain", "An ocean", "A forest"]):
        assert FLOW == statuses(out, f"[{index}] ")
        expected = f"Result {index}: {{'text': 'simulated infsh/flux-schnell output for {subject}'"
        assert expected in out


def test_cancel_stream(server: str, emu: Emulator) -> None:
    out = run_example("cancel_stream.py", server)
    lines = out.splitlines()
    assert "Task cancelled" in lines
    assert "Final status: cancelled" == lines[-1]
    assert "Status: completed" not in lines


def test_collect_logs(server: str) -> None:
    out = run_example("collect_logs.py", server)
    assert [
        "Final logs:",
        *[f"  step {n}/5: working on A desert at noon" for n in range(1, 6)],
    ] == out.splitlines()


def test_custom_processing(server: str) -> None:
    out = run_example("custom_processing.py", server)
    lines = out.splitlines()
    assert re.fullmatch(r"Duration: \d+\.\d\ds", lines[0])
    assert "Logs: 5" == lines[1]


def test_live_progress_prints_plain_lines_in_a_pipe(server: str) -> None:
    out = run_example("live_progress.py", server)
    assert FLOW == statuses(out, "status: ")
    assert "progress: 5/5 (100%)" in out
    assert "Status: completed" in out.splitlines()


def test_files_roundtrip_uploads_runs_and_saves(server: str, tmp_path: Path) -> None:
    """The files example uploads its image, streams the task and saves a valid PNG."""
    out = run_example("files_roundtrip.py", server, str(_png(tmp_path)), str(tmp_path))
    assert "completed" == statuses(out)[-1]
    saved = tmp_path / "image.png"
    assert re.search(rf"saved image\.png: {saved.stat().st_size} bytes", out)
    assert saved.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def _png(folder: Path) -> Path:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    path = folder / "in.png"
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\xff"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))
    return path


def test_batch_prompts_runs_every_prompt_once(server: str) -> None:
    """The fan-out example prints one line per task as it ends, the tally, then each output
    in input order."""
    out = run_example("batch_prompts.py", server, "2")
    lines = out.splitlines()
    assert sorted(int(line.split("]")[0].split("/")[0][1:]) for line in lines[:5]) == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert all(line.endswith(": completed") for line in lines[:5])
    assert re.fullmatch(r"5 completed, 0 failed, \d+\.\d tasks/s", lines[5])
    assert [line.split()[0] for line in lines[6:]] == ["0", "1", "2", "3", "4"]
