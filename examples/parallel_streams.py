"""Multiple Streams in Parallel: three tasks watched at once with asyncio.gather.

export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
python examples/parallel_streams.py
"""

import asyncio
import os
from typing import Any

from inferencesh import async_inference


async def run_parallel() -> list[Any]:
    client = async_inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))

    configs = [
        {"app": "infsh/flux-schnell", "input": {"prompt": "A mountain"}},
        {"app": "infsh/flux-schnell", "input": {"prompt": "An ocean"}},
        {"app": "infsh/flux-schnell", "input": {"prompt": "A forest"}},
    ]

    async def stream_one(config: dict[str, Any], index: int) -> Any:
        async for update in client.run(config, stream=True):
            print(f"[{index}] {update['status']}")
            if update.get("status") == "completed":
                return update.get("output")
        return None

    async with client:
        return await asyncio.gather(*[stream_one(c, i) for i, c in enumerate(configs)])


results = asyncio.run(run_parallel())
for index, output in enumerate(results):
    print(f"Result {index}: {output}")
