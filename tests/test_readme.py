"""README.md stays true: every Python block runs against an emulator, and the tables match.

Each ```python block runs in its own interpreter with INFERENCE_BASE_URL pointing at a fast
emulator served by the test (and any INFERENCE_API_KEY), so the blocks are self-contained.
"""

from __future__ import annotations

import argparse
import os
import re
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
    ("except TaskFailedError", r"\Atask task_\w+ failed: out of memory\n\Z"),
    ('reply = agent.send_message(\n    "Explain', r"chat_\w+ ready \d+\n\Z"),
    ("last = track(", r"(?s)\Atask: task_\w+\nstatus: received.*progress: 5/5.*for A sunset"),
    ("acme/anything", r"\A\{'text': 'simulated acme/anything output for hi', 'steps': 3"),
    ('ctx.log(f"shouting', r"\{'text': 'HELLO THERE'\} \('shouting hello', 'shouting there'\)"),
    ("acme/weather", r"for that\. \nHere is the forecast: sunny, 24 °C\n\Z"),
    ("emu.faults.drop_after = 3", r"'setting_up', 'running'.*'completed'\]\n([2-9]|\d\d+) stream"),
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


@pytest.mark.parametrize("command", ["serve", "run", "agent"])
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
