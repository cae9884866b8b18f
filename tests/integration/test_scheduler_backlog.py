"""A released fan-out waits in its workflow's backlog; the pool queue never exceeds max_queue_length."""

from __future__ import annotations

import asyncio
from typing import Any

from are_sdk import Client, ResourceExhaustedError
from are_sdk._proto.are.v1 import scheduler_service_pb2 as s
from are_sdk._proto.are.v1 import worker_service_pb2 as w
from are_sdk._proto.are.v1 import workflow_pb2 as wf

from .test_scheduler import StreamWorker, echo, expect_error, submit, task, unique_capability, wait_closed

LIMIT = 20
BIG = 300
SMALL = 10
CONCURRENCY = 4


async def _status(client: Client, pool: str) -> s.PoolStatus:
    response: s.GetPoolResponse = await client.raw.scheduler.GetPool(s.GetPoolRequest(name=pool))
    return response.status


async def test_a_released_fan_out_drains_through_the_backlog_within_the_queue_bound(client: Client) -> None:
    cap = unique_capability("backlog")
    pool = unique_capability("bp")
    await client.raw.scheduler.PutPool(s.PutPoolRequest(pool=s.Pool(name=pool, max_queue_length=LIMIT)))
    gate = asyncio.Event()

    async def handler(a: w.TaskAssignment) -> Any:
        if a.task_id != "root":
            await gate.wait()  # hold the fan-out until the backlog has been inspected
        return echo(a)

    big = await submit(
        client, task("root", cap, pool=pool), *[task(f"b{i}", cap, "root", pool=pool) for i in range(BIG)]
    )
    small = await submit(
        client, task("root", cap, pool=pool), *[task(f"s{i}", cap, "root", pool=pool) for i in range(SMALL)]
    )
    released = BIG + SMALL
    async with StreamWorker(client, handler, capabilities=[cap], concurrency=CONCURRENCY) as worker:
        async with asyncio.timeout(10):
            while (status := await _status(client, pool)).backlog == 0 or status.running < CONCURRENCY:
                await asyncio.sleep(0.005)
        # Both roots completed: the released tasks were never refused; what did not fit waits.
        assert (status.running, status.queued, status.backlog) == (
            CONCURRENCY,
            LIMIT,
            released - LIMIT - CONCURRENCY,
        )
        listed = await client.raw.scheduler.ListPools(s.ListPoolsRequest())
        (mine,) = [p for p in listed.pools if p.pool.name == pool]
        assert mine.status.backlog == released - LIMIT - CONCURRENCY
        # New admissions into the full queue are backpressured, with a retry hint.
        error = await expect_error(
            submit(client, task("late", cap, pool=pool)), ResourceExhaustedError, "POOL_QUEUE_FULL"
        )
        assert error.retry_after is not None
        await expect_error(
            client.raw.scheduler.SpawnTasks(
                s.SpawnTasksRequest(workflow_id=big, tasks=[task("extra", cap, pool=pool)])
            ),
            ResourceExhaustedError,
            "POOL_QUEUE_FULL",
        )

        observations: list[tuple[int, int]] = []

        async def observe() -> None:
            for _ in range(5_000):  # bounded; the drain takes far fewer polls
                status = await _status(client, pool)
                observations.append((status.queued, status.backlog))
                if status.queued == status.backlog == status.running == 0:
                    return
                await asyncio.sleep(0.002)

        observer = asyncio.ensure_future(observe())
        gate.set()
        big_status = await wait_closed(client, big, timeout=30)
        small_status = await wait_closed(client, small, timeout=30)
        await asyncio.wait_for(observer, 30)
    assert big_status.state == small_status.state == wf.WORKFLOW_STATE_COMPLETED
    assert len(observations) > 1
    assert all(queued <= LIMIT for queued, _ in observations), max(observations)
    assert observations[-1] == (0, 0)
    # Every task ran exactly once, and the small workflow was not starved behind the big one.
    assert len(worker.seen) == 2 + released
    assert set(worker.executions.values()) == {1}
    order = [(a.workflow_id, a.task_id) for a in worker.seen]
    last_small = max(i for i, (wf_id, task_id) in enumerate(order) if wf_id == small and task_id != "root")
    assert last_small < 2 + CONCURRENCY + LIMIT + 3 * SMALL  # first in, first out would be ~BIG
    final = await _status(client, pool)
    assert (final.queued, final.backlog, final.running) == (0, 0, 0)
    assert final.dispatched_total == 2 + released
    assert final.rejected_total == 2
