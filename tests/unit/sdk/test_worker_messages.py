"""What a worker sends for a handler's outcome: outputs, patches and failures."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import cast

from are_sdk import AreError, Client, NonRetryableError, RawPayload, TaskError, TaskResult, _worker
from are_sdk._errors import retry_wait
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


def test_a_retry_waits_at_least_the_sidecars_retry_hint_and_jitters_without_one() -> None:
    waits = [retry_wait(0.4, None) for _ in range(200)]
    assert all(0 <= w <= 0.4 for w in waits)
    assert max(waits) - min(waits) > 0.1  # full jitter, not a fixed wait
    hinted = [retry_wait(0.4, timedelta(seconds=5)) for _ in range(200)]
    assert all(5.0 <= w <= 6.0 for w in hinted)  # the sidecar's 5 s, and up to a fifth more
    assert retry_wait(0.0, timedelta(0)) == 0.0


async def test_shutdown_before_run_makes_that_run_return_at_once() -> None:
    worker = _worker.Worker(cast("Client", object()), name="early", capabilities=["x"])
    worker.shutdown()  # before run() made its stop event: it was lost, and run() served forever
    await asyncio.wait_for(worker.run(handle_signals=False), timeout=10)
    assert worker.stats["connects"] == 0
