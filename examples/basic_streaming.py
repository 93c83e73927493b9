"""Basic Streaming: run an app and print each status of its task as it arrives.

python -m inferencesh serve --port 8080            # in another terminal
export INFERENCE_BASE_URL=http://127.0.0.1:8080
python examples/basic_streaming.py
"""

import os

from inferencesh import inference

# The emulator accepts any key; the hosted API needs yours in INFERENCE_API_KEY.
client = inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))

for update in client.run(
    {"app": "google/veo-3-1-fast", "input": {"prompt": "A sunset timelapse"}},
    stream=True,
):
    print(f"Status: {update['status']}")
