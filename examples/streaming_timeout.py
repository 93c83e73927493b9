"""Streaming with Timeout: stop watching after a deadline, and cancel the task then.

    export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
    python examples/streaming_timeout.py [SECONDS]     # default 300

The deadline is checked whenever an update arrives, as in the seed document. For a hard
deadline that holds even when no update comes, use `client.wait_for_completion(task_id,
timeout=...)`, which raises `TaskTimeoutError`.
"""

import os
import sys
import time

from inferencesh import inference

client = inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))
config = {"app": "infsh/flux-schnell", "input": {"prompt": "A slow sunrise"}}

start = time.time()
timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 300  # 5 minutes

task_id = None
for update in client.run(config, stream=True):
    task_id = update.get("id")
    if time.time() - start > timeout:
        print("Timeout reached")
        # Leaving the loop closes the connection; the task itself keeps running until cancelled.
        client.cancel_task(task_id)
        print(f"Cancelled task {task_id}")
        break
    print(f"Status: {update['status']}")
    if update.get("status") in ["completed", "failed"]:
        break
