"""The cache's events of a task's lookup and store name the task; those of plain calls name none.

A task's cache key is looked up (``lookup_for_task``) before any attempt of
the task, and its output stored (``store``) after the attempt that made it:
the lookup's CACHE_HIT or CACHE_MISS names the workflow and the task, the
store's CACHE_STORED also the attempt and its span. The lookup's event is
recorded before the call returns, so that it comes before the scheduler's
TASK_CACHE_HIT or TASK_CACHE_MISS, which it causes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from are_core.cache import CACHE_TABLES, CacheEngine, NamespaceSettings
from are_core.scheduler import TABLES, CacheKey, Scheduler, TaskOrigin, WorkflowSpec
from are_core.storage import Batch, Durability, GroupCommitter, Storage, StorageBusyError
from are_core.trace import Event, EventDraft
from tests.unit.scheduler.test_engine import FakeWorker, settle, spec

from .conftest import Harness

_SPAN = "00f067aa0ba902b7"


async def _one_entry(e: CacheEngine, namespace: str) -> None:
    """A namespace holding one entry (prompt "q"), every event so far flushed."""
    await e.put_namespace(NamespaceSettings(name=namespace))
    await e.store(namespace, prompt="q", response=b"r")
    await e.flush()


def _recorded(harness: Harness, since: int, kind: str) -> list[EventDraft]:
    return [d for d in harness.sink.recorded[since:] if d.event_type == kind]


async def test_a_tasks_lookup_names_its_task_and_is_recorded_before_it_returns(harness: Harness) -> None:
    e = harness.e
    await _one_entry(e, "t")
    before = len(harness.sink.recorded)
    hit = await e.lookup_for_task("t", "q", workflow_id="wf-1", task_id="ask")
    assert hit is not None
    miss = await e.lookup_for_task("t", "never stored", workflow_id="wf-1", task_id="other")
    assert miss is None
    # Recorded already (no flush ran): each took its sequence before the caller went on.
    (hit_event,) = _recorded(harness, before, "CACHE_HIT")
    (miss_event,) = _recorded(harness, before, "CACHE_MISS")
    assert not e._pending_events
    assert (hit_event.workflow_id, hit_event.task_id, hit_event.attempt, hit_event.span_id) == (
        "wf-1",
        "ask",
        0,
        "",
    )
    assert (miss_event.workflow_id, miss_event.task_id, miss_event.attempt, miss_event.span_id) == (
        "wf-1",
        "other",
        0,
        "",
    )
    assert hit_event.attributes["are.cache.tier"] == "EXACT"
    assert hit_event.attributes["are.cache.entry_id"] == hit.entry_id
    assert "are.cache.best_similarity" in miss_event.attributes
    # Published once committed, without waiting for a flush.
    async with asyncio.timeout(10):
        while len(harness.sink.published) < len(harness.sink.recorded):
            await asyncio.sleep(0.005)
    # Counted in the statistics as any lookup is.
    (stats,) = e.stats("t")
    assert (stats.exact_hits, stats.misses) == (1, 1)


async def test_a_lookup_that_names_no_task_names_no_workflow_and_waits_for_the_flush(
    harness: Harness,
) -> None:
    e = harness.e
    await _one_entry(e, "p")
    before = len(harness.sink.recorded)
    assert (await e.lookup("p", prompt="q")).hit is not None
    assert (await e.lookup("p", prompt="nothing like it")).hit is None
    assert await e.lookup_for_task("p", "q") is not None  # no task named: as a plain lookup
    assert harness.sink.recorded[before:] == []  # queued for the flush
    await e.flush()
    events = harness.sink.recorded[before:]
    assert [d.event_type for d in events] == ["CACHE_HIT", "CACHE_MISS", "CACHE_HIT"]
    assert all((d.workflow_id, d.task_id, d.attempt, d.span_id) == ("", "", 0, "") for d in events)


async def test_a_tasks_store_names_its_attempt_and_span_and_a_plain_store_none(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(NamespaceSettings(name="s"))
    before = len(harness.sink.recorded)
    await e.store("s", prompt="plain", response=b"1")
    await e.store(
        "s",
        prompt="from a task",
        response=b"2",
        workflow_id="wf-2",
        task_id="write",
        attempt=2,
        span_id=_SPAN,
    )
    plain, tasks = _recorded(harness, before, "CACHE_STORED")
    assert (plain.workflow_id, plain.task_id, plain.attempt, plain.span_id) == ("", "", 0, "")
    assert (tasks.workflow_id, tasks.task_id, tasks.attempt, tasks.span_id) == ("wf-2", "write", 2, _SPAN)
    assert tasks.attributes["are.cache.namespace"] == "s"


async def test_a_tasks_lookup_event_under_backpressure_goes_to_the_flush_still_naming_the_task(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = harness.e
    await _one_entry(e, "b")

    def busy(mutations: int, nbytes: int) -> None:
        raise StorageBusyError(limit_name="max_pending_mutations", limit=1, pending=1, incoming=mutations)

    before = len(harness.sink.recorded)
    with monkeypatch.context() as patched:
        patched.setattr(e._committer, "check_room", busy)
        assert await e.lookup_for_task("b", "q", workflow_id="wf-3", task_id="t") is not None
    assert harness.sink.recorded[before:] == []  # refused: no sequence taken
    await e.flush()
    (event,) = _recorded(harness, before, "CACHE_HIT")
    assert (event.workflow_id, event.task_id) == ("wf-3", "t")


# -- with the scheduler ---------------------------------------------------------


class _Log:
    """The event sink both engines share: sequences in the order of recording, as the recorder's."""

    def __init__(self) -> None:
        self.recorded: list[Event] = []
        self.published: list[Event] = []

    def record(self, batch: Batch, draft: EventDraft) -> Event:
        fields = msgspec.structs.asdict(draft)
        fields["event_time_unix_ns"] = 1
        fields["attributes"] = dict(draft.attributes)
        event = Event(sequence=len(self.recorded) + 1, **fields)
        self.recorded.append(event)
        return event

    def publish(self, events: Sequence[Event]) -> None:
        self.published.extend(events)

    def of(self, workflow_id: str) -> list[Event]:
        return [event for event in self.recorded if event.workflow_id == workflow_id]


@dataclass(frozen=True)
class _Engines:
    cache: CacheEngine
    scheduler: Scheduler
    log: _Log


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[_Engines]:
    """A scheduler and a cache over one LMDB and committer, their hooks wired as the sidecar wires them."""
    storage = Storage.open(tmp_path / "data", tables=(*TABLES, *CACHE_TABLES), durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    log = _Log()
    cache = CacheEngine(storage, committer, index_dir=tmp_path / "cache", events=log, flush_interval=3600)
    await cache.start()
    scheduler = Scheduler(storage, committer, events=log, rng=lambda: 0.0)

    async def lookup(key: CacheKey, origin: TaskOrigin) -> tuple[bytes, str, dict[str, Any]] | None:
        hit = await cache.lookup_for_task(
            key.namespace, key.prompt, workflow_id=origin.workflow_id, task_id=origin.task_id
        )
        return None if hit is None else (hit.response, hit.content_type, {"are.cache.entry_id": hit.entry_id})

    def store(  # noqa: PLR0917 - the engine's CacheStoreHook, positional
        key: CacheKey,
        output: bytes,
        content_type: str,
        usage: object,
        blob_sha256: str,
        blob_size: int,
        origin: TaskOrigin,
    ) -> None:
        stored = cache.store(
            key.namespace,
            prompt=key.prompt,
            response=output,
            content_type=content_type,
            workflow_id=origin.workflow_id,
            task_id=origin.task_id,
            attempt=origin.attempt,
            span_id=origin.span_id,
        )
        stores.append(asyncio.ensure_future(stored))

    stores: list[asyncio.Future[Any]] = []
    scheduler.cache_lookup = lookup
    scheduler.cache_store = store
    await scheduler.start()
    try:
        yield _Engines(cache=cache, scheduler=scheduler, log=log)
    finally:
        await asyncio.gather(*stores)
        await scheduler.stop()
        await cache.stop()
        await committer.aclose()
        storage.close()


async def test_a_workflows_events_show_its_tasks_cache_lookups_before_their_outcomes_and_its_store(
    engines: _Engines,
) -> None:
    cache, scheduler, log = engines.cache, engines.scheduler, engines.log
    await cache.put_namespace(NamespaceSettings(name="n"))
    key = CacheKey(namespace="n", prompt="what is the capital of france")
    worker = FakeWorker()
    scheduler.connect_worker("w", ["cap"], 1, worker.assign, worker.cancel)
    first, _ = await scheduler.submit(WorkflowSpec(tasks=(spec("a", cache_key=key),)))
    async with asyncio.timeout(10):
        while not worker.assignments:
            await settle(scheduler)
    (assignment,) = worker.assignments
    await scheduler.complete(first.workflow_id, "a", 1, output=b'"Paris"', content_type="", usage=None)
    async with asyncio.timeout(10):
        while not any(e.event_type == "CACHE_STORED" for e in log.recorded):
            await settle(scheduler)
    kinds = [e.event_type for e in log.of(first.workflow_id)]
    assert kinds.index("CACHE_MISS") < kinds.index("TASK_CACHE_MISS") < kinds.index("TASK_DISPATCHED")
    assert kinds.index("TASK_COMPLETED") < kinds.index("CACHE_STORED")
    events = {e.event_type: e for e in log.of(first.workflow_id)}
    dispatched = events["TASK_DISPATCHED"]
    assert dispatched.span_id
    assert (events["CACHE_MISS"].task_id, events["CACHE_MISS"].attempt, events["CACHE_MISS"].span_id) == (
        "a",
        0,
        "",
    )
    stored = events["CACHE_STORED"]
    assert (stored.task_id, stored.attempt, stored.span_id) == ("a", 1, dispatched.span_id)
    # The second workflow's task is answered from the cache: its CACHE_HIT comes first.
    second, _ = await scheduler.submit(WorkflowSpec(tasks=(spec("a", cache_key=key),)))
    async with asyncio.timeout(10):
        while scheduler.get_task(second.workflow_id, "a").record.state != "COMPLETED":
            await settle(scheduler)
    kinds = [e.event_type for e in log.of(second.workflow_id)]
    assert kinds.index("CACHE_HIT") < kinds.index("TASK_CACHE_HIT") < kinds.index("WORKFLOW_COMPLETED")
    assert "CACHE_MISS" not in kinds
    hit = next(e for e in log.of(second.workflow_id) if e.event_type == "CACHE_HIT")
    assert (hit.task_id, hit.attempt, hit.span_id) == ("a", 0, "")
    assert hit.attributes["are.cache.entry_id"] == stored.attributes["are.cache.entry_id"]
    assert worker.assignments == [assignment]  # the hit was not dispatched
