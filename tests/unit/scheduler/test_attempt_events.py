"""The events of an attempt name its span, and a re-queue records the scheduling it is (event.proto).

Engine in process over real LMDB. Each test pins a defect a review found:

- an attempt lost through no fault of its worker (a sidecar restart, a poll
  answer that did not arrive) went from TASK_LEASE_EXPIRED (task_state
  RUNNING, recorded before the task was SCHEDULED again) straight to the
  next TASK_DISPATCHED: no TASK_SCHEDULED, as a worker loss records;
- the events of a running attempt other than its dispatch, completion and
  failure (TASK_TIMED_OUT, TASK_LEASE_EXPIRED, TASK_CANCELLED) and the calls
  its worker reported without a span of its own carried no span_id, though
  Event.span_id is "the task attempt's span".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from are_core.scheduler import (
    TABLES,
    RetryPolicy,
    Scheduler,
    TaskSpec,
    WorkflowSpec,
)
from are_core.storage import Durability, GroupCommitter, Storage
from are_core.trace import Event, EventDraft
from tests.unit.scheduler.test_engine import FakeWorker
from tests.unit.scheduler.test_reroute import Sink

_HANG_GUARD_S = 10.0


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[Storage, GroupCommitter]]:
    storage = Storage.open(tmp_path / "data", tables=TABLES, durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    yield storage, committer
    await committer.aclose()
    storage.close()


async def _until(check: object, *, what: str) -> None:
    assert callable(check)
    async with asyncio.timeout(_HANG_GUARD_S):
        while not check():
            await asyncio.sleep(0.005)


async def _settled(engine: Scheduler, wf_id: str) -> None:
    await _until(lambda: engine.get_workflow(wf_id).record.state not in {"RUNNING", "CANCELLING"}, what=wf_id)
    await asyncio.sleep(0.05)  # the events of the last commit are published after it


def _of(sink: Sink, task_id: str = "t") -> list[Event]:
    return [e for e in sink.events if e.task_id == task_id]


def _kinds(events: list[Event]) -> list[tuple[str, int, str]]:
    return [(e.event_type.removeprefix("TASK_"), e.attempt, e.task_state) for e in events]


async def test_a_restart_records_the_lost_attempts_lease_then_its_scheduling(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    first = Scheduler(*opened, events=Sink(), rng=lambda: 0.0)
    await first.start()
    record, _ = await first.submit(WorkflowSpec(tasks=(TaskSpec(task_id="t", capability="cap"),)))
    worker = FakeWorker()
    first.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _until(lambda: worker.assignments, what="dispatch")
    span_1 = first.get_task(record.workflow_id, "t").record.span_id
    await first.stop()

    sink = Sink()
    restarted = Scheduler(*opened, events=sink, rng=lambda: 0.0)
    await restarted.start()
    again = FakeWorker()
    restarted.connect_worker("w2", ["cap"], 1, again.assign, again.cancel)
    await _until(lambda: again.assignments, what="re-dispatch")
    await restarted.complete(record.workflow_id, "t", 2, output=b"1", content_type="", usage=None)
    await _settled(restarted, record.workflow_id)
    events = _of(sink)
    assert _kinds(events) == [
        ("LEASE_EXPIRED", 1, "SCHEDULED"),  # the transition it is (was RUNNING, then no TASK_SCHEDULED)
        ("SCHEDULED", 2, "SCHEDULED"),
        ("DISPATCHED", 2, "RUNNING"),
        ("COMPLETED", 2, "COMPLETED"),
    ]
    lease, scheduled = events[0], events[1]
    assert (lease.name, lease.span_id) == ("sidecar restart", span_1)
    assert scheduled.span_id == ""  # attempt 2 has no span yet
    assert scheduled.attributes == {"are.pool": "default", "are.priority": 3}  # the default priority
    await restarted.stop()


async def test_an_undelivered_poll_answer_records_the_lease_then_the_scheduling(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    sink = Sink()
    engine = Scheduler(*opened, events=sink, rng=lambda: 0.0)
    await engine.start()
    record, _ = await engine.submit(WorkflowSpec(tasks=(TaskSpec(task_id="t", capability="cap"),)))
    worker = FakeWorker()
    handle = engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _until(lambda: worker.assignments, what="dispatch")
    span_1 = engine.get_task(record.workflow_id, "t").record.span_id
    assert engine.hand_back_undelivered(handle.worker_id, [(record.workflow_id, "t", 1)]) == 1
    await _until(lambda: len(worker.assignments) == 2, what="re-dispatch")
    await engine.cancel(record.workflow_id, "done", "test")
    await _settled(engine, record.workflow_id)
    events = _of(sink)
    assert _kinds(events)[:5] == [
        ("SCHEDULED", 1, "SCHEDULED"),
        ("DISPATCHED", 1, "RUNNING"),
        ("LEASE_EXPIRED", 1, "SCHEDULED"),
        ("SCHEDULED", 2, "SCHEDULED"),
        ("DISPATCHED", 2, "RUNNING"),
    ]
    assert events[2].span_id == span_1
    # The cancel of the running attempt 2 names its span.
    cancelled = events[5]
    assert (cancelled.event_type, cancelled.attempt) == ("TASK_CANCELLED", 2)
    assert cancelled.span_id == events[4].span_id != span_1
    await engine.stop()


async def test_the_events_of_a_running_attempt_carry_its_span_id(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    sink = Sink()
    engine = Scheduler(*opened, events=sink, rng=lambda: 0.0)
    await engine.start()
    policy = RetryPolicy(maximum_attempts=3)
    spec = TaskSpec(task_id="t", capability="cap", start_to_close_s=0.2, retry_policy=policy)
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec,)))
    wf = record.workflow_id
    worker = FakeWorker()
    handle = engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await _until(lambda: worker.assignments, what="attempt 1")
    # Reported without a span of the worker's own: the attempt's; with one: the worker's.
    engine.record_events(
        [
            EventDraft(event_type="LLM_CALL", workflow_id=wf, task_id="t", attempt=1, name="m"),
            EventDraft(
                event_type="TOOL_CALL", workflow_id=wf, task_id="t", attempt=1, span_id="0123456789abcdef"
            ),
        ]
    )
    await _until(lambda: len(worker.assignments) == 2, what="attempt 2, after attempt 1 timed out")
    engine.disconnect_worker(handle)  # attempt 2's lease ends
    await _until(lambda: engine.get_task(wf, "t").record.state == "BACKING_OFF", what="backoff")
    await engine.cancel(wf, "done", "test")
    await _settled(engine, wf)
    spans = {e.attempt: e.span_id for e in _of(sink) if e.event_type == "TASK_DISPATCHED"}
    assert len(set(spans.values())) == 2
    named = [(e.event_type.removeprefix("TASK_"), e.attempt, e.span_id) for e in _of(sink)]
    assert named == [
        ("SCHEDULED", 1, ""),
        ("DISPATCHED", 1, spans[1]),
        ("LLM_CALL", 1, spans[1]),
        ("TOOL_CALL", 1, "0123456789abcdef"),
        ("TIMED_OUT", 1, spans[1]),
        ("ATTEMPT_FAILED", 1, spans[1]),
        ("RETRY_SCHEDULED", 2, ""),
        ("SCHEDULED", 2, ""),
        ("DISPATCHED", 2, spans[2]),
        ("LEASE_EXPIRED", 2, spans[2]),
        ("ATTEMPT_FAILED", 2, spans[2]),
        ("RETRY_SCHEDULED", 3, ""),
        ("CANCELLED", 2, ""),  # in its backoff: no attempt runs, no span
    ]
    assert engine.attempt_span_id(wf, "t", 2) == spans[2]
    assert engine.attempt_span_id(wf, "t", 1) == ""  # an earlier attempt: not kept
    await engine.stop()
