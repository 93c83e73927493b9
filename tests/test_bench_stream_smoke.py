"""Smoke test: `benchmarks/bench_stream.py --quick` runs to the end and prints its report.

It only checks that the benchmark works, never its figures: every row at every size, every
ratio line, the fan-out and the targets summary. Quick mode talks to loopback only and never
installs anything: without `benchmarks/.official` it prints the official client's row as
skipped, with the reason, instead of measuring it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench_stream.py"

SIZES = ("200 B", "4 KiB", "64 KiB", "1 MiB")
ROWS = (
    "ours async, SSE",
    "ours async, NDJSON",
    "ours blocking, SSE",
    "ours blocking, NDJSON",
    "httpx + httpx-sse, SSE",
    "official 0.36.0, NDJSON",
    "raw floor, SSE",
    "raw floor, NDJSON",
)
RATIOS = (
    "ours async SSE / httpx-sse",
    "ours async NDJSON / official NDJSON",
    "ours async SSE / raw floor SSE",
    "ours async NDJSON / raw floor NDJSON",
    "ours blocking SSE / ours async SSE",
    "ours blocking NDJSON / ours async NDJSON",
)


def table(stdout: str, size: str) -> list[str]:
    """The lines of the throughput table of one event size."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"== {size} events, "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start + 2 : end]


@pytest.mark.timeout(90)
def test_bench_stream_quick_prints_every_row_and_ratio() -> None:
    """`--quick` exits 0 and prints each size's rows, each ratio line and the fan-out."""
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    out = done.stdout
    assert "pure Python" in out.splitlines()[0]
    official_installed = (ROOT / "benchmarks" / ".official" / "inferencesh").is_dir()
    for size in SIZES:
        rows = table(out, size)
        assert [line[:34].rstrip() for line in rows] == list(ROWS), "\n".join(rows)
        for line in rows:
            name, rest = line[:34].rstrip(), line[34:].strip()
            if name.startswith("official") and not official_installed:
                assert rest.startswith("skipped: "), line
            elif not name.startswith("official"):
                assert re.fullmatch(r"[\d,]+ +[\d,]+ +[\d,]+", rest), line
        for ratio in RATIOS:
            pattern = rf"^ratio {re.escape(ratio)}, {re.escape(size)}: (\d+\.\d\dx \(target|n/a \()"
            assert re.search(pattern, out, re.MULTILINE), f"no {ratio!r} line for {size}"
    assert re.search(r"^ratio fan-out [\d,]+ streams, peak RSS per stream: ", out, re.MULTILINE)
    assert re.search(r"^ratio fan-out [\d,]+ streams, errors: \d+ \(target 0: ", out, re.MULTILINE)
    assert re.search(r"^targets met: \d+ of \d+ measured$", out, re.MULTILINE)
