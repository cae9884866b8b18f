"""What a long-running engine keeps is bounded by what is live, not by how much went by (engine, no server).

A review for slow leaks found three, each of which grew with every task for
as long as the sidecar ran:

- the LLM tokens a pool used were noted per task and forgotten only when
  someone read the pool (GetPool);
- a task cancelled (or timed out) while queued left its entry behind a task
  that no worker takes, or behind a steady stream of higher priority: only a
  pop drops stale entries, and it stops at the first live task. Each entry
  held its task and its whole closed workflow. Likewise in a pool's backlog;
- the timer heap swept its stale timers only once it doubled (16,384 at
  least): each holds its closed workflow, so thousands stayed in memory past
  the recently closed workflows' bounds.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from are_core.scheduler import TABLES, PoolLimits, Scheduler, WorkflowSpec
from are_core.scheduler import _engine as engine_module
from are_core.scheduler._model import Usage
from are_core.storage import Durability, GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec

_SECOND = 10**9


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * _SECOND

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def clocked(tmp_path: Path) -> AsyncIterator[tuple[Scheduler, _Clock]]:
    """A started scheduler on a settable clock."""
    storage = Storage.open(tmp_path / "data", tables=TABLES, durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    clock = _Clock()
    engine = Scheduler(storage, committer, rng=lambda: 0.0, clock=clock)
    await engine.start()
    yield engine, clock
    await engine.stop()
    await committer.aclose()
    storage.close()


async def test_the_tokens_a_pool_used_are_forgotten_after_a_minute_unread(
    clocked: tuple[Scheduler, _Clock],
) -> None:
    engine, clock = clocked
    worker = FakeWorker()
    engine.connect_worker("w", ["llm"], 1, worker.assign, worker.cancel)
    for _ in range(120):  # a task a second, each noted twice (its estimate, then its correction)
        await engine.submit(WorkflowSpec(tasks=(spec("t", capability="llm", estimated_tokens=500),)))
        await settle(engine)
        x = worker.assignments.pop()
        engine.complete(
            x.workflow_id,
            x.task_id,
            x.attempt,
            output=b"",
            content_type="",
            usage=Usage(input_tokens=400, output_tokens=300),
        )
        await settle(engine)
        clock.now += _SECOND
    pool = engine._pools["default"]
    assert len(pool.llm_used) <= 2 * 61  # nobody read the pool meanwhile
    _, status = engine.get_pool("default")
    assert status.llm_tokens_last_minute == 60 * 700  # the last 60 tasks' 700 tokens each


@pytest.fixture
def small_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounds small enough that a few hundred workflows pass them (the rule is the same)."""
    monkeypatch.setattr(engine_module, "_STALE_SLACK", 16)
    monkeypatch.setattr(engine_module, "_RECENT_CLOSED", 32)


@pytest.mark.usefixtures("small_bounds")
async def test_tasks_cancelled_behind_one_no_worker_takes_leave_no_entries(engine: Scheduler) -> None:
    stuck, _ = await engine.submit(WorkflowSpec(tasks=(spec("t", capability="orphan"),)))
    for _ in range(300):
        record, _ = await engine.submit(WorkflowSpec(tasks=(spec("t", capability="orphan"),)))
        await engine.cancel(record.workflow_id, "test", "tests")
    await settle(engine)
    queue = engine._queues["orphan"]["default"]
    assert queue.waiting == 1
    assert queue.size <= 2 + engine_module._STALE_SLACK
    assert engine.get_workflow(stuck.workflow_id).record.state == "RUNNING"


@pytest.mark.usefixtures("small_bounds")
async def test_tasks_cancelled_in_a_backlog_behind_one_that_stays_leave_no_entries(engine: Scheduler) -> None:
    await engine.put_pool(PoolLimits(name="small", max_queue_length=1))
    gate = FakeWorker()
    engine.connect_worker("gate", ["gate"], 1, gate.assign, gate.cancel)

    async def backlogged() -> str:
        """A workflow whose task, released by its gate, waits in the full pool's backlog."""
        record, _ = await engine.submit(
            WorkflowSpec(
                tasks=(spec("gate", capability="gate"), spec("t", "gate", capability="orphan", pool="small"))
            )
        )
        await settle(engine)
        x = gate.assignments.pop()
        engine.complete(x.workflow_id, x.task_id, x.attempt, output=b"", content_type="", usage=None)
        await settle(engine)
        return record.workflow_id

    await engine.submit(WorkflowSpec(tasks=(spec("first", capability="orphan", pool="small"),)))  # queued
    await backlogged()  # stays
    for _ in range(300):
        await engine.cancel(await backlogged(), "test", "tests")
    await settle(engine)
    pool = engine._pools["small"]
    assert (pool.queued, pool.backlogged) == (1, 1)
    assert pool.backlog.size <= 2 + engine_module._STALE_SLACK


@pytest.mark.usefixtures("small_bounds")
async def test_closed_workflows_past_the_recent_ones_are_not_held_by_stale_timers(engine: Scheduler) -> None:
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    for _ in range(300):  # each with a deadline timer, and a schedule-to-start one
        await engine.submit(WorkflowSpec(tasks=(spec("t", capability="cap", schedule_to_start_s=60.0),)))
        await settle(engine)
        x = worker.assignments.pop()
        engine.complete(x.workflow_id, x.task_id, x.attempt, output=b"", content_type="", usage=None)
        await settle(engine)
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is engine_module._Workflow]
    assert len(engine._recent) == engine_module._RECENT_CLOSED
    assert len(alive) <= 2 * engine_module._RECENT_CLOSED
