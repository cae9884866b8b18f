"""The span of a workflow that lived across a restart has the events of both sides (:class:`SpanBuilder`).

The defect this pins: a builder that did not see a workflow's start (the
sidecar restarted while it ran) exported its span at its end only, with no
events: those recorded before the restart were never seen by it, and those
after found no open span (counted in ``dropped_events``). The first event of
such a workflow now opens its span, found by the ``workflow_start``
resolver, and replays onto it the events the ``workflow_events`` resolver
reads from the event log (the recorder's ``recent_workflow_events``, as the sidecar passes it).
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from are_core.trace import Event, EventDraft, EventFilter, SpanBuilder, workflow_span_id
from tests.unit.trace._support import Harness, MakeHarness, draft

WF = "wf-across"


def _events_resolver(harness: Harness) -> Callable[[str, int, int], list[Event]]:
    """The sidecar's reader: the recorder's most recent events of a workflow (8 MiB at most, as there)."""
    return lambda workflow_id, before, limit: harness.recorder.recent_workflow_events(
        workflow_id, before, limit, 8 << 20
    )


def _submitted(wf: str = WF) -> EventDraft:
    return draft("WORKFLOW_SUBMITTED", workflow_id=wf, task_id="", attributes={"are.workflow.name": "across"})


def _start_resolver(harness: Harness, asked: list[str]) -> Callable[[str], Event | None]:
    """The scheduler's answer, taken here from the submission event in the log."""

    def resolve(workflow_id: str) -> Event | None:
        asked.append(workflow_id)
        page = harness.recorder.list_events(
            EventFilter(workflow_ids=frozenset({workflow_id}), event_types=frozenset({"WORKFLOW_SUBMITTED"}))
        )
        return page.events[0] if page.events else None

    return resolve


def _restarted(
    harness: Harness, *, asked: list[str] | None = None, max_events_per_span: int = 128
) -> tuple[SpanBuilder, InMemorySpanExporter]:
    """A builder as a restarted sidecar makes it: it sees only the events recorded from now on."""
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(
        SimpleSpanProcessor(exporter),
        workflow_start=_start_resolver(harness, asked if asked is not None else []),
        workflow_events=_events_resolver(harness),
        max_events_per_span=max_events_per_span,
    )
    harness.recorder.add_listener(builder)
    return builder, exporter


def _root(exporter: InMemorySpanExporter, wf: str = WF) -> ReadableSpan:
    (root,) = [span for span in exporter.get_finished_spans() if span.context.span_id == workflow_span_id(wf)]
    return root


def _sequences(span: ReadableSpan) -> list[int]:
    return [int(str((event.attributes or {})["are.sequence"])) for event in span.events]


async def test_the_workflow_span_has_the_events_before_and_after_the_restart_in_order(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    # Before the restart: seen by a builder that dies with the sidecar (SIGKILL: nothing exported).
    lost = SpanBuilder(SimpleSpanProcessor(InMemorySpanExporter()))
    harness.recorder.add_listener(lost)
    (submitted,) = await harness.emit(_submitted())
    before = await harness.emit(
        draft("TASK_SCHEDULED", workflow_id=WF, task_id="a", attempt=1),
        draft("TASK_SCHEDULED", workflow_id=WF, task_id="b", attempt=1),
        draft("TASK_DISPATCHED", workflow_id=WF, task_id="a", attempt=1, span_id="b7ad6b7169203331"),
        draft("TASK_CACHE_MISS", workflow_id=WF, task_id="a", attempt=1),
        draft("TASK_SCHEDULED", workflow_id="wf-other", task_id="x", attempt=1),
    )
    harness.recorder._listeners.remove(lost)  # the process died, its listener with it

    asked: list[str] = []
    builder, exporter = _restarted(harness, asked=asked)
    after = await harness.emit(
        draft("TASK_LEASE_EXPIRED", workflow_id=WF, task_id="a", attempt=1, task_state="SCHEDULED"),
        draft("TASK_DISPATCHED", workflow_id=WF, task_id="a", attempt=2, span_id="5d1c903653196161"),
        draft("TASK_CACHE_HIT", workflow_id=WF, task_id="a", attempt=2),
        draft("TASK_COMPLETED", workflow_id=WF, task_id="a", attempt=2, task_state="COMPLETED"),
        draft("TASK_SKIPPED", workflow_id=WF, task_id="b", attempt=1),
    )
    (end,) = await harness.emit(
        draft("WORKFLOW_COMPLETED", workflow_id=WF, task_id="", workflow_state="COMPLETED")
    )

    root = _root(exporter)
    assert root.name == "workflow across"
    assert root.start_time == submitted.event_time_unix_ns
    assert root.end_time == end.event_time_unix_ns
    # Before the restart: not the submission nor the dispatch (span boundaries), nor another workflow's.
    # After: the lease expiry (the attempt's span was not open here) and the skip; attempt 2's events are
    # on its own span.
    scheduled_a, scheduled_b, _dispatched, cache_miss, _other = before
    expired, _dispatched_2, cache_hit, _completed, skipped = after
    expected = [scheduled_a, scheduled_b, cache_miss, expired, skipped]
    assert _sequences(root) == [event.sequence for event in expected]
    assert [event.name for event in root.events] == [f"are.{e.event_type.lower()}" for e in expected]
    (attempt,) = [span for span in exporter.get_finished_spans() if span.name == "task a"]
    assert _sequences(attempt) == [cache_hit.sequence]
    assert builder.dropped_events == 0
    assert asked == [WF]  # once, at the first event seen of it
    builder.shutdown()


async def test_the_replay_is_bounded_to_the_most_recent_events_and_the_span_limit(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    await harness.emit(_submitted())
    before = await harness.emit_many(
        20, lambda i: draft("TASK_SCHEDULED", workflow_id=WF, task_id=f"t{i}", attempt=1)
    )
    builder, exporter = _restarted(harness, max_events_per_span=5)
    await harness.emit(draft("TASK_SKIPPED", workflow_id=WF, task_id="t0", attempt=1))
    await harness.emit(draft("WORKFLOW_FAILED", workflow_id=WF, task_id=""))

    root = _root(exporter)
    assert _sequences(root) == [event.sequence for event in before[-5:]]
    assert builder.dropped_events == 2  # the span was full: the skip and the failure after it, counted
    builder.shutdown()


async def test_events_of_attempts_seen_here_are_not_replayed_twice(make_harness: MakeHarness) -> None:
    harness = make_harness()
    await harness.emit(_submitted())
    (scheduled,) = await harness.emit(draft("TASK_SCHEDULED", workflow_id=WF, task_id="a", attempt=1))
    known = {"yet": False}
    asked: list[str] = []
    plain = _start_resolver(harness, asked)
    # The scheduler does not know the workflow at first (its start is asked again at its end only).
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(
        SimpleSpanProcessor(exporter),
        workflow_start=lambda wf: plain(wf) if known["yet"] else asked.append(wf),
        workflow_events=_events_resolver(harness),
    )
    harness.recorder.add_listener(builder)
    await harness.emit(draft("TASK_DISPATCHED", workflow_id=WF, task_id="a", attempt=1))
    (hit,) = await harness.emit(draft("TASK_CACHE_HIT", workflow_id=WF, task_id="a", attempt=1))
    await harness.emit(draft("TASK_COMPLETED", workflow_id=WF, task_id="a", attempt=1))
    known["yet"] = True
    await harness.emit(draft("WORKFLOW_COMPLETED", workflow_id=WF, task_id=""))

    assert asked == [WF, WF]  # its first event, then its end: not once an event
    root = _root(exporter)
    assert _sequences(root) == [scheduled.sequence]
    (attempt,) = [span for span in exporter.get_finished_spans() if span.name == "task a"]
    assert _sequences(attempt) == [hit.sequence]
    builder.shutdown()


async def test_a_late_event_of_a_workflow_ended_before_the_restart_opens_no_span(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    await harness.emit(_submitted())
    await harness.emit(draft("WORKFLOW_COMPLETED", workflow_id=WF, task_id=""))
    asked: list[str] = []
    builder, exporter = _restarted(harness, asked=asked)
    await harness.emit(draft("WORKER_CUSTOM", workflow_id=WF, task_id="a", attempt=1, name="late"))
    await harness.emit(draft("WORKER_CUSTOM", workflow_id=WF, task_id="a", attempt=1, name="later"))
    await harness.emit(draft("WORKFLOW_DELETED", workflow_id=WF, task_id=""))

    assert builder.open_spans == 0
    assert exporter.get_finished_spans() == ()
    assert asked == []  # its close was in the log: its span was exported before the restart
    builder.shutdown()
