"""Cancelling a Stream: stop watching and cancel the task on the server.

export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
python examples/cancel_stream.py
"""

import os
from typing import Any

from inferencesh import TaskCancelledError, inference

client = inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))
config = {"app": "infsh/flux-schnell", "input": {"prompt": "A very long video"}}


def should_cancel(update: Any) -> bool:
    """Cancel as soon as the task has done some work (its first log line)."""
    return bool(update.get("logs"))


task_id = None
try:
    for update in client.run(config, stream=True):
        task_id = update.get("id")
        print(f"Status: {update['status']}")
        if should_cancel(update):
            break
finally:
    if task_id:
        client.cancel_task(task_id)
        print("Task cancelled")

# Cancelling is asynchronous: wait for the task's final state.
if task_id:
    try:
        client.wait_for_completion(task_id, timeout=30)
        print("Final status: completed (it finished before the cancel arrived)")
    except TaskCancelledError as exc:
        print(f"Final status: {exc.task.status}")
