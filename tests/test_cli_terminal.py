"""The CLI at a terminal and in pipes: no traceback for an ordinary event.

A closed pipe ends a command as Ctrl-C does (exit 141, the task it started cancelled), any
output encoding works, escape sequences from the server are shown instead of acting, Ctrl-C
leaves one clean last frame, and `get`, `cancel`, `attach` and `agent --chat` work.

Every case runs `python -m inferencesh` as a child process against an emulator served by the
test, in pipes or under a pseudo-terminal that is the child's controlling terminal (so Ctrl-C
is a real `\\x03` typed into it: the terminal echoes `^C` and signals the child). Output is
read with a deadline; a small terminal model (`Screen`) replays what a terminal would show.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import re
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ChildOutput, fast_emulator, plain

from inferencesh import TaskStatus, inference
from inferencesh._terminal import json_text, neutralise, one_line
from inferencesh.cli import _build_parser
from inferencesh.local import AgentContext, AppContext, Emulator, serve_in_thread

APP = "infsh/flux-schnell"
KEY = ["--api-key", "k"]

# What the hostile app and agent send: each would act on a terminal if it reached it as is.
HOSTILE_LOGS = [
    "\x1b[2J\x1b[Hscreen cleared",  # ESC: clear the screen, cursor home
    "step 3/10\rFAKE: all done",  # CR: overwrite the line with fake text
    "ding\x07",  # BEL
    "\x1b]0;PWNED-TITLE\x07retitled",  # OSC 0: the window's title
    "\u009b31mC1 CSI",  # the 8-bit CSI
    "rub\x7fout",  # DEL
]
# Byte sequences that must never reach the terminal, and what is shown instead.
FORBIDDEN = [b"\x1b[2J", b"\x1b[H", b"\rFAKE", b"\x07", b"\x1b]0;", b"\xc2\x9b", b"\x7f"]
SHOWN = ["\\x1b[2J\\x1b[Hscreen cleared", "step 3/10\\x0dFAKE: all done", "ding\\x07",
         "\\x1b]0;PWNED-TITLE\\x07retitled", "\\x9b31mC1 CSI", "rub\\x7fout"]  # fmt: skip

# What the forging app sends: a newline, then text that would pass for a line of the CLI's own.
FORGED = "inferencesh run: cancelled task t1 (FAKE)"
FORGED_LOG = "log: FAKE log line"


# -- the CLI as a child process ---------------------------------------------------------------


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    env.pop("NO_COLOR", None)
    env.update(extra or {})
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> tuple[int, bytes, bytes]:
    """Run the CLI with stdout and stderr on pipes; its exit code, stdout and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "inferencesh", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_env(env),
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def read_until(fd: int, enough: Callable[[bytes], bool], timeout: float = 10) -> bytes:
    """Read from `fd` until `enough(what was read)` holds, within `timeout`; what was read."""
    deadline = time.monotonic() + timeout
    data = b""
    while not enough(data):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"not enough output within {timeout}s; read {data!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            pytest.fail(f"end of output too soon; read {data!r}")
        data += chunk
    return data


def read_line(fd: int, timeout: float = 10) -> bytes:
    """Read from `fd` until a newline, within `timeout`; the first line (what came after it
    is dropped)."""
    data = read_until(fd, lambda data: b"\n" in data, timeout)
    return data[: data.index(b"\n") + 1]


@contextlib.contextmanager
def piped(
    *args: str, stderr_too: bool = False, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The CLI with stdout on a pipe the test reads (and may close), stderr on another pipe
    (or on the same one with `stderr_too`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferencesh", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr_too else subprocess.PIPE,
        env=_env(env),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def close_after_first_line(proc: subprocess.Popen[bytes]) -> tuple[bytes, int, bytes]:
    """Read stdout's first line, close the pipe (as `head -1` does), wait for the exit;
    the line, the exit code and stderr."""
    assert proc.stdout is not None
    line = read_line(proc.stdout.fileno())
    proc.stdout.close()
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("the CLI did not stop after its output pipe was closed")
    err = proc.stderr.read() if proc.stderr is not None else b""
    return line, code, err


# The child's first step: make the pseudo-terminal (its stdout) its controlling terminal, so
# that a `\x03` typed into it is echoed as `^C` and sends SIGINT, as in a real shell.
_CONTROLLING = (
    "import os, sys; os.close(os.open(os.ttyname(1), os.O_RDWR)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'inferencesh', *sys.argv[1:]])"
)


class Terminal(ChildOutput):
    """The CLI under a pseudo-terminal of 80x24 (stdin, stdout and stderr), its controlling
    terminal; the raw bytes it wrote are in `raw`."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self._fd, child = os.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CONTROLLING, *args],
                stdin=child,
                stdout=child,
                stderr=child,
                env=_env(env),
                start_new_session=True,
            )
        finally:
            os.close(child)
        self.raw = b""

    def shown(self) -> str:
        return repr(self.text())  # escapes included: what the terminal was sent

    def text(self, encoding: str = "utf-8") -> str:
        return self.raw.decode(encoding, "replace")

    def read_until(self, predicate: Callable[[str], bool], timeout: float = 10) -> str:
        self._read_until(lambda: predicate(self.text()), timeout)
        return self.text()

    def type(self, data: bytes) -> None:
        os.write(self._fd, data)

    def finish(self, timeout: float = 15) -> int:
        return self._exit_code(timeout)


@contextlib.contextmanager
def terminal(*args: str, env: dict[str, str] | None = None) -> Iterator[Terminal]:
    term = Terminal(*args, env=env)
    try:
        yield term
    finally:
        term.close()


_CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class Screen:
    """Just enough of a terminal to replay the CLI's output: characters with autowrap (after
    the last column the cursor waits there until the next character, as a VT100 does), CR,
    LF, cursor up and erase line; colours and cursor visibility are ignored. Rows are never
    scrolled away: the screen grows instead."""

    def __init__(self, width: int = 80) -> None:
        self.width = width
        self.rows: list[list[str]] = [[]]
        self.row = self.col = 0
        self.pending_wrap = False

    def _put(self, char: str) -> None:
        if self.pending_wrap:
            self._down()
            self.col = 0
            self.pending_wrap = False
        line = self.rows[self.row]
        line.extend(" " * (self.col + 1 - len(line)))
        line[self.col] = char
        if self.col == self.width - 1:
            self.pending_wrap = True
        else:
            self.col += 1

    def _down(self) -> None:
        self.row += 1
        if self.row == len(self.rows):
            self.rows.append([])

    def feed(self, text: str) -> None:
        at = 0
        while at < len(text):
            char = text[at]
            if char == "\x1b":
                match = _CSI.match(text, at) or _OSC.match(text, at)
                assert match is not None, f"unknown escape at {text[at : at + 20]!r}"
                if match.re is _CSI:
                    self._csi(match.group(1), match.group(2))
                at = match.end()
                continue
            if char == "\r":
                self.col, self.pending_wrap = 0, False
            elif char == "\n":
                self._down()
                self.pending_wrap = False
            elif char >= " ":
                self._put(char)
            at += 1

    def _csi(self, params: str, final: str) -> None:
        count = int(params) if params.isdigit() else 1
        if final == "A":
            self.row, self.pending_wrap = max(0, self.row - count), False
        elif final == "K":
            line = self.rows[self.row]
            del line[0 if params == "2" else self.col :]
        elif final == "G":
            self.col, self.pending_wrap = count - 1, False
        # m (colours), h/l (cursor shown or hidden): nothing to do on this screen

    def lines(self) -> list[str]:
        return ["".join(row).rstrip() for row in self.rows]


def screen_of(raw: bytes) -> list[str]:
    screen = Screen()
    screen.feed(raw.decode("utf-8", "replace"))
    return screen.lines()


# -- apps and agents the emulator runs ---------------------------------------------------------


async def hostile_app(input: dict[str, Any], ctx: AppContext) -> Any:
    """Logs, progress, partial output, output or error, all with control sequences in them."""
    for line in HOSTILE_LOGS:
        ctx.log(line)
    ctx.progress(1, 2)
    ctx.partial({"text": "\x1b[31mred\u009b"})
    await asyncio.sleep(0.01)
    if input.get("fail"):
        raise RuntimeError("\x1b[2Jboom\x07")
    return {"text": "\x1b]0;OUT\x07\u009b\x7f"}


async def forging_app(input: dict[str, Any], ctx: AppContext) -> Any:
    """A log line and an error that each hold a newline and, after it, a line of fake text."""
    ctx.log(f"working\n{FORGED_LOG}")
    ctx.log(f"separated\u2028{FORGED_LOG}")
    ctx.progress(1, 2)
    ctx.partial(f"half\n{FORGED}")
    await asyncio.sleep(0.01)
    raise RuntimeError(f"boom\n{FORGED}")


async def degrees_app(input: dict[str, Any], ctx: AppContext) -> Any:
    """Characters cp1252 has (°) and has not (✓), in a log line, the partial and the output."""
    ctx.log("25 °C reached ✓")
    ctx.progress(1, 1)
    ctx.partial("✓ 25 °C")
    await asyncio.sleep(0.01)
    return {"text": "✓ 25 °C"}


async def endless_app(input: dict[str, Any], ctx: AppContext) -> Any:
    """A log line and a progress step every 10 ms, for 20 s: output that does not stop."""
    for step in range(1, 2001):
        ctx.log(f"step {step}")
        ctx.progress(step, 2000)
        await asyncio.sleep(0.01)
    return {"steps": 2000}


async def stuck_app(input: dict[str, Any], ctx: AppContext) -> Any:
    """Reports some progress and a partial output wider than the terminal, then waits."""
    ctx.log("warming up")
    ctx.progress(3, 10)
    ctx.partial({"text": "word " * 100})
    await asyncio.Event().wait()


async def hostile_agent(text: str, ctx: AgentContext) -> None:
    """Thinks and answers with control sequences, and calls a client tool named with one."""
    ctx.think("\x1b]0;THINKING\x07hmm")
    ctx.say("\x1b[2Jhello\rFAKE\u009b")
    await ctx.call_tool("evil\x1b[2Jtool\n[FAKE note]", {})
    ctx.say("done ✓ 25 °C")


async def chatty_agent(text: str, ctx: AgentContext) -> None:
    """Says a word every 10 ms for 20 s."""
    for _ in range(2000):
        ctx.say("word ")
        await asyncio.sleep(0.01)


@pytest.fixture
def apps(emu: Emulator, server: str) -> str:
    """The served emulator, with the apps and agents above registered; its URL."""
    emu.register_app("acme/hostile", hostile_app)
    emu.register_app("acme/forging", forging_app)
    emu.register_app("acme/degrees", degrees_app)
    emu.register_app("acme/endless", endless_app)
    emu.register_app("acme/stuck", stuck_app)
    emu.register_agent("acme/hostile", hostile_agent)
    emu.register_agent("acme/chatty", chatty_agent)
    return server


def target(url: str) -> list[str]:
    return ["--base-url", url, *KEY]


def start_task(url: str, app: str, task_input: dict[str, Any] | None = None) -> str:
    """Create a task through the API (not the CLI); its id."""
    with inference(api_key="k", base_url=url) as client:
        return client.run({"app": app, "input": task_input or {}}, wait=False).id


def ended_task(url: str, app: str, task_input: dict[str, Any] | None = None) -> str:
    """A task created through the API and waited for, however it ended; its id."""
    task_id = start_task(url, app, task_input)
    final_status(url, task_id)
    return task_id


def status_of(url: str, task_id: str) -> TaskStatus:
    with inference(api_key="k", base_url=url) as client:
        return client.get_task(task_id).status


def final_status(url: str, task_id: str) -> TaskStatus:
    """The task's status once it has ended (waited for on its stream, bounded)."""
    status = TaskStatus.UNKNOWN
    with inference(api_key="k", base_url=url) as client:
        for update in client.stream_task(task_id, timeout=10):
            status = update.status if update.status is not TaskStatus.UNKNOWN else status
    return status


# -- every option is explained -------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"command {choice.dest} has no help"
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_of_every_command_has_help() -> None:
    """Each argument of each command (serve's included) says what it does."""
    seen = set()
    for prog, parser in _parsers(_build_parser()):
        seen.add(prog)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert (action.help or "").strip(), f"{prog} {name} has no help"
    assert {"inferencesh serve", "inferencesh get", "inferencesh cancel",
            "inferencesh attach", "inferencesh agent"} <= seen  # fmt: skip


def test_serve_help_explains_the_options_it_used_to_leave_bare() -> None:
    code, out, err = cli("serve", "--help")
    assert 0 == code, err
    text = " ".join(out.decode().split())
    for flag in ("--sim-steps N", "--sim-step-delay SECONDS", "--heartbeat-interval SECONDS",
                 "--fail-status S", "--retry-after SECONDS"):  # fmt: skip
        after = text[text.index(flag) + len(flag) :].lstrip()
        assert not after.startswith("--"), f"{flag} has no help: {after[:60]!r}"


# -- a closed pipe --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["json", "plain"])
def test_closed_pipe_cancels_the_task_run_started_and_exits_141(apps: str, mode: str) -> None:
    """`run ... | head -1`: exit 141, no traceback, one line on stderr, the task cancelled."""
    args = ["run", "acme/endless", *target(apps), *(["--json"] if mode == "json" else [])]
    with piped(*args) as proc:
        line, code, err = close_after_first_line(proc)
    if mode == "json":
        task_id = json.loads(line)["id"]
    else:
        task_id = line.decode().removeprefix("task: ").strip()
    assert 141 == code, err
    assert b"Traceback" not in err
    assert [
        f"inferencesh run: output closed: cancelled task {task_id}"
    ] == err.decode().splitlines()
    assert TaskStatus.CANCELLED is final_status(apps, task_id)


def test_closed_pipe_that_holds_stderr_too_is_silent(apps: str) -> None:
    """`run ... 2>&1 | head -1`: nothing more is written anywhere, exit 141, task cancelled."""
    with piped("run", "acme/endless", *target(apps), "--json", stderr_too=True) as proc:
        line, code, _ = close_after_first_line(proc)
    assert 141 == code
    assert TaskStatus.CANCELLED is final_status(apps, json.loads(line)["id"])


def test_closed_pipe_in_attach_detaches_quietly(apps: str) -> None:
    """attach in a pipe that closes while updates flow: exit 141, the task still running."""
    task_id = start_task(apps, "acme/endless")
    with piped("attach", task_id, *target(apps), "--json") as proc:
        line, code, err = close_after_first_line(proc)
    assert task_id == json.loads(line)["id"]
    assert 141 == code, err
    assert b"Traceback" not in err
    assert 1 == len(err.splitlines())
    assert b"detached from task" in err
    assert status_of(apps, task_id) is TaskStatus.RUNNING
    with inference(api_key="k", base_url=apps) as client:
        client.cancel_task(task_id)


@pytest.mark.parametrize("download", [False, True])
def test_closed_pipe_in_batch_stops_it_as_ctrl_c_does(
    apps: str, tmp_path: Path, download: bool
) -> None:
    """A batch whose output pipe closes: exit 141, its running task cancelled, a rerun can go
    on (the journal records it). With `--download` the line is written by the task that saved
    the files: the closed pipe it meets stops the batch all the same."""
    inputs = tmp_path / "inputs.jsonl"
    lines = [{"sim": {"steps": 1, "step_delay": 0}},
             {"sim": {"steps": 4, "step_delay": 0.25}},
             {"sim": {"hold": True}}]  # fmt: skip
    inputs.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    extra = ["--download", str(tmp_path / "media")] if download else []
    with piped("batch", APP, str(inputs), *target(apps), "--concurrency", "3", *extra) as proc:
        line, code, err = close_after_first_line(proc)
    assert 0 == json.loads(line)["index"]
    assert 141 == code, err
    assert b"Traceback" not in err
    assert b"never retrieved" not in err
    assert b"output closed: " in err
    journal = tmp_path / "inputs.results.jsonl.journal.sqlite3"
    with contextlib.closing(sqlite3.connect(journal)) as db:
        rows = dict(db.execute('SELECT "index", task_id FROM inputs WHERE "index" = 2'))
    assert TaskStatus.CANCELLED is final_status(apps, rows[2])


def test_closed_pipe_stops_the_agent_run(apps: str, emu: Emulator) -> None:
    """agent in a pipe that closes: the chat's run is stopped (by one request), exit 141, no
    traceback."""
    args = ["agent", "acme/chatty", "hi", *target(apps)]
    with piped(*args, env={"INFERENCESH_LOG": "debug"}) as proc:  # a line per request made
        assert proc.stdout is not None
        read_until(proc.stdout.fileno(), lambda data: len(data) >= 5)  # the first word came
        proc.stdout.close()
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("the CLI did not stop after its output pipe was closed")
        err = proc.stderr.read() if proc.stderr is not None else b""
    assert 141 == code, err
    assert b"Traceback" not in err
    found = re.search(r"^chat: (chat_\w+)$", err.decode(), re.M)
    assert found is not None, err
    chat_id = found.group(1)
    line = f"inferencesh agent: output closed; stopped the agent run in chat '{chat_id}'"
    assert line in err.decode().splitlines()
    assert 1 == err.decode().count(f"POST /chats/{chat_id}/stop -> 200"), err

    def stopped(e: Emulator) -> bool:
        chat = e.chat_snapshot(chat_id) or {}
        return (chat.get("active_run") or {}).get("state") == "canceled"

    assert emu.wait_until(stopped)


@pytest.mark.parametrize("args", [["serve", "--help"], ["--version"]])
def test_help_into_a_closed_pipe_is_quiet(args: list[str]) -> None:
    """`inferencesh serve --help | true`, the reader gone before the help is written: exit
    141 (argparse would ignore the error and exit 0), and nothing on stderr (no
    BrokenPipeError message at exit)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the child starts
    try:
        result = subprocess.run(
            [sys.executable, "-m", "inferencesh", *args],
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=_env(),
            timeout=20,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (141, b"") == (result.returncode, result.stderr)


# -- any output encoding -------------------------------------------------------------------------

CP1252 = {"PYTHONIOENCODING": "cp1252"}


def test_cp1252_in_a_pipe_replaces_what_it_cannot_encode(apps: str) -> None:
    code, out, err = cli("run", "acme/degrees", *target(apps), env=CP1252)
    assert 0 == code, err
    assert b"Traceback" not in err
    text = out.decode("cp1252")
    assert "log: 25 °C reached ?" in text.splitlines()
    assert '"text": "? 25 °C"' in text


def test_cp1252_on_a_terminal_draws_the_live_display(apps: str) -> None:
    with terminal("run", "acme/degrees", *target(apps), env=CP1252) as term:
        code = term.finish()
    text = term.text("cp1252")
    assert 0 == code, text
    assert "Traceback" not in text
    assert "25 °C reached ?" in text
    assert "completed" in text


def test_cp1252_agent_and_json(apps: str) -> None:
    """The agent's answer and --json lines under cp1252: replaced, or ASCII JSON."""
    code, out, err = cli("agent", "acme/hostile", "hi", *target(apps), env=CP1252)
    assert 0 == code, err
    assert "done ? 25 °C" in out.decode("cp1252")
    code, out, err = cli("run", "acme/degrees", *target(apps), "--json", env=CP1252)
    assert 0 == code, err
    assert {"text": "✓ 25 °C"} == json.loads(out.splitlines()[-1])["output"]


# -- escape sequences from the server -------------------------------------------------------------


def assert_inert(raw: bytes) -> None:
    for sequence in FORBIDDEN:
        assert sequence not in raw, f"{sequence!r} reached the terminal"


def test_hostile_logs_in_a_pipe_are_shown_not_obeyed(apps: str) -> None:
    code, out, err = cli("run", "acme/hostile", *target(apps))
    assert 0 == code, err
    assert_inert(out + err)
    lines = out.decode().splitlines()
    assert [f"log: {line}" for line in SHOWN] == [line for line in lines if line.startswith("log:")]
    assert '"text": "\\u001b]0;OUT\\u0007\\u009b\\u007f"' in out.decode()


def test_hostile_error_in_a_pipe_is_shown_not_obeyed(apps: str) -> None:
    code, out, err = cli("run", "acme/hostile", *target(apps), "--input", '{"fail": true}')
    assert 1 == code
    assert_inert(out + err)
    assert "status: failed: \\x1b[2Jboom\\x07" == out.decode().splitlines()[-1]
    assert err.decode().endswith("failed: \\x1b[2Jboom\\x07\n")


def test_one_line_escapes_what_breaks_a_line_and_keeps_tabs() -> None:
    """`one_line`: `neutralise` plus newlines and the Unicode line and paragraph separators;
    tabs stay, and applying it again changes nothing. `neutralise` keeps newlines."""
    text = "a\tb\nc\r\x1bd\u2028e\u2029f\u0085g ✓"
    shown = "a\tb\\x0ac\\x0d\\x1bd\\u2028e\\u2029f\\x85g ✓"
    assert shown == one_line(text)
    assert [shown] == shown.splitlines()
    assert shown == one_line(shown)
    assert "a\tb\nc\\x0d\\x1bd\u2028e\u2029f\\x85g ✓" == neutralise(text)
    assert '"\\u2028\\u2029\\u009b\\u001b✓"' == json_text("\u2028\u2029\u009b\x1b✓")
    # A lone surrogate (what a server's `"\\ud800"` decodes to without orjson) is escaped:
    # the line can be written as UTF-8, and reads back as the same string.
    line = json_text({"log": "a\ud800b"})
    assert line.encode("utf-8")
    assert {"log": "a\ud800b"} == json.loads(line)


def forged_lines(lines: list[str]) -> list[str]:
    """The lines that start with the forging app's fake text (none may)."""
    return [line for line in lines if line.lstrip().startswith((FORGED, FORGED_LOG, "[FAKE"))]


def test_newlines_from_the_server_cannot_forge_lines_in_a_pipe(apps: str) -> None:
    """A log line and an error holding a newline and fake text: each stays one line (the
    newline shown as `\\x0a`), so no line of the output starts with the fake text; stderr is
    one line."""
    code, out, err = cli("run", "acme/forging", *target(apps))
    assert 1 == code, err
    assert_inert(out + err)
    assert [] == forged_lines(out.decode().splitlines() + err.decode().splitlines())
    logs = [line for line in out.decode().splitlines() if line.startswith("log: ")]
    assert [f"log: working\\x0a{FORGED_LOG}", f"log: separated\\u2028{FORGED_LOG}"] == logs
    assert f"status: failed: boom\\x0a{FORGED}" == out.decode().splitlines()[-1]
    [line] = err.decode().splitlines()
    assert line.startswith("inferencesh run: task task_")
    assert line.endswith(f" failed: boom\\x0a{FORGED}")
    task_id = out.decode().splitlines()[0].removeprefix("task: ")
    code, out, err = cli("get", task_id, *target(apps))
    assert (0, b"") == (code, err)
    assert [] == forged_lines(out.decode().splitlines())


def test_newlines_from_the_server_cannot_forge_lines_on_a_terminal(apps: str) -> None:
    """The live display: the log lines, the partial output and the failed status are one line
    each, and so is the line on stderr; no line of the screen starts with the fake text."""
    with terminal("run", "acme/forging", *target(apps)) as term:
        code = term.finish()
    assert 1 == code, term.text()
    assert_inert(term.raw)
    lines = screen_of(term.raw)
    assert [] == forged_lines(lines), "\n".join(lines)
    text = plain(term.text())
    assert f"working\\x0a{FORGED_LOG}" in text
    assert f"failed: boom\\x0a{FORGED}" in text
    bars = [line for line in lines if "━" in line]
    assert 1 == len(bars), "\n".join(lines)
    assert "✗ failed: boom\\x0a" in bars[0]


def test_hostile_json_lines_are_ascii(apps: str) -> None:
    code, out, err = cli("run", "acme/hostile", *target(apps), "--json")
    assert 0 == code, err
    assert out.isascii()
    assert all(32 <= byte < 127 or byte == 10 for byte in out)
    last = json.loads(out.splitlines()[-1])
    assert {"text": "\x1b]0;OUT\x07\u009b\x7f"} == last["output"]
    logs = [log for line in out.splitlines() for log in json.loads(line)["logs"]]
    assert HOSTILE_LOGS == logs


@pytest.mark.parametrize("fail", [False, True])
def test_hostile_text_on_a_terminal_is_shown_not_obeyed(apps: str, fail: bool) -> None:
    """The live display: logs, status, partial output and output all neutralised."""
    task_input = json.dumps({"fail": fail})
    with terminal("run", "acme/hostile", *target(apps), "--input", task_input) as term:
        code = term.finish()
    assert (1 if fail else 0) == code, term.text()
    assert_inert(term.raw)
    text = term.text()
    for line in SHOWN:
        assert line in text
    if fail:
        assert "failed: \\x1b[2Jboom\\x07" in text
    else:
        assert '"text": "\\u001b]0;OUT\\u0007\\u009b\\u007f"' in plain(text)


@pytest.mark.parametrize("where", ["pipe", "terminal"])
def test_hostile_agent_text_and_tool_names_are_shown_not_obeyed(apps: str, where: str) -> None:
    args = ["agent", "acme/hostile", "hi", *target(apps)]
    if where == "pipe":
        code, out, err = cli(*args)
        raw = out + err
    else:
        with terminal(*args) as term:
            code = term.finish()
        raw = term.raw
    assert 0 == code, raw
    assert_inert(raw)
    text = raw.decode()
    assert "\\x1b[2Jhello\\x0dFAKE\\x9b" in text
    assert "\\x1b]0;THINKING\\x07hmm" in text
    assert "evil\\x1b[2Jtool\\x0a[FAKE note]" in text  # the note is one line
    lines = screen_of(raw) if where == "terminal" else text.splitlines()
    assert [] == forged_lines(lines), text


# -- reconnects -----------------------------------------------------------------------------------


def test_reconnects_are_said_in_a_pipe_and_lose_nothing(apps: str, emu: Emulator) -> None:
    """Every stream connection is cut after 3 events: each reconnect is one stderr line (with
    its wait and cause), and stdout still has every log line once, in order."""
    emu.faults.drop_after = 3
    code, out, err = cli("run", APP, "--input", '{"prompt": "a cat"}', *target(apps))
    assert 0 == code, err
    notes = [line for line in err.decode().splitlines() if "reconnecting" in line]
    assert notes, err
    assert all(
        re.fullmatch(r"inferencesh run: reconnecting in \d+\.\ds \(attempt 1\): .+", line)
        for line in notes
    ), notes
    logs = [line for line in out.decode().splitlines() if line.startswith("log: ")]
    assert [f"log: step {n}/5: working on a cat" for n in range(1, 6)] == logs


def test_the_live_display_says_reconnecting_while_it_waits() -> None:
    """The server cuts the stream and asks for a 3 s wait (SSE `retry:`): the status column
    says so while the stream waits, then shows the task again once it is back."""
    emu = fast_emulator(retry_ms=3000)
    emu.register_app("acme/stuck", stuck_app)
    emu.faults.drop_after = 3
    with serve_in_thread(emu) as url, terminal("run", "acme/stuck", *target(url)) as term:
        term.read_until(lambda text: "reconnecting in" in plain(text))
        emu.faults.drop_after = None  # the next connection stays
        term.read_until(lambda text: "running" in plain(text).rpartition("reconnecting")[2])
        term.type(b"\x03")
        assert 130 == term.finish(), term.text()
    assert re.search(r"reconnecting in \d\.\ds \(attempt 1\)", plain(term.text()))
    assert "Traceback" not in term.text()


# -- Ctrl-C ---------------------------------------------------------------------------------------


def test_ctrl_c_leaves_one_clean_last_frame(apps: str) -> None:
    """Ctrl-C typed at the terminal (echoed as ^C after a full-width line): the display stops
    once, its last frame says the task was cancelled, and no older bar is left above it."""
    with terminal("run", "acme/stuck", *target(apps)) as term:
        term.read_until(lambda text: "partial:" in text and "30%" in text)
        term.type(b"\x03")
        code = term.finish()
    assert 130 == code, term.text()
    assert b"^C" in term.raw  # the terminal did echo it
    lines = screen_of(term.raw)
    bars = [line for line in lines if "━" in line]
    assert 1 == len(bars), "\n".join(lines)
    assert "■ interrupted: task cancelled" in bars[0]
    assert "30%" in bars[0]
    assert not any("running" in line or "partial:" in line for line in lines), "\n".join(lines)
    match = re.search(r"inferencesh run: cancelled task (task_\w+)", "\n".join(lines))
    assert match is not None, "\n".join(lines)
    assert "Traceback" not in term.text()
    assert TaskStatus.CANCELLED is final_status(apps, match.group(1))


def test_ctrl_c_in_a_pipe_ends_with_one_line(apps: str) -> None:
    with piped("run", "acme/stuck", *target(apps)) as proc:
        assert proc.stdout is not None
        task_id = read_line(proc.stdout.fileno()).decode().removeprefix("task: ").strip()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        err = proc.stderr.read() if proc.stderr is not None else b""
    assert 130 == code
    assert [f"inferencesh run: cancelled task {task_id}"] == err.decode().splitlines()
    assert TaskStatus.CANCELLED is final_status(apps, task_id)


@pytest.mark.parametrize("cancel", [False, True])
def test_ctrl_c_on_attach_detaches_unless_cancel(apps: str, cancel: bool) -> None:
    """attach: Ctrl-C leaves the task running (it was not started here) unless --cancel."""
    task_id = start_task(apps, "acme/stuck")
    args = ["attach", task_id, *target(apps), *(["--cancel"] if cancel else [])]
    with terminal(*args) as term:
        term.read_until(lambda text: "30%" in text)
        term.type(b"\x03")
        code = term.finish()
    assert 130 == code, term.text()
    lines = screen_of(term.raw)
    bars = [line for line in lines if "━" in line]
    assert 1 == len(bars), "\n".join(lines)
    if cancel:
        assert "interrupted: task cancelled" in bars[0]
        assert TaskStatus.CANCELLED is final_status(apps, task_id)
    else:
        assert "interrupted: detached, the task goes on" in bars[0]
        assert f"inferencesh attach: interrupted: detached from task {task_id}" in "\n".join(lines)
        assert TaskStatus.RUNNING is status_of(apps, task_id)


# -- get, cancel, attach --------------------------------------------------------------------------


def test_get_prints_the_current_state(apps: str) -> None:
    with inference(api_key="k", base_url=apps) as client:
        done = client.run({"app": "acme/degrees", "input": {}})
    code, out, err = cli("get", done.id, *target(apps))
    assert 0 == code, err
    assert [f"task: {done.id}", "log: 25 °C reached ✓", "progress: 1/1 (100%)",
            "status: completed", "output:"] == out.decode().splitlines()[:5]  # fmt: skip
    assert {"text": "✓ 25 °C"} == json.loads("\n".join(out.decode().splitlines()[5:]))
    code, out, err = cli("get", done.id, *target(apps), "--json")
    assert 0 == code, err
    state = json.loads(out)
    assert (done.id, "completed", {"text": "✓ 25 °C"}) == (state["id"], state["status"],
                                                           state["output"])  # fmt: skip


def test_get_a_failed_or_running_task_exits_0(apps: str) -> None:
    """get reads a state: exit 0 whatever the task's status."""
    failed = ended_task(apps, "acme/hostile", {"fail": True})
    code, out, _ = cli("get", failed, *target(apps))
    assert 0 == code
    assert "status: failed: \\x1b[2Jboom\\x07" == out.decode().splitlines()[-1]
    running = start_task(apps, "acme/stuck")
    code, out, _ = cli("get", running, *target(apps), "--json")
    assert 0 == code
    assert json.loads(out)["status"] in {"running", "queued", "received", "dispatched",
                                         "preparing", "serving", "setting_up"}  # fmt: skip


@pytest.mark.parametrize("command", ["get", "cancel", "attach"])
def test_unknown_task_is_one_line_and_exit_1(apps: str, command: str) -> None:
    code, out, err = cli(command, "task_doesnotexist", *target(apps))
    assert 1 == code
    assert b"" == out
    assert 1 == len(err.splitlines()), err
    assert err.startswith(f"inferencesh {command}: error: ".encode())
    assert b"Traceback" not in err


def test_get_without_a_key_is_a_usage_error() -> None:
    env = {"INFERENCE_API_KEY": ""}
    code, _, err = cli("get", "task_x", env=env)
    assert 2 == code
    assert b"no API key" in err
    code, _, err = cli("get", "task_x", "--local", *KEY)
    assert 2 == code
    assert b"unrecognized arguments: --local" in err


def test_cancel_a_running_task(apps: str) -> None:
    task_id = start_task(apps, "acme/stuck")
    code, out, err = cli("cancel", task_id, *target(apps))
    assert 0 == code, err
    assert re.fullmatch(rf"(cancelled|cancelling) task {task_id}( \(now \w+\))?\n", out.decode())
    assert TaskStatus.CANCELLED is final_status(apps, task_id)


def test_cancel_a_finished_task_exits_1(apps: str) -> None:
    with inference(api_key="k", base_url=apps) as client:
        done = client.run({"app": "acme/degrees", "input": {}})
    code, out, err = cli("cancel", done.id, *target(apps))
    assert 1 == code
    assert b"" == out
    expected = (
        f"inferencesh cancel: task {done.id} had already ended (completed); nothing to cancel"
    )
    assert [expected] == err.decode().splitlines()


def test_attach_streams_a_running_task_as_run_does(apps: str) -> None:
    task_id = start_task(apps, APP, {"prompt": "a cat", "sim": {"steps": 3, "step_delay": 0.05}})
    code, out, err = cli("attach", task_id, *target(apps))
    assert 0 == code, err
    lines = out.decode().splitlines()
    assert f"task: {task_id}" == lines[0]
    assert "status: completed" in lines
    assert "log: step 3/3: working on a cat" in lines
    assert json.loads("\n".join(lines[lines.index("output:") + 1 :]))["text"].endswith("a cat")


def test_attach_to_an_ended_task_shows_how_it_ended(apps: str, tmp_path: Path) -> None:
    """Completed: its state and output (and --download saves its files), exit 0; failed:
    exit 1 with the error."""
    done = ended_task(apps, APP, {"sim": {"steps": 1, "step_delay": 0}})
    failed = ended_task(apps, "acme/hostile", {"fail": True})
    code, out, err = cli("attach", done, *target(apps), "--json", "--download", str(tmp_path))
    assert 0 == code, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert "completed" == lines[-2]["status"]
    assert Path(lines[-1]["saved"]).read_bytes().startswith(b"\x89PNG")
    code, out, err = cli("attach", failed, *target(apps))
    assert 1 == code
    assert err.decode().endswith(f"task {failed} failed: \\x1b[2Jboom\\x07\n")


def test_attach_live_on_a_terminal(apps: str) -> None:
    task_id = start_task(apps, APP, {"sim": {"steps": 3, "step_delay": 0.05}})
    with terminal("attach", task_id, *target(apps)) as term:
        code = term.finish()
    assert 0 == code, term.text()
    bars = [line for line in screen_of(term.raw) if "━" in line]
    assert 1 == len(bars)
    assert "✓ completed" in bars[0]


# -- agent --chat ---------------------------------------------------------------------------------


def test_agent_prints_its_chat_and_continues_it_with_chat(apps: str) -> None:
    """`chat: ID` on stderr; `--chat ID` sends the next message in the same chat."""
    code, out, err = cli("agent", "my-org/assistant", "first", *target(apps))
    assert 0 == code, err
    assert "turn 1" in out.decode()
    chat = re.search(r"^chat: (chat_\w+)$", err.decode(), re.M)
    assert chat is not None, err
    chat_id = chat.group(1)
    code, out, err = cli("agent", "my-org/assistant", "second", "--chat", chat_id, *target(apps))
    assert 0 == code, err
    assert "turn 2" in out.decode()
    assert f"chat: {chat_id}" == err.decode().splitlines()[-1]


def test_agent_with_an_unknown_chat_is_one_line(apps: str) -> None:
    code, out, err = cli("agent", "my-org/assistant", "hi", "--chat", "chat_nope", *target(apps))
    assert 1 == code
    assert b"" == out
    assert [b"inferencesh agent: error"] == [line[:24] for line in err.splitlines()]
    assert b"Traceback" not in err
