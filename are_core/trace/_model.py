"""The event record every part of the engine emits, and the sink it emits to.

This is the seam between the engines that *make* events (scheduler, state,
cache, router) and the trace engine that *keeps* them (flight recorder, live
fan-out, OpenTelemetry). Producers depend only on :class:`EventSink`:

1. while building the batch of a transition, call ``sink.record(batch, draft)``
   for each event; the sink assigns the sequence and time, adds the event's
   row to that same batch (so the event commits atomically with the change it
   describes), and returns the :class:`Event`;
2. submit the batch to the group committer, and after it returns call
   ``sink.publish(events)``. Only committed events ever reach a live
   subscriber or an exporter, in sequence order: the recorder learns of each
   batch's outcome from the committer itself, so ``publish`` matters only
   for a batch written some other way.

A producer built without a sink (``None``) records no events.

The records are ``gc=False`` (several are made per task transition, and
they hold only scalars, strings, dicts of scalars and each other, so they
can never be part of a reference cycle).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec

from are_core.storage import Batch

__all__ = ["AttributeValue", "Event", "EventDraft", "EventSink", "EventUsage", "FailureInfo"]

AttributeValue = str | int | float | bool


class EventUsage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Tokens and cost attached to a completion or an LLM/tool call."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_micro_usd: int = 0
    llm_calls: int = 0
    tool_calls: int = 0


class FailureInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The failure attached to a failing transition (mirrors ``are.v1.Failure``)."""

    message: str
    type: str = ""
    non_retryable: bool = False
    kind: str = ""  # FailureKind name without prefix, e.g. "APPLICATION", "TIMEOUT"
    timeout_type: str = ""  # TimeoutType name without prefix, e.g. "START_TO_CLOSE"


class EventDraft(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event before the sink gives it a sequence and a time.

    ``event_type``, ``task_state`` and ``workflow_state`` are the proto enum
    value names without their prefix (``"TASK_DISPATCHED"``, ``"RUNNING"``).
    ``event_time_unix_ns`` is set only for events whose time comes from
    elsewhere (a worker's clock); otherwise the sink stamps it.
    """

    event_type: str
    workflow_id: str = ""
    task_id: str = ""
    attempt: int = 0
    worker_id: str = ""
    task_state: str = ""
    workflow_state: str = ""
    failure: FailureInfo | None = None
    usage: EventUsage | None = None
    duration_ns: int | None = None
    name: str = ""
    attributes: Mapping[str, AttributeValue] = msgspec.field(default_factory=dict)
    span_id: str = ""
    event_time_unix_ns: int | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A recorded event: a draft with its place in the log (``sequence``) and time.

    ``recorded_unix_ns`` is the sidecar's clock when it recorded an event
    whose ``event_time_unix_ns`` came from elsewhere (a worker's clock, which
    may be far off); 0 when the sidecar stamped the time itself, which is
    then the record time. Retention by age goes by the record time. Stored
    under the short key ``rec`` (rows written before it existed decode to 0).
    """

    sequence: int
    event_time_unix_ns: int
    event_type: str
    workflow_id: str = ""
    task_id: str = ""
    attempt: int = 0
    worker_id: str = ""
    task_state: str = ""
    workflow_state: str = ""
    failure: FailureInfo | None = None
    usage: EventUsage | None = None
    duration_ns: int | None = None
    name: str = ""
    attributes: dict[str, AttributeValue] = msgspec.field(default_factory=dict)
    span_id: str = ""
    recorded_unix_ns: int = msgspec.field(default=0, name="rec")


class EventSink(Protocol):
    """Where engines send their events; implemented by the trace engine."""

    def record(self, batch: Batch, draft: EventDraft) -> Event:
        """Assigns sequence and time and adds the event's row to ``batch``."""
        ...

    def publish(self, events: Sequence[Event]) -> None:
        """Fans committed events out to live subscribers and exporters."""
        ...


RECORD_SLICE = 32
"""Events :func:`record_in_slices` records per event-loop turn (about 50 µs of it)."""


async def record_in_slices(sink: EventSink, batch: Batch, drafts: Sequence[EventDraft]) -> list[Event]:
    """Records ``drafts`` into ``batch``, :data:`RECORD_SLICE` per event-loop turn; returns the events.

    For background batches of events alone (a second of cache lookups, a
    group of routes): recording takes about 1.5 µs an event on the loop, so
    256 in one turn made a call arriving meanwhile wait some 0.4 ms. Never
    for a batch that carries a state change: other coroutines run between
    slices, and such a batch must be submitted in the turn its change was
    made.
    """
    events: list[Event] = []
    for at in range(0, len(drafts), RECORD_SLICE):
        if at:
            await asyncio.sleep(0)  # calls that arrived meanwhile go first
        events.extend(sink.record(batch, draft) for draft in drafts[at : at + RECORD_SLICE])
    return events
