"""Collecting All Logs: keep every log line; each update carries only the new ones.

export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
python examples/collect_logs.py
"""

import os

from inferencesh import inference

client = inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))
config = {"app": "infsh/flux-schnell", "input": {"prompt": "A desert at noon"}}

all_logs = []

for update in client.run(config, stream=True):
    if update.get("logs"):
        all_logs.extend(update["logs"])
    if update.get("status") == "completed":
        print("Final logs:")
        for log in all_logs:
            print(f"  {log}")

# `wait_for_completion` and `run(config)` without streaming return all lines at once, too.
