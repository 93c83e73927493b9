"""Measure the official `inferencesh` 0.36.0 client's async stream, in its own process.

`bench_stream.py` runs this file with `PYTHONPATH=benchmarks/.official` prepended, so the
`inferencesh` imported here is the official package, not ours (both share the import name).
It prints one JSON object: the package path and version, and the seconds and update count of
each repeat. Entry point used: `await AsyncInference(...).run(params, stream=True)`, then
`async for update in stream`; it asks for `application/x-ndjson`, so the server answers NDJSON.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from typing import Any


async def measure(base_url: str, name: str, repeats: int) -> list[tuple[float, int]]:
    package: Any = importlib.import_module("inferencesh")
    client = package.AsyncInference(api_key="bench", base_url=base_url)
    params = {"app": "bench/stream@1", "input": {"stream": name}}
    results: list[tuple[float, int]] = []
    for _ in range(repeats):
        count = 0
        start = time.perf_counter()
        stream = await client.run(params, stream=True)
        async for _update in stream:
            count += 1
        results.append((time.perf_counter() - start, count))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", action="store_true")
    args = parser.parse_args()
    package: Any = importlib.import_module("inferencesh")
    version = importlib.import_module("importlib.metadata").version("inferencesh")
    if args.warmup:
        asyncio.run(measure(args.base_url, args.stream, 1))
    runs = asyncio.run(measure(args.base_url, args.stream, args.repeats))
    json.dump({"path": package.__file__, "version": version, "runs": runs}, sys.stdout)


if __name__ == "__main__":
    main()
