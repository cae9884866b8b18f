"""Where an attempt's span ends, and what a re-run attempt links to (:class:`SpanBuilder`).

Each test pins a defect a review found:

* a timeout (TASK_TIMED_OUT) or a lost lease (TASK_LEASE_EXPIRED) ended the
  attempt's span with the task RUNNING, and the TASK_ATTEMPT_FAILED that
  follows it (event.proto) fell on the workflow span: the attempt's span
  never said BACKING_OFF or FAILED, nor carried the failure;
* an attempt re-queued after a restart linked to nothing: the span id of the
  attempt before it, named by the events of that attempt, was not used;
* a call the worker did not trace carries its attempt's span id (event.proto
  Event.span_id), and was taken for one the worker traced itself: no call
  span;
* an attempt whose end never came stayed open until evicted.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from are_core.trace import EventDraft, FailureInfo, SpanBuilder
from tests.unit.trace._support import Harness, MakeHarness, draft

ATTEMPT_1 = "b7ad6b7169203331"
ATTEMPT_2 = "5d1c903653196161"
WORKER_SPAN = "0123456789abcdef"


def _builder(harness: Harness, **options: object) -> tuple[SpanBuilder, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(exporter), **options)  # type: ignore[arg-type]
    harness.recorder.add_listener(builder)
    return builder, exporter


def _spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {
        f"{span.name}#{(span.attributes or {}).get('are.attempt', '')}": span
        for span in exporter.get_finished_spans()
    }


def _event_names(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


def _dispatched(wf: str, attempt: int, span_id: str) -> EventDraft:
    return draft(
        "TASK_DISPATCHED", workflow_id=wf, task_id="t", attempt=attempt, task_state="RUNNING", span_id=span_id
    )


async def test_a_timeout_is_an_event_of_the_attempt_span_which_ends_at_the_attempt_failed(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    builder, exporter = _builder(harness)
    wf = "wf-timeout"
    failure = FailureInfo(message="attempt 1 exceeded start_to_close_timeout", type="TIMEOUT", kind="TIMEOUT")
    await harness.emit(draft("WORKFLOW_SUBMITTED", workflow_id=wf, task_id="", workflow_state="RUNNING"))
    await harness.emit(_dispatched(wf, 1, ATTEMPT_1))
    await harness.emit(
        draft(
            "TASK_TIMED_OUT",
            workflow_id=wf,
            task_id="t",
            attempt=1,
            task_state="RUNNING",
            failure=failure,
            span_id=ATTEMPT_1,
        ),
        draft(
            "TASK_ATTEMPT_FAILED",
            workflow_id=wf,
            task_id="t",
            attempt=1,
            task_state="BACKING_OFF",
            failure=failure,
            span_id=ATTEMPT_1,
        ),
        draft("TASK_RETRY_SCHEDULED", workflow_id=wf, task_id="t", attempt=2, task_state="BACKING_OFF"),
    )
    (attempt,) = exporter.get_finished_spans()
    assert attempt.attributes is not None
    assert attempt.attributes["are.task.state"] == "BACKING_OFF"  # was RUNNING: ended at the timeout
    assert attempt.attributes["error.type"] == "TIMEOUT"
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.status.description == failure.message
    assert _event_names(attempt) == ["are.task_timed_out", "are.task_attempt_failed"]
    assert attempt.end_time == harness.clock.now_ns
    # The failure is not a span event of the workflow span (only the retry, of no attempt span yet).
    await harness.emit(draft("WORKFLOW_FAILED", workflow_id=wf, task_id="", workflow_state="FAILED"))
    workflow = _spans(exporter)["workflow wf-timeout#"]
    assert _event_names(workflow) == ["are.task_retry_scheduled", "are.workflow_failed"]
    assert builder.open_spans == 0
    builder.shutdown()


async def test_a_missed_heartbeat_keeps_the_span_open_through_its_lease_until_the_attempt_failed(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    builder, exporter = _builder(harness)
    wf = "wf-heartbeat"
    failure = FailureInfo(
        message="missed its heartbeat", type="TIMEOUT", kind="TIMEOUT", timeout_type="HEARTBEAT"
    )
    await harness.emit(_dispatched(wf, 1, ATTEMPT_1))
    await harness.emit(
        draft(
            "TASK_TIMED_OUT", workflow_id=wf, task_id="t", attempt=1, task_state="RUNNING", failure=failure
        ),
        draft(
            "TASK_LEASE_EXPIRED", workflow_id=wf, task_id="t", attempt=1, task_state="RUNNING", worker_id="w"
        ),
    )
    assert exporter.get_finished_spans() == ()  # ended at neither
    await harness.emit(
        draft(
            "TASK_ATTEMPT_FAILED",
            workflow_id=wf,
            task_id="t",
            attempt=1,
            task_state="FAILED",
            failure=failure,
        )
    )
    (attempt,) = exporter.get_finished_spans()
    assert attempt.attributes is not None
    assert attempt.attributes["are.task.state"] == "FAILED"
    assert _event_names(attempt) == [
        "are.task_timed_out",
        "are.task_lease_expired",
        "are.task_attempt_failed",
    ]
    assert builder.open_spans == 0
    builder.shutdown()


async def test_a_lease_lost_to_a_requeue_ends_the_span_and_the_next_attempt_links_to_it(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    builder, exporter = _builder(harness)
    wf = "wf-requeue"
    await harness.emit(_dispatched(wf, 1, ATTEMPT_1))
    await harness.emit(
        draft(
            "TASK_LEASE_EXPIRED",
            workflow_id=wf,
            task_id="t",
            attempt=1,
            task_state="SCHEDULED",
            worker_id="w",
            name="poll answer not delivered",
            span_id=ATTEMPT_1,
        ),
        draft("TASK_SCHEDULED", workflow_id=wf, task_id="t", attempt=2, task_state="SCHEDULED"),
    )
    (first,) = exporter.get_finished_spans()
    assert first.attributes is not None
    assert first.attributes["are.task.state"] == "SCHEDULED"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "the attempt's lease expired: poll answer not delivered"
    await harness.emit(_dispatched(wf, 2, ATTEMPT_2))
    await harness.emit(
        draft("TASK_COMPLETED", workflow_id=wf, task_id="t", attempt=2, task_state="COMPLETED")
    )
    second = _spans(exporter)["task t#2"]
    assert [link.context.span_id for link in second.links] == [int(ATTEMPT_1, 16)]
    assert builder.open_spans == 0
    builder.shutdown()


async def test_after_a_restart_the_re_run_attempt_links_to_the_span_its_lost_attempt_named(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    asked: list[tuple[str, str, int]] = []

    def resolve(workflow_id: str, task_id: str, attempt: int) -> int | None:
        asked.append((workflow_id, task_id, attempt))
        return None

    # A builder that saw nothing of attempt 1 (it started after the sidecar restarted).
    builder, exporter = _builder(harness, attempt_span=resolve)
    wf = "wf-restart"
    await harness.emit(
        draft(
            "TASK_LEASE_EXPIRED",
            workflow_id=wf,
            task_id="t",
            attempt=1,
            task_state="SCHEDULED",
            name="sidecar restart",
            span_id=ATTEMPT_1,
        ),
        draft("TASK_SCHEDULED", workflow_id=wf, task_id="t", attempt=2, task_state="SCHEDULED"),
    )
    await harness.emit(_dispatched(wf, 2, ATTEMPT_2))
    await harness.emit(
        draft("TASK_COMPLETED", workflow_id=wf, task_id="t", attempt=2, task_state="COMPLETED")
    )
    (second,) = exporter.get_finished_spans()
    assert [link.context.span_id for link in second.links] == [int(ATTEMPT_1, 16)]
    assert asked == []  # named by its event: no lookup
    # Known nowhere but to the resolver: it is asked for the attempt before.
    answers = {("wf-other", "t", 1): int(ATTEMPT_1, 16)}
    resolved, exported = _builder(harness, attempt_span=lambda *key: answers.get(key))
    await harness.emit(_dispatched("wf-other", 2, ATTEMPT_2))
    await harness.emit(
        draft("TASK_COMPLETED", workflow_id="wf-other", task_id="t", attempt=2, task_state="COMPLETED")
    )
    (other,) = exported.get_finished_spans()
    assert [link.context.span_id for link in other.links] == [int(ATTEMPT_1, 16)]
    builder.shutdown()
    resolved.shutdown()


async def test_a_call_carrying_its_attempts_span_id_is_a_call_span_and_a_workers_own_is_not(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    builder, exporter = _builder(harness)
    wf = "wf-calls"
    await harness.emit(_dispatched(wf, 1, ATTEMPT_1))
    await harness.emit(
        draft("LLM_CALL", workflow_id=wf, task_id="t", attempt=1, name="m", span_id=ATTEMPT_1),
        draft("TOOL_CALL", workflow_id=wf, task_id="t", attempt=1, name="search", span_id=WORKER_SPAN),
        draft(
            "TASK_TIMED_OUT", workflow_id=wf, task_id="t", attempt=1, task_state="RUNNING", span_id=ATTEMPT_1
        ),
        draft(
            "TASK_ATTEMPT_FAILED",
            workflow_id=wf,
            task_id="t",
            attempt=1,
            task_state="FAILED",
            span_id=ATTEMPT_1,
        ),
    )
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"chat m", "task t"}  # the worker's own span for its tool call is its own to export
    assert spans["chat m"].parent is not None and spans["chat m"].parent.span_id == int(ATTEMPT_1, 16)
    llm, tool, timed_out, _ = spans["task t"].events
    assert llm.attributes is not None and "are.worker_span_id" not in llm.attributes
    assert tool.attributes is not None and tool.attributes["are.worker_span_id"] == WORKER_SPAN
    assert timed_out.attributes is not None and "are.worker_span_id" not in timed_out.attributes
    builder.shutdown()


async def test_an_attempt_whose_end_never_came_ends_with_the_next_attempt_or_its_workflow(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    builder, exporter = _builder(harness)
    wf = "wf-unended"
    lost = draft("TASK_LEASE_EXPIRED", workflow_id=wf, task_id="t", attempt=1, task_state="RUNNING")
    await harness.emit(draft("WORKFLOW_SUBMITTED", workflow_id=wf, task_id="", workflow_state="RUNNING"))
    await harness.emit(_dispatched(wf, 1, ATTEMPT_1), lost)
    await harness.emit(
        draft("TASK_SCHEDULED", workflow_id=wf, task_id="t", attempt=2, task_state="SCHEDULED")
    )
    first = _spans(exporter)["task t#1"]
    assert first.attributes is not None and first.attributes["are.span.unfinished"] is True
    await harness.emit(
        _dispatched(wf, 2, ATTEMPT_2),
        draft("TASK_LEASE_EXPIRED", workflow_id=wf, task_id="t", attempt=2, task_state="RUNNING"),
    )
    await harness.emit(draft("WORKFLOW_CANCELLED", workflow_id=wf, task_id="", workflow_state="CANCELLED"))
    second = _spans(exporter)["task t#2"]
    assert second.attributes is not None and second.attributes["are.span.unfinished"] is True
    assert builder.open_spans == 0
    builder.shutdown()
