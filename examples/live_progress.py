"""The rich live display from Python: `inferencesh.progress.track` (needs the cli extra).

    pip install 'inferencesh[cli]'
    export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
    python examples/live_progress.py

On a terminal it draws the status, a progress bar with rate and ETA, the logs above it and
the latest partial output below; in a pipe it prints plain lines.
"""

import os

from inferencesh import inference
from inferencesh.progress import track

client = inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))
config = {"app": "infsh/flux-schnell", "input": {"prompt": "A sunset timelapse"}}

last = track(client.run(config, stream=True))
if last is not None:
    print(f"Status: {last.status}")
    print(f"Output: {last.output}")
