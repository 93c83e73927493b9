"""Smoke test: `benchmarks/bench_batch.py --quick` still runs and prints its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_batch.py"


def test_bench_batch_quick_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True, text=True, timeout=120, check=False, cwd=BENCH.parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"^ratio run_many/gather\+Semaphore: median \d+\.\d\dx", result.stdout, re.M)
    assert re.search(r"^client RSS per in-flight task: -?\d+\.\d KiB", result.stdout, re.M)
    assert "" == result.stderr
