"""The cache hooks are told whose lookup and store they make (the events of these name it).

A task's cache lookup comes before any attempt: the hook gets the workflow
and the task, no attempt and no span (as the TASK_CACHE_MISS that follows).
The store of its output follows the attempt that completed it: the hook
gets that attempt and its span, the one its TASK_DISPATCHED started.
"""

from __future__ import annotations

import asyncio
from typing import Any

from are_core.scheduler import (
    CacheKey,
    Failure,
    RetryPolicy,
    Scheduler,
    TaskOrigin,
    WorkflowSpec,
)
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec
from tests.unit.scheduler.test_reroute import Sink
from tests.unit.scheduler.test_timeout_events import traced

__all__ = ["traced"]  # the fixture, used by name


async def test_the_lookup_names_the_task_and_the_store_the_attempt_that_completed_it(
    traced: tuple[Scheduler, Sink],
) -> None:
    engine, sink = traced
    looked_up: list[tuple[str, TaskOrigin]] = []
    stored: list[tuple[str, TaskOrigin]] = []

    async def lookup(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
        looked_up.append((key.prompt, origin))
        await asyncio.sleep(0)
        return (b'"cached"', "application/json", {}) if key.prompt == "known" else None

    def store(  # noqa: PLR0917 - the engine's CacheStoreHook, positional
        key: CacheKey,
        output: bytes,
        content_type: str,
        usage: object,
        blob_sha256: str,
        blob_size: int,
        origin: TaskOrigin,
    ) -> None:
        stored.append((key.prompt, origin))

    engine.cache_lookup = lookup
    engine.cache_store = store
    retried = RetryPolicy(maximum_attempts=2, initial_interval_s=0.001)
    record, _ = await engine.submit(
        WorkflowSpec(
            tasks=(
                spec("hit", cache_key=CacheKey(namespace="n", prompt="known")),
                spec("miss", cache_key=CacheKey(namespace="n", prompt="new"), retry_policy=retried),
            )
        )
    )
    wid = record.workflow_id
    worker = FakeWorker()
    engine.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    await settle(engine)
    assert sorted(looked_up) == [
        ("known", TaskOrigin(workflow_id=wid, task_id="hit")),
        ("new", TaskOrigin(workflow_id=wid, task_id="miss")),
    ]
    # The first attempt fails; the second completes: the store names the second and its span.
    (first,) = worker.assignments
    engine.fail(wid, "miss", first.attempt, failure=Failure(message="flaky"), usage=None)
    async with asyncio.timeout(10):
        while len(worker.assignments) < 2:
            await settle(engine)
    second = worker.assignments[1]
    assert second.attempt == 2
    await engine.complete(wid, "miss", 2, output=b'"fresh"', content_type="", usage=None)
    await settle(engine)
    spans = {
        e.attempt: e.span_id for e in sink.events if e.event_type == "TASK_DISPATCHED" and e.task_id == "miss"
    }
    assert spans[1] != spans[2]
    assert stored == [("new", TaskOrigin(workflow_id=wid, task_id="miss", attempt=2, span_id=spans[2]))]
    assert len(looked_up) == 2  # a retry is not looked up again
