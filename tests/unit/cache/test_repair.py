"""The repair sweep: entries that removals left unreachable are found in a forked child and inserted again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping

import numpy as np
import pytest

import are_core.cache._engine as cache_engine
from are_core.cache import CacheEngine, NamespaceSettings
from are_core.cache._engine import BODIES, VECTORS, _body_codec, _State
from are_core.cache._normalise import entry_id_text
from are_core.storage import Batch, u64_key
from are_core.vector import _index as index_module

from .conftest import Harness, low_dimension_rows, own_vector_misses

_DIMENSION = 32
_BOUND = 2500  # above EXACT_SEARCH_BELOW: lookups walk the graph


@pytest.fixture
def graph_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookups answer from the graph alone, as in a namespace too large for exact confirmations."""
    monkeypatch.setitem(index_module.EXACT_CONFIRM_COMPONENTS, "i8", 0)


async def _churned(harness: Harness, name: str) -> np.ndarray:
    """A namespace of 2,500 entries stored three times over, one at a time (LRU eviction removes one per
    store), searched at expansion 8: 11 live entries are then missed by their own vector. Stored one by
    one, the graph is the same every run. Returns the vectors, by prompt number."""
    await harness.e.put_namespace(
        NamespaceSettings(
            name=name,
            embedder="caller",
            dimension=_DIMENSION,
            vector_dtype="i8",
            similarity_threshold=0.95,
            max_entries=_BOUND,
            search_expansion=8,
        )
    )
    rows = low_dimension_rows(3 * _BOUND, _DIMENSION, seed=1)
    for i in range(rows.shape[0]):
        await harness.e.store(name, prompt=f"p{i}", response=str(i).encode(), vector=rows[i])
    return rows


def _sweeping(state: _State) -> bool:
    """``state.sweeping``, read through a call once the sweep has run.

    Mypy keeps what an ``assert state.sweeping`` narrowed the flag to across the
    awaits that end the sweep, and would call the next check unreachable.
    """
    return state.sweeping


@pytest.mark.usefixtures("graph_only")
async def test_a_sweep_inserts_unreachable_live_entries_again_and_never_removed_ones(
    harness: Harness,
) -> None:
    e = harness.e
    rows = await _churned(harness, "churn")
    state = e._states["churn"]
    assert len(state.index) == _BOUND
    lost = await own_vector_misses(harness, "churn")
    assert len(lost) >= 3  # the precondition: removals left live entries their own vector misses
    # 5,000 evictions since the start: past the default bound (1,000, or a tenth of the index).
    assert state.index_removals == 2 * _BOUND
    task = e.repair_due()
    assert task is not None
    assert e.repair_due() is None  # one sweep at a time
    assert state.sweeping
    # While the child sweeps the index as it was at the fork, one of the entries it
    # will report is invalidated, and another replaced (its prompt stored again).
    # Their commits are held until the re-insertions are done: LMDB still holds
    # their vectors then, and only the entries in memory say they are gone.
    invalidated, replaced = lost[0], lost[1]
    gone_vectors = {n: rows[_number(harness, n)] for n in (invalidated, replaced)}
    async with _commits_held(harness):
        invalidating = asyncio.create_task(e.invalidate("churn", entry_ids=[entry_id_text(invalidated)]))
        replacing = asyncio.create_task(
            e.store("churn", prompt=f"p{_number(harness, replaced)}", response=b"new", vector=rows[0])
        )
        await asyncio.sleep(0)  # both out of memory, neither committed
        assert invalidated not in state.heads and replaced not in state.heads
        await task
        assert harness.storage is not None
        assert harness.storage.get(VECTORS, u64_key(invalidated)) is not None  # not committed yet
    assert await invalidating == 1
    assert (await replacing).replaced
    assert not _sweeping(state)
    assert state.index_removals == 2  # the invalidation and the replacement: the next sweep's
    assert await own_vector_misses(harness, "churn") == []
    for gone, vector in gone_vectors.items():
        assert gone not in state.index
        assert gone not in state.heads
        hit = (await e.lookup("churn", vector=vector, threshold=0.5)).hit
        assert hit is None or hit.entry_id != entry_id_text(gone)  # removed entries never answer
    [stats] = e.stats("churn")
    assert stats.repaired_entries >= len(lost) - 2
    event = await _repair_event(harness)
    assert event["are.cache.namespace"] == "churn"
    assert event["are.cache.reinserted"] == stats.repaired_entries
    unreachable, reinserted = event["are.cache.unreachable"], event["are.cache.reinserted"]
    checked = event["are.cache.checked"]
    assert isinstance(unreachable, int) and isinstance(reinserted, int) and isinstance(checked, int)
    # Every key a pass reported was inserted again but the two removed meanwhile.
    assert unreachable - reinserted == 2
    assert checked >= _BOUND
    assert isinstance(event["are.cache.seconds"], float)
    assert e.repair_due() is None  # two removals since: not due
    # The repaired graph is what a clean stop saves and a restart serves (as a view).
    e = await harness.reopen()
    assert e._states["churn"].index.is_view
    assert await own_vector_misses(harness, "churn") == []
    assert e.stats("churn")[0].repaired_entries == stats.repaired_entries  # counted durably


@contextlib.asynccontextmanager
async def _commits_held(harness: Harness) -> AsyncIterator[None]:
    """Holds every commit until the block ends: memory runs ahead of LMDB meanwhile."""
    committer = harness.committer
    assert committer is not None
    enqueue = committer.enqueue
    gate = asyncio.Event()

    async def release(batch: Batch, bounded: bool) -> None:
        await gate.wait()
        await enqueue(batch, bounded=bounded)

    def held(batch: Batch, *, bounded: bool = True) -> asyncio.Future[None]:
        return asyncio.ensure_future(release(batch, bounded))

    committer.enqueue = held  # type: ignore[method-assign]  # this instance's, until the del below
    try:
        yield
    finally:
        gate.set()
        del committer.enqueue


async def _repair_event(harness: Harness) -> Mapping[str, object]:
    """The attributes of the one repair event recorded (flushed first)."""
    await harness.e.flush()
    [event] = [
        d.attributes
        for d in harness.sink.recorded
        if d.event_type == "CACHE_INDEXING" and d.attributes.get("are.cache.reason") == "REPAIR"
    ]
    return event


def _number(harness: Harness, entry_id: int) -> int:
    """The number of an entry's prompt ("p123": 123), which is its row of the stored vectors."""
    assert harness.storage is not None
    raw = harness.storage.get(BODIES, u64_key(entry_id))
    assert raw is not None
    return int(_body_codec.decode(raw).prompt[1:])


async def test_the_threshold_decides_when_a_sweep_is_due(harness: Harness) -> None:
    await harness.close()
    e = await harness.open(repair_changes=300)
    await e.put_namespace(
        NamespaceSettings(name="t", embedder="caller", dimension=_DIMENSION, max_entries=3000)
    )
    rows = low_dimension_rows(3300, _DIMENSION, seed=5)
    await e.store_many("t", [f"p{i}" for i in range(3000)], [b"r"] * 3000, vectors=rows[:3000])
    assert e.repair_due() is None  # nothing removed yet
    await e.store_many("t", [f"p{i}" for i in range(3000, 3299)], [b"r"] * 299, vectors=rows[3000:3299])
    assert e._states["t"].index_removals == 299  # evictions
    assert e.repair_due() is None
    await e.invalidate("t", entry_ids=[entry_id_text(int(e._states["t"].entries.ids()[0]))])
    task = e.repair_due()
    assert task is not None
    await task
    assert e._states["t"].index_removals == 0
    assert e.repair_due() is None


async def due_for_a_sweep(harness: Harness, name: str) -> CacheEngine:
    """The engine reopened to sweep after one removal: a namespace of 2,200 entries, one invalidated."""
    await harness.close()
    e = await harness.open(repair_changes=1)
    await e.put_namespace(NamespaceSettings(name=name, embedder="caller", dimension=_DIMENSION))
    rows = low_dimension_rows(2200, _DIMENSION, seed=6)
    await e.store_many(name, [f"p{i}" for i in range(2200)], [b"r"] * 2200, vectors=rows)
    await e.invalidate(name, entry_ids=[entry_id_text(int(e._states[name].entries.ids()[0]))])
    return e


async def test_a_sweep_child_past_its_deadline_is_killed_reaped_and_swept_again_later(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    e = await due_for_a_sweep(harness, "late")
    sweep = index_module._sweep

    def slow(*args: object) -> object:  # in the child: starved, as on a CPU kept busy
        time.sleep(30)
        return sweep(*args)  # type: ignore[arg-type]  # _sweep's own arguments, passed on as they came

    monkeypatch.setattr(index_module, "_sweep", slow)
    monkeypatch.setattr(cache_engine, "_CHILD_DEADLINE_S", 0.5)
    task = e.repair_due()
    assert task is not None
    assert e._sweep is not None
    pid = e._sweep.pid
    await asyncio.wait_for(task, timeout=15)  # at the deadline, not after the child's 30 s
    for _ in range(1000):  # reaped in the background (WNOWAIT: a zombie stays for the engine)
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the sweep child was never reaped")
    assert "sweeping the index of 'late' did not end within 0.5 s" in caplog.text
    state = e._states["late"]
    assert not _sweeping(state)
    assert state.index_removals >= 1  # still due
    assert state.repair_retry_ns > harness.clock.now  # but not at once
    assert e.repair_due() is None
    monkeypatch.undo()
    harness.clock.advance(61)
    again = e.repair_due()
    assert again is not None
    await asyncio.wait_for(again, timeout=60)
    assert state.index_removals == 0  # swept this time


async def test_stopping_during_a_sweep_kills_and_reaps_its_child(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = await due_for_a_sweep(harness, "s")
    sweep = index_module._sweep

    def slow(*args: object) -> object:  # in the child: a sweep still running when the stop comes
        time.sleep(30)
        return sweep(*args)  # type: ignore[arg-type]  # _sweep's own arguments, passed on as they came

    monkeypatch.setattr(index_module, "_sweep", slow)
    task = e.repair_due()
    assert task is not None
    assert e._sweep is not None
    pid = e._sweep.pid
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # running
    await asyncio.wait_for(harness.close(), timeout=15)  # killed, not waited for
    assert task.done()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left
    folder = harness.root / "data" / "cache"
    assert not list(folder.glob(".*.tmp"))
