"""Benchmark the client's task streams: throughput at four event sizes, fan-out, emulator.

Run from the repository root (`bash scripts/test` creates .venv):

    .venv/bin/python benchmarks/bench_stream.py                 # the full run (a few minutes)
    .venv/bin/python benchmarks/bench_stream.py --quick         # a smoke run (seconds)
    .venv/bin/python benchmarks/bench_stream.py --json out.json # also save the raw figures

Everything talks to servers started here on 127.0.0.1, each in its own process (`_server.py`):
a minimal aiohttp.web server that writes PRE-RENDERED task streams in 512 KiB pieces (so it is
never the bottleneck), and the SDK's emulator for the last, informational row.

1. Throughput, events/s, for events of 200 B, 4 KiB, 64 KiB and 1 MiB. Each event is a
   per-step partial update whose padding is ONE base64-like string (`output.preview`, as an
   image preview would be) and whose `progress` moves by one, so each is new to a client; the
   last is a small terminal snapshot (status 10). SSE events carry `id: 1`, `id: 2`...;
   NDJSON lines the same ids as `"event_id"`. For each size one server holds both bodies, and
   every row reads them: ours async and ours blocking (`stream_task(id)`) over SSE and over
   NDJSON, httpx + httpx-sse over SSE, the official `inferencesh` 0.36.0 client over NDJSON
   (the one long-lived `_official_child.py` process, asked for one measurement at a time),
   and a raw floor per framing (asyncio streams, a hand-written GET, orjson per event, linear
   in the event size). All rows run in every round, in the same order: a warm-up round, then
   3 measured rounds; each row shows its best and median.
2. Ratios of same-round figures (the median over rounds of each round's ratio), against the
   targets from the issue: printed as met or not met, never asserted.
3. Fan-out: 10,000 concurrent `stream_task` consumers on one async client, in a child process
   that does nothing else: wall time, events/s, errors, and peak RSS per stream above the idle
   client.
4. Our client against the emulator (events produced live, so the emulator sets the pace).

The run fails (exit 1) only when one of our rows or a floor does not read its stream exactly
(a different number of updates, or an error). `tests/test_bench_stream_smoke.py` runs
`--quick` so this file cannot rot.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import importlib
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import httpx  # noqa: E402
import orjson  # noqa: E402
from _server import (  # noqa: E402
    EMULATOR_APP,
    NDJSON_SUFFIX,
    LineReader,
    raise_fd_limit,
    running_server,
    stop_child,
)
from httpx_sse import aconnect_sse  # noqa: E402

import inferencesh  # noqa: E402

OFFICIAL_DIR = HERE / ".official"
OFFICIAL_VERSION = "0.36.0"
API_KEY = "bench-key"
READ_SIZE = 256 * 1024  # what the floor asks per read: our client's default chunk_size
FAN_TASK = "fan"
FAN_EVENT_BYTES = 200
# Bounds: one row's stream (a blocking row relies on the client's own idle_timeout), the
# fan-out child, and every server and child process's lifetime.
ROW_TIMEOUT = 300.0
FANOUT_TIMEOUT = 300.0

# The targets from the issue; printed next to each figure, never asserted.
TARGET_VS_HTTPX = 1.3
TARGET_VS_OFFICIAL = 1.3
TARGET_VS_OFFICIAL_200B = 3.0
TARGET_VS_FLOOR_200B = 0.55
TARGET_VS_FLOOR = 0.9
TARGET_BLOCKING = 0.9
TARGET_RSS_KIB = 32.0


@dataclass(frozen=True)
class Size:
    """One event size: its label, bytes per event, and events per row (full and quick)."""

    label: str
    size: int
    full: int
    quick: int

    @property
    def task(self) -> str:
        return f"s{self.size}"


# About 100 MB of payload per row at every size.
SIZES = (
    Size("200 B", 200, 500_000, 2_000),
    Size("4 KiB", 4096, 25_000, 200),
    Size("64 KiB", 65536, 1_600, 16),
    Size("1 MiB", 1 << 20, 100, 4),
)


@dataclass(frozen=True)
class Config:
    """What one run does; `--quick` is a smoke run with tiny streams."""

    quick: bool
    rounds: int
    fan_streams: int
    fan_events: int
    emulator_steps: int


FULL = Config(quick=False, rounds=3, fan_streams=10_000, fan_events=20, emulator_steps=20_000)
QUICK = Config(quick=True, rounds=1, fan_streams=300, fan_events=20, emulator_steps=200)

# Every round runs these rows in this order.
ROWS = (
    ("async_sse", "ours async, SSE"),
    ("async_ndjson", "ours async, NDJSON"),
    ("blocking_sse", "ours blocking, SSE"),
    ("blocking_ndjson", "ours blocking, NDJSON"),
    ("httpx_sse", "httpx + httpx-sse, SSE"),
    ("official", f"official {OFFICIAL_VERSION}, NDJSON"),
    ("floor_sse", "raw floor, SSE"),
    ("floor_ndjson", "raw floor, NDJSON"),
)
OURS = {"async_sse", "async_ndjson", "blocking_sse", "blocking_ndjson"}


@dataclass
class Row:
    """One row at one size: the seconds of each measured round for `events` events."""

    key: str
    name: str
    events: int
    seconds: list[float] = field(default_factory=list)
    note: str = ""  # why the row has no figures: skipped or failed

    def rate(self, seconds: float) -> float:
        return self.events / seconds

    @property
    def best(self) -> float:
        return self.rate(min(self.seconds))

    @property
    def median(self) -> float:
        return self.rate(statistics.median(self.seconds))


@dataclass
class Ratio:
    """One printed ratio: a value (or why there is none) against zero or more targets."""

    label: str
    value: float | None
    unit: str  # "x", "KiB" or "" (a count)
    targets: list[tuple[str, bool | None]]  # (target text, met; None when not measured)
    why_not: str = ""

    def line(self) -> str:
        if self.value is None:
            return f"ratio {self.label}: n/a ({self.why_not})"
        shown = {"x": f"{self.value:.2f}x", "KiB": f"{self.value:.1f} KiB"}.get(
            self.unit, f"{self.value:g}"
        )
        marks = "; ".join(f"target {t}: {'met' if ok else 'NOT met'}" for t, ok in self.targets)
        return f"ratio {self.label}: {shown}" + (f" ({marks})" if marks else "")


@dataclass
class Results:
    """Everything measured, for the report and `--json`."""

    header: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, dict[str, Row]] = field(default_factory=dict)  # size label -> key -> row
    fanout: dict[str, Any] = field(default_factory=dict)
    emulator: Row | None = None
    notes: list[str] = field(default_factory=list)


class CountError(RuntimeError):
    """A reader yielded a different number of updates than the stream holds."""


def check_count(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise CountError(f"{what}: {got} updates, expected {expected}")


# --- one stream, timed, per reader -------------------------------------------------------------


async def ours_async(client: inferencesh.AsyncInference, task_id: str, events: int) -> float:
    """`async for update in client.stream_task(id)`: one GET, every stream event."""
    count = 0
    start = time.perf_counter()
    async for _update in client.stream_task(task_id):
        count += 1
    elapsed = time.perf_counter() - start
    check_count(f"ours async {task_id}", count, events)
    return elapsed


def ours_blocking(client: inferencesh.Inference, task_id: str, events: int) -> float:
    """`for update in client.stream_task(id)` on the blocking client."""
    count = 0
    start = time.perf_counter()
    for _update in client.stream_task(task_id):
        count += 1
    elapsed = time.perf_counter() - start
    check_count(f"ours blocking {task_id}", count, events)
    return elapsed


async def httpx_sse(client: httpx.AsyncClient, url: str, events: int) -> float:
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


class FloorParser:
    """The raw floor's framing: split a body into lines and parse each payload with orjson.

    Linear in the body whatever the event size: each chunk is searched on its own, never
    together with what came before; the pieces of a line cut across reads are kept in a list
    and joined once, when its end arrives. A chunk without a line end (inside a long event) is
    only searched with `find` (memchr); others are split in one `bytes.split`. Over SSE each
    `data:` line is one event's payload (the server sends one per event; `id:`, `retry:` and
    blank lines are skipped); over NDJSON each non-empty line is one.
    """

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.pieces: list[bytes] = []

    def feed(self, chunk: bytes) -> int:
        """Parse the payloads of the lines `chunk` completes; return how many."""
        pieces = self.pieces
        if chunk.find(b"\n") < 0:
            pieces.append(chunk)
            return 0
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if pieces:
            pieces.append(lines[0])
            lines[0] = b"".join(pieces)
            pieces.clear()
        if tail:
            pieces.append(tail)
        loads = orjson.loads
        count = 0
        if self.sse:
            for line in lines:
                if line[:5] == b"data:":
                    loads(line[5:])
                    count += 1
        else:
            for line in lines:
                if line:
                    loads(line)
                    count += 1
        return count


async def raw_floor(base_url: str, task_id: str, events: int, *, sse: bool) -> float:
    """The fastest plausible reader: asyncio streams, HTTP/1.1 by hand, orjson per event."""
    host, port = base_url.removeprefix("http://").split(":")
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port), limit=READ_SIZE)
    try:
        accept = "text/event-stream" if sse else "application/x-ndjson"
        writer.write(
            f"GET /tasks/{task_id}/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Accept: {accept}\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        if lines[0].split()[1] != b"200":
            raise RuntimeError(f"raw floor: {lines[0]!r}")
        lengths = [int(h[15:]) for h in lines if h[:15].lower() == b"content-length:"]
        if not lengths:
            raise RuntimeError("the raw floor expects a Content-Length body")
        remaining = lengths[0]
        parser = FloorParser(sse)
        count = 0
        while remaining > 0:
            chunk = await reader.read(min(READ_SIZE, remaining))
            if not chunk:
                raise RuntimeError("raw floor: the body ended early")
            remaining -= len(chunk)
            count += parser.feed(chunk)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    elapsed = time.perf_counter() - start
    check_count(f"raw floor {task_id}", count, events)
    return elapsed


# --- the official client, in its long-lived child ---------------------------------------------


class OfficialFailure(RuntimeError):
    """The official client failed to read a stream (its child's own message)."""


class OfficialChild:
    """`_official_child.py`, started once per run; `measure` asks it for one stream."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(OFFICIAL_DIR), env.get("PYTHONPATH", "")) if p
        )
        self._proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_official_child.py"),
                "--expect-dir",
                str(OFFICIAL_DIR),
                "--expect-version",
                OFFICIAL_VERSION,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._lines = LineReader(self._proc, "the official client's child")
        try:
            ready = json.loads(self._lines.line(120))
            if not ready.get("ready"):
                raise RuntimeError(f"the official client's child: {ready.get('error')}")
        except BaseException:
            self.close()
            raise
        self.path = ready["path"]

    def measure(self, base_url: str, task_id: str, events: int, timeout: float) -> float:
        """Seconds the official client took to read `task_id`'s stream (it times itself)."""
        assert self._proc.stdin is not None
        command = {"base_url": base_url, "stream": task_id, "timeout": timeout}
        self._proc.stdin.write(json.dumps(command).encode() + b"\n")
        self._proc.stdin.flush()
        reply = json.loads(self._lines.line(timeout + 30))
        if "error" in reply:
            raise OfficialFailure(reply["error"])
        check_count(f"official {task_id}", reply["count"], events)
        return float(reply["seconds"])

    def close(self) -> None:
        stop_child(self._proc)


def start_official(cfg: Config) -> tuple[OfficialChild | None, str]:
    """The official client's child, or None and why not; the full run installs it if missing."""
    if not (OFFICIAL_DIR / "inferencesh" / "client.py").exists():
        if cfg.quick:
            return None, "benchmarks/.official is missing and --quick never installs it"
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
        print(f"installing the official client: {' '.join(command)}", flush=True)
        try:
            done = subprocess.run(command, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"installing inferencesh=={OFFICIAL_VERSION} failed: {exc}"
        if done.returncode != 0:
            return (
                None,
                f"installing inferencesh=={OFFICIAL_VERSION} failed (exit {done.returncode})",
            )
    try:
        child = OfficialChild()
    except (OSError, RuntimeError, ValueError) as exc:
        return None, f"the official client did not start: {exc}"
    return child, f"official client: inferencesh {OFFICIAL_VERSION} from {child.path}"


# --- 1: throughput, all rows interleaved ------------------------------------------------------


def measure_size(
    size: Size, n: int, cfg: Config, official: OfficialChild | None, why_no_official: str
) -> dict[str, Row]:
    """A warm-up round, then `cfg.rounds` rounds of every row, against one server."""
    rows = {key: Row(key, name, n) for key, name in ROWS}
    if official is None:
        rows["official"].note = f"skipped: {why_no_official}"
    sse_id, ndjson_id = size.task, size.task + NDJSON_SUFFIX
    started = time.perf_counter()
    with (
        running_server(["--stream", f"{size.task}:{size.size}:{n}"]) as base_url,
        asyncio.Runner() as runner,
    ):
        print(f"{size.label}: server ready in {time.perf_counter() - started:.1f} s", flush=True)
        ours = inferencesh.async_inference(api_key=API_KEY, base_url=base_url)
        blocking = inferencesh.inference(api_key=API_KEY, base_url=base_url)
        hx = httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}, timeout=None)

        def run(coro: Coroutine[Any, Any, float]) -> float:
            return runner.run(asyncio.wait_for(coro, ROW_TIMEOUT))

        measures: dict[str, Callable[[], float]] = {
            "async_sse": lambda: run(ours_async(ours, sse_id, n)),
            "async_ndjson": lambda: run(ours_async(ours, ndjson_id, n)),
            "blocking_sse": lambda: ours_blocking(blocking, sse_id, n),
            "blocking_ndjson": lambda: ours_blocking(blocking, ndjson_id, n),
            "httpx_sse": lambda: run(httpx_sse(hx, f"{base_url}/tasks/{sse_id}/stream", n)),
            "floor_sse": lambda: run(raw_floor(base_url, sse_id, n, sse=True)),
            "floor_ndjson": lambda: run(raw_floor(base_url, ndjson_id, n, sse=False)),
        }
        if official is not None:
            measures["official"] = partial(official.measure, base_url, ndjson_id, n, ROW_TIMEOUT)
        try:
            for round_ in range(cfg.rounds + 1):  # round 0 is the warm-up
                for row in rows.values():
                    if row.note:
                        continue
                    try:
                        seconds = measures[row.key]()
                    except Exception as exc:
                        what = str(exc) if isinstance(exc, OfficialFailure) else repr(exc)
                        row.note = " ".join(f"failed: {what}".split())[:120]
                        row.seconds.clear()
                        continue
                    finally:
                        gc.collect()
                    if round_ > 0:
                        row.seconds.append(seconds)
                print(f"{size.label}: round {round_}/{cfg.rounds} done", flush=True)
        finally:
            blocking.close()
            runner.run(ours.aclose())
            runner.run(hx.aclose())
    return rows


# --- 3: fan-out (child process) ---------------------------------------------------------------


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
    errors: collections.Counter[str] = collections.Counter()

    async with inferencesh.async_inference(api_key=API_KEY, base_url=base_url) as client:

        async def consume() -> int:
            count = 0
            try:
                async for _update in client.stream_task(FAN_TASK):
                    count += 1
                check_count("fan-out stream", count, events)
            except Exception as exc:  # counted, so that one failure does not end the gather
                errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
            return count

        await consume()  # the session exists and the code is warm: the idle client
        errors.clear()
        gc.collect()
        before = status_kib("VmRSS")
        hwm_reset = reset_peak_rss()
        peak_sampled = before
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak_sampled
            while not done.is_set():
                peak_sampled = max(peak_sampled, status_kib("VmRSS"))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.005):
                        await done.wait()

        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        counts = await asyncio.gather(*(consume() for _ in range(streams)))
        wall = time.perf_counter() - start
        done.set()
        await sampler
        hwm = status_kib("VmHWM")
    peak = max(peak_sampled, hwm if hwm_reset else 0)
    return {
        "streams": streams,
        "events_per_stream": events,
        "events": sum(counts),
        "wall_s": wall,
        "errors": sum(errors.values()),
        "error_kinds": errors.most_common(3),
        "rss_idle_kib": before,
        "peak_kib": peak,
        "peak_source": "VmHWM (reset) and sampled VmRSS" if hwm_reset else "sampled VmRSS",
        "per_stream_kib": (peak - before) / streams,
        "nofile": list(raise_fd_limit()),
    }


def server_cpu(base_url: str) -> float:
    """The CPU seconds the benchmark server has used so far (`GET /_bench/cpu`)."""
    with urllib.request.urlopen(f"{base_url}/_bench/cpu", timeout=30) as answer:
        return float(json.load(answer)["cpu_s"])


def measure_fanout(cfg: Config) -> dict[str, Any]:
    """The fan-out child against a server holding one short stream; also the server's CPU
    time meanwhile, which shows whether the server or the client set the pace."""
    spec = f"{FAN_TASK}:{FAN_EVENT_BYTES}:{cfg.fan_events}"
    with running_server(["--stream", spec]) as base_url:
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
        cpu_before = server_cpu(base_url)
        done = subprocess.run(  # the child bounds itself; this is the backstop
            command, capture_output=True, text=True, timeout=FANOUT_TIMEOUT + 60, check=False
        )
        cpu = server_cpu(base_url) - cpu_before
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise RuntimeError("the fan-out child failed")
    result: dict[str, Any] = json.loads(done.stdout)
    result["server_cpu_s"] = cpu
    return result


# --- 4: against the emulator ------------------------------------------------------------------


async def emulator_run(client: inferencesh.AsyncInference, steps: int) -> tuple[float, int]:
    """One task of `_server.steps_app` on the emulator, run and streamed to its end.

    Returns (seconds, updates yielded). The stream opens after the POST, so the steps taken by
    then arrive folded into the emulator's first snapshot: a few fewer updates than steps.
    """
    params = {"app": f"{EMULATOR_APP}@1", "input": {"steps": steps, "size": 200}}
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
        importlib.import_module("inferencesh.local")
    except ImportError as exc:
        results.notes.append(f"emulator row skipped: inferencesh.local is not importable ({exc})")
        return

    async def go(base_url: str) -> Row:
        steps = cfg.emulator_steps
        row = Row("emulator", f"ours run(stream=True) vs emulator, {steps:,} steps", 0)
        async with inferencesh.async_inference(api_key=API_KEY, base_url=base_url) as client:
            await emulator_run(client, steps)
            for _ in range(cfg.rounds):
                seconds, count = await emulator_run(client, steps)
                row.seconds.append(seconds)
                row.events = count  # updates/s is what the table shows for this row
        return row

    with running_server(["--emulator"]) as base_url:
        results.emulator = asyncio.run(asyncio.wait_for(go(base_url), 4 * ROW_TIMEOUT))


# --- report -----------------------------------------------------------------------------------


def round_ratio(a: Row, b: Row) -> tuple[float | None, str]:
    """Median over rounds of rate(a) / rate(b) in the same round; or None and why not."""
    for row in (a, b):
        if row.note:
            return None, f"{row.name}: {row.note}"
        if not row.seconds:
            return None, f"{row.name}: no figures"
    pairs = [b_s / a_s for a_s, b_s in zip(a.seconds, b.seconds, strict=True)]
    return statistics.median(pairs), ""


def ratios(results: Results) -> list[Ratio]:
    """Every ratio line, in the order of the issue's list."""
    out: list[Ratio] = []

    def add(label: str, a: Row, b: Row, targets: list[float]) -> None:
        value, why = round_ratio(a, b)
        met = [(f">= {t}x", None if value is None else value >= t) for t in targets]
        out.append(Ratio(label, value, "x", met, why))

    for size in SIZES:
        rows = results.rows.get(size.label)
        if rows is None:
            continue
        small = size.size == 200
        add(
            f"ours async SSE / httpx-sse, {size.label}",
            rows["async_sse"],
            rows["httpx_sse"],
            [TARGET_VS_HTTPX],
        )
        add(
            f"ours async NDJSON / official NDJSON, {size.label}",
            rows["async_ndjson"],
            rows["official"],
            [TARGET_VS_OFFICIAL, TARGET_VS_OFFICIAL_200B] if small else [TARGET_VS_OFFICIAL],
        )
        floor = TARGET_VS_FLOOR_200B if small else TARGET_VS_FLOOR
        for framing in ("SSE", "NDJSON"):
            low = framing.lower()
            add(
                f"ours async {framing} / raw floor {framing}, {size.label}",
                rows[f"async_{low}"],
                rows[f"floor_{low}"],
                [floor],
            )
        for framing in ("SSE", "NDJSON"):
            low = framing.lower()
            add(
                f"ours blocking {framing} / ours async {framing}, {size.label}",
                rows[f"blocking_{low}"],
                rows[f"async_{low}"],
                [TARGET_BLOCKING],
            )
    f = results.fanout
    if f:
        label = f"fan-out {f['streams']:,} streams"
        per = f["per_stream_kib"]
        out.append(
            Ratio(
                f"{label}, peak RSS per stream",
                per,
                "KiB",
                [(f"<= {TARGET_RSS_KIB:.0f} KiB", per <= TARGET_RSS_KIB)],
            )
        )
        out.append(Ratio(f"{label}, errors", f["errors"], "", [("0", f["errors"] == 0)]))
    return out


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def report(results: Results, cfg: Config, all_ratios: list[Ratio]) -> list[str]:
    """The tables, the ratios and the notes."""
    lines: list[str] = []
    for size in SIZES:
        rows = results.rows.get(size.label)
        if rows is None:
            continue
        n = next(iter(rows.values())).events
        lines += [
            "",
            f"== {size.label} events, N = {n:,} per row ({n * size.size / 1e6:,.1f} MB of "
            f"payload); events/s, best and median of {cfg.rounds} round(s) after a warm-up",
            f"{'row':<34} {'best':>12} {'median':>12} {'MB/s (median)':>14}",
        ]
        for row in rows.values():
            if row.note:
                lines.append(f"{row.name:<34} {row.note}")
                continue
            mbps = row.median * size.size / 1e6
            lines.append(
                f"{row.name:<34} {fmt_rate(row.best):>12} {fmt_rate(row.median):>12} {mbps:>14,.0f}"
            )
    f = results.fanout
    if f:
        lines += [
            "",
            f"== fan-out: {f['streams']:,} concurrent stream_task x {f['events_per_stream']} "
            f"events of {FAN_EVENT_BYTES} B, one async client, in a child process",
            f"wall {f['wall_s']:.2f} s, {f['events'] / f['wall_s']:,.0f} events/s, "
            f"{f['errors']} errors; RSS idle {f['rss_idle_kib']:,} KiB, peak {f['peak_kib']:,} "
            f"KiB ({f['peak_source']}); RLIMIT_NOFILE {f['nofile'][0]}; the server (one process) "
            f"used {f['server_cpu_s']:.2f} CPU-s, the child's warm-up included",
        ]
        for kind, times in f["error_kinds"]:
            lines.append(f"  {times} x {kind}")
    emu = results.emulator
    if emu is not None:
        lines += [
            "",
            "== against the emulator (informational: it produces events live and sets the pace)",
            f"{emu.name}: {fmt_rate(emu.best)} updates/s best, {fmt_rate(emu.median)} median "
            f"({emu.events:,} updates)",
        ]
    if results.notes:
        lines += ["", *results.notes]
    lines += [
        "",
        "== ratios: median over rounds of each round's ratio; targets printed, never asserted",
    ]
    lines += [ratio.line() for ratio in all_ratios]
    checked = [ok for ratio in all_ratios for _, ok in ratio.targets if ok is not None]
    lines.append(f"targets met: {sum(checked)} of {len(checked)} measured")
    return lines


def header() -> dict[str, Any]:
    """Versions and the machine, for the first line and `--json`."""
    package_dir = Path(inferencesh.__file__).parent
    compiled = sorted(
        str(p.relative_to(package_dir))
        for p in package_dir.rglob("*")
        if p.suffix in (".so", ".pyd")
    )
    return {
        "inferencesh": inferencesh.__version__,
        "pure_python": not compiled,
        "compiled_modules": compiled,
        "python": sys.version.split()[0],
        "aiohttp": importlib.metadata.version("aiohttp"),
        "httpx": importlib.metadata.version("httpx"),
        "httpx-sse": importlib.metadata.version("httpx-sse"),
        "orjson": importlib.metadata.version("orjson"),
        "cores": os.cpu_count(),
    }


def header_line(h: dict[str, Any], cfg: Config) -> str:
    kind = "pure Python" if h["pure_python"] else f"compiled modules: {h['compiled_modules']}"
    return (
        f"bench_stream: {'quick' if cfg.quick else 'full'} run; inferencesh {h['inferencesh']} "
        f"({kind}); Python {h['python']}, aiohttp {h['aiohttp']}, httpx {h['httpx']}, "
        f"httpx-sse {h['httpx-sse']}, orjson {h['orjson']}; {h['cores']} cores"
    )


def to_json(results: Results, all_ratios: list[Ratio], cfg: Config, total: float) -> str:
    return json.dumps(
        {
            "header": results.header,
            "config": asdict(cfg),
            "sizes": {
                label: {key: asdict(row) for key, row in rows.items()}
                for label, rows in results.rows.items()
            },
            "ratios": [asdict(ratio) for ratio in all_ratios],
            "fanout": results.fanout,
            "emulator": asdict(results.emulator) if results.emulator else None,
            "notes": results.notes,
            "total_s": total,
        },
        indent=2,
    )


# --- main -------------------------------------------------------------------------------------


@contextlib.contextmanager
def official_child(cfg: Config) -> Iterator[tuple[OfficialChild | None, str]]:
    """The official client's child for the whole run (or None and why), always stopped."""
    child, note = start_official(cfg)
    try:
        yield child, note
    finally:
        if child is not None:
            child.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the client's task streams.")
    parser.add_argument("--quick", action="store_true", help="tiny streams, one round: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--fanout-child", metavar="BASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--fan-streams", type=int, default=FULL.fan_streams, help=argparse.SUPPRESS)
    parser.add_argument("--fan-events", type=int, default=FULL.fan_events, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.fanout_child:
        child = fanout_child(args.fanout_child, args.fan_streams, args.fan_events)
        print(json.dumps(asyncio.run(asyncio.wait_for(child, FANOUT_TIMEOUT))))
        return 0

    cfg = QUICK if args.quick else FULL
    started = time.perf_counter()
    results = Results(header=header())
    print(header_line(results.header, cfg), flush=True)
    with official_child(cfg) as (official, why):
        note = why if official is not None else f"official client row skipped: {why}"
        print(note, flush=True)
        results.header["official"] = note
        for size in SIZES:
            n = size.quick if cfg.quick else size.full
            results.rows[size.label] = measure_size(size, n, cfg, official, why)
    print("fan-out ...", flush=True)
    results.fanout = measure_fanout(cfg)
    print("emulator ...", flush=True)
    measure_emulator(cfg, results)
    all_ratios = ratios(results)
    total = time.perf_counter() - started
    lines = report(results, cfg, all_ratios)
    lines.append(f"(total {total:.0f} s)")
    print("\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(to_json(results, all_ratios, cfg, total))
    broken = [
        f"{label}: {row.name}: {row.note}"
        for label, rows in results.rows.items()
        for row in rows.values()
        if row.note.startswith("failed") and (row.key in OURS or row.key.startswith("floor"))
    ]
    for line in broken:
        print(f"BROKEN {line}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
