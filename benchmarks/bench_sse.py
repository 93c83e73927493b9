"""Benchmark `inferencesh.sse.SSEDecoder`: linearity, throughput against httpx-sse, exactness.

Run from the repository root:

    python benchmarks/bench_sse.py           # 1 MB / 10 MB linearity streams (about a minute)
    python benchmarks/bench_sse.py --quick   # 0.1 MB / 1 MB, a smoke run of a few seconds

1. Linearity: the per-byte cost of feeding (a) many small events and (b) one huge multi-line
   event, byte by byte and in 64 KiB chunks, at two stream sizes ten times apart. A flat ratio
   (target within 1.5x) means no quadratic re-scanning of buffered partial lines.
2. Throughput: events/s for 200-byte JSON events fed in 64 KiB chunks, ours against httpx-sse's
   decoder on the same bytes in the same run (best of several rounds), and their ratio.
3. Exactness: what each decoder returns on a few streams where the WHATWG rules are easy to get
   wrong, next to what the spec says.

The benchmark prints results and never asserts; `tests/test_bench_smoke.py` runs `--quick` so
it cannot rot. Timing uses `time.perf_counter` only.
"""

from __future__ import annotations

import argparse
import codecs
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from httpx_sse._decoders import SSEDecoder as HttpxSSEDecoder
from httpx_sse._decoders import SSELineDecoder as HttpxSSELineDecoder

from inferencesh.sse import SSEDecoder

MB = 1_000_000
CHUNK = 64 * 1024
EventTuple = tuple[str, str, str]  # (event type, data, id): comparable across both decoders


# --- streams ---------------------------------------------------------------------------------


def small_events_stream(size: int) -> bytes:
    """About `size` bytes of short events with ids, a comment now and then, LF line ends."""
    parts: list[bytes] = []
    total = 0
    index = 0
    while total < size:
        block = f'id: {index}\nevent: log\ndata: {{"line": "step {index} done"}}\n\n'.encode()
        if index % 50 == 0:
            block = b": keepalive\n\n" + block
        parts.append(block)
        total += len(block)
        index += 1
    return b"".join(parts)


def huge_event_stream(size: int) -> bytes:
    """One event of about `size` bytes: many `data:` lines, one blank line at the very end."""
    line = b"data: " + b"x" * 73 + b"\n"  # 80 bytes
    return line * max(1, size // len(line)) + b"\n"


def json_events_stream(count: int, event_size: int = 200) -> bytes:
    """`count` events `data: {json}\\n\\n`, each exactly `event_size` bytes on the wire."""
    parts: list[bytes] = []
    for index in range(count):
        head = {"id": f"task_{index:08d}", "status": "running", "progress": index % 100, "log": ""}
        overhead = len(b"data: ") + len(json.dumps(head).encode()) + len(b"\n\n")
        head["log"] = "x" * (event_size - overhead)
        block = b"data: " + json.dumps(head).encode() + b"\n\n"
        assert len(block) == event_size
        parts.append(block)
    return b"".join(parts)


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- the two decoders, fed the same way ------------------------------------------------------


def ours_count(chunks: list[bytes]) -> int:
    decoder = SSEDecoder(max_line_bytes=64 * MB)
    count = 0
    for chunk in chunks:
        count += len(decoder.feed(chunk))
    return count


def httpx_count(chunks: list[bytes]) -> int:
    """httpx-sse as `EventSource.iter_sse` drives it over `Response.iter_text()`."""
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = HttpxSSELineDecoder()
    decoder = HttpxSSEDecoder()
    count = 0
    for chunk in chunks:
        for line in lines.decode(text_decoder.decode(chunk)):
            if decoder.decode(line.rstrip("\n")) is not None:
                count += 1
    for line in lines.flush():
        if decoder.decode(line.rstrip("\n")) is not None:
            count += 1
    return count


def ours_bytewise(data: bytes) -> int:
    decoder = SSEDecoder(max_line_bytes=64 * MB)
    feed = decoder.feed
    count = 0
    for index in range(len(data)):
        events = feed(data[index : index + 1])
        if events:
            count += len(events)
    return count


# --- 1. linearity ----------------------------------------------------------------------------


def timed(run: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    count = run()
    return time.perf_counter() - start, count


def linearity(small: int, large: int) -> None:
    print(f"1. Linearity: per-byte cost at {small / MB:g} MB and {large / MB:g} MB")
    print(f"   {'stream':<22}{'feeding':<14}{'small ns/B':>12}{'large ns/B':>12}{'ratio':>8}")
    streams = {"many small events": small_events_stream, "one huge event": huge_event_stream}
    for name, make in streams.items():
        for mode in ("byte by byte", "64 KiB chunks"):
            costs: list[float] = []
            for size in (small, large):
                data = make(size)
                if mode == "byte by byte":
                    seconds, _ = timed(partial(ours_bytewise, data))
                else:
                    # Chunked runs are short: take the best of three to damp noise.
                    run = partial(ours_count, chunked(data, CHUNK))
                    seconds = min(timed(run)[0] for _ in range(3))
                costs.append(seconds / len(data) * 1e9)
            ratio = costs[1] / costs[0]
            print(f"   {name:<22}{mode:<14}{costs[0]:>12.1f}{costs[1]:>12.1f}{ratio:>7.2f}x")
    print("   (ratio = large/small per-byte cost; flat within 1.5x means linear)")


# --- 2. throughput ---------------------------------------------------------------------------


def throughput(count: int, rounds: int) -> None:
    data = json_events_stream(count)
    pieces = chunked(data, CHUNK)
    print(
        f"\n2. Throughput: {count} events of 200 bytes ({len(data) / MB:.1f} MB), "
        f"64 KiB chunks, {rounds} rounds"
    )
    results: dict[str, list[float]] = {"ours": [], "httpx-sse": []}
    for _ in range(rounds):
        # Alternate the two so drift (thermal, other load) hits both alike.
        for name, run in (("ours", ours_count), ("httpx-sse", httpx_count)):
            seconds, got = timed(partial(run, pieces))
            if got != count:
                raise SystemExit(f"{name} decoded {got} events, expected {count}")
            results[name].append(count / seconds)
    for name, rates in results.items():
        print(
            f"   {name:<10} best {max(rates):>12,.0f} events/s   "
            f"median {statistics.median(rates):>12,.0f} events/s"
        )
    best = max(results["ours"]) / max(results["httpx-sse"])
    median = statistics.median(results["ours"]) / statistics.median(results["httpx-sse"])
    print(f"ratio ours/httpx-sse: best {best:.2f}x, median {median:.2f}x (target >= 1.2x)")


# --- 3. exactness ----------------------------------------------------------------------------


def ours_events(stream: bytes) -> tuple[list[EventTuple], list[EventTuple]]:
    """Events before the end of the stream, and any more at the end (never, for ours)."""
    decoder = SSEDecoder()
    return [(e.event, e.data, e.id) for e in decoder.feed(stream)], []


def httpx_events(stream: bytes) -> tuple[list[EventTuple], list[EventTuple]]:
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = HttpxSSELineDecoder()
    decoder = HttpxSSEDecoder()

    def run(found: Iterator[str]) -> list[EventTuple]:
        events = (decoder.decode(line.rstrip("\n")) for line in found)
        return [(e.event, e.data, e.id) for e in events if e is not None]

    before = run(iter(lines.decode(text_decoder.decode(stream))))
    return before, run(iter(lines.flush()))


EXACTNESS: list[tuple[str, bytes, list[EventTuple]]] = [
    ("BOM-prefixed stream", b"\xef\xbb\xbfdata: x\n\n", [("message", "x", "")]),
    ("CR-only line ends", b"data: a\rdata: b\r\r", [("message", "a\nb", "")]),
    ("comment, blank line", b": keepalive\n\n", []),
    (
        "comment, blank (after id)",
        b"id: 7\ndata: x\n\n: keepalive\n\n",
        [("message", "x", "7")],
    ),
    ("retry-only block", b"retry: 3000\n\n", []),
    ("event type, no data", b"event: ping\n\n", []),
]


def show(events: tuple[list[EventTuple], list[EventTuple]]) -> str:
    before, at_end = events
    text = repr(before)
    return text + (f" +at EOF {at_end!r}" if at_end else "")


def exactness() -> None:
    print("\n3. Exactness: events from each decoder (one chunk; '+at EOF' = only at stream end)")
    for name, stream, expected in EXACTNESS:
        ours = ours_events(stream)
        theirs = httpx_events(stream)
        print(f"   {name}: {stream!r}")
        print(f"      spec       {expected!r}")
        print(f"      ours       {show(ours):<50} {'ok' if ours[0] == expected else 'DIFFERS'}")
        verdict = "ok" if theirs == (expected, []) else "DIFFERS"
        print(f"      httpx-sse  {show(theirs):<50} {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.quick:
        linearity(MB // 10, MB)
        throughput(count=20_000, rounds=3)
    else:
        linearity(MB, 10 * MB)
        throughput(count=100_000, rounds=7)
    exactness()
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
