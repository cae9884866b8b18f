"""Rich gRPC statuses: a code, a message, a machine-readable reason, details.

Every error the sidecar returns goes through :func:`abort`, so that clients
always find a ``google.rpc.ErrorInfo`` (reason and domain ``are.v1``), plus a
``BadRequest`` naming each invalid field or a ``RetryInfo`` when backing off
helps. The engine's own exceptions are mapped to statuses here and only here.

A call that ``abort`` ends leaves nothing behind once every handler is served
through :func:`releasing_handler` (the server wraps them all), however large
its request was.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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
    "releasing_handler",
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
    handler = make(refuse, request_deserializer=request_deserializer, response_serializer=response_serializer)
    return releasing_handler(handler)


_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
# The behaviours releasing_handler made, not to be wrapped twice.
_RELEASING: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()


def releasing_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` such that a call it aborts is freed when it ends, request included; idempotent.

    ``context.abort`` raises grpc's ``AbortError`` and also keeps it on the
    call's state, which the servicer context holds. On its way out the error's
    traceback collects every frame it leaves, and those frames hold the
    context (a cycle) and the request: reference counting never frees them,
    and the cyclic collector runs rarely here (``_server._tune_garbage_collector``).
    Refused 10 MiB requests kept 20 MiB each until it ran, 5 GB in a flood.

    Once the servicer method has ended, its traceback and the error it mapped
    (``__context__``) serve nobody: grpc only checks that the error is the one
    it kept. The wrapper drops both and re-raises; a successful call pays one
    coroutine frame. Other exceptions keep their tracebacks (grpc logs them)
    and form no cycle through the call's state.

    A request stream is read through a generator of the wrapper's own, closed
    when the method ends: grpc's iterator and its generator hold each other,
    so one left mid-stream (a refused chunk) kept its last message until a
    collection. Sync behaviours are left as they are.
    """
    replaced: dict[str, Any] = {}
    for name in _BEHAVIOURS:
        behaviour = getattr(handler, name)
        if behaviour is None or behaviour in _RELEASING:
            continue
        streamed = name.startswith("stream_")
        if inspect.isasyncgenfunction(behaviour):
            replaced[name] = _releasing_stream(behaviour, streamed=streamed)
        elif inspect.iscoroutinefunction(behaviour):
            replaced[name] = _releasing_call(behaviour, streamed=streamed)
    return handler._replace(**replaced) if replaced else handler


def _forget(error: BaseException) -> None:
    """Drops what an aborted call's error links to: the frames it left and the error it replaced."""
    error.__traceback__ = None
    error.__context__ = None


async def _messages(context: Any) -> AsyncIterator[Any]:
    """The request stream, read from ``context`` (as grpc's own iterator does)."""
    while (message := await context.read()) is not grpc.aio.EOF:
        yield message


async def _close(messages: Any) -> None:
    """Ends the request stream's generator, releasing the message it holds."""
    with contextlib.suppress(RuntimeError):  # still being read by a task the method left: that task ends it
        await messages.aclose()


def _releasing_call(behaviour: Callable[[Any, Any], Any], *, streamed: bool) -> Callable[[Any, Any], Any]:
    async def call(request: Any, context: Any) -> Any:
        try:
            return await behaviour(request, context)
        except grpc.aio.AbortError as error:
            del request, context  # this frame stays in the traceback grpc keeps
            _forget(error)
            raise

    async def call_streamed(requests: Any, context: Any) -> Any:
        del requests  # grpc's iterator, not read
        messages = _messages(context)
        try:
            return await behaviour(messages, context)
        except grpc.aio.AbortError as error:
            del context  # this frame stays in the traceback grpc keeps
            _forget(error)
            raise
        finally:
            await _close(messages)
            del messages

    releasing = call_streamed if streamed else call
    _RELEASING.add(releasing)
    return releasing


def _releasing_stream(
    behaviour: Callable[[Any, Any], AsyncIterator[Any]], *, streamed: bool
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
        messages = _messages(context) if streamed else None
        try:
            async for response in behaviour(request if messages is None else messages, context):
                yield response
        except grpc.aio.AbortError as error:
            del request, context  # this frame stays in the traceback grpc keeps
            _forget(error)
            raise
        finally:
            if messages is not None:
                await _close(messages)
            del messages

    _RELEASING.add(stream)
    return stream
