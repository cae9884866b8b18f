"""The schedule-to-start timeout of a task that goes back to its queue (engine, no server).

``schedule_to_start_timeout`` bounds the wait in SCHEDULED for a worker *per
attempt* (``are.v1.TaskSpec``): each time a task goes back to its queue (a
retry after a failure, a lease lost with its worker, a heartbeat missed, an
attempt handed back undelivered, a sidecar restart), its wait starts again and
is bounded again, so with no worker it fails with TIMEOUT_TYPE_SCHEDULE_TO_START
rather than waiting forever. The engine runs on a fake clock; its timers fire
when the loop timer is re-armed after each advance (no timing assertions).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from are_core.scheduler import (
    Failure,
    RetryPolicy,
    RoutingError,
    Scheduler,
    TaskRecord,
    TaskSpec,
    WorkflowSpec,
)
from are_core.storage import GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker, settle
from tests.unit.scheduler.test_reroute import Clock

S2S = 30.0  # the schedule-to-start timeout of the tasks below, in seconds
NS = 1_000_000_000


def _task(**fields: Any) -> TaskSpec:
    return TaskSpec(
        task_id="t",
        capability="cap",
        schedule_to_start_s=S2S,
        retry_policy=RetryPolicy(initial_interval_s=1.0, maximum_attempts=5),
        **fields,
    )


async def _advance(engine: Scheduler, clock: Clock, seconds: float) -> None:
    """Moves the fake clock and lets the engine fire what fell due (as its loop timer would)."""
    clock.advance(seconds)
    engine._arm()
    await settle(engine)


async def _until(predicate: Callable[[], bool]) -> None:
    """Lets the loop turn until ``predicate`` holds (bounded: ten seconds or so)."""
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the engine never got there")


def _record(engine: Scheduler) -> TaskRecord:
    return engine.get_task("w", "t").record


async def _times_out_from(engine: Scheduler, clock: Clock, attempt: int) -> None:
    """The task waits again (attempt ``attempt`` over), from now: within the timeout it is still
    SCHEDULED, past it FAILED with SCHEDULE_TO_START, out of its queue and never dispatched."""
    entered = clock.now
    await _until(lambda: _record(engine).state == "SCHEDULED")
    schedule_ns = _record(engine).schedule_ns
    await _advance(engine, clock, S2S - 1)
    assert _record(engine).state == "SCHEDULED"  # the wait counts from its return to the queue
    await _advance(engine, clock, 2)
    rec = _record(engine)
    assert rec.state == "FAILED", rec.state_reason
    assert rec.failure is not None and rec.failure.timeout_type == "SCHEDULE_TO_START"
    assert rec.attempt == attempt
    assert schedule_ns == entered  # "when the task last entered SCHEDULED" (are.v1.TaskInfo)


async def _stream_worker(engine: Scheduler, clock: Clock) -> Any:
    """Submits the task after 20 s of the clock and gives it to a stream worker."""
    await engine.submit(WorkflowSpec(workflow_id="w", tasks=(_task(heartbeat_s=5.0, start_to_close_s=60.0),)))
    await _advance(engine, clock, 20)  # most of its first wait used up
    worker = FakeWorker()
    handle = engine.connect_worker("w1", ["cap"], 1, worker.assign, worker.cancel, worker_id="w1")
    await settle(engine)
    assert [(a.task_id, a.attempt) for a in worker.assignments] == [("t", 1)]
    return handle


async def _disconnected(engine: Scheduler, clock: Clock) -> None:
    engine.disconnect_worker(await _stream_worker(engine, clock))


async def _failed(engine: Scheduler, clock: Clock) -> None:
    engine.drain_worker(await _stream_worker(engine, clock))  # its retry finds no worker
    engine.fail("w", "t", 1, failure=Failure(message="boom", type="E"), usage=None)
    await _advance(engine, clock, 1)  # the backoff (no jitter: at once) ends


async def _heartbeat_missed(engine: Scheduler, clock: Clock) -> None:
    handle = await _stream_worker(engine, clock)
    engine.drain_worker(handle)  # it takes no more work, and stops heartbeating
    await _advance(engine, clock, 6)


async def _start_to_close(engine: Scheduler, clock: Clock) -> None:
    handle = await _stream_worker(engine, clock)
    engine.drain_worker(handle)
    for _ in range(12):
        await _advance(engine, clock, 4.9)
        engine.heartbeat("w", "t", 1, None, "")
    await _advance(engine, clock, 2)


async def _poll_answer_not_delivered(engine: Scheduler, clock: Clock) -> None:
    await engine.submit(WorkflowSpec(workflow_id="w", tasks=(_task(),)))
    await _advance(engine, clock, 20)
    worker_id, (a,) = await engine.poll("poller", ["cap"], 1, 5.0)
    assert engine.hand_back_undelivered(worker_id, [(a.workflow_id, a.task_id, a.attempt)]) == 1


async def _poll_cancelled(engine: Scheduler, clock: Clock) -> None:
    await engine.submit(WorkflowSpec(workflow_id="w", tasks=(_task(),)))
    await _advance(engine, clock, 20)
    poll = asyncio.ensure_future(engine.poll("poller", ["cap"], 1, 5.0))
    await asyncio.sleep(0)  # dispatched to it; its commit not yet answered
    assert _record(engine).state == "RUNNING"
    poll.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await poll


async def _silent_poller(engine: Scheduler, clock: Clock) -> None:
    await engine.submit(WorkflowSpec(workflow_id="w", tasks=(_task(heartbeat_s=5.0),)))
    await _advance(engine, clock, 20)
    _, (a,) = await engine.poll("poller", ["cap"], 1, 5.0)
    assert a.attempt == 1
    await _advance(engine, clock, 6)  # the poller never heartbeats


ENDINGS: dict[str, tuple[Callable[[Scheduler, Clock], Awaitable[None]], int]] = {
    # how attempt 1 ended -> (the steps, how many attempts the policy is charged then)
    "worker disconnected": (_disconnected, 1),
    "attempt failed, retried after its backoff": (_failed, 1),
    "heartbeat missed": (_heartbeat_missed, 1),
    "start-to-close passed": (_start_to_close, 1),
    "poll answer not delivered": (_poll_answer_not_delivered, 0),
    "poll cancelled before its answer": (_poll_cancelled, 0),
    "poller went silent": (_silent_poller, 1),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_a_task_back_in_its_queue_times_out_with_no_worker(
    ending: str, opened: tuple[Storage, GroupCommitter]
) -> None:
    """Defect, for the two poll hand-backs: the attempt went back to the queue with no
    schedule-to-start timer (the first one went stale at the dispatch) and its old schedule
    time, so with no worker the task waited forever. The other endings go through a backoff,
    whose end schedules the task with a timer as its first scheduling did."""
    clock = Clock()
    engine = Scheduler(*opened, rng=lambda: 0.0, clock=clock)
    await engine.start()
    steps, charged = ENDINGS[ending]
    await steps(engine, clock)
    await _times_out_from(engine, clock, attempt=1)
    rec = _record(engine)
    assert rec.attempt - rec.free_attempts == charged
    assert engine.get_workflow("w").record.state == "FAILED"
    assert engine.get_pool("default")[1].queued == 0
    await engine.stop()


async def test_a_task_running_at_a_restart_times_out_with_no_worker(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """Defect: recovery queued a task that was RUNNING again (attempt+1 next) with no
    schedule-to-start timer, so with no worker after the restart it waited forever. Its new
    wait starts at the restart: not failed at once though its first wait began long before."""
    clock = Clock()
    engine = Scheduler(*opened, rng=lambda: 0.0, clock=clock)
    await engine.start()
    await _stream_worker(engine, clock)
    await engine.stop()  # the attempt stays RUNNING in storage
    clock.advance(3 * S2S)
    restarted = Scheduler(*opened, rng=lambda: 0.0, clock=clock)
    await restarted.start()
    await _times_out_from(restarted, clock, attempt=1)
    assert _record(restarted).free_attempts == 1  # the lost attempt is not charged
    assert restarted.get_pool("default")[1].queued == 0
    await restarted.stop()


async def test_a_task_handed_back_keeps_its_new_wait_across_a_restart(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """The wait of a task handed back counts from the hand-back (its schedule time, the moment
    it last entered SCHEDULED), also after a restart: not from its first scheduling."""
    clock = Clock()
    engine = Scheduler(*opened, rng=lambda: 0.0, clock=clock)
    await engine.start()
    await _poll_answer_not_delivered(engine, clock)
    handed_back = clock.now
    await settle(engine)
    await engine.stop()
    clock.advance(S2S - 5)
    restarted = Scheduler(*opened, rng=lambda: 0.0, clock=clock)
    await restarted.start()
    assert _record(restarted).schedule_ns == handed_back
    await _advance(restarted, clock, 4)
    assert _record(restarted).state == "SCHEDULED"
    await _advance(restarted, clock, 2)
    rec = _record(restarted)
    assert rec.failure is not None and rec.failure.timeout_type == "SCHEDULE_TO_START"
    await restarted.stop()


async def test_an_intent_task_whose_class_lost_its_worker_times_out(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """An intent routed to a class whose one worker disconnects: the attempt fails WORKER_LOST,
    the retry keeps the class (nothing else clears the threshold) and waits for it, bounded by
    schedule-to-start; so does a task that waited in that class's queue all along."""
    clock = Clock()
    engine = Scheduler(*opened, rng=lambda: 0.0, clock=clock)
    served: set[str] = set()
    routable = {"on": True}

    def route(spec: TaskSpec, rec: TaskRecord) -> tuple[str, dict[str, Any]]:
        if not routable["on"]:
            raise RoutingError("nothing above the threshold")
        return "cap-a", {}

    engine.route = route
    engine.capability_served = served.__contains__
    engine.reroute_grace_s = 0.0
    await engine.start()
    intent = TaskSpec(
        task_id="t",
        capability="",
        intent="write",
        schedule_to_start_s=S2S,
        retry_policy=RetryPolicy(initial_interval_s=1.0, maximum_attempts=5),
    )
    waiting = TaskSpec(task_id="u", capability="", intent="write", schedule_to_start_s=S2S + 10)
    await engine.submit(WorkflowSpec(workflow_id="w", tasks=(intent, waiting)))
    worker = FakeWorker()
    handle = engine.connect_worker("a", ["cap-a"], 1, worker.assign, worker.cancel)
    served.add("cap-a")
    engine.served_changed(["cap-a"])
    await settle(engine)
    assert [(a.task_id, a.attempt) for a in worker.assignments] == [("t", 1)]
    routable["on"] = False  # its card went with its worker
    served.discard("cap-a")
    engine.disconnect_worker(handle)
    engine.served_changed(["cap-a"])
    await _advance(engine, clock, 1)  # the backoff ends: scheduled again, kept on cap-a
    assert engine.get_task("w", "t").record.capability == "cap-a"
    await _times_out_from(engine, clock, attempt=1)
    await _advance(engine, clock, 10)
    rec = engine.get_task("w", "u").record
    assert rec.failure is not None and rec.failure.timeout_type == "SCHEDULE_TO_START"
    assert engine.get_pool("default")[1].queued == 0
    await engine.stop()
