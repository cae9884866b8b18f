"""The flight recorder: events in LMDB, bounded retention, paged reads, live fan-out.

Layout (two tables, both declared by the trace capability):

* ``trace_events``: ``u64_key(sequence)`` -> the :class:`Event` as MessagePack;
  big-endian keys make LMDB's order the sequence order.
* ``trace_events_by_workflow``: ``join_key(workflow_id, sequence)`` -> ``b""``,
  a secondary index so reading one workflow's events does not scan the log.
* ``trace_meta``: ``pruned_through`` -> the highest sequence retention ever
  dropped, so that sequences are never reused after a restart, even when
  retention emptied the log.

Sequences are assigned in :meth:`EventRecorder.record` (on the event loop, so
strictly increasing) and recovered on start as one past the highest sequence
ever stored. A batch that fails to commit leaves a gap; gaps are allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from are_core.storage import (
    Batch,
    Codec,
    GroupCommitter,
    ReadView,
    Storage,
    StorageError,
    join_key,
    parse_u64_key,
    prefix_end,
    prefix_key,
    u64_key,
)
from are_core.trace._errors import TooManySubscribersError
from are_core.trace._filter import EventFilter
from are_core.trace._ids import trace_context_of
from are_core.trace._model import Event, EventDraft
from are_core.trace._stream import Subscription

__all__ = ["EVENT_TABLES", "EventListener", "EventPage", "EventRecorder"]

EVENTS_TABLE = "trace_events"
BY_WORKFLOW_TABLE = "trace_events_by_workflow"
META_TABLE = "trace_meta"
EVENT_TABLES = (EVENTS_TABLE, BY_WORKFLOW_TABLE, META_TABLE)
_PRUNED_THROUGH = b"pruned_through"
# An event recorded but not published within this long belongs to a batch
# that failed to commit; it is forgotten so the pending set stays small.
_PENDING_EXPIRY_NS = 120 * 1_000_000_000
_PREFIX_CACHE = 4096  # encoded workflow-id key prefixes kept for record()
_log = logging.getLogger("are.trace")


class EventListener(Protocol):
    """Receives every committed event, in publish order (the OpenTelemetry exporter)."""

    def on_events(self, events: Sequence[Event]) -> None:
        """Handles committed events; must be quick and must not raise."""
        ...


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of :meth:`EventRecorder.list_events`.

    Attributes:
        events: Matching events, ascending by sequence.
        last_sequence: The cursor after this page: the log was scanned up to
            here (inclusive).
        more: Whether the scan stopped before the end of the log (the page
            filled or the scan budget ran out): fetch again from
            ``last_sequence``.
        oldest_retained_sequence: The oldest sequence still stored.
    """

    events: list[Event]
    last_sequence: int
    more: bool
    oldest_retained_sequence: int


class EventRecorder:
    """Implements :class:`~are_core.trace.EventSink`: keeps, pages and streams events.

    Args:
        storage: The sidecar's storage, opened with :data:`EVENT_TABLES`.
        committer: Its group committer, used by retention pruning.
        retention_count: Keep at most this many events (the oldest go first).
        retention_age_s: Drop events older than this many seconds.
        subscriber_buffer: Events a live subscriber may have unread before it
            is told it missed some.
        max_subscribers: Live streams served at once.
        prune_batch: Events deleted per pruning transaction (bounded work).
        prune_interval_s: Seconds between retention checks.
        clock_ns: The wall clock, in Unix nanoseconds.
    """

    def __init__(
        self,
        storage: Storage,
        committer: GroupCommitter,
        *,
        retention_count: int = 10_000_000,
        retention_age_s: float = 7 * 86_400.0,
        subscriber_buffer: int = 10_000,
        max_subscribers: int = 1024,
        prune_batch: int = 1_000,
        prune_interval_s: float = 1.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if retention_count < 1 or retention_age_s <= 0 or subscriber_buffer < 2 or prune_batch < 1:
            raise ValueError("retention, buffer and prune bounds must be positive (buffer at least 2)")
        self._storage = storage
        self._committer = committer
        self.retention_count = retention_count
        self.retention_age_s = retention_age_s
        self.subscriber_buffer = subscriber_buffer
        self.max_subscribers = max_subscribers
        self.prune_batch = prune_batch
        self.prune_interval_s = prune_interval_s
        self._clock_ns = clock_ns
        self._codec = Codec(Event)
        self._encode = msgspec.msgpack.Encoder().encode  # the same encoding as ``self._codec``
        self._prefixes: dict[str, bytes] = {}  # workflow id -> its by-workflow key prefix
        self._next_sequence = 1
        self._pruned_through = 0
        # sequence -> monotonic ns of record(), for events not yet published.
        self._pending: dict[int, int] = {}
        self._subscribers: set[Subscription] = set()  # live: receive published events
        self._open: set[Subscription] = set()  # every open stream, replaying or live
        self._listeners: list[EventListener] = []
        self._pruner: asyncio.Task[None] | None = None
        self._closed = False
        self.recorded = 0
        """Events recorded since start (committed or not)."""
        self.pruned = 0
        """Events dropped by retention since start."""

    # Lifecycle

    def recover(self) -> None:
        """Restores the next sequence from storage; call once before recording."""
        with self._storage.read() as view:
            last = view.scan(EVENTS_TABLE, reverse=True, limit=1)
            floor = view.get(META_TABLE, _PRUNED_THROUGH)
        self._pruned_through = parse_u64_key(floor) if floor is not None else 0
        highest = parse_u64_key(last[0][0]) if last else 0
        self._next_sequence = max(highest, self._pruned_through) + 1

    def start_pruning(self) -> None:
        """Starts the background retention task on the running loop."""
        if self._pruner is None:
            self._pruner = asyncio.get_running_loop().create_task(self._prune_loop(), name="are-trace-prune")

    def close_subscriptions(self) -> None:
        """Ends every live stream (shutdown); later subscribes are refused."""
        self._closed = True
        for subscription in list(self._open):
            subscription.close()
        self._subscribers.clear()
        self._open.clear()

    async def stop(self) -> None:
        """Stops pruning and ends the live streams."""
        self.close_subscriptions()
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None

    def add_listener(self, listener: EventListener) -> None:
        """Also hands every published event to ``listener`` (an exporter)."""
        self._listeners.append(listener)

    # The EventSink seam

    @property
    def last_sequence(self) -> int:
        """The highest sequence assigned so far (0 before the first event)."""
        return self._next_sequence - 1

    @property
    def pruned_through(self) -> int:
        """The highest sequence dropped by retention (0 if none ever was)."""
        return self._pruned_through

    @property
    def subscriber_count(self) -> int:
        """Streams currently open (replaying or live)."""
        return len(self._open)

    def record(self, batch: Batch, draft: EventDraft) -> Event:
        """Assigns sequence and time and adds the event's rows to ``batch``.

        This runs for every transition of every task (three events per task
        at least), so the keys are built inline: ``u64_key(sequence)``, and
        ``join_key(workflow_id, sequence)`` from a cached encoded prefix.
        """
        sequence = self._next_sequence
        self._next_sequence = sequence + 1
        when = draft.event_time_unix_ns
        workflow_id = draft.workflow_id
        event = Event(
            sequence=sequence,
            event_time_unix_ns=when if when is not None else self._clock_ns(),
            event_type=draft.event_type,
            workflow_id=workflow_id,
            task_id=draft.task_id,
            attempt=draft.attempt,
            worker_id=draft.worker_id,
            task_state=draft.task_state,
            workflow_state=draft.workflow_state,
            failure=draft.failure,
            usage=draft.usage,
            duration_ns=draft.duration_ns,
            name=draft.name,
            attributes=dict(draft.attributes),
            span_id=draft.span_id,
        )
        key = sequence.to_bytes(8, "big")  # = u64_key(sequence); sequences stay far below 2**64
        batch.put(EVENTS_TABLE, key, self._encode(event))
        if workflow_id:
            prefix = self._prefixes.get(workflow_id)
            if prefix is None:
                prefix = self._index_prefix(workflow_id)
            if prefix:
                batch.put(BY_WORKFLOW_TABLE, prefix + key, b"")  # = join_key(workflow_id, sequence)
        self._pending[sequence] = time.monotonic_ns()
        self.recorded += 1
        return event

    def _index_prefix(self, workflow_id: str) -> bytes:
        """``prefix_key(workflow_id)``, or b"" when the id cannot be indexed; cached (bounded)."""
        prefix = prefix_key(workflow_id) if _indexable(workflow_id) else b""
        prefixes = self._prefixes
        if len(prefixes) >= _PREFIX_CACHE:
            del prefixes[next(iter(prefixes))]  # the oldest entry
        prefixes[workflow_id] = prefix
        return prefix

    def publish(self, events: Sequence[Event]) -> None:
        """Fans committed events out to live subscribers and listeners."""
        pending = self._pending
        subscribers = self._subscribers
        # Replaying streams: an event can commit behind a replay's cursor (see Subscription.offer_late).
        replaying = self._open.difference(subscribers) if len(self._open) > len(subscribers) else ()
        for event in events:
            pending.pop(event.sequence, None)
            for subscription in subscribers:
                if subscription.event_filter.matches(event):
                    subscription.offer(event)
            for subscription in replaying:
                subscription.offer_late(event)
        for listener in self._listeners:
            try:
                listener.on_events(events)
            except Exception:  # noqa: BLE001 - an exporter bug must not fail the producer's transition
                _log.exception("an event listener failed")
        self._expire_pending()

    def _expire_pending(self) -> None:
        if not self._pending:
            return
        horizon = time.monotonic_ns() - _PENDING_EXPIRY_NS
        pending = self._pending
        while pending:  # oldest first: stops at the first one still young
            sequence, recorded_at = next(iter(pending.items()))
            if recorded_at >= horizon:
                break
            del pending[sequence]

    def is_pending(self, sequence: int) -> bool:
        """Whether ``sequence`` was recorded and not yet published."""
        return sequence in self._pending

    # Reads

    def oldest_retained_sequence(self) -> int:
        """The oldest sequence stored, or the next one when the log is empty."""
        with self._storage.read() as view:
            return self._oldest(view)

    def _oldest(self, view: ReadView) -> int:
        first = view.scan(EVENTS_TABLE, limit=1)
        return parse_u64_key(first[0][0]) if first else self._next_sequence

    def list_events(
        self,
        event_filter: EventFilter,
        *,
        after_sequence: int = 0,
        limit: int = 100,
        scan_budget: int = 10_000,
    ) -> EventPage:
        """Reads up to ``limit`` matching events after ``after_sequence``.

        At most ``scan_budget`` stored rows are examined, so a selective filter
        over a long log answers in bounded time with ``more`` set and a cursor
        to continue from.
        """
        limit = max(1, limit)
        scan_budget = max(limit, scan_budget)
        with self._storage.read() as view:
            oldest = self._oldest(view)
            if event_filter.workflow_ids:
                page = self._list_indexed(view, event_filter, after_sequence, limit, scan_budget)
            else:
                page = self._list_scan(view, event_filter, after_sequence, limit, scan_budget)
        events, last, more = page
        return EventPage(events=events, last_sequence=last, more=more, oldest_retained_sequence=oldest)

    def _list_scan(
        self, view: ReadView, event_filter: EventFilter, after: int, limit: int, budget: int
    ) -> tuple[list[Event], int, bool]:
        rows = view.scan(EVENTS_TABLE, start=u64_key(after + 1), limit=budget)
        decode = self._codec.decode
        events: list[Event] = []
        last = after
        for key, value in rows:
            last = parse_u64_key(key)
            event = decode(value)
            if event_filter.matches(event):
                events.append(event)
                if len(events) == limit:
                    return events, last, bool(view.scan(EVENTS_TABLE, start=u64_key(last + 1), limit=1))
        if len(rows) == budget:
            return events, last, True
        return events, max(last, self._log_end(view, after)), False

    def _list_indexed(
        self, view: ReadView, event_filter: EventFilter, after: int, limit: int, budget: int
    ) -> tuple[list[Event], int, bool]:
        per_workflow = max(limit, budget // len(event_filter.workflow_ids))
        sequences: list[int] = []
        horizon: int | None = None  # every listed workflow is scanned through here
        for workflow_id in sorted(event_filter.workflow_ids):
            if not _indexable(workflow_id):
                continue
            end = prefix_end(prefix_key(workflow_id))
            start = join_key(workflow_id, after + 1)
            rows = view.scan(BY_WORKFLOW_TABLE, start=start, end=end, limit=per_workflow)
            found = [parse_u64_key(key[-8:]) for key, _ in rows]
            sequences.extend(found)
            if len(rows) == per_workflow:
                horizon = found[-1] if horizon is None else min(horizon, found[-1])
        sequences.sort()
        if horizon is not None:
            sequences = [s for s in sequences if s <= horizon]
        decode = self._codec.decode
        events: list[Event] = []
        values = view.get_many(EVENTS_TABLE, [u64_key(s) for s in sequences])
        for index, (sequence, value) in enumerate(zip(sequences, values, strict=True)):
            if value is None:
                continue
            event = decode(value)
            if event_filter.matches(event):
                events.append(event)
                if len(events) == limit:
                    return events, sequence, index + 1 < len(sequences) or horizon is not None
        if horizon is not None:
            return events, horizon, True
        return events, max(after, self._log_end(view, after)), False

    def workflow_trace_context(self, workflow_id: str) -> tuple[int, int | None] | None:
        """The trace context recorded on a workflow's submission event (see ``SpanBuilder``)."""
        if not _indexable(workflow_id):
            return None
        with self._storage.read() as view:
            rows = view.scan(BY_WORKFLOW_TABLE, prefix=prefix_key(workflow_id), limit=8)
            values = view.get_many(EVENTS_TABLE, [key[-8:] for key, _ in rows])
        for value in values:
            if value is None:
                continue
            event = self._codec.decode(value)
            if event.event_type in {"WORKFLOW_SUBMITTED", "WORKFLOW_FORKED"}:
                return trace_context_of(event.attributes)
        return None

    def _log_end(self, view: ReadView, after: int) -> int:
        last = view.scan(EVENTS_TABLE, reverse=True, limit=1)
        return max(after, parse_u64_key(last[0][0])) if last else after

    # Live streams

    def subscribe(self, event_filter: EventFilter, after_sequence: int | None) -> Subscription:
        """Opens a live stream: replay after ``after_sequence`` (None: none), then follow.

        Raises:
            TooManySubscribersError: ``max_subscribers`` streams are open.
            SubscriptionClosedError: the recorder is shutting down.
        """
        if len(self._open) >= self.max_subscribers:
            raise TooManySubscribersError(
                f"at most {self.max_subscribers} live event streams are served at once"
            )
        subscription = Subscription(self, event_filter, after_sequence, self.subscriber_buffer)
        if self._closed:
            subscription.close()
        else:
            self._open.add(subscription)
        return subscription

    def _register(self, subscription: Subscription) -> None:
        if self._closed:
            subscription.close()
        else:
            self._subscribers.add(subscription)

    def _unregister(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        self._open.discard(subscription)

    # Retention

    async def prune_once(self) -> int:
        """Drops at most ``prune_batch`` of the oldest events beyond retention; returns how many."""
        horizon_ns = self._clock_ns() - int(self.retention_age_s * 1e9)
        with self._storage.read() as view:
            excess = view.count(EVENTS_TABLE) - self.retention_count
            if excess <= 0:
                # The usual case, checked once a second on the event loop:
                # only the oldest event's age can make pruning due.
                oldest = view.scan(EVENTS_TABLE, limit=1)
                if not oldest or self._codec.decode(oldest[0][1]).event_time_unix_ns >= horizon_ns:
                    return 0
            rows = view.scan(EVENTS_TABLE, limit=self.prune_batch)
            batch = self._storage.batch()
            dropped = 0
            last = 0
            for key, value in rows:
                event = self._codec.decode(value)
                if excess <= 0 and event.event_time_unix_ns >= horizon_ns:
                    break
                excess -= 1
                last = event.sequence
                batch.delete(EVENTS_TABLE, key)
                if _indexable(event.workflow_id):
                    batch.delete(BY_WORKFLOW_TABLE, join_key(event.workflow_id, event.sequence))
                dropped += 1
        if not dropped:
            return 0
        through = max(last, self._pruned_through)
        batch.put(META_TABLE, _PRUNED_THROUGH, u64_key(through))
        await self._committer.submit(batch)
        self._pruned_through = through
        self.pruned += dropped
        return dropped

    async def _prune_loop(self) -> None:
        while True:
            try:
                # Several bounded batches in a row while far behind, yielding between them.
                for _ in range(100):
                    if await self.prune_once() < self.prune_batch:
                        break
            except StorageError as error:
                _log.warning(f"event retention pruning failed, will retry: {error}")
            await asyncio.sleep(self.prune_interval_s)


def _indexable(workflow_id: str) -> bool:
    return bool(workflow_id) and "\x00" not in workflow_id
