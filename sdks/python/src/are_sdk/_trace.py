"""The trace facade: read the flight recorder and follow live events (``client.trace``).

Events are the generated ``are.v1.Event`` messages (``are_sdk._proto``):
typed, and the same objects the raw layer returns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from are_sdk._proto.are.v1 import event_pb2, trace_service_pb2
from are_sdk._workflow_types import aware

if TYPE_CHECKING:
    from are_sdk._client import ServiceClient

__all__ = ["Trace", "TraceStreamItem"]

# What Trace.stream yields: a matching Event, one CaughtUp when the replay ends, EventsMissed notices.
TraceStreamItem = event_pb2.Event | trace_service_pb2.CaughtUp | trace_service_pb2.EventsMissed
"""What :meth:`Trace.stream` yields: an event, the end-of-replay marker, or a missed-events notice."""

_RECENT = 16_384
# StreamEventsRequest.max_batch: events already waiting come in one message (cheaper for the sidecar).
_STREAM_BATCH = 256


class Trace:
    """The flight recorder of one sidecar: ``client.trace``.

    Filters are keyword arguments; every one given must match, and list
    arguments match any of their values. ``event_types`` takes names without
    their prefix (``"TASK_DISPATCHED"``) or ``EventType`` numbers.
    """

    def __init__(self, raw: ServiceClient) -> None:
        self._raw = raw

    async def list_events(
        self,
        *,
        workflow_ids: Iterable[str] = (),
        task_ids: Iterable[str] = (),
        event_types: Iterable[str | int] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        worker_id: str = "",
        after_sequence: int = 0,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = 30.0,
    ) -> trace_service_pb2.ListEventsResponse:
        """Returns one page of retained events after ``after_sequence`` (or ``page_token``).

        The response's ``next_page_token`` fetches the next page (empty at
        the end) and ``last_sequence`` is the cursor to follow live from with
        :meth:`stream`.

        Raises:
            InvalidArgumentError: a bad filter, page size or page token (the
                field is named in ``field_violations``).
        """
        request = trace_service_pb2.ListEventsRequest(
            filter=event_filter(
                workflow_ids=workflow_ids,
                task_ids=task_ids,
                event_types=event_types,
                start_time=start_time,
                end_time=end_time,
                worker_id=worker_id,
            ),
            after_sequence=after_sequence,
            page_size=page_size,
            page_token=page_token,
        )
        response: trace_service_pb2.ListEventsResponse = await self._raw.ListEvents(request, timeout=timeout)
        return response

    async def iter_events(
        self,
        *,
        workflow_ids: Iterable[str] = (),
        task_ids: Iterable[str] = (),
        event_types: Iterable[str | int] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        worker_id: str = "",
        after_sequence: int = 0,
        page_size: int = 0,
    ) -> AsyncGenerator[event_pb2.Event, None]:
        """Yields every retained matching event after ``after_sequence``, page by page."""
        request = trace_service_pb2.ListEventsRequest(
            filter=event_filter(
                workflow_ids=workflow_ids,
                task_ids=task_ids,
                event_types=event_types,
                start_time=start_time,
                end_time=end_time,
                worker_id=worker_id,
            ),
            after_sequence=after_sequence,
            page_size=page_size,
        )
        while True:
            page: trace_service_pb2.ListEventsResponse = await self._raw.ListEvents(request)
            for event in page.events:
                yield event
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def stream(
        self,
        *,
        workflow_ids: Iterable[str] = (),
        task_ids: Iterable[str] = (),
        event_types: Iterable[str | int] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        worker_id: str = "",
        after_sequence: int | None = None,
        fill_missed: bool = True,
    ) -> AsyncGenerator[TraceStreamItem, None]:
        """Follows events live: replay after ``after_sequence`` (None: live only), then new ones.

        The filter is ListEvents' (``start_time`` / ``end_time`` bound the
        events' own times, so a stream with an ``end_time`` in the past
        replays and then stays quiet).

        Yields each matching ``Event``, one ``CaughtUp`` when the replay ends,
        and ``EventsMissed`` notices. With ``fill_missed`` (the default), a
        slow-subscriber notice is not yielded: the missed events are fetched
        with ListEvents from the notice's cursor and yielded in its place, so
        the caller sees every event once. Retention notices (the events are
        gone) are always yielded. The stream runs until the caller stops
        iterating. Events the sidecar has ready together arrive in one
        message and are yielded one by one.

        Raises:
            InvalidArgumentError: a bad filter.
            ResourceExhaustedError: the sidecar serves too many streams.
            UnavailableError: the sidecar is shutting down; resume with
                ``after_sequence`` set to the last sequence received.
        """
        filters = event_filter(
            workflow_ids=workflow_ids,
            task_ids=task_ids,
            event_types=event_types,
            start_time=start_time,
            end_time=end_time,
            worker_id=worker_id,
        )
        request = trace_service_pb2.StreamEventsRequest(filter=filters, max_batch=_STREAM_BATCH)
        if after_sequence is not None:
            request.after_sequence = after_sequence
        seen = _Recent()
        async for message in self._raw.StreamEvents(request, timeout=None):
            kind = message.WhichOneof("message")
            if kind in ("event", "batch"):
                for event in (message.event,) if kind == "event" else message.batch.events:
                    if seen.add(event.sequence):
                        yield event
            elif kind == "caught_up":
                yield message.caught_up
            elif not fill_missed or message.missed.reason != trace_service_pb2.MISSED_REASON_SLOW_SUBSCRIBER:
                yield message.missed
            else:
                async for event in self._missed_events(filters, message.missed):
                    if seen.add(event.sequence):
                        yield event

    async def _missed_events(
        self, filters: event_pb2.EventFilter, missed: trace_service_pb2.EventsMissed
    ) -> AsyncGenerator[event_pb2.Event, None]:
        request = trace_service_pb2.ListEventsRequest(
            filter=filters, after_sequence=missed.resume_after_sequence, page_size=1000
        )
        while True:
            page: trace_service_pb2.ListEventsResponse = await self._raw.ListEvents(request)
            for event in page.events:
                if event.sequence > missed.last_missed_sequence:
                    return
                yield event
            if not page.next_page_token or page.last_sequence >= missed.last_missed_sequence:
                return
            request.page_token = page.next_page_token


class _Recent:
    """The last sequences delivered, to drop an event that arrives twice (bounded)."""

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._set: set[int] = set()

    def add(self, sequence: int) -> bool:
        if sequence in self._set:
            return False
        self._set.add(sequence)
        self._order.append(sequence)
        if len(self._order) > _RECENT:
            self._set.discard(self._order.popleft())
        return True


def event_filter(
    *,
    workflow_ids: Iterable[str] = (),
    task_ids: Iterable[str] = (),
    event_types: Iterable[str | int] = (),
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    worker_id: str = "",
) -> event_pb2.EventFilter:
    """Builds an ``are.v1.EventFilter`` from plain values."""
    message = event_pb2.EventFilter(
        workflow_ids=list(workflow_ids),
        task_ids=list(task_ids),
        event_types=[_event_type(value) for value in event_types],
        worker_id=worker_id,
    )
    if start_time is not None:
        message.start_time.FromDatetime(aware(start_time))
    if end_time is not None:
        message.end_time.FromDatetime(aware(end_time))
    return message


def _event_type(value: str | int) -> Any:
    if isinstance(value, int):
        return value
    name = value.upper()
    if not name.startswith("EVENT_TYPE_"):
        name = "EVENT_TYPE_" + name
    try:
        return event_pb2.EventType.Value(name)
    except ValueError:
        raise ValueError(f"unknown event type {value!r}") from None
