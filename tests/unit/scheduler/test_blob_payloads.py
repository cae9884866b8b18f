"""Blob payloads in the engine without a server: records, assignments, conditions, results, cache."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from are_core.scheduler import (
    CACHE_BLOB_SHA256,
    CACHE_BLOB_SIZE,
    CacheKey,
    Condition,
    Scheduler,
    TaskOrigin,
    TaskRecord,
    TaskSpec,
    WorkflowSpec,
)
from are_core.storage import Codec
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec

_SHA = "ab" * 32


class _OldTaskSpec(msgspec.Struct, kw_only=True):
    task_id: str
    capability: str
    input: bytes = b""
    content_type: str = ""


class _OldTaskRecord(msgspec.Struct, kw_only=True):
    task_id: str
    index: int
    state: str = "COMPLETED"
    output: bytes | None = None
    output_content_type: str = ""


def test_records_written_before_blob_fields_still_decode() -> None:
    old_spec = msgspec.msgpack.encode(_OldTaskSpec(task_id="a", capability="c", input=b"{}"))
    decoded = Codec(TaskSpec).decode(old_spec)
    assert (decoded.input, decoded.input_blob_sha256, decoded.input_blob_size) == (b"{}", "", 0)
    old_rec = msgspec.msgpack.encode(_OldTaskRecord(task_id="a", index=0, output=b"1"))
    record = Codec(TaskRecord).decode(old_rec)
    assert (record.output, record.output_blob_sha256, record.output_blob_size) == (b"1", "", 0)


async def test_blob_inputs_and_outputs_reach_assignments_results_and_conditions(engine: Scheduler) -> None:
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 8, worker.assign, worker.cancel)
    exists = Condition(task_id="a", pointer="", operator="EXISTS")
    missing = Condition(task_id="a", pointer="", operator="NOT_EXISTS")
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                spec("a", input_blob_sha256=_SHA, input_blob_size=9, content_type="text/plain"),
                spec("seen", "a", conditions=(exists,)),
                spec("unseen", "a", conditions=(missing,)),
            ),
            result_task_id="a",
        )
    )
    wid = record.workflow_id
    await settle(engine)
    (a,) = worker.assignments
    assert (a.input, a.input_blob_sha256, a.input_blob_size, a.content_type) == (b"", _SHA, 9, "text/plain")
    await engine.complete(
        wid, "a", a.attempt, output=b"", content_type="x/y", usage=None, blob_sha256=_SHA, blob_size=9
    )
    await settle(engine)
    # A blob output has no inline JSON: a condition on it sees no value.
    assert [x.task_id for x in worker.assignments[1:]] == ["unseen"]
    (dep,) = worker.assignments[1].dependencies
    assert (dep.output, dep.blob_sha256, dep.blob_size, dep.content_type) == (b"", _SHA, 9, "x/y")
    assert engine.get_task(wid, "seen").record.state == "SKIPPED"
    await engine.complete(wid, "unseen", 1, output=b"1", content_type="", usage=None)
    view = engine.get_workflow(wid)
    assert (view.result, view.result_blob_sha256, view.result_blob_size) == (b"", _SHA, 9)


async def test_a_cached_blob_answer_completes_with_the_reference_and_blob_outputs_are_stored(
    engine: Scheduler,
) -> None:
    stored: list[tuple[str, bytes, str, int]] = []

    async def lookup(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
        await asyncio.sleep(0)
        if key.prompt == "known":
            return b"", "x/y", {CACHE_BLOB_SHA256: _SHA, CACHE_BLOB_SIZE: 9}
        return None

    def store(  # noqa: PLR0917 - the engine's CacheStoreHook, positional
        key: CacheKey,
        output: bytes,
        content_type: str,
        usage: object,
        sha256: str,
        size: int,
        origin: TaskOrigin,
    ) -> None:
        stored.append((key.prompt, output, sha256, size))

    engine.cache_lookup = lookup
    engine.cache_store = store
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 8, worker.assign, worker.cancel)
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                spec("hit", cache_key=CacheKey(namespace="n", prompt="known")),
                spec("miss", cache_key=CacheKey(namespace="n", prompt="new")),
            )
        )
    )
    wid = record.workflow_id
    await settle(engine)
    hit = engine.get_task(wid, "hit").record
    assert (hit.state, hit.output_blob_sha256, hit.output_blob_size) == ("COMPLETED", _SHA, 9)
    (a,) = worker.assignments
    await engine.complete(
        wid, "miss", a.attempt, output=b"", content_type="", usage=None, blob_sha256=_SHA, blob_size=9
    )
    await settle(engine)
    assert stored == [("new", b"", _SHA, 9)]
