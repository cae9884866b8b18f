"""One live event stream: replay from a cursor, the seam, then a bounded live buffer.

The seam has neither gap nor duplicate because the last replay page is read
and the subscription registered in the same synchronous step of the event
loop, and both go by the recorder's watermark: a replay page ends at it
(every event at or below it has settled, and the committed ones are in the
page's snapshot), and the recorder delivers live exactly the events above
it, in sequence order, as it moves.

A cursor may be above the watermark (a producer's own event, returned to
it while lower sequences still commit): the stream then goes live at once
and the events at or below the cursor that settle later are not delivered,
as the cursor asked for those after it.

The live buffer holds at most ``capacity`` items and ``capacity_bytes``
stored bytes (an event of up to ``SMALL_EVENT_BYTES`` counts as that many;
one event is always let in). When it is full, matching events are counted
as missed instead of queued (the producer never waits and memory never
grows); once the reader drains, it first receives one :class:`EventsMissed`
naming the range, then live events again. A replay page is bounded the same
way, by ``_REPLAY_PAGE`` events and ``_REPLAY_PAGE_BYTES``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import msgspec

from are_core.trace._errors import SubscriptionClosedError
from are_core.trace._filter import EventFilter
from are_core.trace._model import Event

if TYPE_CHECKING:
    from are_core.trace._recorder import EventRecorder

__all__ = ["SMALL_EVENT_BYTES", "CaughtUp", "EventsMissed", "StreamItem", "Subscription"]

_REPLAY_PAGE = 256
_REPLAY_PAGE_BYTES = 1 << 20  # each stream's own: 1,024 replaying streams hold at most a GiB
SMALL_EVENT_BYTES = 1024
"""What an event of at most this many stored bytes counts for in the byte bounds of live buffers.

Small events are not measured one by one (the fast path stays as it was);
larger ones count as their stored size, which the recorder notes as it
encodes them.
"""


class EventsMissed(msgspec.Struct, frozen=True, kw_only=True):
    """Matching events this stream did not deliver, and the cursor to fetch them from.

    ``reason`` is ``"SLOW_SUBSCRIBER"`` (still stored: read them with
    ``list_events`` after ``resume_after_sequence``) or ``"RETENTION"``
    (gone; ``missed_count`` is then an upper bound).
    """

    reason: str
    missed_count: int
    first_missed_sequence: int
    last_missed_sequence: int
    resume_after_sequence: int


class CaughtUp(msgspec.Struct, frozen=True, kw_only=True):
    """The end of the replay: everything after this item is live."""

    sequence: int


StreamItem = Event | EventsMissed | CaughtUp


class Subscription:
    """An async iterator of :data:`StreamItem`; use :meth:`EventRecorder.subscribe`.

    Iterate it (``async for item in subscription``) and :meth:`close` it when
    done; iteration ends with :class:`SubscriptionClosedError` if the recorder
    shuts down first. A reader that sends several events at once takes the
    ones already buffered after an item with :meth:`ready_event` and
    :meth:`take_ready_event`, without waiting.
    """

    def __init__(
        self,
        recorder: EventRecorder,
        event_filter: EventFilter,
        after_sequence: int | None,
        capacity: int,
        capacity_bytes: int = 64 << 20,
    ) -> None:
        self._recorder = recorder
        self.event_filter = event_filter
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self._ready: deque[StreamItem] = deque()  # replay items, one page (bounded in events and bytes)
        self._queue: deque[Event | EventsMissed] = deque()  # live items, at most `capacity`
        # Small events are bounded by count: at most this many fit in capacity_bytes too.
        self._limit = min(capacity, max(2, capacity_bytes // SMALL_EVENT_BYTES))
        self._big: dict[int, int] = {}  # sequence -> size, for queued events over SMALL_EVENT_BYTES
        self._big_bytes = 0  # their sum
        # Live events at or below this were asked not to be sent (see the module's docstring).
        self._floor = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._live = False
        # The overflow being counted: [count, first, last] while events are dropped.
        self._missed: list[int] | None = None
        self.missed_total = 0
        """Matching events dropped because this subscriber was slow."""
        # 0 means "from the oldest retained": nothing can have been missed before it.
        self._cursor = max(after_sequence or 0, recorder.pruned_through if after_sequence == 0 else 0)
        if after_sequence is None:
            self._go_live()

    @property
    def live(self) -> bool:
        """Whether the replay is over and the stream follows live events."""
        return self._live

    @property
    def buffered(self) -> int:
        """Live items waiting to be read (at most ``capacity``)."""
        return len(self._queue)

    def _go_live(self, through: int | None = None) -> None:
        """Follows live events from here; ``through``: where the replay ended."""
        recorder = self._recorder
        recorder._register(self)  # noqa: SLF001 - the recorder and its streams are one unit
        self._live = True
        if through is None:
            through = recorder.stored_through()
        # Above the watermark when the cursor was: live events up to it are not sent.
        self._floor = through
        self._ready.append(CaughtUp(sequence=through))

    def _replay_page(self) -> None:
        recorder = self._recorder
        floor = recorder.pruned_through
        if self._cursor < floor:  # retention dropped events this stream has not replayed yet
            self._ready.append(
                EventsMissed(
                    reason="RETENTION",
                    missed_count=floor - self._cursor,
                    first_missed_sequence=self._cursor + 1,
                    last_missed_sequence=floor,
                    resume_after_sequence=floor,
                )
            )
            self._cursor = floor
        page = recorder.list_events(
            self.event_filter,
            after_sequence=self._cursor,
            limit=_REPLAY_PAGE,
            scan_budget=_REPLAY_PAGE * 16,
            max_bytes=_REPLAY_PAGE_BYTES,
        )
        self._cursor = page.last_sequence
        self._ready.extend(page.events)
        if not page.more:
            # Same synchronous step as the read above: nothing can be delivered in between.
            self._go_live(page.last_sequence)

    def offer(self, event: Event, size: int = SMALL_EVENT_BYTES) -> None:
        """Queues a published event, or counts it missed when the buffer is full (never blocks).

        ``size``: the event's stored bytes, or ``SMALL_EVENT_BYTES`` for a small event.
        """
        if self._closed or event.sequence <= self._floor:
            return
        queue = self._queue
        missed = self._missed
        if missed is None:
            if len(queue) < self._limit and (
                (size == SMALL_EVENT_BYTES and not self._big) or self._fits(size)
            ):
                queue.append(event)
                if size != SMALL_EVENT_BYTES:
                    self._count(event, size)
                self._wake.set()
                return
            self._missed = [1, event.sequence, event.sequence]
        elif len(queue) <= self._limit - 2 and self._fits(size):
            # Room for the notice and the event: the overflow is over.
            queue.append(self._take_missed())
            queue.append(event)
            if size != SMALL_EVENT_BYTES:
                self._count(event, size)
        else:
            missed[0] += 1
            missed[1] = min(missed[1], event.sequence)
            missed[2] = max(missed[2], event.sequence)
        self.missed_total += 1 if self._missed is not None else 0
        self._wake.set()

    def _fits(self, size: int) -> bool:
        """Whether an event of ``size`` bytes fits in ``capacity_bytes`` (always, in an empty buffer)."""
        queue = self._queue
        if not queue:
            return True
        big = self._big
        used = (len(queue) - len(big)) * SMALL_EVENT_BYTES + self._big_bytes
        return used + size <= self.capacity_bytes

    def _count(self, event: Event, size: int) -> None:
        self._big[event.sequence] = size
        self._big_bytes += size

    def _take_missed(self) -> EventsMissed:
        assert self._missed is not None
        count, first, last = self._missed
        self._missed = None
        return EventsMissed(
            reason="SLOW_SUBSCRIBER",
            missed_count=count,
            first_missed_sequence=first,
            last_missed_sequence=last,
            resume_after_sequence=first - 1,
        )

    async def next(self) -> StreamItem:
        """The next item: replayed events, the CaughtUp marker, then live items.

        Raises:
            SubscriptionClosedError: the recorder shut down (or :meth:`close`).
        """
        while True:
            if self._ready:
                return self._ready.popleft()
            if not self._live:
                if self._closed:
                    raise SubscriptionClosedError("the event stream was closed")
                self._replay_page()
                if not self._ready:
                    await asyncio.sleep(0)  # a selective filter over a long log: let others run
                continue
            queue = self._queue
            if queue:
                return self._pop_live()
            if self._missed is not None:
                return self._take_missed()
            if self._closed:
                raise SubscriptionClosedError("the event stream was closed")
            self._wake.clear()
            await self._wake.wait()

    def ready_event(self) -> Event | None:
        """The next item if it is an event that can be read at once, else None; it is not taken.

        None also when the next item is a notice (:class:`EventsMissed`,
        :class:`CaughtUp`), when nothing is buffered, and when the next replay
        page is still to be read: a batch of events is never mixed with a
        notice, and checking never reads the log or waits.
        """
        if self._closed:
            return None
        if self._ready:
            item = self._ready[0]
        elif self._live and self._queue:
            item = self._queue[0]
        else:
            return None
        return item if isinstance(item, Event) else None

    def take_ready_event(self) -> Event:
        """Takes the event :meth:`ready_event` just returned (call it only then)."""
        item = self._ready.popleft() if self._ready else self._pop_live()
        assert isinstance(item, Event)
        return item

    def _pop_live(self) -> Event | EventsMissed:
        item = self._queue.popleft()
        big = self._big
        if big and isinstance(item, Event):
            self._big_bytes -= big.pop(item.sequence, 0)
        return item

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StreamItem:
        try:
            return await self.next()
        except SubscriptionClosedError:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stops the stream and releases its buffer; idempotent."""
        self._closed = True
        self._recorder._unregister(self)  # noqa: SLF001
        self._queue.clear()
        self._big.clear()
        self._big_bytes = 0
        self._wake.set()
