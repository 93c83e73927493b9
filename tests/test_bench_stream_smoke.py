"""Smoke test: `benchmarks/bench_stream.py --quick` runs to the end and prints its ratios.

It only checks that the benchmark works, never its figures. Quick mode talks to loopback only
and never installs anything: without `benchmarks/.official` it prints the official-client row
as skipped, with the reason, instead of measuring it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_stream.py"

RATIO_LINES = (
    "ratio ours/httpx-sse events/s, 200 B: ",
    "ratio ours/official events/s, 200 B, both NDJSON: ",
    "ratio ours (SSE)/official (NDJSON) events/s, 200 B: ",
    "ratio ours/httpx-sse events/s, 4 KiB: ",
    "ratio time to first event, ours stream_task / raw floor: ",
    "ratio fan-out peak RSS per stream ",
    "ratio sync/async events/s, 200 B: ",
)


@pytest.mark.timeout(300)
def test_bench_stream_quick_runs_and_prints_the_ratios() -> None:
    """`--quick` exits 0 within its time bound and prints every ratio line."""
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    lines = done.stdout.splitlines()
    for prefix in RATIO_LINES:
        found = [line for line in lines if line.startswith(prefix)]
        assert found, f"no line starting with {prefix!r} in:\n{done.stdout[-4000:]}"
    official = next(line for line in lines if line.startswith(RATIO_LINES[1]))
    if not (ROOT / "benchmarks" / ".official" / "inferencesh").is_dir():
        assert "skipped" in official or "n/a" in official
    assert "ours stream_task, SSE, 200 B" in done.stdout
