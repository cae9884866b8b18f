"""Which worker a free slot goes to, and which queued task fills it (engine, no server).

A worker serving several capabilities takes the most urgent of their queue
heads, and among heads of one priority the capabilities take turns, as
workflows do inside one queue (task.proto: priority, then round-robin); tasks
are spread across idle replicas of a worker rather than filling the first;
and a pump does no work for capabilities that have nothing queued, however
many idle workers declare them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

from are_core.scheduler import PoolLimits, Scheduler, WorkerHandle, WorkflowSpec
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec


async def _submit(engine: Scheduler, workflow_id: str, capability: str, n: int, priority: int = 0) -> None:
    tasks = tuple(spec(f"{capability}{i}", capability=capability, priority=priority) for i in range(n))
    await engine.submit(WorkflowSpec(workflow_id=workflow_id, tasks=tasks))


async def _complete(engine: Scheduler, worker: FakeWorker, index: int) -> None:
    x = worker.assignments[index]
    engine.complete(x.workflow_id, x.task_id, x.attempt, output=b"", content_type="", usage=None)
    await settle(engine)


# ------------------------------------------------------------- across capabilities


async def test_a_more_urgent_task_of_another_capability_goes_first_to_a_shared_worker(
    engine: Scheduler,
) -> None:
    """Priority holds across the capabilities one worker serves, when it connects and when a slot frees."""
    await _submit(engine, "bulk", "alpha", 10, priority=5)
    await _submit(engine, "urgent", "beta", 1, priority=1)
    worker = FakeWorker()
    engine.connect_worker("both", ["alpha", "beta"], 1, worker.assign, worker.cancel)
    await settle(engine)
    assert [a.task_id for a in worker.assignments] == ["beta0"]
    await _complete(engine, worker, 0)
    await _submit(engine, "urgent-2", "beta", 1, priority=4)  # while an alpha task runs
    await _complete(engine, worker, 1)
    await _complete(engine, worker, 2)
    assert [a.workflow_id for a in worker.assignments] == ["urgent", "bulk", "urgent-2", "bulk"]


async def test_capabilities_of_one_priority_take_turns_on_a_shared_worker(engine: Scheduler) -> None:
    """A backlog of one capability does not hold back another of the same priority: they alternate."""
    await _submit(engine, "a", "alpha", 6)
    await _submit(engine, "b", "beta", 6)
    worker = FakeWorker()
    engine.connect_worker("both", ["alpha", "beta"], 1, worker.assign, worker.cancel)
    await settle(engine)
    for i in range(11):
        await _complete(engine, worker, i)
    assert [a.capability for a in worker.assignments] == ["alpha", "beta"] * 6


async def test_a_steady_feed_of_one_capability_does_not_hold_back_another(engine: Scheduler) -> None:
    """New work keeps arriving for ``alpha``: the one ``beta`` task still runs within a turn."""
    worker = FakeWorker()
    engine.connect_worker("both", ["alpha", "beta"], 1, worker.assign, worker.cancel)
    await _submit(engine, "feed-0", "alpha", 2)
    await settle(engine)
    for i in range(1, 12):
        await _submit(engine, f"feed-{i}", "alpha", 2)
        if i == 3:
            await _submit(engine, "late", "beta", 1)
            late = len(worker.assignments)
        await _complete(engine, worker, i - 1)
    caps = [a.capability for a in worker.assignments]
    assert caps.count("beta") == 1
    assert caps.index("beta") <= late + 1, caps


async def test_one_pass_over_a_wide_worker_alternates_capabilities(engine: Scheduler) -> None:
    """Several free slots filled in one pump are shared between the capabilities' queues too."""
    await _submit(engine, "a", "alpha", 8)
    await _submit(engine, "b", "beta", 8)
    await _submit(engine, "c", "gamma", 8, priority=4)
    worker = FakeWorker()
    engine.connect_worker("all", ["alpha", "beta", "gamma"], 6, worker.assign, worker.cancel)
    await settle(engine)
    assert [a.capability for a in worker.assignments] == ["alpha", "beta"] * 3


# ------------------------------------------------------------------ across workers


async def test_tasks_are_spread_across_idle_replicas(engine: Scheduler) -> None:
    """Two replicas with 8 slots each and 8 tasks: each takes 4, round after round."""
    replicas = [FakeWorker() for _ in range(2)]
    for i, replica in enumerate(replicas):
        engine.connect_worker("writer", ["write"], 8, replica.assign, replica.cancel, worker_id=f"r{i}")
    for round_ in range(3):
        await _submit(engine, f"fan-{round_}", "write", 8)
        await settle(engine)
        assert [len(r.assignments) for r in replicas] == [4, 4], round_
        for replica in replicas:
            for x in replica.assignments:
                engine.complete(x.workflow_id, x.task_id, x.attempt, output=b"", content_type="", usage=None)
            replica.assignments.clear()
        await settle(engine)


async def test_a_replica_that_frees_a_slot_is_not_preferred_over_one_idle_longer(engine: Scheduler) -> None:
    """Three replicas, tasks one at a time: each takes its turn rather than the first taking them all."""
    replicas = [FakeWorker() for _ in range(3)]
    for i, replica in enumerate(replicas):
        engine.connect_worker("w", ["cap"], 4, replica.assign, replica.cancel, worker_id=f"r{i}")
    for i in range(9):
        await _submit(engine, f"one-{i}", "cap", 1)
        await settle(engine)
    assert [len(r.assignments) for r in replicas] == [3, 3, 3]


# ------------------------------------------------------------ the cost of a pump


class _Touched(dict[str, Any]):
    """A capability-keyed map that records every key the engine reads (a full read records all)."""

    def __init__(self, data: dict[str, Any], touched: set[str]) -> None:
        super().__init__(data)
        self.touched = touched

    def get(self, key: str, default: Any = None) -> Any:
        self.touched.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.touched.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.touched.add(str(key))
        return super().__contains__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self.touched.add(key)
        return super().pop(key, *default)

    def _all(self) -> None:
        self.touched.update(dict.keys(self))

    def __iter__(self) -> Iterator[str]:
        self._all()
        return super().__iter__()

    def keys(self) -> Any:
        self._all()
        return super().keys()

    def values(self) -> Any:
        self._all()
        return super().values()

    def items(self) -> Any:
        self._all()
        return super().items()


async def test_a_pump_visits_no_capability_with_nothing_queued(engine: Scheduler) -> None:
    """Idle workers declaring 2,000 capabilities with nothing queued: the engine, completing and
    dispatching 30 tasks one after another, reads no map entry of any of those capabilities."""
    idle = FakeWorker()
    for i in range(20):
        engine.connect_worker(f"idle{i}", [f"cap-{i}-{j}" for j in range(100)], 1, idle.assign, idle.cancel)
    worker = FakeWorker()
    engine.connect_worker("x", ["x"], 1, worker.assign, worker.cancel)
    await _submit(engine, "many", "x", 30)
    await settle(engine)
    touched: set[str] = set()
    engine._idle = _Touched(engine._idle, touched)
    engine._queues = _Touched(engine._queues, touched)
    for i in range(30):
        await _complete(engine, worker, i)
    assert len(worker.assignments) == 30
    assert engine.get_workflow("many").record.state == "COMPLETED"
    assert idle.assignments == []
    assert touched <= {"x"}, f"{len(touched)} capabilities read, e.g. {sorted(touched)[:3]}"


# ------------------------------------------------------- the ready queues, kept right


def _expected_ready(engine: Scheduler) -> set[int]:
    return {
        id(queue)
        for cap, by_pool in engine._queues.items()
        for queue in by_pool.values()
        if queue.waiting and engine._idle.get(cap)
    }


def _check(engine: Scheduler) -> None:
    """The ready queues are those with a task waiting and an idle worker; each is blocked by its pool."""
    assert {id(q) for q in engine._ready} == _expected_ready(engine)
    for queue in engine._ready:
        pool = engine._pools[queue.pool]
        assert pool.limits.max_concurrency and pool.running >= pool.limits.max_concurrency, (queue.cap, pool)


def _held(handles: Iterable[WorkerHandle]) -> list[tuple[str, str, int]]:
    return [
        (wf_id, task_id, task.rec.attempt)
        for handle in handles
        if handle.connected
        for (wf_id, task_id), task in handle.held.items()
    ]


async def test_ready_queues_follow_every_change_of_queues_and_workers(engine: Scheduler) -> None:
    """Random submits (priorities, a pool of concurrency 2), connects, drains, disconnects,
    completions and cancels over workers of overlapping capabilities: the set of ready queues
    is always exactly what it should be, and after each step nothing dispatchable waits."""
    await engine.put_pool(PoolLimits(name="two", max_concurrency=2))
    rnd = random.Random(7)
    caps = ["c1", "c2", "c3"]
    workers: list[WorkerHandle] = []
    open_ids: list[str] = []
    for step in range(150):
        op = rnd.random()
        if op < 0.3:
            tasks = tuple(
                spec(
                    f"t{i}",
                    capability=rnd.choice(caps),
                    priority=rnd.randint(1, 5),
                    pool=rnd.choice(["default", "two"]),
                )
                for i in range(rnd.randint(1, 6))
            )
            record, _ = await engine.submit(WorkflowSpec(workflow_id=f"wf{step}", tasks=tasks))
            open_ids.append(record.workflow_id)
        elif op < 0.45:
            worker = FakeWorker()
            chosen = rnd.sample(caps, rnd.randint(1, 3))
            handle = engine.connect_worker(
                f"w{step}", chosen, rnd.randint(1, 3), worker.assign, worker.cancel
            )
            workers.append(handle)
        elif op < 0.5 and workers:
            engine.disconnect_worker(rnd.choice(workers))
        elif op < 0.55 and workers:
            engine.drain_worker(rnd.choice(workers))
        elif op < 0.6 and open_ids:
            await engine.cancel(open_ids.pop(rnd.randrange(len(open_ids))), "test", "tests")
        else:
            held = _held(workers)
            if held:
                wf_id, task_id, attempt = rnd.choice(held)
                engine.complete(wf_id, task_id, attempt, output=b"", content_type="", usage=None)
        await settle(engine)
        _check(engine)
