"""OpenTelemetry spans built from recorded events.

Spans are derived from the event log alone, so tracing works with whatever
the scheduler emits:

* one trace per workflow: its trace id is a hash of the workflow id, and
  ``WORKFLOW_SUBMITTED`` .. ``WORKFLOW_COMPLETED|FAILED|CANCELLED`` is the
  root span ``workflow <name>``;
* one span per task attempt, child of the workflow span: ``TASK_DISPATCHED``
  starts it, ``TASK_COMPLETED``, ``TASK_ATTEMPT_FAILED`` or ``TASK_CANCELLED``
  ends it with the task's state and failure. A timeout or a lost lease of a
  running attempt (``TASK_TIMED_OUT``, ``TASK_LEASE_EXPIRED``) is an event of
  its span, which ends at the ``TASK_ATTEMPT_FAILED`` that follows; a lease
  that expired with the task SCHEDULED again (the attempt was lost through
  no fault of its worker: a restart, an undelivered poll answer) ends it
  there. Should an attempt's end never come, the next attempt of its task,
  or its workflow's end, ends its span (marked ``are.span.unfinished``). A
  retry links to the previous attempt's span, whose id, when that span was
  not open here (a restart), is taken from the events of that attempt (they
  carry it) or asked of the ``attempt_span`` resolver;
* every other event becomes a span event of its attempt's span (or of the
  workflow's span, up to ``max_events_per_span``); the events a span's start
  and end stand for (dispatch, completion, submission, workflow completion)
  are that span's start, end and attributes rather than repeated events;
* LLM and tool calls reported by workers become child spans of the attempt
  named and attributed after the OpenTelemetry GenAI semantic conventions
  (``chat gpt-4o``, ``execute_tool search``; ``gen_ai.*`` attributes), unless
  the worker traced the call itself (the event carries its span id). The
  call's own attributes are on its span only: the attempt's span event for
  it says that it happened, not what it carried. A call reported after its
  attempt ended (workers may, for a few minutes) still nests under that
  attempt's span: the span ids of recently ended attempts are kept, and the
  optional ``attempt_span`` resolver is asked for older ones; a call whose
  attempt span is known nowhere nests under the workflow span rather than
  under a span that does not exist. A call longer than its end time since
  the epoch starts at the epoch. A call's ``span_id`` is the worker's own
  span only when it differs from its attempt's (the recorder fills in the
  attempt's span id when the worker gave none).

The workflow span is exported once, complete, when the workflow ends. When
its start was not seen by this builder (the sidecar restarted while the
workflow ran), the first event of the workflow seen here (its end at the
latest) opens its span, with the workflow's span id and the start, name and
trace context of its submission, found with the optional ``workflow_start``
resolver; the events of the workflow recorded before that one, which this
builder never saw, are replayed onto it in order from the event log with the
optional ``workflow_events`` resolver (the most recent ``max_events_per_span``
of them, span boundaries left out, as when seen), so the span has the events
of both sides of the restart. A workflow whose replayed events hold its
close ended before the restart (its span was exported then): its late
events open no span. For that reason :meth:`SpanBuilder.shutdown`
ends the attempts' spans still open (those attempts are run again, with new
spans, after a restart) but not the workflows': exporting one marked
unfinished and again when the workflow ends after the restart would make
two spans of one span id.

Every span is built under :data:`SPAN_LIMITS`, so no one attribute value,
and no span's count of attributes, events or links, is unbounded.

Ids follow what the producer recorded, so that the W3C trace context handed
to a worker names the very span exported here and the worker's own spans
nest under it:

* the trace id is the ``are.trace_id`` attribute (32 hex digits) of the
  workflow's ``WORKFLOW_SUBMITTED``/``WORKFLOW_FORKED`` event, looked up with
  the optional ``trace_context`` resolver when that event was not seen here
  (after a restart); ``are.parent_span_id`` (16 hex digits) there makes the
  workflow span a child of the submitting client's span;
* an attempt's span id is the ``span_id`` of its ``TASK_DISPATCHED`` event.

Where a producer sets neither, ids are derived from the workflow, task and
attempt ids (:func:`workflow_trace_id`, :func:`attempt_span_id`,
:func:`task_traceparent`), which a producer may equally use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from are_core.trace._ids import (
    TraceContextResolver,
    attempt_span_id,
    parse_hex_id,
    task_traceparent,
    trace_context_of,
    workflow_span_id,
    workflow_trace_id,
)
from are_core.trace._model import AttributeValue, Event

__all__ = [
    "SPAN_LIMITS",
    "AttemptSpanResolver",
    "SpanBuilder",
    "TraceContextResolver",
    "WorkflowEventsResolver",
    "WorkflowStartResolver",
    "attempt_span_id",
    "task_traceparent",
    "trace_context_of",
    "workflow_span_id",
    "workflow_trace_id",
]

_WORKFLOW_START = frozenset({"WORKFLOW_SUBMITTED", "WORKFLOW_FORKED"})
_WORKFLOW_END = frozenset({"WORKFLOW_COMPLETED", "WORKFLOW_FAILED", "WORKFLOW_CANCELLED", "WORKFLOW_DELETED"})
# The events that close a workflow, once each: its span is exported at one of them even if its start was
# not seen here (a restart). Not WORKFLOW_DELETED, which may come long after a closing event seen elsewhere.
_WORKFLOW_CLOSE = frozenset({"WORKFLOW_COMPLETED", "WORKFLOW_FAILED", "WORKFLOW_CANCELLED"})
_ATTEMPT_END = frozenset({"TASK_COMPLETED", "TASK_ATTEMPT_FAILED", "TASK_CANCELLED"})
# Ends the attempt only when the task is no longer RUNNING (re-queued); else TASK_ATTEMPT_FAILED follows.
_LEASE_EXPIRED = "TASK_LEASE_EXPIRED"
# A later attempt of the task is queued or started: an attempt of it still open here has ended.
_LATER_ATTEMPT = frozenset({"TASK_SCHEDULED", "TASK_DISPATCHED"})
_CALLS = frozenset({"LLM_CALL", "TOOL_CALL"})
# Events workers report: their span_id is the worker's own span when it differs from the attempt's.
_REPORTED = frozenset({"LLM_CALL", "TOOL_CALL", "WORKER_CUSTOM"})
# Events a span's own start and end stand for (their data is on the span): not repeated as span events.
_SPAN_BOUNDARIES = frozenset(
    {"TASK_DISPATCHED", "TASK_COMPLETED", "WORKFLOW_SUBMITTED", "WORKFLOW_COMPLETED"}
)
_SPAN_START_KEY = "are.span"

SPAN_LIMITS = SpanLimits(
    max_span_attributes=128,
    max_event_attributes=128,
    max_link_attributes=128,
    max_events=128,
    max_links=128,
    max_attribute_length=4096,
)
"""The limits every span is built under, whatever the ``OTEL_*_LIMIT`` variables say.

OpenTelemetry's default counts (128 attributes a span, event or link; 128
events and links a span), and string values cut to 4,096 characters (the
SDK's default is no cut): a reported attribute may be 16 KiB, and an OTLP
export must stay far below a collector's 4 MiB receive limit.
"""

AttemptSpanResolver = Callable[[str, str, int], "int | None"]
"""Given a workflow, task and attempt, the span id of that attempt's span, or None if unknown."""

WorkflowStartResolver = Callable[[str], "Event | None"]
"""Given a workflow id, the event that started it (``WORKFLOW_SUBMITTED``/``FORKED``), or None."""

WorkflowEventsResolver = Callable[[str, int, int], Sequence[Event]]
"""Given a workflow id, a sequence and a count, at most that many of the workflow's retained events
recorded before that sequence, the most recent ones, in sequence order."""


class _ChosenIds(IdGenerator):
    """Hands out the ids chosen for the next span, random ones otherwise."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()
        self.next_span_id: int | None = None
        self.next_trace_id: int | None = None

    def generate_span_id(self) -> int:
        chosen, self.next_span_id = self.next_span_id, None
        return chosen if chosen is not None else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        chosen, self.next_trace_id = self.next_trace_id, None
        return chosen if chosen is not None else self._random.generate_trace_id()


_AttemptKey = tuple[str, str, int]


class SpanBuilder:
    """An :class:`~are_core.trace.EventListener` that turns events into spans.

    Args:
        processor: Where finished spans go, e.g. a ``BatchSpanProcessor``
            around an OTLP exporter (its queue is bounded and exporting runs
            on its own thread, so the event loop never waits on the network).
        service_name: The ``service.name`` resource attribute.
        max_open_spans: Spans kept open at once; beyond it the oldest is
            ended early (marked ``are.span.evicted``) so memory stays bounded.
        max_events_per_span: Span events kept on a workflow's span (a 10,000-task
            fan-out schedules 10,000 tasks); OpenTelemetry's default limit.
        trace_context: Finds a workflow's trace context when its submission
            event was not seen by this builder (see the module docstring).
        attempt_span: Finds the span id of an attempt that ended before this
            builder started, or so long ago that it is no longer kept, for a
            call reported late.
        workflow_start: Finds the event that started a workflow whose start
            this builder did not see, so that its span is opened, and its
            end exports it.
        workflow_events: Finds the events of such a workflow recorded before
            the first one seen here, replayed onto its span once opened.
        max_ended_attempts: Span ids of ended attempts kept for the calls
            their workers report late.
    """

    def __init__(
        self,
        processor: SpanProcessor,
        *,
        service_name: str = "are-sidecar",
        max_open_spans: int = 100_000,
        max_events_per_span: int = 128,
        trace_context: TraceContextResolver | None = None,
        attempt_span: AttemptSpanResolver | None = None,
        workflow_start: WorkflowStartResolver | None = None,
        workflow_events: WorkflowEventsResolver | None = None,
        max_ended_attempts: int = 65_536,
    ) -> None:
        self._ids = _ChosenIds()
        resource = Resource.create({"service.name": service_name})
        self._provider = TracerProvider(resource=resource, id_generator=self._ids, span_limits=SPAN_LIMITS)
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("are.trace")
        self._workflows: OrderedDict[str, otel_trace.Span] = OrderedDict()
        self._attempts: OrderedDict[_AttemptKey, otel_trace.Span] = OrderedDict()
        # (workflow, task) -> (latest attempt, its span id): for retries' links and late events.
        self._latest: OrderedDict[str, dict[str, tuple[int, int]]] = OrderedDict()
        # Span events added to each open workflow span, capped like the SDK's own limit.
        self._workflow_events: dict[str, int] = {}
        self.max_events_per_span = max_events_per_span
        # workflow -> (trace id, parent span id): bounded, refilled by the resolver.
        self._contexts: OrderedDict[str, tuple[int, int | None]] = OrderedDict()
        self._resolve = trace_context
        self._resolve_attempt = attempt_span
        self._resolve_start = workflow_start
        self._resolve_events = workflow_events
        # Workflows whose start was not seen here nor found by the resolver -> the sequence of their first
        # event seen here: asked again at their end only.
        self._unknown: OrderedDict[str, int] = OrderedDict()
        # The sequence of the first event this builder saw: it saw none of those before.
        self._first_sequence: int | None = None
        # (workflow, task, attempt) -> span id of attempts ended here: a late call's parent.
        self._ended: OrderedDict[_AttemptKey, int] = OrderedDict()
        self.max_ended_attempts = max_ended_attempts
        # Workflows whose span was exported here (ended or evicted): never exported twice.
        self._closed: OrderedDict[str, None] = OrderedDict()
        self.max_open_spans = max_open_spans
        self.dropped_events = 0
        """Events that belonged to no open span (their span ended or never started here)."""

    @property
    def open_spans(self) -> int:
        """Workflow and attempt spans currently open."""
        return len(self._workflows) + len(self._attempts)

    def on_events(self, events: Sequence[Event]) -> None:
        """Updates the spans with committed events, in order."""
        if self._first_sequence is None and events:
            self._first_sequence = events[0].sequence
        for event in events:
            self._on_event(event)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Exports every finished span now; True when done in time."""
        return self._provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Ends the open attempt spans (marked unfinished), flushes and stops the processor.

        Open workflow spans are not exported: each is, once and complete, when
        its workflow ends after a restart (see the module docstring).
        """
        for span in self._attempts.values():
            span.set_attribute("are.span.unfinished", value=True)
            span.end()
        self._attempts.clear()
        self._workflows.clear()
        self._workflow_events.clear()
        self._provider.shutdown()

    # Event handling

    def _on_event(self, event: Event) -> None:
        kind = event.event_type
        if not event.workflow_id:
            return  # worker connections, cache and router calls outside a workflow: no trace
        self._open_unseen(event)
        worker_span = kind in _REPORTED and self._worker_span(event)
        if kind in _LATER_ATTEMPT:
            self._end_earlier_attempt(event)
        elif event.span_id and event.task_id and event.attempt and kind not in _REPORTED:
            self._learn_attempt_span(event)
        if kind in _WORKFLOW_START:
            self._start_workflow(event)
        elif kind == "TASK_DISPATCHED":
            self._start_attempt(event)
        elif kind in _CALLS and not worker_span:
            self._call_span(event)
        if kind not in _SPAN_BOUNDARIES:
            # A call's own attributes are on its call span: not copied on the attempt's span as well.
            with_attributes = not (kind in _CALLS and not worker_span)
            self._add_span_event(event, with_attributes=with_attributes, worker_span=worker_span)
        if kind in _ATTEMPT_END or (kind == _LEASE_EXPIRED and event.task_state not in {"", "RUNNING"}):
            self._end_attempt(event)
        elif kind in _WORKFLOW_END:
            self._end_workflow(event)

    def _open_unseen(self, event: Event) -> None:
        """Opens the span of ``event``'s workflow if no span of it is open here (see the module docstring).

        Not at its start (which opens it), nor at a deletion (long after its
        end, perhaps); a workflow whose start was not found is asked about
        again at its end only.
        """
        kind = event.event_type
        if event.workflow_id in self._workflows or kind in _WORKFLOW_START or kind == "WORKFLOW_DELETED":
            return
        if kind in _WORKFLOW_CLOSE or event.workflow_id not in self._unknown:
            self._start_unseen_workflow(event)

    def _worker_span(self, event: Event) -> bool:
        """Whether a reported event's span id is the worker's own span, not its attempt's."""
        if not event.span_id:
            return False
        key = (event.workflow_id, event.task_id, event.attempt)
        span = self._attempts.get(key)
        attempt_span = span.get_span_context().span_id if span is not None else self._ended_attempt_span(key)
        return parse_hex_id(event.span_id, 16) != attempt_span

    def _learn_attempt_span(self, event: Event) -> None:
        """Keeps the span id an event names for an attempt whose span is not open here (links, late calls)."""
        key = (event.workflow_id, event.task_id, event.attempt)
        if key in self._attempts or key in self._ended:
            return
        span_id = parse_hex_id(event.span_id, 16)
        if span_id:
            self._remember_ended(key, span_id)

    def _end_earlier_attempt(self, event: Event) -> None:
        """Ends the span of an earlier attempt of the task still open here: its end was not seen."""
        latest = self._latest_attempt(event.workflow_id, event.task_id)
        if latest is None or latest[0] >= event.attempt:
            return
        key = (event.workflow_id, event.task_id, latest[0])
        span = self._attempts.pop(key, None)
        if span is not None:
            self._end_unfinished(key, span, event.event_time_unix_ns)

    def _end_unfinished(self, key: _AttemptKey, span: otel_trace.Span, end_ns: int) -> None:
        self._remember_ended(key, span.get_span_context().span_id)
        span.set_attribute("are.span.unfinished", value=True)
        span.end(end_time=end_ns)

    def _add_span_event(
        self, event: Event, *, with_attributes: bool = True, worker_span: bool = False
    ) -> None:
        span = self._attempt_span(event)
        if span is None:
            span = self._workflows.get(event.workflow_id)
            count = self._workflow_events.get(event.workflow_id, 0)
            if span is None or count >= self.max_events_per_span:
                self.dropped_events += 1
                return
            self._workflow_events[event.workflow_id] = count + 1
        name = f"are.{event.event_type.lower()}"
        # A call's own attributes are on its call span: not copied here as well.
        span.add_event(
            name,
            _event_attributes(event, with_attributes=with_attributes, worker_span=worker_span),
            timestamp=event.event_time_unix_ns,
        )

    def _trace_id(self, workflow_id: str) -> int:
        context = self._contexts.get(workflow_id)
        if context is None:
            resolved = self._resolve(workflow_id) if self._resolve is not None else None
            # Remembered either way, so an unknown workflow costs one lookup, not one per event.
            context = resolved if resolved is not None else (workflow_trace_id(workflow_id), None)
            self._remember_context(workflow_id, context)
        return context[0]

    def _remember_context(self, workflow_id: str, context: tuple[int, int | None]) -> None:
        self._contexts[workflow_id] = context
        self._contexts.move_to_end(workflow_id)
        while len(self._contexts) > self.max_open_spans:
            self._contexts.popitem(last=False)

    def _remote(self, trace_id: int, span_id: int) -> Context:
        span = NonRecordingSpan(
            SpanContext(
                trace_id=trace_id, span_id=span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
            )
        )
        return otel_trace.set_span_in_context(span)

    def _parent_context(self, workflow_id: str) -> Context:
        parent = self._workflows.get(workflow_id)
        if parent is not None:
            return otel_trace.set_span_in_context(parent)
        # The root span is not open here: still nest under its ids.
        return self._remote(self._trace_id(workflow_id), workflow_span_id(workflow_id))

    def _start_workflow(self, event: Event) -> None:
        workflow_id = event.workflow_id
        if workflow_id in self._workflows:
            return
        context = trace_context_of(event.attributes)
        if context is not None:
            self._remember_context(workflow_id, context)
        trace_id = self._trace_id(workflow_id)
        resolved = self._contexts.get(workflow_id)
        parent_span = resolved[1] if resolved is not None else None
        name = event.attributes.get("are.workflow.name") or event.name or workflow_id
        self._ids.next_trace_id = trace_id
        self._ids.next_span_id = workflow_span_id(workflow_id)
        span = self._tracer.start_span(
            f"workflow {name}",
            context=self._remote(trace_id, parent_span)
            if parent_span is not None
            else otel_trace.set_span_in_context(otel_trace.INVALID_SPAN),
            kind=SpanKind.INTERNAL,
            attributes={"are.workflow.id": workflow_id, **_scalar(event.attributes)},
            start_time=event.event_time_unix_ns,
        )
        self._workflows[workflow_id] = span
        self._bound()

    def _start_attempt(self, event: Event) -> None:
        key = (event.workflow_id, event.task_id, event.attempt)
        if key in self._attempts:
            return
        links = []
        previous = self._latest_attempt(event.workflow_id, event.task_id)
        if previous is None and event.attempt > 1:
            # Its previous attempt's span was not open here (a restart): its events named it, or ask.
            before = (event.workflow_id, event.task_id, event.attempt - 1)
            span_id = self._ended_attempt_span(before)
            previous = (before[2], span_id) if span_id is not None else None
        if previous is not None and previous[0] < event.attempt:
            context = SpanContext(
                trace_id=self._trace_id(event.workflow_id),
                span_id=previous[1],
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            links.append(Link(context, {"are.link": "previous_attempt"}))
        span_id = parse_hex_id(event.span_id, 16) or attempt_span_id(*key)
        self._ids.next_span_id = span_id
        attributes: dict[str, AttributeValue] = {
            "are.workflow.id": event.workflow_id,
            "are.task.id": event.task_id,
            "are.attempt": event.attempt,
        }
        if event.worker_id:
            attributes["are.worker.id"] = event.worker_id
        attributes.update(_scalar(event.attributes))
        span = self._tracer.start_span(
            f"task {event.task_id}",
            context=self._parent_context(event.workflow_id),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
            start_time=event.event_time_unix_ns,
        )
        self._attempts[key] = span
        tasks = self._latest.get(event.workflow_id)
        if tasks is None:
            tasks = self._latest[event.workflow_id] = {}
        tasks[event.task_id] = (event.attempt, span_id)
        self._bound()

    def _latest_attempt(self, workflow_id: str, task_id: str) -> tuple[int, int] | None:
        tasks = self._latest.get(workflow_id)
        return tasks.get(task_id) if tasks is not None else None

    def _attempt_span(self, event: Event) -> otel_trace.Span | None:
        if not event.task_id:
            return None
        latest = self._latest_attempt(event.workflow_id, event.task_id)
        attempt = event.attempt or (latest[0] if latest is not None else 0)
        return self._attempts.get((event.workflow_id, event.task_id, attempt))

    def _ended_attempt_span(self, key: _AttemptKey) -> int | None:
        """The span id of an attempt that is not open here, or None when it is known nowhere."""
        span_id = self._ended.get(key)
        if span_id is not None:
            return span_id
        latest = self._latest_attempt(key[0], key[1])
        if latest is not None and latest[0] == key[2]:
            return latest[1]
        if self._resolve_attempt is None:
            return None
        span_id = self._resolve_attempt(*key)
        if span_id is not None:
            self._remember_ended(key, span_id)  # its worker may report more calls: one lookup
        return span_id

    def _remember_ended(self, key: _AttemptKey, span_id: int) -> None:
        self._ended[key] = span_id
        self._ended.move_to_end(key)
        while len(self._ended) > self.max_ended_attempts:
            self._ended.popitem(last=False)

    def _call_span(self, event: Event) -> None:
        key = (event.workflow_id, event.task_id, event.attempt)
        parent = self._attempts.get(key)
        if parent is not None:
            context = otel_trace.set_span_in_context(parent)
        else:
            span_id = self._ended_attempt_span(key)
            # Known nowhere: under the workflow's span, which exists, not under an id that does not.
            context = (
                self._remote(self._trace_id(event.workflow_id), span_id)
                if span_id is not None
                else self._parent_context(event.workflow_id)
            )
        attributes: dict[str, AttributeValue] = {
            "are.workflow.id": event.workflow_id,
            "are.task.id": event.task_id,
            "are.attempt": event.attempt,
        }
        if event.event_type == "LLM_CALL":
            operation = str(event.attributes.get("gen_ai.operation.name", "chat"))
            model = str(event.attributes.get("gen_ai.request.model", event.name))
            name = f"{operation} {model}".strip()
            attributes["gen_ai.operation.name"] = operation
            if model:
                attributes["gen_ai.request.model"] = model
            if event.usage is not None:
                attributes["gen_ai.usage.input_tokens"] = event.usage.input_tokens
                attributes["gen_ai.usage.output_tokens"] = event.usage.output_tokens
                attributes["are.cost_micro_usd"] = event.usage.cost_micro_usd
        else:
            tool = str(event.attributes.get("gen_ai.tool.name", event.name))
            name = f"execute_tool {tool}".strip()
            attributes["gen_ai.operation.name"] = "execute_tool"
            if tool:
                attributes["gen_ai.tool.name"] = tool
        attributes.update(_scalar(event.attributes))
        end = max(event.event_time_unix_ns, 0)
        # A call longer than its end since the epoch starts at the epoch: OTLP times are unsigned.
        start = max(end - (event.duration_ns or 0), 0)
        span = self._tracer.start_span(
            name, context=context, kind=SpanKind.CLIENT, attributes=attributes, start_time=start
        )
        if event.failure is not None:
            span.set_attribute("error.type", event.failure.type or "_OTHER")
            span.set_status(Status(StatusCode.ERROR, event.failure.message))
        span.end(end_time=max(start, end))

    def _end_attempt(self, event: Event) -> None:
        key = (event.workflow_id, event.task_id, event.attempt)
        span = self._attempts.pop(key, None)
        if span is None:
            return
        self._remember_ended(key, span.get_span_context().span_id)
        if event.usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", event.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", event.usage.output_tokens)
            span.set_attribute("are.cost_micro_usd", event.usage.cost_micro_usd)
        if event.task_state:
            span.set_attribute("are.task.state", event.task_state)
        if event.event_type == "TASK_COMPLETED":
            span.set_status(Status(StatusCode.OK))
        elif event.event_type == _LEASE_EXPIRED:
            reason = f": {event.name}" if event.name else ""
            span.set_status(Status(StatusCode.ERROR, f"the attempt's lease expired{reason}"))
        else:
            failure = event.failure
            if failure is not None and failure.type:
                span.set_attribute("error.type", failure.type)
            span.set_status(Status(StatusCode.ERROR, failure.message if failure else event.event_type))
        span.end(end_time=event.event_time_unix_ns)

    def _end_workflow(self, event: Event) -> None:
        workflow_id = event.workflow_id
        if event.event_type in _WORKFLOW_CLOSE:
            self._end_open_attempts(event)
        span = self._workflows.pop(workflow_id, None)
        self._workflow_events.pop(workflow_id, None)
        if span is None:
            return
        self._remember_closed(workflow_id)
        if event.workflow_state:
            span.set_attribute("are.workflow.state", event.workflow_state)
        if event.usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", event.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", event.usage.output_tokens)
            span.set_attribute("are.cost_micro_usd", event.usage.cost_micro_usd)
        if event.event_type == "WORKFLOW_FAILED":
            span.set_status(
                Status(StatusCode.ERROR, event.failure.message if event.failure else "workflow failed")
            )
        elif event.event_type == "WORKFLOW_COMPLETED":
            span.set_status(Status(StatusCode.OK))
        span.end(end_time=event.event_time_unix_ns)
        self._latest.pop(event.workflow_id, None)

    def _end_open_attempts(self, event: Event) -> None:
        """Ends the attempt spans of a closing workflow still open here: no end of theirs will come."""
        for task_id, (attempt, _) in (self._latest.get(event.workflow_id) or {}).items():
            key = (event.workflow_id, task_id, attempt)
            span = self._attempts.pop(key, None)
            if span is not None:
                self._end_unfinished(key, span, event.event_time_unix_ns)

    def _start_unseen_workflow(self, event: Event) -> None:
        """Opens the span of a workflow whose start this builder did not see, with the events it missed.

        Asked at the first event of the workflow seen here (then at its end
        only, if its start was not found), so that its span gets the events
        of both sides of a restart and its end exports it.
        """
        workflow_id = event.workflow_id
        if workflow_id in self._closed or self._resolve_start is None:
            return  # exported here already (ended, or evicted), or no way to know its start
        # Events from the first one seen here were handled as they came: only those before are replayed.
        first_seen = self._unknown.get(workflow_id, event.sequence)
        missed = self._missed_events(workflow_id, first_seen)
        if any(e.event_type in _WORKFLOW_CLOSE for e in missed):
            self._remember_closed(workflow_id)  # it ended before: a late event, its span exported then
            return
        start = self._resolve_start(workflow_id)
        if start is None or start.workflow_id != workflow_id or start.event_type not in _WORKFLOW_START:
            self._remember_unknown(workflow_id, first_seen)
            return
        self._unknown.pop(workflow_id, None)
        self._start_workflow(start)
        if workflow_id not in self._workflows:
            return  # evicted at once (max_open_spans)
        for missed_event in missed:
            self._replay(missed_event)

    def _missed_events(self, workflow_id: str, before_sequence: int) -> Sequence[Event]:
        """The workflow's retained events before a sequence, the most recent ``max_events_per_span``."""
        if self._resolve_events is None or self.max_events_per_span < 1:
            return ()
        found = self._resolve_events(workflow_id, before_sequence, self.max_events_per_span)
        missed = [e for e in found if e.workflow_id == workflow_id and e.sequence < before_sequence]
        missed.sort(key=lambda e: e.sequence)
        return missed[-self.max_events_per_span :]

    def _replay(self, event: Event) -> None:
        """Adds a missed event to its workflow's span as it would have been, had it been seen here."""
        kind = event.event_type
        if kind in _SPAN_BOUNDARIES:
            return  # a span's start or end, not a span event
        key = (event.workflow_id, event.task_id, event.attempt)
        seen = self._first_sequence is not None and event.sequence >= self._first_sequence
        if seen and event.task_id and (key in self._attempts or key in self._ended):
            return  # seen here on its attempt's span (the workflow was forgotten, then seen again)
        self._add_span_event(event, with_attributes=kind not in _CALLS)

    def _remember_unknown(self, workflow_id: str, first_seen: int) -> None:
        self._unknown[workflow_id] = first_seen
        self._unknown.move_to_end(workflow_id)
        while len(self._unknown) > self.max_open_spans:
            self._unknown.popitem(last=False)

    def _remember_closed(self, workflow_id: str) -> None:
        self._closed[workflow_id] = None
        self._closed.move_to_end(workflow_id)
        while len(self._closed) > self.max_open_spans:
            self._closed.popitem(last=False)

    def _bound(self) -> None:
        while self.open_spans > self.max_open_spans:
            spans: OrderedDict[_AttemptKey, otel_trace.Span] | OrderedDict[str, otel_trace.Span]
            spans = self._attempts or self._workflows
            key, span = spans.popitem(last=False)
            if isinstance(key, str):
                self._workflow_events.pop(key, None)
                self._remember_closed(key)
            span.set_attribute("are.span.evicted", value=True)
            span.end()
        while len(self._latest) > self.max_open_spans:
            self._latest.popitem(last=False)


def _scalar(attributes: dict[str, AttributeValue]) -> dict[str, AttributeValue]:
    return {k: v for k, v in attributes.items() if not k.startswith(_SPAN_START_KEY)}


def _event_attributes(
    event: Event, *, with_attributes: bool = True, worker_span: bool = False
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {"are.sequence": event.sequence}
    optional: dict[str, AttributeValue] = {
        "are.task.id": event.task_id,
        "are.attempt": event.attempt,
        "are.worker.id": event.worker_id,
        "are.name": event.name,
        "are.task.state": event.task_state,
        "are.workflow.state": event.workflow_state,
        # Only a worker's own span: an attempt's span id is the span the event is on, or its parent's.
        "are.worker_span_id": event.span_id if worker_span else "",
    }
    attributes.update({k: v for k, v in optional.items() if v})
    if event.duration_ns is not None:
        attributes["are.duration_ms"] = event.duration_ns / 1e6
    if event.failure is not None:
        attributes["are.failure.message"] = event.failure.message[:1024]
        if event.failure.type:
            attributes["error.type"] = event.failure.type
    if event.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = event.usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = event.usage.output_tokens
        attributes["are.cost_micro_usd"] = event.usage.cost_micro_usd
    if with_attributes:
        attributes.update(event.attributes)
    return attributes
