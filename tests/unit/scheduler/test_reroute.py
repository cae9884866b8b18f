"""Intent tasks waiting in a queue are routed again when served capabilities change (engine, no server).

The route and served hooks stand in for the router: two classes match the
intent "write", ``cap-a`` the cheaper; the pick is the cheapest served one,
else ``cap-a`` (a registered card nobody serves yet). Unary polls count as
serving their capabilities too (``Scheduler.serves``), though the router
never hears of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import pytest

from are_core.scheduler import (
    CacheKey,
    Failure,
    PoolLimits,
    RetryPolicy,
    RoutingError,
    Scheduler,
    TaskOrigin,
    TaskRecord,
    TaskSpec,
    WorkflowSpec,
)
from are_core.scheduler import _engine as engine_module
from are_core.storage import Batch, GroupCommitter, Storage
from are_core.trace import Event, EventDraft
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec

_CLASSES = ("cap-a", "cap-b")  # cheapest first


class Sink:
    """Keeps the events the engine publishes (after their commit)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._sequence = 0

    def record(self, batch: Batch, draft: EventDraft) -> Event:
        self._sequence += 1
        fields = msgspec.structs.asdict(draft)
        fields["event_time_unix_ns"] = 0
        fields["attributes"] = dict(draft.attributes)
        return Event(sequence=self._sequence, **fields)

    def publish(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def routed(self, task_id: str) -> list[dict[str, Any]]:
        return [
            dict(e.attributes) for e in self.events if e.event_type == "TASK_ROUTED" and e.task_id == task_id
        ]


class FakeRouter:
    """The route and served hooks: the cheapest served class, else the cheapest one."""

    def __init__(self) -> None:
        self.served: set[str] = set()
        self.down = False  # True: nothing clears the threshold
        self.calls: list[str] = []

    def route(self, task: TaskSpec, rec: TaskRecord) -> tuple[str, dict[str, Any]]:
        self.calls.append(task.intent)
        if self.down:
            raise RoutingError("no agent above the threshold")
        capability = next((c for c in _CLASSES if c in self.served), _CLASSES[0])
        return capability, {"are.route.capability": capability, "are.route.agent_id": f"agent-{capability}"}

    def install(self, engine: Scheduler) -> None:
        engine.route = self.route
        engine.capability_served = self.served.__contains__

    def serve(self, engine: Scheduler, capability: str) -> None:
        self.served.add(capability)
        engine.served_changed([capability])

    def unserve(self, engine: Scheduler, capability: str) -> None:
        self.served.discard(capability)
        engine.served_changed([capability])


async def _started(
    opened: tuple[Storage, GroupCommitter],
    sink: Sink,
    router: FakeRouter,
    *,
    grace_s: float = 0.0,
    clock: Callable[[], int] = time.time_ns,
) -> Scheduler:
    engine = Scheduler(*opened, events=sink, rng=lambda: 0.0, clock=clock)
    engine.reroute_grace_s = grace_s  # at once, unless a test is about the grace
    router.install(engine)
    await engine.start()
    return engine


def _intent(task_id: str, *deps: str, **fields: Any) -> TaskSpec:
    return spec(task_id, *deps, capability="", intent="write", **fields)


async def test_a_waiting_intent_task_moves_to_the_class_that_connects_after_its_own_drained(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    a = FakeWorker()
    worker_a = engine.connect_worker("a", ["cap-a"], 1, a.assign, a.cancel)
    router.serve(engine, "cap-a")
    tasks = (_intent("r"), _intent("q1"), _intent("q2"), spec("n", capability="cap-a"))
    record, _ = await engine.submit(WorkflowSpec(tasks=tasks))
    wid = record.workflow_id
    await settle(engine)
    assert [x.task_id for x in a.assignments] == ["r"]  # A is full: q1, q2 (and n) wait on cap-a
    assert engine.get_task(wid, "q1").record.capability == "cap-a"

    # A drains (r stays with it); nothing else matches above the threshold: the tasks stay put.
    engine.drain_worker(worker_a)
    router.down = True
    router.unserve(engine, "cap-a")
    await settle(engine)
    assert router.calls.count("write") == 4  # three when scheduled, one for the pass (memoised)
    for task_id in ("q1", "q2"):
        view = engine.get_task(wid, task_id).record
        assert (view.state, view.attempt, view.capability) == ("SCHEDULED", 0, "cap-a")
        assert len(sink.routed(task_id)) == 1

    # B connects: the waiting intent tasks go to it; the named task and the held attempt do not move.
    router.down = False
    b = FakeWorker()
    engine.connect_worker("b", ["cap-b"], 10, b.assign, b.cancel)
    router.serve(engine, "cap-b")
    async with asyncio.timeout(5):
        while len(b.assignments) < 2:
            await asyncio.sleep(0.005)
    assert router.calls.count("write") == 5
    assert sorted((x.task_id, x.capability) for x in b.assignments) == [("q1", "cap-b"), ("q2", "cap-b")]
    first, again = sink.routed("q1")
    assert first["are.route.capability"] == "cap-a"
    assert "are.route.rerouted" not in first
    assert again["are.route.capability"] == "cap-b"
    assert again["are.route.rerouted"] is True
    assert again["are.route.previous_capability"] == "cap-a"
    assert again["are.intent"] == "write"
    held = engine.get_task(wid, "r").record
    assert (held.state, held.capability, held.worker_id) == ("RUNNING", "cap-a", worker_a.worker_id)
    assert len(sink.routed("r")) == 1
    named = engine.get_task(wid, "n").record
    assert (named.state, named.capability) == ("SCHEDULED", "")
    assert engine.get_pool("default")[1].queued == 1  # n alone: a move changes no pool count
    await engine.stop()


async def test_a_task_routed_while_nothing_was_served_follows_the_first_class_to_come(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    record, _ = await engine.submit(WorkflowSpec(tasks=(_intent("t", priority=1), _intent("u", priority=5))))
    wid = record.workflow_id
    await settle(engine)
    assert engine.get_task(wid, "t").record.capability == "cap-a"  # nobody serves anything yet
    b = FakeWorker()
    engine.connect_worker("b", ["cap-b"], 1, b.assign, b.cancel)
    router.serve(engine, "cap-b")
    async with asyncio.timeout(5):
        while not b.assignments:
            await asyncio.sleep(0.005)
    await settle(engine)
    assert [x.task_id for x in b.assignments] == ["t"]  # the priority order holds in the new queue
    # An A worker coming back does not take u back: it waits on cap-b, which is served.
    a = FakeWorker()
    engine.connect_worker("a", ["cap-a"], 1, a.assign, a.cancel)
    router.serve(engine, "cap-a")
    await settle(engine)
    assert a.assignments == []
    assert engine.get_task(wid, "u").record.capability == "cap-b"
    await engine.stop()


async def test_a_move_is_durable_and_a_restart_queues_the_task_for_its_new_capability(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    record, _ = await engine.submit(WorkflowSpec(tasks=(_intent("t"),)))
    wid = record.workflow_id
    await settle(engine)
    router.serve(engine, "cap-b")  # served elsewhere (no B worker in this engine): the task moves, and waits
    async with asyncio.timeout(5):
        while len(sink.routed("t")) < 2:
            await asyncio.sleep(0.005)
    await engine.stop()  # as after a crash: only what was committed is known

    restarted = await _started(opened, Sink(), FakeRouter())
    assert restarted.get_task(wid, "t").record.capability == "cap-b"
    a = FakeWorker()
    restarted.connect_worker("a", ["cap-a"], 1, a.assign, a.cancel)
    b = FakeWorker()
    restarted.connect_worker("b", ["cap-b"], 1, b.assign, b.cancel)
    await settle(restarted)
    assert a.assignments == []
    assert [(x.task_id, x.capability, x.attempt) for x in b.assignments] == [("t", "cap-b", 1)]
    await restarted.stop()


async def test_a_backlogged_intent_task_is_rerouted_and_promoted_into_its_new_queue(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    await engine.put_pool(PoolLimits(name="p", max_queue_length=1))
    tasks = (
        spec("d", pool="p", capability="cap-d"),
        spec("z", "d", capability="cap-z", pool="p"),
        _intent("i", "d", pool="p"),
    )
    record, _ = await engine.submit(WorkflowSpec(tasks=tasks))
    wid = record.workflow_id
    d = FakeWorker()
    engine.connect_worker("d", ["cap-d"], 1, d.assign, d.cancel)
    await settle(engine)
    await engine.complete(wid, "d", 1, output=b"1", content_type="", usage=None)
    await settle(engine)
    # z holds the pool's one queue place; i waits in the pool's backlog.
    _, status = engine.get_pool("p")
    assert (status.queued, status.backlog) == (1, 1)
    assert engine.get_task(wid, "i").record.capability == "cap-a"
    b = FakeWorker()
    engine.connect_worker("b", ["cap-b"], 1, b.assign, b.cancel)
    router.serve(engine, "cap-b")
    await settle(engine)
    assert engine.get_task(wid, "i").record.capability == "cap-b"  # re-routed where it waits
    assert engine.get_pool("p")[1].backlog == 1
    z = FakeWorker()
    engine.connect_worker("z", ["cap-z"], 1, z.assign, z.cancel)
    async with asyncio.timeout(5):
        while not (b.assignments and z.assignments):
            await asyncio.sleep(0.005)
    assert [(x.task_id, x.capability) for x in b.assignments] == [("i", "cap-b")]
    assert sink.routed("i")[-1]["are.route.previous_capability"] == "cap-a"
    await engine.stop()


async def test_a_large_pass_routes_each_intent_once_and_yields_the_loop(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    n = 3000
    tasks = [spec(f"t{i}", capability="", intent=f"write {i % 2}") for i in range(n)]
    record, _ = await engine.submit(WorkflowSpec(tasks=tuple(tasks)))
    wid = record.workflow_id
    await settle(engine)
    router.calls.clear()
    router.serve(engine, "cap-b")
    await asyncio.sleep(0)  # one loop turn: the pass has done a slice, not everything
    moved = sum(1 for i in range(n) if engine.get_task(wid, f"t{i}").record.capability == "cap-b")
    assert 0 < moved < n
    async with asyncio.timeout(10):
        while sum(1 for e in sink.events if e.event_type == "TASK_ROUTED") < 2 * n:
            await asyncio.sleep(0.01)
    assert sorted(router.calls) == ["write 0", "write 1"]  # memoised per intent text within the pass
    assert all(engine.get_task(wid, f"t{i}").record.capability == "cap-b" for i in range(n))
    await engine.stop()


def _queue_entries(engine: Scheduler, capability: str) -> int:
    """Entries, live or stale, in a capability's queues (what the engine keeps in memory for it)."""
    return sum(queue.size for queue in engine._queues.get(capability, {}).values())


async def test_tasks_moved_out_of_a_class_that_never_comes_back_leave_nothing_behind(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """A move leaves a stale entry in the queue of a class nobody serves, so no worker ever pops
    it: each one held its task (and its workflow, inputs and all) in memory for good, and every
    later re-route pass read it again. The pass that moves tasks out of a queue drops them."""
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    n = 40
    for _ in range(5):
        await engine.submit(WorkflowSpec(tasks=tuple(_intent(f"t{i}", priority=1 + i % 3) for i in range(n))))
    await settle(engine)
    assert _queue_entries(engine, "cap-a") == 5 * n  # routed while nothing was served
    b = FakeWorker()
    engine.connect_worker("b", ["cap-b"], 10 * n, b.assign, b.cancel)
    router.serve(engine, "cap-b")
    async with asyncio.timeout(10):
        while len(b.assignments) < 5 * n:
            await asyncio.sleep(0.005)
    for x in b.assignments:
        await engine.complete(x.workflow_id, x.task_id, x.attempt, output=b"", content_type="", usage=None)
    await settle(engine)
    assert engine.get_pool("default")[1].queued == 0
    assert _queue_entries(engine, "cap-a") == 0
    await engine.stop()


async def test_a_task_moved_there_and_back_is_dispatched_once_and_counted_once(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """A to B to A while both classes stay busy, so neither queue is popped in between: the task
    is queued twice in A's queue, once live; it is dispatched once, the pool counts it once, and
    its retry is dispatched once too."""
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    blockers = (
        spec("ha", capability="cap-a", priority=0),
        spec("hb", capability="cap-b", priority=0),
        spec("ha2", capability="cap-a", priority=0),
    )
    await engine.submit(WorkflowSpec(workflow_id="blk", tasks=blockers))
    a1, b = FakeWorker(), FakeWorker()
    worker_a1 = engine.connect_worker("a1", ["cap-a"], 1, a1.assign, a1.cancel)
    router.serve(engine, "cap-a")
    worker_b = engine.connect_worker("b", ["cap-b"], 1, b.assign, b.cancel)
    router.serve(engine, "cap-b")
    retry = RetryPolicy(initial_interval_s=0.01)
    await engine.submit(WorkflowSpec(workflow_id="w", tasks=(_intent("t", retry_policy=retry),)))
    await settle(engine)
    assert engine.get_task("w", "t").record.capability == "cap-a"
    engine.drain_worker(worker_a1)
    router.unserve(engine, "cap-a")
    await settle(engine)
    assert engine.get_task("w", "t").record.capability == "cap-b"
    a2 = FakeWorker()
    worker_a2 = engine.connect_worker("a2", ["cap-a"], 1, a2.assign, a2.cancel)  # takes ha2, stays busy
    router.serve(engine, "cap-a")
    engine.drain_worker(worker_b)
    router.unserve(engine, "cap-b")
    await settle(engine)
    assert engine.get_task("w", "t").record.capability == "cap-a"
    assert engine.get_pool("default")[1].queued == 1
    await engine.complete("blk", "ha2", 1, output=b"", content_type="", usage=None)
    await settle(engine)
    assert [(x.task_id, x.attempt) for x in a2.assignments] == [("ha2", 1), ("t", 1)]
    assert engine.get_pool("default")[1].queued == 0
    engine.fail("w", "t", 1, failure=Failure(message="again", type="E"), usage=None)
    async with asyncio.timeout(5):
        while len(a2.assignments) < 3:
            await asyncio.sleep(0.005)
    await settle(engine)
    assert [(x.task_id, x.attempt) for x in a2.assignments] == [("ha2", 1), ("t", 1), ("t", 2)]
    assert engine.get_pool("default")[1].queued == 0
    assert worker_a2.free == 0
    await engine.stop()


async def test_a_moved_task_is_cancelled_or_times_out_like_any_other(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """After a move: CancelWorkflow and the schedule-to-start timeout take the task out of its
    new queue (the pool's count falls to zero) and no worker of either class receives it."""
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    await engine.submit(WorkflowSpec(workflow_id="c", tasks=(_intent("t"),)))
    await engine.submit(WorkflowSpec(workflow_id="s", tasks=(_intent("t", schedule_to_start_s=0.2),)))
    await settle(engine)
    router.serve(engine, "cap-b")  # served elsewhere: both move to cap-b and wait
    async with asyncio.timeout(5):
        while engine.get_task("s", "t").record.capability != "cap-b":
            await asyncio.sleep(0.005)
    assert engine.get_task("c", "t").record.capability == "cap-b"
    assert engine.get_pool("default")[1].queued == 2
    await engine.cancel("c", "no longer needed", "test")
    assert engine.get_pool("default")[1].queued == 1
    async with asyncio.timeout(5):
        while engine.get_task("s", "t").record.state != "FAILED":
            await asyncio.sleep(0.01)
    failure = engine.get_task("s", "t").record.failure
    assert failure is not None and failure.timeout_type == "SCHEDULE_TO_START"
    assert engine.get_pool("default")[1].queued == 0
    a, b = FakeWorker(), FakeWorker()
    engine.connect_worker("a", ["cap-a"], 5, a.assign, a.cancel)
    engine.connect_worker("b", ["cap-b"], 5, b.assign, b.cancel)
    await settle(engine)
    assert (a.assignments, b.assignments) == ([], [])
    await engine.stop()


async def test_a_task_moved_there_and_back_has_one_entry_in_each_queue_it_passed(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """A to B to A: each pass that moves tasks out of a queue reads it through and drops what
    went stale, so A's queue ends with one entry per task (not two, one of them a repeat) and
    B's with none; the tasks are still served."""
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    await engine.submit(WorkflowSpec(workflow_id="w", tasks=(_intent("t"), _intent("u"))))
    await settle(engine)
    router.serve(engine, "cap-b")  # no worker anywhere: the router's view alone moves them
    async with asyncio.timeout(5):
        while len(sink.routed("u")) < 2:
            await asyncio.sleep(0.005)
    router.served.add("cap-a")
    router.unserve(engine, "cap-b")  # back to cap-a
    async with asyncio.timeout(5):
        while len(sink.routed("u")) < 3:
            await asyncio.sleep(0.005)
    await settle(engine)
    assert engine.get_task("w", "t").record.capability == "cap-a"
    assert (_queue_entries(engine, "cap-a"), _queue_entries(engine, "cap-b")) == (2, 0)
    assert engine.get_pool("default")[1].queued == 2
    a = FakeWorker()
    engine.connect_worker("a", ["cap-a"], 5, a.assign, a.cancel)
    await settle(engine)
    assert sorted((x.task_id, x.attempt) for x in a.assignments) == [("t", 1), ("u", 1)]
    assert engine.get_pool("default")[1].queued == 0
    await engine.stop()


async def test_a_stop_in_the_middle_of_a_pass_keeps_what_moved_and_a_restart_serves_every_task(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """The scheduler stops while a long pass has moved only a slice: the stop ends the pass and
    commits the moves made; after a restart each task is queued once, where its record says."""
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    n = 3000
    record, _ = await engine.submit(WorkflowSpec(tasks=tuple(_intent(f"t{i}") for i in range(n))))
    wid = record.workflow_id
    await settle(engine)
    router.serve(engine, "cap-b")
    await asyncio.sleep(0)  # one slice
    await engine.stop()
    restarted = await _started(opened, Sink(), FakeRouter())
    caps = [restarted.get_task(wid, f"t{i}").record.capability for i in range(n)]
    assert 0 < caps.count("cap-b") < n
    assert restarted.get_pool("default")[1].queued == n
    a, b = FakeWorker(), FakeWorker()
    restarted.connect_worker("a", ["cap-a"], n, a.assign, a.cancel)
    restarted.connect_worker("b", ["cap-b"], n, b.assign, b.cancel)
    async with asyncio.timeout(10):  # assignments reach workers after their commit
        while len(a.assignments) + len(b.assignments) < n:
            await asyncio.sleep(0.005)
    assert sorted(x.task_id for x in a.assignments) == sorted(f"t{i}" for i in range(n) if caps[i] == "cap-a")
    assert sorted(x.task_id for x in b.assignments) == sorted(f"t{i}" for i in range(n) if caps[i] == "cap-b")
    assert restarted.get_pool("default")[1].queued == 0
    await restarted.stop()


async def _served_by(worker: FakeWorker, count: int) -> None:
    async with asyncio.timeout(10):
        while len(worker.assignments) < count:
            await asyncio.sleep(0.005)


async def test_a_class_back_within_the_grace_keeps_its_tasks_and_one_gone_past_it_loses_them(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """A worker class restarting (gone for a moment) keeps the intent tasks waiting on it; one
    gone past the grace has them routed to the class served then, by a timer, with no other event."""
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router, grace_s=60.0)  # no stall of the machine outlasts it
    engine._started_ns -= 61 * 10**9  # the start's own grace is over
    b = FakeWorker()
    engine.connect_worker("b", ["cap-b"], 10, b.assign, b.cancel)
    router.serve(engine, "cap-b")  # dear, but served all along
    a = FakeWorker()
    worker_a = engine.connect_worker("a", ["cap-a"], 1, a.assign, a.cancel)
    router.serve(engine, "cap-a")
    record, _ = await engine.submit(WorkflowSpec(tasks=(_intent("r"), _intent("q"))))
    wid = record.workflow_id
    await _served_by(a, 1)  # A is full: q waits on cap-a
    assert engine.get_task(wid, "q").record.capability == "cap-a"

    # A goes and comes back within the grace: q stays on cap-a and A serves it.
    engine.drain_worker(worker_a)
    router.unserve(engine, "cap-a")
    await settle(engine)
    again = FakeWorker()
    worker_a2 = engine.connect_worker("a2", ["cap-a"], 2, again.assign, again.cancel)
    router.serve(engine, "cap-a")
    await _served_by(again, 1)
    assert [(x.task_id, x.capability) for x in again.assignments] == [("q", "cap-a")]
    assert b.assignments == []
    assert len(sink.routed("q")) == 1

    # A third task waits on cap-a; A goes for good: after the grace (short now) it moves to B.
    engine.reroute_grace_s = 0.2
    await engine.submit(WorkflowSpec(tasks=(_intent("s"), _intent("t"))))
    await _served_by(again, 2)  # one slot left: one of s, t is served, the other waits on cap-a
    engine.drain_worker(worker_a2)
    router.unserve(engine, "cap-a")
    await _served_by(b, 1)
    (moved,) = b.assignments
    assert moved.capability == "cap-b"
    assert sink.routed(moved.task_id)[-1]["are.route.previous_capability"] == "cap-a"
    await engine.stop()


async def test_after_a_restart_the_first_class_back_does_not_take_the_tasks_of_the_others(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """After the sidecar's restart every class reconnects in some order: the dear one first must
    not take the tasks waiting on the cheap one while the grace (counted from the start) runs."""
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    a = FakeWorker()
    engine.connect_worker("a", ["cap-a"], 1, a.assign, a.cancel)
    router.serve(engine, "cap-a")
    record, _ = await engine.submit(WorkflowSpec(tasks=(_intent("r"), _intent("q"))))
    wid = record.workflow_id
    await _served_by(a, 1)
    await engine.stop()

    router = FakeRouter()
    restarted = await _started(opened, Sink(), router, grace_s=30.0)
    b = FakeWorker()
    restarted.connect_worker("b", ["cap-b"], 10, b.assign, b.cancel)
    router.serve(restarted, "cap-b")
    await settle(restarted)
    assert b.assignments == []
    assert restarted.get_task(wid, "q").record.capability == "cap-a"
    back = FakeWorker()
    restarted.connect_worker("a", ["cap-a"], 2, back.assign, back.cancel)
    router.serve(restarted, "cap-a")
    await _served_by(back, 2)  # r (its lost attempt again) and q
    assert sorted((x.task_id, x.capability) for x in back.assignments) == [("q", "cap-a"), ("r", "cap-a")]
    assert b.assignments == []
    await restarted.stop()


async def test_a_retry_whose_intent_routes_nowhere_now_keeps_its_class_and_waits_for_it(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """The router knows a worker's card only while the worker is connected: when the only worker
    of a class is lost mid-attempt, the retry's routing finds nothing. It keeps its capability
    (a TASK_ROUTED event says so) and waits, instead of burning its attempts on ROUTING."""
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    a = FakeWorker()
    worker_a = engine.connect_worker("a", ["cap-a"], 1, a.assign, a.cancel)
    router.serve(engine, "cap-a")
    retry = RetryPolicy(maximum_attempts=2, initial_interval_s=0.001)
    record, _ = await engine.submit(WorkflowSpec(tasks=(_intent("t", retry_policy=retry),)))
    wid = record.workflow_id
    await _served_by(a, 1)
    router.down = True  # the class's cards left with its worker
    router.unserve(engine, "cap-a")
    engine.disconnect_worker(worker_a)  # WORKER_LOST: retried by policy
    async with asyncio.timeout(5):
        while len(sink.routed("t")) < 2:
            await asyncio.sleep(0.005)
    kept = sink.routed("t")[-1]
    assert (kept["are.route.capability"], kept["are.route.kept"]) == ("cap-a", True)
    waiting = engine.get_task(wid, "t").record
    assert (waiting.state, waiting.capability, waiting.attempt) == ("SCHEDULED", "cap-a", 1)
    router.down = False
    back = FakeWorker()
    engine.connect_worker("a2", ["cap-a"], 1, back.assign, back.cancel)
    router.serve(engine, "cap-a")
    await _served_by(back, 1)
    assert [(x.task_id, x.capability, x.attempt) for x in back.assignments] == [("t", "cap-a", 2)]
    await engine.stop()


async def test_an_intent_task_stopped_in_its_cache_lookup_is_looked_up_and_routed_after_a_restart(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """A task with an intent and a cache key asks the cache before the router. Stopped while the
    lookup was in flight, it was reloaded into the queue of capability "" (never routed), where
    no worker ever looks: after a restart its scheduling must finish (lookup, then route)."""
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    stuck = asyncio.Event()

    async def never(key: CacheKey, origin: TaskOrigin) -> None:
        stuck.set()
        await asyncio.sleep(3600)

    engine.cache_lookup = never
    cached = spec("t", capability="", intent="write", cache_key=CacheKey(namespace="n", prompt="p"))
    record, _ = await engine.submit(WorkflowSpec(tasks=(cached,)))
    wid = record.workflow_id
    await asyncio.wait_for(stuck.wait(), 5)
    await engine.stop()  # the lookup never answered

    router = FakeRouter()
    lookups: list[str] = []

    async def miss(key: CacheKey, origin: TaskOrigin) -> None:
        lookups.append(key.prompt)

    sink = Sink()
    restarted = Scheduler(*opened, events=sink, rng=lambda: 0.0)
    restarted.reroute_grace_s = 0.0
    router.install(restarted)
    restarted.cache_lookup = miss
    await restarted.start()
    a = FakeWorker()
    restarted.connect_worker("a", ["cap-a"], 1, a.assign, a.cancel)
    router.serve(restarted, "cap-a")
    await _served_by(a, 1)
    assert lookups == ["p"]
    assert [(x.task_id, x.capability, x.attempt) for x in a.assignments] == [("t", "cap-a", 1)]
    assert restarted.get_task(wid, "t").record.capability == "cap-a"
    assert "are.route.rerouted" not in sink.routed("t")[0]  # routed as its scheduling went on
    await restarted.stop()


@pytest.mark.parametrize("failing", [1, 4])
async def test_a_pass_that_fails_is_tried_again_backing_off(
    opened: tuple[Storage, GroupCommitter],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failing: int,
) -> None:
    """A failing pass leaves the tasks where they are; its changes are looked at again a moment
    later rather than only at the next served change, which may never come; while passes keep
    failing, later each time, with one traceback in the log."""
    caplog.set_level(logging.INFO, logger="are.scheduler")
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router)
    monkeypatch.setattr(engine_module, "_REROUTE_RETRY_S", 0.01)
    monkeypatch.setattr(engine_module, "_REROUTE_RETRY_MAX_S", 0.04)
    record, _ = await engine.submit(WorkflowSpec(tasks=(_intent("t"),)))
    wid = record.workflow_id
    await settle(engine)
    real = engine._reroute_pass
    failures = [RuntimeError(f"a bug in a pass ({n})") for n in range(failing)]
    in_a_row: list[int] = []

    async def flaky(changed: set[str]) -> None:
        in_a_row.append(engine._reroute_failures)
        if failures:
            raise failures.pop()
        await real(changed)

    monkeypatch.setattr(engine, "_reroute_pass", flaky)
    b = FakeWorker()
    engine.connect_worker("b", ["cap-b"], 1, b.assign, b.cancel)
    router.serve(engine, "cap-b")
    await _served_by(b, 1)
    assert failures == []
    assert in_a_row == list(range(failing + 1))  # each retry knew how many failed before it (its backoff)
    assert engine._reroute_failures == 0  # reset by the pass that worked
    assert caplog.text.count("Traceback") == 1  # the first failure's, then one line each
    assert ("failed again" in caplog.text) is (failing > 1)
    assert f"works again ({failing} failures)" in caplog.text
    assert [(x.task_id, x.capability) for x in b.assignments] == [("t", "cap-b")]
    assert engine.get_task(wid, "t").record.capability == "cap-b"
    await engine.stop()


# ------------------------------------------------------------ unary polls serve too


class Clock:
    """Wall-clock nanoseconds moved by hand: the grace and the poll window pass without waiting."""

    def __init__(self) -> None:
        self.now = time.time_ns()

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


class ServesRouter(FakeRouter):
    """Picks as the sidecar's route hook does: the cheapest class the scheduler counts as served
    (``Scheduler.serves``: the router's own view, which knows no polls, or unary polls lately)."""

    def __init__(self) -> None:
        super().__init__()
        self.engine: Scheduler | None = None

    def route(self, task: TaskSpec, rec: TaskRecord) -> tuple[str, dict[str, Any]]:
        assert self.engine is not None
        self.calls.append(task.intent)
        capability = next((c for c in _CLASSES if self.engine.serves(c)), _CLASSES[0])
        return capability, {"are.route.capability": capability, "are.route.agent_id": f"agent-{capability}"}

    def install(self, engine: Scheduler) -> None:
        super().install(engine)
        self.engine = engine


async def _passes_done(engine: Scheduler) -> None:
    """Waits until no re-route pass runs or is due (what a served change started has finished)."""
    async with asyncio.timeout(5):
        while engine._reroute_job is not None or engine._reroute_pending:
            await asyncio.sleep(0.005)
    await settle(engine)


async def _restart_stream_class(engine: Scheduler, router: FakeRouter, capability: str) -> None:
    """The class's stream workers go and come back: two served changes, as the router reports them."""
    router.unserve(engine, capability)
    await _passes_done(engine)
    router.serve(engine, capability)
    await _passes_done(engine)


async def _stop_poll(poll: asyncio.Future[Any]) -> None:
    poll.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await poll


async def _polled_class_with_a_waiting_intent(
    engine: Scheduler, router: FakeRouter
) -> tuple[str, asyncio.Future[Any]]:
    """An intent task waits on cap-a, whose one long poll waits too (the pool's slot is held by a
    task of cap-x), and a stream worker of cap-b connects: returns the workflow id and the poll."""
    await engine.put_pool(PoolLimits(name="p", max_concurrency=1))
    x = FakeWorker()
    engine.connect_worker("x", ["cap-x"], 1, x.assign, x.cancel)
    tasks = (spec("x", capability="cap-x", pool="p"), _intent("q", pool="p"))
    record, _ = await engine.submit(WorkflowSpec(tasks=tasks))
    wid = record.workflow_id
    await _served_by(x, 1)  # x holds the pool's one slot
    assert engine.get_task(wid, "q").record.capability == "cap-a"  # nothing served: the cheapest card
    poll = asyncio.ensure_future(engine.poll("poller", ["cap-a"], 1, 60.0))
    await _passes_done(engine)
    b = FakeWorker()
    engine.connect_worker("b", ["cap-b"], 1, b.assign, b.cancel)
    router.serve(engine, "cap-b")
    await _passes_done(engine)
    return wid, poll


async def test_a_class_served_only_by_a_waiting_poll_keeps_its_intent_tasks_until_its_polls_stop(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """A long poll waits for cap-a (its pool is full, so nothing is dispatched to it): no stream
    worker declares cap-a, yet it is served, and a stream class connecting past the grace does not
    take the intent task waiting there. Once its last poll ended more than the window (the grace)
    ago, the next served change moves the task; within the window it still stays."""
    sink, router, clock = Sink(), FakeRouter(), Clock()
    engine = await _started(opened, sink, router, grace_s=10.0, clock=clock)
    clock.advance(11)  # the start's own grace is over
    wid, poll = await _polled_class_with_a_waiting_intent(engine, router)
    assert engine.get_task(wid, "q").record.capability == "cap-a"
    assert len(sink.routed("q")) == 1
    assert engine.serves("cap-a")
    assert not poll.done()  # still waiting: the pool is full

    await _stop_poll(poll)
    clock.advance(5)  # within the window of its end
    await _restart_stream_class(engine, router, "cap-b")
    assert engine.get_task(wid, "q").record.capability == "cap-a"

    clock.advance(6)  # its polls stopped 11 s ago: cap-a is served by nobody
    assert not engine.serves("cap-a")
    await _restart_stream_class(engine, router, "cap-b")
    moved = engine.get_task(wid, "q").record
    assert (moved.state, moved.capability) == ("SCHEDULED", "cap-b")
    async with asyncio.timeout(10):
        while len(sink.routed("q")) < 2:  # its TASK_ROUTED is published after its commit, the move before
            await asyncio.sleep(0.01)
    assert sink.routed("q")[-1]["are.route.previous_capability"] == "cap-a"
    await engine.stop()


async def _poller_took_r(
    opened: tuple[Storage, GroupCommitter],
) -> tuple[Scheduler, FakeRouter, Clock, str, Any]:
    """Intent tasks r and q wait on cap-a (grace 10 s, over), and a poller for cap-a takes r:
    returns the engine, the router, the clock, the workflow id and r's assignment."""
    sink, router, clock = Sink(), FakeRouter(), Clock()
    engine = await _started(opened, sink, router, grace_s=10.0, clock=clock)
    clock.advance(11)
    record, _ = await engine.submit(WorkflowSpec(tasks=(_intent("r"), _intent("q"))))
    await settle(engine)
    _, (taken,) = await engine.poll("poller", ["cap-a"], 1, 5.0)
    assert (taken.task_id, taken.capability) == ("r", "cap-a")
    return engine, router, clock, record.workflow_id, taken


async def test_a_poller_busy_on_a_long_attempt_still_serves_its_class(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """A poller took one task and works on it long past the window, polling no more meanwhile but
    heartbeating as the SDKs do: while its attempt is held its class keeps the intent tasks waiting;
    once the attempt is reported and the window passes with no poll, they move."""
    engine, router, clock, wid, taken = await _poller_took_r(opened)
    for _ in range(12):  # far past the window, well within its start-to-close timeout (600 s)
        clock.advance(5)
        assert not engine.heartbeat(wid, "r", taken.attempt, None, "")

    b = FakeWorker()
    engine.connect_worker("b", ["cap-b"], 1, b.assign, b.cancel)
    router.serve(engine, "cap-b")
    await _passes_done(engine)
    assert engine.get_task(wid, "q").record.capability == "cap-a"
    assert b.assignments == []

    await engine.complete(wid, "r", taken.attempt, output=b"", content_type="", usage=None)
    await _restart_stream_class(engine, router, "cap-b")  # reported just now: within the window
    assert engine.get_task(wid, "q").record.capability == "cap-a"
    clock.advance(11)
    await _restart_stream_class(engine, router, "cap-b")
    await _served_by(b, 1)
    assert [(x.task_id, x.capability) for x in b.assignments] == [("q", "cap-b")]
    await engine.stop()


async def test_a_poller_that_dies_holding_an_attempt_stops_serving_its_class_a_window_later(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """A poller took one task and went silent (no heartbeat: dead, as far as anyone can tell; its
    attempt's lease runs on for 600 s): a window after it showed life its class is served by nobody
    and the intent tasks waiting there move to a served class. A heartbeat after all brings the class
    back: served again at once, with a re-route pass as a fresh poll starts."""
    engine, router, clock, wid, taken = await _poller_took_r(opened)
    b = FakeWorker()
    engine.connect_worker("b", ["cap-b"], 1, b.assign, b.cancel)
    router.serve(engine, "cap-b")
    await _passes_done(engine)
    clock.advance(9)  # silent, but within the window of its assignment
    assert engine.serves("cap-a")
    await _restart_stream_class(engine, router, "cap-b")
    assert engine.get_task(wid, "q").record.capability == "cap-a"

    clock.advance(2)  # 11 s of silence: served by nobody, and the grace is counted from its last sign
    assert not engine.serves("cap-a")
    assert engine.get_task(wid, "r").record.state == "RUNNING"  # the lease itself runs on
    await _restart_stream_class(engine, router, "cap-b")
    await _served_by(b, 1)
    assert [(x.task_id, x.capability) for x in b.assignments] == [("q", "cap-b")]

    assert not engine.heartbeat(wid, "r", taken.attempt, None, "")  # alive after all
    assert engine.serves("cap-a")
    await engine.stop()


async def test_a_class_whose_polls_stop_loses_its_intent_tasks_a_window_later_with_no_other_event(
    opened: tuple[Storage, GroupCommitter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When its pollers go for good, nothing tells the router: a timer looks again once the window
    has passed since the last poll ended, and the waiting intent tasks go to the class served."""
    monkeypatch.setattr(engine_module, "_POLL_GAP_S", 0.0)  # the window is the grace alone
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router, grace_s=60.0)
    engine._started_ns -= 61 * 10**9  # the start's own grace is over
    wid, poll = await _polled_class_with_a_waiting_intent(engine, router)
    assert engine.get_task(wid, "q").record.capability == "cap-a"

    engine.reroute_grace_s = 0.2
    await _stop_poll(poll)
    async with asyncio.timeout(10):
        while len(sink.routed("q")) < 2:  # its TASK_ROUTED is published after its commit, the move before
            await asyncio.sleep(0.01)
    assert engine.get_task(wid, "q").record.capability == "cap-b"
    assert sink.routed("q")[-1]["are.route.previous_capability"] == "cap-a"
    await engine.stop()


async def test_the_first_poll_for_a_class_brings_it_the_intent_tasks_waiting_on_unserved_ones(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """Nothing served cap-a or cap-b when the task was routed (so it waits on cap-a, the cheaper
    card); a poll for cap-b arrives: cap-b is served now, the task is routed again, moves there
    and is handed to that very poll."""
    sink, router = Sink(), ServesRouter()
    engine = await _started(opened, sink, router)
    record, _ = await engine.submit(WorkflowSpec(tasks=(_intent("q"),)))
    wid = record.workflow_id
    await settle(engine)
    assert engine.get_task(wid, "q").record.capability == "cap-a"
    _, assignments = await engine.poll("poller", ["cap-b"], 1, 5.0)
    assert [(a.task_id, a.capability) for a in assignments] == [("q", "cap-b")]
    again = sink.routed("q")[-1]
    assert (again["are.route.rerouted"], again["are.route.previous_capability"]) == (True, "cap-a")
    await engine.stop()


async def test_an_intent_routed_while_a_poll_serves_a_class_goes_to_it(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """The initial pick counts polls too: a poller serving cap-b (the dearer card) wins over
    cap-a, a card nobody serves."""
    sink, router = Sink(), ServesRouter()
    engine = await _started(opened, sink, router)
    poll = asyncio.ensure_future(engine.poll("poller", ["cap-b"], 1, 5.0))
    await settle(engine)
    record, _ = await engine.submit(WorkflowSpec(tasks=(_intent("q"),)))
    _, assignments = await poll
    assert [(a.task_id, a.capability) for a in assignments] == [("q", "cap-b")]
    assert len(sink.routed("q")) == 1
    assert engine.get_task(record.workflow_id, "q").record.capability == "cap-b"
    await engine.stop()


async def test_only_a_poll_that_makes_a_class_served_starts_a_reroute(
    opened: tuple[Storage, GroupCommitter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poller polling over and over does not start a pass each poll: only the poll that finds its
    capability served by nothing (the first, or the first after a gap longer than the window)."""
    sink, router, clock = Sink(), FakeRouter(), Clock()
    engine = await _started(opened, sink, router, grace_s=10.0, clock=clock)
    told: list[list[str]] = []
    real = engine.served_changed

    def spy(capabilities: Any) -> None:
        told.append(sorted(capabilities))
        real(capabilities)

    monkeypatch.setattr(engine, "served_changed", spy)
    router.served.add("cap-a")  # served by a stream worker
    for _ in range(3):
        await engine.poll("poller", ["cap-a", "cap-b"], 1, 0.01)
        clock.advance(5)  # each poll starts within the window of the last one's end
    both = [asyncio.ensure_future(engine.poll("poller", ["cap-b"], 1, 0.05)) for _ in range(2)]
    await asyncio.gather(*both)
    assert told == [["cap-b"]]
    clock.advance(11)
    await engine.poll("poller", ["cap-b"], 1, 0.01)
    assert told == [["cap-b"], ["cap-b"]]
    assert len(engine._poll_ended) == 1  # cap-a's end, older than the window, was dropped
    await engine.stop()
