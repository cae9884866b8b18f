"""The coalesced WatchWorkflow statuses never miss the close (engine in process, no server).

Defect: the watch cleared its wake-up signal after handing out a status.
gRPC writes that status while the generator waits at its ``yield``; a
change landing during the write set the signal, and the clear erased it.
When that change closed the workflow, the watch, and every SDK ``wait()``
and ``result()`` built on it, waited forever (an operator review reproduced
it on a loaded sidecar: 20 waits timing out on COMPLETED workflows).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from are_core.scheduler import Assignment, Cancellation, Scheduler, TaskSpec, WorkflowSpec, WorkflowView
from sidecar._scheduler import coalesced_views

_HANG_GUARD_S = 10.0  # a bound on a hang, not a timing assertion


async def _dispatched(engine: Scheduler, assignments: list[Assignment], count: int) -> None:
    async with asyncio.timeout(_HANG_GUARD_S):
        while len(assignments) < count:
            await asyncio.sleep(0.005)


async def test_a_close_while_the_last_status_is_being_sent_is_reported(engine: Scheduler) -> None:
    record, _ = await engine.submit(WorkflowSpec(tasks=(TaskSpec(task_id="a", capability="cap"),)))
    assignments: list[Assignment] = []
    cancellations: list[Cancellation] = []
    engine.connect_worker("w", ["cap"], 1, assignments.extend, cancellations.extend)
    await _dispatched(engine, assignments, 1)
    signal = engine.watch(record.workflow_id)
    views: AsyncGenerator[WorkflowView] = coalesced_views(engine, record.workflow_id, signal, None)
    try:
        first = await anext(views)
        assert first.record.state == "RUNNING"
        # The caller is sending that status now (the generator waits at its yield): the workflow closes.
        await engine.complete(record.workflow_id, "a", 1, output=b"1", content_type="", usage=None)
        closing = await asyncio.wait_for(anext(views), _HANG_GUARD_S)
        assert closing.record.state == "COMPLETED"
        assert [view async for view in views] == []  # the closing status is the last
    finally:
        await views.aclose()
        engine.unwatch(record.workflow_id, signal)


async def test_changes_while_a_status_is_sent_are_coalesced_into_the_next(engine: Scheduler) -> None:
    tasks = tuple(TaskSpec(task_id=f"t{i}", capability="cap") for i in range(3))
    record, _ = await engine.submit(WorkflowSpec(tasks=tasks))
    assignments: list[Assignment] = []
    engine.connect_worker("w", ["cap"], 3, assignments.extend, lambda _: None)
    await _dispatched(engine, assignments, 3)
    signal = engine.watch(record.workflow_id)
    views: AsyncGenerator[WorkflowView] = coalesced_views(engine, record.workflow_id, signal, None)
    try:
        assert (await anext(views)).record.state == "RUNNING"
        for task_id in ("t0", "t1"):  # two changes while the caller sends
            await engine.complete(record.workflow_id, task_id, 1, output=b"1", content_type="", usage=None)
        second = await asyncio.wait_for(anext(views), _HANG_GUARD_S)
        assert second.record.state == "RUNNING"
        assert second.record.counts.get("COMPLETED") == 2  # both, in one status
        await engine.complete(record.workflow_id, "t2", 1, output=b"1", content_type="", usage=None)
        assert (await asyncio.wait_for(anext(views), _HANG_GUARD_S)).record.state == "COMPLETED"
    finally:
        await views.aclose()
        engine.unwatch(record.workflow_id, signal)
