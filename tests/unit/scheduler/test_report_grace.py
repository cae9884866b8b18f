"""Worker-reported events of an attempt that just ended (engine, no server).

event.proto (ReportedEvent): events are accepted while their attempt is held,
and for 5 minutes after it ended, whether or not its end closed the workflow,
so that what a worker reports just after its result is not lost. On the
stream (a worker id given) the attempt must be, or have been, that worker's.
``check_held`` used to refuse every event of an attempt no longer running with
TASK_NOT_HELD, against the contract. The engine runs on a fake clock: the
window passes without waiting, and nothing here measures time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from are_core.scheduler import (
    Failure,
    RetryPolicy,
    Scheduler,
    TaskNotFoundError,
    TaskNotHeldError,
    TaskSpec,
    WorkflowNotFoundError,
    WorkflowSpec,
)
from are_core.scheduler._engine import REPORT_GRACE_S
from are_core.storage import GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker, settle
from tests.unit.scheduler.test_reroute import Clock

ONE_NS = 1e-9  # seconds


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def engine(opened: tuple[Storage, GroupCommitter], clock: Clock) -> AsyncIterator[Scheduler]:
    storage, committer = opened
    scheduler = Scheduler(storage, committer, clock=clock, rng=lambda: 0.0)
    await scheduler.start()
    yield scheduler
    await scheduler.stop()


async def _held_by(engine: Scheduler, worker_id: str, *tasks: TaskSpec) -> tuple[FakeWorker, Any]:
    """Submits workflow "w" of ``tasks`` and lets worker ``worker_id`` take them; its handle too."""
    await engine.submit(WorkflowSpec(workflow_id="w", tasks=tasks))
    worker = FakeWorker()
    handle = engine.connect_worker(worker_id, ["cap"], 10, worker.assign, worker.cancel, worker_id=worker_id)
    await settle(engine)
    assert {(a.task_id, a.attempt) for a in worker.assignments} == {(t.task_id, 1) for t in tasks}
    return worker, handle


def _refused(engine: Scheduler, task_id: str, attempt: int, worker_id: str = "") -> None:
    with pytest.raises(TaskNotHeldError) as caught:
        engine.check_held("w", task_id, attempt, worker_id)
    assert (caught.value.metadata["task_id"], caught.value.metadata["attempt"]) == (task_id, str(attempt))


async def test_events_of_the_attempt_that_closed_its_workflow_are_accepted_for_five_minutes(
    engine: Scheduler, clock: Clock
) -> None:
    await _held_by(engine, "w1", TaskSpec(task_id="t", capability="cap"))
    await engine.complete("w", "t", 1, output=b"1", content_type="", usage=None)
    assert engine.get_workflow("w").record.state == "COMPLETED"
    engine.check_held("w", "t", 1, "w1")  # the worker that held it
    engine.check_held("w", "t", 1)  # a unary report (no worker named)
    clock.advance(REPORT_GRACE_S)
    engine.check_held("w", "t", 1, "w1")  # the window's last instant
    _refused(engine, "t", 1, "w2")  # never another worker's
    _refused(engine, "t", 2)  # nor an attempt that never ran
    clock.advance(ONE_NS)
    _refused(engine, "t", 1, "w1")
    _refused(engine, "t", 1)


async def test_events_of_a_failed_attempt_are_accepted_while_the_next_one_runs(
    engine: Scheduler, clock: Clock
) -> None:
    policy = RetryPolicy(initial_interval_s=1.0, maximum_attempts=3)
    worker, _ = await _held_by(engine, "w1", TaskSpec(task_id="t", capability="cap", retry_policy=policy))
    await engine.fail("w", "t", 1, failure=Failure(message="boom"), usage=None)[3]
    await settle(engine)  # no jitter: attempt 2 is dispatched at once
    assert [(a.task_id, a.attempt) for a in worker.assignments] == [("t", 1), ("t", 2)]
    clock.advance(REPORT_GRACE_S)
    engine.check_held("w", "t", 1, "w1")  # ended, within the window
    engine.check_held("w", "t", 2, "w1")  # held
    _refused(engine, "t", 2, "w2")  # held, by another worker
    _refused(engine, "t", 3, "w1")
    clock.advance(ONE_NS)
    _refused(engine, "t", 1, "w1")
    engine.check_held("w", "t", 2, "w1")  # a held attempt has no window


async def test_events_of_a_cancelled_attempt_are_accepted_for_five_minutes(
    engine: Scheduler, clock: Clock
) -> None:
    tasks = (TaskSpec(task_id="a", capability="cap"), TaskSpec(task_id="b", capability="cap"))
    await _held_by(engine, "w1", *tasks)
    await engine.cancel("w", "test", "")
    clock.advance(REPORT_GRACE_S)
    for task_id in ("a", "b"):
        engine.check_held("w", task_id, 1, "w1")
    clock.advance(ONE_NS)
    for task_id in ("a", "b"):
        _refused(engine, task_id, 1, "w1")


async def test_events_of_an_attempt_lost_with_its_worker_are_accepted_for_five_minutes(
    engine: Scheduler, clock: Clock
) -> None:
    policy = RetryPolicy(maximum_attempts=3)
    _, handle = await _held_by(engine, "w1", TaskSpec(task_id="t", capability="cap", retry_policy=policy))
    engine.disconnect_worker(handle)  # the lease ends; attempt 2 waits for a worker
    await settle(engine)
    assert engine.get_task("w", "t").record.state == "SCHEDULED"
    clock.advance(REPORT_GRACE_S)
    engine.check_held("w", "t", 1, "w1")
    _refused(engine, "t", 2, "w1")  # not dispatched yet
    clock.advance(ONE_NS)
    _refused(engine, "t", 1, "w1")


async def test_a_closed_workflow_read_back_after_a_restart_keeps_its_last_attempts_window(
    opened: tuple[Storage, GroupCommitter], clock: Clock
) -> None:
    """Nothing but the records survives a restart: a closed task's last attempt ended when it closed."""
    storage, committer = opened
    engine = Scheduler(storage, committer, clock=clock, rng=lambda: 0.0)
    await engine.start()
    await _held_by(engine, "w1", TaskSpec(task_id="t", capability="cap"))
    await engine.complete("w", "t", 1, output=b"1", content_type="", usage=None)
    await engine.stop()

    restarted = Scheduler(storage, committer, clock=clock, rng=lambda: 0.0)
    await restarted.start()
    try:
        clock.advance(REPORT_GRACE_S)
        restarted.check_held("w", "t", 1, "w1")
        restarted.check_held("w", "t", 1)
        _refused(restarted, "t", 1, "w2")
        _refused(restarted, "t", 2)
        with pytest.raises(TaskNotFoundError):
            restarted.check_held("w", "nope", 1)
        clock.advance(ONE_NS)
        _refused(restarted, "t", 1, "w1")
        # Past the grace of the workflow's close, no task is read back: every one is refused.
        _refused(restarted, "nope", 1)
        with pytest.raises(WorkflowNotFoundError):
            restarted.check_held("nope", "t", 1)
    finally:
        await restarted.stop()


async def test_a_deleted_workflow_takes_no_more_events(engine: Scheduler) -> None:
    await _held_by(engine, "w1", TaskSpec(task_id="t", capability="cap"))
    await engine.complete("w", "t", 1, output=b"1", content_type="", usage=None)
    engine.check_held("w", "t", 1, "w1")
    await engine.delete("w")
    with pytest.raises(WorkflowNotFoundError):
        engine.check_held("w", "t", 1, "w1")
