"""Pool queues stay within max_queue_length; released work waits in workflow backlogs (engine only)."""

from __future__ import annotations

import asyncio

import pytest

from are_core.scheduler import (
    Assignment,
    Cancellation,
    PoolLimits,
    PoolQueueFullError,
    Scheduler,
    TaskSpec,
    WorkflowSpec,
)
from are_core.storage import GroupCommitter, Storage


def spec(task_id: str, *deps: str, **fields: object) -> TaskSpec:
    # fields are TaskSpec's own keywords, passed through from each test untyped.
    return TaskSpec(task_id=task_id, capability="cap", depends_on=deps, pool="p", **fields)  # type: ignore[arg-type]


def fan_out(width: int, *, prefix: str = "") -> WorkflowSpec:
    """A root task releasing ``width`` tasks at once when it completes."""
    return WorkflowSpec(
        tasks=(spec(f"{prefix}root"), *(spec(f"{prefix}t{i}", f"{prefix}root") for i in range(width)))
    )


class Recorder:
    """A worker that remembers its assignments and checks the pool bound on every delivery."""

    def __init__(self, engine: Scheduler, limit: int) -> None:
        self.engine = engine
        self.limit = limit
        self.held: list[Assignment] = []
        self.most_queued = 0
        self.most_backlog = 0

    def observe(self) -> None:
        _, status = self.engine.get_pool("p")
        assert status.queued <= self.limit
        self.most_queued = max(self.most_queued, status.queued)
        self.most_backlog = max(self.most_backlog, status.backlog)

    def assign(self, batch: list[Assignment]) -> None:
        self.held.extend(batch)
        self.observe()

    def cancel(self, batch: list[Cancellation]) -> None:
        pass


async def drain(engine: Scheduler, worker: Recorder, *, expected: int) -> list[str]:
    """Completes whatever the worker holds, in rounds, until ``expected`` tasks ran."""
    ran: list[str] = []
    async with asyncio.timeout(20):
        while len(ran) < expected:
            if not worker.held:
                await asyncio.sleep(0.001)
                continue
            batch, worker.held = worker.held, []
            for a in batch:
                ran.append(f"{a.workflow_id}/{a.task_id}")
                durable = engine.complete(
                    a.workflow_id, a.task_id, a.attempt, output=b"1", content_type="", usage=None
                )
                worker.observe()
            await durable
    return ran


async def test_a_released_fan_out_waits_in_the_backlog_and_drains_fairly(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    storage, committer = opened
    engine = Scheduler(storage, committer)
    await engine.start()
    await engine.put_pool(PoolLimits(name="p", max_queue_length=5))
    big, _ = await engine.submit(fan_out(40, prefix="big"))
    small, _ = await engine.submit(fan_out(4, prefix="small"))
    worker = Recorder(engine, 5)
    engine.connect_worker("w", ["cap"], 2, worker.assign, worker.cancel)
    ran = await drain(engine, worker, expected=2)  # both roots: 44 tasks released, 5 queued
    _, status = engine.get_pool("p")
    assert (status.queued, status.running, status.backlog) == (5, 2, 44 - 5 - 2)
    # A full queue refuses new admissions, even while the backlog is draining.
    with pytest.raises(PoolQueueFullError):
        await engine.submit(WorkflowSpec(tasks=(spec("late"),)))
    with pytest.raises(PoolQueueFullError):
        await engine.spawn(big.workflow_id, [spec("extra")])  # (ids, deduplicated)
    ran += await drain(engine, worker, expected=44)
    assert len(set(ran)) == 46
    assert worker.most_queued == 5
    assert worker.most_backlog > 0
    # Fairness: the small workflow's tasks are not all behind the big one's.
    small_positions = [i for i, name in enumerate(ran) if name.startswith(small.workflow_id)]
    assert max(small_positions) < 20
    _, status = engine.get_pool("p")
    assert (status.queued, status.backlog, status.running) == (0, 0, 0)
    assert engine.get_workflow(big.workflow_id).record.state == "COMPLETED"
    assert engine.get_workflow(small.workflow_id).record.state == "COMPLETED"
    await engine.stop()


async def test_the_backlog_is_rebuilt_after_a_restart_and_cancelled_tasks_leave_it(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    storage, committer = opened
    engine = Scheduler(storage, committer)
    await engine.start()
    await engine.put_pool(PoolLimits(name="p", max_queue_length=3))
    kept, _ = await engine.submit(fan_out(10, prefix="k"))
    doomed, _ = await engine.submit(fan_out(10, prefix="d"))
    worker = Recorder(engine, 3)
    handle = engine.connect_worker("w", ["cap"], 2, worker.assign, worker.cancel)
    await drain(engine, worker, expected=2)
    engine.drain_worker(handle)  # no more dispatches: the queue stays full
    await asyncio.sleep(0.01)
    _, status = engine.get_pool("p")
    assert status.queued == 3 and status.queued + status.running + status.backlog == 20
    await engine.stop()

    restarted = Scheduler(storage, committer)
    await restarted.start()
    _, status = restarted.get_pool("p")
    assert (status.queued, status.backlog) == (3, 20 - 3)  # running ones were re-queued too
    await restarted.cancel(doomed.workflow_id, "no longer needed", "test")
    _, status = restarted.get_pool("p")
    assert status.queued <= 3 and status.queued + status.backlog == 10
    # A longer queue takes backlogged tasks at once.
    await restarted.put_pool(PoolLimits(name="p", max_queue_length=8))
    _, status = restarted.get_pool("p")
    assert (status.queued, status.backlog) == (8, 2)
    again = Recorder(restarted, 8)
    restarted.connect_worker("w2", ["cap"], 3, again.assign, again.cancel)
    ran = await drain(restarted, again, expected=10)
    assert all(name.startswith(kept.workflow_id) for name in ran)
    assert restarted.get_workflow(kept.workflow_id).record.state == "COMPLETED"
    _, status = restarted.get_pool("p")
    assert (status.queued, status.backlog, status.running) == (0, 0, 0)
    await restarted.stop()
