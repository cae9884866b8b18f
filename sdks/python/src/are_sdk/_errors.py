"""One exception tree for every error the ARE sidecar returns.

Every failed call raises a subclass of :class:`AreError`; the class is chosen
from the gRPC status code and, when the sidecar sent one, the machine-readable
reason of its ``google.rpc.ErrorInfo`` detail::

    AreError
    ├── ClientClosedError             a call on (or in flight at) a closed client
    └── RpcError                      (any non-OK gRPC status)
        ├── InvalidArgumentError      INVALID_ARGUMENT (.field_violations)
        ├── NotFoundError             NOT_FOUND
        ├── AlreadyExistsError        ALREADY_EXISTS
        ├── FailedPreconditionError   FAILED_PRECONDITION
        ├── AbortedError              ABORTED
        │   └── VersionMismatchError  reason STATE_VERSION_MISMATCH
        ├── ResourceExhaustedError    RESOURCE_EXHAUSTED (.retry_after)
        ├── UnauthenticatedError      UNAUTHENTICATED
        ├── PermissionDeniedError     PERMISSION_DENIED
        ├── UnimplementedError        UNIMPLEMENTED
        ├── UnavailableError          UNAVAILABLE
        ├── DeadlineExceededError     DEADLINE_EXCEEDED
        ├── RpcCancelledError         CANCELLED
        └── InternalError             INTERNAL, UNKNOWN, DATA_LOSS, ...

A task's own failure is data (a ``Failure`` message), never one of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "AreError",
    "ClientClosedError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RpcCancelledError",
    "RpcError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "VersionMismatchError",
    "error_from_rpc",
]

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class AreError(Exception):
    """Base of every exception the SDK raises."""


class ClientClosedError(AreError):
    """A call made on a closed client, or in flight when it was closed (see ``Client.close``).

    Not an :class:`RpcError`: the sidecar never answered. Closing cancels the
    calls in flight; without this, the tasks awaiting them saw a bare
    ``CancelledError`` although nobody cancelled them.
    """

    def __init__(self, method: str) -> None:
        self.method = method
        super().__init__(f"{method}: the client is closed")


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field of a request: its path (``tasks[3].depends_on``) and why."""

    field: str
    description: str


class RpcError(AreError):
    """A call the sidecar answered with a non-OK gRPC status.

    Attributes:
        code: The gRPC status code.
        message: The human-readable message the sidecar sent.
        reason: The machine-readable reason (``WORKFLOW_NOT_FOUND``), or "".
        metadata: The ``ErrorInfo`` metadata (for example the workflow id).
        field_violations: The invalid fields named by a ``BadRequest`` detail.
        retry_after: How long to wait before retrying, when the sidecar said.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        retry_after: timedelta | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.retry_after = retry_after
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        for violation in self.field_violations:
            text += f"\n  {violation.field}: {violation.description}"
        return text


class InvalidArgumentError(RpcError):
    """The request was invalid; ``field_violations`` names each bad field."""


class NotFoundError(RpcError):
    """The named workflow, task, namespace or other resource does not exist."""


class AlreadyExistsError(RpcError):
    """The resource to create exists already."""


class FailedPreconditionError(RpcError):
    """The system is not in a state where the call can run (for example a task no longer held)."""


class AbortedError(RpcError):
    """The call lost a concurrency race and changed nothing; re-read and retry."""


class VersionMismatchError(AbortedError):
    """A state patch named an ``expected_version`` that is no longer the latest."""


class ResourceExhaustedError(RpcError):
    """A bound was reached (a full pool queue, a rate limit); retry after ``retry_after``."""


class UnauthenticatedError(RpcError):
    """The sidecar requires a bearer token and the call had none or a wrong one."""


class PermissionDeniedError(RpcError):
    """The caller is known but may not do this."""


class UnimplementedError(RpcError):
    """This sidecar does not implement the called RPC (yet)."""


class UnavailableError(RpcError):
    """The sidecar could not be reached or is shutting down; safe to retry."""


class DeadlineExceededError(RpcError):
    """The call's deadline passed before the sidecar answered."""


class RpcCancelledError(RpcError):
    """The call was cancelled before it finished."""


class InternalError(RpcError):
    """The sidecar failed in a way the caller cannot fix; the message says how."""


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RpcCancelledError,
}

# Reasons precise enough to deserve their own class; the rest map by code.
_BY_REASON: dict[str, type[RpcError]] = {
    "STATE_VERSION_MISMATCH": VersionMismatchError,
}


def error_from_rpc(error: grpc.RpcError) -> RpcError:
    """Translates a grpc (sync or aio) error into the SDK's exception tree.

    Args:
        error: The error raised by a grpc call; it must also be a ``grpc.Call``
            (both ``grpc.RpcError`` from sync stubs and ``AioRpcError`` are).

    Returns:
        The matching :class:`RpcError` subclass, carrying reason, field
        violations and retry hint decoded from the rich status trailer.
    """
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    trailers = error.trailing_metadata() or ()
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after: timedelta | None = None
    for key, value in trailers:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        if status.message:
            message = status.message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                metadata.update(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                hint = error_details_pb2.RetryInfo()
                detail.Unpack(hint)
                retry_after = hint.retry_delay.ToTimedelta()
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, InternalError)
    return cls(
        code,
        message,
        reason=reason,
        metadata=metadata,
        field_violations=violations,
        retry_after=retry_after,
    )


def retry_wait(delay: float, hint: timedelta | None) -> float:
    """Seconds before a call is tried again: full jitter over ``delay``, or the sidecar's hint.

    When the sidecar sent a retry hint (RetryInfo: the worker bound reached,
    a store closing, its subscribers all taken), at least that, with up to
    a fifth more so that the callers it refused do not all come back at once.
    """
    wait = random.uniform(0, delay)  # noqa: S311 - jitter, not secrecy
    if hint is not None and hint.total_seconds() > 0:
        wait = max(wait, hint.total_seconds() * random.uniform(1.0, 1.2))  # noqa: S311
    return wait


@contextlib.contextmanager
def call_errors(method: str, closed: Callable[[], bool]) -> Iterator[None]:
    """Raises the SDK's errors for what a grpc call of ``method`` raises inside the block.

    A call on a closed client, or one that closing it cancelled, raises
    :class:`ClientClosedError`. Closing the channel cancels the calls in
    flight, and grpc raises ``CancelledError`` in the tasks awaiting them,
    which nobody cancelled: a task group or an ``except Exception`` must see
    an error there, not a cancellation. A real cancellation stays one. A grpc
    error without a status (the call could not be sent at all) raises
    :class:`InternalError` with code INTERNAL.
    """
    if closed():
        raise ClientClosedError(method)
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from None
    except grpc.aio.UsageError as error:
        # grpc refuses a call on a channel closed under it: the client's own close, or a misuse.
        if closed():
            raise ClientClosedError(method) from None
        raise InternalError(grpc.StatusCode.INTERNAL, f"{method}: grpc refused the call: {error}") from None
    except grpc.aio.BaseError as error:
        # The call failed before any status (grpc could not send it: an ExecuteBatchError,
        # say); the sidecar never saw it, and no retry will change that.
        raise InternalError(
            grpc.StatusCode.INTERNAL, f"{method}: grpc could not make the call: {type(error).__name__}"
        ) from error
    except asyncio.CancelledError:
        if closed_under_caller(closed):
            raise ClientClosedError(method) from None
        raise


def closed_under_caller(closed: Callable[[], bool]) -> bool:
    """Whether a ``CancelledError`` just caught came from closing the client, not from a cancellation."""
    task = asyncio.current_task()
    return closed() and task is not None and not task.cancelling()
