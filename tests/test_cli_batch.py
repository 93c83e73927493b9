"""`inferencesh batch APP INPUTS.jsonl`: results, exit codes, the journal, crashes and reruns.

The quick cases call `main()` in-process with `--local`. The crash cases run the CLI as a child
process against an emulator served by the test (whose app records every call it gets, by input
index), kill it with SIGKILL or SIGINT at chosen points, run the same command again, and check
the results file and the emulator's own records: every input ran exactly once, or is named as
caught in the `submitting` window, and has exactly one result line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio.from_thread
import pytest
from aiohttp import web
from support import child, fast_emulator, plain

from inferencesh.cli import main
from inferencesh.local import Emulator, serve_in_thread

APP = "infsh/flux-schnell"
COUNTED = "acme/count"
QUICK = {"steps": 1, "step_delay": 0}


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_inputs(folder: Path, inputs: list[Any], *, blank_after: int | None = None) -> Path:
    path = folder / "inputs.jsonl"
    lines = [json.dumps(item) for item in inputs]
    if blank_after is not None:
        lines.insert(blank_after + 1, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def result_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def journal_rows(path: Path) -> dict[int, tuple[str, str | None]]:
    """`index -> (state, task id)` as the journal holds them now ({} while it does not exist)."""
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=5)
    try:
        rows = db.execute('SELECT "index", state, task_id FROM inputs').fetchall()
    except sqlite3.Error:  # not created yet
        return {}
    finally:
        db.close()
    return {index: (state, task_id) for index, state, task_id in rows}


def count_state(path: Path, state: str) -> int:
    return sum(1 for found, _ in journal_rows(path).values() if found == state)


def wait_for(emu: Emulator, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Wait, bounded, until `predicate()` holds: woken by each change of the emulator, and
    checked again every 50 ms for what changes outside it (the CLI's journal and results)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if emu.wait_until(lambda e: predicate(), timeout=min(0.05, left)):
            return True
    return predicate()


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


class Gate:
    """Holds the counting app's calls until opened (from the test's thread)."""

    def __init__(self, *, open: bool) -> None:
        self.is_open = open
        self._waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._lock = threading.Lock()

    async def wait(self) -> None:
        event = asyncio.Event()
        with self._lock:
            if self.is_open:
                return
            self._waiting.append((asyncio.get_running_loop(), event))
        await event.wait()

    def open(self) -> None:
        with self._lock:
            self.is_open = True
            waiting, self._waiting = self._waiting, []
        for loop, event in waiting:
            loop.call_soon_threadsafe(event.set)


def counting_app(
    calls: list[int], gate: Gate | None = None, *, cleanup: Gate | None = None, steps: int = 3
) -> Any:
    """An app that records the index (`input["i"]`) of every call, waits for `gate` to open,
    then takes a few steps. Cancelled while waiting, it cleans up until `cleanup` opens (its
    task stays `cancelling` until then)."""

    async def app(input: dict[str, Any], ctx: Any) -> dict[str, Any]:
        calls.append(input["i"])
        if gate is not None:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                if cleanup is not None:
                    await cleanup.wait()
                raise
        for step in range(1, steps + 1):
            await asyncio.sleep(0.02)
            ctx.progress(step, steps)
        return {"i": input["i"]}

    return app


def batch_args(inputs: Path, url: str, *extra: str) -> list[str]:
    return ["batch", COUNTED, str(inputs), "--base-url", url, "--api-key", "k", *extra]


def run_child(*args: str) -> tuple[int, str]:
    with child(*args, tty=False) as proc:
        return proc.finish(timeout=60)


def reported(text: str) -> dict[int, int]:
    """`index -> how many times it may have run` of the inputs named in the window."""
    found = re.findall(r"input (\d+) may have run (twice|\d+ times)", text)
    return {int(index): 2 if times == "twice" else int(times.split()[0]) for index, times in found}


# -- in-process, --local -------------------------------------------------------------------------


def test_local_json_writes_one_line_per_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--local --json: each input once in the results file and on stdout; exit 0."""
    inputs = write_inputs(tmp_path, [{"prompt": f"p{i}", "sim": QUICK} for i in range(6)],
                          blank_after=2)  # fmt: skip
    code, out, err = run_main(capsys, "batch", APP, str(inputs), "--local", "--json",
                              "--concurrency", "3")  # fmt: skip
    assert 0 == code, err
    results = tmp_path / "inputs.results.jsonl"
    lines = result_lines(results)
    assert [json.loads(line) for line in out.splitlines()] == lines
    assert list(range(6)) == sorted(line["index"] for line in lines)
    for line in lines:
        assert "completed" == line["status"]
        assert {"index", "task_id", "status", "output"} == set(line)
        assert {"prompt": f"p{line['index']}"} == line["output"]["input"]
        assert line["task_id"].startswith("task_")
    assert (tmp_path / "inputs.results.jsonl.journal.sqlite3").exists()
    assert "6 of 6 inputs done (6 completed)" in err
    # Run again: nothing left to do, nothing written twice.
    code, out, err = run_main(capsys, "batch", APP, str(inputs), "--local", "--json")
    assert 0 == code, err
    assert "" == out
    assert "nothing left to run" in err
    assert lines == result_lines(results)


def test_results_file_is_utf8_json_and_stdout_ascii_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The results file is UTF-8 JSON (non-ASCII text as it is; control characters and line
    separators escaped, so each line is one inert line); stdout has the same values as ASCII
    JSON, which any stdout encoding can carry."""
    prompt = "✓ 25 °C \x1b[2J \u009b \x7f \u2028 end"
    inputs = write_inputs(tmp_path, [{"prompt": prompt, "sim": QUICK}])
    code, out, err = run_main(capsys, "batch", APP, str(inputs), "--local", "--json")
    assert 0 == code, err
    raw = (tmp_path / "inputs.results.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    text = raw.decode("utf-8")
    assert "✓ 25 °C \\u001b[2J \\u009b \\u007f \\u2028 end" in text
    assert [text] == text.splitlines(keepends=True)
    assert out.isascii()
    assert json.loads(text) == json.loads(out)
    assert prompt == json.loads(out)["output"]["input"]["prompt"]


def test_failed_inputs_exit_1_with_their_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Inputs whose task fails get an error line; the batch exits 1, and still 1 on a rerun."""
    failing = {"sim": {"fail": "boom", "steps": 1}}
    inputs = write_inputs(tmp_path, [{"sim": QUICK}, failing, {"sim": QUICK}, failing])
    out_path = tmp_path / "out" / "results.jsonl"
    out_path.parent.mkdir()
    args = ["batch", APP, str(inputs), "--local", "--out", str(out_path)]
    code, out, err = run_main(capsys, *args)
    assert 1 == code, err
    lines = {line["index"]: line for line in result_lines(out_path)}
    assert [0, 1, 2, 3] == sorted(lines)
    for index in (1, 3):
        assert {"index": index, "task_id": lines[index]["task_id"], "status": "failed",
                "error": "boom"} == lines[index]  # fmt: skip
    assert "completed" == lines[0]["status"]
    assert "4 of 4 inputs done (2 completed, 2 failed)" in err
    assert (out_path.parent / "results.jsonl.journal.sqlite3").exists()
    code, out, err = run_main(capsys, *args)
    assert (1, "") == (code, out)
    assert "nothing left to run" in err
    assert 4 == len(result_lines(out_path))


def test_download_saves_each_tasks_files_in_its_own_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = write_inputs(tmp_path, [{"prompt": "a", "sim": QUICK}, {"prompt": "b", "sim": QUICK}])
    media = tmp_path / "media"
    code, _, err = run_main(capsys, "batch", APP, str(inputs), "--local", "--json",
                            "--download", str(media))  # fmt: skip
    assert 0 == code, err
    for line in result_lines(tmp_path / "inputs.results.jsonl"):
        saved = media / str(line["index"]) / "image.png"
        assert [str(saved)] == line["files"]
        assert saved.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"a": 1}', "{bad"], "line 2 is not valid JSON"),
        (['{"a": 1}', "", "[1, 2]"], "line 3 must be a JSON object (the app input), got an array"),
        (["null"], "line 1 must be a JSON object"),
    ],
)
def test_a_bad_input_line_is_a_usage_error_before_anything_starts(
    lines: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = run_main(capsys, "batch", APP, str(inputs), "--local")
    assert 2 == code
    assert message in err
    assert "Traceback" not in err
    assert "" == out
    assert ["inputs.jsonl"] == sorted(path.name for path in tmp_path.iterdir())


def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing file, no API key, clashing paths, another batch's journal, results without
    their journal: exit 2 with one message, nothing run."""
    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    inputs = write_inputs(tmp_path, [{"sim": QUICK}])
    cases = [
        (["batch", APP, str(tmp_path / "nope.jsonl"), "--local"], "cannot read"),
        (["batch", APP, str(inputs)], "no API key"),
        (["batch", APP, str(inputs), "--local", "--out", str(inputs)], "name the same file"),
        (["batch", APP, str(inputs), "--local", "--concurrency", "0"], "expected an integer >= 1"),
    ]
    for args, message in cases:
        code, _, err = run_main(capsys, *args)
        assert (2, True) == (code, message in err), err
    assert 0 == run_main(capsys, "batch", APP, str(inputs), "--local")[0]
    # The journal belongs to these inputs and this app.
    code, _, err = run_main(capsys, "batch", "acme/other", str(inputs), "--local")
    assert 2 == code
    assert "is the journal of another batch (its app differs" in err
    inputs.write_text('{"sim": {"steps": 2}}\n', encoding="utf-8")
    code, _, err = run_main(capsys, "batch", APP, str(inputs), "--local")
    assert 2 == code
    assert "its input file differs" in err
    assert "remove it to start afresh, or pass another --journal" in err
    # Results that no journal accounts for.
    (tmp_path / "inputs.results.jsonl.journal.sqlite3").unlink()
    code, _, err = run_main(capsys, "batch", APP, str(inputs), "--local")
    assert 2 == code
    assert "already holds results" in err


def test_a_journal_error_while_planning_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal failing as the run plans (its first writes): exit 2 with one line, no
    traceback."""
    from inferencesh import _cli_batch

    def broken(self: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(_cli_batch._Journal, "requeue_unconfirmed", broken)
    inputs = write_inputs(tmp_path, [{"sim": QUICK}])
    code, out, err = run_main(capsys, "batch", APP, str(inputs), "--local", "--json")
    assert (2, "") == (code, out)
    journal = tmp_path / "inputs.results.jsonl.journal.sqlite3"
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert f"inferencesh batch: error: cannot use the journal {journal}: disk I/O error" == last


# -- crashes and reruns, against an emulator served by the test -----------------------------------


def test_kill_9_at_several_points_then_reruns_run_each_input_once(
    emu: Emulator, server: str, tmp_path: Path
) -> None:
    """SIGKILL once tasks have started, then right after a result line was written; then a
    line written but not committed, and a partial last line: the rerun finishes the batch with
    each input run once (or named as caught in the submitting window) and its line written
    once."""
    calls: list[int] = []
    emu.register_app(COUNTED, counting_app(calls))
    count = 16
    inputs = write_inputs(tmp_path, [{"i": i} for i in range(count)])
    results = tmp_path / "inputs.results.jsonl"
    journal = tmp_path / "inputs.results.jsonl.journal.sqlite3"
    args = batch_args(inputs, server, "--concurrency", "4")

    with child(*args, tty=False) as proc:  # 1. tasks started, none finished yet maybe
        assert wait_for(emu, lambda: count_state(journal, "started") >= 2)
        proc.proc.kill()
        assert -signal.SIGKILL == proc.finish()[0]
    with child(*args, tty=False) as proc:  # 2. right after a result line was written
        before = size(results)
        assert wait_for(emu, lambda: size(results) > before)
        proc.proc.kill()
        assert -signal.SIGKILL == proc.finish()[0]
    assert count_state(journal, "finished") < count
    # 3. a crash between a line's fsync and its commit: the line is there, the input not
    # marked finished (the kill above may have landed there too; here it surely has).
    (written, *_) = result_lines(results)
    with contextlib.closing(sqlite3.connect(journal)) as db, db:
        db.execute('UPDATE inputs SET state = ?, written = 0 WHERE "index" = ?',
                   ("started", written["index"]))  # fmt: skip
    with results.open("ab") as file:  # 4. a crash in the middle of writing a line
        file.write(b'{"index": 3, "task_id": "task_')

    code, text = run_child(*args)
    assert 0 == code, text
    assert "resuming: " in text
    lines = result_lines(results)  # every line whole: the partial one was cut
    assert dict.fromkeys(range(count), 1) == Counter(line["index"] for line in lines)
    window = reported(text)  # inputs killed between their POST and its answer
    assert set(window) == {line["index"] for line in lines if line.get("may_have_run_twice")}
    for line in lines:
        assert "completed" == line["status"]
        assert {"i": line["index"]} == line["output"]
        snapshot = emu.task_snapshot(line["task_id"]) or {}
        assert (10, {"i": line["index"]}) == (snapshot.get("status"), snapshot.get("output"))
    ran = Counter(calls)
    for index in range(count):
        assert 1 <= ran[index] <= window.get(index, 1), (index, ran, window)
    assert {"finished"} == {state for state, _ in journal_rows(journal).values()}

    code, text = run_child(*args)  # once more: nothing to do, nothing written, no new task
    assert 0 == code, text
    assert "nothing left to run" in text
    assert lines == result_lines(results)
    assert ran == Counter(calls)


class Relay:
    """A server in front of `target` that forwards every request, but holds the answer of
    `POST /apps/run` (the task is created upstream) until `release()`, if ever: the client
    waits in the `submitting` window meanwhile."""

    def __init__(self) -> None:
        self.forwarded = threading.Event()  # a POST /apps/run reached the target
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None

    def release(self) -> None:
        assert self._loop is not None
        assert self._released is not None
        self._loop.call_soon_threadsafe(self._released.set)

    @contextlib.asynccontextmanager
    async def serve(self, target: str) -> AsyncIterator[str]:
        self._loop = asyncio.get_running_loop()
        released = self._released = asyncio.Event()

        async def forward(request: web.Request) -> web.StreamResponse:
            passed = {"authorization", "content-type", "accept", "last-event-id"}
            headers = {k: v for k, v in request.headers.items() if k.lower() in passed}
            async with upstream.request(
                request.method, f"{target}{request.path_qs}", data=await request.read(),
                headers=headers,
            ) as answer:  # fmt: skip
                if request.path == "/apps/run":
                    body = await answer.read()
                    self.forwarded.set()
                    await released.wait()
                    return web.Response(body=body, status=answer.status,
                                        content_type=answer.content_type)  # fmt: skip
                response = web.StreamResponse(status=answer.status)
                response.content_type = answer.content_type
                await response.prepare(request)
                with contextlib.suppress(ConnectionResetError):  # the client went away
                    async for chunk in answer.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        async with aiohttp.ClientSession() as upstream:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            try:
                host, port = runner.addresses[0][:2]
                yield f"http://{host}:{port}"
            finally:
                released.set()
                await runner.cleanup()


@contextlib.contextmanager
def relay(target: str) -> Iterator[tuple[str, Relay]]:
    """A `Relay` in front of `target`, served from a background thread."""
    found = Relay()
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(found.serve(target)) as url,
    ):
        yield url, found


def test_an_input_caught_in_the_submitting_window_runs_again_and_is_named(
    emu: Emulator, server: str, tmp_path: Path
) -> None:
    """Killed after the server created input 0's task but before its id arrived: the rerun
    starts input 0 again, and says (at the end, and in its line) that it may have run twice."""
    calls: list[int] = []
    emu.register_app(COUNTED, counting_app(calls))
    inputs = write_inputs(tmp_path, [{"i": i} for i in range(3)])
    results = tmp_path / "inputs.results.jsonl"
    journal = tmp_path / "inputs.results.jsonl.journal.sqlite3"
    with (
        relay(server) as (proxy, held),  # the answer to input 0's POST never arrives
        child(*batch_args(inputs, proxy, "--concurrency", "1"), tty=False) as proc,
    ):
        assert held.forwarded.wait(30)
        assert {0: ("submitting", None), 1: ("pending", None), 2: ("pending", None)} == (
            journal_rows(journal)
        )
        proc.proc.kill()
        proc.finish()
    assert emu.wait_until(lambda e: calls == [0])  # the server did create input 0's task

    args = batch_args(inputs, server, "--concurrency", "1")
    code, text = run_child(*args)
    assert 0 == code, text
    lines = {line["index"]: line for line in result_lines(results)}
    assert [0, 1, 2] == sorted(lines)
    assert {0: 2, 1: 1, 2: 1} == Counter(calls)
    assert {0: 2} == reported(text)
    assert f"the task recorded for it is {lines[0]['task_id']}" in text
    assert lines[0]["may_have_run_twice"] is True
    assert "may_have_run_twice" not in lines[1]
    code, text = run_child(*args)  # every later run still names it
    assert (0, {0: 2}) == (code, reported(text))
    assert 3 == len(result_lines(results))


def test_ctrl_c_waits_for_the_answers_on_their_way_before_stopping(
    emu: Emulator, server: str, tmp_path: Path
) -> None:
    """SIGINT while a POST awaits its answer: the CLI starts nothing more, waits for that
    answer, records the task and cancels it, so no input is left in the window."""
    calls: list[int] = []
    emu.register_app(COUNTED, counting_app(calls, Gate(open=False)))
    inputs = write_inputs(tmp_path, [{"i": i} for i in range(3)])
    journal = tmp_path / "inputs.results.jsonl.journal.sqlite3"
    with (
        relay(server) as (proxy, held),
        child(*batch_args(inputs, proxy, "--concurrency", "1"), tty=False) as proc,
    ):
        assert held.forwarded.wait(30)
        proc.proc.send_signal(signal.SIGINT)
        proc.read_until(lambda text: "waiting for the server to answer 1 submissions" in text)
        held.release()
        code, text = proc.finish()
    assert 130 == code, text
    assert "cancelled 1 running tasks" in text
    rows = journal_rows(journal)
    state, task_id = rows.pop(0)
    assert ("started", True) == (state, task_id is not None)
    assert {1: ("pending", None), 2: ("pending", None)} == rows
    assert emu.wait_until(lambda e: (e.task_snapshot(task_id or "") or {}).get("status") == 12)
    assert calls in ([], [0])  # nothing else started (0 may be cancelled before its app ran)


def test_ctrl_c_cancels_started_tasks_and_a_rerun_completes_the_rest(
    emu: Emulator, server: str, tmp_path: Path
) -> None:
    """SIGINT: exit 130, the started tasks cancelled on the server; a rerun waits for those
    cancellations to end (12), starts their inputs again along with the others, and completes
    the batch."""
    calls: list[int] = []
    gate, cleanup = Gate(open=False), Gate(open=False)
    emu.register_app(COUNTED, counting_app(calls, gate, cleanup=cleanup))
    inputs = write_inputs(tmp_path, [{"i": i} for i in range(5)])
    results = tmp_path / "inputs.results.jsonl"
    journal = tmp_path / "inputs.results.jsonl.journal.sqlite3"
    args = batch_args(inputs, server, "--concurrency", "2", "--json")
    try:
        with child(*args, tty=False) as proc:
            assert wait_for(emu, lambda: len(calls) == 2 and count_state(journal, "started") == 2)
            started = [task_id for state, task_id in journal_rows(journal).values() if task_id]
            proc.proc.send_signal(signal.SIGINT)
            code, text = proc.finish()
        assert 130 == code, text
        assert "cancelled 2 running tasks" in text
        assert "Traceback" not in text
        assert 0 == size(results)

        def statuses(e: Emulator) -> set[Any]:
            return {(e.task_snapshot(task_id) or {}).get("status") for task_id in started}

        assert {8} == statuses(emu)  # cancelling: the app is still cleaning up
        gate.open()
        streams = emu.streams_opened
        with child(*args, tty=False) as proc:
            # The rerun follows the two cancellations under way before it decides anything.
            assert wait_for(emu, lambda: emu.streams_opened >= streams + 2)
            assert 2 == len(calls)  # nothing starts before they are known to have ended
            cleanup.open()
            code, text = proc.finish(timeout=60)
    finally:
        # An app still cleaning up would hold the emulator's shutdown (the `server` fixture's
        # teardown) for ever, where pytest-timeout cannot interrupt it: however this test
        # ends, let the cancelled calls finish.
        gate.open()
        cleanup.open()
    assert 0 == code, text
    assert {12} == statuses(emu)
    lines = result_lines(results)
    assert list(range(5)) == sorted(line["index"] for line in lines)
    assert {"completed"} == {line["status"] for line in lines}
    assert not {line["task_id"] for line in lines} & set(started)
    assert 7 == len(calls)  # the two cancelled calls, then one per input


def test_no_cancel_leaves_tasks_running_and_a_rerun_reattaches(
    emu: Emulator, server: str, tmp_path: Path
) -> None:
    """--no-cancel: Ctrl-C leaves the started tasks running; the rerun follows them to their
    end instead of starting them again."""
    calls: list[int] = []
    gate = Gate(open=False)
    emu.register_app(COUNTED, counting_app(calls, gate))
    inputs = write_inputs(tmp_path, [{"i": i} for i in range(3)])
    journal = tmp_path / "inputs.results.jsonl.journal.sqlite3"
    args = batch_args(inputs, server, "--concurrency", "2", "--no-cancel")
    with child(*args, tty=False) as proc:
        assert wait_for(emu, lambda: len(calls) == 2 and count_state(journal, "started") == 2)
        proc.proc.send_signal(signal.SIGINT)
        code, text = proc.finish()
    assert 130 == code, text
    assert "left 2 tasks running (a rerun re-attaches to them)" in text
    started = {index: task_id for index, (_, task_id) in journal_rows(journal).items() if task_id}
    assert 2 == len(started)
    assert {7} == {(emu.task_snapshot(t) or {}).get("status") for t in started.values()}

    gate.open()
    code, text = run_child(*args)
    assert 0 == code, text
    assert "re-attaching to 2 started tasks" in text
    lines = {line["index"]: line for line in result_lines(tmp_path / "inputs.results.jsonl")}
    assert [0, 1, 2] == sorted(lines)
    for index, task_id in started.items():
        assert task_id == lines[index]["task_id"]
    assert [0, 1, 2] == sorted(calls)  # no input ran twice


def test_a_journal_another_run_holds_is_refused(
    emu: Emulator, server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs with one --journal but each its own --out: the second is refused (exit 2, one
    line), as for a results file in use, and the first goes on to complete its batch."""
    calls: list[int] = []
    gate = Gate(open=False)
    emu.register_app(COUNTED, counting_app(calls, gate))
    inputs = write_inputs(tmp_path, [{"i": i} for i in range(2)])
    journal = tmp_path / "shared.journal.sqlite3"
    first = batch_args(inputs, server, "--journal", str(journal), "--out", str(tmp_path / "a"))
    second = batch_args(inputs, server, "--journal", str(journal), "--out", str(tmp_path / "b"))
    with child(*first, "--json", tty=False) as proc:
        assert wait_for(emu, lambda: len(calls) == 2 and count_state(journal, "started") == 2)
        code, out, err = run_main(capsys, *second, "--json")
        assert (2, "") == (code, out)
        assert "Traceback" not in err
        last = err.splitlines()[-1]
        assert f"inferencesh batch: error: {journal} is in use by another inferencesh batch" == last
        assert {"started"} == {state for state, _ in journal_rows(journal).values()}
        gate.open()
        code, text = proc.finish(timeout=60)
    assert 0 == code, text
    assert [0, 1] == sorted(line["index"] for line in result_lines(tmp_path / "a"))
    assert 0 == size(tmp_path / "b")
    assert [0, 1] == sorted(calls)


def test_a_started_task_the_server_no_longer_knows_is_reported(
    emu: Emulator, server: str, tmp_path: Path
) -> None:
    """Killed with tasks started, rerun against a server that never heard of them (404):
    those inputs get an error line naming the lost task; the others run; exit 1."""
    calls: list[int] = []
    gate = Gate(open=False)
    emu.register_app(COUNTED, counting_app(calls, gate))
    inputs = write_inputs(tmp_path, [{"i": i} for i in range(3)])
    journal = tmp_path / "inputs.results.jsonl.journal.sqlite3"
    with child(*batch_args(inputs, server, "--concurrency", "2"), tty=False) as proc:
        assert wait_for(emu, lambda: count_state(journal, "started") == 2)
        proc.proc.kill()
        proc.finish()
    started = {index: task_id for index, (_, task_id) in journal_rows(journal).items() if task_id}
    elsewhere = fast_emulator()
    elsewhere.register_app(COUNTED, counting_app([]))
    with serve_in_thread(elsewhere) as other:
        code, text = run_child(*batch_args(inputs, other))
    assert 1 == code, text
    lines = {line["index"]: line for line in result_lines(tmp_path / "inputs.results.jsonl")}
    assert [0, 1, 2] == sorted(lines)
    for index, task_id in started.items():
        assert "error" == lines[index]["status"]
        assert task_id == lines[index]["task_id"]
        assert f"task {task_id}, started by an earlier run, is gone: " in lines[index]["error"]
    (fresh,) = set(lines) - set(started)
    assert "completed" == lines[fresh]["status"]
    gate.open()


# -- the live display ----------------------------------------------------------------------------


def test_live_display_under_a_pseudo_terminal(tmp_path: Path) -> None:
    """On a terminal: one bar for the batch reaching 100 %, the counts by status and the last
    failure; the result lines go to the file only."""
    failing = {"sim": {"fail": "boom", "steps": 1}}
    inputs = write_inputs(tmp_path, [{"sim": QUICK}, {"sim": QUICK}, {"sim": QUICK}, failing])
    with child("batch", APP, str(inputs), "--local", "--concurrency", "2", tty=True) as proc:
        code, text = proc.finish(timeout=60)
    assert 1 == code, text
    assert "\x1b[" in proc.raw.decode("utf-8", "replace")  # drawn live, with control codes
    assert re.search(r"✗ batch ━+ 100% 4/4 [\d.]+ tasks/s in 0:\d\d", text), text[-2000:]
    assert "completed 3 · failed 1" in text
    assert re.search(r"last failures:\s+✗ input 3: .*boom", text), text[-2000:]
    assert '"index"' not in text
    assert 4 == len(result_lines(tmp_path / "inputs.results.jsonl"))
    assert "Traceback" not in text


def test_batch_display_draws_the_bar_counts_rate_eta_and_last_failures() -> None:
    """`BatchDisplay` on a rich console: earlier results count in the bar and the counts."""
    import io

    from rich.console import Console

    from inferencesh import BatchProgress
    from inferencesh.progress import BatchDisplay

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    progress = BatchProgress(
        total=8, started=6, finished=4, succeeded=3, failed=1,
        by_status={"completed": 3, "failed": 1, "running": 2}, elapsed=2.0,
        recent_failures=((5, "boom"),),
    )  # fmt: skip
    with BatchDisplay(console, earlier={"completed": 2}) as display:
        display.show(progress)
        display.refresh()
        frame = [line.rstrip() for line in plain(buffer.getvalue()).splitlines() if line.strip()]
    bar = next(line for line in frame if "batch" in line)
    assert re.search(r"batch ━+ +60% 6/10 2\.00 tasks/s eta 0:02", bar), frame
    assert "  completed 5 · failed 1 · running 2" in frame
    assert "    ✗ input 5: boom" in frame
    final = [line.rstrip() for line in plain(buffer.getvalue()).splitlines() if line.strip()]
    assert re.search(r"✗ batch ━+ +60% 6/10 2\.00 tasks/s in 0:02", final[-4]), final


def test_the_batch_command_module_does_not_import_rich() -> None:
    code = (
        "import sys, inferencesh.cli, inferencesh._cli_batch\n"
        "assert not [m for m in sys.modules if m == 'rich' or m.startswith('rich.')]\n"
    )
    assert 0 == subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode
