"""The engine's integration hooks without a server: stage, route, cache, worker load, delete, fork."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from are_core.scheduler import (
    CacheKey,
    RetryPolicy,
    RoutingError,
    Scheduler,
    SpecError,
    TaskOrigin,
    TaskRecord,
    TaskSpec,
    WorkerHandle,
    WorkflowNotClosedError,
    WorkflowNotFoundError,
    WorkflowSpec,
)
from are_core.storage import Batch, GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec

_EXTRA = "sched_pools"  # any declared table will do for a staged row


async def test_stage_hooks_join_the_submit_and_completion_commits(engine: Scheduler) -> None:
    storage = engine._storage

    def stage_submit(batch: Batch, workflow_id: str) -> None:
        batch.put(_EXTRA, b"submit:" + workflow_id.encode(), b"1")

    record, _ = await engine.submit(WorkflowSpec(tasks=(spec("a"),)), stage=stage_submit)
    wid = record.workflow_id
    assert storage.get(_EXTRA, b"submit:" + wid.encode()) == b"1"
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await settle(engine)

    def refuse(batch: Batch, task: TaskSpec) -> None:
        raise SpecError("PATCH_NOT_APPLICABLE", "completion.state_patch", "no")

    with pytest.raises(SpecError):
        engine.complete(wid, "a", 1, output=b"x", content_type="", usage=None, stage=refuse)
    assert engine.get_task(wid, "a").record.state == "RUNNING"  # nothing changed

    def stage_done(batch: Batch, task: TaskSpec) -> None:
        batch.put(_EXTRA, b"done:" + task.task_id.encode(), b"2")

    await engine.complete(wid, "a", 1, output=b"x", content_type="", usage=None, stage=stage_done)
    assert storage.get(_EXTRA, b"done:a") == b"2"
    assert engine.get_task(wid, "a").record.state == "COMPLETED"
    # A failing submit stage stores nothing.
    with pytest.raises(SpecError):
        await engine.submit(WorkflowSpec(workflow_id="nope", tasks=(spec("a"),)), stage=refuse_submit)
    with pytest.raises(WorkflowNotFoundError):
        engine.get_workflow("nope")


def refuse_submit(batch: Batch, workflow_id: str) -> None:
    raise SpecError("INVALID_JSON", "spec.initial_state.data", "bad")


async def test_an_intent_is_routed_when_scheduled_and_a_failed_route_uses_an_attempt(
    engine: Scheduler,
) -> None:
    routes: list[str] = []

    def route(task: TaskSpec, rec: TaskRecord) -> tuple[str, dict[str, Any]]:
        routes.append(task.intent)
        if "unknown" in task.intent:
            raise RoutingError("nothing clears the threshold")
        return "writer", {"are.route.agent_id": "agent-1"}

    engine.route = route
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                TaskSpec(task_id="a", capability="", intent="write a poem"),
                TaskSpec(
                    task_id="b",
                    capability="",
                    intent="unknown thing",
                    retry_policy=RetryPolicy(maximum_attempts=2, initial_interval_s=0.001),
                ),
            )
        )
    )
    wid = record.workflow_id
    worker = FakeWorker()
    engine.connect_worker("w", ["writer"], 4, worker.assign, worker.cancel)
    await settle(engine)
    (assigned,) = worker.assignments
    assert (assigned.task_id, assigned.capability) == ("a", "writer")
    assert engine.get_task(wid, "a").record.capability == "writer"
    async with asyncio.timeout(5):
        while engine.get_task(wid, "b").record.state != "FAILED":
            await asyncio.sleep(0.005)
    failed = engine.get_task(wid, "b").record
    assert failed.attempt == 2  # each failed route used an attempt; the policy bounded them
    assert failed.failure is not None
    assert (failed.failure.kind, failed.failure.type) == ("ROUTING", "NO_ROUTE_ABOVE_THRESHOLD")
    assert routes.count("unknown thing") == 2


async def test_the_cache_answers_an_intent_task_before_any_route(engine: Scheduler) -> None:
    """A cached answer needs no worker: the task completes even when its intent routes nowhere."""
    routes: list[str] = []

    def route(task: TaskSpec, rec: TaskRecord) -> tuple[str, dict[str, Any]]:
        routes.append(task.intent)
        if "unknown" in task.intent:
            raise RoutingError("nothing clears the threshold")
        return "writer", {}

    async def lookup(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
        await asyncio.sleep(0)
        return (b'"cached"', "application/json", {}) if key.prompt == "known" else None

    engine.route = route
    engine.cache_lookup = lookup
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                TaskSpec(
                    task_id="hit",
                    capability="",
                    intent="unknown thing",
                    cache_key=CacheKey(namespace="n", prompt="known"),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                ),
                TaskSpec(
                    task_id="miss",
                    capability="",
                    intent="write a poem",
                    cache_key=CacheKey(namespace="n", prompt="new"),
                ),
            )
        )
    )
    wid = record.workflow_id
    worker = FakeWorker()
    engine.connect_worker("w", ["writer"], 4, worker.assign, worker.cancel)
    await settle(engine)
    hit = engine.get_task(wid, "hit").record
    assert (hit.state, hit.output, hit.attempt) == ("COMPLETED", b'"cached"', 0)
    assert routes == ["write a poem"]  # routed after its miss only
    assert [(a.task_id, a.capability) for a in worker.assignments] == [("miss", "writer")]


async def test_a_cache_hit_completes_without_dispatch_and_a_miss_dispatches(engine: Scheduler) -> None:
    answers = {"known": (b'"cached"', "application/json", {"are.cache.tier": "EXACT"})}
    stored: list[tuple[str, bytes]] = []

    async def lookup(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
        await asyncio.sleep(0)
        return answers.get(key.prompt)

    engine.cache_lookup = lookup
    engine.cache_store = lambda key, output, content_type, usage, *_: stored.append((key.prompt, output))
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                spec("hit", cache_key=CacheKey(namespace="n", prompt="known")),
                spec("miss", cache_key=CacheKey(namespace="n", prompt="new")),
                spec("ro", cache_key=CacheKey(namespace="n", prompt="other", read_only=True)),
                spec("after", "hit"),
            )
        )
    )
    wid = record.workflow_id
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 8, worker.assign, worker.cancel)
    await settle(engine)
    hit = engine.get_task(wid, "hit").record
    assert (hit.state, hit.output, hit.attempt) == ("COMPLETED", b'"cached"', 0)
    assert sorted(a.task_id for a in worker.assignments) == ["after", "miss", "ro"]
    after = next(a for a in worker.assignments if a.task_id == "after")
    assert after.dependencies[0].output == b'"cached"'
    for task_id in ("miss", "ro"):
        await engine.complete(wid, task_id, 1, output=b"fresh", content_type="", usage=None)
    await settle(engine)
    assert stored == [("new", b"fresh")]  # read_only keys are not stored


async def test_a_task_stopped_in_its_cache_lookup_is_looked_up_after_a_restart(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """A task naming its capability, stopped while its cache lookup was in flight, is reloaded
    SCHEDULED: it must ask the cache again (here a hit, answered without dispatch), not be
    dispatched as if the cache had missed."""
    engine = Scheduler(*opened, rng=lambda: 0.0)
    asked = asyncio.Event()

    async def never(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
        asked.set()
        await asyncio.Event().wait()
        return None

    engine.cache_lookup = never
    await engine.start()
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(spec("a", cache_key=CacheKey(namespace="n", prompt="known")),))
    )
    await asyncio.wait_for(asked.wait(), 5)
    await engine.stop()  # the lookup never answered

    async def hit(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
        return b'"cached"', "application/json", {}

    restarted = Scheduler(*opened, rng=lambda: 0.0)
    restarted.cache_lookup = hit
    await restarted.start()
    worker = FakeWorker()
    restarted.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await settle(restarted)
    task = restarted.get_task(record.workflow_id, "a").record
    assert (task.state, task.output, task.attempt) == ("COMPLETED", b'"cached"', 0)
    assert worker.assignments == []
    await restarted.stop()


async def test_a_cache_answer_after_the_engine_stopped_changes_nothing(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """A lookup in flight when the engine stops may still answer: the stopped engine must not
    act on it (a restarted engine owns the task and its rows now)."""
    storage, _ = opened
    engine = Scheduler(*opened, rng=lambda: 0.0)
    asked, answer = asyncio.Event(), asyncio.Event()

    async def late(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
        asked.set()
        await answer.wait()
        return b'"cached"', "application/json", {}

    engine.cache_lookup = late
    await engine.start()
    record, _ = await engine.submit(
        WorkflowSpec(tasks=(spec("a", cache_key=CacheKey(namespace="n", prompt="known")),))
    )
    await asyncio.wait_for(asked.wait(), 5)
    await engine.stop()
    stored = storage.scan("sched_tasks", limit=10)
    answer.set()
    await settle(engine)
    assert engine.get_task(record.workflow_id, "a").record.state == "SCHEDULED"
    assert engine._txn is None
    assert storage.scan("sched_tasks", limit=10) == stored


async def test_worker_changes_reach_the_hook(engine: Scheduler) -> None:
    seen: list[tuple[int, bool, bool]] = []

    def changed(worker: WorkerHandle) -> None:
        seen.append((worker.max_concurrency - worker.free, worker.connected, worker.draining))

    engine.worker_changed = changed
    await engine.submit(WorkflowSpec(tasks=(spec("a"),)))
    fake = FakeWorker()
    handle = engine.connect_worker("w", ["cap"], 2, fake.assign, fake.cancel)
    await settle(engine)
    engine.drain_worker(handle)
    engine.disconnect_worker(handle)
    await settle(engine)
    assert seen[0] == (0, True, False)  # connected
    assert (1, True, False) in seen  # the dispatch raised its load
    assert seen[-1][1] is False  # gone


async def test_delete_takes_closed_workflows_only(engine: Scheduler) -> None:
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec("a"),)))
    wid = record.workflow_id
    with pytest.raises(WorkflowNotClosedError):
        await engine.delete(wid)
    await engine.cancel(wid, "done", "test")
    await settle(engine)
    assert await engine.delete(wid) > 0
    with pytest.raises(WorkflowNotFoundError):
        engine.get_workflow(wid)
    with pytest.raises(WorkflowNotFoundError):
        await engine.delete(wid)


async def test_fork_keeps_completed_tasks_up_to_the_cutoff(engine: Scheduler) -> None:
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec("a"), spec("b", "a"), spec("c", "b"))))
    wid = record.workflow_id
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 4, worker.assign, worker.cancel)
    await settle(engine)
    await engine.complete(wid, "a", 1, output=b"A", content_type="", usage=None)
    cutoff = engine.get_task(wid, "a").record.close_ns
    await settle(engine)
    await engine.complete(wid, "b", 1, output=b"B", content_type="", usage=None)
    await settle(engine)
    await engine.cancel(wid, "fork it", "test")
    with pytest.raises(SpecError) as unknown:
        await engine.fork(wid, "copy", cutoff_ns=cutoff, rerun_task_ids=("zz",))
    assert unknown.value.field == "rerun_task_ids[0]"
    forked = await engine.fork(wid, "copy", cutoff_ns=cutoff, source_version=2)
    assert (forked.forked_from, forked.forked_version) == (wid, 2)
    states = {t: engine.get_task("copy", t).record.state for t in "abc"}
    assert states == {"a": "COMPLETED", "b": "RUNNING", "c": "PENDING"}
    rerun = await engine.fork(wid, "again", cutoff_ns=cutoff, rerun_task_ids=("a",))
    assert rerun.workflow_id == "again"
    assert engine.get_task("again", "a").record.state == "RUNNING"


async def test_a_poll_cancelled_before_it_returns_releases_what_was_dispatched_to_it(
    engine: Scheduler,
) -> None:
    """The caller of a long poll went away after a task was dispatched to it but before the
    assignment was returned: the attempt goes back to the queue at once, uncharged (the worker
    never saw it), instead of being held until its start-to-close timeout."""
    retry = RetryPolicy(initial_interval_s=0.0, maximum_attempts=1)  # an attempt charged would fail it
    for round_ in range(20):  # until the cancel lands before the poll returns (almost always the first)
        wid = f"wf-poll-{round_}"
        poll = asyncio.create_task(engine.poll("poller", ["cap"], 1, wait_s=30.0))
        await settle(engine)  # the poller is idle, waiting
        submitting = asyncio.create_task(
            engine.submit(WorkflowSpec(workflow_id=wid, tasks=(spec("a", retry_policy=retry),)))
        )
        for _ in range(1000):  # the dispatch is made in memory before its commit
            await asyncio.sleep(0)
            with contextlib.suppress(WorkflowNotFoundError):
                if engine.get_task(wid, "a").record.state == "RUNNING":
                    break
        handed = poll.done()
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)
        await submitting
        if handed:
            continue
        await settle(engine)
        record = engine.get_task(wid, "a").record
        assert (record.state, record.attempt, record.free_attempts) == ("SCHEDULED", 1, 1), record
        worker = FakeWorker()
        engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
        await settle(engine)
        assert [(a.task_id, a.attempt) for a in worker.assignments] == [("a", 2)]
        return
    pytest.fail("every poll returned before it could be cancelled")


async def test_a_poll_answer_that_never_reached_its_caller_is_handed_back(engine: Scheduler) -> None:
    """The poll returned, but its call ended cancelled on the way (the caller's deadline passed):
    the sidecar hands the attempts back, uncharged, unless they were reported meanwhile."""
    retry = RetryPolicy(initial_interval_s=0.0, maximum_attempts=1)  # an attempt charged would fail it
    await engine.submit(WorkflowSpec(workflow_id="wf-lost", tasks=(spec("a", retry_policy=retry),)))
    await engine.submit(WorkflowSpec(workflow_id="wf-done", tasks=(spec("a"),)))
    worker_id, (lost,) = await engine.poll("poller", ["cap"], 1, wait_s=5.0)
    other_id, (done,) = await engine.poll("poller", ["cap"], 1, wait_s=5.0)
    await engine.complete(done.workflow_id, "a", done.attempt, output=b"ok", content_type="", usage=None)
    assert engine.hand_back_undelivered(other_id, [(done.workflow_id, "a", done.attempt)]) == 0
    assert engine.hand_back_undelivered("someone-else", [(lost.workflow_id, "a", lost.attempt)]) == 0
    assert engine.hand_back_undelivered(worker_id, [(lost.workflow_id, "a", lost.attempt)]) == 1
    await settle(engine)
    record = engine.get_task("wf-lost", "a").record
    assert (record.state, record.attempt, record.free_attempts) == ("SCHEDULED", 1, 1), record
    assert engine.hand_back_undelivered(worker_id, [(lost.workflow_id, "a", lost.attempt)]) == 0  # once
    _, (again,) = await engine.poll("poller", ["cap"], 1, wait_s=5.0)
    assert (again.workflow_id, again.attempt) == ("wf-lost", 2)
    assert engine.get_task("wf-done", "a").record.state == "COMPLETED"


async def test_a_poll_takes_no_attempt_after_the_commit_it_answers_with(engine: Scheduler) -> None:
    """A poll for two tasks gets one, and a second is dispatched in a later transaction, before
    the poll's caller has its answer: the poll answers with its first commit's assignments only,
    so the second must go to the next poll, not be held by this one (where no worker ever sees
    it, RUNNING until its start-to-close timeout)."""

    async def running(workflow_id: str) -> None:
        for _ in range(1000):  # the dispatch is made in memory before its commit
            await asyncio.sleep(0)
            with contextlib.suppress(WorkflowNotFoundError):
                if engine.get_task(workflow_id, "a").record.state == "RUNNING":
                    return

    poll = asyncio.create_task(engine.poll("poller", ["cap"], 2, wait_s=30.0))
    await settle(engine)  # the poller is idle, waiting
    first = asyncio.create_task(engine.submit(WorkflowSpec(workflow_id="wf-first", tasks=(spec("a"),))))
    await running("wf-first")
    second = asyncio.create_task(engine.submit(WorkflowSpec(workflow_id="wf-second", tasks=(spec("a"),))))
    await running("wf-second")
    worker_id, answer = await poll
    await asyncio.gather(first, second)
    assert [(a.workflow_id, a.attempt) for a in answer] == [("wf-first", 1)]
    record = engine.get_task("wf-second", "a").record
    assert (record.state, record.worker_id) != ("RUNNING", worker_id), "held by a poll that answered"
    _, (later,) = await engine.poll("poller", ["cap"], 2, wait_s=5.0)
    assert later.workflow_id == "wf-second"


async def test_a_poll_emptied_by_a_drain_takes_nothing_more(engine: Scheduler) -> None:
    """A drain answers idle polls at once (empty); a task submitted before such a poll's caller
    has that answer is not dispatched to it."""
    poll = asyncio.create_task(engine.poll("poller", ["cap"], 1, wait_s=30.0))
    await settle(engine)  # the poller is idle, waiting
    engine.drain()
    await engine.submit(WorkflowSpec(workflow_id="wf-drained", tasks=(spec("a"),)))  # before the poll resumes
    _, answer = await poll
    assert answer == []
    record = engine.get_task("wf-drained", "a").record
    assert (record.state, record.worker_id) == ("SCHEDULED", ""), record


async def test_a_poll_for_several_tasks_gets_all_those_of_one_commit_across_its_capabilities(
    engine: Scheduler,
) -> None:
    """One answer per poll does not mean one task: what one transaction dispatches to the poll
    (here three tasks of two capabilities, made ready by one submission) all reach
    it; what is left goes to the next poll. The poller leaves no slot behind."""
    poll = asyncio.create_task(engine.poll("poller", ["cap", "cap-2"], 3, wait_s=30.0))
    await settle(engine)  # the poller is idle, waiting
    tasks = (spec("a"), spec("b", capability="cap-2"), spec("c"), spec("d", capability="cap-2"))
    await engine.submit(WorkflowSpec(workflow_id="wf-1", tasks=tasks))
    worker_id, answer = await poll
    assert len(answer) == 3
    assert len({(a.workflow_id, a.task_id) for a in answer}) == 3
    for a in answer:
        record = engine.get_task(a.workflow_id, a.task_id).record
        assert (record.state, record.worker_id, record.attempt) == ("RUNNING", worker_id, 1)
    _, rest = await engine.poll("poller", ["cap", "cap-2"], 3, wait_s=5.0)
    assert len(rest) == 1
    assert sorted(a.task_id for a in [*answer, *rest]) == ["a", "b", "c", "d"]
    for a in [*answer, *rest]:
        await engine.complete(a.workflow_id, a.task_id, a.attempt, output=b"", content_type="", usage=None)
    assert engine.counters()["workers"] == 0  # the polls left nothing connected
    assert engine.get_pool("default")[1].running == 0
