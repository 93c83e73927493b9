"""Measure the official `inferencesh` 0.36.0 client's async task stream, on request.

`bench_stream.py` starts this file ONCE per run with `PYTHONPATH=benchmarks/.official`
prepended, so the `inferencesh` imported here is the official package, not ours (both share
the import name), and drives it over stdin/stdout, one JSON object a line:

* first it answers `{"ready": true, "version": ..., "path": ...}` once it has checked that it
  imported the official package from `--expect-dir`, at `--expect-version` (else
  `{"error": ...}`, and it exits 1);
* then, per command `{"base_url": URL, "stream": TASK_ID, "timeout": SECONDS}`,
  it reads that task's stream to its end with
  `async for update in AsyncInference(...).stream_task(TASK_ID)` (the official client asks for
  `application/x-ndjson`) and answers `{"seconds": ..., "count": ...}`, or `{"error": ...}`.

It stops when its stdin closes, and after `--lifetime` seconds whatever happens (SIGALRM).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import importlib.metadata
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any


def check_package(expect_dir: Path, expect_version: str) -> dict[str, Any]:
    """The `ready` answer; raises when `inferencesh` is not the expected official package."""
    package: Any = importlib.import_module("inferencesh")
    path = Path(package.__file__).resolve()
    if not path.is_relative_to(expect_dir.resolve()):
        raise RuntimeError(f"imported inferencesh from {path}, not from {expect_dir}")
    version = importlib.metadata.version("inferencesh")
    if version != expect_version:
        raise RuntimeError(f"imported inferencesh {version}, not {expect_version}")
    return {"ready": True, "version": version, "path": str(path)}


class Measurer:
    """One official client per base URL, kept for the whole run (warm code paths)."""

    def __init__(self) -> None:
        self._package: Any = importlib.import_module("inferencesh")
        self._clients: dict[str, Any] = {}

    async def measure(self, base_url: str, task_id: str, timeout: float) -> dict[str, Any]:
        client = self._clients.get(base_url)
        if client is None:
            client = self._clients[base_url] = self._package.AsyncInference(
                api_key="bench-key", base_url=base_url
            )
        gc.collect()
        count = 0
        async with asyncio.timeout(timeout):
            start = time.perf_counter()
            async for _update in client.stream_task(task_id):
                count += 1
            seconds = time.perf_counter() - start
        return {"seconds": seconds, "count": count}


def answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect-dir", type=Path, required=True)
    parser.add_argument("--expect-version", required=True)
    parser.add_argument("--lifetime", type=int, default=1800)
    args = parser.parse_args()
    signal.alarm(args.lifetime)  # the default SIGALRM action ends the process
    try:
        answer(check_package(args.expect_dir, args.expect_version))
    except Exception as exc:
        answer({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    measurer = Measurer()
    with asyncio.Runner() as runner:
        for line in sys.stdin:  # ends when the parent closes our stdin
            command = json.loads(line)
            try:
                result = runner.run(
                    measurer.measure(command["base_url"], command["stream"], command["timeout"])
                )
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            answer(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
