"""Trace: the events every transition produces, kept, streamed and exported.

The shared event model and the :class:`EventSink` seam are defined in
``_model``; the flight recorder, live fan-out and OpenTelemetry export build
on them.
"""

from are_core.trace._model import AttributeValue, Event, EventDraft, EventSink, EventUsage, FailureInfo

__all__ = ["AttributeValue", "Event", "EventDraft", "EventSink", "EventUsage", "FailureInfo"]
