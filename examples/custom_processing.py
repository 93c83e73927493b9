"""Custom Stream Processing: a small class that folds the updates into a summary.

export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
python examples/custom_processing.py
"""

import os
import time
from typing import Any

from inferencesh import inference

client = inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))
config = {"app": "infsh/flux-schnell", "input": {"prompt": "A field of sunflowers"}}


class StreamProcessor:
    def __init__(self) -> None:
        self.logs: list[str] = []
        self.start_time: float | None = None
        self.end_time: float | None = None

    def process(self, update: Any) -> bool:
        if self.start_time is None:
            self.start_time = time.time()
        if update.get("logs"):
            self.logs.extend(update["logs"])
        if update.get("status") in ["completed", "failed", "cancelled"]:
            self.end_time = time.time()
            return True  # Done
        return False  # Continue

    @property
    def duration(self) -> float | None:
        if self.start_time and self.end_time:
            return self.end_time - self.start_time
        return None


processor = StreamProcessor()
for update in client.run(config, stream=True):
    if processor.process(update):
        break

print(f"Duration: {processor.duration:.2f}s")
print(f"Logs: {len(processor.logs)}")
