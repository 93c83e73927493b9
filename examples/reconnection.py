"""Reconnection Handling: how a stream reconnects when its connection drops.

    export INFERENCE_BASE_URL=http://127.0.0.1:8080
    python examples/reconnection.py

To see reconnects happen, serve the emulator with dropped connections:
`python -m inferencesh serve --port 8080 --drop-after 3` cuts every stream after 3 events;
the updates printed here still arrive once each, in order, and the task completes, and each
reconnect is printed with its cause and how long the stream waits before it (the emulator's
SSE `retry: 1000` hint makes that about a second).
"""

import os

from inferencesh import ConnectionEvent, StreamingOptions, inference

client = inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))
config = {"app": "infsh/flux-schnell", "input": {"prompt": "A stormy sea"}}


def show(event: ConnectionEvent) -> None:
    """Called on each change of the connection (on the SDK's loop thread: keep it quick)."""
    if event.state == "reconnecting":
        print(f"  reconnecting (attempt {event.attempt}) in {event.delay:.2f}s: {event.cause}")
    elif event.state == "gave_up":
        print(f"  gave up: {event.cause}")


options = StreamingOptions(
    max_retries=3,  # consecutive failed attempts; the count resets when data arrives
    retry_delay=1.0,  # seconds (the server's SSE `retry:` hint takes its place)
    chunk_size=1024,
    on_connection=show,
)

for update in client.run(config, stream=True, options=options):
    print(f"Status: {update.status}, logs: {list(update.logs)}")
