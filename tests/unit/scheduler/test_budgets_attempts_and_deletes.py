"""Defects a review of the engine found (engine in process over real LMDB, no server).

- Attempts lost through no fault of their worker (a restart, a poll answer
  that did not arrive) are not charged to the retry policy, but counted
  against the workflow's ``max_attempts`` budget: one restart failed a
  workflow whose budget was 1.
- The attempt that passed ``max_attempts`` was still handed to a worker
  (then cancelled in the same delivery): an agent had started on it.
- ``tasks_failed`` left out REJECTED and CANCELLED tasks (common.proto
  counts them).
- A delete racing a submit of the same workflow id deleted the new
  workflow's rows (its workflow row went first, its tasks in later
  batches); after a restart it closed COMPLETED having run nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from are_core.scheduler import (
    Budget,
    Condition,
    Failure,
    RetryPolicy,
    Scheduler,
    TaskSpec,
    Usage,
    WorkflowExistsError,
    WorkflowSpec,
)
from are_core.storage import GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker

_HANG_GUARD_S = 10.0


def _spec(task_id: str, capability: str = "cap", **fields: object) -> TaskSpec:
    return TaskSpec(task_id=task_id, capability=capability, **fields)  # type: ignore[arg-type]


async def _until(condition: object) -> None:
    async with asyncio.timeout(_HANG_GUARD_S):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_an_attempt_lost_to_a_restart_is_not_counted_against_max_attempts(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    storage, committer = opened
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    await engine.start()
    record, _ = await engine.submit(WorkflowSpec(tasks=(_spec("a"),), budget=Budget(max_attempts=1)))
    first = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, first.assign, first.cancel)
    await _until(lambda: first.assignments)
    await engine.stop()  # a restart while attempt 1 runs: it is lost, not charged

    restarted = Scheduler(storage, committer, rng=lambda: 0.0)
    await restarted.start()
    second = FakeWorker()
    restarted.connect_worker("w", ["cap"], 1, second.assign, second.cancel)
    await _until(lambda: second.assignments)
    assert [(a.task_id, a.attempt) for a in second.assignments] == [("a", 2)]
    assert second.cancellations == []
    await restarted.complete(record.workflow_id, "a", 2, output=b"1", content_type="", usage=None)
    assert restarted.get_workflow(record.workflow_id).record.state == "COMPLETED"
    await restarted.stop()


async def test_a_poll_answer_handed_back_is_not_counted_against_max_attempts(engine: Scheduler) -> None:
    record, _ = await engine.submit(WorkflowSpec(tasks=(_spec("c"),), budget=Budget(max_attempts=1)))
    worker_id, got = await engine.poll("poller", ["cap"], 1, 2.0)
    engine.hand_back_undelivered(worker_id, [(a.workflow_id, a.task_id, a.attempt) for a in got])
    _, again = await engine.poll("poller", ["cap"], 1, 2.0)
    assert [(a.task_id, a.attempt) for a in again] == [("c", 2)]
    assert engine.get_workflow(record.workflow_id).record.state == "RUNNING"


async def test_the_attempt_over_max_attempts_never_reaches_a_worker(engine: Scheduler) -> None:
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(_spec("p"), _spec("q")), budget=Budget(max_attempts=1))
    )
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 2, worker.assign, worker.cancel)
    await _until(lambda: worker.cancellations)  # delivered once committed, after the assignments
    assert [a.task_id for a in worker.assignments] == ["p"]  # q would have been attempt 2 of 1
    assert [(c.task_id, c.reason) for c in worker.cancellations] == [("p", "BUDGET_EXCEEDED")]
    view = engine.get_workflow(record.workflow_id).record
    assert view.failure is not None
    assert view.failure.message == "budget max_attempts exceeded: 2 > 1"
    assert view.task_attempts == 1


async def test_rejected_and_cancelled_tasks_count_as_failed(engine: Scheduler) -> None:
    gated, _ = await engine.submit(WorkflowSpec(tasks=(_spec("gate", requires_approval=True),)))
    await _until(lambda: engine.get_workflow(gated.workflow_id).record.counts.get("AWAITING_APPROVAL"))
    await engine.resolve_approval(gated.workflow_id, "gate", approve=False, approver="bob", comment="no")
    assert engine.get_workflow(gated.workflow_id).record.tasks_failed == 1

    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    cancelled, _ = await engine.submit(WorkflowSpec(tasks=(_spec("a"), _spec("b", depends_on=("a",)))))
    await _until(lambda: worker.assignments)
    await engine.cancel(cancelled.workflow_id, "stop", "me")
    view = engine.get_workflow(cancelled.workflow_id).record
    assert view.counts.get("CANCELLED") == 2
    assert view.tasks_failed == 2


async def test_a_submit_racing_a_delete_of_its_id_is_refused_and_the_delete_leaves_nothing(
    opened: tuple[Storage, GroupCommitter], tmp_path: Path
) -> None:
    storage, committer = opened
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    await engine.start()
    tasks = tuple(_spec(f"t{i}", capability="none") for i in range(12_000))  # several delete batches
    await engine.submit(WorkflowSpec(workflow_id="dup", tasks=tasks, budget=Budget(max_tasks=20_000)))
    await engine.cancel("dup", "close it", "test")
    deleting = asyncio.ensure_future(engine.delete("dup"))
    await asyncio.sleep(0)
    refusals = 0
    while not deleting.done():  # bounded by the delete itself (a few batches)
        try:
            await engine.submit(WorkflowSpec(workflow_id="dup", tasks=(_spec("n1", capability="none"),)))
        except WorkflowExistsError:
            refusals += 1
            await asyncio.sleep(0.001)
        else:
            break
    assert await deleting > 0
    assert refusals > 0  # the id stayed taken while the delete ran
    new, _ = await engine.submit(WorkflowSpec(workflow_id="dup", tasks=(_spec("n1", capability="none"),)))
    assert new.workflow_id == "dup"
    await engine.stop()
    restarted = Scheduler(storage, committer, rng=lambda: 0.0)
    await restarted.start()
    view = restarted.get_workflow("dup")
    assert view.record.state == "RUNNING"
    assert view.record.task_count == 1
    tasks_after, _ = restarted.list_tasks("dup", frozenset(), 0, 100)
    assert [t.record.task_id for t in tasks_after] == ["n1"]
    await restarted.stop()


# -- schedule_to_close_timeout: from the first scheduling to the result, every attempt included.
# It was never enforced on its own (no timer), and the retry check counted it from the task's creation.


async def test_a_task_no_worker_takes_fails_at_its_schedule_to_close_timeout(engine: Scheduler) -> None:
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(_spec("a", capability="nobody", schedule_to_close_s=0.2),))
    )
    await _until(lambda: engine.get_workflow(record.workflow_id).record.state == "FAILED")
    failure = engine.get_task(record.workflow_id, "a").record.failure
    assert failure is not None
    assert (failure.kind, failure.timeout_type, failure.non_retryable) == (
        "TIMEOUT",
        "SCHEDULE_TO_CLOSE",
        True,
    )


async def test_an_attempt_running_past_schedule_to_close_is_stopped_and_not_retried(
    engine: Scheduler,
) -> None:
    policy = RetryPolicy(maximum_attempts=3)
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(_spec("b", schedule_to_close_s=0.2, start_to_close_s=60, retry_policy=policy),))
    )
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _until(lambda: worker.cancellations)
    assert [(c.task_id, c.attempt, c.reason) for c in worker.cancellations] == [("b", 1, "TIMED_OUT")]
    task = engine.get_task(record.workflow_id, "b").record
    assert task.state == "FAILED"
    assert task.attempt == 1
    assert engine.get_workflow(record.workflow_id).record.state == "FAILED"


async def test_schedule_to_close_counts_from_the_first_scheduling_not_the_creation(engine: Scheduler) -> None:
    policy = RetryPolicy(maximum_attempts=3, initial_interval_s=0.01)
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                _spec("u", capability="up"),
                _spec("d", depends_on=("u",), schedule_to_close_s=30, retry_policy=policy),
            )
        )
    )
    up = FakeWorker()
    engine.connect_worker("up", ["up"], 1, up.assign, up.cancel)
    await _until(lambda: up.assignments)
    # d was created now and waits for u: no time of its own is spent meanwhile. Created long
    # ago as far as its timeout goes: d's first scheduling is what counts.
    task = engine.get_task(record.workflow_id, "d")
    task.record.create_ns -= 60 * 10**9
    await engine.complete(record.workflow_id, "u", 1, output=b"1", content_type="", usage=None)
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _until(lambda: worker.assignments)
    will_retry, _, state, durable = engine.fail(
        record.workflow_id, "d", 1, failure=Failure(message="transient"), usage=None
    )
    await durable
    assert (will_retry, state) == (True, "BACKING_OFF")


async def test_schedule_to_close_still_fires_after_a_restart(opened: tuple[Storage, GroupCommitter]) -> None:
    storage, committer = opened
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    await engine.start()
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(_spec("a", capability="nobody", schedule_to_close_s=0.5),))
    )
    await engine.stop()
    restarted = Scheduler(storage, committer, rng=lambda: 0.0)
    await restarted.start()
    await _until(lambda: restarted.get_workflow(record.workflow_id).record.state == "FAILED")
    failure = restarted.get_task(record.workflow_id, "a").record.failure
    assert failure is not None
    assert failure.timeout_type == "SCHEDULE_TO_CLOSE"
    await restarted.stop()


async def test_a_failure_whose_cost_passes_the_budget_does_not_promise_a_retry(engine: Scheduler) -> None:
    # The retry was decided before the failure's usage was charged: the answer said will_retry
    # (with a next attempt time) for a task the charge had just cancelled with its workflow.
    policy = RetryPolicy(maximum_attempts=3, initial_interval_s=0.01)
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(_spec("a", retry_policy=policy),), budget=Budget(max_cost_micro_usd=100))
    )
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _until(lambda: worker.assignments)
    will_retry, next_ns, state, durable = engine.fail(
        record.workflow_id, "a", 1, failure=Failure(message="transient"), usage=Usage(cost_micro_usd=500)
    )
    await durable
    assert (will_retry, next_ns, state) == (False, 0, "CANCELLED")
    assert engine.get_workflow(record.workflow_id).record.state == "FAILED"


async def test_a_rule_met_early_waits_for_the_dependencies_its_conditions_name(engine: Scheduler) -> None:
    # ONE_SUCCESS on (fast, slow) with a condition on slow's output: when fast completed, the
    # condition was evaluated on slow, still running and without output, and the task was
    # SKIPPED for good; slow then returned {"ok": true}.
    condition = Condition(task_id="slow", pointer="/ok", operator="EQUAL", value=True)
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                _spec("fast"),
                _spec("slow"),
                _spec("j", depends_on=("fast", "slow"), trigger_rule="ONE_SUCCESS", conditions=(condition,)),
            )
        )
    )
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 3, worker.assign, worker.cancel)
    await _until(lambda: len(worker.assignments) == 2)
    await engine.complete(record.workflow_id, "fast", 1, output=b"{}", content_type="", usage=None)
    assert engine.get_task(record.workflow_id, "j").record.state == "PENDING"  # slow is running
    await engine.complete(record.workflow_id, "slow", 1, output=b'{"ok": true}', content_type="", usage=None)
    assert engine.get_task(record.workflow_id, "j").record.state in ("SCHEDULED", "RUNNING")
