"""DeleteNamespace in the engine: entries, rows and files go; the name and its slot are free again."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from typing import Any

import numpy as np
import pytest

import are_core.cache._engine as cache_engine
from are_core.cache import (
    InvalidationBusyError,
    NamespaceDeletingError,
    NamespaceLimitError,
    NamespaceNotFoundError,
    NamespaceSettings,
    NamespaceWritesUnavailableError,
)
from are_core.cache._engine import HEADS, JOURNAL, MARKS, NAMESPACES, STATS, VECTORS
from are_core.storage import StorageBusyError, prefix_key

from ._failing import full_disk, stored
from .conftest import Harness, low_dimension_rows

DIMENSION = 16


def _settings(name: str, threshold: float = 0.95) -> NamespaceSettings:
    return NamespaceSettings(
        name=name, embedder="caller", dimension=DIMENSION, similarity_threshold=threshold
    )


async def _fill(harness: Harness, name: str, count: int, seed: int = 1) -> np.ndarray:
    rows = low_dimension_rows(count, DIMENSION, seed)
    await harness.e.store_many(
        name,
        [f"question {i}" for i in range(count)],
        [f"answer {i}".encode() for i in range(count)],
        vectors=rows,
    )
    return rows


def _rows(harness: Harness, table: str, name: str) -> int:
    storage = harness.storage
    assert storage is not None
    if table in {NAMESPACES, STATS, MARKS}:
        return int(storage.get(table, name.encode()) is not None)
    return len(storage.scan(table, prefix=prefix_key(name)))


async def test_a_deleted_namespace_leaves_nothing_and_its_name_is_free(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(_settings("gone"))
    await e.put_namespace(_settings("kept"))
    rows = await _fill(harness, "gone", 300)
    await _fill(harness, "kept", 20, seed=2)
    e = await harness.reopen()  # a clean stop: a saved index, entry table and mark for each
    index_file = e._index_path(e.get_namespace("gone"))
    assert index_file.exists() and list(index_file.parent.glob("gone.*.entries"))

    assert await e.delete_namespace("gone") == 300

    with pytest.raises(NamespaceNotFoundError):
        e.get_namespace("gone")
    with pytest.raises(NamespaceNotFoundError):
        await e.lookup("gone", prompt="question 1")
    assert [n.name for n in e.list_namespaces()[0]] == ["kept"]
    assert [s.namespace for s in e.stats()] == ["kept"]
    for table in (NAMESPACES, STATS, MARKS, JOURNAL, HEADS):
        assert _rows(harness, table, "gone") == 0, table
    storage = harness.storage
    assert storage is not None
    assert len(storage.scan(VECTORS, prefix=b"")) == 20  # only the kept namespace's
    assert not index_file.exists() and not list(index_file.parent.glob("gone.*"))
    kinds = [(d.event_type, d.attributes.get("are.cache.reason")) for d in harness.sink.recorded]
    assert ("CACHE_INVALIDATED", "NAMESPACE_DELETED") in kinds
    [deleted] = [d for d in harness.sink.recorded if d.event_type == "CACHE_NAMESPACE_DELETED"]
    assert deleted.attributes == {"are.cache.namespace": "gone", "are.cache.removed_count": 300}

    # The name is free: created afresh, empty, with settings of its own; nothing of the old one answers.
    _, created = await e.put_namespace(_settings("gone", threshold=0.9))
    assert created
    assert e.stats("gone")[0].entries == 0
    assert (await e.lookup("gone", prompt="question 1")).hit is None
    assert (await e.lookup("gone", vector=rows[1])).hit is None
    assert (await e.lookup("kept", prompt="question 1")).hit is not None

    for save in (True, False):  # after a clean stop, and as after a SIGKILL
        e = await harness.reopen(save=save)
        assert e.stats("gone")[0].entries == 0
        assert (await e.lookup("gone", prompt="question 1")).hit is None
        assert (await e.lookup("gone", vector=rows[1])).hit is None
        assert e.stats("kept")[0].entries == 20


async def test_a_deletion_is_durable_without_a_clean_stop(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(_settings("gone"))
    await _fill(harness, "gone", 50)
    await e.delete_namespace("gone")
    e = await harness.reopen(save=False)
    with pytest.raises(NamespaceNotFoundError):
        e.get_namespace("gone")
    assert stored(harness, "gone") == 0


async def test_while_a_namespace_is_deleted_it_takes_no_writes_and_still_answers(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = harness.e
    await e.put_namespace(_settings("gone"))
    rows = await _fill(harness, "gone", 40)
    monkeypatch.setattr(cache_engine, "_INVALIDATE_CHUNK", 10)  # four commits: room to call meanwhile
    deletion = asyncio.ensure_future(e.delete_namespace("gone"))
    await asyncio.sleep(0)  # the deletion began: its first chunk is being committed
    assert not deletion.done()
    with pytest.raises(NamespaceDeletingError, match="'gone' is being deleted"):
        await e.store("gone", prompt="late", response=b"x", vector=rows[0])
    with pytest.raises(NamespaceDeletingError):
        await e.store_many("gone", ["late"], [b"x"], vectors=rows[:1])
    with pytest.raises(NamespaceDeletingError):
        await e.put_namespace(_settings("gone", threshold=0.5))
    with pytest.raises(NamespaceDeletingError):
        await e.delete_namespace("gone")
    # Entries not yet removed still answer; none removed does.
    answered = (await e.lookup("gone", prompt="question 39")).hit
    assert answered is None or answered.response == b"answer 39"
    assert await deletion == 40
    with pytest.raises(NamespaceNotFoundError):
        await e.store("gone", prompt="late", response=b"x", vector=rows[0])
    invalidated = [
        d for d in harness.sink.recorded if d.attributes.get("are.cache.reason") == "NAMESPACE_DELETED"
    ]
    assert [d.attributes["are.cache.removed_count"] for d in invalidated] == [10, 10, 10, 10]


async def test_a_store_under_way_when_the_deletion_begins_is_deleted_with_it(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(_settings("gone"))
    rows = await _fill(harness, "gone", 5)
    store = asyncio.ensure_future(e.store("gone", prompt="in flight", response=b"x", vector=rows[0]))
    await asyncio.sleep(0)  # its entry is in memory, its commit under way
    removed = await e.delete_namespace("gone")
    await store  # acknowledged before the deletion, and deleted with the namespace
    assert removed == 6
    assert stored(harness, "gone") == 0
    e = await harness.reopen(save=False)
    with pytest.raises(NamespaceNotFoundError):
        e.get_namespace("gone")


async def test_a_deleted_namespace_no_longer_counts_toward_the_bound(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_engine, "MAX_NAMESPACES", 3)
    e = harness.e
    for name in ("a", "b", "c"):
        await e.put_namespace(_settings(name))
    with pytest.raises(NamespaceLimitError):
        await e.put_namespace(_settings("d"))
    await e.delete_namespace("b")
    _, created = await e.put_namespace(_settings("d"))
    assert created
    e = await harness.reopen()
    assert [n.name for n in e.list_namespaces()[0]] == ["a", "c", "d"]


async def test_a_failed_last_commit_leaves_the_namespace_serving_empty(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = harness.e
    await e.put_namespace(_settings("kept"))
    await _fill(harness, "kept", 10)
    real_drop = e._drop_namespace
    disk = full_disk(harness, monkeypatch)
    disk.full = False

    async def failing_drop(state: object, removed: int) -> None:
        disk.full = True  # the entries went; the namespace's own commit fails
        try:
            await real_drop(state, removed)  # type: ignore[arg-type]
        finally:
            disk.full = False

    monkeypatch.setattr(e, "_drop_namespace", failing_drop)
    with pytest.raises(OSError) as failed:
        await e.delete_namespace("kept")
    assert failed.value.errno == errno.ENOSPC
    await asyncio.sleep(0)  # the reload after the failed commit
    assert e.get_namespace("kept").name == "kept"
    assert e.stats("kept")[0].entries == 0
    with pytest.raises(NamespaceWritesUnavailableError):  # as after any failed write: stores wait a while
        await e.store(
            "kept", prompt="question 1", response=b"x", vector=low_dimension_rows(1, DIMENSION, 9)[0]
        )
    monkeypatch.setattr(e, "_drop_namespace", real_drop)
    assert await e.delete_namespace("kept") == 0  # retried: finished
    e = await harness.reopen(save=False)
    assert e.list_namespaces()[0] == []


async def test_deleting_an_unknown_namespace_is_not_found(harness: Harness) -> None:
    with pytest.raises(NamespaceNotFoundError):
        await harness.e.delete_namespace("nothing")


async def test_a_deletion_cut_short_leaves_what_it_did_not_remove_and_a_retry_finishes(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = harness.e
    await e.put_namespace(_settings("gone"))
    rows = await _fill(harness, "gone", 40)
    monkeypatch.setattr(cache_engine, "_INVALIDATE_CHUNK", 10)
    deletion = asyncio.ensure_future(e.delete_namespace("gone"))
    async with asyncio.timeout(10):  # until a chunk's removal committed (its event is published after)
        while not any(event.event_type == "CACHE_INVALIDATED" for event in harness.sink.published):
            await asyncio.sleep(0)
    deletion.cancel()  # the process dies here: a chunk committed, the rest never will
    with contextlib.suppress(asyncio.CancelledError):
        await deletion
    e = await harness.reopen(save=False)
    left = e.stats("gone")[0].entries
    assert 0 < left < 40
    answered = 0
    for i in range(40):
        exact = (await e.lookup("gone", prompt=f"question {i}")).hit
        semantic = (await e.lookup("gone", vector=rows[i])).hit
        assert (exact is None) == (semantic is None), i
        if exact is not None and semantic is not None:
            assert exact.response == semantic.response == f"answer {i}".encode()
            answered += 1
    assert answered == left
    assert await e.delete_namespace("gone") == left
    e = await harness.reopen(save=False)
    assert e.list_namespaces()[0] == []


async def test_a_last_commit_refused_for_backpressure_says_what_was_removed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = harness.e
    await e.put_namespace(_settings("busy"))
    await _fill(harness, "busy", 30)
    monkeypatch.setattr(cache_engine, "_INVALIDATE_CHUNK", 10)
    committer = harness.committer
    assert committer is not None
    enqueue, real_drop = committer.enqueue, e._drop_namespace
    refusing = False

    def busy_enqueue(batch: Any) -> Any:
        if refusing:
            raise StorageBusyError(limit_name="max_pending_mutations", limit=1, pending=1, incoming=1)
        return enqueue(batch)

    async def refused_drop(state: Any, removed: int) -> None:
        nonlocal refusing
        refusing = True  # the entries went; the namespace's own commit is refused
        try:
            await real_drop(state, removed)
        finally:
            refusing = False

    monkeypatch.setattr(committer, "enqueue", busy_enqueue)
    monkeypatch.setattr(e, "_drop_namespace", refused_drop)
    with pytest.raises(InvalidationBusyError) as refused:
        await e.delete_namespace("busy")
    assert refused.value.removed_count == 30  # the whole call's, not the last commit's 0
    assert e.stats("busy")[0].entries == 0  # still there, empty: a retry finishes it
    monkeypatch.setattr(e, "_drop_namespace", real_drop)
    assert await e.delete_namespace("busy") == 0
    with pytest.raises(NamespaceNotFoundError):
        e.get_namespace("busy")


async def test_no_background_work_starts_on_a_namespace_being_deleted(harness: Harness) -> None:
    await harness.close()
    e = await harness.open(checkpoint_changes=1)
    await e.put_namespace(_settings("gone"))
    await _fill(harness, "gone", 50)
    state = e._states["gone"]
    state.snapshot_due = True
    e._deleting.add("gone")  # as while its entries are removed, a chunk per commit
    try:
        assert e.checkpoint_due() is None  # no child writing an index about to be deleted
        await e.snapshot_due()
        assert state.mark is None  # nor an entry table saved
    finally:
        e._deleting.discard("gone")
    task = e.checkpoint_due()  # the controls: due once not being deleted
    assert task is not None
    await task
    await e.snapshot_due()
    assert state.mark is not None


async def test_a_start_removes_the_files_of_namespaces_that_no_longer_exist(harness: Harness) -> None:
    e = harness.e
    await e.put_namespace(_settings("gone"))
    await e.put_namespace(_settings("kept"))
    await _fill(harness, "gone", 40)
    await _fill(harness, "kept", 40, seed=2)
    e = await harness.reopen()  # a clean stop saves each one's index and entry table
    folder = e._index_path(e.get_namespace("gone")).parent
    saved = {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("gone.")}
    assert any(n.endswith(".usearch") for n in saved) and any(n.endswith(".entries") for n in saved)
    await e.delete_namespace("gone")
    for name, data in saved.items():  # as after a SIGKILL between the deletion's commit and its files
        (folder / name).write_bytes(data)
    kept = sorted(p.name for p in folder.iterdir() if p.name.startswith("kept."))
    e = await harness.reopen(save=False)
    assert not [p.name for p in folder.iterdir() if p.name.startswith("gone.")]
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("kept.")) == kept
    assert e.stats("kept")[0].entries == 40


async def _long_journal(harness: Harness, monkeypatch: pytest.MonkeyPatch, name: str, rows: int) -> None:
    """A namespace with a saved table, then ``rows`` single stores since (a journal row each, unsaved).

    As when its table could not be saved for long (a full disk, say): the
    journal grows with every write. The committer's bound is made small, so
    that deleting every row in one commit would be over it.
    """
    e = harness.e
    await e.put_namespace(_settings(name))
    await _fill(harness, name, 20, seed=3)
    e = await harness.reopen()  # a clean stop: a table and its mark
    assert _rows(harness, MARKS, name) == 1
    vectors = low_dimension_rows(rows, DIMENSION, 4)
    for i in range(rows):
        await e.store(name, prompt=f"later {i}", response=f"later answer {i}".encode(), vector=vectors[i])
    assert _rows(harness, JOURNAL, name) >= rows
    committer = harness.committer
    assert committer is not None
    monkeypatch.setattr(committer, "max_pending_mutations", rows // 2)
    monkeypatch.setattr(cache_engine, "_INVALIDATE_CHUNK", rows // 8)


async def test_a_namespace_whose_journal_is_over_a_commit_s_bound_is_still_deleted(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _long_journal(harness, monkeypatch, "long", 240)
    e = harness.e
    assert await e.delete_namespace("long") == 260
    with pytest.raises(NamespaceNotFoundError):
        e.get_namespace("long")
    for table in (NAMESPACES, STATS, MARKS, JOURNAL, HEADS):
        assert _rows(harness, table, "long") == 0, table
    e = await harness.reopen(save=False)
    assert e.list_namespaces()[0] == []


async def test_a_deletion_stopped_after_its_journal_went_brings_no_entry_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal goes after the mark: a start then reads the heads (none), not the saved table."""
    await _long_journal(harness, monkeypatch, "long", 240)
    e = harness.e

    real_forget = e._forget_journal

    class ProcessDiedError(Exception):
        pass

    async def forget_then_die(state: Any) -> None:
        await real_forget(state)
        raise ProcessDiedError  # the process dies here: the journal went, the last commit never began

    monkeypatch.setattr(e, "_forget_journal", forget_then_die)
    with pytest.raises(ProcessDiedError):
        await e.delete_namespace("long")
    monkeypatch.undo()
    assert _rows(harness, JOURNAL, "long") == 0 and _rows(harness, MARKS, "long") == 0
    e = await harness.reopen(save=False)
    assert e.stats("long")[0].entries == 0
    assert (await e.lookup("long", prompt="question 1")).hit is None  # one of the table's entries
    assert (await e.lookup("long", prompt="later 1")).hit is None
    assert await e.delete_namespace("long") == 0
