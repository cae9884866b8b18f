"""The span export's shutdown is bounded, and what the collector did not take is counted once.

opentelemetry-sdk's ``BatchSpanProcessor`` waits up to 30 s at shutdown for
its queue, whatever the caller's deadline; the sidecar cuts the export off at
its share of the grace (see ``sidecar._trace._ExportGate``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from are_core.trace import Event, SpanBuilder
from sidecar._trace import _ExportGate, _gated_exporter, _stop_export

_BUDGET_S = 0.3


class HangingExporter(SpanExporter):
    """An exporter whose export hangs until it is shut down, as over a stalled collector's channel."""

    def __init__(self) -> None:
        self.shut_down = threading.Event()
        self.shutdowns = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.shut_down.wait(30)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.shut_down.set()


class CollectingExporter(SpanExporter):
    """An exporter to a collector that takes everything."""

    def __init__(self) -> None:
        self.spans = 0
        self.shutdowns = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shutdowns += 1


def _builder(exporter: SpanExporter, gate: _ExportGate) -> SpanBuilder:
    # A batch of 2 spans: the queue holds several batches when the shutdown begins.
    processor = BatchSpanProcessor(
        _gated_exporter(exporter, gate), schedule_delay_millis=60_000, max_export_batch_size=2
    )
    return SpanBuilder(processor)


def _finish_workflows(builder: SpanBuilder, count: int) -> None:
    """Ends ``count`` one-task workflows: two spans each."""
    for index in range(count):
        wf, now, first = f"wf-{index}", time.time_ns(), 4 * index
        builder.on_events(
            [
                Event(
                    sequence=first + 1,
                    event_time_unix_ns=now,
                    event_type="WORKFLOW_SUBMITTED",
                    workflow_id=wf,
                ),
                Event(
                    sequence=first + 2,
                    event_time_unix_ns=now,
                    event_type="TASK_DISPATCHED",
                    workflow_id=wf,
                    task_id="t",
                    attempt=1,
                ),
                Event(
                    sequence=first + 3,
                    event_time_unix_ns=now,
                    event_type="TASK_COMPLETED",
                    workflow_id=wf,
                    task_id="t",
                    attempt=1,
                    task_state="COMPLETED",
                ),
                Event(
                    sequence=first + 4,
                    event_time_unix_ns=now,
                    event_type="WORKFLOW_COMPLETED",
                    workflow_id=wf,
                    workflow_state="COMPLETED",
                ),
            ]
        )


def test_a_hanging_export_is_cut_off_at_the_budget_and_its_spans_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter, gate = HangingExporter(), _ExportGate()
    builder = _builder(exporter, gate)
    _finish_workflows(builder, 5)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="are.trace"):
        _stop_export(builder, gate, _BUDGET_S, "http://collector:4317")
    took = time.monotonic() - started
    assert _BUDGET_S <= took < _BUDGET_S + 1.0
    assert gate.cut_off
    assert gate.not_exported == 10  # the batch under way and every batch still queued
    assert exporter.shutdowns == 1  # by the cut-off; the processor's own shutdown does not repeat it
    (record,) = [r for r in caplog.records if r.name == "are.trace"]
    assert record.getMessage().startswith("10 spans were not exported")
    assert record.__dict__["fields"]["at_shutdown"] == 10


def test_a_collector_that_takes_everything_is_flushed_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter, gate = CollectingExporter(), _ExportGate()
    builder = _builder(exporter, gate)
    _finish_workflows(builder, 5)
    with caplog.at_level(logging.WARNING, logger="are.trace"):
        _stop_export(builder, gate, 5.0, "http://collector:4317")
    assert exporter.spans == 10
    assert exporter.shutdowns == 1
    assert not gate.cut_off
    assert gate.not_exported == 0
    assert [r for r in caplog.records if r.name == "are.trace"] == []
