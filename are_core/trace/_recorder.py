"""The flight recorder: events in LMDB, bounded retention, paged reads, live fan-out.

Layout (two tables, both declared by the trace capability):

* ``trace_events``: ``u64_key(sequence)`` -> the :class:`Event` as MessagePack;
  big-endian keys make LMDB's order the sequence order.
* ``trace_events_by_workflow``: ``join_key(workflow_id, sequence)`` -> ``b""``,
  a secondary index so reading one workflow's events does not scan the log.
* ``trace_meta``: ``pruned_through`` -> the highest sequence retention ever
  dropped, so that sequences are never reused after a restart, even when
  retention emptied the log.

Retention by age goes by the time the sidecar recorded an event, never by
the event's own time (a worker's clock: one event a year ahead, walked in
sequence order, would otherwise keep every later one).

Rows are read in chunks bounded by bytes as well as rows, and pages (of
:meth:`EventRecorder.list_events`, of stream replays) can be bounded by the
stored bytes of their events: an event may be about a megabyte (64 worker
attributes of 16 KiB), so a bound in events alone is no bound on memory.

Sequences are assigned in :meth:`EventRecorder.record` (on the event loop, so
strictly increasing) and recovered on start as one past the highest sequence
ever stored. A batch that fails to commit leaves a gap; gaps are allowed.

Batches can commit out of sequence order: a producer may record, let other
coroutines run, then submit (the scheduler's transaction of a loop turn, the
cache's and router's event flushes recorded a slice per turn). So the
recorder keeps a *visible* watermark: the highest sequence through which
every event has settled (committed, or its batch failed or was dropped
unsubmitted). It learns of each batch's outcome from the group committer
(:meth:`~are_core.storage.GroupCommitter.add_settle_listener`) and of a
batch dropped without being submitted from a weak reference to it.

* Reads (:meth:`EventRecorder.list_events`, stream replays) stop at the
  watermark, so a cursor never passes an event that commits later.
* Live streams and listeners receive events in sequence order, as the
  watermark passes them: a committed event waits, at most for the commits
  in flight below it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from are_core._backoff import backoff
from are_core.storage import (
    Batch,
    Codec,
    GroupCommitter,
    ReadView,
    Storage,
    StorageError,
    join_key,
    parse_u64_key,
    prefix_key,
    u64_key,
)
from are_core.trace._errors import TooManySubscribersError
from are_core.trace._filter import EventFilter
from are_core.trace._ids import trace_context_of
from are_core.trace._model import Event, EventDraft
from are_core.trace._stream import SMALL_EVENT_BYTES, Subscription

__all__ = ["EVENT_TABLES", "EventListener", "EventPage", "EventRecorder"]

EVENTS_TABLE = "trace_events"
BY_WORKFLOW_TABLE = "trace_events_by_workflow"
META_TABLE = "trace_meta"
EVENT_TABLES = (EVENTS_TABLE, BY_WORKFLOW_TABLE, META_TABLE)
_PRUNED_THROUGH = b"pruned_through"
# The last resort for an event whose batch neither settles nor is dropped (a
# producer that keeps an unsubmitted batch): after this long the watermark
# passes it, with a warning.
_PENDING_EXPIRY_NS = 120 * 1_000_000_000
# After a retention pass failed, the next waits twice as long as the last, up
# to this: a failure that persists (a full disk) costs a scan and a failed
# commit a minute, not a second, and the log says so once per run of failures.
_PRUNE_MAX_BACKOFF_S = 60.0
_MAX_VISIBLE_WAITERS = 1024
_PREFIX_CACHE = 4096  # encoded workflow-id key prefixes kept for record()
# Rows read from LMDB at once are bounded so that one chunk holds about this
# many bytes (its first chunk is sized by the page), and one page reads at
# most _SCAN_MAX_BYTES of rows (then it ends with ``more`` and a cursor).
_SCAN_FIRST_CHUNK = 64
_SCAN_CHUNK_BYTES = 4 << 20
_SCAN_CHUNK_ROWS = 1024
_SCAN_MAX_BYTES = 64 << 20
_log = logging.getLogger("are.trace")


class _BatchEvents(weakref.ref[Batch]):
    """The events recorded into one batch that has not settled; a weak reference to the batch.

    ``weakref.ref.__new__`` takes the batch and the callback (called when the
    batch dies while this reference lives); this adds the fields.
    """

    __slots__ = ("events", "key")

    def __init__(self, batch: Batch, on_dropped: Callable[[_BatchEvents], None]) -> None:  # noqa: ARG002 - for __new__
        self.key = id(batch)
        self.events: list[Event] = []


class _Subscribers:
    """The live subscriptions, indexed so that an event is matched only against those that may want it.

    A stream usually follows some workflows (or some event types): with
    hundreds of streams open, trying every filter on every event cost the
    scheduler's loop a filter call per stream per event. Each subscription
    sits in one place: under each of its workflow ids, else under each of
    its event types, else among those that see everything; an event is then
    tried against its workflow's, its type's and the rest, disjoint sets.
    """

    def __init__(self) -> None:
        self._by_workflow: dict[str, set[Subscription]] = {}
        self._by_type: dict[str, set[Subscription]] = {}
        self._rest: set[Subscription] = set()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _keys(self, subscription: Subscription) -> tuple[dict[str, set[Subscription]] | None, frozenset[str]]:
        event_filter = subscription.event_filter
        if event_filter.workflow_ids:
            return self._by_workflow, event_filter.workflow_ids
        if event_filter.event_types:
            return self._by_type, event_filter.event_types
        return None, frozenset()

    def add(self, subscription: Subscription) -> None:
        index, keys = self._keys(subscription)
        if index is None:
            if subscription in self._rest:
                return
            self._rest.add(subscription)
        else:
            first = next(iter(keys))
            if subscription in index.get(first, ()):
                return
            for key in keys:
                index.setdefault(key, set()).add(subscription)
        self._count += 1

    def discard(self, subscription: Subscription) -> None:
        index, keys = self._keys(subscription)
        if index is None:
            if subscription not in self._rest:
                return
            self._rest.discard(subscription)
        else:
            if subscription not in index.get(next(iter(keys)), ()):
                return
            for key in keys:
                members = index[key]
                members.discard(subscription)
                if not members:
                    del index[key]
        self._count -= 1

    def clear(self) -> None:
        self._by_workflow.clear()
        self._by_type.clear()
        self._rest.clear()
        self._count = 0

    def offer(self, event: Event, size: int) -> None:
        """Hands ``event`` to every subscription whose filter it passes."""
        for candidates in (
            self._by_workflow.get(event.workflow_id, ()) if event.workflow_id else (),
            self._by_type.get(event.event_type, ()),
            self._rest,
        ):
            for subscription in candidates:
                if subscription.event_filter.matches(event):
                    subscription.offer(event, size)


class EventListener(Protocol):
    """Receives every committed event, in sequence order (the OpenTelemetry exporter)."""

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
        committer: Its group committer: it reports each batch's outcome to
            the recorder, and retention pruning commits through it.
        retention_count: Keep at most this many events (the oldest go first).
        retention_age_s: Drop events recorded more than this many seconds
            ago (by the sidecar's clock when it recorded them, whatever time
            a worker gave the event).
        subscriber_buffer: Events a live subscriber may have unread before it
            is told it missed some.
        subscriber_buffer_bytes: The same bound in stored bytes (an event of
            at most :data:`SMALL_EVENT_BYTES` counts as that many); at least
            one event is always buffered.
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
        subscriber_buffer_bytes: int = 64 << 20,
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
        self.subscriber_buffer_bytes = subscriber_buffer_bytes
        self.max_subscribers = max_subscribers
        self.prune_batch = prune_batch
        self.prune_interval_s = prune_interval_s
        self._clock_ns = clock_ns
        # Rows stored before record times were kept, with an event time ahead of
        # the clock (a worker's), count as recorded when this recorder started.
        self._started_ns = clock_ns()
        self._codec = Codec(Event)
        self._encode = msgspec.msgpack.Encoder().encode  # the same encoding as ``self._codec``
        self._prefixes: dict[str, bytes] = {}  # workflow id -> its by-workflow key prefix
        self._next_sequence = 1
        self._pruned_through = 0
        # sequence -> monotonic ns of record(), for events whose batch has not settled.
        self._pending: dict[int, int] = {}
        # id(batch) -> its recorded events, while the batch has not settled.
        self._unsettled: dict[int, _BatchEvents] = {}
        # Committed events above the watermark, waiting for those below to settle.
        self._committed: dict[int, Event] = {}
        # sequence -> stored bytes, for events larger than SMALL_EVENT_BYTES not yet delivered.
        self._sizes: dict[int, int] = {}
        self._visible = 0  # every sequence through this one has settled and was delivered
        self._visible_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_dropped = self._batch_dropped  # one bound method for every weak reference
        committer.add_settle_listener(self._batch_settled)
        self._subscribers = _Subscribers()  # live: receive published events
        self._open: set[Subscription] = set()  # every open stream, replaying or live
        self._listeners: list[EventListener] = []
        self._pruner: asyncio.Task[None] | None = None
        self._closed = False
        self.recorded = 0
        """Events recorded since start (committed or not)."""
        self.pruned = 0
        """Events dropped by retention since start."""
        self.expired_pending = 0
        """Events the watermark passed unsettled after the pending expiry (a producer bug)."""

    # Lifecycle

    def recover(self) -> None:
        """Restores the next sequence from storage; call once before recording."""
        with self._storage.read() as view:
            last = view.scan(EVENTS_TABLE, reverse=True, limit=1)
            floor = view.get(META_TABLE, _PRUNED_THROUGH)
        self._pruned_through = parse_u64_key(floor) if floor is not None else 0
        highest = parse_u64_key(last[0][0]) if last else 0
        self._next_sequence = max(highest, self._pruned_through) + 1
        self._visible = self._next_sequence - 1

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
    def visible_through(self) -> int:
        """The watermark: every event through this sequence has settled and reached the streams."""
        return self._visible

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
        recorded = 0  # the event time is the record time
        if when is None:
            when = self._clock_ns()
        else:  # a worker's time: the record time is kept beside it
            recorded = self._clock_ns()
        workflow_id = draft.workflow_id
        event = Event(
            sequence=sequence,
            event_time_unix_ns=when,
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
        if recorded:
            # Not passed above: a keyword for a renamed field costs every event about 0.5 µs.
            event = msgspec.structs.replace(event, recorded_unix_ns=recorded)
        key = sequence.to_bytes(8, "big")  # = u64_key(sequence); sequences stay far below 2**64
        value = self._encode(event)
        batch.put(EVENTS_TABLE, key, value)
        if len(value) > SMALL_EVENT_BYTES:
            self._sizes[sequence] = len(value)
        if workflow_id:
            prefix = self._prefixes.get(workflow_id)
            if prefix is None:
                prefix = self._index_prefix(workflow_id)
            if prefix:
                batch.put(BY_WORKFLOW_TABLE, prefix + key, b"")  # = join_key(workflow_id, sequence)
        self._pending[sequence] = time.monotonic_ns()
        unsettled = self._unsettled.get(id(batch))
        if unsettled is None:
            unsettled = self._track(batch)
        unsettled.events.append(event)
        self.recorded += 1
        return event

    def _track(self, batch: Batch) -> _BatchEvents:
        if self._loop is None:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
        unsettled = self._unsettled[id(batch)] = _BatchEvents(batch, self._on_dropped)
        return unsettled

    def _index_prefix(self, workflow_id: str) -> bytes:
        """``prefix_key(workflow_id)``, or b"" when the id cannot be indexed; cached (bounded)."""
        prefix = prefix_key(workflow_id) if _indexable(workflow_id) else b""
        prefixes = self._prefixes
        if len(prefixes) >= _PREFIX_CACHE:
            del prefixes[next(iter(prefixes))]  # the oldest entry
        prefixes[workflow_id] = prefix
        return prefix

    def publish(self, events: Sequence[Event]) -> None:
        """Tells the recorder that ``events`` committed (the producer's side of the seam).

        Batches submitted through the recorder's committer are known to have
        committed before their producer resumes, so this is a no-op for them;
        it covers batches written any other way.
        """
        pending = self._pending
        committed = self._committed
        found = False
        for event in events:
            if pending.pop(event.sequence, None) is not None:
                committed[event.sequence] = event
                found = True
        if found:
            self._advance()

    def _batch_settled(self, batch: Batch, committed: bool) -> None:
        unsettled = self._unsettled.pop(id(batch), None)
        if unsettled is None:
            return
        pending = self._pending
        waiting = self._committed
        for event in unsettled.events:
            if pending.pop(event.sequence, None) is not None and committed:
                waiting[event.sequence] = event
        self._advance()

    def _batch_dropped(self, unsettled: _BatchEvents) -> None:
        """A batch with events died unsettled (never submitted): its sequences are gaps.

        This runs wherever the batch's last reference went, so it only
        updates the sets and leaves the delivery to a callback of the loop.
        """
        if self._unsettled.get(unsettled.key) is unsettled:
            del self._unsettled[unsettled.key]
        for event in unsettled.events:
            self._pending.pop(event.sequence, None)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._advance)

    def _advance(self) -> None:
        """Moves the watermark over every settled sequence, delivering the committed ones in order."""
        visible = self._visible
        end = self._next_sequence - 1
        if visible >= end:
            return
        pending = self._pending
        waiting = self._committed
        ready: list[Event] = []
        while visible < end and visible + 1 not in pending:
            visible += 1
            event = waiting.pop(visible, None)
            if event is not None:
                ready.append(event)
        if visible == self._visible:
            return
        self._visible = visible
        if ready:
            self._deliver(ready)
        sizes = self._sizes
        if sizes:  # events of failed or dropped batches, never delivered
            for sequence in [s for s in sizes if s <= visible]:
                del sizes[sequence]
        if self._visible_waiters:
            self._wake_visible_waiters()

    def _deliver(self, events: list[Event]) -> None:
        """Fans committed events, in sequence order, out to live streams and listeners."""
        subscribers = self._subscribers
        sizes = self._sizes
        for event in events:
            size = sizes.pop(event.sequence, SMALL_EVENT_BYTES) if sizes else SMALL_EVENT_BYTES
            if subscribers:
                subscribers.offer(event, size)
        for listener in self._listeners:
            try:
                listener.on_events(events)
            except Exception:  # noqa: BLE001 - an exporter bug must not fail the producer's transition
                _log.exception("an event listener failed")

    def _wake_visible_waiters(self) -> None:
        visible = self._visible
        still: list[tuple[int, asyncio.Future[None]]] = []
        for sequence, future in self._visible_waiters:
            if sequence <= visible:
                if not future.done():
                    future.set_result(None)
            elif not future.done():
                still.append((sequence, future))
        self._visible_waiters = still

    async def wait_visible(self, sequence: int, timeout_s: float) -> bool:
        """Waits until the watermark reaches ``sequence`` (at most ``timeout_s``); returns whether it did.

        A reader calls it with :attr:`last_sequence` to see every event
        recorded before it asked: those still committing settle within a
        commit or two.
        """
        self._advance()
        if self._visible >= sequence:
            return True
        if len(self._visible_waiters) >= _MAX_VISIBLE_WAITERS:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._visible_waiters.append((sequence, future))
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            return False
        finally:
            if not future.done():
                future.cancel()
        return True

    def expire_pending(self) -> int:
        """Lets the watermark pass events unsettled for longer than the expiry; returns how many.

        Every producer submits or drops the batch it records into, so this
        only catches a producer that keeps one: its events are then
        delivered late, if ever, and a cursor may have passed them.
        """
        horizon = time.monotonic_ns() - _PENDING_EXPIRY_NS
        pending = self._pending
        expired = 0
        while True:
            self._advance()
            recorded_at = pending.get(self._visible + 1)
            if recorded_at is None or recorded_at >= horizon:
                break
            del pending[self._visible + 1]
            expired += 1
        if expired:
            self.expired_pending += expired
            _log.warning(f"{expired} events stayed unsettled for {_PENDING_EXPIRY_NS // 10**9} s")
        return expired

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
        max_bytes: int | None = None,
    ) -> EventPage:
        """Reads up to ``limit`` matching events after ``after_sequence``.

        At most ``scan_budget`` stored rows are examined, so a selective filter
        over a long log answers in bounded time with ``more`` set and a cursor
        to continue from. The page ends at the watermark (:attr:`visible_through`):
        an event still committing is listed by a later page, never skipped.
        With ``max_bytes``, the page also ends before the stored bytes of its
        events would pass it (it always holds at least one event), with
        ``more`` set and the cursor at its last event.
        """
        limit = max(1, limit)
        scan_budget = max(limit, scan_budget)
        room = max_bytes if max_bytes is not None else 1 << 62
        self._advance()
        through = self._visible  # never past an event that has not settled
        with self._storage.read() as view:
            oldest = self._oldest(view)
            if after_sequence >= through:
                page: tuple[list[Event], int, bool] = [], after_sequence, False
            elif event_filter.workflow_ids:
                page = self._list_indexed(
                    view,
                    event_filter,
                    after_sequence,
                    through=through,
                    limit=limit,
                    budget=scan_budget,
                    room=room,
                )
            else:
                page = self._list_scan(
                    view,
                    event_filter,
                    after_sequence,
                    through=through,
                    limit=limit,
                    budget=scan_budget,
                    room=room,
                )
        events, last, more = page
        return EventPage(events=events, last_sequence=last, more=more, oldest_retained_sequence=oldest)

    def _list_scan(
        self,
        view: ReadView,
        event_filter: EventFilter,
        after: int,
        *,
        through: int,
        limit: int,
        budget: int,
        room: int,
    ) -> tuple[list[Event], int, bool]:
        end = u64_key(through + 1)
        decode = self._codec.decode
        matches = event_filter.matches
        events: list[Event] = []
        size = 0  # stored bytes of the page's events
        read = 0  # stored bytes of every row examined
        last = after
        scanned = 0
        chunk = min(limit, _SCAN_FIRST_CHUNK)
        while scanned < budget:
            want = min(chunk, budget - scanned)
            rows = view.scan(EVENTS_TABLE, start=u64_key(last + 1), end=end, limit=want)
            for key, value in rows:
                if (events and size + len(value) > room) or read >= _SCAN_MAX_BYTES:
                    return events, last, True  # this row is the next page's
                scanned += 1
                read += len(value)
                last = parse_u64_key(key)
                event = decode(value)
                if matches(event):
                    events.append(event)
                    size += len(value)
                    if len(events) == limit:
                        return events, last, self._row_after(view, last, end)
            if len(rows) < want:
                return events, self._log_end(view, after, through), False
            chunk = _next_chunk(rows)
        return events, last, True  # the scan budget ran out

    def _row_after(self, view: ReadView, last: int, end: bytes) -> bool:
        return bool(view.scan(EVENTS_TABLE, start=u64_key(last + 1), end=end, limit=1))

    def _list_indexed(
        self,
        view: ReadView,
        event_filter: EventFilter,
        after: int,
        *,
        through: int,
        limit: int,
        budget: int,
        room: int,
    ) -> tuple[list[Event], int, bool]:
        per_workflow = max(limit, budget // len(event_filter.workflow_ids))
        sequences, horizon = _indexed_sequences(view, event_filter, after, through, per_workflow)
        decode = self._codec.decode
        events: list[Event] = []
        size = 0
        read = 0
        last = after
        # One row at a time: the values of thousands of big events are never all in memory.
        for index, sequence in enumerate(sequences):
            value = view.get(EVENTS_TABLE, u64_key(sequence))
            if value is None:
                continue
            if (events and size + len(value) > room) or read >= _SCAN_MAX_BYTES:
                return events, last, True  # this row is the next page's
            read += len(value)
            last = sequence
            event = decode(value)
            if event_filter.matches(event):
                events.append(event)
                size += len(value)
                if len(events) == limit:
                    return events, sequence, index + 1 < len(sequences) or horizon is not None
        if horizon is not None:
            return events, horizon, True
        return events, self._log_end(view, after, through), False

    def _log_end(self, view: ReadView, after: int, through: int) -> int:
        """The highest stored sequence through ``through`` (at least ``after``).

        Cursors never go past it: a restart numbers on from the highest stored
        event, so a sequence above it (of a batch that failed) may come again.
        """
        last = view.scan(EVENTS_TABLE, end=u64_key(through + 1), reverse=True, limit=1)
        return max(after, parse_u64_key(last[0][0])) if last else after

    def stored_through(self) -> int:
        """The highest stored sequence at or below the watermark: where a live stream starts."""
        with self._storage.read() as view:
            return self._log_end(view, 0, self._visible)

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

    def recent_workflow_events(
        self, workflow_id: str, before_sequence: int, limit: int, max_bytes: int
    ) -> list[Event]:
        """A workflow's most recent stored events before ``before_sequence``, oldest first.

        At most ``limit`` of them, and about ``max_bytes`` of stored values
        (at least one): the workflow's index is read backwards from the
        sequence, so the cost is that of the events returned, whatever the
        length of the workflow or of the log. The span builder replays them
        onto the span of a workflow that lived across a restart.
        """
        if limit < 1 or before_sequence < 2 or not _indexable(workflow_id):
            return []
        with self._storage.read() as view:
            rows = view.scan(
                BY_WORKFLOW_TABLE,
                start=prefix_key(workflow_id),
                end=join_key(workflow_id, before_sequence),
                reverse=True,
                limit=limit,
            )
            values = view.get_many(EVENTS_TABLE, [key[-8:] for key, _ in rows])
        decode = self._codec.decode
        events: list[Event] = []
        size = 0
        for value in values:  # newest first
            if value is None:
                continue  # pruned since the index was read
            size += len(value)
            if events and size > max_bytes:
                break
            try:
                events.append(decode(value))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
        events.reverse()
        return events

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
        subscription = Subscription(
            self, event_filter, after_sequence, self.subscriber_buffer, self.subscriber_buffer_bytes
        )
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
        """Drops at most ``prune_batch`` of the oldest events beyond retention; returns how many.

        Age goes by the time each event was recorded (:func:`_recorded_at`),
        so events leave in sequence order and no worker's clock holds them.
        """
        now_ns = self._clock_ns()
        horizon_ns = now_ns - int(self.retention_age_s * 1e9)
        started_ns = self._started_ns
        with self._storage.read() as view:
            excess = view.count(EVENTS_TABLE) - self.retention_count
            if excess <= 0:
                # The usual case, checked once a second on the event loop:
                # only the oldest event's age can make pruning due.
                oldest = view.scan(EVENTS_TABLE, limit=1)
                if (
                    not oldest
                    or _recorded_time_of(self._codec, oldest[0][1], now_ns, started_ns) >= horizon_ns
                ):
                    return 0
            batch = self._storage.batch()
            dropped = 0
            last = 0
            chunk = min(self.prune_batch, _SCAN_FIRST_CHUNK)
            due = True
            while due and dropped < self.prune_batch:
                want = min(chunk, self.prune_batch - dropped)
                rows = view.scan(EVENTS_TABLE, start=u64_key(last + 1), limit=want)
                for key, value in rows:
                    try:
                        event: Event | None = self._codec.decode(value)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        # A row no reader can decode either: it goes, as an expired
                        # one would, or it would stop retention here for good (its
                        # workflow's index row, if any, stays; readers skip it).
                        event = None
                    if (
                        event is not None
                        and excess <= 0
                        and _recorded_at(event, now_ns, started_ns) >= horizon_ns
                    ):
                        due = False
                        break
                    excess -= 1
                    last = parse_u64_key(key)
                    batch.delete(EVENTS_TABLE, key)
                    if event is not None and _indexable(event.workflow_id):
                        batch.delete(BY_WORKFLOW_TABLE, join_key(event.workflow_id, event.sequence))
                    dropped += 1
                if len(rows) < want:
                    break
                chunk = _next_chunk(rows)
        if not dropped:
            return 0
        through = max(last, self._pruned_through)
        batch.put(META_TABLE, _PRUNED_THROUGH, u64_key(through))
        await self._committer.submit(batch)
        self._pruned_through = through
        self.pruned += dropped
        return dropped

    async def _prune_loop(self) -> None:
        """Expires pending events and prunes retention every ``prune_interval_s``, for the recorder's life.

        No failure ends it (retention stopping would let events fill the disk):
        a failed pass is logged, once per run of failures, and the passes
        back off, doubling up to ``_PRUNE_MAX_BACKOFF_S``, until one succeeds.
        """
        failures = 0
        while True:
            delay = self.prune_interval_s
            try:
                self.expire_pending()
                # Several bounded batches in a row while far behind, yielding between them.
                for _ in range(100):
                    if await self.prune_once() < self.prune_batch:
                        break
            except Exception as error:  # noqa: BLE001 - retention must outlive any one failure
                failures += 1
                interval = self.prune_interval_s
                delay = backoff(failures, 2 * interval, max(_PRUNE_MAX_BACKOFF_S, interval))
                if failures == 1:
                    _log.warning(
                        f"event retention pruning failed ({type(error).__name__}: {error}); "
                        "retrying with backoff, up to a minute apart",
                        exc_info=not isinstance(error, StorageError),
                    )
            else:
                if failures:
                    _log.info(f"event retention pruning works again, after {failures} failed passes")
                failures = 0
            await asyncio.sleep(delay)


def _recorded_at(event: Event, now_ns: int, started_ns: int) -> int:
    """When the sidecar recorded ``event``, by its own clock: the age retention goes by.

    An event whose time the sidecar stamped was recorded then. A row stored
    before record times were kept (``recorded_unix_ns`` 0) with a time ahead
    of the clock holds a worker's time: it was recorded before this process
    started, which is the time it is given (so it cannot hold retention).
    """
    recorded = event.recorded_unix_ns
    if recorded:
        return recorded
    when = event.event_time_unix_ns
    return when if when <= now_ns else started_ns


def _recorded_time_of(codec: Codec[Event], value: bytes, now_ns: int, started_ns: int) -> int:
    """An encoded event's record time; 0 (long past) for a row that cannot be decoded, so pruning takes it."""
    try:
        return _recorded_at(codec.decode(value), now_ns, started_ns)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0


def _indexed_sequences(
    view: ReadView, event_filter: EventFilter, after: int, through: int, per_workflow: int
) -> tuple[list[int], int | None]:
    """The listed workflows' sequences after ``after``, ascending, and the horizon they were all scanned to.

    The horizon is None when every workflow's index was read to ``through``.
    """
    sequences: list[int] = []
    horizon: int | None = None  # every listed workflow is scanned through here
    for workflow_id in sorted(event_filter.workflow_ids):
        if not _indexable(workflow_id):
            continue
        end = join_key(workflow_id, through + 1)
        start = join_key(workflow_id, after + 1)
        rows = view.scan(BY_WORKFLOW_TABLE, start=start, end=end, limit=per_workflow)
        found = [parse_u64_key(key[-8:]) for key, _ in rows]
        sequences.extend(found)
        if len(rows) == per_workflow:
            horizon = found[-1] if horizon is None else min(horizon, found[-1])
    sequences.sort()
    if horizon is not None:
        sequences = [s for s in sequences if s <= horizon]
    return sequences, horizon


def _next_chunk(rows: list[tuple[bytes, bytes]]) -> int:
    """Rows to read next so that a chunk holds about ``_SCAN_CHUNK_BYTES``, judged by the last one."""
    average = sum(len(value) for _, value in rows) // len(rows) + 1
    return max(1, min(_SCAN_CHUNK_ROWS, _SCAN_CHUNK_BYTES // average))


def _indexable(workflow_id: str) -> bool:
    return bool(workflow_id) and "\x00" not in workflow_id
