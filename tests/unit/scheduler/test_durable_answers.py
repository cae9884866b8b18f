"""Answers that repeat an earlier request wait for that request's commit, as its own answer does.

A crash between an answer and the commit it reports undoes what the client
was told. The engine's commits are held shut here (a crash waiting to
happen): any answer given meanwhile would be lost by a SIGKILL now.
Found by ``tests/crash/test_scheduler_model_sigkill.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from are_core.scheduler import TABLES, Assignment, Scheduler, TaskSpec, WorkflowSpec
from are_core.scheduler._engine import T_WORKFLOWS
from are_core.storage import Batch, Durability, GroupCommitter, Storage


class _HeldCommitter(GroupCommitter):
    """Commits only while ``gate`` is open."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage)
        self.gate = asyncio.Event()
        self.gate.set()

    def enqueue(self, batch: Batch, *, bounded: bool = True) -> asyncio.Future[None]:
        # The scheduler enqueues its transactions (submit goes through here too).
        return asyncio.ensure_future(self._when_open(batch, bounded))

    async def _when_open(self, batch: Batch, bounded: bool) -> None:
        await self.gate.wait()
        await GroupCommitter.enqueue(self, batch, bounded=bounded)


@pytest.fixture
async def held(tmp_path: Path) -> AsyncIterator[tuple[Scheduler, Storage, _HeldCommitter]]:
    storage = Storage.open(tmp_path / "data", tables=TABLES, durability=Durability.RELAXED)
    committer = _HeldCommitter(storage)
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    await engine.start()
    yield engine, storage, committer
    committer.gate.set()
    await engine.stop()
    await committer.aclose()
    storage.close()


def _spec(task_id: str, *deps: str) -> TaskSpec:
    return TaskSpec(task_id=task_id, capability="cap", depends_on=deps)


async def _turns() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _durable(storage: Storage, wf_id: str) -> bool:
    return storage.get(T_WORKFLOWS, wf_id.encode()) is not None


async def test_a_deduplicated_submit_is_answered_once_the_first_is_durable(
    held: tuple[Scheduler, Storage, _HeldCommitter],
) -> None:
    engine, storage, committer = held
    spec = WorkflowSpec(tasks=(_spec("a"),))
    committer.gate.clear()
    first = asyncio.create_task(engine.submit(spec, request_id="r1", request_hash="h"))
    await _turns()
    second = asyncio.create_task(engine.submit(spec, request_id="r1", request_hash="h"))
    await _turns()
    assert not first.done()
    if second.done():  # answered: the workflow it names must survive a crash now
        record, deduplicated = second.result()
        assert deduplicated
        assert _durable(storage, record.workflow_id), "a retried submit was acknowledged before its commit"
    committer.gate.set()
    (a, first_dedup), (b, second_dedup) = await first, await second
    assert (a.workflow_id, first_dedup, second_dedup) == (b.workflow_id, False, True)


async def test_a_second_cancel_is_answered_once_the_cancellation_is_durable(
    held: tuple[Scheduler, Storage, _HeldCommitter],
) -> None:
    engine, _, committer = held
    record, _ = await engine.submit(WorkflowSpec(tasks=(_spec("a"),)))
    committer.gate.clear()
    first = asyncio.create_task(engine.cancel(record.workflow_id, "one", "test"))
    await _turns()
    second = asyncio.create_task(engine.cancel(record.workflow_id, "two", "test"))
    await _turns()
    assert not first.done()
    # Answered CANCELLED now, a crash would bring the workflow back RUNNING.
    assert not second.done(), "a repeated cancel was acknowledged before the cancellation's commit"
    committer.gate.set()
    assert (await first).state == (await second).state == "CANCELLED"


async def test_a_deduplicated_spawn_is_answered_once_the_first_is_durable(
    held: tuple[Scheduler, Storage, _HeldCommitter],
) -> None:
    engine, _, committer = held
    got: list[Assignment] = []
    engine.connect_worker("w", ["cap"], 4, got.extend, lambda _: None)
    record, _ = await engine.submit(WorkflowSpec(tasks=(_spec("parent"),)))
    for _ in range(1000):  # bounded (10 s): assignments reach the worker after their commit
        if got:
            break
        await asyncio.sleep(0.01)
    (parent,) = got
    kids = (_spec("kid"),)
    committer.gate.clear()
    spawn = {
        "parent_task_id": "parent",
        "parent_attempt": parent.attempt,
        "request_id": "s1",
        "request_hash": "h",
    }
    # spawn holds spawn()'s keywords, each of the right type; mypy widens the dict's values to object.
    first = asyncio.create_task(engine.spawn(record.workflow_id, kids, **spawn))  # type: ignore[arg-type]
    await _turns()
    # The same keywords as above, widened to object by mypy the same way.
    second = asyncio.create_task(engine.spawn(record.workflow_id, kids, **spawn))  # type: ignore[arg-type]
    await _turns()
    assert not first.done()
    assert not second.done(), "a retried spawn was acknowledged before the spawn's commit"
    committer.gate.set()
    assert await first == (["kid"], False)
    assert await second == (["kid"], True)


async def test_a_caller_gone_mid_commit_does_not_cancel_the_commit_others_wait_for(
    held: tuple[Scheduler, Storage, _HeldCommitter],
) -> None:
    engine, storage, committer = held
    got: list[Assignment] = []
    engine.connect_worker("w", ["cap"], 4, got.extend, lambda _: None)
    record, _ = await engine.submit(WorkflowSpec(tasks=(_spec("a"),)))
    for _ in range(1000):  # bounded (10 s): assignments reach the worker after their commit
        if got:
            break
        await asyncio.sleep(0.01)
    (a,) = got
    committer.gate.clear()
    # A completion (its worker waits for this commit to be acked) and a submit in one commit;
    # the submit's caller goes away (its RPC was cancelled) while the commit is held.
    submit = asyncio.create_task(engine.submit(WorkflowSpec(tasks=(_spec("b"),))))
    durable = engine.complete(a.workflow_id, "a", a.attempt, output=b"1", content_type="", usage=None)
    await _turns()
    submit.cancel()
    await _turns()
    assert not durable.cancelled(), "a cancelled caller cancelled the commit a worker's ack waits for"
    committer.gate.set()
    await asyncio.shield(durable)
    assert _durable(storage, record.workflow_id)
