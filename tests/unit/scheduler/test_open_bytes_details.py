"""What open tasks hold beyond inputs and outputs counts toward ``max_open_bytes`` (engine, no server).

A task also holds, in memory until its workflow closes, the last heartbeat
details its worker reported (up to 1 MiB, kept for the next attempt), the last
failure recorded for it with its causes (details, message and stack trace:
up to about 1 MiB, kept even once a retry completes), and in its spec a
cache-key prompt (up to 1 MiB) and condition values (16 x 64 KiB of JSON).
They count in :attr:`Scheduler.open_bytes` exactly, as outputs do: a
heartbeat or failure is never refused for the bound (the work is under way or
done) but counts even past it, so new work waits; a replaced one replaces its
bytes, an empty heartbeat frees them, and a restart recounts the same total.
Each check compares the engine's count with a fresh recount written here.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from are_core.scheduler import (
    CacheKey,
    Condition,
    Failure,
    OpenWorkLimitError,
    RetryPolicy,
    Scheduler,
    SpecError,
    TaskNotHeldError,
    TaskSpec,
    TooManyOpenBytesError,
    WorkflowClosedError,
    WorkflowSpec,
)
from are_core.storage import GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec
from tests.unit.scheduler.test_open_bytes import _connect, _exact, _held, _started

pytestmark = pytest.mark.timeout(60)

_RETRIED = RetryPolicy(maximum_attempts=3, initial_interval_s=0.001)


def _task(task_id: str, nbytes: int, *deps: str, **fields: Any) -> TaskSpec:
    return spec(task_id, *deps, input=b"i" * nbytes, **fields)


async def _attempt(engine: Scheduler, worker: FakeWorker, wf_id: str, task_id: str, attempt: int) -> None:
    """Waits (a bounded number of event-loop turns, no clock) until ``attempt`` is handed to the worker."""
    for _ in range(100):
        await settle(engine)
        if any(
            (a.workflow_id, a.task_id, a.attempt) == (wf_id, task_id, attempt) for a in worker.assignments
        ):
            return
    raise AssertionError(f"attempt {attempt} of {wf_id}/{task_id} was never dispatched")


async def _fail(engine: Scheduler, wf_id: str, task_id: str, attempt: int, failure: Failure) -> None:
    *_, durable = engine.fail(wf_id, task_id, attempt, failure=failure, usage=None)
    await durable
    await settle(engine)


async def test_heartbeat_details_are_counted_replaced_and_freed_and_never_refused(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    engine = await _started(*opened, max_bytes=1000)
    try:
        await engine.submit(
            WorkflowSpec(workflow_id="a", tasks=(_task("t0", 10, retry_policy=_RETRIED), spec("t1", "t0")))
        )
        worker = _connect(engine)
        await settle(engine)
        assert _exact(engine) == 10
        assert engine.heartbeat("a", "t0", 1, b"h" * 300, "text/plain") is False
        assert _exact(engine) == 310
        engine.heartbeat("a", "t0", 1, None, "")  # a heartbeat without details keeps the last ones
        assert _exact(engine) == 310
        engine.heartbeat("a", "t0", 1, b"h" * 100, "")  # replaced, not added
        assert _exact(engine) == 110
        engine.heartbeat("a", "t0", 1, b"", "")  # empty details free them
        assert _exact(engine) == 10

        # Past the bound: the attempt is under way, so it is counted, and new work waits.
        assert engine.heartbeat("a", "t0", 1, b"h" * 2000, "") is False
        assert _exact(engine) == 2010
        with pytest.raises(TooManyOpenBytesError) as refused:
            await engine.submit(WorkflowSpec(workflow_id="new", tasks=(spec("x"),)))
        assert refused.value.metadata["open_bytes"] == "2010"

        # The details outlive their attempt (the next one is handed them), so they still count.
        await _fail(engine, "a", "t0", 1, Failure(message=""))
        assert _exact(engine) == 2010
        await _attempt(engine, worker, "a", "t0", 2)
        second = next(a for a in worker.assignments if (a.task_id, a.attempt) == ("t0", 2))
        assert second.last_heartbeat_details == b"h" * 2000
        engine.heartbeat("a", "t0", 2, b"h" * 5, "")
        assert _exact(engine) == 15
        await engine.complete("a", "t0", 2, output=b"o" * 20, content_type="", usage=None)
        await settle(engine)
        assert _exact(engine) == 35  # kept on the completed task until the workflow closes
        await engine.cancel("a", "", "test")
        await settle(engine)
        assert _exact(engine) == 0
        await engine.submit(WorkflowSpec(workflow_id="new", tasks=(spec("x"),)))
    finally:
        await engine.stop()


async def test_failures_and_their_causes_count_and_a_later_attempts_failure_replaces_them(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    engine = await _started(*opened, max_bytes=10_000)
    try:
        await engine.submit(
            WorkflowSpec(workflow_id="wf", tasks=(_task("t0", 10, retry_policy=_RETRIED), spec("t1", "t0")))
        )
        worker = _connect(engine)
        await settle(engine)
        root = Failure(message="root", stack_trace="t" * 7)
        cause = Failure(message="c" * 5, details=b"x" * 100, cause=root)
        first = Failure(message="é" * 50, stack_trace="s" * 30, details=b"d" * 200, cause=cause)
        await _fail(engine, "wf", "t0", 1, first)
        # 10 input + (100 + 30 + 200) + (5 + 100) + (4 + 7): UTF-8 bytes, every level of the chain.
        assert _exact(engine) == 456
        await _attempt(engine, worker, "wf", "t0", 2)
        await _fail(engine, "wf", "t0", 2, Failure(message="m" * 3, details=b"d" * 40))
        assert _exact(engine) == 53  # the record keeps the last failure: replaced, not added
        await _attempt(engine, worker, "wf", "t0", 3)
        await engine.complete("wf", "t0", 3, output=b"o" * 60, content_type="", usage=None)
        await settle(engine)
        assert engine.get_task("wf", "t0").record.failure is not None
        assert _exact(engine) == 113  # kept once a retry completes, beside the output
        await engine.cancel("wf", "", "test")
        await settle(engine)
        assert _exact(engine) == 0
    finally:
        await engine.stop()


async def test_a_failure_is_never_refused_and_counts_past_the_bound(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    engine = await _started(*opened, max_bytes=1000)
    try:
        once = RetryPolicy(maximum_attempts=1)
        await engine.submit(
            WorkflowSpec(workflow_id="big", tasks=(_task("t0", 100, retry_policy=once), _task("t1", 0)))
        )
        worker = _connect(engine)
        await settle(engine)
        *_, durable = engine.fail(
            "big",
            "t0",
            _held(worker, "big", "t0"),
            failure=Failure(message="boom", details=b"d" * 1500),
            usage=None,
        )
        await durable
        await settle(engine)
        assert engine.get_task("big", "t0").record.state == "FAILED"
        assert _exact(engine) == 1604
        with pytest.raises(TooManyOpenBytesError):
            await engine.submit(WorkflowSpec(workflow_id="new", tasks=(spec("x"),)))
        with pytest.raises(SpecError):  # the workflow alone is past the bound: it can never grow
            await engine.spawn("big", (spec("s0"),))
        await engine.cancel("big", "", "test")
        await settle(engine)
        assert _exact(engine) == 0
        await engine.submit(WorkflowSpec(workflow_id="new", tasks=(spec("x"),)))
    finally:
        await engine.stop()


async def test_failures_the_engine_records_count_too(opened: tuple[Storage, GroupCommitter]) -> None:
    """A lost worker's WORKER_LOST and a rejection, whose message carries the approver's comment."""
    engine = await _started(*opened, max_bytes=100_000)
    try:
        await engine.submit(
            WorkflowSpec(
                workflow_id="wf",
                tasks=(_task("t0", 10, retry_policy=_RETRIED), _task("gate", 5, requires_approval=True)),
            )
        )
        worker = FakeWorker()
        handle = engine.connect_worker("w", ["cap"], 10, worker.assign, worker.cancel)
        await settle(engine)
        assert _exact(engine) == 15
        engine.disconnect_worker(handle)
        await settle(engine)
        lost = engine.get_task("wf", "t0").record.failure
        assert lost is not None and lost.kind == "WORKER_LOST"
        assert _exact(engine) == 15 + len(lost.message)
        await engine.resolve_approval("wf", "gate", approve=False, approver="me", comment="c" * 500)
        rejected = engine.get_task("wf", "gate").record.failure
        assert rejected is not None and "c" * 500 in rejected.message
        assert _exact(engine) == 15 + len(lost.message) + len(rejected.message)
        await engine.cancel("wf", "", "test")
        await settle(engine)
        assert _exact(engine) == 0
    finally:
        await engine.stop()


async def test_cache_key_prompts_and_condition_values_count_at_submit_spawn_and_fork(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    engine = await _started(*opened, max_bytes=1000)
    try:
        value = "v" * 100  # 102 bytes of JSON
        gated = Condition(task_id="t0", pointer="/k", operator="EQUAL", value=value)
        prompted = _task("t0", 10, cache_key=CacheKey(namespace="n", prompt="p" * 300))
        await engine.submit(
            WorkflowSpec(workflow_id="wf", tasks=(prompted, spec("t1", "t0", conditions=(gated,))))
        )
        assert _exact(engine) == 412
        with pytest.raises(TooManyOpenBytesError) as refused:  # 412 + 600 is past the new-work share
            await engine.submit(
                WorkflowSpec(
                    workflow_id="second",
                    tasks=(spec("x", cache_key=CacheKey(namespace="n", prompt="q" * 600)),),
                )
            )
        assert refused.value.metadata["incoming_bytes"] == "600"
        with pytest.raises(SpecError) as alone:  # 412 + 600 UTF-8 bytes could never fit in one workflow
            await engine.spawn("wf", (spec("s0", cache_key=CacheKey(namespace="n", prompt="é" * 300)),))
        assert (alone.value.reason, alone.value.limit) == ("LIMIT_EXCEEDED", 1000)
        await engine.spawn("wf", (spec("s0", cache_key=CacheKey(namespace="n", prompt="é" * 250)),))
        assert _exact(engine) == 912
        worker = _connect(engine)
        await settle(engine)
        await engine.complete(
            "wf", "t0", _held(worker, "wf", "t0"), output=b"o" * 8, content_type="", usage=None
        )
        await engine.complete("wf", "s0", _held(worker, "wf", "s0"), output=b"", content_type="", usage=None)
        await settle(engine)
        assert engine.get_workflow("wf").record.state != "RUNNING"
        assert _exact(engine) == 0
        # A fork holds its own copies of the specs (412 + 500) and the outputs it keeps: rerunning
        # s0 keeps t0's (8), so 920 with the 1 byte open is past the new-work share (900).
        await engine.submit(WorkflowSpec(workflow_id="filler", tasks=(_task("x", 1),)))
        with pytest.raises(TooManyOpenBytesError) as forked:
            engine.check_fork("wf", "fork", ("s0",))
        assert forked.value.metadata["incoming_bytes"] == "920"
        await engine.cancel("filler", "", "test")
        await engine.fork("wf", "fork", cutoff_ns=2**62, rerun_task_ids=("t0",))  # s0's empty output kept
        assert _exact(engine) == 912
    finally:
        await engine.stop()


async def test_a_restart_recounts_heartbeat_details_and_failures(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    storage, committer = opened
    engine = await _started(storage, committer, max_bytes=100_000)
    for wf_id in ("wf0", "wf1"):
        await engine.submit(
            WorkflowSpec(
                workflow_id=wf_id,
                tasks=(
                    _task(
                        "t0", 10, retry_policy=_RETRIED, cache_key=CacheKey(namespace="n", prompt="p" * 20)
                    ),
                    _task("t1", 5, retry_policy=_RETRIED),
                ),
            )
        )
    _connect(engine)
    await settle(engine)
    engine.heartbeat("wf0", "t0", 1, b"h" * 300, "")
    engine.heartbeat("wf0", "t1", 1, b"h" * 40, "")
    await _fail(
        engine, "wf1", "t0", 1, Failure(message="m", details=b"d" * 200, cause=Failure(message="c" * 9))
    )
    engine.heartbeat("wf1", "t1", 1, b"h" * 70, "")
    await engine.complete("wf1", "t1", 1, output=b"o" * 30, content_type="", usage=None)
    await settle(engine)
    total = _exact(engine)
    assert total == 2 * (10 + 20 + 5) + 300 + 40 + (1 + 200 + 9) + 70 + 30
    await engine.stop()

    same = await _started(storage, committer, max_bytes=100_000)
    try:
        assert _exact(same) == total  # running attempts are re-dispatched, their details kept
    finally:
        await same.stop()
    lowered = await _started(storage, committer, max_bytes=500)
    try:
        assert _exact(lowered) == total  # loaded over the bound, and served
        with pytest.raises(TooManyOpenBytesError):
            await lowered.submit(WorkflowSpec(workflow_id="new", tasks=(spec("x"),)))
    finally:
        await lowered.stop()


def _random_failure(rng: random.Random) -> Failure:
    cause = (
        Failure(message="é" * rng.choice((0, 3)), details=b"c" * rng.choice((0, 60)))
        if rng.random() < 0.3
        else None
    )
    return Failure(
        message=rng.choice(("", "x", "é" * 20)),
        details=b"d" * rng.choice((0, 50, 500)),
        stack_trace="s" * rng.choice((0, 40)),
        cause=cause,
    )


def _random_spec(rng: random.Random, task_id: str, *deps: str) -> TaskSpec:
    fields: dict[str, Any] = {"retry_policy": RetryPolicy(maximum_attempts=2, initial_interval_s=0.001)}
    if rng.random() < 0.2:
        fields["cache_key"] = CacheKey(namespace="n", prompt="p" * rng.choice((1, 100, 400)))
    if deps and rng.random() < 0.2:
        fields["conditions"] = (
            Condition(task_id=deps[0], pointer="", operator="NOT_EQUAL", value=["v"] * rng.randint(0, 30)),
        )
    if rng.random() < 0.05:
        fields["requires_approval"] = True
    return _task(task_id, rng.choice((0, 10, 200, 700)), *deps, **fields)


async def _random_step(
    engine: Scheduler, rng: random.Random, worker: FakeWorker, taken: set[tuple[str, str, int]], step: int
) -> str:
    """One seeded random operation; returns the id of the workflow it created, if any."""
    open_ids = sorted(engine._open)
    live = [a for a in worker.assignments if (a.workflow_id, a.task_id, a.attempt) not in taken]
    roll = rng.random()
    if roll < 0.2 or not open_ids:
        tasks = tuple(
            _random_spec(rng, f"t{i}", *([f"t{i - 1}"] if i and rng.random() < 0.5 else []))
            for i in range(rng.randint(1, 4))
        )
        await engine.submit(WorkflowSpec(workflow_id=f"wf{step}", tasks=tasks))
        return f"wf{step}"
    if roll < 0.3:
        await engine.spawn(rng.choice(open_ids), (_random_spec(rng, f"s{step}"),))
    elif roll < 0.5:
        if live:
            a = rng.choice(live)
            details = rng.choice((None, b"", b"h" * 10, b"h" * 300, b"h" * 900))
            engine.heartbeat(a.workflow_id, a.task_id, a.attempt, details, "")
    elif roll < 0.8:
        if live:
            a = rng.choice(live)
            taken.add((a.workflow_id, a.task_id, a.attempt))
            if rng.random() < 0.5:
                output = b"o" * rng.choice((0, 30, 300))
                await engine.complete(
                    a.workflow_id, a.task_id, a.attempt, output=output, content_type="", usage=None
                )
            else:
                await _fail(engine, a.workflow_id, a.task_id, a.attempt, _random_failure(rng))
    elif roll < 0.85:
        gates = [
            (w.rec.workflow_id, t.rec.task_id)
            for w in engine._open.values()
            for t in w.order
            if t.rec.state == "AWAITING_APPROVAL"
        ]
        if gates:
            wf_id, task_id = rng.choice(gates)
            approve, comment = rng.random() < 0.5, "c" * rng.choice((0, 200))
            await engine.resolve_approval(wf_id, task_id, approve=approve, approver="me", comment=comment)
    elif roll < 0.93:
        await engine.cancel(rng.choice(open_ids), "", "test")
    else:
        await engine.fork(rng.choice(open_ids), f"wf{step}", cutoff_ns=2**62)
        return f"wf{step}"
    return ""


async def test_the_byte_count_stays_exact_through_random_heartbeats_failures_and_a_restart(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """Submits, spawns, heartbeats, completions, failures, approvals, cancellations and forks, seeded."""
    storage, committer = opened
    engine = await _started(storage, committer, max_bytes=6000)
    rng = random.Random(7)
    worker = _connect(engine)
    taken: set[tuple[str, str, int]] = set()
    refused = 0
    seen = {"heartbeat": 0, "failure": 0}
    try:
        for step in range(400):
            if step == 200:  # a restart recounts the same total from storage
                before = _exact(engine)
                await engine.stop()
                engine = await _started(storage, committer, max_bytes=6000)
                assert _exact(engine) == before
                worker = _connect(engine)
                taken = set()
            try:
                await _random_step(engine, rng, worker, taken, step)
            except OpenWorkLimitError:
                refused += 1
            except (WorkflowClosedError, TaskNotHeldError, SpecError):
                pass
            await settle(engine)
            _exact(engine)
            for w in engine._open.values():
                for task in w.order:
                    seen["heartbeat"] += bool(task.rec.heartbeat_details)
                    seen["failure"] += task.rec.failure is not None and bool(task.rec.failure.details)
        assert refused and engine.counters()["open_bytes_refused"] > 0  # the bound was reached
        assert all(seen.values()), seen  # open tasks held heartbeat details and failure details
    finally:
        await engine.stop()
