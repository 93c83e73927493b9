"""Smoke test: `benchmarks/bench_sse.py --quick` still runs and prints its results."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_sse.py"


def test_bench_sse_quick_runs() -> None:
    """The quick benchmark exits 0 and prints the linearity table and the throughput ratio."""
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        cwd=BENCH.parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^ratio ours/httpx-sse: best \d+\.\d\dx", result.stdout, re.MULTILINE)
    assert "Linearity" in result.stdout
    assert "Exactness" in result.stdout
    assert "DIFFERS" not in "\n".join(
        line for line in result.stdout.splitlines() if line.strip().startswith("ours")
    )
