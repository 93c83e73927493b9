"""Shared helpers for the tests: the seed document's examples, emulator fixtures, CLI children."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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


# -- the CLI in a child process, read with a deadline ------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def plain(text: str) -> str:
    """Terminal output without colours and cursor movements."""
    return ANSI.sub("", text)


def _restore_sigint() -> None:
    # A child started from a shell's background job inherits SIGINT ignored; Python then never
    # raises KeyboardInterrupt. Give the child the default, as an interactive shell would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ChildOutput:
    """A child process and the reading end of its output (a pseudo-terminal or a pipe), read
    into `raw` with bounded waits. Subclasses start `proc` and set `_fd`."""

    proc: subprocess.Popen[bytes]
    _fd: int
    raw: bytes = b""

    def shown(self) -> str:
        """The output so far as a failure message shows it."""
        return plain(self.raw.decode("utf-8", "replace"))

    def _read(self, deadline: float) -> bool:
        """Read what is available before `deadline`; False at end of output."""
        ready, _, _ = select.select([self._fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            chunk = os.read(self._fd, 65536)
        except OSError:  # EIO: the pseudo-terminal's other side closed
            return False
        self.raw += chunk
        return bool(chunk)

    def _read_until(self, holds: Callable[[], bool], timeout: float) -> None:
        """Read until `holds()`; fail with the output on timeout or at its end."""
        deadline = time.monotonic() + timeout
        while not holds():
            if time.monotonic() >= deadline or not self._read(deadline):
                pytest.fail(f"condition not met; output so far:\n{self.shown()[-3000:]}")

    def _exit_code(self, timeout: float) -> int:
        """Read to the end of the output and wait for the exit code, within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(deadline):
            pass
        try:
            return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the CLI did not exit; output so far:\n{self.shown()[-3000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self._fd)


class Child(ChildOutput):
    """`python -m inferencesh ...` with stdout+stderr on a pseudo-terminal or a pipe."""

    def __init__(self, *args: str, tty: bool, env: dict[str, str] | None = None) -> None:
        settings = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        settings.pop("NO_COLOR", None)
        settings.update(env or {})
        if tty:
            self._fd, child_fd = os.openpty()
        else:
            self._fd, child_fd = os.pipe()
        needs_restore = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "inferencesh", *args],
                stdin=subprocess.DEVNULL,
                stdout=child_fd,
                stderr=child_fd,
                env=settings,
                preexec_fn=_restore_sigint if needs_restore else None,
            )
        finally:
            os.close(child_fd)
        self.raw = b""

    @property
    def text(self) -> str:
        return self.shown()

    def read_until(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        """Read until `predicate(text so far)` holds; fail with the output on timeout."""
        self._read_until(lambda: predicate(self.text), timeout)
        return self.text

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        """Read to the end of the output and wait for the exit code."""
        return self._exit_code(timeout), self.text


@contextlib.contextmanager
def child(*args: str, tty: bool, env: dict[str, str] | None = None) -> Iterator[Child]:
    process = Child(*args, tty=tty, env=env)
    try:
        yield process
    finally:
        process.close()
