"""Mass removals in bounded commits: shrinking a namespace, and invalidations cut short by backpressure.

Lowering a namespace's bounds far below what it holds used to evict every
entry past them in the one batch that carried the settings: over the group
committer's bound on one batch, PutNamespace was refused (BatchTooLargeError)
every time, and the namespace could never be shrunk. Now the settings commit
with a first chunk of evictions and the rest follow a chunk per commit, each
checked before it changes memory; when backpressure cuts that short, the call
still succeeds with the settings in force and the flushes evict the rest.
An invalidation refused for backpressure after some of its chunks committed
now says how many entries those removed.

Real LMDB and a real group committer throughout. A committer of small bounds
stands for a namespace far larger than the default bounds; backpressure in
the middle of a call comes from another writer's batch admitted (and its
writer held busy) as the call's first commit settles, so no timing is involved.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from are_core.cache import InvalidationBusyError, NamespaceSettings
from are_core.cache._engine import HEADS, META, NAMESPACES, STATS, _namespace_codec, _stats_codec
from are_core.cache._normalise import entry_id_text
from are_core.storage import Batch, BatchTooLargeError, MutationKind, StorageBusyError, prefix_key
from sidecar._cache import _fail

from .conftest import Harness

pytestmark = pytest.mark.timeout(120)

DIMENSION = 8
SIZE = len("question 00000") + len(b"answer 00000")  # bytes of every entry _fill stores
SMALL_BOUND = 100  # mutations: a chunk of some thirty removals per commit


def _vectors(n: int, seed: int = 7) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, DIMENSION)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


async def _fill(harness: Harness, n: int, **settings: Any) -> list[str]:
    """Namespace "a" of ``n`` entries of SIZE bytes each, stored in order; their prompts."""
    e = harness.e
    await e.put_namespace(
        NamespaceSettings(
            name="a", embedder="caller", dimension=DIMENSION, similarity_threshold=0.99, **settings
        )
    )
    prompts = [f"question {i:05d}" for i in range(n)]
    await e.store_many("a", prompts, [b"answer %05d" % i for i in range(n)], vectors=_vectors(n))
    return prompts


def _small_bounds(harness: Harness) -> None:
    """The committer takes batches of at most SMALL_BOUND mutations (and as many pending)."""
    assert harness.committer is not None
    harness.committer.max_pending_mutations = SMALL_BOUND


def _shrink_to(max_entries: int = 0, max_bytes: int = 0) -> NamespaceSettings:
    return NamespaceSettings(
        name="a",
        embedder="caller",
        dimension=DIMENSION,
        similarity_threshold=0.99,
        max_entries=max_entries,
        max_bytes=max_bytes,
    )


async def _kept(harness: Harness, prompts: list[str]) -> set[str]:
    """The prompts whose entries answer an exact lookup (a lookup touches them: most recently used)."""
    kept = set()
    for prompt in prompts:
        if (await harness.e.lookup("a", prompt=prompt)).hit is not None:
            kept.add(prompt)
    return kept


def _stored(harness: Harness) -> tuple[int, int, int, int]:
    """What LMDB holds of "a": entry heads, its max_entries and max_bytes, and its evictions counter."""
    storage = harness.storage
    assert storage is not None
    raw_namespace, raw_stats = storage.get(NAMESPACES, b"a"), storage.get(STATS, b"a")
    assert raw_namespace is not None and raw_stats is not None
    namespace, stats = _namespace_codec.decode(raw_namespace), _stats_codec.decode(raw_stats)
    heads = len(storage.scan(HEADS, prefix=prefix_key("a")))
    return heads, namespace.max_entries, namespace.max_bytes, stats.evictions


def _committed_removals(harness: Harness, reason: str) -> list[int]:
    """The ``removed_count`` of each removal event of ``reason`` committed (published), in order."""
    recorded = harness.sink.recorded
    counts = []
    for event in harness.sink.published:
        draft = recorded[event.sequence - 1]
        if draft.event_type == "CACHE_INVALIDATED" and draft.attributes["are.cache.reason"] == reason:
            counts.append(int(draft.attributes["are.cache.removed_count"]))
    return counts


class BusyAfter:
    """Once a batch that ``matches`` commits, the storage is busy: its writer held, its bound filled.

    A settle listener (called before the batch's submitter resumes) holds the
    committer's one writer thread and admits another writer's batch as large
    as the room left: whatever the engine checks next is refused with
    StorageBusyError, deterministically. :meth:`release` lets the writer go.
    """

    def __init__(self, harness: Harness, matches: Callable[[Batch], bool]) -> None:
        assert harness.committer is not None and harness.storage is not None
        self._committer, self._storage = harness.committer, harness.storage
        self._matches = matches
        self._gate = threading.Event()
        self._held: asyncio.Future[bool] | None = None
        self._other: asyncio.Future[None] | None = None
        self._committer.add_settle_listener(self._settled)

    @property
    def busy(self) -> bool:
        return self._other is not None

    def _settled(self, batch: Batch, committed: bool) -> None:
        if self._other is not None or not committed or not self._matches(batch):
            return
        self._held = asyncio.get_running_loop().run_in_executor(self._committer._executor, self._gate.wait)
        room = self._committer.max_pending_mutations - self._committer.stats().pending_mutations
        other = self._storage.batch()
        for i in range(room):
            other.put(META, b"other:%d" % i, b"x")
        self._other = self._committer.enqueue(other)

    async def release(self) -> None:
        self._gate.set()
        assert self._held is not None and self._other is not None
        await self._held
        await self._other


def _sets_namespace(batch: Batch) -> bool:
    return any(m.table == NAMESPACES for m in batch)


def _deletes_heads(batch: Batch) -> bool:
    return any(m.kind is MutationKind.DELETE and m.table == HEADS for m in batch)


@pytest.fixture
async def released() -> AsyncIterator[list[BusyAfter]]:
    """Lets every held writer go at the end, so that a failed test still closes its committer."""
    held: list[BusyAfter] = []
    yield held
    for busy in held:
        if busy.busy:
            busy._gate.set()


async def test_shrinking_far_past_the_bound_on_one_batch_evicts_in_chunks_the_least_recently_used(
    harness: Harness,
) -> None:
    prompts = await _fill(harness, 200)
    e = harness.e
    recent = [prompts[i] for i in (3, 50, 77, 101, 102, 140, 150, 181, 190, 199)]
    assert await _kept(harness, recent) == set(recent)  # touched: the ten most recently used
    _small_bounds(harness)
    # The 190 evictions need over five times the bound on one batch: refused every time before.
    namespace, created = await e.put_namespace(_shrink_to(max_entries=10))
    assert (namespace.max_entries, created) == (10, False)
    state = e._states["a"]
    assert len(state.heads) == 10
    stats = e.stats("a")[0]
    assert (stats.entries, stats.evictions, stats.size_bytes) == (10, 190, 10 * SIZE)
    chunks = _committed_removals(harness, "EVICTED")
    assert sum(chunks) == 190
    assert len(chunks) > 1 and max(chunks) * 3 < SMALL_BOUND  # commits within the bound
    assert _stored(harness) == (10, 10, namespace.max_bytes, 190)
    # The ten touched answer, by prompt and by vector; the rest never do.
    vectors = _vectors(200)
    for i, prompt in enumerate(prompts):
        exact = (await e.lookup("a", prompt=prompt)).hit
        semantic = (await e.lookup("a", vector=vectors[i])).hit
        assert (exact is not None) == (semantic is not None) == (prompt in recent), prompt
    assert sorted(state.index.keys().tolist()) == sorted(state.heads)
    assert not e._reloading and e._failures == 0
    # After a restart with nothing saved (a SIGKILL), LMDB holds the same ten and the counters.
    await harness.reopen(save=False)
    assert await _kept(harness, prompts) == set(recent)
    stats = harness.e.stats("a")[0]
    assert (stats.entries, stats.evictions) == (10, 190)
    assert harness.e.get_namespace("a").max_entries == 10


async def test_shrinking_max_bytes_far_past_the_bound_on_one_batch_keeps_what_fits(harness: Harness) -> None:
    prompts = await _fill(harness, 150)
    e = harness.e
    _small_bounds(harness)
    namespace, _ = await e.put_namespace(_shrink_to(max_bytes=12 * SIZE))  # twelve entries' worth
    assert namespace.max_bytes == 12 * SIZE
    stats = e.stats("a")[0]
    assert (stats.entries, stats.size_bytes, stats.evictions) == (12, 12 * SIZE, 138)
    assert sum(_committed_removals(harness, "EVICTED")) == 138
    assert await _kept(harness, prompts) == set(prompts[-12:])  # the most recently stored
    assert _stored(harness)[0] == 12


async def test_backpressure_midway_leaves_the_settings_in_force_and_the_flush_evicts_the_rest(
    harness: Harness, released: list[BusyAfter]
) -> None:
    prompts = await _fill(harness, 200)
    e = harness.e
    state = e._states["a"]
    _small_bounds(harness)
    busy = BusyAfter(harness, _sets_namespace)
    released.append(busy)
    namespace, created = await e.put_namespace(_shrink_to(max_entries=10))
    assert busy.busy, "the storage never became busy"
    # Succeeded with the settings in force (memory and LMDB), the first chunk evicted, the rest left.
    assert (namespace.max_entries, created) == (10, False)
    assert e.get_namespace("a").max_entries == 10
    first = 200 - len(state.heads)
    assert 0 < first < 190
    assert e.stats("a")[0].evictions == first
    assert _committed_removals(harness, "EVICTED") == [first]
    # A flush while the storage is still busy evicts nothing and refuses nothing.
    await e.flush()
    assert len(state.heads) == 200 - first
    await busy.release()
    assert _stored(harness) == (200 - first, 10, namespace.max_bytes, first)
    # The entries past the bounds are evicted by the next flush, least recently used first.
    await e.flush()
    assert e._states["a"] is state and not e._reloading and e._failures == 0
    stats = e.stats("a")[0]
    assert (stats.entries, stats.evictions) == (10, 190)
    assert sum(_committed_removals(harness, "EVICTED")) == 190
    assert _stored(harness) == (10, 10, namespace.max_bytes, 190)
    assert await _kept(harness, prompts) == set(prompts[-10:])
    await harness.reopen(save=False)
    assert await _kept(harness, prompts) == set(prompts[-10:])
    assert harness.e.stats("a")[0].evictions == 190


async def test_a_restart_before_the_flush_finishes_the_shrink_and_stores_meanwhile_evict_in_chunks(
    harness: Harness, released: list[BusyAfter]
) -> None:
    prompts = await _fill(harness, 200)
    e = harness.e
    _small_bounds(harness)
    busy = BusyAfter(harness, _sets_namespace)
    released.append(busy)
    await e.put_namespace(_shrink_to(max_entries=10))
    await busy.release()
    left = len(e._states["a"].heads)
    assert left > 100
    # Over its bounds by far: a store, and a bulk store, evict a chunk past their own share
    # rather than the lot in one batch over the bound (refused every time).
    harness.clock.advance(1)  # stored after the rest: more recently used, after a restart too
    await e.store("a", prompt="late question", response=b"late", vector=_vectors(1, seed=99)[0])
    assert 10 < len(e._states["a"].heads) < left
    await e.store_many("a", ["bulk one", "bulk two"], [b"1", b"2"], vectors=_vectors(2, seed=98))
    evicted = e.stats("a")[0].evictions
    assert evicted == 200 + 3 - len(e._states["a"].heads)
    # A SIGKILL now: the start serves the namespace past its bounds; its first flush evicts the rest.
    await harness.reopen(save=False)
    e = harness.e
    _small_bounds(harness)
    assert len(e._states["a"].heads) == 203 - evicted
    await e.flush()
    stats = e.stats("a")[0]
    assert (stats.entries, stats.evictions) == (10, 193)
    expected = {*prompts[-7:], "late question", "bulk one", "bulk two"}
    assert await _kept(harness, [*prompts, "late question", "bulk one", "bulk two"]) == expected
    assert _stored(harness)[0] == 10


async def test_an_invalidation_cut_short_by_backpressure_reports_what_it_removed_and_a_retry_ends_it(
    harness: Harness, released: list[BusyAfter]
) -> None:
    n = 5_000 + 100  # two chunks
    prompts = await _fill(harness, n)
    e = harness.e
    assert harness.committer is not None
    harness.committer.max_pending_mutations = 20_000  # over a chunk's commit; a smaller filler
    before = set(e._states["a"].heads)
    busy = BusyAfter(harness, _deletes_heads)
    released.append(busy)
    with pytest.raises(InvalidationBusyError) as refused:
        await e.invalidate("a", everything=True)
    error = refused.value
    assert isinstance(error, StorageBusyError)  # mapped, and retried, like any other
    assert (error.removed_count, error.namespace, error.limit_name) == (5_000, "a", "max_pending_mutations")
    assert "5000 entries" in str(error)
    assert len(e._states["a"].heads) == 100
    assert not e._reloading and e._failures == 0
    gone = sorted(before - set(e._states["a"].heads))
    # The servicer's status: RESOURCE_EXHAUSTED with a retry hint, and the count removed.
    with pytest.raises(_AbortedError) as aborted:
        await _fail(_Context(), error)
    assert aborted.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = status_pb2.Status.FromString(dict(aborted.value.trailers)["grpc-status-details-bin"])
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "RESOURCE_LIMIT"
    assert dict(info.metadata) == {
        "limit": "storage_pending_writes",
        "bound": "max_pending_mutations",
        "removed_count": "5000",
    }
    assert any(detail.Unpack(retry) for detail in status.details)
    await busy.release()
    assert _stored(harness)[0] == 100
    # Retrying is safe: what was removed is not found again; the rest goes.
    assert await e.invalidate("a", everything=True) == 100
    assert await e.invalidate("a", entry_ids=[entry_id_text(n) for n in gone[:1000]]) == 0
    assert sum(_committed_removals(harness, "INVALIDATED")) == n
    assert _stored(harness)[0] == 0
    assert await _kept(harness, prompts[:3] + prompts[-3:]) == set()


async def test_an_invalidation_refused_before_its_first_chunk_reports_none_removed(
    harness: Harness, released: list[BusyAfter]
) -> None:
    await _fill(harness, 3)
    e = harness.e
    assert harness.committer is not None and harness.storage is not None
    _small_bounds(harness)
    busy = BusyAfter(harness, lambda batch: True)  # the next commit makes the storage busy
    released.append(busy)
    await harness.committer.submit(harness.storage.batch().put(META, b"trigger", b"x"))
    with pytest.raises(InvalidationBusyError) as refused:
        await e.invalidate("a", everything=True)
    assert refused.value.removed_count == 0
    assert len(e._states["a"].heads) == 3
    await busy.release()
    assert _stored(harness)[0] == 3


async def test_an_invalidation_on_a_committer_of_small_bounds_goes_in_smaller_chunks(
    harness: Harness,
) -> None:
    await _fill(harness, 200)
    e = harness.e
    _small_bounds(harness)
    assert await e.invalidate("a", everything=True) == 200
    chunks = _committed_removals(harness, "INVALIDATED")
    assert sum(chunks) == 200 and max(chunks) * 3 < SMALL_BOUND
    assert _stored(harness)[0] == 0


async def test_a_namespace_row_alone_over_the_bound_is_still_refused(harness: Harness) -> None:
    await _fill(harness, 5)
    e = harness.e
    assert harness.committer is not None
    harness.committer.max_pending_mutations = 3  # not even the settings and their bookkeeping
    with pytest.raises(BatchTooLargeError):
        await e.put_namespace(_shrink_to(max_entries=1))
    assert e.get_namespace("a").max_entries != 1
    assert len(e._states["a"].heads) == 5


class _AbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, trailers: Any) -> None:
        self.code, self.message, self.trailers = code, message, trailers


class _Context:
    """The one method of a servicer context that ``_fail`` uses."""

    async def abort(self, code: grpc.StatusCode, message: str, *, trailing_metadata: Any) -> None:
        raise _AbortedError(code, message, trailing_metadata)
