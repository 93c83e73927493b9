"""inferencesh: run AI apps on inference.sh and watch them live.

`async_inference(...)` gives the asyncio-native client; `inference(...)` gives the same client as
blocking calls and plain iterators. `inferencesh.local` is an emulator of the hosted API for
offline development and tests.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._converters import structure_task as _structure_task  # noqa: F401  (warm the converter)
from ._events import Progress, TaskUpdate
from ._exceptions import (
    AgentError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectError,
    IdleTimeoutError,
    InferenceshError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    RequirementsNotMetError,
    RetriesExhaustedError,
    ServerError,
    SSELineTooLongError,
    StreamInterruptedError,
    TaskCancelledError,
    TaskError,
    TaskFailedError,
    TaskRejectedError,
    TaskTimeoutError,
    ToolCallError,
    TransportError,
    UsageError,
)
from ._status import TaskStatus

try:
    __version__ = version("inferencesh")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "AgentError",
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectError",
    "IdleTimeoutError",
    "InferenceshError",
    "NotFoundError",
    "Progress",
    "ProtocolError",
    "RateLimitError",
    "RequirementsNotMetError",
    "RetriesExhaustedError",
    "ServerError",
    "SSELineTooLongError",
    "StreamInterruptedError",
    "TaskCancelledError",
    "TaskError",
    "TaskFailedError",
    "TaskRejectedError",
    "TaskStatus",
    "TaskTimeoutError",
    "TaskUpdate",
    "ToolCallError",
    "TransportError",
    "UsageError",
    "__version__",
]
