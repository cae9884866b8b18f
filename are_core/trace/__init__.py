"""Trace: the events every transition produces, kept, streamed and exported.

The shared event model and the :class:`EventSink` seam are defined in
``_model``. :class:`EventRecorder` implements the sink: it stores events in
LMDB with bounded retention, pages through them (``list_events``), fans
committed events out to live :class:`Subscription` streams with bounded
buffers, and hands them to listeners such as :class:`SpanBuilder`, which turns
them into OpenTelemetry spans.

Exceptions::

    TraceError
    ├── InvalidPageTokenError      a page token that is malformed or of another filter
    ├── TooManySubscribersError    the live-stream bound is reached
    └── SubscriptionClosedError    the recorder shut down under a live stream
"""

from typing import TYPE_CHECKING, Any

from are_core.trace._errors import (
    InvalidPageTokenError,
    SubscriptionClosedError,
    TooManySubscribersError,
    TraceError,
)
from are_core.trace._filter import EventFilter, decode_page_token, encode_page_token
from are_core.trace._ids import (
    TraceContextResolver,
    attempt_span_id,
    task_traceparent,
    trace_context_of,
    workflow_span_id,
    workflow_trace_id,
)
from are_core.trace._model import (
    AttributeValue,
    Event,
    EventDraft,
    EventSink,
    EventUsage,
    FailureInfo,
    record_in_slices,
)
from are_core.trace._recorder import EVENT_TABLES, EventListener, EventPage, EventRecorder
from are_core.trace._stream import CaughtUp, EventsMissed, StreamItem, Subscription

if TYPE_CHECKING:
    from are_core.trace._otel import SpanBuilder


def __getattr__(name: str) -> Any:
    # The OpenTelemetry SDK loads with the span builder only: a sidecar that
    # exports no spans starts without it (some 25 ms of every start).
    if name == "SpanBuilder":
        from are_core.trace._otel import SpanBuilder  # noqa: PLC0415

        return SpanBuilder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EVENT_TABLES",
    "AttributeValue",
    "CaughtUp",
    "Event",
    "EventDraft",
    "EventFilter",
    "EventListener",
    "EventPage",
    "EventRecorder",
    "EventSink",
    "EventUsage",
    "EventsMissed",
    "FailureInfo",
    "InvalidPageTokenError",
    "SpanBuilder",
    "StreamItem",
    "Subscription",
    "SubscriptionClosedError",
    "TooManySubscribersError",
    "TraceContextResolver",
    "TraceError",
    "attempt_span_id",
    "decode_page_token",
    "encode_page_token",
    "record_in_slices",
    "task_traceparent",
    "trace_context_of",
    "workflow_span_id",
    "workflow_trace_id",
]
