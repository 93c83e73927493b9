"""Shared helpers for the client tests: the seed document's examples and emulator fixtures."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from inferencesh import StreamingOptions
from inferencesh.local import Emulator, EmulatorOptions

SEED = Path(__file__).with_name("seed_streaming_reference.md")

# The statuses a simulated task walks through, in order, as the emulator streams them.
FLOW = [
    "received",
    "queued",
    "dispatched",
    "preparing",
    "serving",
    "setting_up",
    "running",
    "uploading",
    "completed",
]

# Zero client-side waits; the emulator's `retry:` hint (10 ms here) still sets the pace.
FAST = StreamingOptions(retry_delay=0.0, retry_jitter=0.0, max_retries=5)


def seed_examples() -> dict[str, str]:
    """The seed document's Python code blocks, keyed by the heading above each."""
    text = SEED.read_text(encoding="utf-8")
    blocks: dict[str, str] = {}
    heading = ""
    for match in re.finditer(r"^## ([^\n]+)$|^```python\n(.*?)^```", text, re.M | re.S):
        if match.group(1):
            heading = match.group(1).strip()
        else:
            blocks[heading] = match.group(2)
    return blocks


def fast_emulator(**overrides: object) -> Emulator:
    """An emulator whose simulated tasks take a few tens of milliseconds."""
    settings: dict[str, object] = {
        "sim_steps": 5,
        "sim_step_delay": 0.005,
        "retry_ms": 10,
        "heartbeat_interval": 5.0,
    }
    settings.update(overrides)
    return Emulator(EmulatorOptions(**settings))  # type: ignore[arg-type]


def sdk_threads() -> list[threading.Thread]:
    """Threads the SDK started that are still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("inferencesh-loop")]
