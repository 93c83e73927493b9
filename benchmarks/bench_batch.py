"""Fan-out: `client.run_many` against a hand-written `asyncio.gather` + `Semaphore`.

Both rows run the same tasks on the same emulator (its own process) with the same client and
concurrency bound, in interleaved rounds; the ratio is the median over the rounds of that
round's ours/baseline tasks per second (target: >= 0.9x, while `run_many` also keeps its
progress tally, labels updates and stands ready to cancel on abort). Then the client's
resident memory per in-flight task: a batch of never-ending tasks held at its bound.

    .venv/bin/python benchmarks/bench_batch.py           # full run, about a minute here
    .venv/bin/python benchmarks/bench_batch.py --quick   # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import re
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import running_server  # noqa: E402

import inferencesh  # noqa: E402

TARGET = 0.9


def configs(count: int) -> Iterator[dict[str, Any]]:
    """Short tasks: the simulated app with one step and no pauses (about ten events each)."""
    return ({"app": "bench/sim", "input": {"i": i, "sim": {"steps": 1}}} for i in range(count))


async def ours(client: inferencesh.AsyncInference, count: int, concurrency: int) -> float:
    started = time.perf_counter()
    done = 0
    async for outcome in client.run_many(configs(count), concurrency=concurrency):
        if not outcome.ok:
            raise RuntimeError(f"task {outcome.index} failed: {outcome.error}")
        done += 1
    assert done == count
    return count / (time.perf_counter() - started)


async def baseline(client: inferencesh.AsyncInference, count: int, concurrency: int) -> float:
    """What users write by hand today."""
    gate = asyncio.Semaphore(concurrency)

    async def one(config: dict[str, Any]) -> Any:
        async with gate:
            return await client.run(config)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(c) for c in configs(count)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} baseline tasks failed: {failed[0]!r}")
    return count / (time.perf_counter() - started)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        found = re.search(r"VmRSS:\s+(\d+) kB", status.read())
    return int(found.group(1)) if found else 0


async def memory_per_task(client: inferencesh.AsyncInference, in_flight: int) -> float:
    """KiB of client RSS per task in flight: never-ending tasks held at the bound (garbage
    collected before each sample, so what is counted is held, not waiting to be freed)."""
    gc.collect()
    before = rss_kib()
    holds = ({"app": "bench/sim", "input": {"sim": {"hold": True}}} for _ in range(in_flight))
    batch = client.run_many(holds, concurrency=in_flight)
    async with batch:
        iterator = batch.__aiter__()
        waiting = asyncio.ensure_future(iterator.__anext__())
        deadline = time.monotonic() + 120
        while batch.progress.by_status.get("running", 0) < in_flight:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {batch.progress.by_status} after 120 s")
            await asyncio.sleep(0.05)  # a benchmark sampling loop, not a test waiting
        gc.collect()
        during = rss_kib()
        waiting.cancel()
    return (during - before) / in_flight


async def run(args: argparse.Namespace) -> None:
    count, concurrency, rounds = (200, 16, 1) if args.quick else (2000, 64, 3)
    in_flight = 100 if args.quick else 1000
    with running_server(["--emulator"]) as url:
        async with inferencesh.async_inference(api_key="bench", base_url=url) as client:
            await ours(client, count // 4, concurrency)  # warm-up: connections, imports
            await baseline(client, count // 4, concurrency)
            figures: dict[str, list[float]] = {"run_many": [], "gather+Semaphore": []}
            for _ in range(rounds):
                figures["run_many"].append(await ours(client, count, concurrency))
                figures["gather+Semaphore"].append(await baseline(client, count, concurrency))
            per_task = await memory_per_task(client, in_flight)
    print(
        f"inferencesh {inferencesh.__version__}, Python {platform.python_version()}; "
        f"{count} tasks, concurrency {concurrency}, {rounds} interleaved round(s)"
    )
    for name, values in figures.items():
        print(
            f"  {name:<18} best {max(values):8.0f} tasks/s  median {statistics.median(values):8.0f}"
        )
    ratios = [a / b for a, b in zip(figures["run_many"], figures["gather+Semaphore"], strict=True)]
    ratio = statistics.median(ratios)
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"ratio run_many/gather+Semaphore: median {ratio:.2f}x (target >= {TARGET}x: {verdict})")
    print(f"client RSS per in-flight task: {per_task:.1f} KiB ({in_flight} never-ending tasks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
