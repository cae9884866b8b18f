"""The flight recorder: sequences, storage, filtered pages, retention, recovery."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import lmdb
import pytest

from are_core.storage import BatchTooLargeError, KeyExistsError, u64_key
from are_core.trace import (
    Event,
    EventFilter,
    EventUsage,
    FailureInfo,
    InvalidPageTokenError,
    decode_page_token,
    encode_page_token,
)
from are_core.trace._recorder import META_TABLE
from tests.unit.trace._support import MakeHarness, close, draft, sequences


async def test_record_assigns_increasing_sequences_and_stores_every_field(make_harness: MakeHarness) -> None:
    harness = make_harness()
    first = await harness.emit(
        draft(
            "TASK_ATTEMPT_FAILED",
            attempt=2,
            worker_id="w1",
            task_state="BACKING_OFF",
            failure=FailureInfo(message="boom", type="ValueError", kind="APPLICATION"),
            usage=EventUsage(input_tokens=10, output_tokens=5, cost_micro_usd=7),
            duration_ns=1_500,
            name="n",
            attributes={"are.pool": "default", "are.priority": 3, "x": 1.5, "y": True},
            span_id="00f067aa0ba902b7",
        )
    )
    second = await harness.emit(draft(), draft(event_time_unix_ns=42))
    assert sequences(first + second) == [1, 2, 3]
    assert second[1].event_time_unix_ns == 42
    assert first[0].event_time_unix_ns == harness.clock.now_ns

    page = harness.recorder.list_events(EventFilter())
    assert page.events == first + second
    assert page.last_sequence == 3
    assert not page.more
    assert page.oldest_retained_sequence == 1


async def test_an_event_commits_with_its_batch_or_not_at_all(make_harness: MakeHarness) -> None:
    harness = make_harness()
    batch = harness.storage.batch()
    harness.recorder.record(batch, draft())  # never submitted: as if the transition failed
    await harness.emit(draft())
    page = harness.recorder.list_events(EventFilter())
    assert (page.events, page.last_sequence) == ([], 0)  # 1 may still commit: the page stops below it
    del batch  # dropped unsubmitted: 1 is a gap
    page = harness.recorder.list_events(EventFilter())
    assert (sequences(page.events), page.last_sequence) == ([2], 2)  # a gap, never a phantom event


async def test_a_batch_the_committer_refuses_or_fails_is_a_gap_at_once(make_harness: MakeHarness) -> None:
    harness = make_harness()
    recorder = harness.recorder
    harness.committer.max_pending_mutations = 3
    too_big = harness.storage.batch()
    recorder.record(too_big, draft())  # 1 (two rows)
    too_big.put(META_TABLE, b"k1", b"").put(META_TABLE, b"k2", b"")
    with pytest.raises(BatchTooLargeError):
        await harness.committer.submit(too_big)
    await harness.committer.submit(harness.storage.batch().put(META_TABLE, b"taken", b""))
    conflicting = harness.storage.batch()
    recorder.record(conflicting, draft())  # 2
    conflicting.put_if_absent(META_TABLE, b"taken", b"")
    with pytest.raises(KeyExistsError):
        await harness.committer.submit(conflicting)
    assert recorder.visible_through == 2  # both batches are held alive, yet settled
    await harness.emit(draft())  # 3
    page = recorder.list_events(EventFilter())
    assert (sequences(page.events), page.last_sequence) == ([3], 3)


async def test_live_events_arrive_in_sequence_order_when_batches_commit_out_of_order(
    make_harness: MakeHarness,
) -> None:
    harness = make_harness()
    recorder = harness.recorder
    subscription = recorder.subscribe(EventFilter(), after_sequence=None)
    early = harness.storage.batch()
    recorder.record(early, draft())  # 1, committed last
    await harness.emit(draft())  # 2
    await harness.emit(draft())  # 3
    assert recorder.visible_through == 0
    assert subscription.buffered == 0  # 2 and 3 wait for 1
    await harness.committer.submit(early)
    items = [await asyncio.wait_for(subscription.next(), 5) for _ in range(4)]
    assert [getattr(item, "sequence", None) for item in items] == [0, 1, 2, 3]  # CaughtUp(0), then in order
    subscription.close()


async def test_a_reader_waits_for_the_commits_under_way_before_it_asked(make_harness: MakeHarness) -> None:
    harness = make_harness()
    recorder = harness.recorder
    batch = harness.storage.batch()
    recorder.record(batch, draft())
    waiting = asyncio.ensure_future(recorder.wait_visible(recorder.last_sequence, 5.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    await harness.committer.submit(batch)
    assert await waiting
    assert sequences(recorder.list_events(EventFilter()).events) == [1]
    stuck = harness.storage.batch()
    recorder.record(stuck, draft())  # never submitted while it lives
    assert not await recorder.wait_visible(recorder.last_sequence, 0.01)  # gives up: answers what settled
    assert recorder.list_events(EventFilter()).last_sequence == 1
    del stuck


async def test_filters_by_workflow_task_type_worker_and_time(make_harness: MakeHarness) -> None:
    harness = make_harness()
    clock = harness.clock
    events = []
    for index in range(12):
        clock.now_ns += 1_000
        events += await harness.emit(
            draft(
                "TASK_DISPATCHED" if index % 2 else "TASK_COMPLETED",
                workflow_id=f"wf-{index % 3}",
                task_id=f"t{index % 4}",
                worker_id=f"w{index % 2}",
            )
        )
    recorder = harness.recorder

    def listed(event_filter: EventFilter) -> list[int]:
        return sequences(recorder.list_events(event_filter, limit=100).events)

    def expected(predicate: Callable[[Event], bool]) -> list[int]:
        return [e.sequence for e in events if predicate(e)]

    assert listed(EventFilter(workflow_ids=frozenset({"wf-1"}))) == expected(
        lambda e: e.workflow_id == "wf-1"
    )
    assert listed(EventFilter(workflow_ids=frozenset({"wf-0", "wf-2"}))) == expected(
        lambda e: e.workflow_id in {"wf-0", "wf-2"}
    )
    assert listed(EventFilter(task_ids=frozenset({"t3"}))) == expected(lambda e: e.task_id == "t3")
    assert listed(EventFilter(event_types=frozenset({"TASK_DISPATCHED"}))) == expected(
        lambda e: e.event_type == "TASK_DISPATCHED"
    )
    assert listed(EventFilter(worker_id="w0")) == expected(lambda e: e.worker_id == "w0")
    start, end = events[3].event_time_unix_ns, events[7].event_time_unix_ns
    assert listed(EventFilter(start_time_unix_ns=start, end_time_unix_ns=end)) == [4, 5, 6, 7]
    assert listed(
        EventFilter(workflow_ids=frozenset({"wf-1"}), event_types=frozenset({"TASK_DISPATCHED"}))
    ) == expected(lambda e: e.workflow_id == "wf-1" and e.event_type == "TASK_DISPATCHED")
    assert listed(EventFilter(workflow_ids=frozenset({"nope"}))) == []


@pytest.mark.parametrize("by_workflow", [False, True])
async def test_pages_cover_the_log_exactly_once(make_harness: MakeHarness, by_workflow: bool) -> None:
    harness = make_harness()
    events = await harness.emit_many(250, lambda i: draft(workflow_id=f"wf-{i % 2}"))
    wanted = [e.sequence for e in events if e.workflow_id == "wf-1"] if by_workflow else sequences(events)
    event_filter = EventFilter(workflow_ids=frozenset({"wf-1"})) if by_workflow else EventFilter()
    seen: list[int] = []
    after = 0
    for _ in range(100):
        page = harness.recorder.list_events(event_filter, after_sequence=after, limit=30, scan_budget=40)
        seen += sequences(page.events)
        assert page.last_sequence >= after
        after = page.last_sequence
        if not page.more:
            break
    assert seen == wanted
    assert after == 250  # the cursor reaches the end of the log, ready to follow live


async def test_page_tokens_carry_the_cursor_and_belong_to_their_filter() -> None:
    event_filter = EventFilter(workflow_ids=frozenset({"a", "b"}))
    token = encode_page_token(77, event_filter)
    assert decode_page_token(token, EventFilter(workflow_ids=frozenset({"b", "a"}))) == 77
    with pytest.raises(InvalidPageTokenError, match="different filter"):
        decode_page_token(token, EventFilter())
    for bad in ("", "not-a-token!", "AAAA"):
        with pytest.raises(InvalidPageTokenError):
            decode_page_token(bad, event_filter)


async def test_sequence_is_recovered_after_restart_and_never_reused(make_harness: MakeHarness) -> None:
    harness = make_harness(retention_count=3)
    await harness.emit_many(5, lambda _: draft())
    assert await harness.recorder.prune_once() == 2
    await close(harness)

    harness = make_harness(retention_count=3)
    assert harness.recorder.last_sequence == 5
    assert harness.recorder.pruned_through == 2
    (event,) = await harness.emit(draft())
    assert event.sequence == 6
    await close(harness)

    # Retention by age empties the log; the next sequence still moves on.
    harness = make_harness(retention_age_s=1.0)
    harness.clock.now_ns += 10 * 1_000_000_000
    assert await harness.recorder.prune_once() == 4
    assert harness.recorder.list_events(EventFilter()).events == []
    await close(harness)
    harness = make_harness()
    (event,) = await harness.emit(draft())
    assert event.sequence == 7


async def test_an_undecodable_oldest_event_is_pruned_not_a_wall(make_harness: MakeHarness) -> None:
    harness = make_harness(retention_count=3)
    await harness.emit_many(5, lambda _: draft())
    batch = harness.storage.batch()
    batch.put("trace_events", u64_key(1), b"\xc1 not msgpack")  # 0xc1: never valid MessagePack
    await harness.committer.submit(batch)
    assert await harness.recorder.prune_once() == 2  # the bad row and the next, as by count
    assert harness.recorder.pruned_through == 2
    assert sequences(harness.recorder.list_events(EventFilter()).events) == [3, 4, 5]


async def test_the_pruning_loop_outlives_any_failure_and_backs_off(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="are.trace")
    harness = make_harness(retention_count=3, prune_interval_s=0.01)
    recorder = harness.recorder
    await harness.emit_many(5, lambda _: draft())
    real_prune, real_sleep = recorder.prune_once, asyncio.sleep
    delays: list[float] = []

    async def failing() -> int:
        raise lmdb.ReadersFullError("MDB_READERS_FULL")  # raw, as Storage.read() passes it

    async def sleep(delay: float) -> None:  # the loop's waits are noted, and shortened to 1 ms
        if asyncio.current_task() is recorder._pruner:
            delays.append(delay)
            delay = 0.001
        await real_sleep(delay)

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(1000):  # 10 s at most
            if condition():
                return
            await real_sleep(0.01)
        raise AssertionError("never happened")

    monkeypatch.setattr(recorder, "prune_once", failing)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    recorder.start_pruning()
    await until(lambda: len(delays) >= 14)
    # Doubling from the interval, up to a minute apart: not a pass per 10 ms.
    assert delays[:14] == pytest.approx([0.01 * 2**n for n in range(1, 13)] + [60.0, 60.0])
    assert caplog.text.count("event retention pruning failed") == 1  # once per run of failures
    monkeypatch.setattr(recorder, "prune_once", real_prune)
    failed = len(delays)
    await until(lambda: recorder.pruned_through == 2)  # the loop lived on, and pruned once it could
    await until(lambda: len(delays) > failed + 1)
    assert delays[failed + 1] == 0.01  # back to the interval
    assert "works again, after" in caplog.text
    await close(harness)  # stops the loop; none of its failures is raised


async def test_retention_prunes_by_count_and_age_in_bounded_batches(make_harness: MakeHarness) -> None:
    harness = make_harness(retention_count=100, retention_age_s=60.0, prune_batch=10)
    old = await harness.emit_many(30, lambda i: draft(workflow_id=f"wf-{i % 2}"))
    harness.clock.now_ns += 120 * 1_000_000_000  # the first 30 are now too old
    await harness.emit_many(120, lambda i: draft(workflow_id=f"wf-{i % 2}"))

    assert await harness.recorder.prune_once() == 10  # one bounded batch at a time
    while await harness.recorder.prune_once():
        pass
    page = harness.recorder.list_events(EventFilter(), limit=1000)
    assert sequences(page.events) == list(range(51, 151))  # 30 by age, then 20 more by count
    assert page.oldest_retained_sequence == 51
    assert harness.recorder.pruned == 50
    # The secondary index was pruned with the events it points to.
    rows = harness.storage.scan("trace_events_by_workflow", limit=1000)
    assert len(rows) == 100
    assert old[0].sequence not in sequences(
        harness.recorder.list_events(EventFilter(workflow_ids=frozenset({"wf-0"}))).events
    )


async def test_background_pruning_runs_on_its_own(make_harness: MakeHarness) -> None:
    harness = make_harness(retention_count=5, prune_interval_s=0.01)
    await harness.emit_many(20, lambda _: draft())
    harness.recorder.start_pruning()
    for _ in range(500):  # bounded wait, no timing assertion
        if harness.recorder.pruned == 15:
            break
        await asyncio.sleep(0.01)
    assert sequences(harness.recorder.list_events(EventFilter()).events) == list(range(16, 21))
    await close(harness)


async def test_a_failing_listener_does_not_fail_the_producer(make_harness: MakeHarness) -> None:
    harness = make_harness()

    class Broken:
        def on_events(self, events: object) -> None:
            raise RuntimeError("exporter bug")

    harness.recorder.add_listener(Broken())
    (event,) = await harness.emit(draft())
    assert event.sequence == 1


async def test_pruning_with_nothing_due_reads_only_the_oldest_event(make_harness: MakeHarness) -> None:
    harness = make_harness(retention_count=100, retention_age_s=60.0, prune_batch=10)
    await harness.emit_many(30, lambda _: draft())
    assert await harness.recorder.prune_once() == 0  # under both bounds: nothing changes
    assert len(harness.recorder.list_events(EventFilter(), limit=1000).events) == 30
    harness.clock.now_ns += 61 * 1_000_000_000  # the count is still under its bound; the age is not
    assert await harness.recorder.prune_once() == 10
    assert harness.recorder.pruned_through == 10
