"""The bound on the inline payload bytes that open workflows hold in memory (engine, no server).

``max_open_tasks`` counts tasks, but each task also holds its inline input
(up to 4 MiB) and, once done, its inline output (up to 4 MiB): a few hundred
submits of large inputs took gigabytes while the task count stayed tiny. The
engine keeps an exact count of those bytes (blob references hold none),
updated as workflows open (submit, fork, recovery), grow (spawn), record
outputs (a completion or a cache hit) and close, and refuses work over
``max_open_bytes`` as it does over ``max_open_tasks``: a spawn may take the
whole bound, a submit or fork 90% of it, with :class:`TooManyOpenBytesError`
(an :class:`OpenWorkLimitError`, so RESOURCE_EXHAUSTED with a retry hint).
An output is never refused: it counts, even past the bound, and new work is
refused until room comes back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from are_core.scheduler import (
    TABLES,
    CacheKey,
    Failure,
    OpenWorkLimitError,
    RetryPolicy,
    Scheduler,
    SpecError,
    TaskNotHeldError,
    TaskOrigin,
    TaskSpec,
    TooManyOpenBytesError,
    WorkflowClosedError,
    WorkflowNotFoundError,
    WorkflowSpec,
)
from are_core.scheduler import _engine as engine_module
from are_core.storage import GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec

pytestmark = pytest.mark.timeout(60)

_T_WORKFLOWS = TABLES[0]
_BLOB = "ab" * 32  # a SHA-256 in hex: the payload is a blob reference


def _failure_size(failure: Failure | None) -> int:
    size = 0
    while failure is not None:
        size += len(failure.details) + len(failure.message.encode()) + len(failure.stack_trace.encode())
        failure = failure.cause
    return size


def _exact(engine: Scheduler) -> int:
    """The engine's byte count, checked against a fresh recount of every open task's payloads.

    Inputs and outputs, and (see test_open_bytes_details.py) cache-key prompts,
    condition values, heartbeat details and the last failure with its causes.
    """
    total = 0
    for w in engine._open.values():
        held = 0
        for task in w.order:
            s, rec = task.spec, task.rec
            held += len(s.input) + len(rec.output or b"")
            held += len(s.cache_key.prompt.encode()) if s.cache_key is not None else 0
            held += sum(len(msgspec.json.encode(c.value)) for c in s.conditions if c.value is not None)
            held += len(rec.heartbeat_details or b"") + _failure_size(rec.failure)
        assert w.payload_bytes == held, w.rec.workflow_id
        total += held
    assert engine.open_bytes == total
    assert engine.counters()["open_bytes"] == total
    return total


def _sized(task_id: str, nbytes: int, *deps: str, capability: str = "cap", **fields: object) -> TaskSpec:
    return spec(task_id, *deps, capability=capability, input=b"i" * nbytes, **fields)


def _workflow(wf_id: str, *sizes: int, chain: bool = True) -> WorkflowSpec:
    """A workflow with one task per size, each holding that many input bytes (a chain, or independent)."""
    tasks = tuple(_sized(f"t{i}", n, *([f"t{i - 1}"] if chain and i else [])) for i, n in enumerate(sizes))
    return WorkflowSpec(workflow_id=wf_id, tasks=tasks)


async def _started(storage: Storage, committer: GroupCommitter, max_bytes: int) -> Scheduler:
    engine = Scheduler(storage, committer, rng=lambda: 0.0, max_open_bytes=max_bytes)
    await engine.start()
    return engine


@pytest.fixture
async def bounded(opened: tuple[Storage, GroupCommitter]) -> AsyncIterator[Scheduler]:
    """A started engine with room for 1,000 bytes of inline payloads (new work: 900)."""
    engine = await _started(*opened, max_bytes=1000)
    yield engine
    await engine.stop()


def _connect(engine: Scheduler) -> FakeWorker:
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 100, worker.assign, worker.cancel)
    return worker


def _held(worker: FakeWorker, wf_id: str, task_id: str) -> int:
    """The latest attempt of the task handed to the worker."""
    return max(a.attempt for a in worker.assignments if (a.workflow_id, a.task_id) == (wf_id, task_id))


async def test_the_count_follows_inputs_outputs_spawns_and_closes(bounded: Scheduler) -> None:
    engine = bounded
    assert (engine.max_open_bytes, engine.counters()["max_open_bytes"], _exact(engine)) == (1000, 1000, 0)
    await engine.submit(_workflow("a", 100, 50))
    assert _exact(engine) == 150
    await engine.spawn("a", (_sized("s0", 20, "t1"),))
    assert _exact(engine) == 170
    worker = _connect(engine)
    await settle(engine)
    await engine.complete("a", "t0", _held(worker, "a", "t0"), output=b"o" * 30, content_type="", usage=None)
    await settle(engine)
    assert _exact(engine) == 200  # the output arrived while the workflow is open
    await engine.complete("a", "t1", _held(worker, "a", "t1"), output=b"", content_type="", usage=None)
    await settle(engine)
    assert _exact(engine) == 200
    # The last task's output arrives and the workflow closes in the same step: all of it is freed.
    await engine.complete("a", "s0", _held(worker, "a", "s0"), output=b"o" * 500, content_type="", usage=None)
    await settle(engine)
    assert engine.get_workflow("a").record.state == "COMPLETED"
    assert _exact(engine) == 0

    once = RetryPolicy(maximum_attempts=1)
    await engine.submit(WorkflowSpec(workflow_id="failed", tasks=(_sized("x", 70, retry_policy=once),)))
    await engine.submit(_workflow("cancelled", 40, 60))
    assert _exact(engine) == 170
    *_, durable = engine.fail(
        "failed", "x", _held(worker, "failed", "x"), failure=Failure(message="no"), usage=None
    )
    await durable
    await engine.cancel("cancelled", "enough", "test")
    await settle(engine)
    assert {engine.get_workflow(w).record.state for w in ("failed", "cancelled")} == {"FAILED", "CANCELLED"}
    assert _exact(engine) == 0


async def test_blob_references_hold_no_inline_bytes(bounded: Scheduler) -> None:
    engine = bounded
    blob_input = spec("t0", input_blob_sha256=_BLOB, input_blob_size=10**9)
    await engine.submit(WorkflowSpec(workflow_id="blobs", tasks=(blob_input, spec("t1", "t0"))))
    assert _exact(engine) == 0
    worker = _connect(engine)
    await settle(engine)
    attempt = _held(worker, "blobs", "t0")
    await engine.complete(
        "blobs", "t0", attempt, output=b"", content_type="", usage=None, blob_sha256=_BLOB, blob_size=10**9
    )
    await settle(engine)
    assert _exact(engine) == 0


async def test_a_retried_task_counts_only_the_output_it_completed_with(bounded: Scheduler) -> None:
    engine = bounded
    twice = RetryPolicy(maximum_attempts=2, initial_interval_s=0.001)
    await engine.submit(
        WorkflowSpec(workflow_id="wf", tasks=(_sized("t0", 10, retry_policy=twice), spec("t1", "t0")))
    )
    worker = _connect(engine)
    await settle(engine)
    *_, durable = engine.fail("wf", "t0", 1, failure=Failure(message="again"), usage=None)
    await durable
    for _ in range(50):
        await settle(engine)
        if _held(worker, "wf", "t0") == 2:
            break
    await engine.complete("wf", "t0", 2, output=b"o" * 40, content_type="", usage=None)
    with pytest.raises(TaskNotHeldError):  # the first attempt, late: nothing is recorded
        engine.complete("wf", "t0", 1, output=b"o" * 400, content_type="", usage=None)
    await settle(engine)
    assert _exact(engine) == 55  # 10 input + 40 output + the first attempt's failure, kept ("again")

    # No public path records a second output while a workflow is open; the one place outputs
    # are recorded replaces, so a later one could never be counted on top of the first.
    task = engine._open["wf"].tasks["t0"]
    engine._set_output(task, b"o" * 15)
    assert _exact(engine) == 30
    engine._set_output(task, None)
    assert _exact(engine) == 15


async def test_a_cache_hit_output_counts(bounded: Scheduler) -> None:
    engine = bounded

    async def lookup(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
        await asyncio.sleep(0)
        return (b"c" * 120, "", {}) if key.prompt == "known" else None

    engine.cache_lookup = lookup
    cached = _sized("hit", 5, cache_key=CacheKey(namespace="n", prompt="known"))
    await engine.submit(WorkflowSpec(workflow_id="wf", tasks=(cached, spec("after", "hit"))))
    for _ in range(50):
        await settle(engine)
        if engine.get_task("wf", "hit").record.state == "COMPLETED":
            break
    assert _exact(engine) == 130  # 5 input + 120 output + the 5-byte prompt "known"


async def test_new_work_over_the_byte_share_is_refused_changing_nothing(bounded: Scheduler) -> None:
    engine = bounded
    await engine.submit(_workflow("first", 500))
    await engine.submit(_workflow("filler", 300))
    assert _exact(engine) == 800
    before = engine.counters()
    with pytest.raises(TooManyOpenBytesError) as caught:
        await engine.submit(_workflow("second", 50, 50, 50), request_id="req", request_hash="h")
    error = caught.value
    assert isinstance(error, OpenWorkLimitError)  # mapped alike: RESOURCE_EXHAUSTED with RetryInfo
    assert (error.reason, error.retry_after_s > 0) == ("RESOURCE_LIMIT", True)
    assert error.metadata == {
        "limit": "max_open_bytes",
        "max_open_bytes": "1000",
        "open_bytes": "800",
        "incoming_bytes": "150",
        "share": "new_work",
        "share_limit": "900",
    }
    assert "bytes of inline payloads" in str(error)
    with pytest.raises(WorkflowNotFoundError):
        engine.get_workflow("second")
    assert engine._storage.get(_T_WORKFLOWS, b"second") is None
    assert engine.check_request("req", "h") is None
    after = engine.counters()
    assert (after["open_bytes_refused"], after["open_tasks_refused"]) == (
        before["open_bytes_refused"] + 1,
        before["open_tasks_refused"],
    )

    # A running workflow may spawn into the reserve, up to the whole bound.
    await engine.spawn("first", (_sized("s0", 150),))
    assert _exact(engine) == 950
    with pytest.raises(TooManyOpenBytesError) as spawned:
        await engine.spawn("first", (_sized("s1", 51),))
    assert spawned.value.metadata["share"] == "all"
    assert spawned.value.metadata["share_limit"] == "1000"
    assert spawned.value.retry_after_s < error.retry_after_s
    assert [t.record.task_id for t in engine.list_tasks("first", frozenset(), 0, 100)[0]] == ["t0", "s0"]
    await engine.spawn("first", (_sized("s1", 50),))
    assert _exact(engine) == 1000

    await engine.cancel("filler", "make room", "test")
    await settle(engine)
    assert _exact(engine) == 700
    await engine.submit(_workflow("second", 50, 50, 50), request_id="req", request_hash="h")
    assert _exact(engine) == 850


async def test_a_workflow_larger_than_the_byte_bound_is_invalid_and_one_within_it_fits_alone(
    bounded: Scheduler,
) -> None:
    engine = bounded
    with pytest.raises(SpecError) as caught:
        await engine.submit(_workflow("huge", 600, 401))
    assert (caught.value.reason, caught.value.field, caught.value.limit) == (
        "LIMIT_EXCEEDED",
        "spec.tasks",
        1000,
    )
    assert "max_open_bytes" in caught.value.message
    # Over the new-work share (900) but within the bound: admitted while nothing else holds any bytes.
    await engine.submit(_workflow("large", 600, 350))
    assert _exact(engine) == 950
    with pytest.raises(SpecError) as spawned:  # 950 + 60 could never fit, however much else closes
        await engine.spawn("large", (_sized("s0", 60),))
    assert (spawned.value.reason, spawned.value.field) == ("LIMIT_EXCEEDED", "tasks")
    with pytest.raises(TooManyOpenBytesError):  # held now: a new workflow waits
        await engine.submit(_workflow("small", 1))
    with pytest.raises(TooManyOpenBytesError):  # even one adding none, while the count is over the share
        await engine.submit(_workflow("empty", 0))
    assert engine.get_workflow("large").record.state == "RUNNING"
    assert _exact(engine) == 950


async def test_outputs_are_never_refused_and_count_past_the_bound(bounded: Scheduler) -> None:
    engine = bounded
    await engine.submit(_workflow("big", 300, 100))
    await engine.submit(_workflow("other", 0, 0))
    worker = _connect(engine)
    await settle(engine)
    await engine.complete(
        "big", "t0", _held(worker, "big", "t0"), output=b"o" * 900, content_type="", usage=None
    )
    await settle(engine)
    assert engine.get_task("big", "t0").record.state == "COMPLETED"  # the work is done and paid for
    assert _exact(engine) == 1300  # past the bound of 1,000
    with pytest.raises(TooManyOpenBytesError) as submitted:  # even new work holding no bytes waits
        await engine.submit(_workflow("new", 0))
    assert submitted.value.metadata["open_bytes"] == "1300"
    assert submitted.value.metadata["incoming_bytes"] == "0"
    with pytest.raises(TooManyOpenBytesError):  # and spawns, until the count is back within the bound
        await engine.spawn("other", (spec("s0"),))
    with pytest.raises(SpecError):  # the workflow alone is past the bound: it can never grow
        await engine.spawn("big", (spec("s0"),))
    await engine.complete(
        "big", "t1", _held(worker, "big", "t1"), output=b"o" * 10, content_type="", usage=None
    )
    await settle(engine)
    assert engine.get_workflow("big").record.state == "COMPLETED"
    assert _exact(engine) == 0
    await engine.submit(_workflow("new", 0))
    await engine.spawn("other", (spec("s0"),))


async def test_a_fork_counts_inputs_and_kept_outputs_and_is_refused_over_the_share(
    bounded: Scheduler,
) -> None:
    engine = bounded
    await engine.submit(_workflow("source", 100, 200))
    worker = _connect(engine)
    await settle(engine)
    await engine.complete("source", "t0", 1, output=b"o" * 50, content_type="", usage=None)
    await settle(engine)
    await engine.complete(
        "source", "t1", _held(worker, "source", "t1"), output=b"o" * 80, content_type="", usage=None
    )
    await settle(engine)
    assert _exact(engine) == 0
    # Every task kept: the fork opens with 430 bytes and closes in the same step.
    await engine.fork("source", "kept", cutoff_ns=2**62)
    assert engine.get_workflow("kept").record.state == "COMPLETED"
    assert _exact(engine) == 0
    # t1 runs again: its output is not kept (t0's is).
    await engine.fork("source", "rerun", cutoff_ns=2**62, rerun_task_ids=("t1",))
    assert _exact(engine) == 350
    await engine.submit(_workflow("filler", 400))
    assert _exact(engine) == 750
    with pytest.raises(TooManyOpenBytesError) as checked:
        engine.check_fork("source", "refused", ("t1",))
    assert (checked.value.metadata["incoming_bytes"], checked.value.metadata["share"]) == ("350", "new_work")
    with pytest.raises(TooManyOpenBytesError):
        await engine.fork("source", "refused", cutoff_ns=2**62, rerun_task_ids=("t0",))
    with pytest.raises(WorkflowNotFoundError):
        engine.get_workflow("refused")
    assert _exact(engine) == 750
    await engine.cancel("filler", "make room", "test")
    await settle(engine)
    await engine.fork("source", "refused", cutoff_ns=2**62, rerun_task_ids=("t0",))  # both run again
    assert _exact(engine) == 650


async def test_a_restart_recounts_what_it_loads_and_never_refuses_it(
    opened: tuple[Storage, GroupCommitter], caplog: pytest.LogCaptureFixture
) -> None:
    storage, committer = opened
    engine = await _started(storage, committer, max_bytes=10_000)
    for i in range(3):
        await engine.submit(_workflow(f"wf{i}", 200, 100))
    await engine.spawn("wf0", (_sized("s0", 40),))
    worker = _connect(engine)
    await settle(engine)
    await engine.complete(
        "wf1", "t0", _held(worker, "wf1", "t0"), output=b"o" * 70, content_type="", usage=None
    )
    await engine.submit(_workflow("closed", 500))
    await engine.cancel("closed", "", "test")
    await settle(engine)
    assert _exact(engine) == 1010
    await engine.stop()

    same = await _started(storage, committer, max_bytes=10_000)
    assert _exact(same) == 1010
    await same.stop()

    with caplog.at_level(logging.WARNING, logger="are.scheduler"):
        lowered = await _started(storage, committer, max_bytes=500)
    assert any("max_open_bytes" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    try:
        assert _exact(lowered) == 1010  # all loaded and served, over the bound
        with pytest.raises(TooManyOpenBytesError):
            await lowered.submit(_workflow("new", 1))
        for wf_id in ("wf0", "wf1", "wf2"):
            await lowered.cancel(wf_id, "", "test")
        await settle(lowered)
        assert _exact(lowered) == 0
        await lowered.submit(_workflow("new", 450))  # the new-work share of 500
        assert _exact(lowered) == 450
    finally:
        await lowered.stop()


async def _random_step(
    engine: Scheduler, rng: random.Random, worker: FakeWorker, taken: set[tuple[str, str, int]], step: int
) -> str:
    """One seeded random operation; returns the id of the workflow it created, if any.

    ``taken`` holds the attempts already reported, so that each is reported once.
    """
    once = RetryPolicy(maximum_attempts=1)
    open_ids = sorted(engine._open)
    roll = rng.random()
    if roll < 0.25 or not open_ids:
        tasks = tuple(
            _sized(
                f"t{i}",
                rng.choice((0, 10, 200, 700)),
                *([f"t{i - 1}"] if i and rng.random() < 0.5 else []),
                retry_policy=once,
            )
            for i in range(rng.randint(1, 5))
        )
        await engine.submit(WorkflowSpec(workflow_id=f"wf{step}", tasks=tasks))
        return f"wf{step}"
    if roll < 0.4:
        size = rng.choice((0, 50, 400))
        await engine.spawn(rng.choice(open_ids), (_sized(f"s{step}", size, retry_policy=once),))
    elif roll < 0.8:
        live = [a for a in worker.assignments if (a.workflow_id, a.task_id, a.attempt) not in taken]
        if live:
            a = rng.choice(live)
            taken.add((a.workflow_id, a.task_id, a.attempt))
            if rng.random() < 0.8:
                output = b"o" * rng.choice((0, 30, 300, 900))
                await engine.complete(
                    a.workflow_id, a.task_id, a.attempt, output=output, content_type="", usage=None
                )
            else:
                *_, durable = engine.fail(
                    a.workflow_id, a.task_id, a.attempt, failure=Failure(message="x"), usage=None
                )
                await durable
    elif roll < 0.9:
        await engine.cancel(rng.choice(open_ids), "", "test")
    else:
        await engine.fork(rng.choice(open_ids), f"wf{step}", cutoff_ns=2**62)
        return f"wf{step}"
    return ""


async def test_the_byte_count_stays_exact_through_random_operations(
    opened: tuple[Storage, GroupCommitter],
) -> None:
    """Submits, spawns, completions with outputs, failures, cancellations and forks in a seeded order."""
    engine = await _started(*opened, max_bytes=4000)
    rng = random.Random(11)
    worker = _connect(engine)
    created: list[str] = []
    taken: set[tuple[str, str, int]] = set()
    refused = 0
    try:
        for step in range(300):
            try:
                created.append(await _random_step(engine, rng, worker, taken, step))
            except OpenWorkLimitError:
                refused += 1
            except (WorkflowClosedError, TaskNotHeldError, SpecError):
                pass
            await settle(engine)
            _exact(engine)
        states = {engine.get_workflow(wf_id).record.state for wf_id in created if wf_id}
        assert states >= {"RUNNING", "COMPLETED", "FAILED", "CANCELLED"}  # every way out was taken
        assert any(engine.get_workflow(wf_id).record.forked_from for wf_id in created if wf_id)
        assert refused and engine.counters()["open_bytes_refused"] > 0  # and the bound was reached
    finally:
        await engine.stop()


async def test_recently_closed_workflows_are_bounded_by_their_payload_bytes_too(
    opened: tuple[Storage, GroupCommitter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed workflows kept in memory are bounded by the payload bytes they hold as well.

    Bounded by 1,024 workflows and 100,000 tasks alone, they could hold every
    task's 4 MiB output: the oldest now go once their payload bytes pass the
    bound too, and still read back from storage.
    """
    monkeypatch.setattr(engine_module, "_RECENT_CLOSED_BYTES", 250)
    engine = await _started(*opened, max_bytes=10_000)
    try:
        for i in range(6):
            await engine.submit(_workflow(f"c{i}", 50, 50))
            await engine.cancel(f"c{i}", "enough", "test")
            await settle(engine)
            held = sum(w.payload_bytes for w in engine._recent.values())
            assert engine.counters()["recent_closed_bytes"] == held
            assert held <= 250
        assert list(engine._recent) == ["c4", "c5"]  # 200 bytes: a third would pass 250
        assert engine.get_workflow("c0").record.state == "CANCELLED"  # read back from storage
        await engine.delete("c5")
        assert engine.counters()["recent_closed_bytes"] == 100
        await engine.submit(_workflow("big", 300))  # larger than the bound alone: kept, as the latest
        await engine.cancel("big", "enough", "test")
        await settle(engine)
        assert list(engine._recent) == ["big"]
        assert engine.counters()["recent_closed_bytes"] == 300
    finally:
        await engine.stop()
