"""OTLP export batches: split under a byte bound, one bad span never takes its batch down.

A collector (and grpc) refuses a request over 4 MiB whole, and the OTLP
encoder raises on a span it cannot encode (a negative time): in both cases
every span of the batch was lost. :func:`fit_spans` and the gated exporter
that uses it are driven here with real SDK spans and the real encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags

from sidecar._otlp_batches import CUT_ATTRIBUTE_CHARS, fit_spans
from sidecar._trace import _ExportGate, _gated_exporter

KIB = 1024


def span(index: int, *, attribute_bytes: int = 100, events: int = 0, start_time: int = 1) -> ReadableSpan:
    """A finished span with one string attribute and ``events`` span events of 4 KiB each."""
    context = SpanContext(trace_id=1, span_id=index + 1, is_remote=False, trace_flags=TraceFlags(1))
    return ReadableSpan(
        name=f"span {index}",
        context=context,
        attributes={"index": index, "text": "x" * attribute_bytes},
        events=tuple(Event(f"event {i}", {"text": "e" * 4 * KIB}, timestamp=2) for i in range(events)),
        start_time=start_time,
        end_time=2,
    )


def names(batches: Sequence[Sequence[ReadableSpan]]) -> list[str]:
    return [s.name for batch in batches for s in batch]


def test_spans_are_split_into_requests_under_the_bound_in_order() -> None:
    spans = [span(i, attribute_bytes=10 * KIB) for i in range(100)]  # about 1 MiB in all
    fitted = fit_spans(spans, 64 * KIB)
    assert (fitted.dropped, fitted.truncated) == (0, 0)
    assert names(fitted.batches) == [s.name for s in spans]
    assert len(fitted.batches) > 1
    for batch in fitted.batches:
        assert encode_spans(batch).ByteSize() <= 64 * KIB
    # Under the bound: one request, as before.
    assert len(fit_spans(spans, 4 * 1024 * KIB).batches) == 1


def test_a_span_that_cannot_be_encoded_is_dropped_alone() -> None:
    bad = span(1, start_time=-5)  # a negative fixed64: "Value out of range"
    spans = [span(0), bad, span(2)]
    fitted = fit_spans(spans, 64 * KIB)
    assert fitted.dropped == 1
    assert names(fitted.batches) == ["span 0", "span 2"]


def test_a_span_larger_than_the_bound_keeps_the_events_that_fit_and_is_marked() -> None:
    large = span(0, events=100)  # 100 events of 4 KiB: some 400 KiB
    fitted = fit_spans([large, span(1)], 64 * KIB)
    assert (fitted.dropped, fitted.truncated) == (0, 1)
    assert names(fitted.batches) == ["span 0", "span 1"]
    cut = fitted.batches[0][0]
    assert 0 < len(cut.events) < 100
    assert [e.name for e in cut.events] == [f"event {i}" for i in range(len(cut.events))]  # the first ones
    assert cut.attributes is not None
    assert cut.attributes["are.span.truncated"] is True
    assert cut.attributes["are.span.dropped_events"] == 100 - len(cut.events)
    assert cut.context == large.context
    assert encode_spans([cut]).ByteSize() <= 64 * KIB


def test_a_span_too_large_without_its_events_has_its_strings_cut() -> None:
    huge = span(0, attribute_bytes=200 * KIB, events=3)
    fitted = fit_spans([huge], 64 * KIB)
    assert fitted.truncated == 1
    ((cut,),) = fitted.batches
    assert cut.events == ()
    assert cut.attributes is not None
    assert cut.attributes["text"] == "x" * CUT_ATTRIBUTE_CHARS
    assert cut.attributes["index"] == 0


class Collector(SpanExporter):
    """Takes requests of at most 4 MiB, as grpc and the OpenTelemetry Collector do by default."""

    def __init__(self) -> None:
        self.requests: list[int] = []
        self.spans: list[str] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        size = encode_spans(spans).ByteSize()  # raises on a span it cannot encode, as the exporter does
        if size > 4 * 1024 * KIB:
            return SpanExportResult.FAILURE
        self.requests.append(size)
        self.spans.extend(s.name for s in spans)
        return SpanExportResult.SUCCESS


def test_the_gated_exporter_sends_every_good_span_of_a_batch_a_collector_would_refuse() -> None:
    collector = Collector()
    gate = _ExportGate()
    exporter = _gated_exporter(collector, gate)  # the default bound: 3 MiB
    spans = [span(i, attribute_bytes=100 * KIB) for i in range(60)]  # some 6 MiB
    spans[7] = span(7, start_time=-1)
    assert exporter.export(spans) is SpanExportResult.FAILURE  # one span was not exported
    assert collector.spans == [s.name for s in spans if s.name != "span 7"]
    assert len(collector.requests) > 1
    assert max(collector.requests) <= 3 * 1024 * KIB
    assert gate.not_exported == 1
    assert exporter.export(spans[:5]) is SpanExportResult.SUCCESS
