"""inferencesh: run AI apps on inference.sh and watch them live.

`async_inference(...)` gives the asyncio-native client; `inference(...)` gives the same client as
blocking calls and plain iterators. `inferencesh.local` is an emulator of the hosted API for
offline development and tests.
"""

from __future__ import annotations

from ._agent import AgentEvent, AsyncAgent, ChatMessage, MessageEvent, ToolCall
from ._async_client import AsyncInference, TaskStream, async_inference
from ._batch import AsyncBatch, BatchItem, BatchProgress, TaskOutcome
from ._connection import ConnectionEvent
from ._defaults import USE_CLIENT_DEFAULT, UseClientDefault
from ._events import Progress, TaskUpdate
from ._exceptions import (
    AgentError,
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectError,
    EventGapError,
    EventTooLargeError,
    HeadersTimeoutError,
    IdleTimeoutError,
    InferenceshError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    RequestTimeoutError,
    RequirementsNotMetError,
    RetriesExhaustedError,
    ServerError,
    SessionEndedError,
    SessionError,
    SessionExpiredError,
    SessionNotFoundError,
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
from ._files import File, TransferProgress
from ._requirements import RequirementError, SetupAction
from ._retry import RetryPolicy
from ._sessions import AsyncSession, SessionInfo
from ._status import TaskStatus
from ._stream import ItemStream
from ._streaming import StreamingOptions
from ._sync_client import Agent, Inference, Session, SyncBatch, SyncStream, inference
from ._version import __version__

__all__ = [
    "Agent",
    "AgentError",
    "AgentEvent",
    "APIError",
    "APIStatusError",
    "async_inference",
    "AsyncAgent",
    "AsyncBatch",
    "AsyncInference",
    "AsyncSession",
    "AuthenticationError",
    "BadRequestError",
    "BatchItem",
    "BatchProgress",
    "ChatMessage",
    "ConflictError",
    "ConnectError",
    "ConnectionEvent",
    "EventGapError",
    "EventTooLargeError",
    "File",
    "HeadersTimeoutError",
    "IdleTimeoutError",
    "Inference",
    "inference",
    "InferenceshError",
    "ItemStream",
    "MessageEvent",
    "NotFoundError",
    "Progress",
    "ProtocolError",
    "RateLimitError",
    "RequestTimeoutError",
    "RequirementError",
    "RequirementsNotMetError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "ServerError",
    "Session",
    "SessionEndedError",
    "SessionError",
    "SessionExpiredError",
    "SessionInfo",
    "SessionNotFoundError",
    "SetupAction",
    "SSELineTooLongError",
    "StreamingOptions",
    "StreamInterruptedError",
    "SyncBatch",
    "SyncStream",
    "TaskCancelledError",
    "TaskError",
    "TaskFailedError",
    "TaskOutcome",
    "TaskRejectedError",
    "TaskStatus",
    "TaskStream",
    "TaskTimeoutError",
    "TaskUpdate",
    "ToolCall",
    "ToolCallError",
    "TransferProgress",
    "TransportError",
    "UsageError",
    "USE_CLIENT_DEFAULT",
    "UseClientDefault",
    "__version__",
]
