"""Many tasks at once: a list of prompts through `run_many`, with a running tally.

    export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
    python examples/batch_prompts.py [CONCURRENCY]

Each finished task prints a line as it ends (in the order they end, not the input order);
the last lines are the tally and the outputs in input order. Ctrl-C stops the batch and
cancels the tasks still running on the server.
"""

import os
import sys

from inferencesh import TaskOutcome, inference

PROMPTS = ["a lighthouse at dawn", "a fox in snow", "a city at night", "an owl", "a red kite"]
concurrency = int(sys.argv[1]) if len(sys.argv) > 1 else 2

outcomes: dict[int, TaskOutcome] = {}
with inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local")) as client:
    configs = ({"app": "infsh/flux-schnell", "input": {"prompt": p}} for p in PROMPTS)
    with client.run_many(configs, concurrency=concurrency, total=len(PROMPTS)) as batch:
        for outcome in batch:
            outcomes[outcome.index] = outcome
            progress = batch.progress
            state = "completed" if outcome.ok else f"failed ({outcome.error})"
            print(f"[{progress.finished}/{progress.total}] {PROMPTS[outcome.index]!r}: {state}")
    progress = batch.progress
    print(f"{progress.succeeded} completed, {progress.failed} failed, {progress.rate:.1f} tasks/s")
    for index in sorted(outcomes):
        task = outcomes[index].task
        print(index, task.output["text"] if task is not None and task.output else None)
