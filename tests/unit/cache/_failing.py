"""Shared by the tests of commits that fail (stop, reload): gated commits and two small namespaces."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import numpy as np
import pytest

from are_core.cache import CacheEngine, NamespaceSettings
from are_core.cache._engine import HEADS
from are_core.cache._table import EntryTable
from are_core.storage import Batch, GroupCommitter, prefix_key

from .conftest import Harness

SPACES = ("a", "b")
PROMPTS = ("alpha", "beta", "gamma", "delta", "epsilon")


def unit(seed: int) -> np.ndarray:
    """A random unit vector of dimension 8."""
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return v / np.linalg.norm(v)


def vector(name: str, prompt: str) -> np.ndarray:
    """The vector of ``prompt`` in namespace ``name``: distinct for every pair."""
    return unit(10 * SPACES.index(name) + PROMPTS.index(prompt) + 1)


class GatedCommits:
    """The next commits enqueued wait for their gates (None: none), then fail or go through.

    It stands in for the committer's ``enqueue`` (which ``submit`` calls too).
    """

    def __init__(self, committer: GroupCommitter) -> None:
        self._enqueue = committer.enqueue
        self.next: list[tuple[asyncio.Event | None, bool]] = []  # (gate, fails), in submit order

    def enqueue(self, batch: Batch) -> asyncio.Future[None]:
        if not self.next:
            return self._enqueue(batch)
        gate, fails = self.next.pop(0)
        return asyncio.ensure_future(self._gated(batch, gate, fails))

    async def _gated(self, batch: Batch, gate: asyncio.Event | None, fails: bool) -> None:
        if gate is not None:
            await gate.wait()
        if fails:
            raise OSError(errno.ENOSPC, "No space left on device")
        await self._enqueue(batch)


class FullDisk:
    """Every commit enqueued fails while ``full`` (a full disk: reads still work); counts those that failed.

    It stands in for the committer's ``enqueue`` (which ``submit`` calls too).
    """

    def __init__(self, committer: GroupCommitter) -> None:
        self._enqueue = committer.enqueue
        self.full = True
        self.failed = 0

    def enqueue(self, batch: Batch) -> asyncio.Future[None]:
        if not self.full:
            return self._enqueue(batch)
        self.failed += 1
        return asyncio.ensure_future(self._fail())

    @staticmethod
    async def _fail() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


class FailingLoads:
    """Makes the engine's reload of a namespace fail while ``broken`` (LMDB's readers full, say)."""

    def __init__(self, engine: CacheEngine) -> None:
        self._load = engine._load
        self.broken = True
        self.failed = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.broken:
            self.failed += 1
            raise OSError(errno.EAGAIN, "mdb_txn_begin: MDB_READERS_FULL")
        return self._load(*args, **kwargs)


class CountingLoads:
    """Counts the engine's loads of a namespace from LMDB (a reload after a failed commit is one)."""

    def __init__(self, engine: CacheEngine) -> None:
        self._load = engine._load
        self.count = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        return self._load(*args, **kwargs)


def stored(harness: Harness, name: str) -> int:
    """The entries LMDB holds for a namespace."""
    storage = harness.storage
    assert storage is not None
    return len(storage.scan(HEADS, prefix=prefix_key(name)))


async def fill(harness: Harness) -> CacheEngine:
    """Two namespaces of three entries, saved by a clean stop (marks vouch for tables and indexes)."""
    e = harness.e
    for name in SPACES:
        await e.put_namespace(
            NamespaceSettings(name=name, embedder="caller", dimension=8, similarity_threshold=0.99)
        )
        for prompt in ("alpha", "beta", "gamma"):
            await e.store(
                name, prompt=f"{prompt} question", response=prompt.encode(), vector=vector(name, prompt)
            )
    return await harness.reopen()


def full_disk(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> FullDisk:
    """Makes every commit of the harness's engine fail until ``full`` is set False (see FullDisk)."""
    committer = harness.committer
    assert committer is not None
    disk = FullDisk(committer)
    monkeypatch.setattr(committer, "enqueue", disk.enqueue)
    return disk


class TableWritesFail:
    """Makes the engine's entry-table writes fail as on a full disk, counting the tries (until undone)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tries = 0
        monkeypatch.setattr(CacheEngine, "_write_table", staticmethod(self._write))

    def _write(self, *args: object) -> EntryTable:
        self.tries += 1
        raise OSError(errno.ENOSPC, "No space left on device")
