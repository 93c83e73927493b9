"""README.md stays true: every Python block runs against an emulator, and the tables match.

Each ```python block runs in its own interpreter with INFERENCE_BASE_URL pointing at a fast
emulator served by the test (and any INFERENCE_API_KEY), so the blocks are self-contained.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from inferencesh import TaskStatus
from inferencesh.cli import _build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def blocks(language: str) -> list[tuple[str, str]]:
    """The README's code blocks in `language`, each with the heading above it."""
    text = README.read_text(encoding="utf-8")
    found = []
    heading = ""
    pattern = rf"^## ([^\n]+)$|^```{language}\n(.*?)^```"
    for match in re.finditer(pattern, text, re.M | re.S):
        if match.group(1):
            heading = match.group(1).strip()
        else:
            found.append((heading, match.group(2)))
    return found


PYTHON = blocks("python")

# What each block prints, found by a line of its code: (a line in the block, a regex its
# output must match). Every block needs an entry, so a new block cannot go unchecked.
EXPECTED = [
    (
        "print(len(result.logs)",
        r"(?s)completed.*simulated infsh/flux-schnell output.*\n5 log lines",
    ),
    ("async with async_inference()", r"(?m)^10 completed$(?s:.*)'Ocean waves'\}\} 5$"),
    ("patient = attrs.evolve", r"(?m)\Areceived$(?s:.*)^completed\n\Z"),
    ("total_timeout=300", r"(?m)\Areceived$(?s:.*)^completed\n\Z"),
    ("except TaskFailedError", r"\Atask task_\w+ failed: out of memory\n\Z"),
    ('reply = agent.send_message(\n    "Explain', r"chat_\w+ ready \d+\n\Z"),
    ("last = track(", r"(?s)\Atask: task_\w+\nstatus: received.*progress: 5/5.*for A sunset"),
    ("acme/anything", r"\A\{'text': 'simulated acme/anything output for hi', 'steps': 3"),
    ('ctx.log(f"shouting', r"\{'text': 'HELLO THERE'\} \('shouting hello', 'shouting there'\)"),
    ("acme/weather", r"for that\. \nHere is the forecast: sunny, 24 °C\n\Z"),
    ('"image": Path("photo.png")', r"\Aimage\.png image/png True\n\Z"),
    ('client.session("acme/upscaler"', r"\ATrue completed 3\n\Z"),
    ("client.run_many(configs, concurrency=2)", r"\A(\d ok\n){4}4 completed\n\Z"),
    ("emu.faults.drop_after = 3", r"'setting_up', 'running'.*'completed'\]\n([2-9]|\d\d+) stream"),
    (
        "on_connection=show",
        r"(?s)\Atask task_\w+: connected\n.*: reconnect 1 in 0\.0\ds after "
        r"StreamInterruptedError\n.*: connected\n.*completed connected\n\Z",
    ),
    (
        "client.cancel(held",
        r'\Acompleted 10 True\n\{"id": "task_\w+", "status": "completed", "status_code": 10, .*'
        r'"session_id": null\}\n404 404\n\Z',
    ),
]


def expectation(code: str) -> str:
    matches = [pattern for marker, pattern in EXPECTED if marker in code]
    assert 1 == len(matches), f"give this README block one entry in EXPECTED:\n{code}"
    return matches[0]


@pytest.mark.parametrize(
    "code", [code for _, code in PYTHON], ids=[f"{i}-{h}" for i, (h, _) in enumerate(PYTHON)]
)
def test_python_block_runs_against_the_emulator(code: str, server: str, tmp_path: Path) -> None:
    pattern = expectation(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    env.update(INFERENCE_BASE_URL=server, INFERENCE_API_KEY="inf_readme")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert "" == result.stderr
    assert re.search(pattern, result.stdout), result.stdout


def test_every_expectation_is_used() -> None:
    for marker, _ in EXPECTED:
        assert any(marker in code for _, code in PYTHON), marker


def test_the_two_set_up_commands_come_first() -> None:
    """The first code block holds exactly the two commands: the demo and the test suite."""
    first = README.read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines()]
    assert ["bash scripts/demo", "bash scripts/test"] == commands
    for script in ("demo", "test"):
        path = ROOT / "scripts" / script
        assert os.access(path, os.X_OK), path
    demo = (ROOT / "scripts" / "demo").read_text(encoding="utf-8")
    assert "python3 -m venv .venv" in demo
    assert "pip install --quiet --disable-pip-version-check -e '.[cli]'" in demo
    command = "python -m inferencesh run infsh/flux-schnell"
    assert command in demo
    assert '--input \'{"prompt": "A sunset timelapse"}\' --local' in demo


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = _build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("command", ["serve", "run", "attach", "get", "cancel", "batch", "agent"])
def test_every_cli_flag_is_documented(command: str) -> None:
    text = README.read_text(encoding="utf-8")
    flags = [
        option
        for action in _subparser(command)._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    assert flags
    missing = [flag for flag in flags if f"`{flag}" not in text and f" {flag}" not in text]
    assert [] == missing


def test_status_table_matches_the_codes() -> None:
    text = README.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", text, re.M))
    assert {str(s.code): s.name for s in TaskStatus if s.name != "SCHEDULED"} == rows
    assert TaskStatus.SCHEDULED is TaskStatus.DISPATCHED
    assert "`SCHEDULED` is the same member" in text


# -- shell blocks -----------------------------------------------------------------------------

# Lines another check runs instead of this file, and why.
RUN_ELSEWHERE = {
    "bash scripts/demo": "tests/test_fresh_setup.py runs it in a fresh virtual environment",
    "bash scripts/test": "it is the command that runs this very suite (.ci/run)",
    "pip install -e .": "scripts/test runs it; tests/test_fresh_setup.py installs from scratch",
    "pip install -e '.[cli]'": "tests/test_fresh_setup.py installs '.[cli]' from scratch",
}

# A module for the README's `--app acme/shout=myapps:shout` line.
MYAPPS = """
async def shout(input, ctx):
    ctx.log("shouting")
    return {"text": str(input.get("text", "")).upper()}
"""


def shell_lines() -> list[str]:
    """Every command line of the README's ```bash blocks, comments dropped."""
    lines = []
    for _, code in blocks("bash"):
        for line in code.splitlines():
            command = re.split(r"\s{2,}#", line, maxsplit=1)[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def _shell_env(server: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    # What the README's `export` line sets, pointed at the test's emulator.
    env.update(INFERENCE_BASE_URL=server, INFERENCE_API_KEY="anything")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _serve_and_use(command: str, env: dict[str, str], cwd: Path) -> None:
    """Start a README `serve` line on a free port, use it, then stop it with Ctrl-C."""
    command = command.replace("--port 8080", "--port 0")
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:"), url
        app = "acme/shout" if "acme/shout" in command else "infsh/flux-schnell"
        used = subprocess.run(
            [sys.executable, "-m", "inferencesh", "run", app, "--input", '{"text": "hi"}',
             "--base-url", url, "--api-key", "k", "--json"],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert 0 == used.returncode, used.stderr
        last = json.loads(used.stdout.splitlines()[-1])
        assert "completed" == last["status"]
        if app == "acme/shout":
            assert {"text": "HI"} == last["output"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert 0 == proc.returncode, err


def test_shell_lines_run_elsewhere_are_in_the_readme() -> None:
    """The lines left to other checks are all still there, so none is silently unchecked."""
    assert set(RUN_ELSEWHERE) == set(RUN_ELSEWHERE) & set(shell_lines())


@pytest.mark.parametrize("command", [c for c in shell_lines() if c not in RUN_ELSEWHERE])
def test_shell_line_runs(command: str, server: str, tmp_path: Path) -> None:
    """Each shell command in the README runs as written (placeholders filled in) and succeeds."""
    env = _shell_env(server)
    if command.startswith("export "):
        assert ["INFERENCE_API_KEY", "INFERENCE_BASE_URL"] == sorted(
            part.split("=", 1)[0] for part in command.split()[1:]
        )
        return
    (tmp_path / "myapps.py").write_text(MYAPPS, encoding="utf-8")
    (tmp_path / "input.json").write_text('{"prompt": "from a file"}', encoding="utf-8")
    (tmp_path / "inputs.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n', encoding="utf-8")
    if " serve " in f"{command} ":
        _serve_and_use(command, env, tmp_path)
        return
    command = command.replace("URL", server).replace("KEY", "k")
    piped_to_jq = command.endswith("| jq .status")
    command = command.removesuffix("| jq .status").strip()
    done = subprocess.run(
        ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr
    if piped_to_jq:
        assert "completed" == json.loads(done.stdout.splitlines()[-1])["status"]
    elif command.startswith("inferencesh run"):
        assert "status: completed" in done.stdout.splitlines()
    else:
        assert done.stdout.strip()
