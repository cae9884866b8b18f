"""Live streams: replay then follow with no gap and no duplicate; bounded buffers; missed notices."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from are_core.trace import (
    CaughtUp,
    Event,
    EventFilter,
    EventsMissed,
    StreamItem,
    Subscription,
    SubscriptionClosedError,
    TooManySubscribersError,
)
from tests.unit.trace._support import MakeHarness, draft


async def take(subscription: Subscription, count: int) -> list[StreamItem]:
    return [await asyncio.wait_for(subscription.next(), 5) for _ in range(count)]


def shape(items: list[StreamItem]) -> list[object]:
    """Events as their sequence, notices as themselves."""
    return [item.sequence if isinstance(item, Event) else item for item in items]


async def test_replay_then_live_with_no_gap_and_no_duplicate_at_the_seam(make_harness: MakeHarness) -> None:
    harness = make_harness()
    recorder = harness.recorder
    await harness.emit_many(5, lambda _: draft())
    # Event 6 is committed but its producer has not resumed (nor published) when the stream
    # reaches the seam; event 7 is recorded but not yet committed.
    committed_unpublished = harness.storage.batch()
    sixth = recorder.record(committed_unpublished, draft())
    await harness.committer.submit(committed_unpublished)
    uncommitted = harness.storage.batch()
    seventh = recorder.record(uncommitted, draft())

    subscription = recorder.subscribe(EventFilter(), after_sequence=0)
    replayed = await take(subscription, 7)
    assert shape(replayed) == [1, 2, 3, 4, 5, 6, CaughtUp(sequence=6)]  # 7 may still commit
    assert subscription.live

    recorder.publish([sixth])  # already replayed: must not come again
    await harness.committer.submit(uncommitted)
    recorder.publish([seventh])  # committed after the seam: comes live
    await harness.emit(draft())
    assert shape(await take(subscription, 2)) == [7, 8]
    assert subscription.buffered == 0
    subscription.close()


async def test_concurrent_producer_and_subscriber_see_every_event_once(make_harness: MakeHarness) -> None:
    harness = make_harness()
    total = 400

    async def produce() -> None:
        sent = 0
        while sent < total:
            size = min(1 + sent % 3, total - sent)
            await harness.emit_many(size, lambda _: draft())
            sent += size
            await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    while harness.recorder.last_sequence < 100:  # join mid-stream
        await asyncio.sleep(0)
    subscription = harness.recorder.subscribe(EventFilter(), after_sequence=0)
    seen: list[int] = []
    caught_up = 0
    while len(seen) < total:
        item = await asyncio.wait_for(subscription.next(), 5)
        if isinstance(item, CaughtUp):
            caught_up += 1
        else:
            assert isinstance(item, Event)
            seen.append(item.sequence)
    await producer
    assert caught_up == 1
    assert seen == list(range(1, total + 1))
    subscription.close()


async def test_live_only_stream_starts_now_and_filters(make_harness: MakeHarness) -> None:
    harness = make_harness()
    await harness.emit_many(3, lambda _: draft())
    subscription = harness.recorder.subscribe(
        EventFilter(workflow_ids=frozenset({"wf-b"})), after_sequence=None
    )
    assert await take(subscription, 1) == [CaughtUp(sequence=3)]
    await harness.emit(draft(workflow_id="wf-a"), draft(workflow_id="wf-b"), draft(workflow_id="wf-a"))
    await harness.emit(draft(workflow_id="wf-b"))
    assert shape(await take(subscription, 2)) == [5, 7]
    subscription.close()


async def test_a_slow_subscriber_is_told_what_it_missed_and_never_holds_more_than_its_buffer(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness(subscriber_buffer=4)
    recorder = harness.recorder
    slow = recorder.subscribe(EventFilter(), after_sequence=None)
    fast = recorder.subscribe(EventFilter(), after_sequence=None)
    assert await take(slow, 1) == [CaughtUp(sequence=0)]
    assert await take(fast, 1) == [CaughtUp(sequence=0)]

    for _ in range(10):  # the producer never waits for the slow reader
        await harness.emit(draft())
        assert slow.buffered <= 4
        assert shape(await take(fast, 1)) == [recorder.last_sequence]
    items = await take(slow, 5)
    assert shape(items) == [
        1,
        2,
        3,
        4,
        EventsMissed(
            reason="SLOW_SUBSCRIBER",
            missed_count=6,
            first_missed_sequence=5,
            last_missed_sequence=10,
            resume_after_sequence=4,
        ),
    ]
    assert slow.missed_total == 6
    # The missed events are still in the recorder, from the cursor given.
    assert [e.sequence for e in recorder.list_events(EventFilter(), after_sequence=4).events] == list(
        range(5, 11)
    )
    # Then it carries on live.
    await harness.emit(draft())
    assert shape(await take(slow, 1)) == [11]
    slow.close()
    fast.close()


async def test_overflow_notice_is_queued_in_order_once_room_frees(make_harness: MakeHarness) -> None:
    harness = make_harness(subscriber_buffer=4)
    subscription = harness.recorder.subscribe(EventFilter(), after_sequence=None)
    await take(subscription, 1)
    await harness.emit_many(6, lambda _: draft())  # 1-4 queued, 5-6 missed
    assert shape(await take(subscription, 2)) == [1, 2]
    await harness.emit(draft())  # room for the notice and event 7
    items = await take(subscription, 4)
    assert shape(items) == [
        3,
        4,
        EventsMissed(
            reason="SLOW_SUBSCRIBER",
            missed_count=2,
            first_missed_sequence=5,
            last_missed_sequence=6,
            resume_after_sequence=4,
        ),
        7,
    ]
    subscription.close()


async def test_a_cursor_older_than_retention_is_told_the_events_are_gone(make_harness: MakeHarness) -> None:
    harness = make_harness(retention_count=3)
    await harness.emit_many(8, lambda _: draft())
    while await harness.recorder.prune_once():
        pass
    subscription = harness.recorder.subscribe(EventFilter(), after_sequence=2)
    items = await take(subscription, 5)
    assert shape(items) == [
        EventsMissed(
            reason="RETENTION",
            missed_count=3,
            first_missed_sequence=3,
            last_missed_sequence=5,
            resume_after_sequence=5,
        ),
        6,
        7,
        8,
        CaughtUp(sequence=8),
    ]
    subscription.close()


async def test_shutdown_ends_streams_and_the_subscriber_bound_holds(make_harness: MakeHarness) -> None:
    harness = make_harness(max_subscribers=2)
    recorder = harness.recorder
    first = recorder.subscribe(EventFilter(), after_sequence=None)
    second = recorder.subscribe(EventFilter(), after_sequence=0)
    with pytest.raises(TooManySubscribersError):
        recorder.subscribe(EventFilter(), after_sequence=None)
    await take(first, 1)
    await take(second, 1)
    waiting = asyncio.create_task(first.next())
    await asyncio.sleep(0)
    recorder.close_subscriptions()
    with pytest.raises(SubscriptionClosedError):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(SubscriptionClosedError):
        await second.next()
    assert recorder.subscriber_count == 0
    late = recorder.subscribe(EventFilter(), after_sequence=0)
    with contextlib.suppress(SubscriptionClosedError):
        await late.next()  # a closed recorder may still hand out the replay; never blocks
    assert [item async for item in late] == []


async def test_events_pruned_while_a_stream_replays_are_reported_not_skipped_silently(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness(prune_batch=1000)
    recorder = harness.recorder
    await harness.emit_many(600, lambda _: draft())
    subscription = recorder.subscribe(EventFilter(), after_sequence=0)
    first = await take(subscription, 1)  # the first replay page (1..256) is read
    recorder.retention_count = 100
    assert await recorder.prune_once() == 500
    items = await take(subscription, 255 + 1 + 100 + 1)
    assert shape(first + items[:255]) == list(range(1, 257))
    assert items[255] == EventsMissed(
        reason="RETENTION",
        missed_count=244,
        first_missed_sequence=257,
        last_missed_sequence=500,
        resume_after_sequence=500,
    )
    assert shape(items[256:]) == [*range(501, 601), CaughtUp(sequence=600)]
    subscription.close()


async def test_indexed_fan_out_gives_each_stream_exactly_what_its_filter_matches(
    make_harness: MakeHarness,
) -> None:
    """Streams are indexed by workflow, else by type: each still gets every match, once, in order.

    Seeded: 40 streams with filters mixing workflows, types, tasks and none,
    some closed midway, against 300 events; each stream's events equal a
    brute-force filter of everything recorded while it was live.
    """
    rng = random.Random(7)
    harness = make_harness(subscriber_buffer=10_000)
    recorder = harness.recorder
    workflows = [f"wf-{i}" for i in range(6)]
    kinds = ["TASK_SCHEDULED", "TASK_DISPATCHED", "TASK_COMPLETED", "WORKFLOW_SUBMITTED"]
    filters = [EventFilter()] + [
        EventFilter(
            workflow_ids=frozenset(rng.sample(workflows, rng.randint(0, 2))),
            event_types=frozenset(rng.sample(kinds, rng.randint(0, 2))),
            task_ids=frozenset(rng.sample(["t1", "t2"], rng.randint(0, 1))),
        )
        for _ in range(39)
    ]
    streams = [recorder.subscribe(f, after_sequence=None) for f in filters]
    for stream in streams:
        assert isinstance(await asyncio.wait_for(stream.next(), 5), CaughtUp)
    recorded: list[Event] = []
    closed_at: dict[int, int] = {}
    for round_ in range(30):
        recorded += await harness.emit_many(
            10,
            lambda _: draft(
                rng.choice(kinds), workflow_id=rng.choice([*workflows, ""]), task_id=rng.choice(["t1", "t2"])
            ),
        )
        if round_ == 15:  # a few streams leave midway: the index forgets them
            for index in (3, 17, 29):
                streams[index].close()
                closed_at[index] = len(recorded)
    for index, (event_filter, stream) in enumerate(zip(filters, streams, strict=True)):
        live = recorded[: closed_at.get(index, len(recorded))]
        expected = [e.sequence for e in live if event_filter.matches(e)]
        got: list[int] = []
        while stream.buffered:
            item = await asyncio.wait_for(stream.next(), 5)
            assert isinstance(item, Event), item
            got.append(item.sequence)
        if index in closed_at:
            assert got == expected[: len(got)]  # a closed stream may drop what it had not read
        else:
            assert got == expected, (index, event_filter)
        stream.close()
