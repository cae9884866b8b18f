"""What a worker sends for a handler's outcome: outputs, patches and failures."""

from __future__ import annotations

import json

from are_sdk import AreError, NonRetryableError, RawPayload, TaskError, TaskResult
from are_sdk._proto.are.v1 import common_pb2
from are_sdk._worker import _failure_from_exception


def raised(error: Exception) -> Exception:
    """The error with a traceback, as a handler's exception has."""
    try:
        raise error  # noqa: TRY301 - raising is the point
    except Exception as caught:  # noqa: BLE001
        return caught


def test_any_exception_is_an_application_failure_named_by_its_class() -> None:
    failure = _failure_from_exception(raised(ValueError("bad topic")))
    assert (failure.message, failure.type) == ("bad topic", "ValueError")
    assert failure.kind == common_pb2.FAILURE_KIND_APPLICATION
    assert not failure.non_retryable
    assert "ValueError: bad topic" in failure.stack_trace


def test_non_retryable_error_forbids_retries() -> None:
    failure = _failure_from_exception(raised(NonRetryableError("no such file", details={"path": "/x"})))
    assert failure.type == "NonRetryableError"
    assert failure.non_retryable
    assert json.loads(failure.details.data) == {"path": "/x"}


def test_task_error_chooses_type_and_retry_hint() -> None:
    error = TaskError("slow down", type="RateLimitError", retry_after=30)
    assert isinstance(error, AreError)
    failure = _failure_from_exception(raised(error))
    assert (failure.type, failure.message, failure.non_retryable) == ("RateLimitError", "slow down", False)
    assert error.retry_after == 30


def test_exceptions_with_a_non_retryable_attribute_are_honoured() -> None:
    class FatalError(Exception):
        non_retryable = True

    assert _failure_from_exception(raised(FatalError("x"))).non_retryable


def test_empty_messages_fall_back_to_the_class_name() -> None:
    assert _failure_from_exception(raised(KeyError())).message == "KeyError"


def test_task_result_defaults() -> None:
    result = TaskResult({"a": 1}, state_merge_patch={"done": True})
    assert result.content_type is None
    assert TaskResult(RawPayload(b"x", "text/plain")).output == RawPayload(b"x", "text/plain")
