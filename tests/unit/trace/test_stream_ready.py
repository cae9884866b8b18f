"""Taking the events a stream already holds without waiting: the batching reader's side."""

from __future__ import annotations

import asyncio

from are_core.trace import CaughtUp, Event, EventFilter, EventsMissed, Subscription
from tests.unit.trace._support import MakeHarness, draft


def drain_ready(subscription: Subscription) -> list[int]:
    """Takes every event ready now; the sequences taken."""
    taken: list[int] = []
    while (event := subscription.ready_event()) is not None:
        assert subscription.take_ready_event() is event
        taken.append(event.sequence)
    return taken


async def test_ready_events_stop_at_the_caught_up_marker_and_then_follow_live(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    await harness.emit_many(5, lambda _: draft())
    subscription = harness.recorder.subscribe(EventFilter(), after_sequence=0)
    assert subscription.ready_event() is None  # the replay page is not read by looking
    first = await asyncio.wait_for(subscription.next(), 5)
    assert isinstance(first, Event)
    assert first.sequence == 1
    assert drain_ready(subscription) == [2, 3, 4, 5]  # and not the marker after them
    assert await asyncio.wait_for(subscription.next(), 5) == CaughtUp(sequence=5)
    assert drain_ready(subscription) == []

    await harness.emit_many(3, lambda _: draft())
    assert drain_ready(subscription) == [6, 7, 8]
    assert subscription.buffered == 0
    subscription.close()
    await harness.emit(draft())
    assert subscription.ready_event() is None


async def test_ready_events_stop_at_a_missed_notice_and_free_the_byte_bound(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness(subscriber_buffer=4)
    subscription = harness.recorder.subscribe(EventFilter(), after_sequence=None)
    assert isinstance(await asyncio.wait_for(subscription.next(), 5), CaughtUp)
    await harness.emit_many(6, lambda _: draft())  # 1-4 queued, 5 and 6 missed
    assert drain_ready(subscription) == [1, 2, 3, 4]
    notice = await asyncio.wait_for(subscription.next(), 5)
    assert isinstance(notice, EventsMissed)
    assert (notice.first_missed_sequence, notice.last_missed_sequence) == (5, 6)

    # A missed range closed by a later event: the notice comes between, never taken as ready.
    await harness.emit_many(6, lambda _: draft())  # 7-10 queued, 11 and 12 missed
    assert drain_ready(subscription) == [7, 8, 9, 10]
    await harness.emit(draft())  # 13: room again, so the notice is queued before it
    assert subscription.ready_event() is None
    notice = await asyncio.wait_for(subscription.next(), 5)
    assert isinstance(notice, EventsMissed)
    assert (notice.first_missed_sequence, notice.last_missed_sequence) == (11, 12)
    assert drain_ready(subscription) == [13]

    # Big events are counted in the byte bound while queued and released when taken.
    big = {"pad": "x" * 4096}
    await harness.emit_many(2, lambda _: draft(attributes=big))
    assert drain_ready(subscription) == [14, 15]
    assert subscription._big_bytes == 0  # the bound's own accounting
    subscription.close()
