"""What the engine keeps per capability name is bounded by what is live (engine, no server).

A capability name is free text chosen per task by clients (or by the router
for an intent): tasks naming ever-new ones must leave nothing behind once
they have gone, however many names went by.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from are_core.scheduler import TABLES, PoolLimits, Scheduler, TaskRecord, TaskSpec, WorkflowSpec
from are_core.scheduler import _engine as engine_module
from are_core.storage import Durability, GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec
from tests.unit.scheduler.test_reroute import FakeRouter, Sink, _intent, _started

N = 500  # capability names, each used once


def _sizes(engine: Scheduler) -> dict[str, int]:
    """The size of every map the engine keys by capability."""
    return {
        name: len(getattr(engine, name))
        for name in (
            "_queues",
            "_idle",
            "_intent_caps",
            "_unserved_since",
            "_rechecks",
            "_reroute_pending",
            "_poll_waiting",
            "_poll_held",
            "_poll_contact",
            "_poll_ended",
            "_poll_checks",
        )
    }


class Routes:
    """Route and served hooks: an intent goes to a capability named after it, served once a worker says so."""

    def __init__(self) -> None:
        self.served: set[str] = set()

    def route(self, task: TaskSpec, rec: TaskRecord) -> tuple[str, dict[str, Any]]:
        return f"cap-{task.intent}", {}

    def install(self, engine: Scheduler, grace_s: float) -> None:
        engine.route = self.route
        engine.capability_served = self.served.__contains__
        engine.reroute_grace_s = grace_s

    def serve(self, engine: Scheduler, capability: str, served: bool) -> None:
        """The router's report: ``capability`` gained its first worker or lost its last."""
        if served:
            self.served.add(capability)
        else:
            self.served.discard(capability)
        engine.served_changed([capability])


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[tuple[Scheduler, Routes]]:
    """A started scheduler routing intents (grace 50 ms), and its hooks."""
    storage = Storage.open(tmp_path / "data", tables=TABLES, durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    routes = Routes()
    routes.install(engine, grace_s=0.05)
    await engine.start()
    yield engine, routes
    await engine.stop()
    await committer.aclose()
    storage.close()


async def _assigned(worker: FakeWorker, count: int) -> None:
    async with asyncio.timeout(5):
        while len(worker.assignments) < count:
            await asyncio.sleep(0.005)


async def _back_to(engine: Scheduler, before: dict[str, int]) -> None:
    """Waits (ten seconds at most: timers past the grace) for every map to be back to ``before``."""
    for _ in range(1000):
        if _sizes(engine) == before:
            return
        await asyncio.sleep(0.01)
    assert _sizes(engine) == before


async def _complete_all(engine: Scheduler, worker: FakeWorker) -> None:
    for x in worker.assignments:
        engine.complete(x.workflow_id, x.task_id, x.attempt, output=b"", content_type="", usage=None)
    await settle(engine)


async def test_tasks_naming_many_capabilities_leave_no_queue_or_idle_entry_once_done(
    engine: Scheduler,
) -> None:
    """Each capability's queue goes once its task is dispatched and its worker is busy or gone."""
    before = _sizes(engine)
    caps = [f"cap-{i}" for i in range(N)]
    record, _ = await engine.submit(
        WorkflowSpec(tasks=tuple(spec(f"t{i}", capability=c) for i, c in enumerate(caps)))
    )
    assert len(engine._queues) == N
    worker = FakeWorker()
    handles = [
        engine.connect_worker(f"w{i}", [c], 1, worker.assign, worker.cancel) for i, c in enumerate(caps)
    ]
    await _assigned(worker, N)
    await _complete_all(engine, worker)
    assert engine.get_workflow(record.workflow_id).record.state == "COMPLETED"
    assert len(engine._idle) == N  # each worker waits idle for its capability again
    for handle in handles:
        engine.disconnect_worker(handle)
    assert _sizes(engine) == before


async def test_tasks_cancelled_while_queued_or_backlogged_leave_no_entry_behind(engine: Scheduler) -> None:
    """A cancelled task's entry (stale) no longer holds its queue, nor the pool's backlog, in memory."""
    await engine.put_pool(PoolLimits(name="small", max_queue_length=50))
    before = _sizes(engine)
    gate = FakeWorker()
    handle = engine.connect_worker("gate", ["gate"], 1, gate.assign, gate.cancel)
    fan = tuple(spec(f"t{i}", "gate", capability=f"cap-{i}", pool="small") for i in range(N))
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec("gate", capability="gate"), *fan)))
    await _assigned(gate, 1)
    await _complete_all(engine, gate)  # releases the fan-out: 50 queued, the rest backlogged
    _, status = engine.get_pool("small")
    assert (status.queued, status.backlog) == (50, N - 50)
    await engine.cancel(record.workflow_id, "test", "tests")
    await settle(engine)
    engine.disconnect_worker(handle)
    assert _sizes(engine) == before
    assert engine._pools["small"].backlog.size == 0


async def test_intents_routed_to_many_capabilities_leave_nothing_once_their_workers_are_gone(
    routed: tuple[Scheduler, Routes],
) -> None:
    """Intent capabilities, and when each lost its last worker, are forgotten past the grace."""
    engine, routes = routed
    before = _sizes(engine)
    intents = tuple(TaskSpec(task_id=f"t{i}", capability="", intent=str(i)) for i in range(N))
    await engine.submit(WorkflowSpec(tasks=intents))
    await settle(engine)
    assert len(engine._intent_caps) == N
    worker = FakeWorker()
    handles = []
    for i in range(N):
        handles.append(engine.connect_worker(f"w{i}", [f"cap-{i}"], 1, worker.assign, worker.cancel))
        routes.serve(engine, f"cap-{i}", served=True)
    await _assigned(worker, N)
    await _complete_all(engine, worker)
    for i, handle in enumerate(handles):
        engine.disconnect_worker(handle)
        routes.serve(engine, f"cap-{i}", served=False)
    assert len(engine._unserved_since) == N  # within the grace: a class restarting keeps its tasks
    await _back_to(engine, before)


async def test_long_polls_for_many_capabilities_leave_nothing_once_their_window_has_passed(
    routed: tuple[Scheduler, Routes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What polls leave (each capability's last poll end, idle set and queue) goes a window later."""
    monkeypatch.setattr(engine_module, "_POLL_GAP_S", 0.0)  # the window is the grace (50 ms)
    engine, _ = routed
    before = _sizes(engine)
    caps = [f"cap-{i}" for i in range(N)]
    record, _ = await engine.submit(
        WorkflowSpec(tasks=tuple(spec(f"t{i}", capability=c) for i, c in enumerate(caps)))
    )
    polls = await asyncio.gather(*(engine.poll("poller", [c], 1, 5.0) for c in caps))
    assert sorted(a.task_id for _, got in polls for a in got) == sorted(f"t{i}" for i in range(N))
    assert len(engine._poll_held) == N  # each poller holds its attempt: its class is served
    for _, got in polls:
        for a in got:
            engine.complete(a.workflow_id, a.task_id, a.attempt, output=b"", content_type="", usage=None)
    await settle(engine)
    assert engine.get_workflow(record.workflow_id).record.state == "COMPLETED"
    await _back_to(engine, before)


async def test_an_intent_task_backlogged_on_a_class_whose_polls_stop_is_still_routed_again(
    opened: tuple[Storage, GroupCommitter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its capability has no queue (so no entry among the intent capabilities, which go with the
    queues): the backlog alone is reason enough to look again when the class's polls stop."""
    monkeypatch.setattr(engine_module, "_POLL_GAP_S", 0.0)  # the window is the grace (50 ms)
    sink, router = Sink(), FakeRouter()
    engine = await _started(opened, sink, router, grace_s=0.05)
    engine._started_ns -= 10**9  # the start's own grace is over
    await engine.put_pool(PoolLimits(name="small", max_queue_length=1))
    await engine.submit(WorkflowSpec(tasks=(spec("x", capability="cap-x", pool="small"),)))  # fills it
    gate = FakeWorker()
    engine.connect_worker("gate", ["gate"], 1, gate.assign, gate.cancel)
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(spec("g", capability="gate"), _intent("q", "g", pool="small")))
    )
    wid = record.workflow_id
    await _assigned(gate, 1)
    await _complete_all(engine, gate)
    assert engine.get_task(wid, "q").record.capability == "cap-a"  # nothing served: the cheapest card
    assert engine.get_pool("small")[1].backlog == 1
    assert "cap-a" not in engine._intent_caps

    await engine.poll("poller", ["cap-a"], 1, 0.01)  # cap-a is poll-served for a window
    b = FakeWorker()
    engine.connect_worker("b", ["cap-b"], 1, b.assign, b.cancel)
    router.serve(engine, "cap-b")
    async with asyncio.timeout(10):  # its polls stopped a window ago: q moves to cap-b
        while len(sink.routed("q")) < 2:  # its TASK_ROUTED is published after its commit
            await asyncio.sleep(0.01)
    assert engine.get_task(wid, "q").record.capability == "cap-b"
    assert sink.routed("q")[-1]["are.route.previous_capability"] == "cap-a"
    await engine.stop()
