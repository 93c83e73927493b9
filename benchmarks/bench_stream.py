"""Benchmark the client's task streams: throughput, time to first event, fan-out, sync.

Run from the repository root (`bash scripts/test` creates .venv):

    .venv/bin/python benchmarks/bench_stream.py           # the full run (a few minutes)
    .venv/bin/python benchmarks/bench_stream.py --quick   # N/100, a smoke run (under a minute)
    INFERENCESH_NO_EXTENSIONS=1 .venv/bin/python benchmarks/bench_stream.py   # pure Python

Everything talks to servers started here, on 127.0.0.1 only, each in its own process
(`_server.py`): a minimal aiohttp.web server that writes PRE-RENDERED task streams in 512 KiB
pieces (so it is never the bottleneck), and, when `inferencesh.local` can be imported, the
SDK's emulator. The task stream is `retry: 1000`, then N SSE events `id: <n>` / `data: <json>`
(N - 1 per-step partial updates padded to the event size, then a terminal snapshot); the same
JSON objects one per line when the client asks for NDJSON.

1. Throughput, events/s, for 200-byte (N = 200,000) and 4 KiB (N = 20,000) updates: ours
   (`async for update in client.run(..., stream=True)` and `client.stream_task(id)`), next to
   httpx + httpx-sse (`aconnect_sse`, `json.loads` per event) on the same SSE bytes, the
   official `inferencesh` 0.36.0 client reading the same events as NDJSON (in a subprocess with
   `PYTHONPATH=benchmarks/.official`, installed there by the full run when missing), and a raw
   floor: asyncio streams, a hand-written HTTP/1.1 GET, split on blank lines, orjson.
2. Time to first event on a fresh client, median of 200 trials, against the raw floor.
3. 1000 concurrent 100-event streams on one client: wall time, events/s and peak RSS per
   stream above the idle process (measured in a child process that does nothing else).
4. The sync client's stream against the async one, in the same run.
5. Our client against the emulator (events produced live, so the emulator bounds it).

The benchmark prints numbers and ratios against the targets and never asserts them; it does
fail when a client yields a different number of updates than the stream holds.
`tests/test_bench_stream_smoke.py` runs `--quick` so it cannot rot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import httpx  # noqa: E402
import orjson  # noqa: E402
from _server import EMULATOR_APP, raise_fd_limit, running_server  # noqa: E402
from httpx_sse import aconnect_sse  # noqa: E402

import inferencesh  # noqa: E402
from inferencesh._task_stream import SPEEDUPS  # noqa: E402

OFFICIAL_DIR = HERE / ".official"
OFFICIAL_VERSION = "0.36.0"
API_KEY = "bench-key"
APP = "bench/stream@1"
SMALL, LARGE = 200, 4096
SMALL_NAME, LARGE_NAME, FAN_NAME = "s200", "s4k", "fan"

# The targets from the issues; printed next to each figure, never asserted.
TARGET_VS_HTTPX = 1.2
TARGET_VS_OFFICIAL = 2.5
TARGET_TTFE = 1.5
TARGET_RSS_KIB = 64.0
TARGET_SYNC = 0.8


@dataclass(frozen=True)
class Config:
    """Sizes of one run; `--quick` divides the event counts by 100 and takes fewer trials."""

    n_small: int
    n_large: int
    repeats: int
    ttfe_trials: int
    fan_streams: int
    fan_events: int
    emulator_steps: int
    quick: bool


FULL = Config(200_000, 20_000, 3, 200, 1000, 100, 20_000, quick=False)
QUICK = Config(2_000, 200, 3, 40, 1000, 100, 200, quick=True)


@dataclass
class Row:
    """One throughput row: seconds per repeat for `events` stream events."""

    name: str
    events: int
    seconds: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def best(self) -> float:
        return self.events / min(self.seconds) if self.seconds else float("nan")

    @property
    def median(self) -> float:
        return self.events / statistics.median(self.seconds) if self.seconds else float("nan")


@dataclass
class Results:
    """Everything measured, for the summary and `--json`."""

    rows: dict[str, Row] = field(default_factory=dict)
    ttfe_ms: dict[str, float] = field(default_factory=dict)
    fanout: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, row: Row) -> Row:
        self.rows[key] = row
        return row


def params_for(name: str) -> dict[str, Any]:
    return {"app": APP, "input": {"stream": name}}


def check_count(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise RuntimeError(f"{what}: yielded {got} updates, expected {expected}")


# --- one stream, timed, per client ------------------------------------------------------------


async def ours_run(client: inferencesh.AsyncInference, name: str, events: int) -> float:
    """`run(stream=True)`: the POST's task (one update), then every stream event."""
    count = 0
    start = time.perf_counter()
    async for _update in client.run(params_for(name), stream=True):
        count += 1
    elapsed = time.perf_counter() - start
    check_count(f"ours run(stream=True) {name}", count, events + 1)
    return elapsed


async def ours_stream_task(client: inferencesh.AsyncInference, name: str, events: int) -> float:
    """`stream_task(id)`: one GET, every stream event."""
    count = 0
    start = time.perf_counter()
    async for _update in client.stream_task(name):
        count += 1
    elapsed = time.perf_counter() - start
    check_count(f"ours stream_task {name}", count, events)
    return elapsed


async def httpx_sse_stream(client: httpx.AsyncClient, url: str, events: int) -> float:
    """httpx + httpx-sse: `aconnect_sse`, `json.loads` per event with data."""
    count = 0
    start = time.perf_counter()
    async with aconnect_sse(client, "GET", url) as source:
        async for sse in source.aiter_sse():
            if sse.data:
                json.loads(sse.data)
                count += 1
    elapsed = time.perf_counter() - start
    check_count("httpx-sse", count, events)
    return elapsed


async def raw_floor(base_url: str, path: str, *, first_only: bool = False) -> int:
    """The fastest plausible reader: asyncio streams, HTTP/1.1 by hand, orjson per event."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = -1
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length < 0:
            raise RuntimeError("the raw floor expects a Content-Length body")
        remaining = length
        pending = b""
        count = 0
        loads = orjson.loads
        while remaining > 0:
            chunk = await reader.read(min(65536, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            blocks = (pending + chunk).split(b"\n\n")
            pending = blocks.pop()
            for block in blocks:
                at = block.find(b"data:")
                if at >= 0:
                    loads(block[at + 5 :])
                    count += 1
                    if first_only:
                        return count
        return count
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def raw_floor_timed(base_url: str, name: str, events: int) -> float:
    start = time.perf_counter()
    count = await raw_floor(base_url, f"/tasks/{name}/stream")
    elapsed = time.perf_counter() - start
    check_count("raw floor", count, events)
    return elapsed


# --- 1 and 2: throughput ---------------------------------------------------------------------


async def measure_throughput(base_url: str, cfg: Config, results: Results) -> None:
    """All in-process rows, interleaved round by round so drift hits every row alike."""
    async with (
        inferencesh.async_inference(api_key=API_KEY, base_url=base_url) as ours,
        httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=None
        ) as hx,
    ):
        for size, name, n in ((SMALL, SMALL_NAME, cfg.n_small), (LARGE, LARGE_NAME, cfg.n_large)):
            label = "200 B" if size == SMALL else "4 KiB"
            rows: list[tuple[Row, Callable[[], Awaitable[float]]]] = [
                (
                    results.add(f"ours_run_{size}", Row(f"ours run(stream=True), SSE, {label}", n)),
                    partial(ours_run, ours, name, n),
                ),
                (
                    results.add(f"ours_task_{size}", Row(f"ours stream_task, SSE, {label}", n)),
                    partial(ours_stream_task, ours, name, n),
                ),
                (
                    results.add(
                        f"ours_run_ndjson_{size}", Row(f"ours run(stream=True), NDJSON, {label}", n)
                    ),
                    partial(ours_run, ours, f"{name}.ndjson", n),
                ),
                (
                    results.add(
                        f"ours_ndjson_{size}", Row(f"ours stream_task, NDJSON, {label}", n)
                    ),
                    partial(ours_stream_task, ours, f"{name}.ndjson", n),
                ),
                (
                    results.add(f"httpx_{size}", Row(f"httpx + httpx-sse, SSE, {label}", n)),
                    partial(httpx_sse_stream, hx, f"/tasks/{name}/stream", n),
                ),
                (
                    results.add(f"raw_{size}", Row(f"raw floor (asyncio + orjson), {label}", n)),
                    partial(raw_floor_timed, base_url, name, n),
                ),
            ]
            for _row, measure in rows:  # warm-up: the server's pages, our code paths
                await measure()
            for _ in range(cfg.repeats):
                for row, measure in rows:
                    row.seconds.append(await measure())
                    gc.collect()


def ensure_official(cfg: Config) -> str | None:
    """None when the official client is importable from benchmarks/.official, else why not."""
    if (OFFICIAL_DIR / "inferencesh" / "client.py").exists():
        return None
    if cfg.quick:
        return "benchmarks/.official is missing and --quick never installs (run the full benchmark)"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(OFFICIAL_DIR),
        f"inferencesh=={OFFICIAL_VERSION}",
    ]
    print(f"installing the official client for comparison: {' '.join(command)}", flush=True)
    try:
        done = subprocess.run(command, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"installing inferencesh=={OFFICIAL_VERSION} failed: {exc}"
    if done.returncode != 0:
        return f"installing inferencesh=={OFFICIAL_VERSION} failed (pip exit {done.returncode})"
    return None


def measure_official(base_url: str, cfg: Config, results: Results) -> None:
    """Run `_official_child.py` with the official package shadowing ours."""
    why = ensure_official(cfg)
    for size, name, n in ((SMALL, SMALL_NAME, cfg.n_small), (LARGE, LARGE_NAME, cfg.n_large)):
        label = "200 B" if size == SMALL else "4 KiB"
        row = results.add(
            f"official_{size}", Row(f"official 0.36.0 run(stream=True), NDJSON, {label}", n)
        )
        if why is not None:
            row.note = f"skipped: {why}"
            continue
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(OFFICIAL_DIR), env.get("PYTHONPATH", "")) if p
        )
        command = [
            sys.executable,
            str(HERE / "_official_child.py"),
            "--base-url",
            base_url,
            "--stream",
            name,
            "--repeats",
            str(cfg.repeats),
            "--warmup",
        ]
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=900, check=False
            )
        except subprocess.TimeoutExpired:
            row.note = "skipped: the official client's run timed out"
            continue
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["?"]
            row.note = f"skipped: the official client failed: {tail[0]}"
            continue
        report = json.loads(done.stdout)
        if not str(report["path"]).startswith(str(OFFICIAL_DIR)):
            raise RuntimeError(f"the official run imported {report['path']}, not the official one")
        if report["version"] != OFFICIAL_VERSION:
            raise RuntimeError(f"the official run imported version {report['version']}")
        for seconds, count in report["runs"]:
            # It yields every stream event and not the POST's task.
            check_count(f"official {name}", count, n)
            row.seconds.append(seconds)


# --- 3: time to first event -------------------------------------------------------------------


async def ttfe_raw(base_url: str) -> float:
    start = time.perf_counter()
    count = await raw_floor(base_url, f"/tasks/{FAN_NAME}/stream", first_only=True)
    elapsed = time.perf_counter() - start
    check_count("raw floor first event", count, 1)
    return elapsed


async def ttfe_stream_task(base_url: str) -> float:
    start = time.perf_counter()
    client = inferencesh.async_inference(api_key=API_KEY, base_url=base_url)
    stream = client.stream_task(FAN_NAME)
    await anext(stream)
    elapsed = time.perf_counter() - start
    await stream.aclose()
    await client.aclose()
    return elapsed


async def ttfe_run(base_url: str) -> tuple[float, float]:
    """(first update = the POST's task, first update read from the stream)."""
    start = time.perf_counter()
    client = inferencesh.async_inference(api_key=API_KEY, base_url=base_url)
    stream = client.run(params_for(FAN_NAME), stream=True)
    await anext(stream)
    created = time.perf_counter() - start
    await anext(stream)
    elapsed = time.perf_counter() - start
    await stream.aclose()
    await client.aclose()
    return created, elapsed


async def ttfe_httpx(base_url: str) -> float:
    start = time.perf_counter()
    async with (
        httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=None) as hx,
        aconnect_sse(hx, "GET", f"{base_url}/tasks/{FAN_NAME}/stream") as source,
    ):
        async for sse in source.aiter_sse():
            if sse.data:
                json.loads(sse.data)
                break
        return time.perf_counter() - start


async def measure_ttfe(base_url: str, cfg: Config, results: Results) -> None:
    """Median of `ttfe_trials` trials, the clients interleaved within each trial."""
    samples: dict[str, list[float]] = {
        "raw": [],
        "stream_task": [],
        "run_created": [],
        "run_first_event": [],
        "httpx": [],
    }
    for trial in range(cfg.ttfe_trials + 5):
        raw = await ttfe_raw(base_url)
        task = await ttfe_stream_task(base_url)
        created, first = await ttfe_run(base_url)
        hx = await ttfe_httpx(base_url)
        if trial >= 5:  # the first few warm the server and the code paths
            samples["raw"].append(raw)
            samples["stream_task"].append(task)
            samples["run_created"].append(created)
            samples["run_first_event"].append(first)
            samples["httpx"].append(hx)
    results.ttfe_ms = {k: statistics.median(v) * 1000 for k, v in samples.items()}


# --- 4: fan-out (child process) ---------------------------------------------------------------


def status_kib(name: str) -> int:
    """A `Vm*` line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{name} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


async def fanout_child(base_url: str, streams: int, events: int) -> dict[str, Any]:
    """Run in a fresh process: `streams` concurrent `stream_task` consumers on one client."""
    async with inferencesh.async_inference(api_key=API_KEY, base_url=base_url) as client:

        async def consume() -> int:
            count = 0
            async for _update in client.stream_task(FAN_NAME):
                count += 1
            return count

        await consume()  # the session exists and the code is warm: the idle client
        gc.collect()
        before = status_kib("VmRSS")
        hwm_reset = reset_peak_rss()
        peak_sampled = before
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak_sampled
            while not done.is_set():
                peak_sampled = max(peak_sampled, status_kib("VmRSS"))
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        counts = await asyncio.gather(*(consume() for _ in range(streams)))
        wall = time.perf_counter() - start
        done.set()
        await sampler
        hwm = status_kib("VmHWM")
    for count in counts:
        check_count("fan-out stream", count, events)
    peak = max(peak_sampled, hwm if hwm_reset else 0)
    return {
        "streams": streams,
        "events": sum(counts),
        "wall_s": wall,
        "rss_before_kib": before,
        "peak_kib": peak,
        "peak_source": "VmHWM (reset) and sampled VmRSS" if hwm_reset else "sampled VmRSS",
        "per_stream_kib": (peak - before) / streams,
    }


def measure_fanout(base_url: str, cfg: Config, results: Results) -> None:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--fanout-child",
        base_url,
        "--fan-streams",
        str(cfg.fan_streams),
        "--fan-events",
        str(cfg.fan_events),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise RuntimeError("the fan-out child failed")
    results.fanout = json.loads(done.stdout)


# --- 5: sync against async --------------------------------------------------------------------


def sync_run(client: inferencesh.Inference, name: str, events: int) -> float:
    count = 0
    start = time.perf_counter()
    for _update in client.run(params_for(name), stream=True):
        count += 1
    elapsed = time.perf_counter() - start
    check_count(f"sync run(stream=True) {name}", count, events + 1)
    return elapsed


def measure_sync(base_url: str, cfg: Config, results: Results) -> None:
    """Sync and async `run(stream=True)` alternately, each on its own warm client."""
    n = cfg.n_small
    sync_row = results.add("sync_200", Row("sync run(stream=True), SSE, 200 B", n))
    async_row = results.add("async_200", Row("async run(stream=True), SSE, 200 B (paired)", n))
    runner = asyncio.Runner()
    ours = inferencesh.async_inference(api_key=API_KEY, base_url=base_url)
    try:
        with inferencesh.inference(api_key=API_KEY, base_url=base_url) as client:
            sync_run(client, SMALL_NAME, n)
            runner.run(ours_run(ours, SMALL_NAME, n))
            for _ in range(cfg.repeats):
                sync_row.seconds.append(sync_run(client, SMALL_NAME, n))
                gc.collect()
                async_row.seconds.append(runner.run(ours_run(ours, SMALL_NAME, n)))
                gc.collect()
    finally:
        runner.run(ours.aclose())
        runner.close()


# --- 6: against the emulator ------------------------------------------------------------------


async def emulator_run(client: inferencesh.AsyncInference, steps: int) -> tuple[float, int]:
    """One task of `_server.steps_app` on the emulator, run and streamed to its end.

    Returns (seconds, updates yielded). The stream opens after the POST, so the steps taken by
    then arrive folded into the emulator's first snapshot: a few fewer updates than steps.
    """
    params = {"app": f"{EMULATOR_APP}@1", "input": {"steps": steps, "size": SMALL}}
    count = 0
    last: inferencesh.TaskUpdate | None = None
    start = time.perf_counter()
    async for update in client.run(params, stream=True):
        count += 1
        last = update
    elapsed = time.perf_counter() - start
    if last is None or last.status is not inferencesh.TaskStatus.COMPLETED:
        raise RuntimeError(f"the emulator stream ended with {last!r:.200}, not completed")
    return elapsed, count


def measure_emulator(cfg: Config, results: Results) -> None:
    """Our client against the emulator in its own process, when `inferencesh.local` exists."""
    try:
        from inferencesh.local import Emulator, EmulatorOptions, serve  # noqa: F401
    except ImportError as exc:
        results.notes.append(f"emulator rows skipped: inferencesh.local is not importable ({exc})")
        return

    async def go(base_url: str) -> Row:
        steps = cfg.emulator_steps
        row = Row(f"ours run(stream=True) vs emulator, {steps:,} steps", 0)
        async with inferencesh.async_inference(api_key=API_KEY, base_url=base_url) as client:
            await emulator_run(client, steps)
            for _ in range(cfg.repeats):
                seconds, count = await emulator_run(client, steps)
                row.seconds.append(seconds)
                row.events = count  # updates/s is what the table shows for this row
        return row

    with running_server(["--emulator"]) as base_url:
        results.add("emulator", asyncio.run(go(base_url)))


# --- report -----------------------------------------------------------------------------------


def fmt_rate(value: float) -> str:
    return "n/a" if value != value else f"{value:,.0f}"


def target_line(label: str, value: float | None, unit: str, target: str, ok: bool | None) -> str:
    """`ratio <label>: <value> (target ...: met | NOT met)`; `value=None` prints why not."""
    if value is None:
        return f"ratio {label}: n/a ({target})"
    shown = f"{value:.2f}x" if unit == "x" else f"{value:.1f} {unit}"
    if ok is None:
        return f"ratio {label}: {shown} ({target})"
    return f"ratio {label}: {shown} (target {target}: {'met' if ok else 'NOT met'})"


def report(results: Results, cfg: Config) -> list[str]:
    """The tables, the notes, and the summary of ratios against the targets."""
    lines = ["", f"== throughput, events/s, best and median of {cfg.repeats} repeats"]
    lines.append(f"{'row':<56} {'best':>10} {'median':>10} {'events':>8}")
    for row in results.rows.values():
        if row.note:
            lines.append(f"{row.name:<56} {row.note}")
        else:
            lines.append(
                f"{row.name:<56} {fmt_rate(row.best):>10} {fmt_rate(row.median):>10}"
                f" {row.events:>8}"
            )
    lines.append("(run(stream=True) rows also yield the POST's task first: N + 1 updates)")
    t = results.ttfe_ms
    if t:
        lines += [
            "",
            f"== time to first event on a fresh client, median of {cfg.ttfe_trials} trials, ms",
            f"raw floor: connect + GET + first event            {t['raw']:8.3f}",
            f"ours stream_task(id): first update (one GET)        {t['stream_task']:8.3f}",
            f"ours run(stream=True): first update (the POST)      {t['run_created']:8.3f}",
            f"ours run(stream=True): first streamed update        {t['run_first_event']:8.3f}",
            f"httpx + httpx-sse: first event                      {t['httpx']:8.3f}",
        ]
    f = results.fanout
    if f:
        lines += [
            "",
            f"== fan-out: {f['streams']} concurrent stream_task x {cfg.fan_events} updates, "
            "one client",
            f"wall {f['wall_s']:.3f} s, {f['events'] / f['wall_s']:,.0f} events/s; RSS before "
            f"{f['rss_before_kib']} KiB, peak {f['peak_kib']} KiB ({f['peak_source']})",
        ]
    if results.notes:
        lines += ["", *results.notes]
    lines += ["", "== summary (targets are printed, never asserted)"]
    rows = results.rows

    def ratio(a: str, b: str) -> float | None:
        if a not in rows or b not in rows or rows[a].note or rows[b].note:
            return None
        return rows[a].best / rows[b].best

    def why_not(key: str) -> str:
        row = rows.get(key)
        return row.note if row is not None and row.note else "not measured"

    small = SMALL
    lines.append(
        target_line(
            "ours/httpx-sse events/s, 200 B",
            value := ratio(f"ours_run_{small}", f"httpx_{small}"),
            "x",
            f">= {TARGET_VS_HTTPX}x" if value is not None else why_not(f"httpx_{small}"),
            None if value is None else value >= TARGET_VS_HTTPX,
        )
    )
    # Like for like: the official client can only read NDJSON, so ours reads the same bytes
    # through the same call, run(stream=True). Ours over SSE is printed next to it.
    lines.append(
        target_line(
            "ours/official events/s, 200 B, both NDJSON",
            value := ratio(f"ours_run_ndjson_{small}", f"official_{small}"),
            "x",
            f">= {TARGET_VS_OFFICIAL}x" if value is not None else why_not(f"official_{small}"),
            None if value is None else value >= TARGET_VS_OFFICIAL,
        )
    )
    value = ratio(f"ours_run_{small}", f"official_{small}")
    target = "no target" if value is not None else why_not(f"official_{small}")
    lines.append(
        target_line("ours (SSE)/official (NDJSON) events/s, 200 B", value, "x", target, None)
    )
    for ours_key, other, what in (
        ("ours_run", "httpx", "httpx-sse"),
        ("ours_run_ndjson", "official", "official, both NDJSON"),
        ("ours_run", "raw", "raw floor"),
    ):
        value = ratio(f"{ours_key}_{LARGE}", f"{other}_{LARGE}")
        target = "no target" if value is not None else why_not(f"{other}_{LARGE}")
        lines.append(target_line(f"ours/{what} events/s, 4 KiB", value, "x", target, None))
    value = ratio(f"ours_run_{small}", f"raw_{small}")
    lines.append(target_line("ours/raw floor events/s, 200 B", value, "x", "no target", None))
    if t:
        value = t["stream_task"] / t["raw"]
        lines.append(
            target_line(
                "time to first event, ours stream_task / raw floor",
                value,
                "x",
                f"<= {TARGET_TTFE}x",
                value <= TARGET_TTFE,
            )
        )
        lines.append(
            target_line(
                "time to first event, ours run (POST + GET) / raw floor",
                t["run_first_event"] / t["raw"],
                "x",
                "no target: two requests against one",
                None,
            )
        )
    if f:
        per = f["per_stream_kib"]
        lines.append(
            target_line(
                f"fan-out peak RSS per stream ({f['streams']} streams)",
                per,
                "KiB",
                f"<= {TARGET_RSS_KIB:.0f} KiB",
                per <= TARGET_RSS_KIB,
            )
        )
    value = ratio("sync_200", "async_200")
    lines.append(
        target_line(
            "sync/async events/s, 200 B",
            value,
            "x",
            f">= {TARGET_SYNC}x" if value is not None else "not measured",
            None if value is None else value >= TARGET_SYNC,
        )
    )
    return lines


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the client's task streams.")
    parser.add_argument("--quick", action="store_true", help="N/100: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--fanout-child", metavar="BASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--fan-streams", type=int, default=FULL.fan_streams)
    parser.add_argument("--fan-events", type=int, default=FULL.fan_events)
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.fanout_child:
        child = fanout_child(args.fanout_child, args.fan_streams, args.fan_events)
        print(json.dumps(asyncio.run(child)))
        return 0

    cfg = QUICK if args.quick else FULL
    results = Results()
    started = time.perf_counter()
    print(
        f"bench_stream: {'quick' if cfg.quick else 'full'} run; inferencesh "
        f"{inferencesh.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} cores; "
        f"compiled accelerator {'on' if SPEEDUPS else 'off'}",
        flush=True,
    )
    streams = [
        f"{SMALL_NAME}:{SMALL}:{cfg.n_small}",
        f"{LARGE_NAME}:{LARGE}:{cfg.n_large}",
        f"{FAN_NAME}:{SMALL}:{cfg.fan_events}",
    ]
    server_args = [arg for spec in streams for arg in ("--stream", spec)]
    with running_server(server_args) as base_url:
        print(f"server {base_url} ready; throughput ...", flush=True)
        asyncio.run(measure_throughput(base_url, cfg, results))
        print("official client ...", flush=True)
        measure_official(base_url, cfg, results)
        print("sync client ...", flush=True)
        measure_sync(base_url, cfg, results)
        print("time to first event ...", flush=True)
        asyncio.run(measure_ttfe(base_url, cfg, results))
        print("fan-out ...", flush=True)
        measure_fanout(base_url, cfg, results)
    print("emulator ...", flush=True)
    measure_emulator(cfg, results)
    lines = report(results, cfg)
    lines.append(f"(total {time.perf_counter() - started:.0f} s)")
    print("\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": {
                        k: {
                            "name": r.name,
                            "events": r.events,
                            "seconds": r.seconds,
                            "note": r.note,
                        }
                        for k, r in results.rows.items()
                    },
                    "ttfe_ms": results.ttfe_ms,
                    "fanout": results.fanout,
                    "notes": results.notes,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
