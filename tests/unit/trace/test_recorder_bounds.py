"""The flight recorder's bounds in bytes, age retention by record time, and cursors above the watermark."""

from __future__ import annotations

import asyncio

import msgspec

from are_core.storage import u64_key
from are_core.trace import CaughtUp, Event, EventDraft, EventFilter, EventsMissed, StreamItem, Subscription
from tests.unit.trace._support import MakeHarness, draft, sequences

YEAR_NS = 365 * 86_400 * 1_000_000_000
SECOND_NS = 1_000_000_000


def big(index: int, kib: int = 100) -> EventDraft:
    """A draft whose stored encoding is about ``kib`` KiB (one string attribute)."""
    return draft(name=f"big-{index}", attributes={"prompt": "x" * (kib * 1024)})


async def take(subscription: Subscription, count: int) -> list[StreamItem]:
    return [await asyncio.wait_for(subscription.next(), 5) for _ in range(count)]


# Age retention goes by the sidecar's record time.


async def test_an_event_with_a_future_worker_time_does_not_hold_age_retention(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness(retention_age_s=60.0, prune_batch=1000)
    clock = harness.clock
    (skewed,) = await harness.emit(draft(event_time_unix_ns=clock.now_ns + YEAR_NS))  # a worker's clock
    assert skewed.event_time_unix_ns == clock.now_ns + YEAR_NS  # the event keeps the worker's time
    assert skewed.recorded_unix_ns == clock.now_ns  # and notes when the sidecar recorded it
    await harness.emit_many(20, lambda _: draft())
    assert await harness.recorder.prune_once() == 0  # nothing is old yet
    clock.now_ns += 61 * SECOND_NS
    (kept,) = await harness.emit(draft())
    assert await harness.recorder.prune_once() == 21  # the skewed event and every later old one
    assert sequences(harness.recorder.list_events(EventFilter()).events) == [kept.sequence]


async def test_a_worker_time_in_the_past_does_not_shorten_retention(make_harness: MakeHarness) -> None:
    harness = make_harness(retention_age_s=60.0)
    clock = harness.clock
    await harness.emit(draft(event_time_unix_ns=clock.now_ns - YEAR_NS))
    assert await harness.recorder.prune_once() == 0  # recorded just now: kept for 60 s from now
    clock.now_ns += 61 * SECOND_NS
    assert await harness.recorder.prune_once() == 1


async def test_a_row_stored_before_record_times_were_kept_still_decodes_and_ages(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness(retention_age_s=60.0)
    clock = harness.clock
    # Rows as the previous version wrote them: no "rec" key; one with a worker's time a year ahead.
    legacy = msgspec.msgpack.Encoder()
    batch = harness.storage.batch()
    for sequence, when in ((1, clock.now_ns + YEAR_NS), (2, clock.now_ns)):
        row = {"sequence": sequence, "event_time_unix_ns": when, "event_type": "TASK_SCHEDULED"}
        batch.put("trace_events", u64_key(sequence), legacy.encode(row))
    await harness.committer.submit(batch)
    harness.recorder.recover()  # as after the upgrade's restart
    page = harness.recorder.list_events(EventFilter())
    assert [(e.sequence, e.recorded_unix_ns) for e in page.events] == [(1, 0), (2, 0)]
    assert await harness.recorder.prune_once() == 0
    clock.now_ns += 61 * SECOND_NS
    # The future row counts as recorded when the recorder started: it goes, and no longer holds row 2.
    assert await harness.recorder.prune_once() == 2


# Pages, replays and live buffers are bounded in bytes.


async def test_a_page_is_cut_at_max_bytes_with_the_cursor_at_its_last_event(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    await harness.emit(*(big(i) for i in range(10)))
    for event_filter in (EventFilter(), EventFilter(workflow_ids=frozenset({"wf-1"}))):
        seen: list[int] = []
        after = 0
        for _ in range(20):  # bounded: 10 events, at least one a page
            page = harness.recorder.list_events(
                event_filter, after_sequence=after, limit=1000, max_bytes=350_000
            )
            assert 1 <= len(page.events) <= 3, len(page.events)
            assert page.last_sequence == page.events[-1].sequence
            seen.extend(sequences(page.events))
            after = page.last_sequence
            if not page.more:
                break
        assert seen == list(range(1, 11))
        # A bound below one event still lists one.
        page = harness.recorder.list_events(event_filter, limit=1000, max_bytes=1)
        assert (sequences(page.events), page.last_sequence, page.more) == ([1], 1, True)


async def test_a_page_of_small_events_ignores_a_large_byte_bound(make_harness: MakeHarness) -> None:
    harness = make_harness()
    await harness.emit_many(300, lambda _: draft())
    page = harness.recorder.list_events(EventFilter(), limit=200, max_bytes=64 << 20)
    assert (len(page.events), page.last_sequence, page.more) == (200, 200, True)
    page = harness.recorder.list_events(EventFilter(), after_sequence=200, limit=200, max_bytes=64 << 20)
    assert (len(page.events), page.last_sequence, page.more) == (100, 300, False)


async def test_a_live_buffer_is_bounded_in_bytes_and_overflow_is_a_slow_subscriber_notice(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness(subscriber_buffer=1000, subscriber_buffer_bytes=350_000)
    subscription = harness.recorder.subscribe(EventFilter(), after_sequence=None)
    assert isinstance(await asyncio.wait_for(subscription.next(), 5), CaughtUp)
    await harness.emit(*(big(i) for i in range(10)))  # about 1 MB, the reader reads nothing
    assert subscription.buffered == 3  # far under 1,000 events: the bytes decided
    items = await take(subscription, 4)
    assert [item.sequence for item in items[:3] if isinstance(item, Event)] == [1, 2, 3]
    missed = items[3]
    assert isinstance(missed, EventsMissed)
    assert (missed.reason, missed.missed_count, missed.first_missed_sequence) == ("SLOW_SUBSCRIBER", 7, 4)
    assert (missed.last_missed_sequence, missed.resume_after_sequence) == (10, 3)
    (later,) = await harness.emit(big(10))
    assert await take(subscription, 1) == [later]  # live again, the buffer's bytes were given back
    subscription.close()


async def test_one_event_larger_than_the_byte_bound_is_still_delivered(make_harness: MakeHarness) -> None:
    harness = make_harness(subscriber_buffer_bytes=10_000)
    subscription = harness.recorder.subscribe(EventFilter(), after_sequence=None)
    await take(subscription, 1)  # CaughtUp
    (event,) = await harness.emit(big(0))
    assert await take(subscription, 1) == [event]
    subscription.close()


async def test_a_replay_page_is_bounded_in_bytes(make_harness: MakeHarness) -> None:
    harness = make_harness()
    await harness.emit(*(big(i, kib=200) for i in range(20)))  # about 4 MB
    subscription = harness.recorder.subscribe(EventFilter(), after_sequence=0)
    (first,) = await take(subscription, 1)
    assert isinstance(first, Event)
    assert first.sequence == 1
    assert len(subscription._ready) <= 5  # one replay page: about 1 MiB, not 256 events
    rest = await take(subscription, 20)
    assert [item.sequence for item in rest if not isinstance(item, EventsMissed)] == [*range(2, 21), 20]
    assert isinstance(rest[-1], CaughtUp)  # the 20th item
    subscription.close()


# A cursor above the watermark.


async def test_a_stream_from_a_cursor_above_the_watermark_sends_nothing_at_or_below_it(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    recorder = harness.recorder
    slow = harness.storage.batch()
    recorder.record(slow, draft(name="still committing"))  # 1
    (own,) = await harness.emit(draft(name="the producer's own"))  # 2: the cursor it was handed
    assert (recorder.last_sequence, recorder.visible_through) == (2, 0)
    subscription = recorder.subscribe(EventFilter(), after_sequence=own.sequence)
    assert await take(subscription, 1) == [CaughtUp(sequence=2)]
    await harness.committer.submit(slow)  # 1 and 2 become visible now, after the seam
    (after,) = await harness.emit(draft(name="after the cursor"))  # 3
    assert await take(subscription, 1) == [after]
    assert subscription.buffered == 0
    subscription.close()
