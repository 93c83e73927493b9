"""`inferencesh run` and `inferencesh agent`: JSON, plain and live output, exit codes, Ctrl-C.

Most cases call `main()` in-process (stdout is then not a terminal: plain lines). The live
display and Ctrl-C run `python -m inferencesh` in a child under a pseudo-terminal, read with a
deadline; `inferencesh.progress` is also driven directly with a rich Console on a StringIO.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import io
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import FLOW, child, fast_emulator, plain

from inferencesh import Progress, TaskStatus, TaskUpdate, UsageError, async_inference, inference
from inferencesh.cli import main
from inferencesh.local import Emulator, serve_in_thread
from inferencesh.progress import LiveDisplay, atrack, track

APP = "infsh/flux-schnell"
AGENT = "my-org/assistant@latest"
HINT = "pip install 'inferencesh[cli]'"


def collapse(items: list[str]) -> list[str]:
    """Consecutive repeats folded into one (a running task sends many updates)."""
    return [item for i, item in enumerate(items) if i == 0 or items[i - 1] != item]


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- run --local --json ----------------------------------------------------------------------


def test_run_local_json_prints_each_update_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    """--local --json: one JSON object per update, statuses in flow order, the output last."""
    task_input = {"prompt": "A sunset timelapse", "sim": {"steps": 3, "step_delay": 0.01}}
    code, out, err = run_main(
        capsys, "run", APP, "--local", "--json", "--input", json.dumps(task_input)
    )
    assert 0 == code, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert FLOW == collapse([line["status"] for line in lines])
    for line in lines:
        assert TaskStatus(line["status"]).code == line["status_code"]
        assert lines[0]["id"] == line["id"]
        assert {
            "id", "status", "status_code", "logs", "progress", "partial_output", "output", "error",
            "session_id",
        } == set(line)  # fmt: skip
    logs = [log for line in lines for log in line["logs"]]
    assert [f"step {n}/3: working on A sunset timelapse" for n in (1, 2, 3)] == logs
    assert {"current": 3, "total": 3} == lines[-1]["progress"]
    assert any(line["partial_output"] == {"text": "part1 part2", "step": 2} for line in lines)
    output = dict(lines[-1]["output"])
    image = output.pop("image")  # an image app: its output holds a real PNG file
    assert {
        "text": f"simulated {APP} output for A sunset timelapse",
        "steps": 3,
        "input": {"prompt": "A sunset timelapse"},
    } == output
    assert "image/png" == image["content_type"]
    assert "" == err


def test_run_plain_lines_when_stdout_is_not_a_terminal(
    server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipe gets one line per status change, log line and progress step, then the output."""
    monkeypatch.setenv("INFERENCE_API_KEY", "k")
    code, out, err = run_main(
        capsys, "run", APP, "--base-url", server, "--input", '{"prompt": "a cat"}'
    )
    assert 0 == code, err
    lines = out.splitlines()
    assert lines[0].startswith("task: task_")
    statuses = [line.removeprefix("status: ") for line in lines if line.startswith("status: ")]
    assert FLOW == statuses
    assert [f"log: step {n}/5: working on a cat" for n in range(1, 6)] == [
        line for line in lines if line.startswith("log: ")
    ]
    assert [f"progress: {n}/5 ({n * 20}%)" for n in range(1, 6)] == [
        line for line in lines if line.startswith("progress: ")
    ]
    assert "running" == statuses[statuses.index("completed") - 2]
    output_at = lines.index("output:")
    assert lines[output_at - 1] == "status: completed"
    output = json.loads("\n".join(lines[output_at + 1 :]))
    assert f"simulated {APP} output for a cat" == output["text"]
    assert "" == err


def test_run_input_from_file(
    server: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--input @file.json reads the input from the file; --api-key works without the env."""
    path = tmp_path / "input.json"
    path.write_text('{"prompt": "from a file"}', encoding="utf-8")
    code, out, err = run_main(
        capsys, "run", APP, "--base-url", server, "--api-key", "k", "--json", "--input", f"@{path}"
    )
    assert 0 == code, err
    assert {"prompt": "from a file"} == json.loads(out.splitlines()[-1])["output"]["input"]


@pytest.mark.parametrize("json_mode", [False, True])
def test_failed_task_exits_1_with_the_error_on_stderr(
    json_mode: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """The simulated app fails on request: exit 1, the error on stderr, no traceback."""
    args = ["run", APP, "--local", "--input", '{"sim": {"fail": "boom"}}']
    code, out, err = run_main(capsys, *args, *(["--json"] if json_mode else []))
    assert 1 == code
    assert re.fullmatch(r"inferencesh run: task task_\w+ failed: boom\n", err), err
    if json_mode:
        last = json.loads(out.splitlines()[-1])
        assert ("failed", 11, "boom") == (last["status"], last["status_code"], last["error"])
    else:
        assert "status: failed: boom" == out.splitlines()[-1]
        assert "output:" not in out


def test_api_errors_exit_1_without_traceback(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An API error (here a 400 for a malformed app reference) is one line on stderr."""
    code, out, err = run_main(capsys, "run", "not-an-app", "--base-url", server, "--api-key", "k")
    assert 1 == code
    assert err.startswith("inferencesh run: error: ")
    assert "app" in err
    assert "Traceback" not in err
    assert "" == out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{bad"], "--input is not valid JSON"),
        (["--input", "[1, 2]"], "--input must be a JSON object (the app input), got an array"),
        (["--input", "@/nonexistent/input.json"], "cannot read --input file"),
        (["--local", "--base-url", "http://127.0.0.1:1"], "cannot be combined"),
        ([], "no API key"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_2_without_traceback(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bad input, a missing file, no API key, an unknown flag: exit 2 and a short message."""
    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    code, out, err = run_main(capsys, "run", APP, *args)
    assert 2 == code
    assert message in err
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 5
    assert "" == out


def test_usage_error_exit_code_from_a_real_process() -> None:
    """The same through `python -m inferencesh`: the process exits 2, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "inferencesh", "run", APP, "--input", "{bad"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 2 == result.returncode
    assert "is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


# -- rich is optional ------------------------------------------------------------------------


def test_importing_the_package_and_cli_does_not_import_rich() -> None:
    """The core package, the CLI module and the progress helper load without rich."""
    code = (
        "import sys, inferencesh, inferencesh.cli, inferencesh.progress, inferencesh._cli_run\n"
        "loaded = sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert 0 == result.returncode, result.stderr


def test_without_rich_a_terminal_gets_the_install_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without rich: on a terminal, a one-line hint and exit 2; --json still works."""
    monkeypatch.setitem(sys.modules, "rich", None)  # makes `import rich` fail
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    args = ["run", APP, "--local", "--input", '{"sim": {"steps": 1, "step_delay": 0}}']
    code, out, err = run_main(capsys, *args)
    assert 2 == code
    assert 1 == len(err.splitlines())
    assert HINT in err
    assert "" == out
    code, out, err = run_main(capsys, *args, "--json")
    assert 0 == code, err
    assert "completed" == json.loads(out.splitlines()[-1])["status"]


def test_track_without_rich_raises_usage_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    with pytest.raises(UsageError, match=re.escape(HINT)):
        track([])


# -- inferencesh.progress --------------------------------------------------------------------


def _terminal_console(buffer: io.StringIO) -> Any:
    from rich.console import Console

    return Console(file=buffer, force_terminal=True, width=120, color_system="standard")


def test_track_draws_a_live_display_on_a_terminal(server: str) -> None:
    """On a terminal: log lines, the status, a bar reaching 100 %, steps and the outcome."""
    buffer = io.StringIO()
    with inference(api_key="k", base_url=server) as client:
        config = {"app": APP, "input": {"prompt": "a dog"}}
        last = track(client.run(config, stream=True), console=_terminal_console(buffer))
    assert last is not None
    assert TaskStatus.COMPLETED is last.status
    shown = plain(buffer.getvalue())
    assert f"task {last.id}" in shown
    for n in range(1, 6):
        assert f"step {n}/5: working on a dog" in shown
    final = shown.rstrip().splitlines()[-1]
    assert "✓ completed" in final
    assert "100%" in final
    assert "5/5" in final
    assert "\x1b[" in buffer.getvalue()  # drawn with terminal control codes


def test_live_display_shows_rate_eta_and_partial_output_while_running() -> None:
    """Progress with a known total gets steps, a rate and an ETA; the partial output shows."""
    from rich.console import Console

    now = [100.0]
    buffer = io.StringIO()
    console = Console(
        file=buffer, force_terminal=True, width=120, color_system=None, get_time=lambda: now[0]
    )
    with LiveDisplay(console) as display:
        display.show(TaskUpdate("task_1", TaskStatus.RUNNING, logs=("warming up",)))
        for step in (1, 2):
            now[0] += 1.0  # rich's clock: one step per second
            progress = Progress(step, 4)
            display.show(TaskUpdate("task_1", TaskStatus.RUNNING, progress=progress,
                                    partial_output={"words": "a " * step}))  # fmt: skip
        display.refresh()
        frame = plain(buffer.getvalue()).rstrip().splitlines()[-2:]
    assert "warming up" in plain(buffer.getvalue())
    bar, partial = frame
    assert "running" in bar
    assert "50%" in bar
    assert "2/4" in bar
    assert "1.00 steps/s" in bar
    assert "eta 0:02" in bar
    assert 'partial: {"words": "a a "}' in partial


def test_track_prints_plain_lines_on_a_console_that_is_not_a_terminal(server: str) -> None:
    """A non-terminal console gets the same plain lines as the CLI in a pipe."""
    from rich.console import Console

    buffer = io.StringIO()
    with inference(api_key="k", base_url=server) as client:
        config = {"app": APP, "input": {"sim": {"fail": "nope"}}}
        last = track(client.run(config, stream=True), console=Console(file=buffer, width=40))
    assert last is not None
    lines = buffer.getvalue().splitlines()
    assert "status: failed: nope" == lines[-1]
    assert "\x1b[" not in buffer.getvalue()
    assert [line for line in lines if line.startswith("log: ")]


@pytest.mark.anyio
async def test_atrack_follows_an_async_stream(server: str) -> None:
    buffer = io.StringIO()
    async with async_inference(api_key="k", base_url=server) as client:
        stream = client.run({"app": APP, "input": {}}, stream=True)
        last = await atrack(stream, console=_terminal_console(buffer))
    assert last is not None
    assert TaskStatus.COMPLETED is last.status
    assert "✓ completed" in plain(buffer.getvalue())


# -- under a pseudo-terminal ---------------------------------------------------------------------


def test_live_display_under_a_pseudo_terminal_reaches_100_percent() -> None:
    """`run APP --local` on a terminal: the bar reaches 100 % and the output is shown."""
    with child("run", APP, "--local", tty=True) as proc:
        code, text = proc.finish(timeout=60)
    assert 0 == code, text
    assert "\x1b[" in proc.raw.decode("utf-8", "replace")  # a live, redrawn display
    assert re.search(r"✓ completed ━+ 100% 10/10", text), text[-2000:]
    assert "step 10/10: working on input" in text
    tail = text[text.index("✓ completed") :]
    assert "output" in tail
    assert f'"text": "simulated {APP} output for input"' in tail


def test_ctrl_c_under_a_pseudo_terminal_cancels_the_task(emu: Emulator, server: str) -> None:
    """SIGINT while running: the task is cancelled on the server (12), the CLI exits 130."""
    args = [
        "run",
        APP,
        "--base-url",
        server,
        "--api-key",
        "k",
        "--input",
        '{"sim": {"hold": true}}',
    ]
    with child(*args, tty=True) as proc:
        text = proc.read_until(
            lambda text: "running" in text and re.search(r"task task_\w+", text) is not None
        )
        match = re.search(r"task (task_\w+)", text)
        assert match is not None
        task_id = match.group(1)
        assert 7 == (emu.task_snapshot(task_id) or {}).get("status")
        proc.proc.send_signal(signal.SIGINT)
        code, text = proc.finish()
    assert 130 == code, text
    assert f"cancelled task {task_id}" in text
    assert "Traceback" not in text
    assert emu.wait_until(lambda e: (e.task_snapshot(task_id) or {}).get("status") == 12)


def test_ctrl_c_with_json_output_on_a_pipe_cancels_too(emu: Emulator, server: str) -> None:
    args = ["run", APP, "--base-url", server, "--api-key", "k", "--json"]
    with child(*args, "--input", '{"sim": {"hold": true}}', tty=False) as proc:
        text = proc.read_until(lambda text: '"status": "running"' in text)
        task_id = json.loads(text.splitlines()[0])["id"]
        proc.proc.send_signal(signal.SIGINT)
        code, text = proc.finish()
    assert 130 == code, text
    assert f"inferencesh run: cancelled task {task_id}" in text.splitlines()
    assert emu.wait_until(lambda e: (e.task_snapshot(task_id) or {}).get("status") == 12)


@pytest.mark.anyio
async def test_ctrl_c_between_guarded_steps_closes_the_step_it_does_not_start() -> None:
    """A Ctrl-C that came before a guarded step: `_Interrupted`, and the step's coroutine is
    closed, not dropped un-awaited (its RuntimeWarning would be an error here)."""
    from inferencesh._cli_run import _Interrupted, _Interrupts

    ran: list[str] = []

    async def step() -> None:
        ran.append("step")

    with _Interrupts() as interrupts:
        interrupts._on_sigint()  # Ctrl-C between two steps: nothing guarded is running
        work = step()
        with pytest.raises(_Interrupted):
            await interrupts.guard(work)
        assert inspect.CORO_CLOSED == inspect.getcoroutinestate(work)
        assert 1 == await interrupts.guard(asyncio.sleep(0, 1))  # that Ctrl-C is handled
    assert [] == ran
    del work
    gc.collect()


# -- agent ----------------------------------------------------------------------------------------


def test_agent_streams_the_answer_and_rejects_client_tools(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """In a pipe: the answer on stdout; thinking and the tool note on stderr; the run ends."""
    code, out, err = run_main(
        capsys, "agent", AGENT, "What is the weather?", "--base-url", server, "--api-key", "k"
    )
    assert 0 == code, err
    assert out.strip()
    assert "What is the weather?" in out
    # The scripted agent quotes the tool result it got: the CLI's rejection.
    assert "cannot run client tool" in out
    assert "which the CLI cannot run" in err
    assert "[thinking] " in err
    assert "Traceback" not in err


def test_agent_live_under_a_pseudo_terminal(server: str) -> None:
    """On a terminal: thinking dimmed, the note in yellow, then the answer."""
    args = ["agent", AGENT, "Explain quantum entanglement", "--base-url", server]
    with child(*args, "--api-key", "k", tty=True) as proc:
        code, text = proc.finish(timeout=60)
    raw = proc.raw.decode("utf-8", "replace")
    assert 0 == code, text
    assert "Explain quantum entanglement" in text
    assert "which the CLI cannot run" in text
    assert "\x1b[2" in raw or "\x1b[3;2" in raw  # dim (possibly with italic)
    assert "\x1b[33m" in raw  # yellow


def test_ctrl_c_stops_the_agent_run(server: str, emu: Emulator) -> None:
    """SIGINT while the agent works: the chat's run is stopped on the server (by one request),
    exit 130."""

    async def ponder(text: str, ctx: Any) -> None:
        ctx.think("pondering")
        await asyncio.Event().wait()  # until the run is stopped

    emu.register_agent("acme/slow", ponder)
    args = ["agent", "acme/slow", "hi", "--base-url", server, "--api-key", "k"]
    with child(*args, tty=False, env={"INFERENCESH_LOG": "debug"}) as proc:  # a line a request
        proc.read_until(lambda text: "[thinking] pondering" in text)
        proc.proc.send_signal(signal.SIGINT)
        code, text = proc.finish()
    assert 130 == code, text
    match = re.search(
        r"^inferencesh agent: interrupted; stopped the agent run in chat '(chat_\w+)'$", text, re.M
    )
    assert match is not None, text
    chat_id = match.group(1)
    assert 1 == text.count(f"POST /chats/{chat_id}/stop -> 200"), text

    def stopped(e: Emulator) -> bool:
        chat = e.chat_snapshot(chat_id) or {}
        return (chat.get("active_run") or {}).get("state") == "canceled"

    assert emu.wait_until(stopped), emu.chat_snapshot(chat_id)


def test_agent_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFERENCE_API_KEY", raising=False)
    code, _, err = run_main(capsys, "agent", AGENT, "hi")
    assert 2 == code
    assert "no API key" in err
    code, _, err = run_main(capsys, "agent", AGENT)
    assert 2 == code
    assert "Traceback" not in err


def test_agent_cli_against_an_unreachable_server_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = fast_emulator()
    with serve_in_thread(emu) as url:
        pass  # the port is free again once the server has stopped
    code, _, err = run_main(capsys, "agent", AGENT, "hi", "--base-url", url, "--api-key", "k")
    assert 1 == code
    assert err.startswith("inferencesh agent: error: ")


def test_run_download_saves_the_output_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--download DIR: once the task completes, its output files are saved there (each
    line names one; a PNG for an image app)."""
    task_input = {"prompt": "a cat", "sim": {"steps": 1, "step_delay": 0}}
    folder = tmp_path / "out"
    code, out, err = run_main(
        capsys, "run", APP, "--local", "--json", "--download", str(folder),
        "--input", json.dumps(task_input),
    )  # fmt: skip
    assert 0 == code, err
    saved = json.loads(out.splitlines()[-1])
    path = Path(saved["saved"])
    assert path.parent == folder
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "" == err


def test_run_download_under_a_pseudo_terminal_shows_a_bar(tmp_path: Path) -> None:
    """On a terminal, --download draws a bar per file and names the path saved."""
    folder = tmp_path / "media"
    args = ["run", APP, "--local", "--download", str(folder), "--input", '{"prompt": "a dog"}']
    with child(*args, tty=True) as proc:
        code, text = proc.finish(timeout=60)
    assert 0 == code, text
    saved = folder / "image.png"
    assert saved.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert re.search(r"image\.png.*━+", text), text[-2000:]
    assert "Traceback" not in text


def test_version_names_the_sdk_and_python(capsys: pytest.CaptureFixture[str]) -> None:
    import platform

    import inferencesh

    code, out, err = run_main(capsys, "--version")
    assert 0 == code, err
    assert f"inferencesh {inferencesh.__version__} (Python {platform.python_version()})\n" == out


@pytest.mark.parametrize("where", ["inline", "file"])
def test_deeply_nested_input_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str
) -> None:
    """JSON nested past the interpreter's stack is a usage error (exit 2), not a traceback."""
    deep = "[" * 100_000
    value = deep
    if where == "file":
        (tmp_path / "deep.json").write_text(deep, encoding="utf-8")
        value = f"@{tmp_path / 'deep.json'}"
    code, _, err = run_main(capsys, "run", APP, "--local", "--input", value)
    assert 2 == code
    assert "is not valid JSON" in err
    assert "Traceback" not in err
