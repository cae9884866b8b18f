"""A retry that could not start is not promised (engine in process over real LMDB, no server).

common.proto RetryPolicy: a failure is not retried "when a retry could not
start before the task's schedule_to_close_timeout or the workflow's budget
runs out". The engine compared only the failure's time (not the retry's)
with the schedule-to-close deadline, and neither the workflow's max_duration
nor its max_attempts budget: FailTask answered will_retry, the retry never
ran, and the task's own failure was replaced by a timeout or budget failure
(or, with no worker polling, the workflow stayed RUNNING). Now the task
fails with its own failure, and will_retry is false.
"""

from __future__ import annotations

import asyncio

from are_core.scheduler import Budget, Failure, RetryPolicy, Scheduler, TaskSpec, WorkflowSpec
from are_core.storage import GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker

_HANG_GUARD_S = 10.0
_SLOW = RetryPolicy(initial_interval_s=30.0, backoff_coefficient=1.0, maximum_attempts=3)
_TEN = RetryPolicy(initial_interval_s=0.01, maximum_attempts=10)


async def _assigned(worker: FakeWorker, n: int) -> None:
    """Waits until ``worker`` was handed ``n`` attempts."""
    async with asyncio.timeout(_HANG_GUARD_S):
        while len(worker.assignments) < n:
            await asyncio.sleep(0.005)


async def _fail(engine: Scheduler, workflow_id: str, attempt: int) -> tuple[bool, str]:
    """Fails attempt ``attempt`` of task ``a`` with an application failure; (will_retry, task state)."""
    will_retry, _, state, durable = engine.fail(
        workflow_id,
        "a",
        attempt,
        failure=Failure(message=f"own failure {attempt}", type="AppErr"),
        usage=None,
    )
    await durable
    return will_retry, state


def _assert_failed_with_its_own_failure(engine: Scheduler, workflow_id: str, attempt: int) -> None:
    task = engine.get_task(workflow_id, "a").record
    assert task.state == "FAILED"
    assert task.failure is not None
    assert (task.failure.type, task.failure.message) == ("AppErr", f"own failure {attempt}")
    assert task.state_reason.startswith("not retried, ")
    workflow = engine.get_workflow(workflow_id).record
    assert workflow.state == "FAILED"
    assert workflow.failure is not None
    assert workflow.failure.type == "TASK_FAILED"
    assert workflow.failure.message == f"task 'a' ended FAILED: own failure {attempt}"


async def test_a_retry_after_the_schedule_to_close_deadline_is_not_promised(engine: Scheduler) -> None:
    spec = TaskSpec(task_id="a", capability="cap", retry_policy=_SLOW, schedule_to_close_s=60.0)
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec,)))
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _assigned(worker, 1)
    will_retry, _, state, durable = engine.fail(
        record.workflow_id,
        "a",
        1,
        failure=Failure(message="own failure 1", type="AppErr"),
        usage=None,
        retry_after_s=120.0,  # the worker's ask: past the task's 60 s schedule_to_close_timeout
    )
    await durable
    assert (will_retry, state) == (False, "FAILED")
    _assert_failed_with_its_own_failure(engine, record.workflow_id, 1)


async def test_a_retry_after_the_workflow_deadline_is_not_promised(engine: Scheduler) -> None:
    spec = TaskSpec(task_id="a", capability="cap", retry_policy=_SLOW)
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec,), budget=Budget(max_duration_s=60.0)))
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _assigned(worker, 1)
    will_retry, _, state, durable = engine.fail(
        record.workflow_id,
        "a",
        1,
        failure=Failure(message="own failure 1", type="AppErr"),
        usage=None,
        retry_after_s=120.0,  # past the workflow's 60 s max_duration
    )
    await durable
    assert (will_retry, state) == (False, "FAILED")
    _assert_failed_with_its_own_failure(engine, record.workflow_id, 1)


async def test_a_retry_within_both_deadlines_is_still_promised(engine: Scheduler) -> None:
    spec = TaskSpec(task_id="a", capability="cap", retry_policy=_SLOW, schedule_to_close_s=3600.0)
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec,), budget=Budget(max_duration_s=3600.0)))
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _assigned(worker, 1)
    will_retry, _, state, durable = engine.fail(
        record.workflow_id, "a", 1, failure=Failure(message="x"), usage=None, retry_after_s=60.0
    )
    await durable
    assert (will_retry, state) == (True, "BACKING_OFF")
    await engine.cancel(record.workflow_id, "done", "test")


async def test_a_retry_past_the_max_attempts_budget_is_not_promised(engine: Scheduler) -> None:
    spec = TaskSpec(task_id="a", capability="cap", retry_policy=_TEN)
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec,), budget=Budget(max_attempts=3)))
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    for attempt in (1, 2):
        await _assigned(worker, attempt)
        assert await _fail(engine, record.workflow_id, attempt) == (True, "BACKING_OFF")
    await _assigned(worker, 3)
    # The third attempt spent the budget: a fourth could never start.
    assert await _fail(engine, record.workflow_id, 3) == (False, "FAILED")
    _assert_failed_with_its_own_failure(engine, record.workflow_id, 3)
    assert "max_attempts budget of 3" in engine.get_task(record.workflow_id, "a").record.state_reason
    assert engine.get_workflow(record.workflow_id).record.task_attempts == 3


async def test_an_attempt_lost_to_a_restart_leaves_the_budget_room_for_a_retry(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    storage, committer = opened
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    await engine.start()
    spec = TaskSpec(task_id="a", capability="cap", retry_policy=_TEN)
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec,), budget=Budget(max_attempts=2)))
    first = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, first.assign, first.cancel)
    await _assigned(first, 1)
    await engine.stop()  # attempt 1 is lost to the restart: not charged to the budget

    restarted = Scheduler(storage, committer, rng=lambda: 0.0)
    await restarted.start()
    second = FakeWorker()
    restarted.connect_worker("w", ["cap"], 1, second.assign, second.cancel)
    await _assigned(second, 1)
    assert await _fail(restarted, record.workflow_id, 2) == (True, "BACKING_OFF")  # 1 of 2 charged
    await _assigned(second, 2)
    assert await _fail(restarted, record.workflow_id, 3) == (False, "FAILED")  # 2 of 2 charged
    _assert_failed_with_its_own_failure(restarted, record.workflow_id, 3)
    await restarted.stop()
