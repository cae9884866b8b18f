"""The scheduler engine without a server: graph checks, conditions, readiness, retries, recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from are_core.scheduler import (
    TABLES,
    Assignment,
    Budget,
    Cancellation,
    Condition,
    Failure,
    PoolLimits,
    RetryPolicy,
    Scheduler,
    SpecError,
    TaskAlreadyCompletedError,
    TaskNotHeldError,
    TaskSpec,
    WorkflowSpec,
    evaluate,
    find_cycle,
    resolve_pointer,
    validate_graph,
)
from are_core.storage import Durability, GroupCommitter, Storage


def spec(task_id: str, *deps: str, capability: str = "cap", **fields: object) -> TaskSpec:
    # fields are TaskSpec's own keywords, passed through from each test untyped.
    return TaskSpec(task_id=task_id, capability=capability, depends_on=deps, **fields)  # type: ignore[arg-type]


# ----------------------------------------------------------------- graph checks


def test_validate_graph_names_the_exact_field() -> None:
    with pytest.raises(SpecError) as dup:
        validate_graph([spec("a"), spec("b"), spec("a")])
    assert (dup.value.reason, dup.value.field) == ("DUPLICATE_TASK_ID", "spec.tasks[2].task_id")
    with pytest.raises(SpecError) as unknown:
        validate_graph([spec("a"), spec("b", "a", "x")], field="tasks")
    assert (unknown.value.reason, unknown.value.field) == ("UNKNOWN_DEPENDENCY", "tasks[1].depends_on[1]")
    validate_graph(
        [spec("b", "a")], field="tasks", existing={"a"}
    )  # spawned tasks may depend on existing ones


def test_cycles_are_found_and_named() -> None:
    tasks = [spec("a", "c"), spec("b", "a"), spec("c", "b"), spec("d", "a")]
    cycle = find_cycle(tasks)
    assert sorted(cycle) == ["a", "b", "c"]
    with pytest.raises(SpecError) as caught:
        validate_graph(tasks)
    assert caught.value.reason == "DAG_CYCLE"
    assert " -> " in caught.value.message
    assert find_cycle([spec("a"), spec("b", "a"), spec("c", "a", "b")]) == []


def test_a_long_chain_does_not_recurse() -> None:
    tasks = [spec("t0")] + [spec(f"t{i}", f"t{i - 1}") for i in range(1, 20_000)]
    assert find_cycle(tasks) == []


# ------------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    ("pointer", "operator", "value", "expected"),
    [
        ("/score", "GREATER_THAN", 0.5, True),
        ("/score", "LESS_THAN_OR_EQUAL", 0.5, False),
        ("/score", "EQUAL", 0.9, True),
        ("/name", "EQUAL", "x", True),
        ("/name", "GREATER_THAN", 1, False),  # different types never order
        ("/tags", "CONTAINS", "b", True),
        ("/name", "CONTAINS", "x", True),
        ("/name", "IN", ["x", "y"], True),
        ("/missing", "EXISTS", None, False),
        ("/missing", "NOT_EXISTS", None, True),
        ("/missing", "NOT_EQUAL", 1, True),
        ("/missing", "EQUAL", 1, False),
        ("/tags/1", "EQUAL", "b", True),
        ("/a~1b", "TRUTHY", None, True),
        ("/zero", "TRUTHY", None, False),
        ("", "EXISTS", None, True),
    ],
)
def test_conditions_compare_json_values(pointer: str, operator: str, value: object, expected: bool) -> None:
    output = b'{"score": 0.9, "name": "x", "tags": ["a", "b"], "a/b": 1, "zero": 0}'
    assert (
        evaluate(Condition(task_id="t", pointer=pointer, operator=operator, value=value), output) is expected
    )


def test_a_non_json_output_fails_every_condition_but_the_negative_ones() -> None:
    assert not evaluate(Condition(task_id="t", pointer="", operator="EXISTS"), b"not json")
    assert evaluate(Condition(task_id="t", pointer="", operator="NOT_EXISTS"), b"not json")
    assert resolve_pointer({"a": [1, 2]}, "/a/01") is not None  # a private "missing" marker, never 2


def test_the_retry_delay_bound_grows_and_is_capped() -> None:
    policy = RetryPolicy(initial_interval_s=1.0, backoff_coefficient=2.0, maximum_interval_s=5.0)
    assert [policy.delay_bound_s(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


# ------------------------------------------------------------------- the engine


class FakeWorker:
    """Collects what the engine hands a worker."""

    def __init__(self) -> None:
        self.assignments: list[Assignment] = []
        self.cancellations: list[Cancellation] = []

    def assign(self, batch: list[Assignment]) -> None:
        self.assignments.extend(batch)

    def cancel(self, batch: list[Cancellation]) -> None:
        self.cancellations.extend(batch)


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[Path, Storage, GroupCommitter]]:
    storage = Storage.open(tmp_path / "data", tables=TABLES, durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    yield tmp_path / "data", storage, committer
    await committer.aclose()
    storage.close()


def _busy(engine: Scheduler) -> bool:
    """Whether ``engine`` has a change not yet committed and delivered, or a re-route pass under way."""
    return bool(
        engine._txn is not None
        or engine._pending_commits
        or engine._reroute_job is not None
        or engine._reroute_pending
    )


async def settle(engine: Scheduler) -> None:
    """Lets the loop run a few turns, then waits until ``engine`` has committed and delivered its changes.

    Assignments, cancellations and events go out after their commit, which the writer
    thread makes: on a loaded machine it can outlast any fixed pause. Idle twice, a loop
    turn apart, so that what a delivery scheduled has run too. Bounded: an engine that
    never comes to rest fails the test instead of hanging it.
    """
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    async with asyncio.timeout(30):
        for _ in range(2):
            while _busy(engine):
                await asyncio.sleep(0.005)
            await asyncio.sleep(0)


async def test_readiness_is_incremental_and_outputs_flow_downstream(
    opened: tuple[Path, Storage, GroupCommitter],
) -> None:
    _, storage, committer = opened
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    await engine.start()
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(spec("a", input=b"1"), spec("b", "a"), spec("c", "a"), spec("d", "b", "c")))
    )
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 10, worker.assign, worker.cancel)
    await settle(engine)
    assert [a.task_id for a in worker.assignments] == ["a"]
    await engine.complete(
        record.workflow_id, "a", 1, output=b'"A"', content_type="application/json", usage=None
    )
    await settle(engine)
    assert sorted(a.task_id for a in worker.assignments[1:]) == ["b", "c"]
    b = next(a for a in worker.assignments if a.task_id == "b")
    assert b.dependencies[0].output == b'"A"'
    with pytest.raises(TaskAlreadyCompletedError):
        engine.complete(record.workflow_id, "a", 1, output=b"", content_type="", usage=None)
    with pytest.raises(TaskNotHeldError):
        engine.complete(record.workflow_id, "d", 1, output=b"", content_type="", usage=None)
    for task_id in ("b", "c"):
        await engine.complete(record.workflow_id, task_id, 1, output=b"1", content_type="", usage=None)
    await settle(engine)
    await engine.complete(record.workflow_id, "d", 1, output=b'"D"', content_type="", usage=None)
    view = engine.get_workflow(record.workflow_id)
    assert view.record.state == "COMPLETED"
    assert view.result == b'"D"'
    await engine.stop()


async def test_a_failed_attempt_backs_off_with_full_jitter_and_retries(
    opened: tuple[Path, Storage, GroupCommitter],
) -> None:
    _, storage, committer = opened
    engine = Scheduler(storage, committer, rng=lambda: 0.5)
    await engine.start()
    policy = RetryPolicy(initial_interval_s=0.02, maximum_attempts=2)
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec("a", retry_policy=policy),)))
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 10, worker.assign, worker.cancel)
    await settle(engine)
    failed_at = time.time_ns()  # the engine's clock; read before the failure
    will_retry, next_ns, state, durable = engine.fail(
        record.workflow_id, "a", 1, failure=Failure(message="x"), usage=None
    )
    # Half of the 20 ms bound, chosen by the jitter. (Not against the task's
    # start read later: a commit slower than the backoff lets attempt 2 start.)
    assert next_ns - failed_at >= 0.01 * 1e9
    await durable
    assert (will_retry, state) == (True, "BACKING_OFF")
    async with asyncio.timeout(5):
        while len(worker.assignments) < 2:
            await asyncio.sleep(0.005)
    assert worker.assignments[1].attempt == 2
    assert worker.assignments[1].last_failure is not None
    will_retry, _, state, durable = engine.fail(
        record.workflow_id, "a", 2, failure=Failure(message="y"), usage=None
    )
    await durable
    assert (will_retry, state) == (False, "FAILED")
    assert engine.get_workflow(record.workflow_id).record.state == "FAILED"
    await engine.stop()


async def test_a_restart_redispatches_running_tasks_with_the_next_attempt(
    opened: tuple[Path, Storage, GroupCommitter],
) -> None:
    _, storage, committer = opened
    engine = Scheduler(storage, committer)
    await engine.start()
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(spec("a", retry_policy=RetryPolicy(maximum_attempts=1)), spec("b", "a")))
    )
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 10, worker.assign, worker.cancel)
    await settle(engine)
    assert worker.assignments[0].attempt == 1
    await engine.stop()

    restarted = Scheduler(storage, committer)
    await restarted.start()
    again = FakeWorker()
    restarted.connect_worker("w", ["cap"], 10, again.assign, again.cancel)
    await settle(restarted)
    (redispatched,) = again.assignments
    assert redispatched.attempt == 2
    assert redispatched.idempotency_key == worker.assignments[0].idempotency_key
    assert redispatched.maximum_attempts == 2  # the lost attempt is not charged to the policy
    with pytest.raises(TaskNotHeldError):
        restarted.complete(record.workflow_id, "a", 1, output=b"", content_type="", usage=None)
    await restarted.complete(record.workflow_id, "a", 2, output=b"1", content_type="", usage=None)
    await settle(restarted)
    assert [a.task_id for a in again.assignments] == ["a", "b"]
    await restarted.stop()


async def test_a_schedule_to_start_timeout_still_fires_after_a_restart(
    opened: tuple[Path, Storage, GroupCommitter],
) -> None:
    """Defect: recovery queued SCHEDULED tasks again without their schedule-to-start timer,
    so with no worker they waited forever. The deadline counts from the original scheduling."""
    _, storage, committer = opened
    engine = Scheduler(storage, committer)
    await engine.start()
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec("a", schedule_to_start_s=0.3),)))
    await engine.stop()
    restarted = Scheduler(storage, committer)
    await restarted.start()
    async with asyncio.timeout(10):
        while restarted.get_task(record.workflow_id, "a").record.state != "FAILED":
            await asyncio.sleep(0.01)
    failure = restarted.get_task(record.workflow_id, "a").record.failure
    assert failure is not None and failure.timeout_type == "SCHEDULE_TO_START"
    assert restarted.get_pool("default")[1].queued == 0
    await restarted.stop()


async def test_a_rate_limited_pool_never_dispatches_past_its_bucket(
    opened: tuple[Path, Storage, GroupCommitter],
) -> None:
    _, storage, committer = opened
    engine = Scheduler(storage, committer)
    await engine.start()
    await engine.put_pool(PoolLimits(name="slow", requests_per_second=50.0, burst=3))
    await engine.submit(WorkflowSpec(tasks=tuple(spec(f"t{i}", pool="slow") for i in range(10))))
    worker = FakeWorker()
    batches: list[int] = []

    def assign(batch: list[Assignment]) -> None:
        batches.append(len(batch))
        worker.assign(batch)

    engine.connect_worker("w", ["cap"], 100, assign, worker.cancel)
    async with asyncio.timeout(10):  # a fixed pause could end before the commit, or after the next token
        while not batches:
            await asyncio.sleep(0.005)
    assert batches[0] == 3  # the burst, at once: one commit holds it, and no more
    async with asyncio.timeout(5):
        while len(worker.assignments) < 10:
            await asyncio.sleep(0.005)
    _, status = engine.get_pool("slow")
    assert status.dispatched_total == 10
    await engine.stop()


async def test_a_budget_on_attempts_fails_the_workflow(opened: tuple[Path, Storage, GroupCommitter]) -> None:
    _, storage, committer = opened
    engine = Scheduler(storage, committer)
    await engine.start()
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(spec("a"), spec("b"), spec("c")), budget=Budget(max_tasks=3, max_attempts=2))
    )
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 10, worker.assign, worker.cancel)
    await settle(engine)
    view = engine.get_workflow(record.workflow_id)
    assert view.record.state == "FAILED"
    assert view.record.failure is not None and view.record.failure.kind == "BUDGET_EXCEEDED"
    assert worker.cancellations
    await engine.stop()


async def test_stale_timers_are_swept_so_the_heap_stays_bounded(
    opened: tuple[Path, Storage, GroupCommitter],
) -> None:
    _, storage, committer = opened
    engine = Scheduler(storage, committer)
    await engine.start()

    def complete_all(batch: list[Assignment]) -> None:
        for a in batch:
            engine.complete(a.workflow_id, a.task_id, a.attempt, output=b"", content_type="", usage=None)

    engine.connect_worker("w", ["cap"], 10_000, complete_all, lambda _: None)
    n = 20_000  # every dispatch arms a start-to-close timer that its completion makes stale
    record, _ = await engine.submit(
        WorkflowSpec(tasks=tuple(spec(f"t{i}") for i in range(n)), budget=Budget(max_tasks=n))
    )
    async with asyncio.timeout(60):
        while engine.get_workflow(record.workflow_id).record.state == "RUNNING":
            await asyncio.sleep(0.01)
    assert engine.counters()["timers"] < n
    await engine.stop()


async def test_retries_count_attempts_started_after_a_failure(
    opened: tuple[Path, Storage, GroupCommitter],
) -> None:
    """A retry cancelled in its backoff never ran, and a restart's redelivery is no retry."""
    _, storage, committer = opened
    engine = Scheduler(storage, committer, rng=lambda: 1.0)
    await engine.start()
    slow = RetryPolicy(initial_interval_s=3600, maximum_interval_s=3600, maximum_attempts=3)
    fast = RetryPolicy(initial_interval_s=0.001, maximum_attempts=3)
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(spec("a", retry_policy=slow), spec("b", capability="other", retry_policy=fast)))
    )
    worker = FakeWorker()
    engine.connect_worker("w", ["cap", "other"], 10, worker.assign, worker.cancel)
    await settle(engine)
    *_, durable = engine.fail(record.workflow_id, "a", 1, failure=Failure(message="x"), usage=None)
    await durable
    assert engine.get_task(record.workflow_id, "a").record.state == "BACKING_OFF"
    assert engine.get_workflow(record.workflow_id).record.retries == 0  # scheduled, not started
    *_, durable = engine.fail(record.workflow_id, "b", 1, failure=Failure(message="y"), usage=None)
    await durable
    async with asyncio.timeout(5):
        while len([a for a in worker.assignments if a.task_id == "b"]) < 2:
            await asyncio.sleep(0.005)
    assert engine.get_workflow(record.workflow_id).record.retries == 1  # b's second attempt started
    await engine.stop()

    restarted = Scheduler(storage, committer)  # b's running attempt is lost: run again, not retried
    await restarted.start()
    again = FakeWorker()
    restarted.connect_worker("w", ["cap", "other"], 10, again.assign, again.cancel)
    await settle(restarted)
    assert [a.attempt for a in again.assignments if a.task_id == "b"] == [3]
    assert restarted.get_workflow(record.workflow_id).record.retries == 1
    await restarted.cancel(record.workflow_id, "done", "test")
    view = restarted.get_workflow(record.workflow_id)
    assert (view.record.state, view.record.retries, view.record.task_attempts) == ("CANCELLED", 1, 4)
    await restarted.stop()
