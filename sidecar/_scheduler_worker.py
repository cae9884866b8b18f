"""``are.v1.WorkerService``: the worker stream and the unary poll/complete path.

On the stream, one reader task takes the worker's messages and applies each
batch to the engine synchronously; acknowledgements are queued when the
engine's transaction is durable, and one writer (the handler itself) sends
assignment, ack and cancellation batches in order. Assignments arrive in
batches: the tasks dispatched to the worker in one engine transaction go
in as few messages as fit 256 assignments and 16 MiB each.

The acks a stream owes are bounded (count and bytes): over the bound, the
reader takes no further message until the writer has sent enough of them,
so a worker that does not read its stream is not read either, and the
sidecar's memory stays bounded. When the stream ends, the results it
received that are still being recorded (completions waiting for their
workflow's patch lock) are waited for, a few seconds at most, before the
worker's leases are released: a half-close loses none of them.

A fan-in can make one assignment larger than a message may be: a task with
twenty dependencies of 4 MiB outputs is 80 MiB inline, over the 64 MiB
limit, and gRPC ended the whole stream at every try until the task's
retries were spent. Such an assignment has its largest dependency outputs
moved to blobs owned by the workflow, until it fits (the workers' SDKs
fetch blob references already: common.proto says large outputs may come
that way). The stream's messages keep their order meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, NoReturn, TypeAlias

import grpc
import msgspec
from google.protobuf import duration_pb2

from are_core.scheduler import Assignment, Cancellation, Scheduler, SchedulerError, SpecError, Usage
from are_core.state import BlobStore, StateError
from are_core.storage import StorageError
from are_core.trace import EventDraft, EventUsage, FailureInfo
from are_sdk._proto.are.v1 import event_pb2, worker_service_pb2, worker_service_pb2_grpc
from are_sdk._proto.are.v1 import worker_service_pb2 as pb
from sidecar import _conventions as conventions
from sidecar._router import InvalidFieldError
from sidecar._scheduler_convert import (
    abort_for,
    assignment_to_proto,
    check_id,
    check_labels,
    enum_name,
    error_reason_value,
    failure_from_proto,
    failure_wire_bytes,
    is_json_content_type,
    timestamp,
    usage_from_proto,
)
from sidecar._scheduler_wiring import StateWrite, Wiring, patch_from_proto
from sidecar._status import abort, shutting_down

__all__ = ["WorkerServicer"]

_Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 10.0
MAX_ASSIGNMENTS_PER_BATCH = 256
MAX_ASSIGNMENT_BATCH_BYTES = 16 << 20
"""An assignment batch's size at most, as estimated by :func:`_wire_bytes` (worker_service.proto).

A quarter of the default message limit: the estimate counts characters,
not UTF-8 bytes, of the few strings that may be long (failure messages and
stack traces). A poll's answer may be as large as the message limit allows."""
REGISTER_TIMEOUT_S = 10.0
OUTBOX_ACKS = 20_000
"""Acks a stream may owe and not have written, at most, before its reader waits (two heartbeat batches).

One message read may add a batch's worth over it (10,000 heartbeat refusals)."""
OUTBOX_ACK_BYTES = 8 << 20
"""The same in bytes: the acks' strings, and the completions whose state writes are pending."""
SETTLE_TIMEOUT_S = 10.0
"""How long a stream that ends waits, at most, for its results still being recorded (state writes)."""
_POLL_MARGIN_MAX_S = 5.0  # the most a long poll answers before its caller's deadline
_DRAIN_CHECK_S = 0.02  # how often a draining sidecar looks for streams it may end
_REPORTABLE = frozenset({"LLM_CALL", "TOOL_CALL", "WORKER_CUSTOM"})
_COMPLETION = worker_service_pb2.ACK_SUBJECT_COMPLETION
_FAILURE = worker_service_pb2.ACK_SUBJECT_FAILURE
_HEARTBEAT = worker_service_pb2.ACK_SUBJECT_HEARTBEAT
_EVENT = worker_service_pb2.ACK_SUBJECT_EVENT
# The most items of each batch kind (worker_service.proto); a batch over its bound ends the stream.
_BATCH_BOUNDS = {
    "complete": ("completions", 1000),
    "fail": ("failures", 1000),
    "heartbeat": ("heartbeats", 10_000),
    "report_events": ("events", 1000),
}
_DRAIN_REASON_BYTES = 1024
_ACK_ID_CHARS = 128  # an ack echoes at most this much of an id: longer ones are invalid, and refused
_ACK_MESSAGE_CHARS = 1024
# The bounds of a ReportedEvent (event.proto).
_EVENT_NAME_CHARS = 256
_EVENT_ATTRIBUTES = 64
_ATTRIBUTE_KEY_CHARS = 128
_ATTRIBUTE_STRING_BYTES = 16 * 1024


def _check_registration(reg: pb.WorkerRegistration, prefix: str = "register") -> None:
    check_id(reg.worker_name, f"{prefix}.worker_name", "a worker name")
    _check_capabilities(reg.capabilities, f"{prefix}.capabilities")
    if not 1 <= reg.max_concurrency <= 10_000:
        raise SpecError("INVALID_ARGUMENT", f"{prefix}.max_concurrency", "must be between 1 and 10,000")
    if len(reg.identity) > 256:
        raise SpecError("LIMIT_EXCEEDED", f"{prefix}.identity", "at most 256 characters", limit=256)
    if len(reg.sdk) > 128:
        raise SpecError("LIMIT_EXCEEDED", f"{prefix}.sdk", "at most 128 characters", limit=128)
    check_labels(reg.labels, f"{prefix}.labels")


def _check_poll(request: pb.PollTaskRequest) -> None:
    check_id(request.worker_name, "worker_name", "a worker name")
    _check_capabilities(request.capabilities, "capabilities")
    if not 0 <= request.max_tasks <= 100:
        raise SpecError("INVALID_ARGUMENT", "max_tasks", "must be between 0 and 100")
    if len(request.identity) > 256:
        raise SpecError("LIMIT_EXCEEDED", "identity", "at most 256 characters", limit=256)


def _check_capabilities(capabilities: Any, field: str) -> None:
    if not 1 <= len(capabilities) <= 256:
        raise SpecError("INVALID_ARGUMENT", field, "declare 1 to 256 capabilities")
    for i, capability in enumerate(capabilities):
        check_id(capability, f"{field}[{i}]", "a capability")


def _check_attempt_ids(item: Any, field: str) -> None:
    """Refuses an item's ids outside the id alphabet (see common.proto), or an attempt below 1."""
    check_id(item.workflow_id, f"{field}.workflow_id", "a workflow id")
    check_id(item.task_id, f"{field}.task_id", "a task id")
    if item.attempt < 1:
        raise SpecError("INVALID_ARGUMENT", f"{field}.attempt", f"attempts count from 1, got {item.attempt}")


_INLINE_OUTPUT_BYTES = 4 * 1024 * 1024
"""Inline output of a completion at most (common.proto's Payload bound); larger ones go as blobs."""
_HEARTBEAT_DETAILS_BYTES = 1024 * 1024
"""Heartbeat details at most (worker_service.proto)."""


def _check_content_type(payload: Any, field: str) -> None:
    """Refuses a Payload's content_type over 128 characters (common.proto), naming ``<field>.content_type``.

    A worker's Payload may come inline or as a blob reference; either way its content_type is bounded.
    """
    problem = conventions.content_type_problem(payload.content_type)
    if problem is not None:
        raise SpecError(
            "LIMIT_EXCEEDED", f"{field}.content_type", problem, limit=conventions.CONTENT_TYPE_CHARS
        )


def _check_inline_output(c: pb.TaskCompletion, field: str) -> None:
    """Refuses an inline output over 4 MiB or a content type over 128 characters (stream and unary alike).

    The fields are named ``<field>.output.data`` and ``<field>.output.content_type``.
    """
    if len(c.output.data) > _INLINE_OUTPUT_BYTES:
        raise SpecError(
            "LIMIT_EXCEEDED", f"{field}.output.data", "at most 4 MiB inline", limit=_INLINE_OUTPUT_BYTES
        )
    _check_content_type(c.output, f"{field}.output")


def _heartbeat_details(h: pb.TaskHeartbeat, field: str) -> bytes | None:
    """A heartbeat's details (None when it has none), checked against worker_service.proto's bounds.

    Details over 1 MiB are refused naming ``<field>.details.data``, a
    content type over 128 characters naming ``<field>.details.content_type``.
    Details are inline only (worker_service.proto): a blob reference is
    refused naming ``<field>.details.blob``, never dropped in silence (the
    next attempt would resume from nothing while the worker believed its
    progress kept).
    """
    if not h.HasField("details"):
        return None
    if h.details.WhichOneof("content") == "blob":
        raise SpecError(
            "INVALID_ARGUMENT",
            f"{field}.details.blob",
            "heartbeat details are inline only (at most 1 MiB); keep larger progress in the "
            "workflow's state document",
        )
    if len(h.details.data) > _HEARTBEAT_DETAILS_BYTES:
        raise SpecError(
            "LIMIT_EXCEEDED", f"{field}.details.data", "at most 1 MiB", limit=_HEARTBEAT_DETAILS_BYTES
        )
    _check_content_type(h.details, f"{field}.details")
    return h.details.data


def _retry_after_s(failure: pb.TaskFailure, field: str) -> float:
    """A failure's least retry delay in seconds (0 when unset), read as at most a day.

    A negative or malformed one is refused naming ``field``, like any bad
    Duration; one over a day is a provider's hint, and is read as a day.
    """
    if not failure.HasField("retry_after"):
        return 0.0
    delay = failure.retry_after
    problem = conventions.duration_problem(delay)
    if problem is None and (delay.seconds < 0 or delay.nanos < 0):
        problem = f"must not be negative, got {delay.seconds}s {delay.nanos}ns"
    if problem is not None:
        raise SpecError("INVALID_ARGUMENT", field, problem)
    return min(delay.ToNanoseconds() / 1e9, 86_400.0)


def _attribute_path(field: str, key: str) -> str:
    """The path of one attribute, as labels are named: ``events[3].attributes['k']``.

    A key far over its bound is cut to 140 characters, so that the path fits an ack's message.
    """
    return f"{field}[{key[:140]!r}]"


def _attributes(attributes: Any, field: str) -> dict[str, str | int | float | bool]:
    """A reported event's attributes, checked against event.proto's bounds; ``field`` names the map.

    At most 64 entries; keys 1 to 128 characters; exactly one value set;
    strings at most 16 KiB of UTF-8; doubles finite. The first entry out of
    bounds is refused naming it (``events[3].attributes['k'].double_value``).
    """
    if len(attributes) > _EVENT_ATTRIBUTES:
        raise SpecError(
            "LIMIT_EXCEEDED",
            field,
            f"at most {_EVENT_ATTRIBUTES} attributes, got {len(attributes)}",
            limit=_EVENT_ATTRIBUTES,
        )
    out: dict[str, str | int | float | bool] = {}
    for key, value in attributes.items():
        if not 1 <= len(key) <= _ATTRIBUTE_KEY_CHARS:
            if key:
                raise SpecError(
                    "LIMIT_EXCEEDED",
                    _attribute_path(field, key),
                    f"attribute keys are at most {_ATTRIBUTE_KEY_CHARS} characters, got {len(key)}",
                    limit=_ATTRIBUTE_KEY_CHARS,
                )
            raise SpecError(
                "INVALID_ARGUMENT", _attribute_path(field, key), "attribute keys must not be empty"
            )
        kind = value.WhichOneof("value")
        if kind is None:
            raise SpecError(
                "INVALID_ARGUMENT",
                _attribute_path(field, key),
                "set exactly one of string_value, int_value, double_value or bool_value",
            )
        item = getattr(value, kind)
        # (a string of at most a quarter as many characters fits whatever they are: no encoding)
        if (
            kind == "string_value"
            and len(item) > _ATTRIBUTE_STRING_BYTES // 4
            and len(item.encode()) > _ATTRIBUTE_STRING_BYTES
        ):
            raise SpecError(
                "LIMIT_EXCEEDED",
                f"{_attribute_path(field, key)}.string_value",
                f"at most 16 KiB of UTF-8, got {len(item.encode()):,} bytes",
                limit=_ATTRIBUTE_STRING_BYTES,
            )
        if kind == "double_value" and not math.isfinite(item):
            raise SpecError(
                "INVALID_ARGUMENT",
                f"{_attribute_path(field, key)}.double_value",
                f"must be finite, got {item}",
            )
        out[key] = item
    return out


def _reported_times(event: event_pb2.ReportedEvent, field: str) -> tuple[int | None, int | None]:
    """A reported event's duration and event time in nanoseconds (None when unset), checked, never clamped.

    The event time is kept as Unix nanoseconds in 64 bits (1970 to 2262); the
    call it reports ended then, so it cannot have lasted longer than since 1970.
    """
    duration_ns: int | None = None
    if event.HasField("duration"):
        duration_ns = event.duration.ToNanoseconds()
        if conventions.duration_problem(event.duration) or not 0 <= duration_ns <= conventions.INT64_MAX:
            raise SpecError("INVALID_ARGUMENT", f"{field}.duration", "must be 0 to about 292 years")
    event_time_ns: int | None = None
    if event.HasField("event_time"):
        problem = conventions.timestamp_problem(event.event_time)
        if problem is not None:
            raise SpecError("INVALID_ARGUMENT", f"{field}.event_time", problem)
        # Not clamped (nothing is cut to fit): times are kept as Unix nanoseconds in 64 bits.
        event_time_ns = event.event_time.seconds * 1_000_000_000 + event.event_time.nanos
        if not 0 <= event_time_ns <= conventions.INT64_MAX:
            raise SpecError(
                "INVALID_ARGUMENT",
                f"{field}.event_time",
                "must be from 1970-01-01T00:00:00Z to 2262-04-11T23:47:16.854775807Z (Unix nanoseconds "
                f"in 64 bits), got {event.event_time.ToJsonString()}",
            )
    if duration_ns is not None and duration_ns > (
        event_time_ns if event_time_ns is not None else time.time_ns()
    ):
        # The call would have started before 1970: its event_time is when it ended.
        raise SpecError(
            "INVALID_ARGUMENT",
            f"{field}.duration",
            "must not be longer than the time from 1970-01-01T00:00:00Z to the event's event_time "
            "(or to now, when event_time is unset): the call ends at its event_time",
        )
    return duration_ns, event_time_ns


def reported_event_draft(event: event_pb2.ReportedEvent, worker_id: str, field: str) -> EventDraft:
    """Validates a worker-reported event against event.proto's bounds and makes it an EventDraft.

    Raises SpecError naming the first field out of bounds (``<field>.name``,
    ``<field>.span_id``, ``<field>.attributes['k']``); nothing is cut to fit, but
    its failure, whose bounds are fitted to as a task's failure is (see ``failure_from_proto``).
    """
    event_type = enum_name(event_pb2.EventType, event.event_type, f"{field}.event_type", "EVENT_TYPE_")
    if event_type not in _REPORTABLE:
        raise SpecError(
            "INVALID_ARGUMENT", f"{field}.event_type", "workers report LLM_CALL, TOOL_CALL or WORKER_CUSTOM"
        )
    if len(event.name) > _EVENT_NAME_CHARS:
        raise SpecError(
            "LIMIT_EXCEEDED",
            f"{field}.name",
            f"at most {_EVENT_NAME_CHARS} characters, got {len(event.name):,}",
            limit=_EVENT_NAME_CHARS,
        )
    if event.span_id:
        problem = conventions.span_id_problem(event.span_id)
        if problem is not None:
            raise SpecError("INVALID_ARGUMENT", f"{field}.span_id", problem)
    usage = usage_from_proto(event.usage, f"{field}.usage") if event.HasField("usage") else None
    failure = failure_from_proto(event.failure, f"{field}.failure") if event.HasField("failure") else None
    duration_ns, event_time_ns = _reported_times(event, field)
    attributes = _attributes(event.attributes, f"{field}.attributes") if event.attributes else {}
    _gen_ai_defaults(event_type, event.name, usage, attributes)
    return EventDraft(
        event_type=event_type,
        workflow_id=event.workflow_id,
        task_id=event.task_id,
        attempt=event.attempt,
        worker_id=worker_id,
        name=event.name,
        usage=EventUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_micro_usd=usage.cost_micro_usd,
            llm_calls=usage.llm_calls,
            tool_calls=usage.tool_calls,
        )
        if usage
        else None,
        failure=FailureInfo(
            message=failure.message,
            type=failure.type,
            non_retryable=failure.non_retryable,
            kind=failure.kind,
            timeout_type=failure.timeout_type,
        )
        if failure
        else None,
        duration_ns=duration_ns,
        attributes=attributes,
        span_id=event.span_id,
        event_time_unix_ns=event_time_ns,
    )


def _gen_ai_defaults(
    event_type: str, name: str, usage: Usage | None, attributes: dict[str, str | int | float | bool]
) -> None:
    """Fills the GenAI attributes event.proto lists for a call that the event's own fields give.

    An LLM_CALL carries "gen_ai.operation.name" ("chat" unless the worker
    said otherwise), "gen_ai.request.model" (its name) and the usage's
    tokens; a TOOL_CALL "gen_ai.tool.name". What the worker set is kept, so
    a reader of the event (or of its span) finds the conventions' keys
    whichever SDK reported it; none is added past the 64 attributes an event holds.
    """
    defaults: list[tuple[str, str | int]] = []
    if event_type == "LLM_CALL":
        defaults.append(("gen_ai.operation.name", "chat"))
        if name:
            defaults.append(("gen_ai.request.model", name))
        if usage is not None:
            defaults += [
                ("gen_ai.usage.input_tokens", usage.input_tokens),
                ("gen_ai.usage.output_tokens", usage.output_tokens),
            ]
    elif event_type == "TOOL_CALL" and name:
        defaults.append(("gen_ai.tool.name", name))
    for key, value in defaults:
        if key not in attributes and len(attributes) < _EVENT_ATTRIBUTES:
            attributes[key] = value


def _ack(
    item: Any,
    subject: pb.AckSubject,
    *,
    accepted: bool,
    reason: str = "",
    message: str = "",
    will_retry: bool = False,
) -> pb.TaskAck:
    """One item's ack; it echoes at most 128 characters of each id, so acks stay small whatever was sent."""
    return pb.TaskAck(
        workflow_id=item.workflow_id[:_ACK_ID_CHARS],
        task_id=item.task_id[:_ACK_ID_CHARS],
        attempt=item.attempt,
        subject=subject,
        accepted=accepted,
        # Both are ErrorReason numbers, typed int: protoc's stubs have EnumTypeWrapper.Value() return int.
        reason=error_reason_value(reason) if reason else 0,  # type: ignore[arg-type]
        message=message[:_ACK_MESSAGE_CHARS],
        will_retry=will_retry,
    )


def _refusal(item: Any, subject: pb.AckSubject, error: SchedulerError) -> pb.TaskAck:
    return _ack(item, subject, accepted=False, reason=error.reason, message=str(error))


def _message_problem(message: pb.ConnectRequest, kind: str | None) -> SpecError | None:
    """Why a message after the registration ends the stream (worker_service.proto, Connect), or None.

    An unset message, a batch over its count bound or a drain reason over
    1 KiB is refused as a whole, naming the field: item acks cannot answer it
    (a batch of millions of items would need millions of acks).
    """
    if kind is None:
        return SpecError("INVALID_ARGUMENT", "message", "set exactly one of the ConnectRequest messages")
    if kind in _BATCH_BOUNDS:
        name, bound = _BATCH_BOUNDS[kind]
        count = len(getattr(getattr(message, kind), name))
        if count > bound:
            return SpecError(
                "LIMIT_EXCEEDED", f"{kind}.{name}", f"at most {bound:,} per batch, got {count:,}", limit=bound
            )
    elif kind == "drain" and len(message.drain.reason.encode()) > _DRAIN_REASON_BYTES:
        return SpecError("LIMIT_EXCEEDED", "drain.reason", "at most 1 KiB", limit=_DRAIN_REASON_BYTES)
    return None


def _wire_bytes(a: Assignment) -> int:
    """An assignment's size on the wire, estimated from what it carries (ids and such: 1 KiB).

    Cheap (a proto's ByteSize() costs 16 us for a small assignment and
    serialises a large one): it runs for every assignment dispatched.
    """
    size = 1024 + len(a.input) + failure_wire_bytes(a.last_failure)
    if a.last_heartbeat_details:
        size += len(a.last_heartbeat_details)
    for dep in a.dependencies:
        size += 64 + len(dep.task_id) + (len(dep.output) if dep.output else 0)
        if dep.failure is not None:
            size += failure_wire_bytes(dep.failure)
    if a.labels:
        size += sum(len(k) + len(v) + 8 for k, v in a.labels.items())
    return size


def _in_batches(
    assignments: list[Assignment], limit: int, sizes: list[int] | None = None
) -> list[list[Assignment]]:
    """The assignments in order, cut at 256 or at ``limit`` estimated bytes (one alone may pass it).

    ``sizes``: their :func:`_wire_bytes`, when the caller has them already.
    """
    batches: list[list[Assignment]] = []
    batch: list[Assignment] = []
    size = 0
    for a, wire in zip(assignments, sizes or map(_wire_bytes, assignments), strict=True):
        if batch and (len(batch) == MAX_ASSIGNMENTS_PER_BATCH or size + wire > limit):
            batches.append(batch)
            batch, size = [], 0
        batch.append(a)
        size += wire
    if batch:
        batches.append(batch)
    return batches


async def _fitted(a: Assignment, limit: int, blobs: BlobStore) -> Assignment:
    """``a`` with its largest inline dependency outputs moved to blobs until it fits ``limit``.

    Each blob is owned by the task's workflow (kept while it is, released
    with it), and stored once however often it is sent (content-addressed).
    An output that cannot be stored (the disk full) stays inline: the
    message may then be refused, and the stream's next try sends it again.
    """
    size = _wire_bytes(a)
    if size <= limit:
        return a
    deps = list(a.dependencies)
    for i in sorted(range(len(deps)), key=lambda i: -len(deps[i].output or b"")):
        dep = deps[i]
        if size <= limit or not dep.output:
            break
        try:
            info, _ = await blobs.put(dep.output, content_type=dep.content_type, workflow_id=a.workflow_id)
        except (StateError, StorageError) as error:
            _log.warning(f"could not store the output of {a.workflow_id}/{dep.task_id} as a blob: {error}")
            break
        deps[i] = msgspec.structs.replace(dep, output=b"", blob_sha256=info.sha256, blob_size=info.size_bytes)
        size -= len(dep.output)
    return msgspec.structs.replace(a, dependencies=tuple(deps))


def _assignments(assignments: list[Assignment], wiring: Wiring) -> list[pb.TaskAssignment]:
    """Assignments as sent, with the state version at dispatch (one read per workflow per batch)."""
    out = [assignment_to_proto(a) for a in assignments]
    if wiring.state is not None:
        versions: dict[str, int] = {}
        for message in out:
            version = versions.get(message.workflow_id)
            if version is None:
                version = versions[message.workflow_id] = wiring.state_version(message.workflow_id)
            message.state_version = version
    return out


async def _end_for(context: _Context, violation: str | SpecError) -> NoReturn:
    """Ends a worker stream: INVALID_ARGUMENT naming the field of a bad message, else a protocol violation."""
    if isinstance(violation, SpecError):
        await abort_for(context, violation)
    await abort(context, grpc.StatusCode.FAILED_PRECONDITION, violation, reason="STREAM_PROTOCOL_VIOLATION")


class _Acks:
    """An ack batch in the outbox, with what it owes of the stream's ack bounds (paid once written)."""

    __slots__ = ("items", "message", "size")

    def __init__(self, message: pb.ConnectResponse, items: int, size: int) -> None:
        self.message = message
        self.items = items
        self.size = size


def _acks_bytes(acks: list[pb.TaskAck]) -> int:
    """The acks' size on the wire, estimated from their strings (the rest is a few bytes each)."""
    return sum(len(a.workflow_id) + len(a.task_id) + len(a.message) + 16 for a in acks)


_OutboxEntry: TypeAlias = "pb.ConnectResponse | _Acks | asyncio.Task[list[pb.ConnectResponse]] | None"


class _Stream:
    """One connected worker stream: its outbox and its engine handle.

    The acks the stream owes and has not written yet (queued, waiting for
    their commit, or for a completion's state write) are bounded in count
    and bytes: the reader takes no further message from the worker until
    they are back under :data:`OUTBOX_ACKS` and :data:`OUTBOX_ACK_BYTES`
    (a worker that does not read its stream is not read either: gRPC's flow
    control then holds its writes). Assignments, cancellations and the drain
    notice are never held back nor dropped: the engine delivers them
    synchronously, and they are bounded by the worker's max_concurrency.
    """

    def __init__(self, engine: Scheduler, wiring: Wiring) -> None:
        self.engine = engine
        self.wiring = wiring
        # What the writer sends, in order; a task stands for assignment batches
        # whose dependency outputs are being stored as blobs (see _fitted).
        self.outbox: asyncio.Queue[_OutboxEntry] = asyncio.Queue()
        self.handle: Any = None  # the engine's WorkerHandle, once registered
        self.pending_acks = 0  # batches of acks waiting for their commit
        self.owed_acks = 0  # acks owed and not written (see the class docstring)
        self.owed_bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        # Commits and completion jobs whose acks are owed: awaited before the worker is disconnected.
        self.owing: set[asyncio.Future[Any]] = set()

    def idle(self) -> bool:
        """Holds no attempt and owes no acknowledgement: a draining sidecar may end it."""
        return self.pending_acks == 0 and (self.handle is None or not self.handle.held)

    def end(self) -> None:
        """Ends the stream (the writer stops at the first None)."""
        self.outbox.put_nowait(None)

    def owe(self, items: int, size: int) -> None:
        """Counts acks (and what they wait on) against the bounds until :meth:`paid`."""
        self.owed_acks += items
        self.owed_bytes += size
        if self.owed_acks >= OUTBOX_ACKS or self.owed_bytes >= OUTBOX_ACK_BYTES:
            self._room.clear()

    def paid(self, items: int, size: int) -> None:
        """Acks written (or never to be): the reader may go on once under the bounds."""
        self.owed_acks -= items
        self.owed_bytes -= size
        if self.owed_acks < OUTBOX_ACKS and self.owed_bytes < OUTBOX_ACK_BYTES:
            self._room.set()

    async def room(self) -> None:
        """Returns once the acks owed are under their bounds (at once, mostly)."""
        await self._room.wait()

    async def settle(self, timeout_s: float) -> None:
        """Waits, ``timeout_s`` at most, for the results received to be recorded and their acks queued.

        The worker gets no new assignment meanwhile (it is drained): it is leaving.
        """
        if not self.owing:
            return
        if self.handle is not None and self.handle.connected:
            self.engine.drain_worker(self.handle)
        await asyncio.wait(list(self.owing), timeout=timeout_s)

    def _track(self, future: asyncio.Future[Any]) -> None:
        self.owing.add(future)
        future.add_done_callback(self.owing.discard)

    async def send(self, context: _Context) -> None:
        """Writes what the outbox holds, in order, until its end."""
        while (entry := await self.outbox.get()) is not None:
            if isinstance(entry, _Acks):
                await context.write(entry.message)
                self.paid(entry.items, entry.size)
                continue
            for batch in await entry if isinstance(entry, asyncio.Task) else (entry,):
                await context.write(batch)

    def assign(self, assignments: list[Assignment]) -> None:
        sizes = [_wire_bytes(a) for a in assignments]
        blobs = self.wiring.blobs
        if blobs is not None and max(sizes, default=0) > MAX_ASSIGNMENT_BATCH_BYTES:
            self.outbox.put_nowait(asyncio.ensure_future(self._fitted_batches(assignments, blobs)))
            return
        for chunk in _in_batches(assignments, MAX_ASSIGNMENT_BATCH_BYTES, sizes):
            batch = pb.AssignmentBatch(assignments=_assignments(chunk, self.wiring))
            self.outbox.put_nowait(pb.ConnectResponse(assignments=batch))

    async def _fitted_batches(
        self, assignments: list[Assignment], blobs: BlobStore
    ) -> list[pb.ConnectResponse]:
        fitted = [await _fitted(a, MAX_ASSIGNMENT_BATCH_BYTES, blobs) for a in assignments]
        return [
            pb.ConnectResponse(assignments=pb.AssignmentBatch(assignments=_assignments(chunk, self.wiring)))
            for chunk in _in_batches(fitted, MAX_ASSIGNMENT_BATCH_BYTES)
        ]

    def cancel(self, cancellations: list[Cancellation]) -> None:
        batch = pb.TaskCancellationBatch(
            cancellations=[
                pb.TaskCancellation(
                    workflow_id=c.workflow_id,
                    task_id=c.task_id,
                    attempt=c.attempt,
                    reason="TASK_CANCEL_REASON_" + c.reason,
                    message=c.message,
                )
                for c in cancellations
            ]
        )
        self.outbox.put_nowait(pb.ConnectResponse(cancellations=batch))

    def send_acks(self, acks: list[pb.TaskAck], owed: tuple[int, int] | None = None) -> None:
        """Queues ``acks``; ``owed``: what they were counted as already (see :meth:`owe`), if they were."""
        if not acks:
            if owed is not None:
                self.paid(*owed)
            return
        if owed is None:
            owed = (len(acks), _acks_bytes(acks))
            self.owe(*owed)
        self.outbox.put_nowait(_Acks(pb.ConnectResponse(acks=pb.TaskAckBatch(acks=acks)), *owed))

    def acks_when_durable(self, durable: asyncio.Future[None] | None, acks: list[pb.TaskAck]) -> None:
        """Queues ``acks`` once ``durable`` resolves (at once if None)."""
        if durable is None or durable.done():
            self.send_acks(acks)
            return
        self.pending_acks += 1
        owed = (len(acks), _acks_bytes(acks))
        self.owe(*owed)

        def done(future: asyncio.Future[None]) -> None:
            self.pending_acks -= 1
            if future.cancelled() or future.exception() is not None:
                self.paid(*owed)
                self.outbox.put_nowait(None)  # the commit failed: end the stream, the worker retries
            else:
                self.send_acks(acks, owed)

        durable.add_done_callback(done)
        self._track(durable)

    def job(self, work: Coroutine[Any, Any, pb.TaskAck | None], size: int) -> asyncio.Task[None]:
        """Runs ``work`` off the reader and queues the ack it returns; None (a failed commit) ends the stream.

        The ack is owed from now, counted as ``size`` bytes (what the work holds meanwhile).
        """
        owed = (1, size)
        self.pending_acks += 1
        self.owe(*owed)

        async def run() -> None:
            ack: pb.TaskAck | None = None
            try:
                ack = await work
            finally:
                self.pending_acks -= 1
                if ack is None:
                    self.paid(*owed)
            if ack is None:
                self.outbox.put_nowait(None)  # the commit failed: end the stream, the worker retries
            else:
                self.send_acks([ack], owed)

        task = asyncio.ensure_future(run())
        self._track(task)
        return task


# The generated base class is Any to mypy: are_sdk._proto is skipped (see the mypy overrides).
class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):  # type: ignore[misc]
    """Translates WorkerService calls to the scheduler engine."""

    def __init__(self, engine: Scheduler, wiring: Wiring) -> None:
        self._engine = engine
        self._wiring = wiring
        self._with_state = wiring.state is not None
        self._streams: set[_Stream] = set()
        self._writes: set[asyncio.Task[None]] = set()
        self._draining = False
        self._drainer: asyncio.Future[None] | None = None

    def _is_draining(self) -> bool:
        return self._draining

    def drain(self, grace_s: float = 0.0) -> None:
        """Tells every stream the sidecar is stopping; results are accepted for ``grace_s``.

        No stream gets new work. A stream that holds no attempt and owes no
        acknowledgement ends at once; the others end as soon as they are so,
        or when the grace runs out. Attempts still held then keep their
        leases: the restart re-dispatches them.
        """
        self._draining = True
        grace = duration_pb2.Duration()
        grace.FromNanoseconds(int(max(grace_s, 0.0) * 1e9))
        notice = pb.DrainNotice(grace_period=grace, reason="the sidecar is shutting down")
        for stream in list(self._streams):
            stream.outbox.put_nowait(pb.ConnectResponse(drain=notice))
            if stream.handle is not None:
                self._engine.drain_worker(stream.handle)
        self._drainer = asyncio.ensure_future(self._end_streams(grace_s))

    async def _end_streams(self, grace_s: float) -> None:
        """Ends each draining stream once it is idle, and every one at the end of the grace."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._streams and loop.time() < deadline:
            for stream in list(self._streams):
                if stream.idle():
                    stream.end()
            await asyncio.sleep(_DRAIN_CHECK_S)
        for stream in list(self._streams):
            stream.end()

    async def _answer_registration(
        self, context: _Context, worker_id: str, reg: pb.WorkerRegistration
    ) -> None:
        """Keeps the card the worker declared (checked first) and answers its registration."""
        try:
            self._wiring.declare_card(worker_id, reg)
        except InvalidFieldError as error:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                error.message,
                reason=error.reason,
                metadata=error.metadata,
                field_violations=[(error.field, error.message)],
            )
        try:
            await context.write(
                pb.ConnectResponse(
                    registered=pb.WorkerRegistered(
                        worker_id=worker_id,
                        heartbeat_interval=duration_pb2.Duration(seconds=int(HEARTBEAT_INTERVAL_S)),
                        max_assignments_per_batch=MAX_ASSIGNMENTS_PER_BATCH,
                        server_time=timestamp(time.time_ns()),
                    )
                )
            )
        except BaseException:
            self._wiring.forget_card(worker_id)  # it never connected
            raise

    async def Connect(  # noqa: N802 - the RPC's name
        self,
        request_iterator: Any,  # noqa: ARG002 - the stream is read with context.read()
        context: _Context,
    ) -> None:
        """The worker stream: register, then assignments, acks and cancellations."""
        if self._is_draining():
            await shutting_down(context)
        try:
            first = await asyncio.wait_for(context.read(), REGISTER_TIMEOUT_S)
        except TimeoutError:
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no register message within {REGISTER_TIMEOUT_S:g} seconds",
                reason="STREAM_PROTOCOL_VIOLATION",
            )
        if first is grpc.aio.EOF:
            return
        if first.WhichOneof("message") != "register":
            await abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "the first message of a worker stream must be register",
                reason="STREAM_PROTOCOL_VIOLATION",
            )
        try:
            _check_registration(first.register)
        except SpecError as error:
            await abort_for(context, error)
        reg = first.register
        if len(self._streams) >= 10_000:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "at most 10,000 connected workers",
                reason="RESOURCE_LIMIT",
                retry_after=timedelta(seconds=5),
            )
        stream = _Stream(self._engine, self._wiring)
        worker_id = f"{reg.worker_name}-{secrets.token_hex(6)}"
        await self._answer_registration(context, worker_id, reg)
        handle = self._engine.connect_worker(
            reg.worker_name,
            list(reg.capabilities),
            reg.max_concurrency,
            stream.assign,
            stream.cancel,
            worker_id=worker_id,
            announce=True,
        )
        stream.handle = handle
        self._streams.add(stream)
        reader = asyncio.ensure_future(self._read(context, stream, handle))
        violation: str | SpecError | None = None
        try:
            await stream.send(context)
            if reader.done() and not reader.cancelled():
                violation = reader.result()
        finally:
            reader.cancel()
            self._streams.discard(stream)
            try:
                # Results received but still being recorded (state writes waiting for the
                # patch lock) are recorded first: else their attempts would be lost with the worker.
                await stream.settle(SETTLE_TIMEOUT_S)
            finally:
                # On a sidecar drain the leases are kept: the restart re-dispatches them.
                self._engine.disconnect_worker(handle, release_leases=not self._draining)
                # The handle's callbacks hold the stream: without this edge, no cycle is left
                # for the (rarely running) collector when the stream ends.
                stream.handle = None
        if violation is not None:
            await _end_for(context, violation)
        if self._is_draining():
            await shutting_down(context)

    async def _read(  # noqa: C901 - one branch per message kind
        self, context: _Context, stream: _Stream, handle: Any
    ) -> str | SpecError | None:
        """Applies the worker's messages; returns why the stream must end, or None at its end."""
        try:
            while True:
                await stream.room()  # backpressure: no more work read while the acks owed are over bounds
                try:
                    message = await asyncio.wait_for(context.read(), 3 * HEARTBEAT_INTERVAL_S)
                except TimeoutError:
                    return f"the worker was silent for {3 * HEARTBEAT_INTERVAL_S:g} seconds"
                if message is grpc.aio.EOF:
                    # A half-close (worker_service.proto, WorkerDrain): the results sent
                    # before it are recorded, and their acks written before the stream ends.
                    await stream.settle(SETTLE_TIMEOUT_S)
                    return None
                kind = message.WhichOneof("message")
                problem = _message_problem(message, kind)
                if problem is not None:
                    return problem
                if kind == "complete":
                    self._complete(stream, message.complete.completions)
                elif kind == "fail":
                    self._fail(stream, message.fail.failures)
                elif kind == "heartbeat":
                    self._heartbeat(stream, message.heartbeat.heartbeats)
                elif kind == "report_events":
                    self._events(stream, message.report_events.events, handle.worker_id)
                elif kind == "drain":
                    self._engine.drain_worker(handle)
                elif kind == "register":
                    return "a worker stream registers only once"
        except (asyncio.CancelledError, grpc.RpcError):
            return None
        finally:
            stream.outbox.put_nowait(None)

    def _complete(self, stream: _Stream, completions: Any) -> None:
        acks: list[pb.TaskAck] = []
        durable: asyncio.Future[None] | None = None
        for i, c in enumerate(completions):
            try:
                _check_attempt_ids(c, f"complete.completions[{i}]")
            except SpecError as error:
                acks.append(_refusal(c, _COMPLETION, error))
                continue
            if self._with_state and (
                c.HasField("state_patch") or self._engine.output_pointer(c.workflow_id, c.task_id)
            ):
                self._complete_with_state(stream, c, f"complete.completions[{i}]")
                continue
            try:
                _check_inline_output(c, f"complete.completions[{i}]")
                usage = usage_from_proto(c.usage, f"complete.completions[{i}].usage")
                digest, size, content_type = self._output(c, f"complete.completions[{i}].output")
                durable = self._engine.complete(
                    c.workflow_id,
                    c.task_id,
                    c.attempt,
                    output=c.output.data,
                    content_type=content_type,
                    usage=usage,
                    blob_sha256=digest,
                    blob_size=size,
                )
                acks.append(_ack(c, _COMPLETION, accepted=True))
            except SchedulerError as error:
                acks.append(_refusal(c, _COMPLETION, error))
        stream.acks_when_durable(durable, acks)

    def _output(self, c: pb.TaskCompletion, field: str) -> tuple[str, int, str]:
        """(blob digest, blob size, media type) of a completion's output; ("", 0, its type) when inline.

        Raises SchedulerError naming ``field`` for a bad or missing blob.
        """
        if c.output.WhichOneof("content") == "blob":
            return self._wiring.output_blob(c.output, field)
        return "", 0, c.output.content_type

    def _state_write(self, c: pb.TaskCompletion, field: str) -> StateWrite:
        merge, operations = (
            patch_from_proto(c.state_patch, f"{field}.state_patch")
            if c.HasField("state_patch")
            else (None, None)
        )
        return StateWrite(
            merge_patch=merge,
            operations=operations,
            pointer=self._engine.output_pointer(c.workflow_id, c.task_id),
        )

    async def _completed_with_state(self, c: pb.TaskCompletion, field: str) -> int:
        """Completes with the attempt's state write in the same commit; returns the state version."""
        usage = usage_from_proto(c.usage, f"{field}.usage")
        _check_inline_output(c, field)
        write = self._state_write(c, field)
        digest, size, content_type = self._output(c, f"{field}.output")
        if digest and write.pointer:
            raise SpecError(
                "INVALID_ARGUMENT",
                f"{field}.output.blob",
                "the task writes its output into the state document (output_state_pointer): "
                "its output must be inline JSON",
            )
        if write.pointer and not is_json_content_type(content_type):
            # common.proto Payload: the sidecar parses a payload only when its content type is JSON;
            # task.proto output_state_pointer: the output must then be JSON. Refused, never stored as
            # something the worker did not send (a JSON string of the bytes).
            raise SpecError(
                "INVALID_ARGUMENT",
                f"{field}.output.content_type",
                "the task writes its output into the state document (output_state_pointer): its "
                f"content type must be JSON (empty, application/json or *+json), got {content_type!r}",
            )
        return await self._wiring.complete_with_state(
            c.workflow_id,
            c.task_id,
            c.attempt,
            output=c.output.data,
            content_type=content_type,
            usage=usage,
            write=write,
            field=field,
            blob_sha256=digest,
            blob_size=size,
        )

    def _complete_with_state(self, stream: _Stream, c: pb.TaskCompletion, field: str) -> None:
        """A stream completion with a state write: applied off the reader, acked when durable.

        It waits for the workflow's patch lock: the stream, if it ends meanwhile,
        waits for it before its worker is disconnected (see :meth:`_Stream.settle`).
        """

        async def run() -> pb.TaskAck | None:
            try:
                await self._completed_with_state(c, field)
                return _ack(c, _COMPLETION, accepted=True)
            except SchedulerError as error:
                return _refusal(c, _COMPLETION, error)
            except StorageError:
                return None

        job = stream.job(run(), c.ByteSize() + _ACK_MESSAGE_CHARS)
        self._writes.add(job)
        job.add_done_callback(self._writes.discard)

    def _fail(self, stream: _Stream, failures: Any) -> None:
        acks: list[pb.TaskAck] = []
        durable: asyncio.Future[None] | None = None
        for i, f in enumerate(failures):
            try:
                _check_attempt_ids(f, f"fail.failures[{i}]")
                failure = failure_from_proto(f.failure, f"fail.failures[{i}].failure")
                usage = usage_from_proto(f.usage, f"fail.failures[{i}].usage")
                retry_after = _retry_after_s(f, f"fail.failures[{i}].retry_after")
                will_retry, _, _, durable = self._engine.fail(
                    f.workflow_id,
                    f.task_id,
                    f.attempt,
                    failure=failure,
                    usage=usage,
                    retry_after_s=retry_after,
                )
                acks.append(_ack(f, _FAILURE, accepted=True, will_retry=will_retry))
            except SchedulerError as error:
                acks.append(_refusal(f, _FAILURE, error))
        stream.acks_when_durable(durable, acks)

    def _heartbeat(self, stream: _Stream, heartbeats: Any) -> None:
        refusals: list[pb.TaskAck] = []
        for i, h in enumerate(heartbeats):
            try:
                _check_attempt_ids(h, f"heartbeat.heartbeats[{i}]")
                details = _heartbeat_details(h, f"heartbeat.heartbeats[{i}]")
                self._engine.heartbeat(h.workflow_id, h.task_id, h.attempt, details, h.details.content_type)
            except SchedulerError as error:
                refusals.append(_refusal(h, _HEARTBEAT, error))
        stream.send_acks(refusals)

    def _events(self, stream: _Stream, events: Any, worker_id: str) -> None:
        refusals: list[pb.TaskAck] = []
        drafts: list[EventDraft] = []
        for i, event in enumerate(events):
            try:
                _check_attempt_ids(event, f"report_events.events[{i}]")
                draft = reported_event_draft(event, worker_id, f"report_events.events[{i}]")
                self._engine.check_held(event.workflow_id, event.task_id, event.attempt, worker_id)
                drafts.append(draft)
            except SchedulerError as error:
                refusals.append(_refusal(event, _EVENT, error))
        if drafts:
            self._engine.record_events(drafts)
        stream.send_acks(refusals)

    # ------------------------------------------------------------------ unary

    async def PollTask(  # noqa: N802 - the RPC's name
        self, request: pb.PollTaskRequest, context: _Context
    ) -> pb.PollTaskResponse:
        """Long-polls for up to max_tasks assignments."""
        if self._is_draining():
            await shutting_down(context)
        try:
            _check_poll(request)
        except SpecError as error:
            await abort_for(context, error)
        remaining = context.time_remaining()
        # Answer well before the caller's deadline: an answer that reaches a
        # caller who already gave up is lost to both, and its tasks wait out
        # their start-to-close timeout. A quarter of the time left, 1 to 5 s.
        margin = 1.0 if remaining is None else min(_POLL_MARGIN_MAX_S, max(1.0, remaining / 4))
        wait = 60.0 if remaining is None else max(0.0, min(60.0, remaining - margin))
        worker_id, assignments = await self._engine.poll(
            request.worker_name, list(request.capabilities), request.max_tasks or 1, wait
        )
        if assignments:
            try:
                assignments = await self._fit_answer(worker_id, assignments)
            except BaseException:  # cancelled while storing blobs: the worker never sees them
                self._engine.hand_back_undelivered(
                    worker_id, [(a.workflow_id, a.task_id, a.attempt) for a in assignments]
                )
                raise  # an answer its caller does not get (cancelled on the way) is handed back
            held = [(a.workflow_id, a.task_id, a.attempt) for a in assignments]

            def undelivered(call: Any) -> None:
                if call.cancelled():
                    self._engine.hand_back_undelivered(worker_id, held)

            context.add_done_callback(undelivered)
        return pb.PollTaskResponse(assignments=_assignments(assignments, self._wiring), worker_id=worker_id)

    async def _fit_answer(self, worker_id: str, assignments: list[Assignment]) -> list[Assignment]:
        """A poll's assignments brought within one message: large ones fitted, the excess handed back.

        Handed back goes to its queue again at once, uncharged, for the next poll.
        """
        limit = max(MAX_ASSIGNMENT_BATCH_BYTES, self._wiring.max_message_bytes - (1 << 20))
        blobs = self._wiring.blobs
        if blobs is not None:
            assignments = [await _fitted(a, MAX_ASSIGNMENT_BATCH_BYTES, blobs) for a in assignments]
        answer = _in_batches(assignments, limit)[0]
        if len(answer) < len(assignments):
            rest = [(a.workflow_id, a.task_id, a.attempt) for a in assignments[len(answer) :]]
            why = "the poll's answer was full (the message limit)"
            self._engine.hand_back_undelivered(worker_id, rest, why=why)
        return answer

    async def CompleteTask(  # noqa: N802 - the RPC's name
        self, request: pb.CompleteTaskRequest, context: _Context
    ) -> pb.CompleteTaskResponse:
        """Records a held attempt's success once durable."""
        c = request.completion
        try:
            _check_attempt_ids(c, "completion")
            if self._with_state and (
                c.HasField("state_patch") or self._engine.output_pointer(c.workflow_id, c.task_id)
            ):
                version = await self._completed_with_state(c, "completion")
                return pb.CompleteTaskResponse(state_version=version)
            _check_inline_output(c, "completion")
            usage = usage_from_proto(c.usage, "completion.usage")
            digest, size, content_type = self._output(c, "completion.output")
            durable = self._engine.complete(
                c.workflow_id,
                c.task_id,
                c.attempt,
                output=c.output.data,
                content_type=content_type,
                usage=usage,
                blob_sha256=digest,
                blob_size=size,
            )
            await asyncio.shield(durable)  # shared by the commit's other callers
        except (SchedulerError, StorageError) as error:
            await abort_for(context, error)
        return pb.CompleteTaskResponse(state_version=self._wiring.state_version(c.workflow_id))

    async def FailTask(  # noqa: N802 - the RPC's name
        self, request: pb.FailTaskRequest, context: _Context
    ) -> pb.FailTaskResponse:
        """Records a held attempt's failure; says whether it will be retried."""
        f = request.failure
        try:
            _check_attempt_ids(f, "failure")
            failure = failure_from_proto(f.failure, "failure.failure")
            usage = usage_from_proto(f.usage, "failure.usage")
            retry_after = _retry_after_s(f, "failure.retry_after")
            will_retry, next_ns, state, durable = self._engine.fail(
                f.workflow_id,
                f.task_id,
                f.attempt,
                failure=failure,
                usage=usage,
                retry_after_s=retry_after,
            )
            await asyncio.shield(durable)  # shared by the commit's other callers
        except (SchedulerError, StorageError) as error:
            await abort_for(context, error)
        return pb.FailTaskResponse(
            will_retry=will_retry,
            next_attempt_time=timestamp(next_ns),
            task_state="TASK_STATE_" + state,
        )

    async def RecordHeartbeat(  # noqa: N802 - the RPC's name
        self, request: pb.RecordHeartbeatRequest, context: _Context
    ) -> pb.RecordHeartbeatResponse:
        """Extends a held attempt's lease."""
        h = request.heartbeat
        try:
            _check_attempt_ids(h, "heartbeat")
            details = _heartbeat_details(h, "heartbeat")
            stop = self._engine.heartbeat(
                h.workflow_id, h.task_id, h.attempt, details, h.details.content_type
            )
        except SchedulerError as error:
            await abort_for(context, error)
        return pb.RecordHeartbeatResponse(cancel_requested=stop)

    async def ReportEvents(  # noqa: N802 - the RPC's name
        self, request: pb.ReportEventsRequest, context: _Context
    ) -> pb.ReportEventsResponse:
        """Records worker events (all or nothing)."""
        try:
            if not 1 <= len(request.events) <= 1000:
                raise SpecError("LIMIT_EXCEEDED", "events", "send 1 to 1,000 events", limit=1000)
            drafts = []
            for i, event in enumerate(request.events):
                _check_attempt_ids(event, f"events[{i}]")
                draft = reported_event_draft(event, "", f"events[{i}]")
                # The call names no worker: the event names the attempt's holder, as a stream's does.
                holder = self._engine.check_held(event.workflow_id, event.task_id, event.attempt)
                drafts.append(msgspec.structs.replace(draft, worker_id=holder) if holder else draft)
            sequences, durable = self._engine.record_events(drafts)
            await asyncio.shield(durable)  # shared by the commit's other callers
        except (SchedulerError, StorageError) as error:
            await abort_for(context, error)
        return pb.ReportEventsResponse(sequences=sequences)
