"""Fixtures for the cache engine tests: real LMDB in a temporary folder, no server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from are_core.cache import CACHE_TABLES, CacheEngine
from are_core.cache._engine import VECTORS
from are_core.storage import Batch, Durability, GroupCommitter, Storage, u64_key
from are_core.trace import Event, EventDraft
from are_core.vector import VectorIndex


class RecordingSink:
    """An EventSink keeping what it was given (the trace engine is not under test here)."""

    def __init__(self) -> None:
        self.recorded: list[EventDraft] = []
        self.published: list[Event] = []

    def record(self, batch: Batch, draft: EventDraft) -> Event:
        self.recorded.append(draft)
        return Event(sequence=len(self.recorded), event_time_unix_ns=1, event_type=draft.event_type)

    def publish(self, events: Sequence[Event]) -> None:
        self.published.extend(events)


class Clock:
    """A settable clock in nanoseconds."""

    def __init__(self) -> None:
        self.now = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


class Harness:
    """Opens, closes and reopens one engine over one data folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = Clock()
        self.sink = RecordingSink()
        self.storage: Storage | None = None
        self.committer: GroupCommitter | None = None
        self.engine: CacheEngine | None = None

    async def open(self, **kwargs: object) -> CacheEngine:
        self.storage = Storage.open(self.root / "data", tables=CACHE_TABLES, durability=Durability.RELAXED)
        self.committer = GroupCommitter(self.storage)
        self.engine = CacheEngine(
            self.storage,
            self.committer,
            index_dir=self.root / "data" / "cache",
            events=self.sink,
            clock=self.clock,
            flush_interval=3600,
            **kwargs,  # type: ignore[arg-type]  # CacheEngine's own keywords, passed through untyped
        )
        await self.engine.start()
        return self.engine

    async def close(self, *, save: bool = True) -> None:
        assert self.engine is not None and self.committer is not None and self.storage is not None
        if save:
            await self.engine.stop()
        elif self.engine._flusher is not None:
            self.engine._flusher.cancel()
        await self.committer.aclose()
        self.storage.close()
        self.engine = None

    @property
    def e(self) -> CacheEngine:
        assert self.engine is not None
        return self.engine

    async def reopen(self, *, save: bool = True) -> CacheEngine:
        await self.close(save=save)
        return await self.open()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    await h.open()
    try:
        yield h
    finally:
        if h.engine is not None:
            await h.close()


def low_dimension_rows(n: int, dimension: int, seed: int) -> np.ndarray:
    """Unit vectors of low intrinsic dimension (an 8-d latent space plus a little noise), like embeddings."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((8, dimension)).astype(np.float32)
    rows = rng.standard_normal((n, 8)).astype(np.float32) @ basis
    rows += 0.05 * rng.standard_normal((n, dimension)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def is_view(index: VectorIndex) -> bool:
    """``index.is_view``, read through a call after the engine changed the index.

    Mypy keeps what an ``assert index.is_view`` narrowed the property to across
    the calls that fold the overlay in, and would call the next check unreachable.
    """
    return index.is_view


async def own_vector_misses(harness: Harness, name: str) -> list[int]:
    """The live entries a lookup by their own stored vector does not answer (with themselves or a twin)."""
    e, storage = harness.e, harness.storage
    assert storage is not None
    ids = e._states[name].entries.vector_ids().tolist()
    with storage.read() as view:
        raws = view.get_many(VECTORS, [u64_key(n) for n in ids])
    missed = []
    for entry_id, raw in zip(ids, raws, strict=True):
        assert raw is not None
        result = await e.lookup(name, vector=np.frombuffer(raw, dtype=np.float32), threshold=0.95)
        if result.hit is None:
            missed.append(entry_id)
    return missed
