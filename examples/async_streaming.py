"""Async Streaming: the same stream with `async for`, on the asyncio-native client.

export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
python examples/async_streaming.py
"""

import asyncio
import os

from inferencesh import async_inference


async def stream_task() -> object:
    async with async_inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local")) as client:
        async for update in client.run(
            {"app": "google/veo-3-1-fast", "input": {"prompt": "Ocean waves"}},
            stream=True,
        ):
            print(f"Status: {update['status']}")
            if update.get("status") == "completed":
                return update.get("output")
    return None


result = asyncio.run(stream_task())
print(f"Result: {result}")
