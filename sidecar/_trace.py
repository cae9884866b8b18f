"""TraceService: the flight recorder over gRPC, and the OpenTelemetry export.

:class:`TraceCapability` is first in the capability list: constructing it
sets ``runtime.events`` to the :class:`~are_core.trace.EventRecorder`, so
every later capability records its events there. The servicer only
translates between ``are.v1`` messages and the engine's types.

OpenTelemetry export is on when ``--otlp-endpoint`` (or
``OTEL_EXPORTER_OTLP_ENDPOINT``) is set: spans built from events go through a
bounded ``BatchSpanProcessor`` to the OTLP/gRPC exporter, on its own thread.

A test and benchmark hook, off unless the environment variable
``ARE_TRACE_TEST_HOOK=1`` is set, serves ``/are.testing.TraceHook/Record``:
it takes MessagePack-encoded :class:`~are_core.trace.EventDraft` lists and
records them through the very path producers use (one batch, group commit,
then publish), so the trace service can be exercised end to end before other
capabilities produce events.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import grpc
import msgspec
from google.protobuf import duration_pb2, timestamp_pb2

from are_core.trace import (
    EVENT_TABLES,
    CaughtUp,
    Event,
    EventDraft,
    EventFilter,
    EventRecorder,
    EventsMissed,
    InvalidPageTokenError,
    StreamItem,
    SubscriptionClosedError,
    TooManySubscribersError,
    TraceContextResolver,
    decode_page_token,
    encode_page_token,
    trace_context_of,
)
from are_sdk._proto.are.v1 import (
    common_pb2,
    event_pb2,
    task_pb2,
    trace_service_pb2,
    trace_service_pb2_grpc,
    workflow_pb2,
)
from sidecar import _conventions as conventions
from sidecar._capability import Capability, Runtime
from sidecar._status import abort, shutting_down

if TYPE_CHECKING:
    from are_core.trace import SpanBuilder

__all__ = [
    "TEST_HOOK_ENV",
    "TEST_HOOK_METHOD",
    "TraceCapability",
    "TraceServicer",
    "check_cursor",
    "event_to_proto",
]

TEST_HOOK_ENV = "ARE_TRACE_TEST_HOOK"
TEST_HOOK_METHOD = "/are.testing.TraceHook/Record"
_SERVICE = "are.v1.TraceService"
_MAX_IDS = 100
_MAX_TYPES = 64
_DEFAULT_PAGE = 100
_MAX_PAGE = 1000
_SETTLE_WAIT_S = 0.5  # the longest a ListEvents call waits for commits under way
_CONVERTED_CACHE = 4096
_log = logging.getLogger("are.trace")
_Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class TraceCapability(Capability):
    """Serves ``are.v1.TraceService`` and provides the event sink to every capability."""

    tables: ClassVar[tuple[str, ...]] = EVENT_TABLES
    services: ClassVar[tuple[str, ...]] = (_SERVICE,)

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        config = runtime.config
        self.recorder = EventRecorder(
            runtime.storage,
            runtime.committer,
            retention_count=config.event_retention_count,
            retention_age_s=config.event_retention_age_s,
            subscriber_buffer=config.event_stream_buffer,
        )
        self.recorder.recover()
        runtime.events = self.recorder
        self.spans: SpanBuilder | None = None
        endpoint = otlp_endpoint(config.otlp_endpoint)
        if endpoint is not None:
            self.spans = _otlp_span_builder(endpoint, _trace_context_resolver(runtime, self.recorder))
            self.recorder.add_listener(self.spans)
            _log.info("exporting traces with OTLP", extra={"fields": {"endpoint": endpoint}})

    async def start(self) -> None:
        self.recorder.start_pruning()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        add_trace_servicer(TraceServicer(self.recorder), server)
        if os.environ.get(TEST_HOOK_ENV) == "1":
            server.add_generic_rpc_handlers((_test_hook(self.runtime, self.recorder),))

    async def drain(self) -> None:
        self.recorder.close_subscriptions()

    async def stop(self) -> None:
        await self.recorder.stop()
        if self.spans is not None:
            # Flushes what is queued (bounded by the exporter's timeout) off the event loop.
            await asyncio.to_thread(self.spans.shutdown)


def otlp_endpoint(configured: str | None) -> str | None:
    """The OTLP endpoint to export to: the option, else the standard variables, else None."""
    for value in (
        configured,
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ):
        if value:
            return value
    return None


def _trace_context_resolver(runtime: Runtime, recorder: EventRecorder) -> TraceContextResolver:
    """Finds a workflow's trace context: on its submission event, else in the scheduler's record.

    The scheduler chooses each workflow's trace id (or takes the submitting
    client's) and hands it to workers in their ``traceparent``; exported
    spans must use the same id for workers' own spans to nest under them.
    """

    def resolve(workflow_id: str) -> tuple[int, int | None] | None:
        found = recorder.workflow_trace_context(workflow_id)
        if found is not None:
            return found
        from sidecar._scheduler import SchedulerCapability  # noqa: PLC0415 - listed after this one

        scheduler = runtime.find(SchedulerCapability)
        if scheduler is None:
            return None
        try:
            record = scheduler.engine.get_workflow(workflow_id).record
        except Exception:  # noqa: BLE001 - unknown or deleted workflow: fall back to derived ids
            return None
        return trace_context_of(
            {"are.trace_id": record.trace_id, "are.parent_span_id": record.parent_span_id}
        )

    return resolve


def _otlp_span_builder(endpoint: str, resolver: TraceContextResolver) -> SpanBuilder:
    # Imported here: the exporter (and its grpc channel) exists only when export is on.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    from are_core.trace import SpanBuilder  # noqa: PLC0415 - loads the OpenTelemetry SDK

    insecure = endpoint.startswith("http://") or "://" not in endpoint
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure)
    processor = BatchSpanProcessor(exporter, max_queue_size=65_536, max_export_batch_size=512)
    return SpanBuilder(processor, trace_context=resolver)


def add_trace_servicer(servicer: TraceServicer, server: grpc.aio.Server) -> None:
    """Registers the servicer like the generated ``add_TraceServiceServicer_to_server``.

    One difference: StreamEvents yields already-serialized responses, so an
    event streamed to many subscribers is encoded once, not once per stream.
    """
    handlers = {
        "ListEvents": grpc.unary_unary_rpc_method_handler(
            servicer.ListEvents,
            request_deserializer=trace_service_pb2.ListEventsRequest.FromString,
            response_serializer=trace_service_pb2.ListEventsResponse.SerializeToString,
        ),
        "StreamEvents": grpc.unary_stream_rpc_method_handler(
            servicer.StreamEvents,
            request_deserializer=trace_service_pb2.StreamEventsRequest.FromString,
            response_serializer=_already_serialized,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
    server.add_registered_method_handlers(_SERVICE, handlers)


def _already_serialized(data: bytes) -> bytes:
    return data


# The generated base class is Any to mypy: are_sdk._proto is skipped (see the mypy overrides).
class TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Translates TraceService calls to the :class:`EventRecorder`."""

    def __init__(self, recorder: EventRecorder) -> None:
        self._recorder = recorder
        # Recently streamed events, serialized once for every subscriber (10 streams, one encoding).
        self._serialized: OrderedDict[int, bytes] = OrderedDict()

    async def ListEvents(  # noqa: N802 - the RPC's name
        self, request: trace_service_pb2.ListEventsRequest, context: _Context
    ) -> trace_service_pb2.ListEventsResponse:
        event_filter = await _filter_from_proto(request.filter, context)
        if request.page_size < 0:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"page_size must not be negative, got {request.page_size}",
                reason="INVALID_ARGUMENT",
                field_violations=[("page_size", "must be 0 (default 100) to 1000")],
            )
        limit = min(request.page_size or _DEFAULT_PAGE, _MAX_PAGE)
        after = request.after_sequence
        if request.page_token:
            try:
                after = decode_page_token(request.page_token, event_filter)
            except InvalidPageTokenError as error:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    str(error),
                    reason="INVALID_PAGE_TOKEN",
                    field_violations=[("page_token", str(error))],
                )
        recorder = self._recorder
        cursor_field = "page_token" if request.page_token else "after_sequence"
        await check_cursor(context, after, recorder, cursor_field)
        # Read your writes: events recorded before this call still committing settle first.
        await recorder.wait_visible(recorder.last_sequence, _SETTLE_WAIT_S)
        page = recorder.list_events(event_filter, after_sequence=after, limit=limit)
        return trace_service_pb2.ListEventsResponse(
            events=[event_to_proto(event) for event in page.events],
            next_page_token=encode_page_token(page.last_sequence, event_filter) if page.more else "",
            last_sequence=page.last_sequence,
            oldest_retained_sequence=page.oldest_retained_sequence,
        )

    async def StreamEvents(  # noqa: N802 - the RPC's name
        self, request: trace_service_pb2.StreamEventsRequest, context: _Context
    ) -> AsyncIterator[bytes]:
        event_filter = await _filter_from_proto(request.filter, context)
        after = request.after_sequence if request.HasField("after_sequence") else None
        if after is not None:
            await check_cursor(context, after, self._recorder, "after_sequence")
        try:
            subscription = self._recorder.subscribe(event_filter, after)
        except TooManySubscribersError as error:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                str(error),
                reason="RESOURCE_LIMIT",
                metadata={"limit": "stream_subscribers"},
                retry_after=timedelta(seconds=1),
            )
        try:
            while True:
                try:
                    item = await subscription.next()
                except SubscriptionClosedError:
                    await shutting_down(context, "resume from the last sequence received")
                yield self._stream_message(item)
        finally:
            subscription.close()

    def _stream_message(self, item: StreamItem) -> bytes:
        """The serialized ``StreamEventsResponse``: an event's is built once for every stream."""
        if isinstance(item, Event):
            cache = self._serialized
            data = cache.get(item.sequence)
            if data is None:
                data = trace_service_pb2.StreamEventsResponse(event=event_to_proto(item)).SerializeToString()
                cache[item.sequence] = data
                if len(cache) > _CONVERTED_CACHE:
                    cache.popitem(last=False)
            return data
        if isinstance(item, CaughtUp):
            message = trace_service_pb2.StreamEventsResponse(
                caught_up=trace_service_pb2.CaughtUp(sequence=item.sequence)
            )
        else:
            message = trace_service_pb2.StreamEventsResponse(missed=missed_to_proto(item))
        return message.SerializeToString()


async def check_cursor(context: _Context, after: int, recorder: EventRecorder, field: str) -> None:
    """Refuses a cursor beyond the log's end: it comes from another log (a wiped or different data folder).

    Every cursor the sidecar hands out is at most the highest stored
    sequence, and numbering resumes above it after a restart; accepting a
    larger one would silently skip the events numbered up to it.
    """
    end = recorder.last_sequence
    if after > end:
        await abort(
            context,
            grpc.StatusCode.OUT_OF_RANGE,
            f"{field} is after sequence {after}, beyond the end of this sidecar's event log ({end});"
            " it comes from another log: start again from 0",
            reason="SEQUENCE_BEYOND_LOG",
            field_violations=[(field, f"at most {end}")],
        )


def missed_to_proto(item: EventsMissed) -> trace_service_pb2.EventsMissed:
    """The ``are.v1.EventsMissed`` of an engine notice."""
    return trace_service_pb2.EventsMissed(
        reason=_enum_value(trace_service_pb2.MissedReason, "MISSED_REASON_", item.reason),
        missed_count=item.missed_count,
        first_missed_sequence=item.first_missed_sequence,
        last_missed_sequence=item.last_missed_sequence,
        resume_after_sequence=item.resume_after_sequence,
    )


def _enum_value(enum: Any, prefix: str, name: str) -> Any:
    if not name:
        return 0
    try:
        return int(enum.Value(prefix + name))
    except ValueError:
        return 0


def event_to_proto(event: Event) -> event_pb2.Event:
    """The ``are.v1.Event`` of a recorded event."""
    message = event_pb2.Event(
        sequence=event.sequence,
        event_time=_timestamp(event.event_time_unix_ns),
        event_type=_enum_value(event_pb2.EventType, "EVENT_TYPE_", event.event_type),
        workflow_id=event.workflow_id,
        task_id=event.task_id,
        attempt=event.attempt,
        worker_id=event.worker_id,
        task_state=_enum_value(task_pb2.TaskState, "TASK_STATE_", event.task_state),
        workflow_state=_enum_value(workflow_pb2.WorkflowState, "WORKFLOW_STATE_", event.workflow_state),
        name=event.name,
        span_id=event.span_id,
    )
    if event.failure is not None:
        failure = event.failure
        message.failure.CopyFrom(
            common_pb2.Failure(
                message=failure.message,
                type=failure.type,
                non_retryable=failure.non_retryable,
                kind=_enum_value(common_pb2.FailureKind, "FAILURE_KIND_", failure.kind),
                timeout_type=_enum_value(common_pb2.TimeoutType, "TIMEOUT_TYPE_", failure.timeout_type),
            )
        )
    if event.usage is not None:
        usage = event.usage
        message.usage.CopyFrom(
            common_pb2.Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_micro_usd=usage.cost_micro_usd,
                llm_calls=usage.llm_calls,
                tool_calls=usage.tool_calls,
            )
        )
    if event.duration_ns is not None:
        seconds, nanos = divmod(event.duration_ns, 1_000_000_000)
        message.duration.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    for key, value in event.attributes.items():
        attribute = message.attributes[key]
        if isinstance(value, bool):
            attribute.bool_value = value
        elif isinstance(value, int):
            attribute.int_value = value
        elif isinstance(value, float):
            attribute.double_value = value
        else:
            attribute.string_value = value
    return message


def _timestamp(unix_ns: int) -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _unix_ns(timestamp: timestamp_pb2.Timestamp, field: str, violations: list[tuple[str, str]]) -> int:
    """A filter bound in nanoseconds, clamped to what events can have; a bad Timestamp is a violation."""
    problem = conventions.timestamp_problem(timestamp)
    if problem is not None:
        violations.append((field, problem))
    return conventions.unix_ns(timestamp) if problem is None else 0


async def _filter_from_proto(message: event_pb2.EventFilter, context: _Context) -> EventFilter:
    """Validates an ``are.v1.EventFilter``; every problem is a field violation under ``filter``."""
    violations: list[tuple[str, str]] = []
    for field, values in (("workflow_ids", message.workflow_ids), ("task_ids", message.task_ids)):
        if len(values) > _MAX_IDS:
            violations.append((f"filter.{field}", f"at most {_MAX_IDS} ids, got {len(values)}"))
        violations.extend(
            (f"filter.{field}[{index}]", "must not be empty")
            for index, value in enumerate(values)
            if not value
        )
    if len(message.event_types) > _MAX_TYPES:
        violations.append(
            ("filter.event_types", f"at most {_MAX_TYPES} types, got {len(message.event_types)}")
        )
    types: list[str] = []
    for index, value in enumerate(message.event_types):
        name = event_pb2.EventType.Name(value) if value in event_pb2.EventType.values() else ""
        if not name or value == event_pb2.EVENT_TYPE_UNSPECIFIED:
            violations.append(
                (f"filter.event_types[{index}]", f"must be a known EventType other than 0, got {value}")
            )
        else:
            types.append(name.removeprefix("EVENT_TYPE_"))
    times = len(violations)
    start = (
        _unix_ns(message.start_time, "filter.start_time", violations)
        if message.HasField("start_time")
        else None
    )
    end = _unix_ns(message.end_time, "filter.end_time", violations) if message.HasField("end_time") else None
    raw = [t.seconds * 1_000_000_000 + t.nanos for t in (message.start_time, message.end_time)]
    if len(violations) == times and start is not None and end is not None and raw[1] < raw[0]:
        violations.append(("filter.end_time", "must not be before filter.start_time"))
    if violations:
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid filter: " + "; ".join(f"{f}: {d}" for f, d in violations),
            reason="INVALID_ARGUMENT",
            field_violations=violations,
        )
    return EventFilter(
        workflow_ids=frozenset(message.workflow_ids),
        task_ids=frozenset(message.task_ids),
        event_types=frozenset(types),
        start_time_unix_ns=start,
        end_time_unix_ns=end,
        worker_id=message.worker_id,
    )


# The test and benchmark hook.

_drafts_decoder = msgspec.msgpack.Decoder(list[EventDraft])
_sequences_encoder = msgspec.msgpack.Encoder()


def _test_hook(runtime: Runtime, recorder: EventRecorder) -> grpc.GenericRpcHandler:
    async def record(request: bytes, context: _Context) -> bytes:
        try:
            drafts = _drafts_decoder.decode(request)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), reason="INVALID_ARGUMENT")
        batch = runtime.storage.batch()
        events = [recorder.record(batch, draft) for draft in drafts]
        await runtime.committer.submit(batch)
        recorder.publish(events)
        return _sequences_encoder.encode([event.sequence for event in events])

    handler = grpc.unary_unary_rpc_method_handler(record)
    return _HookHandler({TEST_HOOK_METHOD: handler})


class _HookHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped (see the mypy overrides)
    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._handlers = handlers

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        return self._handlers.get(method)
