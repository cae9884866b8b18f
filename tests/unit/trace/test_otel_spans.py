"""Spans that a collector can take, late calls' parents, and the workflow span across a restart.

Each test pins one defect a review found in :class:`SpanBuilder`:

* a call longer than its end time since the epoch started before 1970, a
  negative time no OTLP encoder takes (its whole batch was lost);
* every attribute of a reported call was copied twice (call span and the
  attempt's span event) and no attribute value was bounded;
* a call reported after the completion that closed its workflow named a
  parent span id that exists nowhere;
* a workflow whose start the builder did not see (a restart) never had its
  span exported, and a shutdown exported an open one marked unfinished.
"""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from are_core.trace import Event, SpanBuilder, workflow_span_id, workflow_trace_id
from tests.unit.trace._support import MakeHarness, draft

ATTEMPT_HEX = "b7ad6b7169203331"  # a random-looking span id, as the scheduler gives attempts


async def test_a_call_longer_than_its_time_since_the_epoch_starts_at_the_epoch(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(exporter))
    harness.recorder.add_listener(builder)
    wf = "wf-long-call"
    await harness.emit(draft("TASK_DISPATCHED", workflow_id=wf, task_id="a", attempt=1))
    await harness.emit(
        draft(
            "LLM_CALL",
            workflow_id=wf,
            task_id="a",
            attempt=1,
            name="m",
            duration_ns=harness.clock.now_ns + 10**18,  # about 32 years before 1970
        )
    )
    (call,) = exporter.get_finished_spans()
    assert call.start_time == 0
    assert call.end_time == harness.clock.now_ns
    assert encode_spans([call]).ByteSize() > 0  # a negative start raised "Value out of range"
    builder.shutdown()


async def test_a_calls_attributes_are_on_its_span_only_and_bounded(make_harness: MakeHarness) -> None:
    harness = make_harness()
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(exporter))
    harness.recorder.add_listener(builder)
    wf = "wf-call-attributes"
    prompt = "p" * 16_384  # the most a reported attribute may be
    await harness.emit(draft("TASK_DISPATCHED", workflow_id=wf, task_id="a", attempt=1))
    await harness.emit(
        draft(
            "LLM_CALL", workflow_id=wf, task_id="a", attempt=1, name="m", attributes={"gen_ai.prompt": prompt}
        ),
        draft(
            "WORKER_CUSTOM", workflow_id=wf, task_id="a", attempt=1, name="note", attributes={"big": prompt}
        ),
    )
    await harness.emit(draft("TASK_COMPLETED", workflow_id=wf, task_id="a", attempt=1))
    spans = {span.name: span for span in exporter.get_finished_spans()}
    call, attempt = spans["chat m"], spans["task a"]
    assert call.attributes is not None
    assert call.attributes["gen_ai.prompt"] == prompt[:4096]  # SPAN_LIMITS.max_attribute_length
    llm_event, custom_event = attempt.events
    assert llm_event.name == "are.llm_call"
    assert llm_event.attributes is not None
    assert "gen_ai.prompt" not in llm_event.attributes  # on the call span, not copied here
    assert llm_event.attributes["are.name"] == "m"
    # A custom event has no span of its own: its attributes stay on the span event, bounded.
    assert custom_event.attributes is not None
    assert custom_event.attributes["big"] == prompt[:4096]
    builder.shutdown()


async def test_a_call_reported_after_its_workflow_closed_nests_under_its_attempt(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(exporter))
    harness.recorder.add_listener(builder)
    wf = "wf-late-call"
    await harness.emit(draft("WORKFLOW_SUBMITTED", workflow_id=wf, task_id=""))
    await harness.emit(draft("TASK_DISPATCHED", workflow_id=wf, task_id="a", attempt=1, span_id=ATTEMPT_HEX))
    await harness.emit(draft("TASK_COMPLETED", workflow_id=wf, task_id="a", attempt=1))
    await harness.emit(draft("WORKFLOW_COMPLETED", workflow_id=wf, task_id=""))
    # Workers may report calls for 5 minutes after their result, even one that closed the workflow.
    await harness.emit(draft("LLM_CALL", workflow_id=wf, task_id="a", attempt=1, name="late"))
    (call,) = [s for s in exporter.get_finished_spans() if s.name == "chat late"]
    assert call.parent is not None
    assert call.parent.span_id == int(ATTEMPT_HEX, 16)
    builder.shutdown()


async def test_a_late_call_the_builder_never_saw_the_attempt_of_asks_the_resolver(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    asked: list[tuple[str, str, int]] = []

    def attempt_span(workflow_id: str, task_id: str, attempt: int) -> int | None:
        asked.append((workflow_id, task_id, attempt))
        return int(ATTEMPT_HEX, 16) if task_id == "known" else None

    exporter = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(exporter), attempt_span=attempt_span)
    harness.recorder.add_listener(builder)
    wf = "wf-restarted"
    for task_id in ("known", "known", "unknown"):
        await harness.emit(draft("TOOL_CALL", workflow_id=wf, task_id=task_id, attempt=1, name=task_id))
    known, again, unknown = exporter.get_finished_spans()
    for span in (known, again):
        assert span.parent is not None
        assert span.parent.span_id == int(ATTEMPT_HEX, 16)
    # Known nowhere: under the workflow's span (which exists), not a made-up attempt span id.
    assert unknown.parent is not None
    assert unknown.parent.span_id == workflow_span_id(wf)
    assert asked == [(wf, "known", 1), (wf, "unknown", 1)]  # a found id is remembered
    builder.shutdown()


async def test_a_workflow_ended_after_a_restart_exports_its_span_once(make_harness: MakeHarness) -> None:
    harness = make_harness()
    wf = "wf-restart"
    trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736"
    submitted = draft(
        "WORKFLOW_SUBMITTED",
        workflow_id=wf,
        task_id="",
        attributes={"are.workflow.name": "survivor", "are.trace_id": trace_hex},
    )
    (start,) = await harness.emit(submitted)
    dispatched = await harness.emit(draft("TASK_DISPATCHED", workflow_id=wf, task_id="a", attempt=1))

    # The first sidecar stops gracefully: the open attempt is exported unfinished, the workflow not.
    before = InMemorySpanExporter()
    first = SpanBuilder(SimpleSpanProcessor(before))
    first.on_events([start, *dispatched])
    first.shutdown()
    (unfinished,) = before.get_finished_spans()
    assert unfinished.name == "task a"
    assert unfinished.attributes is not None
    assert unfinished.attributes["are.span.unfinished"] is True

    # The next one never saw the submission: the workflow's end exports its span, found by the resolver.
    asked: list[str] = []

    def workflow_start(workflow_id: str) -> Event | None:
        asked.append(workflow_id)
        return start if workflow_id == wf else None

    after = InMemorySpanExporter()
    second = SpanBuilder(SimpleSpanProcessor(after), workflow_start=workflow_start)
    harness.recorder.add_listener(second)
    harness.clock.now_ns += 5_000_000_000
    await harness.emit(draft("WORKFLOW_COMPLETED", workflow_id=wf, task_id="", workflow_state="COMPLETED"))
    await harness.emit(draft("WORKFLOW_COMPLETED", workflow_id=wf, task_id=""))  # a repeat: nothing more
    await harness.emit(draft("WORKFLOW_FAILED", workflow_id="wf-unknown", task_id=""))
    (root,) = after.get_finished_spans()
    assert root.name == "workflow survivor"
    assert root.context.span_id == workflow_span_id(wf)
    assert root.context.trace_id == int(trace_hex, 16)
    assert root.context.trace_id != workflow_trace_id(wf)
    assert root.parent is None
    assert root.start_time == start.event_time_unix_ns
    assert root.end_time == harness.clock.now_ns
    assert root.status.status_code == StatusCode.OK
    assert root.attributes is not None
    assert "are.span.unfinished" not in root.attributes
    assert asked == [wf, "wf-unknown"]
    second.shutdown()
