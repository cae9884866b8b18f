"""TraceService: the flight recorder over gRPC, and the OpenTelemetry export.

:class:`TraceCapability` is first in the capability list: constructing it
sets ``runtime.events`` to the :class:`~are_core.trace.EventRecorder`, so
every later capability records its events there. The servicer only
translates between ``are.v1`` messages and the engine's types.

OpenTelemetry export is on when ``--otlp-endpoint`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``OTEL_EXPORTER_OTLP_ENDPOINT``) is
set, to ``http://HOST[:PORT]``, ``https://HOST[:PORT]`` or ``HOST:PORT``;
``--otlp-endpoint off`` (or ``none``) turns it off whatever the ``OTEL_*``
variables say, as they are often injected into every container of a pod.
Spans built from events go through a bounded export queue (a
``BatchSpanProcessor``, admitted into by :class:`_ExportGate`) to the
OTLP/gRPC exporter, on its own thread; each export (retries included) has a
deadline of a few seconds. The queue holds at most 65,536 spans and
``--otlp-max-queue-bytes`` (64 MiB by default) of them, estimated from
their attributes and events (a span in an export under way counts until
the export ends). A span that ends while it is full (the collector is down,
or slower than spans come) is dropped. Every span is accounted for: it is
exported, still queued, or counted as not exported (the queue was full, or
its export failed). While spans are dropped, a warning says how many, at
most every 30 s, with the totals since the start. At shutdown the export of
what is queued gets a bounded share of the shutdown grace; spans the
collector has not taken by then are dropped, and one log line says how many
spans in all were not exported, and why. Both lines also count the span
events left out of spans: events no open span could take (a workflow's
span keeps 128; see ``SpanBuilder.dropped_events``) and those over a span's
limit of 128.

A test and benchmark hook, off unless the environment variable
``ARE_TRACE_TEST_HOOK=1`` is set, serves ``/are.testing.TraceHook/Record``:
it takes MessagePack-encoded :class:`~are_core.trace.EventDraft` lists and
records them through the very path producers use (one batch, group commit,
then publish), so the trace service can be exercised end to end before other
capabilities produce events.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias
from urllib.parse import urlsplit

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
    Subscription,
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
from sidecar._config import ConfigError
from sidecar._status import abort, shutting_down

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from are_core.trace import SpanBuilder

__all__ = [
    "TEST_HOOK_ENV",
    "TEST_HOOK_METHOD",
    "ExportCounts",
    "TraceCapability",
    "TraceServicer",
    "check_cursor",
    "event_to_proto",
    "otlp_endpoint",
]

TEST_HOOK_ENV = "ARE_TRACE_TEST_HOOK"
TEST_HOOK_METHOD = "/are.testing.TraceHook/Record"
_SERVICE = "are.v1.TraceService"
_MAX_IDS = 100
# A worker id as the sidecar gives them: a worker name (an id) and "-" and 12 hex characters (a
# stream), or "@poll-" and 8 (a unary poll): at most 142 characters; 160 leaves room.
_WORKER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,160}")
_MAX_TYPES = 64
_DEFAULT_PAGE = 100
_MAX_PAGE = 1000
_SETTLE_WAIT_S = 0.5  # the longest a ListEvents call waits for commits under way
# Streamed events kept serialized for the other streams: at most this many, and this many bytes
# (an event may be about a megabyte); dropped when no stream is open.
_CONVERTED_CACHE = 4096
_CONVERTED_CACHE_BYTES = 16 << 20
# A ListEvents page stays this far under the message limit (the response's other fields, framing).
_LIST_SLACK_BYTES = 1 << 20
_REPEATED_FRAMING = 6  # an element of a repeated message field: its tag and length, at most
# StreamEventsRequest.max_batch: at most this many events in one StreamedEventBatch, and at most
# this many bytes (or the message limit, if lower), so that a client with gRPC's default 4 MiB
# receive limit can opt in.
_MAX_BATCH = 1000
_BATCH_BYTES = 4 << 20
_BATCH_FRAMING = 16  # StreamEventsResponse.batch's tag and length, at most
_BATCH_TAG = b"\x22"  # StreamEventsResponse field 4 (batch), wire type 2 (length-delimited)
# Endpoint values (any case) that mean no export, whatever the OTEL_* variables say.
_EXPORT_OFF = frozenset({"off", "none"})
_BAD_PORT = "the port must be a number from 1 to 65535"
# A host name (letters, digits, '-', '_', dots); IP addresses are checked with ipaddress.
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?")
# The deadline of one export call, its retries included (the SDK's default is 10 s).
_EXPORT_TIMEOUT_S = 5.0
# The stored bytes of the events replayed onto the span of a workflow that lived across a restart, about.
_REPLAY_MAX_BYTES = 8 << 20
# The share of the shutdown grace that exporting what is queued may take: what
# is left of the grace, at most the first, at least the second.
_SHUTDOWN_EXPORT_MAX_S = 3.0
_SHUTDOWN_EXPORT_MIN_S = 0.5
# How long the processor gets to wind down once the export has been cut off.
_EXPORT_CUTOFF_WAIT_S = 1.0
# The export queue (spans ended and not yet exported, an export under way included): at most this
# many spans, and --otlp-max-queue-bytes of them.
_QUEUE_SPANS = 65_536
_QUEUE_BYTES = 64 << 20
# Dropped spans and span events are logged at most this often while they last; the counters are
# looked at this often, so the first drop is told within a poll.
_DROP_REPORT_INTERVAL_S = 30.0
_DROP_REPORT_POLL_S = 1.0
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
        self._export_gate = _ExportGate(max_bytes=config.otlp_max_queue_bytes)
        self._drop_report: _DropReport | None = None
        self._reporting: asyncio.Task[None] | None = None
        self._shutdown_deadline: float | None = None
        self._endpoint = otlp_endpoint(config.otlp_endpoint)
        if self._endpoint is not None:
            self.spans = _otlp_span_builder(self._endpoint, runtime, self.recorder, self._export_gate)
            self._drop_report = _DropReport(self._export_gate, self.spans, self._endpoint)
            self.recorder.add_listener(self.spans)
            _log.info(
                "exporting traces with OTLP",
                extra={
                    "fields": {
                        "endpoint": self._endpoint,
                        "max_queue_spans": self._export_gate.max_spans,
                        "max_queue_bytes": self._export_gate.max_bytes,
                    }
                },
            )

    @property
    def export_counts(self) -> ExportCounts | None:
        """What became of the spans handed to the OTLP export so far; None when export is off."""
        return self._export_gate.counts() if self.spans is not None else None

    async def start(self) -> None:
        self.recorder.start_pruning()
        if self._drop_report is not None:
            self._reporting = asyncio.get_running_loop().create_task(
                _report_drops(self._drop_report), name="are-otlp-drops"
            )

    def add_to_server(self, server: grpc.aio.Server) -> None:
        servicer = TraceServicer(self.recorder, max_message_bytes=self.runtime.config.max_message_bytes)
        add_trace_servicer(servicer, server)
        if os.environ.get(TEST_HOOK_ENV) == "1":
            server.add_generic_rpc_handlers((_test_hook(self.runtime, self.recorder),))

    async def drain(self) -> None:
        # Shutdown has begun: the grace, of which the span export gets a share, counts from here.
        self._shutdown_deadline = time.monotonic() + self.runtime.config.shutdown_grace_s
        self.recorder.close_subscriptions()

    async def stop(self) -> None:
        if self._reporting is not None:
            self._reporting.cancel()  # the shutdown line tells the rest
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporting
        await self.recorder.stop()
        if self.spans is not None:
            assert self._endpoint is not None
            remaining = self.runtime.config.shutdown_grace_s
            if self._shutdown_deadline is not None:
                remaining = self._shutdown_deadline - time.monotonic()
            budget = max(_SHUTDOWN_EXPORT_MIN_S, min(remaining, _SHUTDOWN_EXPORT_MAX_S))
            # Blocks for at most budget + _EXPORT_CUTOFF_WAIT_S, off the event loop.
            await asyncio.to_thread(_stop_export, self.spans, self._export_gate, budget, self._endpoint)


def otlp_endpoint(configured: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP endpoint to export to, or None for no export.

    The first of the option, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` that is set decides: ``off`` or ``none``
    (any case) means no export, so the option turns off an export the
    variables would turn on.

    Args:
        configured: ``--otlp-endpoint`` (or ``ARE_OTLP_ENDPOINT``, or the TOML
            file's ``otlp_endpoint``), None when unset.
        environ: The environment; ``os.environ`` when None.

    Raises:
        ConfigError: The deciding value is neither ``off``/``none``, nor an
            ``http://`` or ``https://`` URL with a host, nor ``HOST:PORT``;
            the message names the option or variable it came from.
    """
    env = os.environ if environ is None else environ
    for source, value in (
        ("--otlp-endpoint", configured),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", env.get("OTEL_EXPORTER_OTLP_ENDPOINT")),
    ):
        endpoint = (value or "").strip()
        if not endpoint:
            continue
        if endpoint.lower() in _EXPORT_OFF:
            return None
        problem = _endpoint_problem(endpoint)
        if problem is not None:
            raise ConfigError(
                f"invalid value for {source}: expected http://HOST[:PORT], https://HOST[:PORT], "
                f"HOST:PORT, or 'off' for no export; got {endpoint!r} ({problem})"
            )
        return endpoint
    return None


def _endpoint_problem(endpoint: str) -> str | None:
    """What is wrong with an OTLP/gRPC endpoint, or None when it is a URL or HOST:PORT."""
    if "://" in endpoint:
        return _url_problem(endpoint)
    host, colon, port_text = endpoint.rpartition(":")
    if not colon:
        return "no port"
    if not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
        return _BAD_PORT
    bracketed = host.startswith("[") and host.endswith("]")
    return None if _valid_host(host[1:-1] if bracketed else host, bracketed=bracketed) else "no valid host"


def _url_problem(endpoint: str) -> str | None:
    try:
        url = urlsplit(endpoint)
    except ValueError as error:  # unbalanced brackets, an IPv4 address in brackets
        return f"not a URL: {error}"
    if url.scheme.lower() not in {"http", "https"}:
        return f"the scheme must be http or https, not {url.scheme!r}"
    try:
        port = url.port
    except ValueError:
        port = 0
    if port == 0:
        return _BAD_PORT
    bracketed = url.netloc.rpartition("@")[2].startswith("[")
    return None if _valid_host(url.hostname or "", bracketed=bracketed) else "no valid host"


def _valid_host(host: str, *, bracketed: bool) -> bool:
    """A host name or IPv4 address; an IPv6 address only where it was written in brackets."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return not bracketed and _HOST_NAME.fullmatch(host) is not None
    return bracketed == (address.version == 6)


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


def _attempt_span_resolver(runtime: Runtime) -> Callable[[str, str, int], int | None]:
    """Finds the span id the scheduler gave an attempt, for a call reported after it ended.

    Asked only for an attempt the span builder no longer knows (it ended
    before a restart, or long ago); the scheduler keeps the span id of each
    task's latest attempt only.
    """

    def resolve(workflow_id: str, task_id: str, attempt: int) -> int | None:
        from sidecar._scheduler import SchedulerCapability  # noqa: PLC0415 - listed after this one

        scheduler = runtime.find(SchedulerCapability)
        if scheduler is None:
            return None
        try:
            record = scheduler.engine.get_task(workflow_id, task_id).record
        except Exception:  # noqa: BLE001 - unknown or deleted: the call nests under the workflow span
            return None
        if record.attempt != attempt or len(record.span_id) != 16:
            return None  # an earlier attempt: the scheduler kept no span id for it
        try:
            return int(record.span_id, 16) or None
        except ValueError:
            return None

    return resolve


def _workflow_start_resolver(runtime: Runtime) -> Callable[[str], Event | None]:
    """Finds how a workflow started (its span's start, name and trace context) in the scheduler's record.

    Asked when a workflow ends whose start the span builder did not see (the
    sidecar restarted meanwhile), so that its span is exported then.
    """

    def resolve(workflow_id: str) -> Event | None:
        from sidecar._scheduler import SchedulerCapability  # noqa: PLC0415 - listed after this one

        scheduler = runtime.find(SchedulerCapability)
        if scheduler is None:
            return None
        try:
            record = scheduler.engine.get_workflow(workflow_id).record
        except Exception:  # noqa: BLE001 - unknown or deleted workflow: no span
            return None
        if not record.create_ns:
            return None
        attributes: dict[str, str | int | float | bool] = {"are.workflow.name": record.name}
        if record.trace_id:
            attributes["are.trace_id"] = record.trace_id
        if record.parent_span_id:
            attributes["are.parent_span_id"] = record.parent_span_id
        return Event(
            sequence=0,
            event_time_unix_ns=record.create_ns,
            event_type="WORKFLOW_SUBMITTED",
            workflow_id=workflow_id,
            name=record.name,
            attributes=attributes,
        )

    return resolve


def _otlp_span_builder(
    endpoint: str, runtime: Runtime, recorder: EventRecorder, gate: _ExportGate
) -> SpanBuilder:
    # Imported here: the exporter (and its grpc channel) exists only when export is on.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    from are_core.trace import SpanBuilder  # noqa: PLC0415 - loads the OpenTelemetry SDK

    insecure = "://" not in endpoint or urlsplit(endpoint).scheme.lower() == "http"
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure, timeout=_EXPORT_TIMEOUT_S)
    processor = BatchSpanProcessor(
        _gated_exporter(exporter, gate, runtime.config.otlp_max_export_bytes, endpoint),
        # As long as the gate's queue, which holds every span the processor does (and those in an
        # export): the processor never drops one itself, uncounted.
        max_queue_size=gate.max_spans,
        max_export_batch_size=512,
        # opentelemetry-sdk 1.45 does not apply it yet; the exporter's own timeout bounds each export.
        export_timeout_millis=_EXPORT_TIMEOUT_S * 1000,
    )
    return SpanBuilder(
        _gated_processor(processor, gate),
        trace_context=_trace_context_resolver(runtime, recorder),
        attempt_span=_attempt_span_resolver(runtime),
        workflow_start=_workflow_start_resolver(runtime),
        workflow_events=lambda workflow_id, before, limit: recorder.recent_workflow_events(
            workflow_id, before, limit, _REPLAY_MAX_BYTES
        ),
    )


class ExportCounts(msgspec.Struct, frozen=True, kw_only=True):
    """What became of the spans handed to the OTLP export, since the start.

    Every span ended (and sampled) is in exactly one of ``exported``,
    ``queued``, ``queue_full``, ``export_failed`` and ``after_shutdown``.
    """

    exported: int = 0
    """Spans the collector took."""
    queued: int = 0
    """Spans waiting for export, or in an export under way."""
    queued_bytes: int = 0
    """The memory the queued spans hold, estimated (``sidecar._otlp_batches.span_memory``)."""
    queue_full: int = 0
    """Spans dropped as they ended: the queue had no room for them."""
    export_failed: int = 0
    """Spans of a failed or refused export, or that could not be encoded."""
    after_shutdown: int = 0
    """Spans that ended once the export was shutting down."""
    span_events_over_limit: int = 0
    """Span events beyond a span's limit (128), left out of it by the SDK."""

    @property
    def not_exported(self) -> int:
        """Spans that will never be exported (the queued ones excepted)."""
        return self.queue_full + self.export_failed + self.after_shutdown


class _ExportGate:
    """Bounds the export queue, accounts for every span handed to the export, and cuts it off at shutdown.

    The queue is every span admitted and not yet done with: waiting in the
    ``BatchSpanProcessor``, or in an export under way. It holds at most
    ``max_spans`` spans and ``max_bytes`` of memory, estimated; a span is
    admitted into an empty queue whatever its size, so that a span larger
    than the bound is still exported. A span that finds it full is dropped
    here and counted (the processor's own queue, as long as this one, never
    drops a span itself: its drops are logged without a count).

    Shared by the event loop (spans end there), the span processor's thread
    (each export), the thread shutting the provider down, and the one that
    waits on it; a lock guards it. opentelemetry-sdk 1.45 gives no bounded
    shutdown: ``BatchSpanProcessor`` waits up to 30 s for its queue to drain,
    whatever the deadline, and ``force_flush`` ignores its timeout. Cutting
    the export off here (the exporter is shut down, which ends the call under
    way, and every batch still queued is refused at once) lets the processor
    drain in no time.
    """

    def __init__(self, *, max_spans: int = _QUEUE_SPANS, max_bytes: int = _QUEUE_BYTES) -> None:
        self.max_spans = max_spans
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._cut_off = False
        self._closed = False
        self._queued = self._queued_bytes = 0
        self._exported = self._queue_full = self._failed = self._after_shutdown = 0
        self._events_over_limit = 0
        self._shutdown_exporter: Callable[[], None] | None = None

    @property
    def cut_off(self) -> bool:
        """Whether the export was cut off: batches are refused without being sent."""
        with self._lock:
            return self._cut_off

    @property
    def not_exported(self) -> int:
        """Spans that will never be exported (dropped, or a failed or refused export) since the start."""
        with self._lock:
            return self._queue_full + self._failed + self._after_shutdown

    def counts(self) -> ExportCounts:
        """The counters, taken together."""
        with self._lock:
            return ExportCounts(
                exported=self._exported,
                queued=self._queued,
                queued_bytes=self._queued_bytes,
                queue_full=self._queue_full,
                export_failed=self._failed,
                after_shutdown=self._after_shutdown,
                span_events_over_limit=self._events_over_limit,
            )

    def admit(self, size: int, events_over_limit: int = 0) -> bool:
        """Whether a span that ended, of ``size`` bytes, goes into the queue; counted as dropped if not.

        Args:
            size: The span's memory, estimated.
            events_over_limit: The span's events the SDK left out (over its limit), counted.
        """
        with self._lock:
            self._events_over_limit += events_over_limit
            if self._closed:
                self._after_shutdown += 1
                return False
            if self._queued and (
                self._queued >= self.max_spans or self._queued_bytes + size > self.max_bytes
            ):
                self._queue_full += 1
                return False
            self._queued += 1
            self._queued_bytes += size
            return True

    def exported(self, spans: int, size: int, failed: int) -> None:
        """An export of ``spans`` spans (``size`` bytes) ended: ``failed`` of them were not exported."""
        with self._lock:
            # A direct export (a test) sends spans that were never admitted: the queue stays at 0.
            self._queued = max(0, self._queued - spans)
            self._queued_bytes = max(0, self._queued_bytes - size)
            self._exported += spans - failed
            self._failed += failed

    def close(self) -> None:
        """Admits no more spans: the export is shutting down (those that end later are counted)."""
        with self._lock:
            self._closed = True

    def attach(self, shutdown_exporter: Callable[[], None]) -> None:
        """Sets how to shut the real exporter down (it is done once, by whichever comes first)."""
        self._shutdown_exporter = shutdown_exporter

    def shutdown_exporter(self) -> None:
        """Shuts the real exporter down, once: its channel closes, which ends an export under way."""
        with self._lock:
            shutdown, self._shutdown_exporter = self._shutdown_exporter, None
        if shutdown is not None:
            shutdown()

    def cut_off_export(self) -> None:
        """Refuses every batch from now on and ends the export under way."""
        with self._lock:
            self._cut_off = True
        self.shutdown_exporter()


def _gated_processor(processor: SpanProcessor, gate: _ExportGate) -> SpanProcessor:
    """``processor`` behind ``gate``: a span that ends is handed over only if the export queue has room."""
    from opentelemetry.sdk.trace import SpanProcessor  # noqa: PLC0415 - loaded only when export is on

    from sidecar._otlp_batches import span_memory  # noqa: PLC0415 - loads the OTLP encoder

    class GatedSpanProcessor(SpanProcessor):
        def on_start(self, span: Span, parent_context: Context | None = None) -> None:
            processor.on_start(span, parent_context)

        def on_end(self, span: ReadableSpan) -> None:
            context = span.context
            if context is None or not context.trace_flags.sampled:
                return  # never exported, as the processor does: not a drop
            if gate.admit(span_memory(span), span.dropped_events):
                processor.on_end(span)

        def shutdown(self) -> None:
            gate.close()
            processor.shutdown()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return processor.force_flush(timeout_millis)

    return GatedSpanProcessor()


def _gated_exporter(
    exporter: SpanExporter, gate: _ExportGate, max_bytes: int = 3 * 1024 * 1024, endpoint: str = ""
) -> SpanExporter:
    """``exporter`` behind ``gate``: it counts what is (not) exported and refuses all once cut off.

    Each batch is first fitted (see ``sidecar._otlp_batches``): sent as
    requests of at most ``max_bytes`` encoded, so that the collector takes
    them, and without the spans that cannot be encoded, so that one such
    span never takes its batch down with it. Its spans leave the gate's
    queue when the export ends (they are held until then).
    """
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415 - loaded only when export is on
        SpanExporter,
        SpanExportResult,
    )

    from sidecar._otlp_batches import fit_spans, span_memory  # noqa: PLC0415 - loads the OTLP encoder

    def send(spans: Sequence[ReadableSpan]) -> int:
        """Exports ``spans``; how many were not exported."""
        fitted = fit_spans(spans, max_bytes)
        if fitted.dropped or fitted.truncated:
            _log.warning(
                f"{fitted.dropped} spans could not be encoded (or not in {max_bytes:,} bytes) and "
                f"are dropped; {fitted.truncated} were cut to fit",
                extra={
                    "fields": {
                        "endpoint": endpoint,
                        "spans_dropped": fitted.dropped,
                        "spans_truncated": fitted.truncated,
                        "max_export_bytes": max_bytes,
                    }
                },
            )
        failed = fitted.dropped
        for batch in fitted.batches:
            result = SpanExportResult.FAILURE
            if not gate.cut_off:
                try:
                    result = exporter.export(batch)
                except Exception:  # noqa: BLE001 - a cut-off export may raise (closed channel); counted below
                    result = SpanExportResult.FAILURE
            if result is not SpanExportResult.SUCCESS:
                failed += len(batch)
        return failed

    class GatedSpanExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            # The same estimate as when each span was admitted: an ended span does not change.
            size = sum(span_memory(span) for span in spans)
            failed = len(spans)
            try:
                failed = send(spans)
            finally:
                gate.exported(len(spans), size, failed)
            return SpanExportResult.FAILURE if failed else SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            gate.shutdown_exporter()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return exporter.force_flush(timeout_millis)

    gate.attach(exporter.shutdown)
    return GatedSpanExporter()


class _DropReport:
    """Tells in the log what the export dropped: while it goes on at most every 30 s, and all at shutdown.

    Spans not exported (their count since the last line and since the
    start, and why), and span events left out of spans: those no open span
    could take (``SpanBuilder.dropped_events``) and those over a span's limit.
    """

    def __init__(self, gate: _ExportGate, spans: SpanBuilder, endpoint: str) -> None:
        self._gate = gate
        self._spans = spans
        self._endpoint = endpoint
        self._told = ExportCounts()
        self._told_events = 0  # SpanBuilder.dropped_events as of the last line
        self._told_at: float | None = None  # the last line
        self._warned_at: float | None = None  # the last line telling of spans dropped

    def tick(self, now: float) -> None:
        """Logs what was dropped since the last line, unless a line of the kind is less than 30 s old.

        Spans dropped make a warning; span events alone left out of spans an
        info line, which never holds a warning back.
        """
        counts = self._gate.counts()
        builder_events = self._spans.dropped_events
        told = self._told
        spans = counts.not_exported - told.not_exported
        events = (
            builder_events - self._told_events + counts.span_events_over_limit - told.span_events_over_limit
        )
        last = self._warned_at if spans else self._told_at
        if not (spans or events) or (last is not None and now - last < _DROP_REPORT_INTERVAL_S):
            return
        since = "since the start" if self._told_at is None else f"in the last {now - self._told_at:.0f} s"
        full, failed = counts.queue_full - told.queue_full, counts.export_failed - told.export_failed
        total_events = builder_events + counts.span_events_over_limit
        fields = {
            "endpoint": self._endpoint,
            "spans_dropped": spans,
            "spans_queue_full": full,
            "spans_export_failed": failed,
            "spans_not_exported_total": counts.not_exported,
            "spans_exported_total": counts.exported,
            "spans_queued": counts.queued,
            "queued_bytes": counts.queued_bytes,
            "span_events_dropped": events,
            "span_events_dropped_total": total_events,
        }
        if spans:
            _log.warning(
                f"OTLP export: {spans} spans dropped {since} ({full} found the export queue full, "
                f"{failed} were in failed exports), {counts.not_exported} in all; {counts.exported} "
                f"exported, {counts.queued} queued; {events} span events left out of spans",
                extra={"fields": fields},
            )
            self._warned_at = now
        else:
            _log.info(
                f"OTLP export: {events} span events left out of spans {since} ({total_events} in all): "
                "a workflow's span keeps 128, and so does a task attempt's; no span dropped",
                extra={"fields": fields},
            )
        self._told, self._told_events, self._told_at = counts, builder_events, now

    def final(self, at_start: ExportCounts, budget_s: float) -> None:
        """The shutdown line: every span not exported (the ones still queued included), and why.

        Args:
            at_start: The counters when shutdown began.
            budget_s: The time the export of what was queued got.
        """
        counts = self._gate.counts()
        left = counts.queued + counts.after_shutdown  # never exported now
        not_exported = counts.not_exported + counts.queued
        events = self._spans.dropped_events + counts.span_events_over_limit
        fields = {
            "endpoint": self._endpoint,
            "spans_not_exported": not_exported,
            "at_shutdown": not_exported - at_start.not_exported,
            "spans_queue_full": counts.queue_full,
            "spans_export_failed": counts.export_failed,
            "spans_left_at_shutdown": left,
            "spans_exported": counts.exported,
            "span_events_dropped": events,
            "export_budget_s": round(budget_s, 2),
        }
        if not_exported:
            _log.warning(
                f"{not_exported} spans were not exported (the collector failed or was too slow); they "
                f"are dropped: {counts.queue_full} found the export queue full, {counts.export_failed} "
                f"were in failed exports, {left} were left at shutdown; {counts.exported} were "
                f"exported; {events} span events were left out of spans",
                extra={"fields": fields},
            )
        elif events:
            _log.info(
                f"every span was exported ({counts.exported}); {events} span events were left out of "
                "spans (a workflow's span keeps 128, and so does a task attempt's)",
                extra={"fields": fields},
            )


async def _report_drops(report: _DropReport) -> None:
    """Runs until cancelled (at shutdown): logs drops as they happen, at most every 30 s."""
    while True:
        await asyncio.sleep(_DROP_REPORT_POLL_S)
        report.tick(time.monotonic())


def _stop_export(spans: SpanBuilder, gate: _ExportGate, budget_s: float, endpoint: str) -> None:
    """Ends the open spans and exports what is queued for at most ``budget_s``, then drops the rest.

    Blocks for at most ``budget_s + _EXPORT_CUTOFF_WAIT_S``: the provider is
    shut down on a daemon thread, which cannot keep the process alive.
    """
    at_start = gate.counts()
    shutting_down = threading.Thread(target=spans.shutdown, name="are-otlp-shutdown", daemon=True)
    shutting_down.start()
    shutting_down.join(budget_s)
    if shutting_down.is_alive():
        gate.cut_off_export()
        shutting_down.join(_EXPORT_CUTOFF_WAIT_S)
    _DropReport(gate, spans, endpoint).final(at_start, budget_s)


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

    def __init__(self, recorder: EventRecorder, *, max_message_bytes: int = 64 << 20) -> None:
        self._recorder = recorder
        # The largest response the server sends: a ListEvents page is cut short of it.
        self._page_room = max(1, max_message_bytes - _LIST_SLACK_BYTES)
        # The most bytes of events in one StreamedEventBatch.
        self._batch_room = max(1, min(_BATCH_BYTES, max_message_bytes) - _BATCH_FRAMING)
        # Recently streamed events, serialized once for every subscriber (10 streams, one
        # encoding); bounded in events and bytes, and emptied when the last stream ends.
        self._serialized: OrderedDict[int, bytes] = OrderedDict()
        self._serialized_bytes = 0
        self._streams = 0

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
        room = self._page_room
        # Bounded by stored bytes first (never decoding a thousand big events), then exactly.
        page = recorder.list_events(event_filter, after_sequence=after, limit=limit, max_bytes=room)
        events = [event_to_proto(event) for event in page.events]
        last, more = page.last_sequence, page.more
        response = trace_service_pb2.ListEventsResponse(events=events)
        if response.ByteSize() > room:
            kept = _fitting(events, room)
            if kept < len(events):
                del response.events[kept:]
                last, more = page.events[kept - 1].sequence, True
        response.next_page_token = encode_page_token(last, event_filter) if more else ""
        response.last_sequence = last
        response.oldest_retained_sequence = page.oldest_retained_sequence
        response.end_sequence = recorder.visible_through
        return response

    async def StreamEvents(  # noqa: N802 - the RPC's name
        self, request: trace_service_pb2.StreamEventsRequest, context: _Context
    ) -> AsyncIterator[bytes]:
        event_filter = await _filter_from_proto(request.filter, context)
        max_batch = request.max_batch
        if max_batch > _MAX_BATCH:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"max_batch must be at most {_MAX_BATCH}, got {max_batch}",
                reason="INVALID_ARGUMENT",
                field_violations=[("max_batch", f"must be 0 (one event per message) to {_MAX_BATCH}")],
            )
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
        self._streams += 1
        try:
            while True:
                try:
                    item = await subscription.next()
                except SubscriptionClosedError:
                    await shutting_down(context, "resume from the last sequence received")
                if max_batch > 1 and isinstance(item, Event) and subscription.ready_event() is not None:
                    yield self._batch_message(item, subscription, max_batch)
                else:
                    yield self._stream_message(item)
        finally:
            subscription.close()
            self._streams -= 1
            if not self._streams:  # nobody to share encodings with: free them
                self._serialized.clear()
                self._serialized_bytes = 0

    def _batch_message(self, first: Event, subscription: Subscription, max_batch: int) -> bytes:
        """``first`` and the events ready after it, serialized as one ``StreamEventsResponse``.

        Never waits for more: it takes what the subscription already holds,
        up to ``max_batch`` events and the batch's byte room, and stops at a
        notice. A lone event (the next one would not fit) is sent as ``event``.

        A ``StreamedEventBatch`` is its events each encoded as field 1, and an
        event's ``StreamEventsResponse`` is the event as field 1 too: the same
        bytes. So the batch's body is the cached single-event messages joined,
        with the ``batch`` field's tag and length before it, and an event
        streamed to many subscribers is still encoded once.
        """
        parts = [self._event_message(first)]
        size = len(parts[0])
        room = self._batch_room
        while len(parts) < max_batch:
            event = subscription.ready_event()
            if event is None:
                break
            data = self._event_message(event)
            if size + len(data) > room:
                break
            subscription.take_ready_event()
            parts.append(data)
            size += len(data)
        if len(parts) == 1:
            return parts[0]
        return _BATCH_TAG + _varint(size) + b"".join(parts)

    def _event_message(self, event: Event) -> bytes:
        """An event's serialized ``StreamEventsResponse``, built once for every stream."""
        cache = self._serialized
        data = cache.get(event.sequence)
        if data is None:
            data = trace_service_pb2.StreamEventsResponse(event=event_to_proto(event)).SerializeToString()
            cache[event.sequence] = data
            self._serialized_bytes += len(data)
            while len(cache) > _CONVERTED_CACHE or self._serialized_bytes > _CONVERTED_CACHE_BYTES:
                self._serialized_bytes -= len(cache.popitem(last=False)[1])
        return data

    def _stream_message(self, item: StreamItem) -> bytes:
        """The serialized ``StreamEventsResponse``: an event's is built once for every stream."""
        if isinstance(item, Event):
            return self._event_message(item)
        if isinstance(item, CaughtUp):
            message = trace_service_pb2.StreamEventsResponse(
                caught_up=trace_service_pb2.CaughtUp(sequence=item.sequence)
            )
        else:
            message = trace_service_pb2.StreamEventsResponse(missed=missed_to_proto(item))
        return message.SerializeToString()


def _varint(value: int) -> bytes:
    """``value`` as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fitting(events: Sequence[event_pb2.Event], room: int) -> int:
    """How many of ``events`` fit in ``room`` bytes of a response; at least one."""
    size = 0
    for index, event in enumerate(events):
        size += event.ByteSize() + _REPEATED_FRAMING
        if index and size > room:
            return index
    return len(events)


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
        # Ids as every RPC takes them (common.proto): an id no event can carry is a mistake, named.
        violations.extend(
            (
                f"filter.{field}[{index}]",
                f"an id is 1 to 128 characters of [A-Za-z0-9._:-], got {value[:40]!r}",
            )
            for index, value in enumerate(values)
            if not conventions.ID.fullmatch(value)
        )
    if message.worker_id and not _WORKER_ID.fullmatch(message.worker_id):
        violations.append(
            (
                "filter.worker_id",
                (
                    "a worker id is 1 to 160 characters of [A-Za-z0-9._:@-] (a worker name and the "
                    f"suffix the sidecar adds), got {message.worker_id[:40]!r}"
                ),
            )
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
