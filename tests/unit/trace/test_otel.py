"""Spans built from recorded events: one trace per workflow, a span per attempt, GenAI calls."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from are_core.trace import (
    EventDraft,
    EventUsage,
    FailureInfo,
    SpanBuilder,
    attempt_span_id,
    task_traceparent,
    workflow_span_id,
    workflow_trace_id,
)
from tests.unit.trace._support import MakeHarness, draft


def attempt_of(span: ReadableSpan) -> int:
    assert span.attributes is not None
    return int(span.attributes["are.attempt"])  # type: ignore[arg-type]  # the SpanBuilder sets an int


def duration_of(span: ReadableSpan) -> int:
    assert span.start_time is not None
    assert span.end_time is not None
    return span.end_time - span.start_time


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


async def test_a_workflow_becomes_one_trace_with_a_span_per_attempt(make_harness: MakeHarness) -> None:  # noqa: PLR0915 - one scenario, read top to bottom
    harness = make_harness()
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(exporter))
    harness.recorder.add_listener(builder)
    clock = harness.clock

    async def at(step_ms: int, *drafts: EventDraft) -> None:
        clock.now_ns += step_ms * 1_000_000
        await harness.emit(*drafts)

    wf = "wf-otel"
    await at(
        0, draft("WORKFLOW_SUBMITTED", workflow_id=wf, task_id="", attributes={"are.workflow.name": "demo"})
    )
    await at(1, draft("TASK_SCHEDULED", workflow_id=wf, task_id="plan", attempt=1))
    await at(1, draft("TASK_DISPATCHED", workflow_id=wf, task_id="plan", attempt=1, worker_id="w1"))
    await at(
        5,
        draft(
            "LLM_CALL",
            workflow_id=wf,
            task_id="plan",
            attempt=1,
            name="gpt-4o",
            duration_ns=3_000_000,
            usage=EventUsage(input_tokens=120, output_tokens=30, cost_micro_usd=900, llm_calls=1),
            attributes={"gen_ai.system": "openai"},
        ),
        draft("TOOL_CALL", workflow_id=wf, task_id="plan", attempt=1, name="search", duration_ns=1_000_000),
    )
    await at(
        1,
        draft(
            "TASK_ATTEMPT_FAILED",
            workflow_id=wf,
            task_id="plan",
            attempt=1,
            task_state="BACKING_OFF",
            failure=FailureInfo(message="rate limited", type="RateLimitError"),
        ),
        draft("TASK_RETRY_SCHEDULED", workflow_id=wf, task_id="plan", attempt=2, duration_ns=50_000_000),
    )
    await at(50, draft("TASK_DISPATCHED", workflow_id=wf, task_id="plan", attempt=2, worker_id="w2"))
    await at(
        7,
        draft(
            "TASK_COMPLETED",
            workflow_id=wf,
            task_id="plan",
            attempt=2,
            task_state="COMPLETED",
            usage=EventUsage(input_tokens=80, output_tokens=20),
        ),
    )
    await at(1, draft("WORKFLOW_COMPLETED", workflow_id=wf, task_id="", workflow_state="COMPLETED"))
    builder.force_flush()
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"workflow demo", "task plan", "chat gpt-4o", "execute_tool search"}

    finished = exporter.get_finished_spans()
    assert len(finished) == 5  # workflow, two attempts, the LLM call, the tool call
    trace_id = workflow_trace_id(wf)
    assert {span.context.trace_id for span in finished} == {trace_id}

    root = spans["workflow demo"]
    assert root.parent is None
    assert root.context.span_id == workflow_span_id(wf)
    assert root.status.status_code == StatusCode.OK

    attempts = sorted((s for s in finished if s.name == "task plan"), key=attempt_of)
    first, second = attempts
    for number, span in enumerate(attempts, start=1):
        assert span.parent is not None
        assert span.parent.span_id == workflow_span_id(wf)
        assert span.context.span_id == attempt_span_id(wf, "plan", number)
    assert first.status.status_code == StatusCode.ERROR
    assert first.attributes is not None
    assert first.attributes["error.type"] == "RateLimitError"
    assert second.status.status_code == StatusCode.OK
    assert [link.context.span_id for link in second.links] == [attempt_span_id(wf, "plan", 1)]
    assert duration_of(second) == 7_000_000
    assert second.attributes is not None
    assert second.attributes["gen_ai.usage.input_tokens"] == 80
    # The attempt's events are span events on its span (its dispatch is the span's start).
    assert [e.name for e in first.events] == ["are.llm_call", "are.tool_call", "are.task_attempt_failed"]
    assert first.events[2].attributes is not None
    assert first.events[2].attributes["error.type"] == "RateLimitError"
    assert [e.name for e in root.events] == ["are.task_scheduled", "are.task_retry_scheduled"]

    llm = spans["chat gpt-4o"]
    assert llm.kind == SpanKind.CLIENT
    assert llm.parent is not None
    assert llm.parent.span_id == first.context.span_id
    assert llm.attributes is not None
    assert llm.attributes["gen_ai.operation.name"] == "chat"
    assert llm.attributes["gen_ai.request.model"] == "gpt-4o"
    assert llm.attributes["gen_ai.system"] == "openai"
    assert llm.attributes["gen_ai.usage.input_tokens"] == 120
    assert llm.attributes["gen_ai.usage.output_tokens"] == 30
    assert duration_of(llm) == 3_000_000
    tool = spans["execute_tool search"]
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.tool.name"] == "search"
    assert tool.attributes["gen_ai.operation.name"] == "execute_tool"

    # The traceparent handed to the worker of attempt 2 names that attempt's span.
    assert task_traceparent(wf, "plan", 2) == f"00-{trace_id:032x}-{second.context.span_id:016x}-01"
    assert builder.open_spans == 0
    builder.shutdown()


async def test_attempts_nest_under_the_workflow_even_when_its_start_was_not_seen(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(exporter), max_open_spans=2)
    harness.recorder.add_listener(builder)
    await harness.emit(draft("TASK_DISPATCHED", workflow_id="late", task_id="a", attempt=1))
    await harness.emit(draft("TASK_COMPLETED", workflow_id="late", task_id="a", attempt=1))
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None
    assert span.parent.span_id == workflow_span_id("late")
    assert span.context.trace_id == workflow_trace_id("late")

    # Open spans are bounded: the oldest is ended early, marked evicted.
    for index in range(4):
        await harness.emit(draft("TASK_DISPATCHED", workflow_id="late", task_id=f"b{index}", attempt=1))
    assert builder.open_spans == 2
    evicted = [
        s for s in exporter.get_finished_spans() if s.attributes and s.attributes.get("are.span.evicted")
    ]
    assert len(evicted) == 2
    builder.shutdown()
    assert builder.open_spans == 0


async def test_ids_the_producer_recorded_are_used_so_worker_spans_nest(make_harness: MakeHarness) -> None:
    harness = make_harness()
    recorder = harness.recorder
    trace_hex, client_span_hex, attempt_hex = (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "b7ad6b7169203331",
    )
    submitted = draft(
        "WORKFLOW_SUBMITTED",
        workflow_id="wf-ctx",
        task_id="",
        attributes={
            "are.workflow.name": "ctx",
            "are.trace_id": trace_hex,
            "are.parent_span_id": client_span_hex,
        },
    )
    dispatched = draft("TASK_DISPATCHED", workflow_id="wf-ctx", task_id="a", attempt=1, span_id=attempt_hex)
    call = draft("LLM_CALL", workflow_id="wf-ctx", task_id="a", attempt=1, name="m", duration_ns=10)
    worker_traced = draft(
        "TOOL_CALL", workflow_id="wf-ctx", task_id="a", attempt=1, name="t", span_id="1" * 16
    )
    completed = draft("TASK_COMPLETED", workflow_id="wf-ctx", task_id="a", attempt=1, span_id=attempt_hex)
    finished = draft("WORKFLOW_COMPLETED", workflow_id="wf-ctx", task_id="")

    # A builder that saw the submission: the workflow span is the client's span's child.
    seen_all = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(seen_all))
    recorder.add_listener(builder)
    for step in (submitted, dispatched, call, worker_traced, completed, finished):
        await harness.emit(step)
    spans = by_name(seen_all.get_finished_spans())
    assert set(spans) == {"workflow ctx", "task a", "chat m"}  # the worker traced its tool call itself
    assert {s.context.trace_id for s in spans.values()} == {int(trace_hex, 16)}
    root = spans["workflow ctx"]
    assert root.parent is not None
    assert root.parent.span_id == int(client_span_hex, 16)
    assert spans["task a"].context.span_id == int(attempt_hex, 16)
    assert spans["chat m"].parent is not None
    assert spans["chat m"].parent.span_id == int(attempt_hex, 16)
    builder.shutdown()


async def test_a_builder_started_later_finds_the_trace_context_in_the_recorder(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    recorder = harness.recorder
    trace_hex = "0af7651916cd43dd8448eb211c80319c"
    await harness.emit(
        draft("WORKFLOW_SUBMITTED", workflow_id="wf-late", task_id="", attributes={"are.trace_id": trace_hex})
    )
    # As after a restart: this builder never saw the submission.
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(exporter), trace_context=recorder.workflow_trace_context)
    recorder.add_listener(builder)
    await harness.emit(
        draft("TASK_DISPATCHED", workflow_id="wf-late", task_id="a", attempt=1, span_id="2" * 16)
    )
    await harness.emit(draft("TASK_COMPLETED", workflow_id="wf-late", task_id="a", attempt=1))
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == int(trace_hex, 16)
    assert span.context.span_id == int("2" * 16, 16)
    assert span.parent is not None
    assert span.parent.span_id == workflow_span_id("wf-late")
    assert recorder.workflow_trace_context("unknown") is None
    builder.shutdown()


async def test_a_workflow_span_keeps_a_bounded_number_of_events(make_harness: MakeHarness) -> None:
    harness = make_harness()
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(exporter), max_events_per_span=5)
    harness.recorder.add_listener(builder)
    await harness.emit(draft("WORKFLOW_SUBMITTED", workflow_id="big", task_id=""))
    await harness.emit_many(20, lambda i: draft("TASK_SCHEDULED", workflow_id="big", task_id=f"t{i}"))
    await harness.emit(draft("WORKFLOW_COMPLETED", workflow_id="big", task_id=""))
    (root,) = exporter.get_finished_spans()
    assert len(root.events) == 5
    assert builder.dropped_events == 15
    builder.shutdown()
