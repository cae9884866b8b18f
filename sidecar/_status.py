"""Rich gRPC statuses: a code, a message, a machine-readable reason, details.

Every error the sidecar returns goes through :func:`abort`, so that clients
always find a ``google.rpc.ErrorInfo`` (reason and domain ``are.v1``), plus a
``BadRequest`` naming each invalid field or a ``RetryInfo`` when backing off
helps. The engine's own exceptions are mapped to statuses here and only here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, NamedTuple, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from are_core.storage import (
    BatchTooLargeError,
    StorageBusyError,
    StorageClosedError,
    StorageError,
    StorageFullError,
)

__all__ = [
    "DOMAIN",
    "StorageStatus",
    "abort",
    "abort_storage",
    "refusing_handler",
    "shutting_down",
    "status_trailers",
    "storage_status",
]
_log = logging.getLogger("are.sidecar")

DOMAIN = "are.v1"


# A status travels in trailers, and clients refuse metadata over 8 KiB (gRPC's
# default soft limit; 16 KiB hard): the message is sent twice (grpc-message,
# percent-encoded, and in the details), so the parts that may quote a caller's
# input (a 1 MiB id) are bounded, or the caller would get RESOURCE_EXHAUSTED
# from its own transport instead of the status naming the field.
_MAX_MESSAGE_BYTES = 1024
_MAX_METADATA_ENTRIES = 16
_MAX_METADATA_BYTES = 256
_MAX_VIOLATIONS = 8
_MAX_FIELD_BYTES = 256
_MAX_DESCRIPTION_BYTES = 512


def _bounded(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary), marked when cut."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    kept = raw[: max(0, limit - 24)].decode("utf-8", "ignore")
    return f"{kept}...({len(raw)} bytes)"


def status_trailers(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    metadata: Mapping[str, str] | None = None,
    field_violations: Sequence[tuple[str, str]] = (),
    retry_after: timedelta | None = None,
) -> tuple[tuple[str, bytes | str], ...]:
    """Builds the ``grpc-status-details-bin`` trailer for a rich status (bounded in size)."""
    message = _bounded(message, _MAX_MESSAGE_BYTES)
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    entries = list((metadata or {}).items())[:_MAX_METADATA_ENTRIES]
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=reason,
            domain=DOMAIN,
            metadata={_bounded(k, _MAX_FIELD_BYTES): _bounded(v, _MAX_METADATA_BYTES) for k, v in entries},
        )
    )
    details.append(info)
    if field_violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=_bounded(f, _MAX_FIELD_BYTES), description=_bounded(d, _MAX_DESCRIPTION_BYTES)
                    )
                    for f, d in field_violations[:_MAX_VIOLATIONS]
                ]
            )
        )
        details.append(bad)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(retry_after)
        hint = any_pb2.Any()
        hint.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(hint)
    status = status_pb2.Status(code=_code_number(code), message=message, details=details)
    return tuple(rpc_status.to_status(status).trailing_metadata)


async def abort(
    context: grpc.aio.ServicerContext[object, object],
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    metadata: Mapping[str, str] | None = None,
    field_violations: Sequence[tuple[str, str]] = (),
    retry_after: timedelta | None = None,
) -> NoReturn:
    """Ends the call with a rich status; never returns."""
    trailers = status_trailers(
        code,
        message,
        reason=reason,
        metadata=metadata,
        field_violations=field_violations,
        retry_after=retry_after,
    )
    await context.abort(code, _bounded(message, _MAX_MESSAGE_BYTES), trailing_metadata=trailers)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


class StorageStatus(NamedTuple):
    """The status a storage error maps to (see :func:`storage_status`)."""

    code: grpc.StatusCode
    reason: str
    message: str
    metadata: dict[str, str]
    retry_after: timedelta | None


def storage_status(error: StorageError) -> StorageStatus:
    """The one mapping of the storage layer's errors, for every service alike.

    A full write queue is RESOURCE_EXHAUSTED (limit ``storage_pending_writes``,
    retry in 100 ms: a group commit or two drains it); a full map is
    RESOURCE_EXHAUSTED (limit ``storage_size``, retry in a minute); one
    request's writes over a bound are INVALID_ARGUMENT, LIMIT_EXCEEDED; a
    closing store is UNAVAILABLE, SHUTTING_DOWN; anything else failed to
    commit: INTERNAL, STORAGE_FAILURE (logged), nothing acknowledged.
    """
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    message = str(error)
    if isinstance(error, StorageBusyError):
        metadata = {"limit": "storage_pending_writes", "bound": error.limit_name}
        return StorageStatus(exhausted, "RESOURCE_LIMIT", message, metadata, timedelta(milliseconds=100))
    if isinstance(error, StorageFullError):
        metadata = {"limit": "storage_size", "max_map_size_bytes": str(error.max_map_size_bytes)}
        return StorageStatus(exhausted, "RESOURCE_LIMIT", message, metadata, timedelta(seconds=60))
    if isinstance(error, BatchTooLargeError):
        metadata = {"limit": str(error.limit), "limit_name": error.limit_name}
        return StorageStatus(grpc.StatusCode.INVALID_ARGUMENT, "LIMIT_EXCEEDED", message, metadata, None)
    if isinstance(error, StorageClosedError):
        return StorageStatus(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", message, {}, timedelta(seconds=1))
    _log.error("a change could not be committed", exc_info=error)
    return StorageStatus(
        grpc.StatusCode.INTERNAL, "STORAGE_FAILURE", f"the change could not be committed: {error}", {}, None
    )


async def abort_storage(context: grpc.aio.ServicerContext[Any, Any], error: StorageError) -> NoReturn:
    """Ends the call with the status of a storage error (:func:`storage_status`)."""
    status = storage_status(error)
    await abort(
        context,
        status.code,
        status.message,
        reason=status.reason,
        metadata=status.metadata,
        retry_after=status.retry_after,
    )


async def shutting_down(context: grpc.aio.ServicerContext[object, object], then: str = "") -> NoReturn:
    """Ends the call with UNAVAILABLE, reason SHUTTING_DOWN; ``then`` says what to do after the restart."""
    message = "the sidecar is shutting down" + (f"; {then}" if then else "")
    await abort(context, grpc.StatusCode.UNAVAILABLE, message, reason="SHUTTING_DOWN")


def _code_number(code: grpc.StatusCode) -> int:
    return int(code_pb2.Code.Value(code.name))


_HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def refusing_handler(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    request_streaming: bool,
    response_streaming: bool,
    request_deserializer: Callable[[bytes], Any] | None = None,
    response_serializer: Callable[[Any], bytes] | None = None,
) -> grpc.RpcMethodHandler:
    """A method handler of the given shape that ends every call with one rich status."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, code, message, reason=reason)

    make = _HANDLER_KINDS[(request_streaming, response_streaming)]
    return make(refuse, request_deserializer=request_deserializer, response_serializer=response_serializer)
