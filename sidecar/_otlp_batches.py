"""OTLP export batches a collector takes: every span encodable, every request under a byte bound.

A collector refuses a request over its receive limit whole (the OpenTelemetry
Collector's ``max_recv_msg_size_mib`` and grpc's default are both 4 MiB), and
an encoder that fails on one span fails its whole request: either way every
span of the batch would be lost, other workflows' included. So each span the
span processor hands over is encoded on its own first (on the processor's
thread, never the event loop):

* a span that cannot be encoded is dropped alone, and counted;
* a span larger than the bound on its own keeps the events that fit (in
  order) and, if that is not enough, has its string attributes cut to
  :data:`CUT_ATTRIBUTE_CHARS` characters; it is marked
  ``are.span.truncated`` (and ``are.span.dropped_events``); one that still
  does not fit is dropped and counted;
* the spans are split, in order, into requests whose encoded size stays
  under the bound.

Each span's size is that of a request holding it alone, so the sum over a
request's spans is an upper bound of the request's size (the resource and
scope they share are counted once per span).

:func:`span_memory` estimates, without encoding, the memory an ended span
holds while it waits for export, so that the export queue can be bounded in
bytes as well as in spans.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["CUT_ATTRIBUTE_CHARS", "FittedSpans", "fit_spans", "span_memory"]

CUT_ATTRIBUTE_CHARS = 256
"""What a span too large even without its events keeps of its name and each string attribute."""

# Room kept in a truncated span for the marking attributes.
_MARK_BYTES = 128


class FittedSpans(msgspec.Struct, frozen=True, kw_only=True):
    """Spans split into requests under the bound, and what did not make it as it was."""

    batches: list[list[ReadableSpan]]
    """The requests to send, in the spans' order, each under the bound."""
    dropped: int = 0
    """Spans that could not be encoded, or not fitted under the bound: never sent."""
    truncated: int = 0
    """Spans sent with events or attribute values cut to fit (marked ``are.span.truncated``)."""


def fit_spans(spans: Sequence[ReadableSpan], max_bytes: int) -> FittedSpans:
    """Splits ``spans`` into requests of at most ``max_bytes`` encoded; fits or drops a span that is not.

    Args:
        spans: A batch from the span processor.
        max_bytes: The most one export request may take, encoded.
    """
    if _plainly_fits(spans, max_bytes):  # the usual batch: sent as it is, encoded once (by the exporter)
        return FittedSpans(batches=[list(spans)] if spans else [])
    batches: list[list[ReadableSpan]] = []
    current: list[ReadableSpan] = []
    current_bytes = 0
    dropped = truncated = 0
    for span in spans:
        size = _encoded_size(span)
        sent: ReadableSpan | None = span
        if size is not None and size > max_bytes:
            sent = _truncated(span, max_bytes)
            size = _encoded_size(sent) if sent is not None else None
            if size is not None and size <= max_bytes:
                truncated += 1
            else:
                size = None
        if sent is None or size is None:
            dropped += 1
            continue
        if current and current_bytes + size > max_bytes:
            batches.append(current)
            current, current_bytes = [], 0
        current.append(sent)
        current_bytes += size
    if current:
        batches.append(current)
    return FittedSpans(batches=batches, dropped=dropped, truncated=truncated)


# Upper bounds, in encoded bytes, of what a span carries besides its strings: ids, times,
# kind, status and flags (a span), and the tags and lengths around a key and value (an
# attribute), an event's time and name, a link's ids; and a request's own framing.
_SPAN_BYTES = 160
_ITEM_BYTES = 24
_REQUEST_BYTES = 256
_INT64 = 1 << 63
_TIME_MAX = 1 << 64


def _plainly_fits(spans: Sequence[ReadableSpan], max_bytes: int) -> bool:
    """Whether a bound computed without encoding says the batch fits in one request and encodes.

    Saves encoding every span twice (here, then in the exporter) in the
    common case: a batch of ordinary spans far under the bound. Anything it
    cannot vouch for (a time or an integer out of the encoder's range, a
    value of a type it does not know, a bound over ``max_bytes``) goes the
    exact way.
    """
    total = _REQUEST_BYTES
    resources: set[int] = set()
    for span in spans:
        start, end = span.start_time, span.end_time
        if start is None or end is None or not (0 <= start < _TIME_MAX and 0 <= end < _TIME_MAX):
            return False
        size = _SPAN_BYTES + _text_bytes(span.name) + _attributes_bytes(span.attributes)
        for event in span.events:
            size += _ITEM_BYTES + _text_bytes(event.name) + _attributes_bytes(event.attributes)
        for link in span.links:
            size += _ITEM_BYTES * 2 + _attributes_bytes(link.attributes)
        if span.resource is not None and id(span.resource) not in resources:
            resources.add(id(span.resource))
            size += _REQUEST_BYTES + _attributes_bytes(span.resource.attributes)
        if size < 0:  # an attribute it cannot vouch for
            return False
        total += size
        if total > max_bytes:
            return False
    return True


def _text_bytes(text: str | None) -> int:
    """An upper bound of ``text``'s UTF-8 length (4 bytes a character unless it is ASCII)."""
    if not text:
        return 0
    return len(text) if text.isascii() else 4 * len(text)


def _attributes_bytes(attributes: object) -> int:
    """An upper bound of the encoded attributes; negative for a value the encoder may refuse."""
    if not attributes:
        return 0
    size = 0
    for key, value in attributes.items():  # type: ignore[attr-defined]  # a Mapping of attribute values
        size += _ITEM_BYTES + _text_bytes(key)
        values = value if isinstance(value, tuple | list) else (value,)
        for item in values:
            if isinstance(item, str):
                size += _ITEM_BYTES + _text_bytes(item)
            elif isinstance(item, bool | float) or (isinstance(item, int) and -_INT64 <= item < _INT64):
                size += _ITEM_BYTES
            elif isinstance(item, bytes):
                size += _ITEM_BYTES + len(item)
            else:
                return -1
    return size


# The memory an ended span of opentelemetry-sdk 1.45 holds besides its strings, measured with
# tracemalloc over spans as the span builder makes them (a least-squares fit, within 10% from
# call spans of a few attributes to attempt spans of 128 events of 64 attributes of 4 KiB): the
# span itself (its context, resource reference, lock, bounded lists and dicts), each event or
# link, each attribute (its dict slot, its key, and its value's object); and a byte a character
# of a string value (ASCII, as nearly all are; up to 4 otherwise, not counted: an estimate).
_SPAN_MEMORY = 2_100
_EVENT_MEMORY = 200
_ATTRIBUTE_MEMORY = 130
_ITEM_MEMORY = 40  # one element of a sequence value


def span_memory(span: ReadableSpan) -> int:
    """An estimate of the bytes ``span`` holds in memory, from its attributes, events and links.

    Cheap (no encoding; one pass over the attribute values), as it runs for
    each span that ends, on the event loop. String values are counted
    whole: the span keeps them alive while it waits for export.
    """
    size = _SPAN_MEMORY + len(span.name) + _attributes_memory(span.attributes)
    for event in span.events:
        size += _EVENT_MEMORY + _attributes_memory(event.attributes)
    for link in span.links:
        size += _EVENT_MEMORY + _attributes_memory(link.attributes)
    return size


def _attributes_memory(attributes: Mapping[str, object] | None) -> int:
    """The part of :func:`span_memory` that one span's, event's or link's attributes take."""
    if not attributes:
        return 0
    size = _ATTRIBUTE_MEMORY * len(attributes)
    for value in attributes.values():
        if isinstance(value, str | bytes):
            size += len(value)
        elif isinstance(value, tuple | list):
            size += _ITEM_MEMORY * len(value) + sum(len(item) for item in value if isinstance(item, str))
    return size


def _encoded_size(span: ReadableSpan) -> int | None:
    """The size of a request holding ``span`` alone, or None when it cannot be encoded."""
    try:
        return int(encode_spans([span]).ByteSize())
    except Exception:  # noqa: BLE001 - any span the encoder refuses (a time out of range...) is dropped alone
        return None


def _truncated(span: ReadableSpan, max_bytes: int) -> ReadableSpan | None:
    """``span`` with the events that fit and, if needed, its strings cut; None when it cannot be encoded."""
    try:
        request = encode_spans([span])
    except Exception:  # noqa: BLE001 - see _encoded_size
        return None
    encoded = request.resource_spans[0].scope_spans[0].spans[0]
    event_bytes = [event.ByteSize() + 4 for event in encoded.events]  # + its tag and length
    budget = max_bytes - _MARK_BYTES - (request.ByteSize() - sum(event_bytes))
    keep = 0
    while keep < len(event_bytes) and event_bytes[keep] <= budget:
        budget -= event_bytes[keep]
        keep += 1
    name = span.name
    attributes = dict(span.attributes or {})
    if budget < 0:  # too large even without events: cut its name and strings too
        keep = 0
        name = name[:CUT_ATTRIBUTE_CHARS]
        attributes = {
            key: value[:CUT_ATTRIBUTE_CHARS] if isinstance(value, str) else value
            for key, value in attributes.items()
        }
    attributes["are.span.truncated"] = True
    if keep < len(span.events):
        attributes["are.span.dropped_events"] = len(span.events) - keep
    return ReadableSpan(
        name=name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=tuple(span.events[:keep]),
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
