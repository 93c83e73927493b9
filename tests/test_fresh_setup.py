"""The README's set-up works from a clean state: a new venv, a real install, the main job.

One virtual environment is created in a temporary directory; the project is installed into it
from the repository path (non-editable, no pip cache, so from the package index) and the main
job runs there with the repository off `sys.path`. Then `bash scripts/demo` runs with that
environment active. This is the slow test of the suite (tens of seconds, bounded at 300 s); it
is skipped, with pip's error as the reason, when the package index cannot be reached.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 300.0
# pip's words for "the index could not be reached".
NETWORK_ERRORS = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "Max retries exceeded",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "No matching distribution found",
    "Could not find a version that satisfies",
)


@pytest.mark.timeout(BUDGET + 30)
def test_fresh_venv_installs_and_runs_the_main_job(tmp_path: Path) -> None:
    deadline = time.monotonic() + BUDGET

    def run(
        *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("the fresh set-up took longer than its budget")
        return subprocess.run(
            list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=left, check=False
        )

    python3 = shutil.which("python3") or sys.executable
    venv = tmp_path / "venv"
    made = run(python3, "-m", "venv", str(venv))
    assert 0 == made.returncode, made.stderr
    python = str(venv / "bin" / "python")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INFERENCE_", "INFERENCESH_", "PYTHON"))
    }
    env.pop("VIRTUAL_ENV", None)

    install = run(
        python, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
        f"{ROOT}[cli]", env=env,
    )  # fmt: skip
    if install.returncode != 0:
        if any(marker in install.stderr for marker in NETWORK_ERRORS):
            pytest.skip(f"the package index is unreachable: {install.stderr.strip()[-500:]}")
        pytest.fail(f"pip install failed:\n{install.stdout[-2000:]}\n{install.stderr[-3000:]}")

    where = run(
        python, "-c", "import inferencesh; print(inferencesh.__file__)", cwd=tmp_path, env=env
    )
    assert 0 == where.returncode, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # not the checkout

    job = run(
        python, "-m", "inferencesh", "run", "infsh/flux-schnell",
        "--input", '{"prompt": "A sunset timelapse"}', "--local", "--json",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert 0 == job.returncode, job.stderr
    last = json.loads(job.stdout.splitlines()[-1])
    assert ("completed", 10) == (last["status"], last["status_code"])
    assert "simulated infsh/flux-schnell output for A sunset timelapse" == last["output"]["text"]

    # `python -m inferencesh serve` from the clean install serves a task end to end.
    server = subprocess.Popen(
        [python, "-m", "inferencesh", "serve", "--port", "0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], max(1.0, deadline - time.monotonic()))
        assert ready, "serve printed nothing before the deadline"
        url = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:"), url
        served = run(
            python, "-m", "inferencesh", "run", "infsh/flux-schnell", "--base-url", url,
            "--api-key", "k", "--json", cwd=tmp_path, env=env,
        )  # fmt: skip
        assert 0 == served.returncode, served.stderr
        assert "completed" == json.loads(served.stdout.splitlines()[-1])["status"]
    finally:
        server.send_signal(signal.SIGINT)
        _, server_err = server.communicate(timeout=30)
    assert 0 == server.returncode, server_err
    assert "Traceback" not in server_err

    # The README's first command, with the new environment active (no second venv).
    active = {**env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}
    demo = run("bash", str(ROOT / "scripts" / "demo"), env=active)
    if demo.returncode != 0 and any(marker in demo.stderr for marker in NETWORK_ERRORS):
        pytest.skip(f"the package index is unreachable: {demo.stderr.strip()[-500:]}")
    assert 0 == demo.returncode, demo.stderr
    lines = demo.stdout.splitlines()
    assert "status: completed" in lines
    assert "progress: 10/10 (100%)" in lines
    assert "output:" in lines


@pytest.mark.timeout(BUDGET)
def test_the_wheel_is_pure_python(tmp_path: Path) -> None:
    """The package builds one `py3-none-any` wheel: no compiled code, `py.typed` included."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-w", str(tmp_path / "out"), str(ROOT)],
        capture_output=True, text=True, timeout=BUDGET - 30, check=False,
    )  # fmt: skip
    if built.returncode != 0 and any(marker in built.stderr for marker in NETWORK_ERRORS):
        pytest.skip(f"the package index is unreachable: {built.stderr.strip()[-500:]}")
    assert 0 == built.returncode, built.stderr[-3000:]
    [wheel] = (tmp_path / "out").glob("inferencesh-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert {"inferencesh/_reader.py", "inferencesh/py.typed"} <= set(names)
    assert not [name for name in names if name.endswith((".so", ".pyd", ".c"))], names


USER_SCRIPT = """\
from inferencesh import TaskUpdate, inference

client = inference(api_key="k")
update: TaskUpdate = client.get_task("t")
wrong: int = update.status  # a type error only a checker that found the package can see
"""


@pytest.mark.timeout(BUDGET)
@pytest.mark.parametrize("checker", ["pyright", "mypy"])
def test_type_checkers_resolve_the_editable_install(tmp_path: Path, checker: str) -> None:
    """With the project installed editable (as `scripts/test` does), mypy and pyright, and so
    Pylance, resolve `inferencesh` from a user's script: they see its types, not a missing
    import."""
    binary = Path(sys.executable).with_name(checker)
    if not binary.exists():
        pytest.skip(f"{checker} is not installed next to this Python (the dev extra has it)")
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    if checker == "pyright":
        command = [str(binary), "--pythonpath", sys.executable, str(script)]
    else:
        command = [str(binary), "--strict", "--no-incremental", str(script)]
    checked = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=BUDGET - 30, check=False
    )
    report = checked.stdout + checked.stderr
    assert "user.py:5" in report, report  # the one error, found...
    assert "TaskStatus" in report, report  # ...with the package's own types
    assert "could not be resolved" not in report, report
    assert "import-not-found" not in report, report
