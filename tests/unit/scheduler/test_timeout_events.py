"""The events of timeouts and retries say what happened (event.proto), engine in process over real LMDB.

- A timeout that ends a running attempt is TASK_TIMED_OUT then
  TASK_ATTEMPT_FAILED with the same failure. Only a missed heartbeat is a
  lease that ran out (TASK_LEASE_EXPIRED); a start-to-close or
  schedule-to-close timeout recorded one too, and a schedule-to-close
  timeout recorded no TASK_ATTEMPT_FAILED at all.
- TASK_SCHEDULED carries the attempt it queues the task for: it said 0 for
  the first attempt, and for a retry the attempt that had failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from are_core.scheduler import TABLES, Failure, RetryPolicy, Scheduler, TaskSpec, WorkflowSpec
from are_core.storage import Durability, GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker
from tests.unit.scheduler.test_reroute import Sink

_HANG_GUARD_S = 10.0


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[Scheduler, Sink]]:
    storage = Storage.open(tmp_path / "data", tables=TABLES, durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    sink = Sink()
    engine = Scheduler(storage, committer, events=sink, rng=lambda: 0.0)
    await engine.start()
    yield engine, sink
    await engine.stop()
    await committer.aclose()
    storage.close()


async def _until_failed(engine: Scheduler, wf_id: str) -> None:
    async with asyncio.timeout(_HANG_GUARD_S):
        while engine.get_workflow(wf_id).record.state != "FAILED":
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # the events of the last commit are published after it


def _kinds(sink: Sink, task_id: str) -> list[tuple[str, int]]:
    return [(e.event_type.removeprefix("TASK_"), e.attempt) for e in sink.events if e.task_id == task_id]


async def _one_attempt(engine: Scheduler, task: TaskSpec) -> str:
    record, _ = await engine.submit(WorkflowSpec(tasks=(task,)))
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _until_failed(engine, record.workflow_id)
    assert [(c.attempt, c.reason) for c in worker.cancellations] == [(1, "TIMED_OUT")]
    return record.workflow_id


@pytest.mark.parametrize(
    ("fields", "timeout_type", "lease"),
    [
        ({"start_to_close_s": 0.2}, "START_TO_CLOSE", False),
        ({"start_to_close_s": 60, "schedule_to_close_s": 0.2}, "SCHEDULE_TO_CLOSE", False),
        ({"start_to_close_s": 60, "heartbeat_s": 0.2}, "HEARTBEAT", True),
    ],
)
async def test_a_timeout_of_a_running_attempt_is_timed_out_then_attempt_failed(
    traced: tuple[Scheduler, Sink], fields: dict[str, float], timeout_type: str, lease: bool
) -> None:
    engine, sink = traced
    policy = RetryPolicy(maximum_attempts=1)
    await _one_attempt(engine, TaskSpec(task_id="t", capability="cap", retry_policy=policy, **fields))  # type: ignore[arg-type]
    ending = ["TIMED_OUT", *(["LEASE_EXPIRED"] if lease else []), "ATTEMPT_FAILED"]
    assert _kinds(sink, "t") == [("SCHEDULED", 1), ("DISPATCHED", 1), *((k, 1) for k in ending)]
    timed_out = next(e for e in sink.events if e.event_type == "TASK_TIMED_OUT")
    failed = next(e for e in sink.events if e.event_type == "TASK_ATTEMPT_FAILED")
    assert timed_out.failure is not None and failed.failure is not None
    assert timed_out.failure.timeout_type == failed.failure.timeout_type == timeout_type
    assert failed.task_state == "FAILED"


async def test_task_scheduled_names_the_attempt_it_queues_the_task_for(
    traced: tuple[Scheduler, Sink],
) -> None:
    engine, sink = traced
    spec = TaskSpec(task_id="t", capability="cap", retry_policy=RetryPolicy(maximum_attempts=2))
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec,)))
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    async with asyncio.timeout(_HANG_GUARD_S):
        for attempt in (1, 2):
            while len(worker.assignments) < attempt:
                await asyncio.sleep(0.005)
            engine.fail(
                record.workflow_id,
                "t",
                attempt,
                failure=Failure(message="no", type="E", kind="APPLICATION"),
                usage=None,
            )
    await _until_failed(engine, record.workflow_id)
    scheduled = [(k, a) for k, a in _kinds(sink, "t") if k in {"SCHEDULED", "DISPATCHED", "RETRY_SCHEDULED"}]
    assert scheduled == [
        ("SCHEDULED", 1),
        ("DISPATCHED", 1),
        ("RETRY_SCHEDULED", 2),
        ("SCHEDULED", 2),
        ("DISPATCHED", 2),
    ]
