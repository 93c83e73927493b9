"""Handling Different Update Types: status changes, log lines and partial outputs.

export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
python examples/update_types.py
"""

import os

from inferencesh import inference

client = inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))
config = {"app": "infsh/flux-schnell", "input": {"prompt": "A mountain lake at dawn"}}

for update in client.run(config, stream=True):
    status = update.get("status")

    # Task state changes (a status equals its lower-case name)
    if status == "queued":
        print("Task queued, waiting for worker...")
    elif status == "running":
        print("Task is running...")
    elif status == "completed":
        print("Done!")
        print(f"Output: {update.get('output')}")
    elif status == "failed":
        print(f"Error: {update.get('error')}")

    # Progress logs: each update carries only the lines that are new
    if update.get("logs"):
        for log in update["logs"]:
            print(f"  Log: {log}")

    # Partial outputs of a running task
    if update.get("partial_output"):
        print(f"  Partial: {update['partial_output']}")
