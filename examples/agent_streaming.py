"""Agent Streaming: an agent's answer as it is written, and a client tool it calls.

export INFERENCE_BASE_URL=http://127.0.0.1:8080   # a running `python -m inferencesh serve`
python examples/agent_streaming.py
"""

import os
from typing import Any

from inferencesh import MessageEvent, ToolCall, inference

client = inference(api_key=os.environ.get("INFERENCE_API_KEY", "inf_local"))
agent = client.agent("my-org/assistant@latest")


def execute_tool(name: str, args: Any) -> dict[str, Any]:
    """Run a client tool: here it only reports what it was asked."""
    return {"tool": name, "args": args, "ok": True}


def on_message(msg: MessageEvent) -> None:
    if msg.get("type") == "thinking":
        print(f"[Thinking: {msg.get('content')}]")
    elif msg.get("content"):
        # Stream text as it arrives
        print(msg["content"], end="", flush=True)


def on_tool_call(call: ToolCall) -> None:
    print(f"\n[Calling tool: {call.name}]")
    result = execute_tool(call.name, call.args)
    agent.submit_tool_result(call.id, result)


response = agent.send_message(
    "Explain quantum entanglement",
    on_message=on_message,
    on_tool_call=on_tool_call,
)
print()
print(f"Chat {response.chat_id}: {len(response.text)} characters, status {response.status}")
