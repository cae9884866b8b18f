"""The SDK decodes exactly what the sidecar encodes: reason, field violations, retry hint."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from are_sdk import (
    AreError,
    InternalError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
    VersionMismatchError,
)
from are_sdk._errors import error_from_rpc
from sidecar._status import status_trailers


class _Failed(grpc.RpcError):  # type: ignore[misc]  # grpc is untyped here (see the mypy overrides)
    """The three accessors every grpc error (sync or aio) offers."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, bytes | str], ...]
    ) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes | str], ...]:
        return self._trailers


def _round_trip(code: grpc.StatusCode, message: str, **details: object) -> AreError:
    # details are status_trailers' own keywords, passed through from each test untyped.
    return error_from_rpc(_Failed(code, message, status_trailers(code, message, **details)))  # type: ignore[arg-type]


def test_field_violations_survive_the_trip() -> None:
    error = _round_trip(
        grpc.StatusCode.INVALID_ARGUMENT,
        "tasks[3].depends_on names an unknown task",
        reason="INVALID_ARGUMENT",
        field_violations=[("tasks[3].depends_on", "unknown task 'x'")],
    )
    assert isinstance(error, InvalidArgumentError)
    assert error.reason == "INVALID_ARGUMENT"
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("tasks[3].depends_on", "unknown task 'x'")
    ]
    assert "tasks[3].depends_on" in str(error)


def test_retry_hint_and_metadata_survive_the_trip() -> None:
    error = _round_trip(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "pool 'llm' queue is full",
        reason="POOL_QUEUE_FULL",
        metadata={"pool": "llm"},
        retry_after=timedelta(milliseconds=250),
    )
    assert isinstance(error, ResourceExhaustedError)
    assert error.retry_after == timedelta(milliseconds=250)
    assert error.metadata == {"pool": "llm"}


def test_reason_refines_the_class() -> None:
    error = _round_trip(
        grpc.StatusCode.ABORTED, "version 7 is not the latest (9)", reason="STATE_VERSION_MISMATCH"
    )
    assert isinstance(error, VersionMismatchError)


@pytest.mark.parametrize(
    ("code", "cls"),
    [(grpc.StatusCode.UNAVAILABLE, UnavailableError), (grpc.StatusCode.DATA_LOSS, InternalError)],
)
def test_plain_statuses_without_details_map_by_code(code: grpc.StatusCode, cls: type[AreError]) -> None:
    error = error_from_rpc(_Failed(code, "connection refused", ()))
    assert isinstance(error, cls)
    assert error.reason == ""
    assert error.message == "connection refused"
