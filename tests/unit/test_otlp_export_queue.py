"""The OTLP export queue: bounded in spans and bytes, every span accounted for, drops told every 30 s at most.

Defects a review found: the span processor's queue-full drops were counted
nowhere, nothing was told while the sidecar ran, and the queue was bounded in
spans only, whatever their size. The integration side (a real sidecar and a
stalled collector) is ``tests/integration/test_trace_otlp_drops.py``; here
the admission and the rate limit of the log line, with the clock given.
"""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from are_core.trace import Event, SpanBuilder
from sidecar._otlp_batches import span_memory
from sidecar._trace import _DropReport, _ExportGate

KIB = 1024


def test_the_queue_admits_up_to_its_bytes_then_drops_and_counts() -> None:
    gate = _ExportGate(max_spans=100, max_bytes=10 * KIB)
    assert [gate.admit(3 * KIB) for _ in range(4)] == [True, True, True, False]
    assert gate.admit(KIB)  # a smaller one still fits
    counts = gate.counts()
    assert (counts.queued, counts.queued_bytes, counts.queue_full) == (4, 10 * KIB, 1)
    gate.exported(2, 6 * KIB, failed=1)  # an export ends: its spans leave the queue
    assert gate.admit(5 * KIB)
    counts = gate.counts()
    assert (counts.exported, counts.export_failed, counts.queued) == (1, 1, 3)
    assert gate.not_exported == counts.not_exported == 2


def test_the_queue_is_bounded_in_spans_too_and_takes_a_large_span_when_empty() -> None:
    gate = _ExportGate(max_spans=2, max_bytes=10 * KIB)
    assert [gate.admit(1) for _ in range(3)] == [True, True, False]
    gate.exported(2, 2, failed=0)
    assert gate.admit(50 * KIB)  # larger than the bound: alone, it is still exported
    assert not gate.admit(1)
    assert gate.counts().queue_full == 2


def test_spans_that_end_once_shutting_down_are_counted_and_so_are_span_events_over_the_limit() -> None:
    gate = _ExportGate()
    assert gate.admit(1, events_over_limit=3)
    gate.close()
    assert not gate.admit(1)
    counts = gate.counts()
    assert (counts.after_shutdown, counts.span_events_over_limit, counts.queued) == (1, 3, 1)


def test_a_spans_memory_estimate_grows_with_what_it_holds() -> None:
    exporter = InMemorySpanExporter()
    builder = SpanBuilder(SimpleSpanProcessor(exporter))
    task = {"workflow_id": "wf", "task_id": "t", "attempt": 1}
    events = [
        Event(sequence=1, event_time_unix_ns=1, event_type="WORKFLOW_SUBMITTED", workflow_id="wf"),
        Event(sequence=2, event_time_unix_ns=2, event_type="TASK_DISPATCHED", **task),  # type: ignore[arg-type]
        Event(
            sequence=3,
            event_time_unix_ns=3,
            event_type="WORKER_CUSTOM",
            attributes={f"k{i}": "x" * 4096 for i in range(64)},
            **task,  # type: ignore[arg-type]
        ),
        Event(sequence=4, event_time_unix_ns=4, event_type="TASK_COMPLETED", **task),  # type: ignore[arg-type]
        Event(sequence=5, event_time_unix_ns=5, event_type="WORKFLOW_COMPLETED", workflow_id="wf"),
    ]
    builder.on_events(events)
    spans: dict[str, ReadableSpan] = {span.name: span for span in exporter.get_finished_spans()}
    small, large = span_memory(spans["workflow wf"]), span_memory(spans["task t"])
    assert 2 * KIB < small < 4 * KIB
    assert 64 * 4096 < large < 64 * 4096 + 20 * KIB


def _report(gate: _ExportGate) -> tuple[_DropReport, SpanBuilder]:
    builder = SpanBuilder(SimpleSpanProcessor(InMemorySpanExporter()))
    return _DropReport(gate, builder, "http://collector:4317"), builder


def _drop_span_events(builder: SpanBuilder, count: int) -> None:
    """Events for a workflow with no open span: the builder leaves them out, and counts them."""
    builder.on_events(
        [
            Event(sequence=i, event_time_unix_ns=i, event_type="WORKER_CUSTOM", workflow_id="gone")
            for i in range(count)
        ]
    )


def test_drops_are_told_at_once_then_at_most_every_30_s_with_the_count_since_the_last_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = _ExportGate(max_spans=1)
    report, _ = _report(gate)
    report.tick(100.0)
    assert caplog.records == []  # nothing dropped: nothing said
    gate.admit(1)
    for _ in range(5):
        gate.admit(1)
    report.tick(101.0)
    report.tick(102.0)
    gate.admit(1)
    gate.exported(1, 1, failed=1)
    report.tick(130.0)  # 29 s after the first line: held back
    report.tick(131.0)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0][0] == logging.WARNING
    assert lines[0][1].startswith(
        "OTLP export: 5 spans dropped since the start (5 found the export queue full"
    )
    assert lines[1][1].startswith(
        "OTLP export: 2 spans dropped in the last 30 s (1 found the export queue full, "
        "1 were in failed exports), 7 in all"
    )


def test_span_events_alone_make_an_info_line_that_never_holds_a_warning_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="are.trace")
    gate = _ExportGate(max_spans=1)
    report, builder = _report(gate)
    _drop_span_events(builder, 3)
    report.tick(100.0)
    gate.admit(1)
    gate.admit(1)  # dropped
    report.tick(101.0)  # a second after the info line: the warning still comes
    _drop_span_events(builder, 2)
    report.tick(102.0)  # events alone, 2 s after a line: held back
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == [logging.INFO, logging.WARNING], lines
    assert lines[0][1].startswith("OTLP export: 3 span events left out of spans since the start")
    assert lines[1][1].startswith("OTLP export: 1 spans dropped in the last 1 s")
    assert lines[1][1].endswith("0 span events left out of spans")
