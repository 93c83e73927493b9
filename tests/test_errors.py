"""Tests for the exception tree and `status_error`, the HTTP error mapper."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import inferencesh
from inferencesh import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InferenceshError,
    NotFoundError,
    RateLimitError,
    RequirementError,
    RequirementsNotMetError,
    ServerError,
    SetupAction,
    TaskCancelledError,
    TaskError,
    TaskFailedError,
    TaskRejectedError,
    TaskStatus,
    TaskTimeoutError,
    TaskUpdate,
    UsageError,
    _exceptions,
)
from inferencesh._exceptions import status_error, storage_error

# protocol.md 2.3, verbatim.
NOT_FOUND_BODY = (
    '{"type": "https://inference.sh/errors/not_found", "title": "Not Found", "status": 404,\n'
    ' "detail": "task t_123 not found",\n'
    ' "success": false, "error": {"code": "not_found", "message": "task t_123 not found"}}'
)
REQUIREMENTS_BODY = (
    '{"type": "https://inference.sh/errors/requirements_not_met", "title": "Requirements not met",'
    ' "status": 412,\n'
    ' "detail": "secret OPENAI_API_KEY is not set", "errors": [{"type": "secret",'
    ' "key": "OPENAI_API_KEY",\n'
    ' "message": "secret OPENAI_API_KEY is not set", "action": {"type": "add_secret",'
    ' "provider": "openai"}}]}'
)


def _body(**fields: Any) -> str:
    return json.dumps(fields)


# --- status → class ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (405, BadRequestError),
        (409, ConflictError),
        (410, BadRequestError),
        (412, RequirementsNotMetError),
        (418, BadRequestError),
        (422, BadRequestError),
        (429, RateLimitError),
        (451, BadRequestError),
        (499, BadRequestError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (599, ServerError),
    ],
)
def test_status_maps_to_class(status: int, cls: type[APIStatusError]) -> None:
    """Each HTTP status becomes exactly its class, with `.status` set."""
    err = status_error(status, b"")
    assert (cls, status) == (type(err), err.status)


@pytest.mark.parametrize("status", [400, 404, 429, 500])
def test_status_error_is_api_status_error(status: int) -> None:
    """Every mapped error is an APIStatusError and an InferenceshError."""
    err = status_error(status, "x")
    assert (True, True) == (isinstance(err, APIStatusError), isinstance(err, InferenceshError))


# --- message and code extraction -------------------------------------------------------------


def test_protocol_not_found_example() -> None:
    """The 404 body of protocol.md 2.3 gives NotFoundError with its detail and code."""
    err = status_error(404, NOT_FOUND_BODY.encode())
    assert (
        NotFoundError,
        "task t_123 not found",
        "not_found",
        "HTTP 404: task t_123 not found",
    ) == (
        type(err),
        err.message,
        err.code,
        str(err),
    )


def test_protocol_not_found_example_body_is_decoded() -> None:
    """`.body` holds the decoded JSON of the error answer."""
    assert json.loads(NOT_FOUND_BODY) == status_error(404, NOT_FOUND_BODY).body


def test_protocol_requirements_example() -> None:
    """The 412 body of protocol.md 2.3 gives RequirementsNotMetError with message and code."""
    err = status_error(412, REQUIREMENTS_BODY)
    assert (
        RequirementsNotMetError,
        "secret OPENAI_API_KEY is not set",
        "requirements_not_met",
        "HTTP 412: secret OPENAI_API_KEY is not set",
    ) == (type(err), err.message, err.code, str(err))


def test_protocol_requirements_example_errors() -> None:
    """`.errors` of the 412 example lists the unmet requirement as sent."""
    err = status_error(412, REQUIREMENTS_BODY)
    assert isinstance(err, RequirementsNotMetError)
    assert [
        RequirementError(
            type="secret",
            key="OPENAI_API_KEY",
            message="secret OPENAI_API_KEY is not set",
            action=SetupAction(type="add_secret", provider="openai"),
        )
    ] == err.errors


@pytest.mark.parametrize(
    "body",
    ['{"detail": "x"}', '{"errors": "nope"}', '{"errors": [1, "two", null]}', "not json", ""],
)
def test_requirements_errors_empty_when_absent_or_malformed(body: str) -> None:
    """`.errors` is an empty list when the body has no usable `errors` array."""
    err = status_error(412, body)
    assert isinstance(err, RequirementsNotMetError)
    assert [] == err.errors


def test_requirements_errors_skips_non_objects() -> None:
    """`.errors` keeps only the object entries of the array."""
    err = status_error(412, _body(errors=[{"key": "A"}, "junk", 3, {"key": "B"}]))
    assert isinstance(err, RequirementsNotMetError)
    assert ["A", "B"] == [requirement.key for requirement in err.errors]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            _body(detail="d", title="t", message="m", error={"message": "legacy"}),
            "d",
        ),
        (_body(title="t", message="m"), "t"),
        (_body(error={"message": "legacy"}, message="m"), "legacy"),
        (_body(message="m"), "m"),
        (_body(detail="", title="t"), "t"),
        (_body(detail={"nested": 1}, message="m"), "m"),
        (_body(detail=None, error="flat string", message="m"), "m"),
        (_body(error={"message": ""}, message="m"), "m"),
    ],
)
def test_message_precedence(body: str, expected: str) -> None:
    """detail, then title / legacy error.message, then message; empty or non-strings skipped."""
    err = status_error(400, body)
    assert (expected, f"HTTP 400: {expected}") == (err.message, str(err))


def test_legacy_error_message_precedes_generic_title() -> None:
    """Without `detail`, the specific legacy `error.message` wins over a generic `title`."""
    err = status_error(404, _body(title="Not Found", error={"message": "legacy text"}))
    assert "legacy text" == err.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_body(type="https://inference.sh/errors/rate_limited"), "rate_limited"),
        (_body(type="/errors/conflict", error={"code": "legacy"}), "conflict"),
        (_body(error={"code": "not_found"}), "not_found"),
        (_body(type="about:blank", error={"code": "legacy"}), "legacy"),
        (_body(type="https://inference.sh/errors/", error={"code": "legacy"}), "legacy"),
        (_body(type="about:blank"), None),
        (_body(error={"code": 7}), None),
        (_body(detail="d"), None),
        ("plain text", None),
        ("", None),
    ],
)
def test_code_extraction(body: str, expected: str | None) -> None:
    """`code` is the problem type's part after `/errors/`, else the legacy `error.code`."""
    assert expected == status_error(400, body).code


def test_non_json_body_is_message() -> None:
    """A non-JSON body's stripped text is the message, and `.body` is that text."""
    err = status_error(502, b"  <html>Bad gateway</html>\n")
    assert ("<html>Bad gateway</html>", "HTTP 502: <html>Bad gateway</html>") == (
        err.message,
        str(err),
    )
    assert "  <html>Bad gateway</html>\n" == err.body


def test_long_body_is_cut_to_500_characters() -> None:
    """A body without a message field contributes at most its first 500 characters."""
    err = status_error(500, "x" * 499 + "yz" + "w" * 1000)
    assert "x" * 499 + "y" == err.message


@pytest.mark.parametrize("body", ['{"foo": 1}', "[1, 2]", '"quoted"', "42"])
def test_json_without_message_uses_body_text(body: str) -> None:
    """JSON that carries no message field falls back to the body text."""
    assert body == status_error(400, body).message


def test_bytes_and_str_bodies_agree() -> None:
    """A bytes body and the same text as str give the same message and code."""
    from_bytes = status_error(404, NOT_FOUND_BODY.encode())
    from_str = status_error(404, NOT_FOUND_BODY)
    assert (from_str.message, from_str.code) == (from_bytes.message, from_bytes.code)


def test_invalid_utf8_body_does_not_raise() -> None:
    """Undecodable bytes are replaced rather than raising."""
    err = status_error(500, b"\xff\xfe oops")
    assert "\ufffd\ufffd oops" == err.message


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "Bad Request"),
        (404, "Not Found"),
        (429, "Too Many Requests"),
        (502, "Bad Gateway"),
        (503, "Service Unavailable"),
    ],
)
@pytest.mark.parametrize("body", [b"", "", "   \n"])
def test_empty_body_uses_reason_phrase(status: int, reason: str, body: bytes | str) -> None:
    """An empty or blank body gives the HTTP reason phrase as the message."""
    err = status_error(status, body)
    assert (reason, f"HTTP {status}: {reason}") == (err.message, str(err))


@pytest.mark.parametrize("status", [499, 599])
def test_empty_body_with_unnamed_status(status: int) -> None:
    """A status without a standard reason phrase falls back to a generic message."""
    assert "Request failed" == status_error(status, b"").message


def test_retry_after_passed_through() -> None:
    """`retry_after` reaches the exception; it defaults to None."""
    assert (2.5, None) == (
        status_error(429, b"", retry_after=2.5).retry_after,
        status_error(429, b"").retry_after,
    )


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (412, False),
        (422, False),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (599, True),
    ],
)
def test_retryable(status: int, retryable: bool) -> None:
    """Only 429 and 5xx answers are retryable."""
    assert retryable is status_error(status, b"").retryable


def test_api_status_error_constructor() -> None:
    """APIStatusError keeps its arguments and formats as `HTTP <status>: <message>`."""
    err = APIStatusError(418, "teapot", code="im_a_teapot", body={"a": 1}, retry_after=1.0)
    assert (418, "teapot", "im_a_teapot", {"a": 1}, 1.0, "HTTP 418: teapot") == (
        err.status,
        err.message,
        err.code,
        err.body,
        err.retry_after,
        str(err),
    )


# --- the tree --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _exceptions.__all__)
def test_every_exception_is_an_inferencesh_error(name: str) -> None:
    """Every class in the exceptions module's `__all__` derives from InferenceshError."""
    cls = getattr(_exceptions, name)
    assert (True, True) == (isinstance(cls, type), issubclass(cls, InferenceshError))


def test_every_top_level_exception_is_an_inferencesh_error() -> None:
    """Every exception class exported by the package derives from InferenceshError."""
    exported = [getattr(inferencesh, name) for name in inferencesh.__all__]
    foreign = [
        c.__name__
        for c in exported
        if isinstance(c, type)
        and issubclass(c, BaseException)
        and not issubclass(c, InferenceshError)
    ]
    assert [] == foreign


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        ("ConnectError", "TransportError"),
        ("IdleTimeoutError", "TransportError"),
        ("StreamInterruptedError", "TransportError"),
        ("BadRequestError", "APIStatusError"),
        ("AuthenticationError", "APIStatusError"),
        ("NotFoundError", "APIStatusError"),
        ("ConflictError", "APIStatusError"),
        ("RequirementsNotMetError", "APIStatusError"),
        ("RateLimitError", "APIStatusError"),
        ("ServerError", "APIStatusError"),
        ("SSELineTooLongError", "ProtocolError"),
        ("TaskFailedError", "TaskError"),
        ("TaskRejectedError", "TaskFailedError"),
        ("TaskCancelledError", "TaskError"),
        ("ToolCallError", "AgentError"),
    ],
)
def test_tree_shape(child: str, parent: str) -> None:
    """Each exception sits under the parent the documented tree gives it."""
    assert issubclass(getattr(inferencesh, child), getattr(inferencesh, parent))


def test_usage_error_is_runtime_error() -> None:
    """UsageError is also a RuntimeError, so `except RuntimeError` catches it."""
    assert (True, True) == (
        issubclass(UsageError, RuntimeError),
        isinstance(UsageError("closed"), RuntimeError),
    )


def test_task_timeout_error_is_timeout_error() -> None:
    """TaskTimeoutError is also the builtin TimeoutError."""
    with pytest.raises(TimeoutError):
        raise TaskTimeoutError("deadline passed")


def test_task_error_carries_task() -> None:
    """TaskError keeps the task's last state and exposes its id and message."""
    task = TaskUpdate(id="t_9", status=TaskStatus.CANCELLED)
    err = TaskCancelledError("cancelled", task)
    assert (task, "t_9", "cancelled") == (err.task, err.task_id, str(err))


@pytest.mark.parametrize("cls", [TaskFailedError, TaskRejectedError])
def test_task_failed_error_exposes_task_error(cls: type[TaskFailedError]) -> None:
    """TaskFailedError (and TaskRejectedError) expose the task's error as `.error`."""
    task = TaskUpdate(id="t_8", status=TaskStatus.FAILED, error="out of memory")
    err = cls("failed", task)
    assert ("out of memory", "t_8", True) == (err.error, err.task_id, isinstance(err, TaskError))


def test_retries_exhausted_error_attempts() -> None:
    """RetriesExhaustedError keeps its attempt count."""
    err = inferencesh.RetriesExhaustedError("gave up", attempts=5)
    assert (5, "gave up") == (err.attempts, str(err))


SIGNED = "X-Amz-Signature=0123456789abcdef"


@given(
    status=st.integers(400, 599),
    # codec="utf-8": no lone surrogates, which no body on the wire can hold (`.encode()` below
    # would raise on them, failing one run in twenty on whatever examples came up).
    code=st.text(st.characters(codec="utf-8", exclude_characters="<&"), max_size=40),
    said=st.text(st.characters(codec="utf-8", exclude_characters="<&"), max_size=400),
    around=st.text(max_size=200),
)
def test_storage_errors_keep_code_and_message_only(
    status: int, code: str, said: str, around: str
) -> None:
    """Whatever a storage body holds, only its <Code> and <Message> (bounded) are kept: the
    signed request it quotes elsewhere never reaches the error."""
    body = (
        f"<Error>{around.replace(SIGNED, '')}<Code>{code}</Code><Message>{said}</Message>"
        f"<StringToSign>{SIGNED}</StringToSign><CanonicalRequest>{SIGNED}</CanonicalRequest>"
        "</Error>"
    )
    error = storage_error(status, body.encode())
    assert error.status == status
    assert SIGNED not in str(error)
    assert SIGNED not in repr(error.body)
    assert len(error.message) < 700
    assert isinstance(error, inferencesh.APIStatusError)


@given(st.binary(max_size=2000))
def test_storage_errors_from_any_bytes_are_typed(body: bytes) -> None:
    error = storage_error(503, body)
    assert isinstance(error, inferencesh.ServerError)
    assert error.retryable
    assert str(error).startswith("HTTP 503: file storage answered ")


@pytest.mark.parametrize(
    ("body", "says", "code"),
    [
        (b"<html><head><title>502 Bad Gateway</title></head></html>", "502 Bad Gateway", None),
        (b'{"error": {"code": "expired", "message": "URL expired"}}', "URL expired", "expired"),
        (b"bucket is read-only\nsee https://s.example/x?sig=SECRET", "bucket is read-only", None),
        (b"see https://s.example/x?sig=SECRET", "see https://s.example/...", None),
        (b"", "Forbidden", None),
    ],
)
def test_storage_error_bodies_of_each_kind(body: bytes, says: str, code: str | None) -> None:
    error = storage_error(403, body)
    assert type(error) is inferencesh.BadRequestError
    assert error.message == f"file storage answered {says}"
    assert error.code == code
    assert "SECRET" not in repr(vars(error))
