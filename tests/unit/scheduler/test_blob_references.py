"""The engine stages a workflow's blob references in the batch that stores the payload naming them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from are_core.scheduler import (
    CACHE_BLOB_SHA256,
    CACHE_BLOB_SIZE,
    TABLES,
    CacheKey,
    Scheduler,
    TaskOrigin,
    WorkflowSpec,
)
from are_core.state import BLOB_TABLES, BlobStore, workflow_referrer
from are_core.storage import Batch, Durability, GroupCommitter, Storage
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec

_IN = "aa" * 32
_OUT = "bb" * 32
_CACHED = "cc" * 32


class _Staged:
    """The hook the sidecar's wiring installs, keeping each batch it staged into for the test."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.calls: list[tuple[Batch, str, str]] = []

    def __call__(self, batch: Batch, workflow_id: str, sha256: str) -> None:
        self.blobs.stage_reference(batch, workflow_referrer(workflow_id), bytes.fromhex(sha256))
        self.calls.append((batch, workflow_id, sha256))

    def batch_of(self, workflow_id: str, sha256: str) -> Batch:
        (batch,) = {id(b): b for b, w, s in self.calls if (w, s) == (workflow_id, sha256)}.values()
        return batch


def _rows(batch: Batch, table: str, workflow_id: str) -> int:
    prefix = workflow_id.encode() + b"\x00"
    return sum(1 for m in batch.mutations if m.table == table and m.key.startswith(prefix))


@pytest.fixture
async def wired(tmp_path: Path) -> AsyncIterator[tuple[Scheduler, _Staged]]:
    storage = Storage.open(tmp_path / "data", tables=(*TABLES, *BLOB_TABLES), durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    engine = Scheduler(storage, committer, rng=lambda: 0.0)
    staged = _Staged(BlobStore(storage, committer))
    engine.stage_blob_reference = staged
    await engine.start()
    yield engine, staged
    await engine.stop()
    await committer.aclose()
    storage.close()


async def test_inputs_outputs_cache_hits_and_forks_reference_their_blobs_in_the_same_commit(
    wired: tuple[Scheduler, _Staged],
) -> None:
    engine, staged = wired
    blobs = staged.blobs

    async def lookup(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
        await asyncio.sleep(0)
        return b"", "x/y", {CACHE_BLOB_SHA256: _CACHED, CACHE_BLOB_SIZE: 3}

    engine.cache_lookup = lookup
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 8, worker.assign, worker.cancel)
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                spec("a", input_blob_sha256=_IN, input_blob_size=9),
                spec("hit", cache_key=CacheKey(namespace="n", prompt="p")),
            )
        )
    )
    wid = record.workflow_id
    submit = staged.batch_of(wid, _IN)
    assert _rows(submit, "sched_task_specs", wid) == 2  # the spec naming the blob is in that batch
    assert workflow_referrer(wid) + b"\x00" + bytes.fromhex(_IN) in {m.key for m in submit.mutations}

    await settle(engine)
    (a,) = worker.assignments
    await engine.complete(wid, "a", a.attempt, output=b"", content_type="", usage=None, blob_sha256=_OUT)
    completion = staged.batch_of(wid, _OUT)
    assert _rows(completion, "sched_tasks", wid) >= 1  # the completed record commits with it
    hit = staged.batch_of(wid, _CACHED)
    assert _rows(hit, "sched_tasks", wid) >= 1
    assert engine.get_task(wid, "hit").record.output_blob_sha256 == _CACHED

    refs = {bytes.fromhex(s) for s in (_IN, _OUT, _CACHED)}
    assert set(blobs.references(workflow_referrer(wid))) == refs

    await engine.fork(wid, "forked", cutoff_ns=2**62)
    fork = staged.batch_of("forked", _IN)
    assert _rows(fork, "sched_task_specs", "forked") == 2
    # The fork keeps the completed outputs, so it references them too.
    assert set(blobs.references(workflow_referrer("forked"))) == refs


async def test_a_spawned_task_references_its_input_blob(wired: tuple[Scheduler, _Staged]) -> None:
    engine, staged = wired
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 8, worker.assign, worker.cancel)
    record, _ = await engine.submit(WorkflowSpec(tasks=(spec("parent"),)))
    wid = record.workflow_id
    await settle(engine)
    (parent,) = worker.assignments
    await engine.spawn(
        wid, [spec("child", input_blob_sha256=_IN)], parent_task_id="parent", parent_attempt=parent.attempt
    )
    assert _rows(staged.batch_of(wid, _IN), "sched_task_specs", wid) == 1
    assert staged.blobs.references(workflow_referrer(wid)) == [bytes.fromhex(_IN)]
