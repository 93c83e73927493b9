"""`inferencesh.local`: a local emulator of the hosted inference.sh task and agent chat API.

It speaks the hosted API's wire protocol (envelope, problem+json errors, the task status flow,
NDJSON streams) plus our SSE extensions (event ids, `Last-Event-ID` resume, `retry:`), so both the
official clients and ours can run against it offline. Unregistered apps run a simulated app;
fault injection (`Emulator.faults`) lets tests cut streams and force error answers. Agent chats
(`POST /agents/run`, `/chats/{id}/stream`, client tools) run local agents registered with
`Emulator.register_agent`, or a scripted agent that calls one client tool, `search`. App
sessions (`"session": "new"`, `/sessions`) keep a pretend worker across calls, one call at a
time; a run can be made to answer 412 `requirements_not_met` (`sim.require`, or
`register_app(..., requires=[...])`).
State lives in memory, or with `EmulatorOptions(data_dir=...)` also in a SQLite database that
survives restarts. Files (`POST /files`, then keyless upload and download URLs) live on disk;
apps read them with `AppContext.open_file` and add them to outputs with `AppContext.save_file`.

```python
from inferencesh.local import Emulator, EmulatorOptions, serve

async with serve(EmulatorOptions(sim_steps=3)) as url:
    ...  # POST {url}/apps/run, GET {url}/tasks/{id}/stream
```

From a shell: `python -m inferencesh serve --port 8080`.
"""

from __future__ import annotations

from ._agents import AgentContext, ToolResult, ToolTimeoutError
from ._apps import AppContext
from ._emulator import Emulator
from ._files import FileError, UnknownFileError
from ._journal import DataDirError
from ._limits import HttpLimits
from ._options import AgentFunction, AppFunction, EmulatorOptions, Faults
from ._server import serve, serve_in_thread

__all__ = [
    "AgentContext",
    "AgentFunction",
    "AppContext",
    "AppFunction",
    "DataDirError",
    "Emulator",
    "EmulatorOptions",
    "Faults",
    "FileError",
    "HttpLimits",
    "ToolResult",
    "ToolTimeoutError",
    "UnknownFileError",
    "serve",
    "serve_in_thread",
]
