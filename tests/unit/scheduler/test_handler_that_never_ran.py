"""A failure is handled only by a handler that ran (engine in process over real LMDB, no server).

workflow.proto WORKFLOW_STATE_COMPLETED: "every failed or rejected task was
handled, that is, it has a dependent with trigger rule ALL_DONE, ONE_FAILED
or ONE_SUCCESS that ran." A handler that FAILED without an attempt (its
schedule-to-start or schedule-to-close timeout fired while it waited for a
worker) counted as one that ran, and the workflow COMPLETED over a failure
nothing handled.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from are_core.scheduler import Failure, Scheduler, TaskSpec, WorkflowSpec
from tests.unit.scheduler.test_engine import FakeWorker

_HANG_GUARD_S = 10.0


async def _closed(engine: Scheduler, workflow_id: str) -> str:
    async with asyncio.timeout(_HANG_GUARD_S):
        while (state := engine.get_workflow(workflow_id).record.state) == "RUNNING":
            await asyncio.sleep(0.005)
    return state


async def _next_attempt(worker: FakeWorker, n: int) -> tuple[str, int]:
    """Waits for the ``n``-th assignment of ``worker``; its (task id, attempt)."""
    async with asyncio.timeout(_HANG_GUARD_S):
        while len(worker.assignments) < n:
            await asyncio.sleep(0.005)
    got = worker.assignments[n - 1]
    return got.task_id, got.attempt


async def _fail(engine: Scheduler, workflow_id: str, task_id: str) -> None:
    failure = Failure(message=f"{task_id} broke", non_retryable=True)
    *_, durable = engine.fail(workflow_id, task_id, 1, failure=failure, usage=None)
    await durable


@pytest.mark.parametrize("timeout", ["schedule_to_start_s", "schedule_to_close_s"])
async def test_a_handler_that_timed_out_waiting_for_a_worker_handles_nothing(
    engine: Scheduler, timeout: str
) -> None:
    handler = TaskSpec(task_id="h1", capability="nobody", depends_on=("a",), trigger_rule="ONE_FAILED")
    handler = msgspec.structs.replace(handler, **{timeout: 0.2})  # its wait for a worker is short
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                TaskSpec(task_id="a", capability="cap"),
                handler,
                TaskSpec(task_id="h2", capability="cap", depends_on=("h1",), trigger_rule="ONE_FAILED"),
            )
        )
    )
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    assert await _next_attempt(worker, 1) == ("a", 1)
    await _fail(engine, record.workflow_id, "a")
    assert await _next_attempt(worker, 2) == ("h2", 1)  # h1 timed out unstarted; h2 handles that
    await engine.complete(record.workflow_id, "h2", 1, output=b"{}", content_type="", usage=None)
    assert await _closed(engine, record.workflow_id) == "FAILED"
    h1 = engine.get_task(record.workflow_id, "h1").record
    assert (h1.state, h1.attempt) == ("FAILED", 0)
    failure = engine.get_workflow(record.workflow_id).record.failure
    assert failure is not None
    assert failure.message == "task 'a' ended FAILED: a broke"  # a's failure: no handler of it ran


async def test_a_handler_that_ran_and_failed_still_handles_in_a_fork_that_keeps_it(engine: Scheduler) -> None:
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                TaskSpec(task_id="a", capability="cap"),
                TaskSpec(task_id="h", capability="cap", depends_on=("a",), trigger_rule="ONE_FAILED"),
                TaskSpec(task_id="h2", capability="cap", depends_on=("h",), trigger_rule="ONE_FAILED"),
            )
        )
    )
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    assert await _next_attempt(worker, 1) == ("a", 1)
    await _fail(engine, record.workflow_id, "a")
    assert await _next_attempt(worker, 2) == ("h", 1)
    await _fail(engine, record.workflow_id, "h")  # h ran: it handled a, though it failed itself
    assert await _next_attempt(worker, 3) == ("h2", 1)
    await engine.complete(record.workflow_id, "h2", 1, output=b"{}", content_type="", usage=None)
    assert await _closed(engine, record.workflow_id) == "COMPLETED"

    # A fork keeping every outcome closes as its source did: the kept h still ran.
    fork = await engine.fork(record.workflow_id, "forked", cutoff_ns=time.time_ns())
    assert await _closed(engine, fork.workflow_id) == "COMPLETED"
