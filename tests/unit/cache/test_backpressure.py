"""Backpressure: a write the committer would refuse is refused before it changes memory.

The engine changes a namespace's memory first and commits after. Its
batches used to be handed to the committer as a task, whose admission check
ran a loop step later: a store refused for backpressure (StorageBusyError)
was then handled as a failed commit, and the namespace was taken out of
service and reloaded from LMDB in full (at a million entries, a read of every
one and an index rebuilt on the event loop), for every refused write, under
exactly the load that makes the committer refuse. Now each write checks the
committer's bounds before it changes anything and enqueues in the same step:
a refusal leaves memory and LMDB as they were, the caller gets
StorageBusyError (RESOURCE_EXHAUSTED with a retry hint at the sidecar), and
nothing is reloaded. Background writes (flushes) wait for the next flush.

The committer's writer thread is held busy (a slow disk), so that accepted
work stays pending and fills the bound; no timing is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from are_core.cache import CacheEngine, NamespaceSettings, StoreResult
from are_core.cache._engine import HEADS, META, STATS
from are_core.cache._model import StatsRecord
from are_core.storage import Batch, BatchTooLargeError, Codec, GroupCommitter, StorageBusyError, prefix_key
from tests.unit.storage._held import writer_held

from ._failing import unit
from .conftest import Harness

pytestmark = pytest.mark.timeout(60)

_PROMPTS = ("alpha", "beta", "gamma")


async def _pending(committer: GroupCommitter, batch: Batch) -> asyncio.Task[None]:
    """Another writer's batch, admitted (its commit waits for the writer)."""
    task = asyncio.ensure_future(committer.submit(batch))
    await asyncio.sleep(0)
    assert not task.done()
    return task


@contextlib.asynccontextmanager
async def _backlog(
    harness: Harness, *, mutations: int = 64, filled: int | None = None
) -> AsyncIterator[None]:
    """A committer bounded at ``mutations`` pending, ``filled`` of them taken by other writers' batches.

    Filled to the bound by default. When the block ends, the writer goes on,
    the backlog drains and the default bounds come back.
    """
    committer, storage = harness.committer, harness.storage
    assert committer is not None and storage is not None
    bound = committer.max_pending_mutations
    committer.max_pending_mutations = mutations
    others: list[asyncio.Task[None]] = []
    try:
        async with writer_held(committer):
            others = [
                asyncio.ensure_future(committer.submit(storage.batch().put(META, b"other:%d" % i, b"x")))
                for i in range(mutations if filled is None else filled)
            ]
            await asyncio.sleep(0)  # admitted; their commits wait for the writer
            assert committer.stats().pending_mutations == len(others)
            yield
        await asyncio.gather(*others)
    finally:
        committer.max_pending_mutations = bound


async def _fill(harness: Harness, **settings: Any) -> None:
    """Namespace "a" with three acknowledged entries (caller vectors)."""
    e = harness.e
    await e.put_namespace(
        NamespaceSettings(name="a", embedder="caller", dimension=8, similarity_threshold=0.99, **settings)
    )
    for i, prompt in enumerate(_PROMPTS):
        await e.store("a", prompt=f"{prompt} question", response=prompt.encode(), vector=unit(i + 1))


async def _answers(e: CacheEngine, prompt: str, vector: np.ndarray) -> bytes | None:
    """The response ``prompt`` finds by exact match (and the same by its vector), or None."""
    exact = (await e.lookup("a", prompt=f"{prompt} question")).hit
    semantic = (await e.lookup("a", vector=vector)).hit
    assert (exact is None) == (semantic is None), prompt
    if exact is None or semantic is None:
        return None
    assert semantic.response == exact.response
    return exact.response


def _stored_heads(harness: Harness) -> int:
    assert harness.storage is not None
    return len(harness.storage.scan(HEADS, prefix=prefix_key("a")))


def _not_reloaded(e: CacheEngine, state: object) -> None:
    """The namespace's memory is the one it had: never taken out of service, never reloaded."""
    assert e._states.get("a") is state
    assert not e._reloading
    assert e._failures == 0


async def test_stores_over_the_bound_are_refused_before_memory_changes_and_nothing_reloads(
    harness: Harness,
) -> None:
    await _fill(harness)
    e = harness.e
    state = e._states["a"]
    async with _backlog(harness, filled=0):
        # Stores fill the room (their commits wait for the writer); the next is refused.
        storing: list[asyncio.Task[StoreResult]] = []
        refused: BaseException | None = None
        for i in range(64):
            task = asyncio.ensure_future(
                e.store("a", prompt=f"p{i} question", response=b"p", vector=unit(100 + i))
            )
            await asyncio.sleep(0)  # the store runs until its commit waits for the writer, or is refused
            if task.done():
                refused = task.exception()
                break
            storing.append(task)
        assert isinstance(refused, StorageBusyError), "no store was refused in the step that made it"
        assert refused.limit_name == "max_pending_mutations"
        assert len(storing) >= 2  # the check refuses only what would not fit
        _not_reloaded(e, state)
        # In service meanwhile: the acknowledged entries answer, the refused store is nowhere.
        for i, prompt in enumerate(_PROMPTS):
            assert await _answers(e, prompt, unit(i + 1)) == prompt.encode()
        assert await _answers(e, f"p{len(storing)}", unit(100 + len(storing))) is None
        assert len(state.heads) == len(_PROMPTS) + len(storing)
        assert sorted(state.index.keys().tolist()) == sorted(state.heads)
    for task in storing:
        await task
    assert _stored_heads(harness) == len(_PROMPTS) + len(storing)
    # Drained: stores are admitted again.
    again = len(storing)
    await e.store("a", prompt=f"p{again} question", response=b"again", vector=unit(100 + again))
    assert await _answers(e, f"p{again}", unit(100 + again)) == b"again"
    _not_reloaded(e, state)


async def test_a_store_refused_for_the_byte_bound_or_as_too_large_changes_nothing(harness: Harness) -> None:
    await _fill(harness, max_entries=3)  # full: a store would evict alpha
    e = harness.e
    committer, storage = harness.committer, harness.storage
    assert committer is not None and storage is not None
    state = e._states["a"]
    bound = committer.max_pending_bytes
    try:
        committer.max_pending_bytes = 64 * 1024
        with pytest.raises(BatchTooLargeError, match="max_pending_bytes"):
            await e.store("a", prompt="delta question", response=b"d" * 64 * 1024, vector=unit(4))
        async with writer_held(committer):
            other = await _pending(committer, storage.batch().put(META, b"other", b"x" * 60 * 1024))
            with pytest.raises(StorageBusyError, match="max_pending_bytes"):
                await e.store("a", prompt="delta question", response=b"d" * 4096, vector=unit(4))
        await other
    finally:
        committer.max_pending_bytes = bound
    _not_reloaded(e, state)
    for i, prompt in enumerate(_PROMPTS):  # alpha not evicted, delta not stored
        assert await _answers(e, prompt, unit(i + 1)) == prompt.encode()
    assert await _answers(e, "delta", unit(4)) is None
    assert _stored_heads(harness) == 3
    assert e.stats("a")[0].evictions == 0
    await e.store("a", prompt="delta question", response=b"d" * 4096, vector=unit(4))
    assert await _answers(e, "alpha", unit(1)) is None  # evicted now, with delta stored
    assert await _answers(e, "delta", unit(4)) == b"d" * 4096


async def test_a_store_evicting_into_a_full_backlog_is_refused_and_evicts_nothing(harness: Harness) -> None:
    await _fill(harness, max_entries=3)
    e = harness.e
    state = e._states["a"]
    async with _backlog(harness):
        with pytest.raises(StorageBusyError):
            await e.store("a", prompt="delta question", response=b"delta", vector=unit(4))
        with pytest.raises(StorageBusyError):  # a replacement too: the old entry stays
            await e.store("a", prompt="beta question", response=b"new", vector=unit(5))
        _not_reloaded(e, state)
        for i, prompt in enumerate(_PROMPTS):
            assert await _answers(e, prompt, unit(i + 1)) == prompt.encode()
        assert await _answers(e, "delta", unit(4)) is None
        assert (await e.lookup("a", vector=unit(5))).hit is None
    assert _stored_heads(harness) == 3
    assert e.stats("a")[0].evictions == 0
    await e.store("a", prompt="beta question", response=b"new", vector=unit(5))
    assert await _answers(e, "beta", unit(5)) == b"new"


async def test_store_many_over_the_bound_is_refused_and_stores_none(harness: Harness) -> None:
    await _fill(harness)
    e = harness.e
    state = e._states["a"]
    prompts = [f"bulk {i} question" for i in range(4)]
    vectors = np.stack([unit(200 + i) for i in range(4)])
    next_id = e._next_id
    async with _backlog(harness):
        with pytest.raises(StorageBusyError):
            await e.store_many("a", prompts, [b"bulk"] * 4, vectors=vectors)
        _not_reloaded(e, state)
        assert e._next_id == next_id  # no id taken
        for i, prompt in enumerate(_PROMPTS):
            assert await _answers(e, prompt, unit(i + 1)) == prompt.encode()
        for i in range(4):
            assert (await e.lookup("a", prompt=prompts[i])).hit is None
            assert (await e.lookup("a", vector=vectors[i])).hit is None
        assert len(state.heads) == len(_PROMPTS)
    assert _stored_heads(harness) == len(_PROMPTS)
    results = await e.store_many("a", prompts, [b"bulk"] * 4, vectors=vectors)
    assert len(results) == 4
    hit = (await e.lookup("a", vector=vectors[2])).hit
    assert hit is not None
    assert hit.response == b"bulk"


async def test_an_invalidation_over_the_bound_is_refused_and_removes_nothing(harness: Harness) -> None:
    await _fill(harness)
    e = harness.e
    state = e._states["a"]
    beta = (await e.lookup("a", prompt="beta question")).hit
    assert beta is not None
    async with _backlog(harness):
        with pytest.raises(StorageBusyError):
            await e.invalidate("a", entry_ids=[beta.entry_id])
        with pytest.raises(StorageBusyError):
            await e.invalidate("a", everything=True)
        _not_reloaded(e, state)
        for i, prompt in enumerate(_PROMPTS):
            assert await _answers(e, prompt, unit(i + 1)) == prompt.encode()
    assert _stored_heads(harness) == len(_PROMPTS)
    assert await e.invalidate("a", entry_ids=[beta.entry_id]) == 1
    assert await _answers(e, "beta", unit(2)) is None
    assert _stored_heads(harness) == len(_PROMPTS) - 1


async def test_a_namespace_update_over_the_bound_is_refused_and_changes_nothing(harness: Harness) -> None:
    await _fill(harness)
    e = harness.e
    state = e._states["a"]
    shrink = NamespaceSettings(
        name="a", embedder="caller", dimension=8, similarity_threshold=0.99, max_entries=1
    )
    async with _backlog(harness):
        with pytest.raises(StorageBusyError):
            await e.put_namespace(shrink)
        _not_reloaded(e, state)
        assert e.get_namespace("a").max_entries != 1
        assert len(state.heads) == len(_PROMPTS)
    namespace, created = await e.put_namespace(shrink)
    assert (namespace.max_entries, created) == (1, False)
    assert len(e._states["a"].heads) == 1
    assert _stored_heads(harness) == 1


async def test_flushes_under_backpressure_wait_for_the_next_and_nothing_reloads(harness: Harness) -> None:
    await _fill(harness, default_ttl_ns=60 * 10**9)
    e = harness.e
    storage = harness.storage
    assert storage is not None
    state = e._states["a"]
    harness.clock.advance(61)  # every entry expired
    await e.store("a", prompt="delta question", response=b"delta", vector=unit(4))  # not expired
    assert (await e.lookup("a", prompt="delta question")).hit is not None  # a hit: counters and an event
    assert (await e.lookup("a", prompt="alpha question")).hit is None  # expired: never answers
    counters = Codec(StatsRecord)
    raw = storage.get(STATS, b"a")
    assert raw is not None
    before = counters.decode(raw)
    async with _backlog(harness):
        for _ in range(3):  # each flush finds the writer busy; none raises
            await e.flush()
        _not_reloaded(e, state)
        assert _stored_heads(harness) == 4  # the expired entries wait for a later flush
        assert storage.get(STATS, b"a") == raw
        assert not any(draft.event_type in ("CACHE_HIT", "CACHE_MISS") for draft in harness.sink.recorded)
        assert (await e.lookup("a", prompt="alpha question")).hit is None
        assert await _answers(e, "delta", unit(4)) == b"delta"
    await e.flush()  # drained: the flush the busy ones left
    _not_reloaded(e, state)
    assert _stored_heads(harness) == 1
    raw = storage.get(STATS, b"a")
    assert raw is not None
    after = counters.decode(raw)
    assert after.expirations == before.expirations + 3
    assert after.lookups > before.lookups
    published = [event.event_type for event in harness.sink.published]
    assert "CACHE_HIT" in published
    assert "CACHE_MISS" in published
