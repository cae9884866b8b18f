"""The bound on the tasks of open workflows held in memory (engine, no server).

Every open workflow keeps all its tasks in memory until it closes, so without
a global bound a client submitting without end grows the sidecar until the
OOM killer takes it (and the restart loads them all again). The engine keeps
an exact count, updated as workflows open (submit, fork, recovery), grow
(spawn) and close (completed, failed, cancelled, over budget), and refuses a
spawn that would take it over ``max_open_tasks``, or a submit or fork over
90% of it, with :class:`TooManyOpenTasksError`, changing nothing: the rest
is kept so that running workflows can still spawn while new ones flood in.
Recovery never refuses.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator

import pytest

from are_core.scheduler import (
    TABLES,
    Budget,
    BudgetExceededError,
    Failure,
    RetryPolicy,
    Scheduler,
    SpecError,
    TaskNotHeldError,
    TaskSpec,
    TooManyOpenTasksError,
    WorkflowClosedError,
    WorkflowNotFoundError,
    WorkflowSpec,
)
from are_core.scheduler import _engine as engine_module
from are_core.storage import GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec

pytestmark = pytest.mark.timeout(60)

_T_WORKFLOWS, _T_REQUESTS = TABLES[0], TABLES[5]


def _exact(engine: Scheduler) -> int:
    """The engine's count, checked against a full scan of what it holds open."""
    held = sum(len(w.order) for w in engine._open.values())
    assert engine.open_tasks == held
    assert engine.counters()["open_tasks"] == held
    return held


def _chain(prefix: str, n: int) -> tuple[TaskSpec, ...]:
    return tuple(spec(f"{prefix}{i}", *([f"{prefix}{i - 1}"] if i else [])) for i in range(n))


def _workflow(wf_id: str, n: int, **fields: object) -> WorkflowSpec:
    # fields are WorkflowSpec's own keywords, passed through from each test untyped.
    return WorkflowSpec(workflow_id=wf_id, tasks=_chain("t", n), **fields)  # type: ignore[arg-type]


async def _started(storage: Storage, committer: GroupCommitter, bound: int) -> Scheduler:
    engine = Scheduler(storage, committer, rng=lambda: 0.0, max_open_tasks=bound)
    await engine.start()
    return engine


@pytest.fixture
async def bounded(opened: tuple[Storage, GroupCommitter]) -> AsyncIterator[Scheduler]:
    """A started engine with room for 10 open tasks."""
    engine = await _started(*opened, bound=10)
    yield engine
    await engine.stop()


async def _run_all(engine: Scheduler, worker: FakeWorker, wf_id: str) -> None:
    """Completes every assignment of ``wf_id`` until the workflow closes (bounded)."""
    done: set[tuple[str, int]] = set()
    for _ in range(100):
        if engine.get_workflow(wf_id).record.state not in ("RUNNING", "CANCELLING"):
            return
        for a in list(worker.assignments):
            if a.workflow_id == wf_id and (a.task_id, a.attempt) not in done:
                done.add((a.task_id, a.attempt))
                await engine.complete(wf_id, a.task_id, a.attempt, output=b"1", content_type="", usage=None)
        await settle(engine)
    raise AssertionError(f"{wf_id} did not close")


async def test_the_count_follows_submit_spawn_complete_and_fail(bounded: Scheduler) -> None:
    engine = bounded
    assert (engine.max_open_tasks, _exact(engine)) == (10, 0)
    await engine.submit(_workflow("ok", 3))
    assert _exact(engine) == 3
    ids, _ = await engine.spawn("ok", (spec("s0"), spec("s1", "s0")))
    assert ids == ["s0", "s1"]
    assert _exact(engine) == 5
    once = RetryPolicy(maximum_attempts=1)
    await engine.submit(WorkflowSpec(workflow_id="bad", tasks=(spec("x", retry_policy=once), spec("y", "x"))))
    assert _exact(engine) == 7
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 10, worker.assign, worker.cancel)
    await settle(engine)
    await _run_all(engine, worker, "ok")
    assert engine.get_workflow("ok").record.state == "COMPLETED"
    assert _exact(engine) == 2
    (x,) = [a for a in worker.assignments if a.workflow_id == "bad"]
    *_, durable = engine.fail("bad", "x", x.attempt, failure=Failure(message="no"), usage=None)
    await durable
    await settle(engine)
    assert engine.get_workflow("bad").record.state == "FAILED"
    assert _exact(engine) == 0
    assert engine.counters()["max_open_tasks"] == 10


async def test_cancel_budget_and_delete_free_the_room_once(bounded: Scheduler) -> None:
    engine = bounded
    await engine.submit(_workflow("cancelled", 4))
    await engine.submit(_workflow("over", 3, budget=Budget(max_tasks=4)))
    assert _exact(engine) == 7
    await engine.cancel("cancelled", "enough", "test")
    await settle(engine)
    assert engine.get_workflow("cancelled").record.state == "CANCELLED"
    assert _exact(engine) == 3
    await engine.cancel("cancelled", "again", "test")  # idempotent: nothing freed twice
    assert _exact(engine) == 3
    with pytest.raises(BudgetExceededError):  # the workflow fails, and frees its room
        await engine.spawn("over", (spec("s0"), spec("s1")))
    await settle(engine)
    assert engine.get_workflow("over").record.state == "FAILED"
    assert _exact(engine) == 0
    await engine.delete("cancelled")  # closed already: nothing more to free
    await engine.delete("over")
    assert _exact(engine) == 0
    await engine.submit(_workflow("after", 10))  # the whole room is back
    assert _exact(engine) == 10


async def test_a_refusal_at_the_bound_changes_nothing_and_room_comes_back(bounded: Scheduler) -> None:
    engine = bounded
    await engine.submit(_workflow("first", 6), request_id="req-first", request_hash="h1")
    await engine.submit(_workflow("second", 3))
    assert _exact(engine) == 9
    before = engine.counters()

    with pytest.raises(TooManyOpenTasksError) as caught:
        await engine.submit(_workflow("third", 2), request_id="req-third", request_hash="h3")
    error = caught.value
    assert error.reason == "RESOURCE_LIMIT"
    assert error.retry_after_s > 0
    assert error.metadata == {
        "limit": "max_open_tasks",
        "max_open_tasks": "10",
        "open_tasks": "9",
        "incoming_tasks": "2",
        "share": "new_work",
        "share_limit": "9",
    }
    assert "share of max_open_tasks 10 that new workflows may take" in str(error)
    with pytest.raises(WorkflowNotFoundError):
        engine.get_workflow("third")
    assert engine._storage.get(_T_WORKFLOWS, b"third") is None
    assert engine._storage.get(_T_REQUESTS, b"req-third") is None
    assert engine.check_request("req-third", "h3") is None

    with pytest.raises(TooManyOpenTasksError) as spawned:
        await engine.spawn("second", (spec("s0"), spec("s1")))
    assert (spawned.value.metadata["incoming_tasks"], spawned.value.metadata["share"]) == ("2", "all")
    assert spawned.value.retry_after_s < error.retry_after_s  # a growing workflow is told to come back sooner
    assert [t.record.task_id for t in engine.list_tasks("second", frozenset(), 0, 100)[0]] == [
        "t0",
        "t1",
        "t2",
    ]
    assert engine.get_workflow("second").record.task_count == 3
    assert _exact(engine) == 9
    assert engine.counters()["open_tasks_refused"] == before["open_tasks_refused"] + 2

    # What fits is taken; a retried submit adds nothing, so it is answered, not refused.
    await engine.spawn("second", (spec("s0"),))
    assert _exact(engine) == 10
    _, deduplicated = await engine.submit(_workflow("first", 6), request_id="req-first", request_hash="h1")
    assert deduplicated
    assert _exact(engine) == 10

    await engine.cancel("first", "make room", "test")
    await settle(engine)
    assert _exact(engine) == 4
    await engine.submit(_workflow("third", 2), request_id="req-third", request_hash="h3")
    await engine.spawn("second", (spec("s1"),))
    assert _exact(engine) == 7


async def test_a_workflow_larger_than_the_bound_is_invalid_not_retried(bounded: Scheduler) -> None:
    engine = bounded
    with pytest.raises(SpecError) as caught:
        await engine.submit(_workflow("huge", 11))
    assert (caught.value.reason, caught.value.field, caught.value.limit) == (
        "LIMIT_EXCEEDED",
        "spec.tasks",
        10,
    )
    await engine.submit(_workflow("grows", 8))
    with pytest.raises(SpecError) as spawned:  # 8 + 3 could never fit, however much else closes
        await engine.spawn("grows", (spec("s0"), spec("s1"), spec("s2")))
    assert (spawned.value.reason, spawned.value.field) == ("LIMIT_EXCEEDED", "tasks")
    assert engine.get_workflow("grows").record.state == "RUNNING"
    assert _exact(engine) == 8


async def test_a_flood_of_submits_leaves_room_for_running_workflows_to_spawn(bounded: Scheduler) -> None:
    """New work takes at most 9 of 10 open tasks; the last one stays for spawns into running workflows.

    Without the reserve the submits filled all 10, and every running
    workflow's SpawnTasks was refused while new work took each freed room.
    """
    engine = bounded
    await engine.submit(_workflow("running", 3))
    for i in range(6):
        await engine.submit(_workflow(f"flood{i}", 1))
    assert _exact(engine) == 9
    with pytest.raises(TooManyOpenTasksError) as caught:
        await engine.submit(_workflow("flood6", 1))
    assert caught.value.metadata == {
        "limit": "max_open_tasks",
        "max_open_tasks": "10",
        "open_tasks": "9",
        "incoming_tasks": "1",
        "share": "new_work",
        "share_limit": "9",
    }
    with pytest.raises(TooManyOpenTasksError) as forked:
        engine.check_fork("running", "fork", ())
    assert forked.value.metadata["share"] == "new_work"
    await engine.spawn("running", (spec("s0"),))  # the reserve: a spawn may take the whole bound
    assert _exact(engine) == 10
    with pytest.raises(TooManyOpenTasksError) as spawned:
        await engine.spawn("running", (spec("s1"),))
    assert (spawned.value.metadata["share"], spawned.value.metadata["share_limit"]) == ("all", "10")
    assert "exceed max_open_tasks 10:" in str(spawned.value)
    await engine.cancel("flood0", "make room", "test")
    await settle(engine)
    with pytest.raises(TooManyOpenTasksError):  # 9 open: the room freed is the reserve, not new work's
        await engine.submit(_workflow("late", 1))
    await engine.spawn("running", (spec("s1"),))
    assert _exact(engine) == 10


@pytest.mark.parametrize(("bound", "share"), [(1, 0), (2, 1), (10, 9), (19, 17)])
async def test_the_new_work_share_of_tiny_bounds_rounds_down_and_a_lone_workflow_fits(
    opened: tuple[Storage, GroupCommitter], bound: int, share: int
) -> None:
    """The share is 90% rounded down; a workflow up to the whole bound is admitted when nothing is open.

    Such a workflow (more than the share, not more than the bound) is neither
    invalid (it fits alone) nor refused for good (it fits once nothing else is open).
    """
    engine = await _started(*opened, bound=bound)
    try:
        await engine.submit(_workflow("alone", bound))  # nothing open: the whole bound
        assert _exact(engine) == bound
        with pytest.raises(TooManyOpenTasksError) as caught:
            await engine.submit(_workflow("over", 1))
        assert (caught.value.metadata["share"], caught.value.metadata["share_limit"]) == (
            "new_work",
            str(share),
        )
        await engine.cancel("alone", "", "test")
        await settle(engine)
        if share:
            await engine.submit(_workflow("within", share))
            with pytest.raises(TooManyOpenTasksError):
                await engine.submit(_workflow("over", 1))
        assert _exact(engine) == share
        with pytest.raises(SpecError) as invalid:  # only more than the whole bound is invalid
            await engine.submit(_workflow("huge", bound + 1))
        assert (invalid.value.reason, invalid.value.limit) == ("LIMIT_EXCEEDED", bound)
    finally:
        await engine.stop()


async def test_a_fork_counts_and_is_refused_at_the_bound(bounded: Scheduler) -> None:
    engine = bounded
    await engine.submit(_workflow("source", 3))
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 10, worker.assign, worker.cancel)
    await settle(engine)
    await _run_all(engine, worker, "source")
    assert _exact(engine) == 0
    # Every task kept: the fork opens with 3 tasks and closes in the same step.
    await engine.fork("source", "kept", cutoff_ns=2**62)
    assert engine.get_workflow("kept").record.state == "COMPLETED"
    assert _exact(engine) == 0
    await engine.fork("source", "rerun", cutoff_ns=2**62, rerun_task_ids=("t1",))
    assert engine.get_workflow("rerun").record.state == "RUNNING"
    assert _exact(engine) == 3
    await engine.submit(_workflow("filler", 5))
    assert _exact(engine) == 8
    with pytest.raises(TooManyOpenTasksError):
        engine.check_fork("source", "refused", ())
    with pytest.raises(TooManyOpenTasksError):
        await engine.fork("source", "refused", cutoff_ns=2**62, rerun_task_ids=("t0",))
    with pytest.raises(WorkflowNotFoundError):
        engine.get_workflow("refused")
    assert _exact(engine) == 8
    await engine.cancel("filler", "make room", "test")
    await settle(engine)
    engine.check_fork("source", "refused", ())
    await engine.fork("source", "refused", cutoff_ns=2**62, rerun_task_ids=("t0",))
    assert _exact(engine) == 6


async def test_a_restart_counts_what_it_loads_and_never_refuses_it(
    opened: tuple[Storage, GroupCommitter], caplog: pytest.LogCaptureFixture
) -> None:
    storage, committer = opened
    engine = await _started(storage, committer, bound=100)
    for i in range(3):
        await engine.submit(_workflow(f"wf{i}", 4))
    await engine.spawn("wf0", (spec("s0"),))
    await engine.submit(_workflow("closed", 2))
    await engine.cancel("closed", "", "test")
    await settle(engine)
    assert _exact(engine) == 13
    await engine.stop()

    same = await _started(storage, committer, bound=100)
    assert _exact(same) == 13
    await same.stop()

    with caplog.at_level(logging.WARNING, logger="are.scheduler"):
        lowered = await _started(storage, committer, bound=5)
    assert any("max_open_tasks" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    try:
        assert _exact(lowered) == 13  # all loaded and served, over the bound
        assert {lowered.get_workflow(f"wf{i}").record.state for i in range(3)} == {"RUNNING"}
        with pytest.raises(TooManyOpenTasksError):
            await lowered.submit(_workflow("new", 1))
        with pytest.raises(TooManyOpenTasksError):
            await lowered.spawn("wf1", (spec("s0"),))
        worker = FakeWorker()
        lowered.connect_worker("w", ["cap"], 10, worker.assign, worker.cancel)
        await settle(lowered)
        await _run_all(lowered, worker, "wf0")  # the loaded work still runs
        await lowered.cancel("wf1", "", "test")
        await settle(lowered)
        assert _exact(lowered) == 4
        with pytest.raises(TooManyOpenTasksError):  # new work gets 4 of the 5 (5 * 90% rounded down)
            await lowered.submit(_workflow("new", 1))
        await lowered.spawn("wf2", (spec("s0"),))  # a running workflow gets the last one
        await lowered.cancel("wf2", "", "test")
        await settle(lowered)
        assert _exact(lowered) == 0
        await lowered.submit(_workflow("new", 1))  # under the bound again
        assert _exact(lowered) == 1
    finally:
        await lowered.stop()


async def test_the_count_stays_exact_through_random_operations(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """Submits, spawns, completions, failures, cancellations and forks in a seeded random order."""
    engine = await _started(*opened, bound=40)
    rng = random.Random(7)
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1000, worker.assign, worker.cancel)
    once = RetryPolicy(maximum_attempts=1)
    taken: set[tuple[str, str, int]] = set()
    made = 0
    created: list[str] = []
    try:
        for step in range(300):
            roll = rng.random()
            open_ids = sorted(engine._open)
            try:
                if roll < 0.25 or not open_ids:
                    made += 1
                    size = rng.randint(1, 6)
                    tasks = tuple(
                        spec(f"t{i}", *([f"t{i - 1}"] if i and rng.random() < 0.5 else []), retry_policy=once)
                        for i in range(size)
                    )
                    await engine.submit(WorkflowSpec(workflow_id=f"wf{made}", tasks=tasks))
                    created.append(f"wf{made}")
                elif roll < 0.4:
                    await engine.spawn(rng.choice(open_ids), (spec(f"s{step}", retry_policy=once),))
                elif roll < 0.8:
                    live = [
                        a for a in worker.assignments if (a.workflow_id, a.task_id, a.attempt) not in taken
                    ]
                    if live:
                        a = rng.choice(live)
                        taken.add((a.workflow_id, a.task_id, a.attempt))
                        if rng.random() < 0.8:
                            await engine.complete(
                                a.workflow_id, a.task_id, a.attempt, output=b"1", content_type="", usage=None
                            )
                        else:
                            *_, durable = engine.fail(
                                a.workflow_id, a.task_id, a.attempt, failure=Failure(message="x"), usage=None
                            )
                            await durable
                elif roll < 0.9:
                    await engine.cancel(rng.choice(open_ids), "", "test")
                else:
                    made += 1
                    await engine.fork(rng.choice(open_ids), f"wf{made}", cutoff_ns=2**62)
                    created.append(f"wf{made}")
            except (TooManyOpenTasksError, WorkflowClosedError, TaskNotHeldError, SpecError):
                pass
            await settle(engine)
            assert _exact(engine) <= 40
        states = {engine.get_workflow(wf_id).record.state for wf_id in created}
        assert states >= {"RUNNING", "COMPLETED", "FAILED", "CANCELLED"}  # every way out was taken
        assert any(engine.get_workflow(wf_id).record.forked_from for wf_id in created)
        assert engine.counters()["open_tasks_refused"] > 0  # and the bound was reached
    finally:
        await engine.stop()


async def test_recently_closed_workflows_are_bounded_by_their_tasks_too(
    opened: tuple[Storage, GroupCommitter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed workflows kept in memory (at most 1,024) are bounded by tasks as well.

    1,024 closed workflows of 10,000 tasks each stayed in memory (about 13 GB),
    outside max_open_tasks: the oldest now go once their tasks pass the bound,
    and still read back from storage.
    """
    monkeypatch.setattr(engine_module, "_RECENT_CLOSED_TASKS", 25)
    engine = await _started(*opened, bound=100)
    try:
        for i in range(8):
            await engine.submit(_workflow(f"c{i}", 10))
            await engine.cancel(f"c{i}", "enough", "test")
            await settle(engine)
            held = sum(len(w.order) for w in engine._recent.values())
            assert engine.counters()["recent_closed_tasks"] == held
            assert held <= 25 or len(engine._recent) == 1
        assert list(engine._recent) == ["c6", "c7"]  # 20 tasks: a third would pass 25
        assert engine.get_workflow("c0").record.state == "CANCELLED"  # read back from storage
        await engine.delete("c7")
        assert engine.counters()["recent_closed_tasks"] == 10
        await engine.submit(_workflow("big", 30))  # larger than the bound alone: kept, as the latest
        await engine.cancel("big", "enough", "test")
        await settle(engine)
        assert list(engine._recent) == ["big"]
        assert engine.counters()["recent_closed_tasks"] == 30
    finally:
        await engine.stop()
