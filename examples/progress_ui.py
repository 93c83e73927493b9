"""Progress Tracking with UI: a hand-drawn progress bar (see live_progress.py for rich's).

export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
python examples/progress_ui.py
"""

import os
import sys

from inferencesh import inference

client = inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))
config = {"app": "infsh/flux-schnell", "input": {"prompt": "A city at night"}}


def progress_bar(current: float, total: float, width: int = 50) -> None:
    filled = int(width * current / total)
    bar = "█" * filled + "░" * (width - filled)
    percent = current / total * 100
    sys.stdout.write(f"\r[{bar}] {percent:.1f}%")
    sys.stdout.flush()


for update in client.run(config, stream=True):
    # `progress` is None until the app reports some; `total` may be 0 for "unknown".
    progress = update.get("progress")
    if progress and progress["total"] > 0:
        progress_bar(progress["current"], progress["total"])

    if update.get("status") == "completed":
        print("\n✓ Complete!")
    elif update.get("status") == "failed":
        print(f"\n✗ Failed: {update.get('error')}")
