"""A task spec the storage codec cannot encode leaves nothing behind (submit and spawn).

The sidecar refuses such values first (a condition value's integer past 64
bits, a lone surrogate); the engine must still not leave the rows of the
tasks before the failing one in the batch of the loop's turn, nor the
submit's other rows (its time index, request id, the caller's staged rows),
nor anything in memory: it encodes every spec before it stages anything and
refuses with a SpecError naming the task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from are_core.scheduler import (
    TABLES,
    Condition,
    Scheduler,
    SpecError,
    TaskSpec,
    WorkflowNotFoundError,
    WorkflowSpec,
)
from are_core.storage import Batch, Durability, GroupCommitter, Storage
from tests.unit.scheduler.test_engine import settle, spec

_BIG = 123456789012345678901234567890  # valid JSON; msgpack stores ints in -2**63 .. 2**64-1


def _unstorable(task_id: str, *deps: str) -> TaskSpec:
    condition = Condition(task_id=deps[0], pointer="/x", operator="EQUAL", value=_BIG)
    return spec(task_id, *deps, conditions=(condition,))


_EXTRA = "extra"  # a caller's table, as the state document's rows that a submit stages


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[Storage, GroupCommitter]]:
    storage = Storage.open(tmp_path / "data", tables=(*TABLES, _EXTRA), durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    yield storage, committer
    await committer.aclose()
    storage.close()


def _rows(storage: Storage) -> dict[str, list[tuple[bytes, bytes]]]:
    return {table: storage.scan(table, limit=1000) for table in (*TABLES, _EXTRA)}


async def test_a_submit_whose_spec_cannot_be_stored_stores_and_remembers_nothing(
    stores: tuple[Storage, GroupCommitter],
) -> None:
    storage, committer = stores
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    await engine.start()
    try:
        await settle(engine)
        before = _rows(storage)
        staged: list[str] = []

        def stage(batch: Batch, workflow_id: str) -> None:  # the initial state document's rows
            staged.append(workflow_id)
            batch.put(_EXTRA, workflow_id.encode(), b"{}")

        bad = WorkflowSpec(workflow_id="wf-big", tasks=(spec("a"), spec("b"), _unstorable("c", "a")))
        with pytest.raises(SpecError) as caught:
            await engine.submit(bad, request_id="req-1", request_hash="h1", stage=stage)
        assert (caught.value.reason, caught.value.field) == ("INVALID_ARGUMENT", "spec.tasks[2]")
        assert "cannot be stored" in caught.value.message
        await settle(engine)
        await engine.submit(WorkflowSpec(workflow_id="wf-other", tasks=(spec("z"),)))  # a later commit
        await settle(engine)
        assert staged == []
        with pytest.raises(WorkflowNotFoundError):
            engine.get_workflow("wf-big")
        after = _rows(storage)
        assert {t: [r for r in rows if b"wf-other" not in r[0]] for t, rows in after.items()} == before
        assert engine.open_tasks == 1  # wf-other's task only

        # The request id was not taken: a good retry makes the workflow, not a duplicate of nothing.
        good = WorkflowSpec(workflow_id="wf-big", tasks=(spec("a"), spec("b")))
        record, deduplicated = await engine.submit(good, request_id="req-1", request_hash="h2")
        assert (record.workflow_id, deduplicated) == ("wf-big", False)
        assert [t.record.task_id for t in engine.list_tasks("wf-big", frozenset(), 0, 100)[0]] == ["a", "b"]
    finally:
        await engine.stop()


async def test_a_spawn_whose_spec_cannot_be_stored_changes_nothing(
    stores: tuple[Storage, GroupCommitter],
) -> None:
    storage, committer = stores
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    await engine.start()
    try:
        record, _ = await engine.submit(WorkflowSpec(workflow_id="wf-s", tasks=(spec("a"),)))
        await settle(engine)
        before = _rows(storage)
        open_tasks, open_bytes = engine.open_tasks, engine.open_bytes
        with pytest.raises(SpecError) as caught:
            await engine.spawn("wf-s", [spec("b"), _unstorable("c", "a")], request_id="s-1", request_hash="h")
        assert (caught.value.reason, caught.value.field) == ("INVALID_ARGUMENT", "tasks[1]")
        await settle(engine)
        assert _rows(storage) == before
        assert (engine.open_tasks, engine.open_bytes) == (open_tasks, open_bytes)
        view = engine.get_workflow(record.workflow_id)
        assert view.record.task_count == 1
        assert [t.record.task_id for t in engine.list_tasks("wf-s", frozenset(), 0, 100)[0]] == ["a"]
        ids, deduplicated = await engine.spawn("wf-s", [spec("b")], request_id="s-1", request_hash="h2")
        assert (ids, deduplicated) == (["b"], False)
    finally:
        await engine.stop()
