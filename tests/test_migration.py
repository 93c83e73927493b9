"""Moving from the official client: its names that we alias, and the JSON and typed forms of
what we return (README "Migrating from the official client"), against the emulator."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import FLOW

import inferencesh
from inferencesh import (
    APIError,
    APIStatusError,
    AsyncInference,
    ChatMessage,
    Inference,
    MessageEvent,
    NotFoundError,
    TaskCancelledError,
    TaskStatus,
    TaskUpdate,
    ToolCall,
    inference,
)

SIM = {"app": "infsh/flux-schnell", "input": {"prompt": "A sunset timelapse"}}
HOLD = {"app": "x/y", "input": {"sim": {"hold": True}}}
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def client(server: str) -> Iterator[Inference]:
    with inference(api_key="k", base_url=server) as c:
        yield c


# -- aliases ----------------------------------------------------------------------------------


def test_cancel_is_cancel_task(client: Inference) -> None:
    created = client.run(HOLD, wait=False)
    client.cancel(created.id)
    with pytest.raises(TaskCancelledError):
        client.wait_for_completion(created.id, timeout=30)
    assert TaskStatus.CANCELLED is client.get_task(created.id).status


@pytest.mark.anyio
async def test_async_cancel_is_cancel_task(server: str) -> None:
    async with AsyncInference(api_key="k", base_url=server) as client:
        created = await client.run(HOLD, wait=False)
        await client.cancel(created.id)
        with pytest.raises(TaskCancelledError):
            await client.wait_for_completion(created.id, timeout=30)


def test_api_error_is_api_status_error_with_status_code(client: Inference) -> None:
    assert APIError is APIStatusError
    assert "APIError" in inferencesh.__all__
    with pytest.raises(APIError) as info:
        client.get_task("task_that_does_not_exist")
    assert isinstance(info.value, NotFoundError)
    assert 404 == info.value.status_code == info.value.status


# -- stream given as a bool variable ----------------------------------------------------------


@pytest.mark.parametrize("flag", [True, False])
def test_stream_takes_a_bool_variable(client: Inference, flag: bool) -> None:
    result = client.run(SIM, stream=flag)
    if flag:
        assert not isinstance(result, TaskUpdate)
        assert "completed" == list(result)[-1]["status"]
    else:
        assert isinstance(result, TaskUpdate)
        assert "completed" == result["status"]


@pytest.mark.anyio
@pytest.mark.parametrize("flag", [True, False])
async def test_async_stream_takes_a_bool_variable(server: str, flag: bool) -> None:
    async with AsyncInference(api_key="k", base_url=server) as client:
        result = client.run(SIM, stream=flag)
        if isinstance(result, inferencesh.TaskStream):
            assert flag
            assert "completed" == [update async for update in result][-1].status
        else:
            assert not flag
            assert TaskStatus.COMPLETED is (await result).status


# -- statuses: names, not integers ------------------------------------------------------------


def test_a_status_is_not_equal_to_its_code(client: Inference) -> None:
    """The official client's statuses are integers; ours equal their names. `code` is the
    integer, and an integer converts with `TaskStatus.parse` (or `TaskStatus(10)`)."""
    final = client.run(SIM)
    assert final["status"] == "completed"
    assert final["status"] != 10  # type: ignore[comparison-overlap]  # as mypy says
    assert 10 == final.status.code == final["status"].code
    assert TaskStatus.parse(10) is TaskStatus(10) is TaskStatus.COMPLETED  # type: ignore[arg-type]
    assert TaskStatus.COMPLETED is final.status


# -- the JSON form ----------------------------------------------------------------------------


def test_every_update_of_a_stream_dumps_as_json(client: Inference) -> None:
    """`json.dumps(update.to_dict())` works for each update, progress and output files
    included, and gives the typed reads' values in plain form."""
    updates = list(client.run(SIM, stream=True))
    dumped = [json.loads(json.dumps(update.to_dict(), allow_nan=False)) for update in updates]
    assert FLOW == list(dict.fromkeys(line["status"] for line in dumped))
    for update, line in zip(updates, dumped, strict=True):
        assert [
            "id", "status", "status_code", "logs", "progress", "partial_output", "output",
            "error", "session_id",
        ] == list(line)  # fmt: skip
        assert (update.id, update.status.value, update.status.code) == (
            line["id"], line["status"], line["status_code"],
        )  # fmt: skip
        assert list(update.logs) == line["logs"]
        expected = None if update.progress is None else update.progress.to_dict()
        assert expected == line["progress"]
    assert any(line["progress"] for line in dumped)
    final = updates[-1]
    assert final.files, "the simulated image app outputs a file"
    assert final.output == dumped[-1]["output"]
    assert final.files == TaskUpdate(final.id, output=dumped[-1]["output"]).files


def test_to_dict_of_values_built_by_hand() -> None:
    """Typed values anywhere in a hand-built update (a `File` in the output, a status, a
    tuple) come out as JSON: one rule for every field."""
    file = inferencesh.File("https://files.example/a.png", content_type="image/png", size=3)
    update = TaskUpdate(
        "task_1",
        TaskStatus.RUNNING,
        logs=("one",),
        progress=inferencesh.Progress(1, 4),
        partial_output={"images": (file,), "stage": TaskStatus.RUNNING},
        raw={"extra": object()},
    )
    data = update.to_dict()
    assert {
        "id": "task_1", "status": "running", "status_code": 7, "logs": ["one"],
        "progress": {"current": 1, "total": 4},
        "partial_output": {"images": [file.to_dict()], "stage": "running"},
        "output": None, "error": None, "session_id": None,
    } == data  # fmt: skip
    assert {
        "uri": "https://files.example/a.png", "id": None, "filename": None,
        "content_type": "image/png", "size": 3, "role": None,
    } == file.to_dict()  # fmt: skip
    json.dumps(data)
    assert type(data["status"]) is str


def test_dict_of_an_update_is_its_typed_reads(client: Inference) -> None:
    """`dict(update)` is left as the mapping view (`keys()` and `update[key]`), typed values
    included; `to_dict()` is the JSON form."""
    final = client.run(SIM)
    assert {key: final[key] for key in final.keys()} == dict(final)  # noqa: SIM118
    assert set(final.to_dict()) - {"status_code"} <= set(dict(final))
    with pytest.raises(TypeError):
        json.dumps(final)


def test_agent_events_dump_as_json(client: Inference) -> None:
    agent = client.agent("my-org/assistant@latest")
    seen: list[MessageEvent | ToolCall | ChatMessage] = []

    def on_tool_call(call: ToolCall) -> None:
        seen.append(call)
        agent.submit_tool_result(call.id, "42")

    reply = agent.send_message("hello", on_message=seen.append, on_tool_call=on_tool_call)
    seen.append(reply)
    assert any(isinstance(event, MessageEvent) for event in seen)
    for event in seen:
        data: dict[str, Any] = json.loads(json.dumps(event.to_dict()))
        assert "raw" not in data
        assert all(data[key] == _plain_read(event, key) for key in data)


def _plain_read(event: MessageEvent | ToolCall | ChatMessage, key: str) -> Any:
    value = event[key]
    if isinstance(value, tuple):
        return [item.to_dict() for item in value]
    return value


# -- the typing check can fail ----------------------------------------------------------------

WRONG = """
from typing import assert_type
from inferencesh import TaskUpdate, inference


def reads(update: TaskUpdate, flag: bool) -> None:
    assert_type(update["status"], str)
    if update.status == 10:
        print("never")
    assert_type(inference().run({}, stream=flag), TaskUpdate)
"""


def test_mypy_rejects_wrong_types_and_integer_status_comparisons(tmp_path: Path) -> None:
    """What tests/typing relies on: mypy reads the per-key types, so a wrong `assert_type`,
    an integer compared with a status, or a `stream=bool` result taken as one type fail."""
    (tmp_path / "wrong.py").write_text(textwrap.dedent(WRONG), encoding="utf-8")
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "wrong.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert 1 == checked.returncode, checked.stdout + checked.stderr
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    assert 3 == len(errors), checked.stdout
    assert 'Expression is of type "TaskStatus", not "str"' in errors[0]
    assert "Non-overlapping equality check" in errors[1]
    assert "SyncStream[TaskUpdate] | TaskUpdate" in errors[2]


# -- the README section -----------------------------------------------------------------------


def test_readme_has_the_migration_section() -> None:
    text = README.read_text(encoding="utf-8")
    assert "## Migrating from the official client" in text
    assert "(#migrating-from-the-official-client)" in text.split("## Install", 1)[0]
    section = text.split("## Migrating from the official client", 1)[1].split("\n## ", 1)[0]
    for name in ("client.cancel(task_id)", "status_code", "APIError", "update.status.code"):
        assert name in section, name
