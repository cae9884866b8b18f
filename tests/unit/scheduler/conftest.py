"""Fixtures for the scheduler engine tests: real LMDB in a temporary folder, no server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from are_core.scheduler import TABLES, Scheduler
from are_core.storage import Durability, GroupCommitter, Storage


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Scheduler]:
    """A started scheduler (no jitter: rng 0) over relaxed-durability LMDB."""
    storage = Storage.open(tmp_path / "data", tables=TABLES, durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    scheduler = Scheduler(storage, committer, rng=lambda: 0.0)
    await scheduler.start()
    yield scheduler
    await scheduler.stop()
    await committer.aclose()
    storage.close()


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[Storage, GroupCommitter]]:
    """Relaxed-durability LMDB and its committer, for tests that start (and restart) engines themselves."""
    storage = Storage.open(tmp_path / "data", tables=TABLES, durability=Durability.RELAXED)
    committer = GroupCommitter(storage)
    yield storage, committer
    await committer.aclose()
    storage.close()
