"""The scheduler under the group committer's backpressure (engine, no server).

The scheduler changes its memory, then commits the loop turn's transaction;
a commit that fails stops the sidecar (``commit_failed``: memory is ahead of
LMDB and there is no rollback). Its transactions went to the committer shared
with the cache, state and trace, through ``submit``, so a refusal for
backpressure (pending writes over ``max_pending_bytes`` or
``max_pending_mutations``, say while large cache stores commit), or one turn
whose batch alone was over a bound (two large submits in one turn), stopped
the whole sidecar. Now its transactions are admitted whatever the bounds,
and backpressure applies where work enters: :meth:`Scheduler.check_room`,
which SubmitWorkflow and SpawnTasks call first, refuses with nothing changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from are_core.scheduler import TABLES, Scheduler, TaskSpec, WorkflowSpec
from are_core.storage import Durability, GroupCommitter, Storage, StorageBusyError, u64_key
from tests.unit.storage._held import writer_held

pytestmark = pytest.mark.timeout(30)

BOUND = 64 * 1024  # the committer's max_pending_bytes in these tests
Small = tuple[Storage, GroupCommitter, Scheduler, list[BaseException]]


@pytest.fixture
async def small(
    tmp_path: Path,
) -> AsyncIterator[tuple[Storage, GroupCommitter, Scheduler, list[BaseException]]]:
    """A scheduler over a committer with a 64 KiB pending bound; the commit failures it reported."""
    storage = Storage.open(tmp_path / "data", tables=(*TABLES, "kv"), durability=Durability.RELAXED)
    committer = GroupCommitter(storage, max_pending_bytes=BOUND)
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    failures: list[BaseException] = []
    engine.commit_failed = failures.append
    await engine.start()
    yield storage, committer, engine, failures
    await engine.stop()
    await committer.aclose()
    storage.close()


def _spec(workflow_id: str, input_bytes: int) -> WorkflowSpec:
    return WorkflowSpec(
        workflow_id=workflow_id, tasks=(TaskSpec(task_id="t", capability="cap", input=b"x" * input_bytes),)
    )


async def test_a_transaction_over_the_pending_bound_alone_commits(
    small: Small,
) -> None:
    """Two submits in one loop turn share a transaction over the byte bound: it commits."""
    storage, _, engine, failures = small
    await asyncio.gather(engine.submit(_spec("a", 40 * 1024)), engine.submit(_spec("b", 40 * 1024)))
    assert failures == []
    assert {engine.get_workflow(w).record.state for w in ("a", "b")} == {"RUNNING"}
    with storage.read() as view:
        assert all(view.get("sched_workflows", w) is not None for w in (b"a", b"b"))


async def test_a_transaction_commits_while_other_writes_fill_the_bound_and_new_work_is_refused(
    small: Small,
) -> None:
    storage, committer, engine, failures = small
    async with writer_held(committer):
        filler = committer.enqueue(storage.batch().put("kv", u64_key(1), b"y" * (BOUND - 1024)))
        with pytest.raises(StorageBusyError):
            engine.check_room(1, 4096)  # what SubmitWorkflow asks first: refused, nothing changed
        submitted = asyncio.ensure_future(engine.submit(_spec("c", 8 * 1024)))  # past the check
        await asyncio.sleep(0.05)
        assert not submitted.done()  # waiting for its commit, behind the held writer
    await asyncio.gather(filler, submitted)
    assert failures == []
    assert engine.get_workflow("c").record.state == "RUNNING"
    engine.check_room(1, 4096)  # drained: room again
